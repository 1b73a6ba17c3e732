"""``model=ials``: implicit alternating least squares, solved in closed form with tf.linalg.

Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets" (ICDM 2008), in the
formulation and tuning of Rendle, Krichene, Zhang & Koren, "Revisiting the Performance of iALS on
Item Recommendation Benchmarks" (RecSys 2022, arXiv 2110.14037): with user factors W and item
factors H, minimise

    sum_{(u,i) observed} (1 - w_u.h_i)^2 + alpha0 sum_{u,i} (w_u.h_i)^2
    + lam * (sum_u (|I_u| + alpha0 |I|)^nu |w_u|^2 + sum_i (|U_i| + alpha0 |U|)^nu |h_i|^2)

(``alpha0``: the weight of every unobserved pair, ``nu``: frequency scaling of the L2 term). With
H fixed each w_u is the solution of a d x d linear system,
``(alpha0 H^T H + H_u^T H_u + lam_u I) w_u = H_u^T 1``, and symmetrically for the items: the
systems of a block of users are built with one einsum and solved by one batched Cholesky.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel

BLOCK = 128  # rows solved together (memory: BLOCK x catalog x factors floats)


def solve_side(X: tf.Tensor, other: tf.Tensor, alpha0: float, lam: float, nu: float, block: int = BLOCK) -> tf.Tensor:
    """The least-squares factors of every row of the binary matrix ``X`` [n, m] given the factors
    ``other`` [m, d] of its columns (one half-step of iALS), float32 [n, d]."""
    n, m = X.shape
    d = other.shape[1]
    gramian = alpha0 * tf.matmul(other, other, transpose_a=True)
    reg = lam * tf.pow(tf.reduce_sum(X, axis=1) + alpha0 * m, nu)
    blocks = []
    for start in range(0, n, block):
        x = X[start : start + block]
        per_row = tf.einsum("bi,id,ie->bde", x, other, other)
        lhs = gramian + per_row + reg[start : start + block, None, None] * tf.eye(d)
        rhs = tf.matmul(x, other)[:, :, None]
        blocks.append(tf.linalg.cholesky_solve(tf.linalg.cholesky(lhs), rhs)[:, :, 0])
    return tf.concat(blocks, axis=0)


def fit_ials(
    X: np.ndarray, factors: int, alpha0: float, lam: float, nu: float, iterations: int, init_std: float, seed: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """User and item factors of iALS on the binary matrix ``X`` [users, items] after
    ``iterations`` alternating passes from N(0, init_std^2 / factors) item factors."""
    if iterations < 1:
        raise RecpipeError(f"iALS iterations must be at least 1, got {iterations}")
    X = tf.constant(X, tf.float32)
    rng = np.random.default_rng(seed)
    items = tf.constant(rng.normal(0.0, init_std / np.sqrt(factors), (X.shape[1], factors)), tf.float32)
    for _ in range(iterations):
        users = solve_side(X, items, alpha0, lam, nu)
        items = solve_side(tf.transpose(X), users, alpha0, lam, nu)
    return users, items


@register("ials")
class IALS(ClosedFormModel):
    """iALS: score(u, i) = w_u . h_i, factors fit by ``iterations`` alternating closed-form solves."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.factors, self.iterations = int(cfg.factors), int(cfg.iterations)
        self.alpha0, self.lam, self.nu = float(cfg.alpha0), float(cfg.lam), float(cfg.nu)
        self.init_std, self.seed = float(cfg.init_std), int(cfg.seed)
        self.user_factors = tf.Variable(tf.zeros([n_users, self.factors]), trainable=False, name="user_factors")
        self.item_factors = tf.Variable(tf.zeros([n_items, self.factors]), trainable=False, name="item_factors")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        users, items = fit_ials(
            data.matrix("train").toarray(),
            self.factors,
            self.alpha0,
            self.lam,
            self.nu,
            self.iterations,
            self.init_std,
            self.seed,
        )
        self.user_factors.assign(users)
        self.item_factors.assign(items)
        return {}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.query_vectors(user_idx), self.candidate_vectors(), transpose_b=True)

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.user_factors, user_idx)

    def candidate_vectors(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.item_factors)
