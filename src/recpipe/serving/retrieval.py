"""Retrieval inside the exported model: the top-k items of a batch of users, seen items excluded.

``ExactRetriever`` ranks the whole catalog by the model's ``score_all``; ``ScannRetriever`` queries
an approximate ScaNN index over a factorized model's candidate vectors with stored user vectors.
Both have ``top_k(user_idx, excluded, k, max_seen) -> (scores, items)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from recpipe.models.base import RecModel

NEG_INF = float("-inf")


class ExactRetriever(tf.Module):
    """Top-k by the model's own ``score_all`` over the whole catalog."""

    def __init__(self, model: RecModel) -> None:
        super().__init__(name="exact")
        self.model = model

    def top_k(self, user_idx: tf.Tensor, excluded: tf.Tensor, k: tf.Tensor, max_seen: tf.Tensor):
        scores = tf.cast(self.model.score_all(user_idx), tf.float32)
        return tf.math.top_k(tf.where(excluded, NEG_INF, scores), k)


class ScannRetriever(tf.Module):
    """Approximate top-k: a ScaNN index over candidate vectors, queried with stored user vectors.

    The index is asked for ``k + max_seen`` neighbours so that k remain after dropping seen items.
    """

    def __init__(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray, scann_cfg: Any) -> None:
        import tensorflow_recommenders as tfrs

        super().__init__(name="scann")
        n_items = len(candidate_vectors)
        self.n_items = n_items
        self.query_vectors = tf.Variable(query_vectors, trainable=False, name="query_vectors")
        self.index = tfrs.layers.factorized_top_k.ScaNN(
            k=min(10, n_items),
            num_leaves=min(int(scann_cfg.num_leaves), n_items),
            num_leaves_to_search=min(int(scann_cfg.num_leaves_to_search), int(scann_cfg.num_leaves), n_items),
            training_iterations=int(scann_cfg.training_iterations),
            dimensions_per_block=int(scann_cfg.dimensions_per_block),
            num_reordering_candidates=scann_cfg.num_reordering_candidates,
        )
        self.index.index(tf.constant(candidate_vectors, tf.float32))

    def top_k(self, user_idx: tf.Tensor, excluded: tf.Tensor, k: tf.Tensor, max_seen: tf.Tensor):
        n_query = tf.clip_by_value(k + max_seen, 1, self.n_items)
        dist, cand = self.index(tf.gather(self.query_vectors, user_idx), k=n_query)
        cand = tf.cast(cand, tf.int32)
        # ScaNN may find fewer neighbours than asked (few points in the searched leaves): pad
        short = n_query - tf.shape(cand)[1]
        dist = tf.pad(dist, [[0, 0], [0, short]], constant_values=NEG_INF)
        cand = tf.pad(cand, [[0, 0], [0, short]])
        dist = tf.where(tf.gather(excluded, cand, batch_dims=1), NEG_INF, dist)
        vals, pos = tf.math.top_k(dist, k)
        return vals, tf.gather(cand, pos, batch_dims=1)


def query_vectors(model: RecModel, n_users: int, batch_size: int = 4096) -> np.ndarray:
    """A factorized model's query vectors for every user index."""
    parts = [
        np.asarray(model.query_vectors(tf.range(s, min(s + batch_size, n_users), dtype=tf.int32)), np.float32)
        for s in range(0, n_users, batch_size)
    ]
    return np.concatenate(parts)
