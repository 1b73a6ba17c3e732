"""Classic recommenders as models: ``model=popularity|random|item_knn|user_knn|ease``.

They are fit in closed form (``fit_closed_form(data)``, no gradient steps) by ``recpipe.cf`` on the
train split, and hold what they learned in tf.Variables (the train interactions and the
item-item / user-user weights, sparse ones as CSR arrays), so ``score_all`` is TensorFlow and
``save_model`` / ``load_model`` / export work as for any model. The evaluate stage's baselines are
these same models (``recpipe.evaluation.baselines``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from recpipe import cf
from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics
from recpipe.models.base import RecModel, build, register

CLASSIC_MODELS = ("popularity", "random", "item_knn", "user_knn", "ease")
TUNE_METRIC = "ndcg_at_10"


def hash_uniform(seed: int | tf.Tensor, user_idx: tf.Tensor, n_items: int) -> tf.Tensor:
    """Uniform [0, 1) float32 [len(user_idx), n_items], a pure function of (seed, user, item).

    A splitmix64 hash, so a user's scores do not depend on batching or on the other users.
    ``seed`` is an integer or an int64 scalar tensor.
    """
    def u64(value: int) -> tf.Tensor:
        return tf.constant(value, tf.uint64)

    def xorshift(x: tf.Tensor, shift: int) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(shift)))

    users = tf.cast(tf.convert_to_tensor(user_idx), tf.uint64)
    items = tf.cast(tf.range(n_items), tf.uint64)
    x = tf.bitwise.bitwise_or(tf.bitwise.left_shift(users[:, None], u64(32)), items[None, :])
    x = tf.bitwise.bitwise_xor(x, tf.cast(tf.convert_to_tensor(seed, tf.int64), tf.uint64) * u64(0x9E3779B97F4A7C15))
    x = xorshift(x, 30) * u64(0xBF58476D1CE4E5B9)
    x = xorshift(x, 27) * u64(0x94D049BB133111EB)
    x = xorshift(x, 31)
    return tf.cast(tf.bitwise.right_shift(x, u64(40)), tf.float32) * 2.0**-24


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

    def rows(self, idx: tf.Tensor) -> tf.Tensor:
        """Rows ``idx`` (int32 [b]) as a dense float32 [b, n_cols]."""
        positions = tf.RaggedTensor.from_row_splits(
            tf.range(tf.size(self.columns, out_type=tf.int64)), self.row_splits, validate=False
        )
        picked = tf.gather(positions, idx)
        flat = picked.flat_values
        coords = tf.stack([tf.cast(picked.value_rowids(), tf.int32), tf.gather(self.columns, flat)], axis=1)
        return tf.scatter_nd(coords, tf.gather(self.values, flat), [tf.shape(idx)[0], self.n_cols])

    def sparse(self) -> tf.SparseTensor:
        """The whole matrix as a tf.SparseTensor."""
        rows = tf.ragged.row_splits_to_segment_ids(self.row_splits)
        indices = tf.stack([rows, tf.cast(self.columns, tf.int64)], axis=1)
        return tf.SparseTensor(indices, self.values, [self.n_rows, self.n_cols])


class ClosedFormModel(RecModel):
    """A model fit by ``fit_closed_form(data)`` on the train split instead of gradient steps."""

    def __init__(self, cfg: Any, n_users: int, n_items: int) -> None:
        super().__init__(name=str(cfg.name))
        self.n_users, self.n_items = n_users, n_items

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        """Fit on ``data.train`` (and tune on ``data.val`` where configured); returns the hyperparameters used."""
        raise NotImplementedError


def _options(cfg: Any, keys: Sequence[str]) -> dict[str, Any]:
    """The ``keys`` present in ``cfg`` (absent ones keep the ``recpipe.cf`` defaults)."""
    return {k: cfg[k] for k in keys if k in cfg and cfg[k] is not None}


@register("popularity")
class Popularity(ClosedFormModel):
    """Every user gets the items by train interaction count."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.item_popularity = tf.Variable(tf.zeros([n_items]), trainable=False, name="item_popularity")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        self.item_popularity.assign(data.item_popularity().astype(np.float32))
        return {}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.broadcast_to(self.item_popularity[None, :], [tf.shape(user_idx)[0], self.n_items])


@register("random")
class Random(ClosedFormModel):
    """Every user gets the items in a random order of their own, fixed by ``seed`` (``hash_uniform``)."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.seed = tf.Variable(int(cfg.seed), dtype=tf.int64, trainable=False, name="seed")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        return {"seed": int(self.seed.numpy())}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return hash_uniform(self.seed, user_idx, self.n_items)


@register("item_knn")
class ItemKNN(ClosedFormModel):
    """Item-based CF (``recpipe.cf.ItemKNN``: cosine, ``k`` neighbours, ``shrink``): X_u @ S."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.options = _options(cfg, ("k", "shrink"))
        self.train_items = SparseRows(n_users, n_items, "train_items")
        self.neighbours = SparseRows(n_items, n_items, "item_neighbours")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        knn = cf.ItemKNN(**self.options).fit(data.matrix("train"))
        self.train_items.assign(knn.X)
        self.neighbours.assign(knn.S)
        return {"k": knn.k, "shrink": knn.shrink}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.sparse.sparse_dense_matmul(self.train_items.rows(user_idx), self.neighbours.sparse())


@register("user_knn")
class UserKNN(ClosedFormModel):
    """User-based CF (``recpipe.cf.UserKNN``: cosine, ``k`` neighbours, ``shrink``): S_u @ X."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.options = _options(cfg, ("k", "shrink"))
        self.train_items = SparseRows(n_users, n_items, "train_items")
        self.neighbours = SparseRows(n_users, n_users, "user_neighbours")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        knn = cf.UserKNN(**self.options).fit(data.matrix("train"))
        self.train_items.assign(knn.X)
        self.neighbours.assign(knn.S)
        return {"k": knn.k, "shrink": knn.shrink}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.sparse.sparse_dense_matmul(self.neighbours.rows(user_idx), self.train_items.sparse())


def tune_ease(
    train: sp.csr_matrix, val: sp.csr_matrix, grid: Sequence[float], batch_size: int = 1024
) -> tuple[cf.EASE, dict[float, float]]:
    """EASE fit on ``train`` for each lambda of ``grid``; returns the one with the best validation
    ``ndcg_at_10`` (``val`` as truth, each user's train items excluded) and every lambda's value."""
    if not len(grid):
        raise RecpipeError("EASE lam: auto needs a non-empty grid of lambdas")
    if val.nnz == 0:
        raise RecpipeError("EASE lam: auto tunes on the validation split, which is empty; set a number")
    scores: dict[float, float] = {}
    best: cf.EASE | None = None
    for lam in tqdm(grid, desc="EASE lambda", unit="fit", leave=False):
        ease = cf.EASE(lam).fit(train)
        scores[ease.lam] = rank_metrics(ease.score, train, val, (10,), batch_size)[TUNE_METRIC]
        if best is None or scores[ease.lam] > scores[best.lam]:
            best = ease
    assert best is not None
    return best, scores


@register("ease")
class EASE(ClosedFormModel):
    """EASE (``recpipe.cf.EASE``): X_u @ B with a dense item-item B.

    ``lam`` is a number, or ``auto``: the value of ``grid`` with the best validation ndcg_at_10.
    """

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        cf.check_dense_catalog(n_items)
        self.lam = cfg.lam
        self.grid = [float(v) for v in cfg.get("grid") or ()]
        if self.lam != "auto":
            cf.EASE(self.lam)  # validates lam before any fitting
        self.train_items = SparseRows(n_users, n_items, "train_items")
        self.item_weights = tf.Variable(tf.zeros([n_items, n_items]), trainable=False, name="item_weights")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        train = data.matrix("train")
        if self.lam == "auto":
            ease, tuning = tune_ease(train, data.matrix("val"), self.grid)
            params: dict[str, Any] = {"lam": ease.lam, f"val_{TUNE_METRIC}": [[k, v] for k, v in tuning.items()]}
        else:
            ease = cf.EASE(self.lam).fit(train)
            params = {"lam": ease.lam}
        self.train_items.assign(ease.X)
        self.item_weights.assign(ease.B)
        return params

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.train_items.rows(user_idx), self.item_weights)


def fit_classic(name: str, data: Processed, params: Mapping[str, Any]) -> tuple[ClosedFormModel, dict[str, Any]]:
    """Classic model ``name`` built with config ``params`` (its conf/model keys) and fit on ``data``.

    Returns the model and the hyperparameters it used (e.g. the lambda EASE chose).
    """
    if name not in CLASSIC_MODELS:
        raise RecpipeError(f"{name!r} is not a classic model; available: {', '.join(CLASSIC_MODELS)}")
    model = build(OmegaConf.create({**params, "name": name}), n_users=data.n_users, n_items=data.n_items)
    assert isinstance(model, ClosedFormModel)
    return model, model.fit_closed_form(data)
