"""What the classic models share: the closed-form model base, the binary train matrix, and sparse
matrices held in tf.Variables.

A classic model is fit in closed form on the train split with scipy (``fit_closed_form``) and
keeps what it learned (the train interactions, item-item / user-user weights; sparse ones as CSR
arrays) in tf.Variables, so ``score_all`` is TensorFlow and saving, loading and export work as for
any model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.models.base import RecModel


def as_binary_csr(X: sp.spmatrix) -> sp.csr_matrix:
    """Float32 CSR copy of ``X`` with every stored nonzero set to 1."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.eliminate_zeros()
    X.data[:] = 1.0
    return X


def row_ids(splits: tf.Tensor) -> tf.Tensor:
    """int32 row of each of the ``splits[-1]`` values of rows delimited by ``splits`` (int64)."""
    total = splits[-1]
    starts = splits[1:-1]  # where rows 1.. begin; empty rows add several marks at one place
    marks = tf.math.unsorted_segment_sum(tf.ones_like(starts, tf.int32), starts, total + 1)[:total]
    return tf.cumsum(marks)


class SparseRows(tf.keras.layers.Layer):
    """A sparse matrix held as CSR variables (their length is set by ``assign``), read by rows."""

    def __init__(self, n_rows: int, n_cols: int, name: str) -> None:
        super().__init__(name=name, trainable=False)
        self.n_rows, self.n_cols = n_rows, n_cols
        self.row_splits = tf.Variable(tf.zeros([n_rows + 1], tf.int64), trainable=False, name="row_splits")
        self.columns = tf.Variable(tf.zeros([0], tf.int32), shape=[None], trainable=False, name="columns")
        self.values = tf.Variable(tf.zeros([0], tf.float32), shape=[None], trainable=False, name="values")
        self.built = True

    def assign(self, m: sp.spmatrix) -> None:
        m = sp.csr_matrix(m, dtype=np.float32)
        if m.shape != (self.n_rows, self.n_cols):
            raise RecpipeError(f"{self.name}: expected a {self.n_rows} x {self.n_cols} matrix, got {m.shape}")
        m.sort_indices()
        self.row_splits.assign(m.indptr.astype(np.int64))
        self.columns.assign(m.indices.astype(np.int32))
        self.values.assign(m.data)

    def entries(self, idx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The stored entries of rows ``idx`` (int32 [b]) as (position in ``idx``, column, value).

        O(entries): no ragged ``value_rowids``, whose ``tf.repeat`` tiles [rows, longest row].
        """
        starts = tf.gather(self.row_splits, idx)
        lengths = tf.gather(self.row_splits, idx + 1) - starts
        splits = tf.concat([tf.zeros([1], tf.int64), tf.cumsum(lengths)], axis=0)
        at = row_ids(splits)
        flat = tf.gather(starts, at) + tf.range(splits[-1]) - tf.gather(splits, at)
        return at, tf.gather(self.columns, flat), tf.gather(self.values, flat)

    def rows(self, idx: tf.Tensor) -> tf.Tensor:
        """Rows ``idx`` (int32 [b]) as a dense float32 [b, n_cols]."""
        at, columns, values = self.entries(idx)
        return tf.scatter_nd(tf.stack([at, columns], axis=1), values, [tf.shape(idx)[0], self.n_cols])

    def rows_matmul(self, idx: tf.Tensor, other: SparseRows) -> tf.Tensor:
        """Rows ``idx`` of this matrix times ``other`` as a dense float32 [b, other.n_cols]; only the
        stored entries are multiplied (neither matrix is made dense)."""
        at, middle, values = self.entries(idx)
        pair, columns, other_values = other.entries(middle)
        coords = tf.stack([tf.gather(at, pair), columns], axis=1)
        return tf.scatter_nd(coords, tf.gather(values, pair) * other_values, [tf.shape(idx)[0], other.n_cols])


class ClosedFormModel(RecModel):
    """A ranking model fit by ``fit_closed_form(data)`` on the train split instead of gradient steps."""

    objective = "implicit"
    fitting = "closed_form"
    # the users whose scores will be asked (None: all); set before ``fit_closed_form`` by
    # ``fit_classic``, so a model may fit only what they need (user_knn: their neighbours)
    score_users: np.ndarray | None = None

    def __init__(self, cfg: Any, n_users: int, n_items: int) -> None:
        super().__init__(name=str(cfg.name))
        self.n_users, self.n_items = n_users, n_items


class Fitted:
    """A scipy recommender's binary train matrix, checked to exist before scoring."""

    X: sp.csr_matrix | None = None

    @property
    def n_items(self) -> int:
        return self._train().shape[1]

    def _train(self) -> sp.csr_matrix:
        if self.X is None:
            raise RecpipeError(f"{type(self).__name__}.score called before fit")
        return self.X
