"""``model=ials``: implicit alternating least squares, solved in closed form with tf.linalg.

Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets" (ICDM 2008), in the
formulation and tuning of Rendle, Krichene, Zhang & Koren, "Revisiting the Performance of iALS on
Item Recommendation Benchmarks" (RecSys 2022, arXiv 2110.14037): with user factors W and item
factors H, minimise

    sum_{(u,i) observed} (1 - w_u.h_i)^2 + alpha0 sum_{u,i} (w_u.h_i)^2
    + lam * (sum_u (|I_u| + alpha0 |I|)^nu |w_u|^2 + sum_i (|U_i| + alpha0 |U|)^nu |h_i|^2)

(``alpha0``: the weight of every unobserved pair, ``nu``: frequency scaling of the L2 term). With
H fixed each w_u is the solution of a d x d linear system,
``(alpha0 H^T H + H_u^T H_u + lam_u I) w_u = H_u^T 1``, and symmetrically for the items. Only the
stored entries are touched: the rows are grouped into padded blocks once (``recpipe.models.blocks``),
so the systems of a block are one batched matmul over its entries and one batched Cholesky, never a
dense users x items matrix (ML-25M-sized data fits).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.base import register
from recpipe.models.blocks import RowBlocks, row_blocks
from recpipe.models.classic.base import ClosedFormModel

log = logging.getLogger(__name__)


def solve_side(blocks: RowBlocks, other: tf.Tensor, n_cols: int, alpha0: float, lam: float, nu: float) -> tf.Tensor:
    """One half-step of iALS: the least-squares factors [n_rows, d] of every row of the binary
    matrix whose entries ``blocks`` holds, given the factors ``other`` [n_cols, d] of its columns:
    ``(alpha0 Y^T Y + Y_r^T Y_r + lam (n_r + alpha0 n_cols)^nu I) x_r = Y_r^T 1``."""
    d = other.shape[1]
    gramian = alpha0 * tf.matmul(other, other, transpose_a=True)
    table = tf.pad(other, [[0, 1], [0, 0]])  # row n_cols: the padding's zeros
    solved = []
    for cols, counts in zip(blocks.cols, blocks.counts):
        features = tf.gather(table, cols)
        reg = lam * tf.pow(counts + alpha0 * n_cols, nu)
        lhs = gramian + tf.matmul(features, features, transpose_a=True) + reg[:, None, None] * tf.eye(d)
        rhs = tf.reduce_sum(features, axis=1)[..., None]
        solved.append(tf.linalg.cholesky_solve(tf.linalg.cholesky(lhs), rhs)[..., 0])
    return tf.gather(tf.concat(solved, axis=0), blocks.order)


def fit_ials(
    by_user: RowBlocks,
    by_item: RowBlocks,
    factors: int,
    alpha0: float,
    lam: float,
    nu: float,
    iterations: int,
    init_std: float,
    seed: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """User and item factors of iALS on the binary matrix whose entries ``by_user`` (grouped by
    user) and ``by_item`` (the same, by item) hold, after ``iterations`` alternating passes from
    N(0, init_std^2 / factors) item factors."""
    if iterations < 1:
        raise RecpipeError(f"iALS iterations must be at least 1, got {iterations}")
    n_users, n_items = int(by_user.order.shape[0]), int(by_item.order.shape[0])
    rng = np.random.default_rng(seed)
    items = tf.constant(rng.normal(0.0, init_std / np.sqrt(factors), (n_items, factors)), tf.float32)
    start = time.perf_counter()
    for iteration in range(1, iterations + 1):
        users = solve_side(by_user, items, n_items, alpha0, lam, nu)
        items = solve_side(by_item, users, n_users, alpha0, lam, nu)
        log.info(f"iALS iteration {iteration}/{iterations}  {time.perf_counter() - start:.1f}s")
    return users, items


def entry_blocks(X: sp.csr_matrix) -> tuple[RowBlocks, RowBlocks]:
    """The entries of ``X`` [users, items] grouped by user and by item."""
    return row_blocks(X), row_blocks(X.T.tocsr())


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
            *entry_blocks(data.matrix("train")),
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
