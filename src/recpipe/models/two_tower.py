"""Two-tower retrieval (TFRS): user and item towers trained with in-batch softmax on implicit positives."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recpipe.models.base import RecModel, register
from recpipe.models.common import constant, implicit_rows


def tower(n: int, dim: int, layers: list[int]) -> tf.keras.Sequential:
    """Index -> embedding of size ``dim``, then ReLU ``layers`` with the last one linear."""
    parts: list[tf.keras.layers.Layer] = [tf.keras.Input(shape=(), dtype=tf.int32), tf.keras.layers.Embedding(n, dim)]
    for i, units in enumerate(layers):
        parts.append(tf.keras.layers.Dense(int(units), activation="relu" if i < len(layers) - 1 else None))
    return tf.keras.Sequential(parts)


@register("two_tower")
class TwoTower(tfrs.models.Model, RecModel):
    """Query tower on user indices, candidate tower on item indices, scored by dot product.

    Trained with ``tfrs.tasks.Retrieval`` (softmax over the other items of the batch), optionally
    correcting logits by each item's sampling probability (its train frequency,
    ``sampling_correction``) and dropping in-batch negatives that are the positive item itself
    (``remove_accidental_hits``). Positives are the train interactions, or those rated >=
    ``min_rating``.
    """

    objective = "implicit"
    fitting = "gradient"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(name="two_tower")
        self.n_items = n_items
        layers = [int(u) for u in cfg.layers]
        self.query_tower = tower(n_users, int(cfg.embedding_dim), layers)
        self.candidate_tower = tower(n_items, int(cfg.embedding_dim), layers)
        self.task = tfrs.tasks.Retrieval(
            temperature=cfg.temperature, remove_accidental_hits=bool(cfg.remove_accidental_hits)
        )
        self.sampling_correction = bool(cfg.sampling_correction)
        self.remove_accidental_hits = bool(cfg.remove_accidental_hits)
        self.min_rating = cfg.min_rating
        self.item_probability = constant(self, "item_probability", (n_items,))

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Set each item's sampling probability (train frequency); return the positives."""
        rows = implicit_rows(train, self.min_rating)
        counts = np.bincount(rows["item_idx"].to_numpy(), minlength=self.n_items)
        self.item_probability.assign(counts / counts.sum())
        return rows

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        items = batch["item_idx"]
        options: dict[str, tf.Tensor] = {}
        if self.sampling_correction:
            options["candidate_sampling_probability"] = tf.gather(self.item_probability, items)
        if self.remove_accidental_hits:
            options["candidate_ids"] = items
        return self.task(
            self.query_tower(batch["user_idx"], training=training),
            self.candidate_tower(items, training=training),
            compute_metrics=not training,
            **options,
        )

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.query_vectors(user_idx), self.candidate_vectors(), transpose_b=True)

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        return self.query_tower(user_idx)

    def candidate_vectors(self) -> tf.Tensor:
        return self.candidate_tower(tf.range(self.n_items))
