"""Biased matrix factorization on explicit ratings, with an implicit-feedback term for ranking."""

from __future__ import annotations

from typing import Any

import pandas as pd
import tensorflow as tf

from recpipe.models.base import RecModel, register
from recpipe.models.common import (
    constant,
    mean_square_norm,
    normal_init,
    rating_rows,
    sampled_logistic_loss,
    uniform_negatives,
)


@register("mf")
class MatrixFactorization(RecModel):
    """Rating r(u, i) = mu + b_u + b_i + p_u . q_i, fit by MSE with L2 on the rows each batch uses.

    Rating MSE alone ranks rarely rated items high, so with ``implicit_weight > 0`` the model also
    learns which items a user rates: the ranking score s(u, i) = p_u . q_i + x_u . y_i + c_i
    (``implicit_dim`` extra factors x, y and an item bias c) is fit by logistic loss of each rated
    item against ``num_negatives`` items drawn uniformly from the catalog, weighted by
    ``implicit_weight``. The factors p, q are shared by both scores. ``score_all`` returns s, or
    the predicted rating when ``implicit_weight`` is 0; either way it factorizes, with query
    [p_u, x_u, 1] and candidate [q_i, y_i, c_i] (or [p_u, 1] and [q_i, b_i]).
    """

    predicts_ratings = True
    objective = "rating"
    fitting = "gradient"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(name="mf")
        self.n_users, self.n_items = n_users, n_items
        self.implicit = float(cfg.implicit_weight) > 0
        self.implicit_weight = float(cfg.implicit_weight)
        self.num_negatives = int(cfg.num_negatives)
        self.l2, self.bias_l2 = float(cfg.l2), float(cfg.bias_l2)
        dim = int(cfg.embedding_dim)

        def weight(name: str, rows: int, width: int | None = None) -> tf.Variable:
            shape, init = ((rows, width), normal_init()) if width else ((rows,), "zeros")
            return self.add_weight(name=name, shape=shape, initializer=init)

        self.user_factors = weight("user_factors", n_users, dim)
        self.item_factors = weight("item_factors", n_items, dim)
        self.user_bias, self.item_bias = weight("user_bias", n_users), weight("item_bias", n_items)
        if self.implicit:
            extra = int(cfg.implicit_dim)
            self.user_extra = weight("user_extra", n_users, extra)
            self.item_extra = weight("item_extra", n_items, extra)
            self.rank_bias = weight("rank_bias", n_items)
        self.global_mean = constant(self, "global_mean")
        self.min_rating = constant(self, "min_rating")
        self.max_rating = constant(self, "max_rating")

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Set the global mean and rating range from ``train``; return the rows to fit."""
        rows = rating_rows(train, "mf")
        ratings = rows["rating"].to_numpy("float64")
        self.global_mean.assign(ratings.mean())
        self.min_rating.assign(ratings.min())
        self.max_rating.assign(ratings.max())
        return rows

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        users, items = batch["user_idx"], batch["item_idx"]
        p, q = tf.gather(self.user_factors, users), tf.gather(self.item_factors, items)
        b_u, b_i = tf.gather(self.user_bias, users), tf.gather(self.item_bias, items)
        dot = tf.reduce_sum(p * q, axis=1)
        error = batch["rating"] - (self.global_mean + b_u + b_i + dot)
        loss = (
            tf.reduce_mean(tf.square(error))
            + self.l2 * (mean_square_norm(p) + mean_square_norm(q))
            + self.bias_l2 * tf.reduce_mean(tf.square(b_u) + tf.square(b_i))
        )
        if not self.implicit:
            return loss
        x, y = tf.gather(self.user_extra, users), tf.gather(self.item_extra, items)
        pos = dot + tf.reduce_sum(x * y, axis=1) + tf.gather(self.rank_bias, items)
        negatives = uniform_negatives(tf.size(users) * self.num_negatives, self.n_items, batch["seed"])
        if self.num_negatives > 1:
            p, x = tf.repeat(p, self.num_negatives, axis=0), tf.repeat(x, self.num_negatives, axis=0)
        neg = (
            tf.reduce_sum(p * tf.gather(self.item_factors, negatives), axis=1)
            + tf.reduce_sum(x * tf.gather(self.item_extra, negatives), axis=1)
            + tf.gather(self.rank_bias, negatives)
        )
        return (
            loss
            + self.l2 * (mean_square_norm(x) + mean_square_norm(y))
            + self.implicit_weight * sampled_logistic_loss(pos, neg, self.num_negatives)
        )

    def predict_rating(self, user_idx: tf.Tensor, item_idx: tf.Tensor) -> tf.Tensor:
        rating = (
            self.global_mean
            + tf.gather(self.user_bias, user_idx)
            + tf.gather(self.item_bias, item_idx)
            + tf.reduce_sum(tf.gather(self.user_factors, user_idx) * tf.gather(self.item_factors, item_idx), axis=1)
        )
        return tf.clip_by_value(rating, self.min_rating, self.max_rating)

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        scores = tf.matmul(self.query_vectors(user_idx), self.candidate_vectors(), transpose_b=True)
        if self.implicit:
            return scores
        return scores + self.global_mean + tf.gather(self.user_bias, user_idx)[:, None]

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        parts = [tf.gather(self.user_factors, user_idx)]
        if self.implicit:
            parts.append(tf.gather(self.user_extra, user_idx))
        return tf.concat([*parts, tf.ones_like(parts[0][:, :1])], axis=1)

    def candidate_vectors(self) -> tf.Tensor:
        if self.implicit:
            return tf.concat([self.item_factors, self.item_extra, self.rank_bias[:, None]], axis=1)
        return tf.concat([self.item_factors, self.item_bias[:, None]], axis=1)
