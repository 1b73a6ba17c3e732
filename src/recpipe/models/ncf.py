"""Neural collaborative filtering: user and item embeddings concatenated through an MLP (NCF's MLP)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.models.base import RecModel, register
from recpipe.models.common import (
    constant,
    implicit_rows,
    mean_square_norm,
    normal_init,
    rating_rows,
    sampled_logistic_loss,
    uniform_negatives,
)

OBJECTIVES = ("rating", "implicit")
SCORE_BUDGET = 1 << 24  # floats of first-layer activations per score_all chunk (64 MB)


@register("ncf")
class NeuralCF(RecModel):
    """MLP over [p_u, q_i] with ReLU hidden ``layers`` and ``dropout``, then one linear output.

    ``objective: rating``: the output plus the global mean is the rating, fit by MSE.
    ``objective: implicit``: the output is a logit, fit by logistic loss of each train interaction
    (optionally only those rated >= ``min_rating``) against ``num_negatives`` items drawn uniformly
    from the catalog, fresh every batch. L2 (``l2``) applies to the embeddings each batch uses.
    """

    objective = "implicit"  # the class default; each instance takes model.objective
    fitting = "gradient"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(name="ncf")
        if cfg.objective not in OBJECTIVES:
            raise RecpipeError(f"model.objective must be one of {OBJECTIVES}, not {cfg.objective!r}")
        if not cfg.layers:
            raise RecpipeError("model.layers must list at least one hidden layer size for ncf")
        self.objective = str(cfg.objective)
        self.predicts_ratings = self.objective == "rating"
        self.n_items = n_items
        self.num_negatives = int(cfg.num_negatives)
        self.min_rating = cfg.min_rating
        self.l2, self.dropout = float(cfg.l2), float(cfg.dropout)
        dim = int(cfg.embedding_dim)
        self.user_embedding = self.add_weight(name="user_embedding", shape=(n_users, dim), initializer=normal_init())
        self.item_embedding = self.add_weight(name="item_embedding", shape=(n_items, dim), initializer=normal_init())
        self.hidden = [tf.keras.layers.Dense(int(h), activation="relu") for h in cfg.layers]
        self.out = tf.keras.layers.Dense(1)
        width = 2 * dim
        for layer in [*self.hidden, self.out]:
            layer.build((None, width))
            width = layer.units
        # rating objective only (0 for implicit)
        self.global_mean = constant(self, "global_mean")
        self.min_rating_seen = constant(self, "min_rating_seen")
        self.max_rating_seen = constant(self, "max_rating_seen")

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Set the rating constants (rating objective) and return the rows to fit."""
        if self.objective == "implicit":
            return implicit_rows(train, self.min_rating)
        rows = rating_rows(train, "ncf")
        ratings = rows["rating"].to_numpy("float64")
        self.global_mean.assign(ratings.mean())
        self.min_rating_seen.assign(ratings.min())
        self.max_rating_seen.assign(ratings.max())
        return rows

    def _mlp(self, x: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        """The network after the first layer's pre-activation ``x``; dropout when given a ``seed``."""
        for i, layer in enumerate(self.hidden):
            x = layer.activation(x) if i == 0 else layer(x)
            if seed is not None and self.dropout > 0:
                x = tf.nn.experimental.stateless_dropout(
                    x, self.dropout, seed=tf.random.experimental.stateless_fold_in(seed, i + 1)
                )
        return tf.squeeze(self.out(x), axis=-1) + self.global_mean

    def _pairs(self, users: tf.Tensor, items: tf.Tensor, seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """Outputs for (user, item) pairs and the mean squared norm of the embeddings used."""
        p, q = tf.gather(self.user_embedding, users), tf.gather(self.item_embedding, items)
        first = self.hidden[0]
        out = self._mlp(tf.matmul(tf.concat([p, q], axis=1), first.kernel) + first.bias, seed)
        return out, mean_square_norm(p) + mean_square_norm(q)

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        users, items, seed = batch["user_idx"], batch["item_idx"], batch["seed"] if training else None
        if self.objective == "rating":
            pred, norm = self._pairs(users, items, seed)
            return tf.reduce_mean(tf.square(batch["rating"] - pred)) + self.l2 * norm
        n = tf.size(users)
        negatives = uniform_negatives(n * self.num_negatives, self.n_items, batch["seed"])
        logits, norm = self._pairs(
            tf.concat([users, tf.repeat(users, self.num_negatives)], axis=0),
            tf.concat([items, negatives], axis=0),
            seed,
        )
        return sampled_logistic_loss(logits[:n], logits[n:], self.num_negatives) + self.l2 * norm

    def predict_rating(self, user_idx: tf.Tensor, item_idx: tf.Tensor) -> tf.Tensor:
        if not self.predicts_ratings:
            return super().predict_rating(user_idx, item_idx)
        pred, _ = self._pairs(user_idx, item_idx)
        return tf.clip_by_value(pred, self.min_rating_seen, self.max_rating_seen)

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        """The MLP for every item, users in chunks; the first layer's item half is computed once.

        Works for any number of users, also unknown while tracing (e.g. in the export).
        """
        first = self.hidden[0]
        dim = self.user_embedding.shape[1]
        item_part = tf.matmul(self.item_embedding, first.kernel[dim:]) + first.bias
        user_part = tf.matmul(tf.gather(self.user_embedding, user_idx), first.kernel[:dim])
        n = tf.shape(user_part)[0]
        chunk = tf.clip_by_value(n, 1, max(1, SCORE_BUDGET // (self.n_items * first.units)))
        n_chunks = (n + chunk - 1) // chunk
        chunks = tf.reshape(tf.pad(user_part, [[0, n_chunks * chunk - n], [0, 0]]), [n_chunks, chunk, first.units])
        scores = tf.map_fn(
            lambda users: self._mlp(users[:, None, :] + item_part[None, :, :]),
            chunks,
            fn_output_signature=tf.TensorSpec([None, self.n_items], tf.float32),
        )
        return tf.reshape(scores, [-1, self.n_items])[:n]
