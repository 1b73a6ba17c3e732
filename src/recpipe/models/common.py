"""Pieces the recpipe models share: choosing training rows, sampled negatives, losses, constants."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.errors import DataError


def rating_rows(train: pd.DataFrame, model: str) -> pd.DataFrame:
    """The train rows with their ratings; raises DataError when ratings are missing (implicit data)."""
    missing = train["rating"].isna().to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        raise DataError(
            "data/processed/train.parquet",
            f"model {model!r} trains on ratings but some are null",
            column="rating",
            n_rows=int(missing.sum()),
            row=first,
            example=train.iloc[first][["user_id", "item_id", "rating"]].to_dict(),
            hint="Use an implicit objective (model=two_tower, or model=ncf model.objective=implicit).",
        )
    return train[["user_idx", "item_idx", "rating"]]


def implicit_rows(train: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    """The train rows that count as positives: all of them, or those rated >= ``min_rating``."""
    rows = train[["user_idx", "item_idx"]]
    if min_rating is None:
        return rows
    kept = rows[(train["rating"] >= min_rating).to_numpy(dtype=bool, na_value=False)]
    if kept.empty:
        raise DataError(
            "data/processed/train.parquet",
            f"no interaction has rating >= {min_rating}",
            column="rating",
            n_rows=len(train),
            hint="Lower or null the model's min_rating.",
        )
    return kept


def uniform_negatives(n: tf.Tensor, n_items: int, seed: tf.Tensor) -> tf.Tensor:
    """``n`` item indices drawn uniformly from the whole catalog (int32 [n]); ``seed``: a batch's seed."""
    return tf.random.stateless_uniform([n], seed=seed, minval=0, maxval=n_items, dtype=tf.int32)


def sampled_logistic_loss(pos_logits: tf.Tensor, neg_logits: tf.Tensor, num_negatives: int) -> tf.Tensor:
    """Binary cross-entropy per positive: label 1 for ``pos_logits``, 0 for ``num_negatives`` negatives.

    ``neg_logits`` are the logits of the sampled negatives (any number); their mean loss stands
    for the expected loss of one negative.
    """
    return tf.reduce_mean(tf.nn.softplus(-pos_logits)) + num_negatives * tf.reduce_mean(tf.nn.softplus(neg_logits))


def mean_square_norm(rows: tf.Tensor) -> tf.Tensor:
    """Mean over rows of the squared L2 norm: the per-example L2 penalty of a batch's embeddings."""
    return tf.reduce_mean(tf.reduce_sum(tf.square(rows), axis=-1))


def normal_init() -> tf.keras.initializers.Initializer:
    """Small random normal initial embeddings (a new instance per weight, as Keras requires)."""
    return tf.keras.initializers.RandomNormal(stddev=0.01)


def constant(model: tf.keras.Model, name: str, shape: tuple[int, ...] = ()) -> tf.Variable:
    """A non-trainable float32 weight set from the data before training and saved with the model."""
    return model.add_weight(name=name, shape=shape, initializer="zeros", trainable=False)
