"""Neighbourhood collaborative filtering: ``model=item_knn`` and ``model=user_knn``, one algorithm
along an ``axis``.

``CosineKNN`` is the scipy algorithm on a binary user x item train matrix X: cosine similarity
between the columns of X (axis ``item``) or its rows (axis ``user``), keeping each one's ``k``
nearest; ``score(u)`` is ``X_u @ S`` (item) or ``S_u @ X`` (user). It does not mask the user's own
items (the caller excludes seen items), so ``score`` is directly a ranking ``score_fn``. ``KNN``
holds the fitted matrices in tf.Variables and scores with TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf
from tqdm.auto import tqdm

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel, Fitted, SparseRows, as_binary_csr
from recpipe.models.classic.gram import ColumnDots, column_blocks

AXES = ("item", "user")
# Elements of one similarity block (query columns x all columns): float64, about 256 MB.
_BLOCK_ELEMENTS = 1 << 25


def topk_cosine(
    X: sp.spmatrix,
    k: int,
    shrink: float = 0.0,
    desc: str = "similarity",
    columns: np.ndarray | None = None,
) -> sp.csr_matrix:
    """Cosine similarity between the columns of ``X``, keeping each column's ``k`` nearest others.

    ``sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrink)`` (float64); self-similarity and non-positive
    values are dropped; ties go to the lower column index. Returns a CSR matrix [n_cols, n_cols]
    whose row ``i`` holds the neighbours of column ``i``, for the columns ``columns`` (default all;
    the other rows are empty). Computed in blocks of columns (``gram.ColumnDots``: dense rows of X
    with TensorFlow, the rest with scipy), top-k with ``tf.math.top_k``, so memory stays bounded
    and both cores work.
    """
    if k < 1:
        raise RecpipeError(f"k must be at least 1, got {k}")
    if shrink < 0:
        raise RecpipeError(f"shrink must be >= 0, got {shrink}")
    X = sp.csr_matrix(X, dtype=np.float32)
    n = X.shape[1]
    wanted = np.arange(n) if columns is None else np.unique(np.asarray(columns, dtype=np.int64))
    norms = tf.constant(np.sqrt(np.asarray(X.multiply(X).sum(axis=0), dtype=np.float64).ravel()))
    dots = ColumnDots(X)
    blocks = column_blocks(wanted, n, _BLOCK_ELEMENTS)
    rows, cols, vals = [], [], []
    progress = tqdm(
        dots.blocks(blocks), total=len(blocks), desc=desc, unit="block", leave=False, disable=len(blocks) < 2
    )
    for block, dot in progress:
        denom = tf.gather(norms, block)[:, None] * norms[None, :] + shrink
        sim = tf.math.divide_no_nan(tf.cast(dot, tf.float64), denom)
        sim = tf.tensor_scatter_nd_update(
            sim, np.stack([np.arange(len(block)), block], axis=1), tf.zeros([len(block)], tf.float64)
        )
        top, idx = (t.numpy() for t in tf.math.top_k(sim, k=min(k, n)))
        r, c = np.nonzero(top > 0)
        rows.append(block[r])
        cols.append(idx[r, c])
        vals.append(top[r, c].astype(np.float32))
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


def _check_axis(axis: str) -> str:
    if axis not in AXES:
        raise RecpipeError(f"kNN axis must be one of {', '.join(AXES)}, not {axis!r}")
    return axis


class CosineKNN(Fitted):
    """Cosine kNN along ``axis``: ``item`` (each of the user's items votes for its ``k`` most similar
    items) or ``user`` (the user's ``k`` most similar users vote for their items)."""

    def __init__(self, axis: str, k: int, shrink: float) -> None:
        self.axis, self.k, self.shrink = _check_axis(axis), k, shrink

    def fit(self, X: sp.spmatrix, users: np.ndarray | None = None) -> CosineKNN:
        """Neighbours of every item (axis item), or of ``users`` (axis user; default all users)."""
        self.X = as_binary_csr(X)
        along = self.X if self.axis == "item" else self.X.T
        columns = users if self.axis == "user" else None
        self.S = topk_cosine(along, self.k, self.shrink, f"{self.axis}-{self.axis} similarity", columns)
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        X, users = self._train(), np.asarray(user_idx)
        product = X[users] @ self.S if self.axis == "item" else self.S[users] @ X
        return product.toarray().astype(np.float32)


class KNN(ClosedFormModel):
    """``CosineKNN`` along ``axis`` (``k`` neighbours, cosine ``shrink``), scored in TensorFlow."""

    axis: str

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.k, self.shrink = cfg.k, cfg.shrink
        n = n_items if self.axis == "item" else n_users
        self.train_items = SparseRows(n_users, n_items, "train_items")
        self.neighbours = SparseRows(n, n, f"{self.axis}_neighbours")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        knn = CosineKNN(self.axis, self.k, self.shrink).fit(data.matrix("train"), self.score_users)
        self.train_items.assign(knn.X)
        self.neighbours.assign(knn.S)
        return {"k": knn.k, "shrink": knn.shrink}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        if self.axis == "item":  # X_u @ S
            return self.train_items.rows_matmul(user_idx, self.neighbours)
        return self.neighbours.rows_matmul(user_idx, self.train_items)  # S_u @ X


@register("item_knn")
class ItemKNN(KNN):
    """Item-based CF: X_u @ S over item-item cosine neighbours."""

    axis = "item"


@register("user_knn")
class UserKNN(KNN):
    """User-based CF: S_u @ X over user-user cosine neighbours."""

    axis = "user"
