"""A sparse matrix's entries grouped by row into padded blocks of rows of similar length.

The closed-form solvers that touch only the stored entries (Gibbs MF, ``recpipe.models.gibbs``;
iALS, ``recpipe.models.ials``) solve one small d x d system per row; grouping the rows once into
``RowBlocks`` turns each block's systems into one ``[b, L, d] x [b, L, d]`` batched matmul and
one batched Cholesky, with no dense users x items matrix and no per-entry d x d tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

BLOCK_ENTRIES = 1 << 20  # padded ratings per block (memory: entries x d floats)
GROWTH = 1.25  # the longest row of a block has at most this many times the shortest's entries ...
MIN_WIDTH = 8  # ... or this many


@dataclass(frozen=True)
class RowBlocks:
    """The entries of a sparse ``n_rows`` x ``n_cols`` matrix grouped by row: rows sorted by length,
    cut into blocks of at most ``BLOCK_ENTRIES`` padded entries whose rows differ in length by at
    most ``GROWTH`` times (padding < 25%); every row (also rows without entries) is in one block.
    Padding entries have column ``n_cols`` and value 0: gathered from a column table with one more,
    all-zero row, they add nothing to any sum, so no mask is needed."""

    rows: list[tf.Tensor]  # int32 [b]: the rows of each block
    cols: list[tf.Tensor]  # int32 [b, L]: their entries' columns (padding: n_cols)
    values: list[tf.Tensor]  # float32 [b, L]: their entries' values (padding: 0)
    counts: list[tf.Tensor]  # float32 [b]: each row's number of entries
    order: tf.Tensor  # int32 [n_rows]: position of each row in the concatenated blocks


def stable_argsort(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for non-negative integer keys < 2^32, as two radix passes
    over 16-bit halves (numpy sorts 16-bit keys by radix sort: linear time, 2x faster at 20M)."""
    low = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return low[np.argsort((keys[low] >> 16).astype(np.uint16), kind="stable")]


def by_row(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int, n_cols: int) -> sp.csr_matrix:
    """The entries (``rows[k]``, ``cols[k]``, ``values[k]``) of an ``n_rows`` x ``n_cols`` matrix as
    CSR, in their given order within each row (a stable sort; repeated entries are kept, not summed)."""
    order = stable_argsort(rows)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return sp.csr_matrix((values[order], cols[order], indptr), shape=(n_rows, n_cols))


def row_blocks(matrix: sp.csr_matrix, budget: int = BLOCK_ENTRIES) -> RowBlocks:
    """Group the stored entries of ``matrix`` (CSR) by row into ``RowBlocks``."""
    n_rows, n_cols = matrix.shape
    cols, values, starts = matrix.indices, matrix.data, matrix.indptr
    counts = np.diff(starts)
    row_order = np.argsort(counts, kind="stable")
    sorted_counts = counts[row_order]
    blocks: tuple[list, list, list, list] = ([], [], [], [])
    begin = 0
    while begin < n_rows:
        # the rows up to ``limit`` entries long, as many as fit the budget at that width (at least one)
        limit = max(int(sorted_counts[begin]) * GROWTH, MIN_WIDTH)
        end = int(np.searchsorted(sorted_counts, limit, side="right"))
        end = max(begin + 1, min(end, begin + int(budget // limit)))
        members = row_order[begin:end]
        width = max(int(sorted_counts[end - 1]), 1)
        valid = np.arange(width)[None, :] < counts[members][:, None]
        at = np.where(valid, starts[members][:, None] + np.arange(width)[None, :], 0)
        for out, array, dtype in (
            (blocks[0], members, tf.int32),
            (blocks[1], np.where(valid, cols[at], n_cols), tf.int32),
            (blocks[2], np.where(valid, values[at], 0.0), tf.float32),
            (blocks[3], counts[members], tf.float32),
        ):
            out.append(tf.constant(array, dtype))
        begin = end
    order = np.empty(n_rows, np.int32)
    order[row_order] = np.arange(n_rows, dtype=np.int32)
    return RowBlocks(*blocks, order=tf.constant(order))
