"""``model=ease``: EASE (Steck 2019), closed-form item-item weights with a zero diagonal.

``EASE`` is the scipy algorithm (``fit(X)``, ``score(user_idx)``, directly a ranking ``score_fn``);
``tune_ease`` picks its lambda on the validation split; ``EASEModel`` holds the weights in
tf.Variables and scores with TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import tensorflow as tf
from tqdm.auto import tqdm

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics
from recpipe.evaluation.registry import TABLE_K, metric_key
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel, Fitted, SparseRows, as_binary_csr

TUNE_METRIC = metric_key("ndcg", TABLE_K)
MAX_ITEMS = 40_000


def check_dense_catalog(n_items: int, max_items: int = MAX_ITEMS) -> None:
    """Refuse a dense n_items x n_items item-item model (EASE) beyond ``max_items`` items."""
    if n_items > max_items:
        raise RecpipeError(
            f"EASE needs a dense {n_items} x {n_items} matrix ({n_items * n_items * 8 / 2**30:.1f} GiB); "
            f"the limit is {max_items} items: use item_knn or filter rare items"
        )


def spd_inverse(A: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite float64 matrix via Cholesky (LAPACK potrf/potri).

    About half the work of a general inverse; ``A`` is overwritten.
    """
    factor, info = scipy.linalg.lapack.dpotrf(A, lower=True, overwrite_a=True, clean=False)
    if info == 0:
        inv, info = scipy.linalg.lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        raise RecpipeError(f"matrix is not positive definite (LAPACK info {info})")
    return np.tril(inv) + np.tril(inv, -1).T


class EASE(Fitted):
    """``G = X^T X + lam I``, ``P = G^-1``, ``B = -P / diag(P)`` (column-wise), ``diag(B) = 0``;
    ``score(u) = X_u B``. Needs a dense n_items x n_items float64 matrix, so it refuses catalogs
    larger than ``max_items``.
    """

    def __init__(self, lam: float, max_items: int = MAX_ITEMS) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
            raise RecpipeError(f"EASE lam must be a number > 0, got {lam!r}")
        self.lam, self.max_items = float(lam), max_items

    def fit(self, X: sp.spmatrix) -> EASE:
        X = as_binary_csr(X)
        n = X.shape[1]
        check_dense_catalog(n, self.max_items)
        G = (X.T @ X).toarray().astype(np.float64)
        G[np.diag_indices(n)] += self.lam
        P = spd_inverse(G)
        B = P / -np.diag(P)[None, :]
        B[np.diag_indices(n)] = 0.0
        self.X, self.B = X, B.astype(np.float32)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return np.asarray(self._train()[np.asarray(user_idx)] @ self.B, dtype=np.float32)


def tune_ease(
    train: sp.csr_matrix, val: sp.csr_matrix, grid: Sequence[float], batch_size: int = 1024
) -> tuple[EASE, dict[float, float]]:
    """EASE fit on ``train`` for each lambda of ``grid``; returns the one with the best validation
    ``ndcg_at_10`` (``val`` as truth, each user's train items excluded) and every lambda's value."""
    if not len(grid):
        raise RecpipeError("EASE lam: auto needs a non-empty grid of lambdas")
    if val.nnz == 0:
        raise RecpipeError("EASE lam: auto tunes on the validation split, which is empty; set a number")
    scores: dict[float, float] = {}
    best: EASE | None = None
    for lam in tqdm(grid, desc="EASE lambda", unit="fit", leave=False):
        ease = EASE(lam).fit(train)
        scores[ease.lam] = float(rank_metrics(ease.score, train, val, (10,), batch_size)[TUNE_METRIC])
        if best is None or scores[ease.lam] > scores[best.lam]:
            best = ease
    assert best is not None
    return best, scores


@register("ease")
class EASEModel(ClosedFormModel):
    """EASE: X_u @ B with a dense item-item B.

    ``lam`` is a number, or ``auto``: the value of ``grid`` with the best validation ndcg_at_10.
    """

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        check_dense_catalog(n_items)
        self.lam = cfg.lam
        self.grid = [float(v) for v in cfg.get("grid") or ()]
        if self.lam != "auto":
            EASE(self.lam)  # validates lam before any fitting
        self.train_items = SparseRows(n_users, n_items, "train_items")
        self.item_weights = tf.Variable(tf.zeros([n_items, n_items]), trainable=False, name="item_weights")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        train = data.matrix("train")
        if self.lam == "auto":
            ease, tuning = tune_ease(train, data.matrix("val"), self.grid)
            params: dict[str, Any] = {"lam": ease.lam, f"val_{TUNE_METRIC}": [[k, v] for k, v in tuning.items()]}
        else:
            ease = EASE(self.lam).fit(train)
            params = {"lam": ease.lam}
        self.train_items.assign(ease.X)
        self.item_weights.assign(ease.B)
        return params

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.train_items.rows(user_idx), self.item_weights)
