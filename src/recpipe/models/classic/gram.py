"""Dot products between the columns of a large sparse binary matrix, a block of columns at a time.

``ColumnDots(X).block(cols)`` is ``X[:, cols]^T X`` as a dense float32 [len(cols), n_cols] array:
the item-item (X = users x items) or user-user (X = items x users) co-occurrence counts behind
cosine kNN and EASE's Gram matrix. A sparse product alone is slow when a few rows of X are dense
(the most active users co-rate a large share of the catalog; the most popular items connect most
users): its cost is the sum of the squared row counts and its output is nearly dense. So the
``dense_rows`` rows with the most nonzeros (those with at least ``n_cols / DENSE_SHARE`` of them)
are multiplied as a dense matrix with TensorFlow (BLAS, multi-threaded) and the rest with scipy.
For 0/1 matrices the counts are sums of ones, exact in float32 (up to 2^24), so the split never
changes a result; other values (``gibbs.rated_prior``) are float32 sums, deterministic for given
``dense_rows``.
``blocks`` yields the blocks in order, computing the next block's scipy part in a background
thread while the caller works on the current one (scipy holds the GIL; TensorFlow does not).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

# rows of X multiplied densely: at most this many, each with at least n_cols / DENSE_SHARE nonzeros
DENSE_ROWS = 1024
DENSE_SHARE = 64


class ColumnDots:
    """``X[:, cols]^T X`` for blocks of columns of a sparse matrix ``X`` (see the module docstring)."""

    def __init__(self, X: sp.spmatrix, dense_rows: int = DENSE_ROWS) -> None:
        X = sp.csr_matrix(X, dtype=np.float32)
        self.n_cols = X.shape[1]
        counts = np.diff(X.indptr)
        by_count = np.argsort(-counts, kind="stable")[:dense_rows]
        heavy = np.zeros(X.shape[0], dtype=bool)
        heavy[by_count[counts[by_count] * DENSE_SHARE >= max(self.n_cols, 1)]] = True
        self.dense = tf.constant(X[heavy].toarray()) if heavy.any() else None  # [n_heavy, n_cols]
        light = X[~heavy]
        self.light = light.tocsr()
        self.light_t = light.T.tocsr()  # [n_cols, n_light]

    def _sparse(self, cols: np.ndarray) -> np.ndarray:
        return (self.light_t[cols] @ self.light).toarray()

    def _add_dense(self, cols: np.ndarray, sparse: np.ndarray) -> tf.Tensor:
        if self.dense is None:
            return tf.constant(sparse)
        return tf.matmul(tf.gather(self.dense, cols, axis=1), self.dense, transpose_a=True) + sparse

    def block(self, cols: np.ndarray) -> tf.Tensor:
        """float32 [len(cols), n_cols]: the dot products of columns ``cols`` with every column."""
        return self._add_dense(cols, self._sparse(cols))

    def blocks(self, blocks: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, tf.Tensor]]:
        """(cols, ``block(cols)``) for each of ``blocks``, the scipy part one block ahead in a thread."""
        if not blocks:
            return
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self._sparse, blocks[0])
            for i, cols in enumerate(blocks):
                sparse = pending.result()
                if i + 1 < len(blocks):
                    pending = pool.submit(self._sparse, blocks[i + 1])
                yield cols, self._add_dense(cols, sparse)


def column_blocks(cols: np.ndarray, n_cols: int, block_elements: int) -> list[np.ndarray]:
    """``cols`` split into consecutive blocks of about ``block_elements / n_cols`` columns each."""
    size = max(1, block_elements // max(n_cols, 1))
    return [cols[s : s + size] for s in range(0, len(cols), size)]
