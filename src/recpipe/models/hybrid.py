"""Hybrid two-tower retrieval (TFRS): id embeddings combined with item and user features.

The candidate tower embeds an item's id, its genres (mean of the genre embeddings), release-year
bucket and title tokens (mean of the token embeddings); the query tower embeds the user's id, age
bucket, gender, occupation, zip prefix and ``history`` (the genre and year-bucket counts of the
user's train items, averaged through one linear embedding). With ``layers: []`` a tower sums its
embeddings (all ``embedding_dim`` wide, as in LightFM); with ``layers`` it concatenates them, as in
the TFRS featurization tutorials, through dense layers (ReLU, the last one linear).

Cold start: row ``n`` of each id embedding stands for an unknown id. Items (users) without train
positives always use it, and in training a random share ``item_id_dropout`` (``user_id_dropout``)
of the batch's ids is replaced by it, so the feature path learns to place an item from its
features alone. A new item given only by its features gets a vector the same way
(``item_vectors_from_features``).

Training, loss and options are those of ``two_tower`` (``tfrs.tasks.Retrieval``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.features import TITLE_LENGTH, FeatureSpec, encode_items, encode_users
from recpipe.models.base import register
from recpipe.models.content import feature_blocks, user_profiles
from recpipe.models.two_tower import TwoTower

MULTI_HOT, SEQUENCE, CATEGORICAL = "multi_hot", "sequence", "categorical"
HISTORY_FEATURES = ("genres", "year")
# name -> (kind, number of ids or multi-hot width, values per entity)
FeatureInputs = Mapping[str, tuple[str, int, int]]


def item_inputs(spec: FeatureSpec) -> dict[str, tuple[str, int, int]]:
    """How the candidate tower reads each item feature of ``spec``."""
    kinds = {"genres": MULTI_HOT, "title": SEQUENCE, "year": CATEGORICAL}
    widths = {"genres": len(spec.genres), "title": TITLE_LENGTH, "year": 1}
    return {name: (kinds[name], size, widths[name]) for name, size in spec.item_sizes().items()}


def history_sizes(spec: FeatureSpec) -> dict[str, int]:
    """The item features (genres, year) whose counts over a user's train items make the ``history`` input."""
    return {name: size for name, size in spec.item_sizes().items() if name in HISTORY_FEATURES}


def user_inputs(spec: FeatureSpec) -> dict[str, tuple[str, int, int]]:
    """How the query tower reads each user feature of ``spec`` (categorical), plus ``history``."""
    inputs = {name: (CATEGORICAL, size, 1) for name, size in spec.user_sizes().items()}
    width = sum(history_sizes(spec).values())
    if width:
        inputs["history"] = (MULTI_HOT, width, width)
    return inputs


class FeatureTower(tf.keras.layers.Layer):
    """Id embedding + feature embeddings: summed, or concatenated through dense ``layers``.

    Holds every entity's encoded features (``set_features``) and whether it had train positives
    (``known``); see the module docstring for the unknown-id row and the id dropout.
    """

    def __init__(
        self,
        n: int,
        inputs: FeatureInputs,
        dim: int,
        layers: Sequence[int],
        id_dropout: float,
        name: str,
    ) -> None:
        super().__init__(name=name)
        self.n, self.inputs, self.id_dropout = n, dict(inputs), float(id_dropout)
        self.id_embedding = tf.keras.layers.Embedding(n + 1, dim, name="id")
        self.known = self.add_weight(name="known", shape=(n,), initializer="ones", trainable=False)
        self.catalog: dict[str, tf.Variable] = {}
        self.embeddings: dict[str, tf.keras.layers.Layer] = {}
        for feature, (kind, size, width) in self.inputs.items():
            shape = (n,) if kind == CATEGORICAL else (n, width)
            dtype = tf.float32 if kind == MULTI_HOT else tf.int32
            self.catalog[feature] = self.add_weight(
                name=f"{feature}_values", shape=shape, dtype=dtype, initializer="zeros", trainable=False
            )
            self.embeddings[feature] = (
                tf.keras.layers.Dense(dim, use_bias=False, name=feature)
                if kind == MULTI_HOT
                else tf.keras.layers.Embedding(size, dim, name=feature)
            )
        self.dense = [
            tf.keras.layers.Dense(int(units), activation="relu" if i < len(layers) - 1 else None)
            for i, units in enumerate(layers)
        ]
        # build every weight now: the training loop builds its optimizer on the trainable variables
        self.id_embedding.build((None,))
        for feature, (kind, _, width) in self.inputs.items():
            self.embeddings[feature].build((None, width) if kind == MULTI_HOT else (None,))
        width = dim * (1 + len(self.inputs))
        for layer in self.dense:
            layer.build((None, width))
            width = layer.units
        self.built = True

    def set_features(self, encoded: Mapping[str, np.ndarray]) -> None:
        """Store encoded features of all ``n`` entities (``encode_items`` / ``encode_users`` output)."""
        for feature, values in encoded.items():
            self.catalog[feature].assign(np.asarray(values).reshape(self.catalog[feature].shape))

    def call(self, idx: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Vectors of entities ``idx`` (int32 [batch])."""
        idx = tf.cast(idx, tf.int32)
        unknown = tf.fill(tf.shape(idx), self.n)
        ids = tf.where(tf.gather(self.known, idx) > 0, idx, unknown)
        if training and self.id_dropout > 0:
            ids = tf.where(tf.random.uniform(tf.shape(idx)) < self.id_dropout, unknown, ids)
        features = {name: tf.gather(values, idx) for name, values in self.catalog.items()}
        return self.embed(ids, features)

    def embed(self, ids: tf.Tensor, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Vectors from id-embedding rows ``ids`` and encoded ``features`` (batch-major)."""
        parts = [self.id_embedding(ids)]
        for name, (kind, _, _) in self.inputs.items():
            values, layer = features[name], self.embeddings[name]
            if kind == MULTI_HOT:
                values = tf.cast(values, tf.float32)
                parts.append(layer(values / tf.maximum(tf.reduce_sum(values, axis=1, keepdims=True), 1.0)))
            elif kind == SEQUENCE:
                mask = tf.cast(values > 0, tf.float32)[:, :, None]
                total = tf.reduce_sum(layer(values) * mask, axis=1)
                parts.append(total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
            else:
                parts.append(layer(values))
        if not self.dense:
            return tf.add_n(parts)
        x = tf.concat(parts, axis=1)
        for layer in self.dense:
            x = layer(x)
        return x


@register("hybrid")
class Hybrid(TwoTower):
    """``two_tower`` with feature towers (see the module docstring).

    Built with ``features`` (a ``FeatureSpec`` or its dict) and, when training, the catalog tables
    ``items`` and ``users`` to encode; a loaded model gets the encoded features from its weights.
    """

    uses_features = True
    embeds_new_items = True
    feature_spec: FeatureSpec

    def __init__(
        self,
        cfg: Any,
        n_users: int,
        n_items: int,
        features: FeatureSpec | Mapping[str, Any] | None = None,
        items: pd.DataFrame | None = None,
        users: pd.DataFrame | None = None,
        **context: Any,
    ) -> None:
        super().__init__(cfg, n_users, n_items)
        self.feature_spec = features if isinstance(features, FeatureSpec) else FeatureSpec.from_dict(features or {})
        dims = (int(cfg.embedding_dim), [int(u) for u in cfg.layers])
        # replace two_tower's id-only towers (task, sampling correction and loss stay)
        self.query_tower = FeatureTower(
            n_users, user_inputs(self.feature_spec), *dims, float(cfg.user_id_dropout), name="query_tower"
        )
        self.candidate_tower = FeatureTower(
            n_items, item_inputs(self.feature_spec), *dims, float(cfg.item_id_dropout), name="candidate_tower"
        )
        if items is not None:
            self.candidate_tower.set_features(encode_items(items, self.feature_spec))
        if users is not None:
            self.query_tower.set_features(encode_users(users, self.feature_spec))

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """``two_tower``'s preparation, plus which users and items have train positives (the rest are cold)."""
        rows = super().prepare(train)
        self.candidate_tower.known.assign(tf.cast(self.item_probability > 0, tf.float32))
        users = np.bincount(rows["user_idx"].to_numpy(), minlength=self.query_tower.n)
        self.query_tower.known.assign((users > 0).astype(np.float32))
        sizes = history_sizes(self.feature_spec)
        if sizes:
            blocks = feature_blocks(self.candidate_tower.catalog, sizes)
            items = tf.concat(list(blocks.values()), axis=1).numpy()
            self.query_tower.set_features(
                {
                    "history": user_profiles(
                        items,
                        rows["user_idx"].to_numpy(),
                        rows["item_idx"].to_numpy(),
                        np.ones(len(rows), np.float32),
                        self.query_tower.n,
                        normalize=False,
                    )
                }
            )
        return rows

    def item_vectors_from_features(self, encoded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Candidate vectors of items given only by their encoded features (``ItemEncoder`` output)."""
        ids = tf.fill(tf.shape(encoded[self.feature_spec.item[0]])[:1], self.candidate_tower.n)
        return self.candidate_tower.embed(ids, encoded)
