"""Content-based recommender: users are profiled by the features of the items they interacted with.

Each item is a TF-IDF vector over its features (genres, release-year bucket, title tokens; see
``recpipe.features``), each feature's block L2-normalized and weighted by ``model.weights``, the
whole vector L2-normalized. A user's profile is the normalized (optionally rating-weighted) sum of
their train items' vectors, and an item's score is its cosine with the profile. No item id is
learned, so items never seen in training rank like any other. Fit in closed form (``fit_closed_form``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.features import FeatureSpec, encode_items
from recpipe.models.base import RecModel, register
from recpipe.models.common import constant

WEIGHTINGS = ("uniform", "rating", "centered")


def feature_blocks(encoded: Mapping[str, tf.Tensor], sizes: Mapping[str, int]) -> dict[str, tf.Tensor]:
    """Count matrices (float32 [n, size]) per item feature: genres multi-hot, year one-hot, title token counts.

    ``encoded`` is ``ItemEncoder`` / ``encode_items`` output, ``sizes`` ``FeatureSpec.item_sizes()``.
    Missing values (year bucket 0) and title padding / unknown tokens (ids 0, 1) count nothing.
    """
    blocks: dict[str, tf.Tensor] = {}
    for name, size in sizes.items():
        values = tf.convert_to_tensor(encoded[name])
        if name == "genres":
            blocks[name] = tf.cast(values, tf.float32)
        elif name == "year":
            blocks[name] = tf.one_hot(values, size) * tf.cast(values > 0, tf.float32)[:, None]
        else:
            counts = tf.math.bincount(values, minlength=size, maxlength=size, axis=-1, dtype=tf.float32)
            blocks[name] = counts * tf.cast(tf.range(size) >= 2, tf.float32)
    return blocks


def inverse_document_frequency(counts: tf.Tensor) -> tf.Tensor:
    """Smoothed idf per column of an item x term count matrix: ``log((1 + n) / (1 + df)) + 1``."""
    n = tf.cast(tf.shape(counts)[0], tf.float32)
    df = tf.reduce_sum(tf.cast(counts > 0, tf.float32), axis=0)
    return tf.math.log((1.0 + n) / (1.0 + df)) + 1.0


def content_vectors(blocks: Mapping[str, tf.Tensor], idf: tf.Tensor, weights: Mapping[str, float]) -> tf.Tensor:
    """Unit-norm item vectors [n, sum of block widths]: each block TF-IDF-weighted, normalized and
    scaled by ``sqrt(weights[block])`` (so cosines add up as weighted block cosines), then the row
    normalized. Rows without any feature stay zero."""
    parts, start = [], 0
    for name, block in blocks.items():
        width = block.shape[1]
        scale = float(weights.get(name, 1.0)) ** 0.5
        parts.append(scale * tf.math.l2_normalize(block * idf[start : start + width], axis=1))
        start += width
    return tf.math.l2_normalize(tf.concat(parts, axis=1), axis=1)


def interaction_weights(rows: pd.DataFrame, weighting: str) -> np.ndarray:
    """Weight of each train interaction in its user's profile.

    ``uniform``: 1; ``rating``: the rating; ``centered``: rating minus the user's mean rating (items
    rated below it push the profile away). The rating weightings need ratings on every row.
    """
    if weighting not in WEIGHTINGS:
        raise RecpipeError(f"model.weighting must be one of {', '.join(WEIGHTINGS)}, not {weighting!r}")
    if weighting == "uniform":
        return np.ones(len(rows), np.float32)
    ratings = rows["rating"].to_numpy(np.float64)
    if np.isnan(ratings).any():
        raise RecpipeError(f"model.weighting={weighting} needs ratings; the data is implicit: use uniform")
    if weighting == "rating":
        return ratings.astype(np.float32)
    user_mean = pd.Series(ratings).groupby(rows["user_idx"].to_numpy()).transform("mean").to_numpy()
    return (ratings - user_mean).astype(np.float32)


def user_profiles(
    item_vectors: np.ndarray,
    user_idx: np.ndarray,
    item_idx: np.ndarray,
    weights: np.ndarray,
    n_users: int,
    normalize: bool = True,
) -> np.ndarray:
    """Profiles float32 [n_users, d]: the weighted sum of each user's item vectors (zero without
    items), scaled to unit norm unless ``normalize`` is false."""
    interactions = sp.csr_matrix((weights, (user_idx, item_idx)), shape=(n_users, len(item_vectors)))
    profiles = np.asarray(interactions @ item_vectors, dtype=np.float32)
    if not normalize:
        return profiles
    return profiles / np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)


@register("content")
class ContentModel(RecModel):
    """Cosine between TF-IDF item feature vectors and user profiles (see the module docstring).

    Built with ``features`` (a ``FeatureSpec`` or its dict) and, when training, the catalog
    ``items`` to encode; a loaded model gets the vectors from its weights.
    """

    objective = "implicit"
    fitting = "closed_form"
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
        **context: Any,
    ) -> None:
        super().__init__(name="content")
        self.feature_spec = features if isinstance(features, FeatureSpec) else FeatureSpec.from_dict(features or {})
        if not self.feature_spec.item:
            raise RecpipeError(
                "model=content needs item features, and the data has none of those configured in "
                "data.features.item (genres, year, title)"
            )
        self.n_users, self.n_items = n_users, n_items
        self.block_weights = {str(k): float(v) for k, v in dict(cfg.weights).items()}
        self.weighting = str(cfg.weighting)
        width = sum(self.feature_spec.item_sizes().values())
        self.idf = constant(self, "idf", (width,))
        self.item_matrix = constant(self, "item_matrix", (n_items, width))
        self.profiles = constant(self, "profiles", (n_users, width))
        if items is not None:
            blocks = feature_blocks(encode_items(items, self.feature_spec), self.feature_spec.item_sizes())
            self.idf.assign(inverse_document_frequency(tf.concat(list(blocks.values()), axis=1)))
            self.item_matrix.assign(content_vectors(blocks, self.idf, self.block_weights))

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        """Every user's profile from their train interactions; no hyperparameter is chosen."""
        rows = data.train[["user_idx", "item_idx", "rating"]]
        self.profiles.assign(
            user_profiles(
                self.item_matrix.numpy(),
                rows["user_idx"].to_numpy(),
                rows["item_idx"].to_numpy(),
                interaction_weights(rows, self.weighting),
                self.n_users,
            )
        )
        return {}

    def item_vectors_from_features(self, encoded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Content vectors of items given only by their encoded features (``ItemEncoder`` output)."""
        return content_vectors(feature_blocks(encoded, self.feature_spec.item_sizes()), self.idf, self.block_weights)

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.query_vectors(user_idx), self.item_matrix, transpose_b=True)

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.profiles, user_idx)

    def candidate_vectors(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.item_matrix)
