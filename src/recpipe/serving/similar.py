"""Similar items for a new item known only by its features (the export's ``similar_items`` signature).

``SimilarItems`` wraps a model that can place an item from its features alone (``model=hybrid``:
its candidate tower with the unknown-id row; ``model=content``: its TF-IDF vector) with the
feature encoder and the catalog's candidate vectors. Its ``top_k(title, genres, year, k)`` encodes
the new item in TensorFlow, so it can be saved in a SavedModel next to the top-K recommender (the
export's ``similar_items`` signature), and ranks the catalog by cosine similarity to the new
item's vector.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.features import ItemEncoder
from recpipe.models.base import RecModel

SIGNATURE = "similar_items"
COLUMNS = ["rank", "item_id", "title", "score"]


def supports_similar(model: RecModel) -> bool:
    """Whether ``model`` can place a new item from its features (and has item features to use)."""
    return model.embeds_new_items and model.feature_spec is not None and bool(model.feature_spec.item)


class SimilarItems(tf.Module):
    """Top-k catalog items by cosine similarity to a new item's feature-only vector.

    ``top_k`` takes ``title`` (string [n]), ``genres`` (string [n], "|"-separated), ``year``
    (float32 [n], NaN when unknown) and ``k`` (int32 scalar, capped at ``min(max_k, n_items)``);
    returns ``item_ids``, ``titles`` (string [n, k]) and ``scores`` (float32 [n, k]), best first.
    """

    def __init__(self, model: RecModel, item_ids: np.ndarray, titles: np.ndarray, max_k: int) -> None:
        super().__init__(name="similar_items")
        if not supports_similar(model):
            raise RecpipeError(
                f"{type(model).__name__} cannot place an item from its features; similar items need "
                "model=hybrid or model=content trained on data with item features"
            )
        assert model.feature_spec is not None  # supports_similar checked it
        self.model = model
        self.encoder = ItemEncoder(model.feature_spec)
        vectors = tf.math.l2_normalize(tf.convert_to_tensor(model.candidate_vectors(), tf.float32), axis=1)
        self.catalog = tf.Variable(vectors, trainable=False, name="catalog_vectors")
        self.item_ids = tf.Variable(tf.constant(item_ids, tf.string), trainable=False, name="item_ids")
        self.titles = tf.Variable(tf.constant(titles, tf.string), trainable=False, name="titles")
        self.k_cap = min(int(max_k), len(item_ids))

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="title"),
            tf.TensorSpec([None], tf.string, name="genres"),
            tf.TensorSpec([None], tf.float32, name="year"),
            tf.TensorSpec([], tf.int32, name="k"),
        ]
    )
    def top_k(self, title: tf.Tensor, genres: tf.Tensor, year: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        names = tf.strings.strip(tf.strings.split(genres, "|"))
        encoded = self.encoder(title, tf.ragged.boolean_mask(names, tf.strings.length(names) > 0), year)
        query = tf.math.l2_normalize(self.model.item_vectors_from_features(encoded), axis=1)
        similarity = tf.matmul(query, self.catalog, transpose_b=True)
        scores, items = tf.math.top_k(similarity, tf.clip_by_value(k, 0, self.k_cap))
        return {"item_ids": tf.gather(self.item_ids, items), "titles": tf.gather(self.titles, items), "scores": scores}


def similar_items(signature: Any, title: str, genres: str, year: float | None, k: int) -> pd.DataFrame:
    """Rows (rank, item_id, title, score) of the top-k items from a ``top_k`` function or signature."""
    out = signature(
        title=tf.constant([title]),
        genres=tf.constant([genres]),
        year=tf.constant([math.nan if year is None else float(year)], tf.float32),
        k=tf.constant(k, tf.int32),
    )
    items, titles, scores = (out[name].numpy()[0] for name in ("item_ids", "titles", "scores"))
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(items) + 1),
            "item_id": [i.decode() for i in items],
            "title": [t.decode() for t in titles],
            "score": scores.astype(float),
        },
        columns=COLUMNS,
    )
