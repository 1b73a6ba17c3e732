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

AXES = ("item", "user")
# Elements of one dense similarity block (rows x catalog), float64: about 128 MB.
_BLOCK_ELEMENTS = 1 << 24


def top_k_mask(sim: np.ndarray, k: int) -> np.ndarray:
    """bool mask of each row's ``k`` largest positive entries; ties go to the lower column index."""
    if k >= sim.shape[1]:
        return sim > 0
    kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1 : k]  # k-th largest value per row
    above = sim > kth
    at = sim == kth
    room = k - above.sum(axis=1, keepdims=True)
    return (above | (at & (np.cumsum(at, axis=1) <= room))) & (sim > 0)


def topk_cosine(X: sp.spmatrix, k: int, shrink: float = 0.0, desc: str = "similarity") -> sp.csr_matrix:
    """Cosine similarity between the columns of ``X``, keeping each column's ``k`` nearest others.

    ``sim(i, j) = x_i . x_j / (|x_i| |x_j| + shrink)``; self-similarity and non-positive values
    are dropped. Returns a CSR matrix [n_cols, n_cols] whose row ``i`` holds the neighbours of
    column ``i``. Computed in dense row blocks, so memory stays bounded for large catalogs.
    """
    if k < 1:
        raise RecpipeError(f"k must be at least 1, got {k}")
    if shrink < 0:
        raise RecpipeError(f"shrink must be >= 0, got {shrink}")
    Xc = sp.csc_matrix(X, dtype=np.float64)
    n = Xc.shape[1]
    norms = np.sqrt(np.asarray(Xc.multiply(Xc).sum(axis=0)).ravel())
    Xt = Xc.T.tocsr()
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    rows, cols, vals = [], [], []
    starts = range(0, n, block)
    for start in tqdm(starts, desc=desc, unit="block", leave=False, disable=len(starts) < 2):
        stop = min(start + block, n)
        dots = (Xt[start:stop] @ Xc).toarray()
        denom = np.outer(norms[start:stop], norms) + shrink
        sim = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
        sim[np.arange(stop - start), np.arange(start, stop)] = 0.0
        r, c = np.nonzero(top_k_mask(sim, k))
        rows.append(r + start)
        cols.append(c)
        vals.append(sim[r, c].astype(np.float32))
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

    def fit(self, X: sp.spmatrix) -> CosineKNN:
        self.X = as_binary_csr(X)
        along = self.X if self.axis == "item" else self.X.T
        self.S = topk_cosine(along, self.k, self.shrink, desc=f"{self.axis}-{self.axis} similarity")
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
        knn = CosineKNN(self.axis, self.k, self.shrink).fit(data.matrix("train"))
        self.train_items.assign(knn.X)
        self.neighbours.assign(knn.S)
        return {"k": knn.k, "shrink": knn.shrink}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        if self.axis == "item":  # X_u @ S
            return tf.sparse.sparse_dense_matmul(self.train_items.rows(user_idx), self.neighbours.sparse())
        return tf.sparse.sparse_dense_matmul(self.neighbours.rows(user_idx), self.train_items.sparse())  # S_u @ X


@register("item_knn")
class ItemKNN(KNN):
    """Item-based CF: X_u @ S over item-item cosine neighbours."""

    axis = "item"


@register("user_knn")
class UserKNN(KNN):
    """User-based CF: S_u @ X over user-user cosine neighbours."""

    axis = "user"
