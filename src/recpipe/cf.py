"""Classic collaborative filtering on a binary user x item train matrix: ItemKNN, UserKNN, EASE.

Each recommender is ``fit(X)`` on a scipy CSR matrix (users x items, nonzero = interaction) and
``score(user_idx) -> float32 [b, n_items]`` (higher is better). ``score`` does not mask the
user's own items; the caller excludes seen items (``recpipe.evaluation.ranking.top_k_items``),
so ``model.score`` is directly a ranking ``score_fn``. ``recpipe.models.classic`` wraps the fitted
matrices as TensorFlow models (``model=item_knn|user_knn|ease`` and the evaluate stage's baselines).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from tqdm.auto import tqdm

from recpipe.errors import RecpipeError

# Elements of one dense similarity block (rows x catalog), float64: about 128 MB.
_BLOCK_ELEMENTS = 1 << 24


def _as_binary_csr(X: sp.spmatrix) -> sp.csr_matrix:
    """Float32 CSR copy of ``X`` with every stored nonzero set to 1."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.eliminate_zeros()
    X.data[:] = 1.0
    return X


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
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )


def check_dense_catalog(n_items: int, max_items: int = 40_000) -> None:
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


class _Recommender:
    """Keeps the binary train matrix and checks ``score`` is called after ``fit``."""

    X: sp.csr_matrix | None = None

    @property
    def n_items(self) -> int:
        return self._train().shape[1]

    def _train(self) -> sp.csr_matrix:
        if self.X is None:
            raise RecpipeError(f"{type(self).__name__}.score called before fit")
        return self.X


class ItemKNN(_Recommender):
    """Item-based CF: each item votes for its ``k`` most cosine-similar items.

    ``score(u) = X_u . S`` where row ``i`` of ``S`` holds item ``i``'s top-``k`` neighbours.
    """

    def __init__(self, k: int = 100, shrink: float = 0.0) -> None:
        self.k, self.shrink = k, shrink

    def fit(self, X: sp.spmatrix) -> ItemKNN:
        self.X = _as_binary_csr(X)
        self.S = topk_cosine(self.X, self.k, self.shrink, desc="item-item similarity")
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return (self._train()[np.asarray(user_idx)] @ self.S).toarray().astype(np.float32)


class UserKNN(_Recommender):
    """User-based CF: a user's ``k`` most cosine-similar users vote for their items.

    ``score(u) = sum_v sim(u, v) X_v`` over the ``k`` neighbours ``v`` of ``u``.
    """

    def __init__(self, k: int = 50, shrink: float = 0.0) -> None:
        self.k, self.shrink = k, shrink

    def fit(self, X: sp.spmatrix) -> UserKNN:
        self.X = _as_binary_csr(X)
        self.S = topk_cosine(self.X.T, self.k, self.shrink, desc="user-user similarity")
        return self

    def score(self, user_idx: np.ndarray) -> np.ndarray:
        return (self.S[np.asarray(user_idx)] @ self._train()).toarray().astype(np.float32)


class EASE(_Recommender):
    """EASE (Steck 2019): closed-form item-item weights with a zero diagonal.

    ``G = X^T X + lam I``, ``P = G^-1``, ``B = -P / diag(P)`` (column-wise), ``diag(B) = 0``;
    ``score(u) = X_u B``. Needs a dense n_items x n_items float64 matrix, so it refuses catalogs
    larger than ``max_items``.
    """

    def __init__(self, lam: float = 500.0, max_items: int = 40_000) -> None:
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam <= 0:
            raise RecpipeError(f"EASE lam must be a number > 0, got {lam!r}")
        self.lam, self.max_items = float(lam), max_items

    def fit(self, X: sp.spmatrix) -> EASE:
        X = _as_binary_csr(X)
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

