"""Retrieval inside the exported model: the top-k items of a batch of users, seen items excluded.

``RankedRetriever`` holds every user's exact ranking, computed at export time by the evaluation's
own ranking code over the model's ``score_all`` (a row lookup when serving: small catalogs);
``ExactRetriever`` ranks the whole catalog by ``score_all`` on-line (the model's graph in the
SavedModel); ``ScannRetriever`` queries an approximate ScaNN index over a factorized model's
candidate vectors with stored user vectors. Each has ``top_k(user_idx, seen, k) -> (scores, items)``
[batch, k] for known users' indices and their seen items (ragged int32 [batch, None]).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import tensorflow as tf

from recpipe.evaluation.ranking import top_k_items
from recpipe.models.base import RecModel

NEG_INF = float("-inf")


def seen_mask(seen: tf.RaggedTensor, n_items: int) -> tf.Tensor:
    """bool [batch, n_items]: whether each user saw each item."""
    coords = tf.stack([tf.cast(seen.value_rowids(), tf.int32), seen.flat_values], axis=1)
    counts = tf.scatter_nd(coords, tf.ones_like(coords[:, 0]), [seen.nrows(out_type=tf.int32), n_items])
    return counts > 0


class ExactRetriever(tf.Module):
    """Top-k by the model's own ``score_all`` over the whole catalog, on-line."""

    def __init__(self, model: RecModel, n_items: int) -> None:
        super().__init__(name="exact")
        self.model, self.n_items = model, n_items

    def top_k(self, user_idx: tf.Tensor, seen: tf.RaggedTensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        scores = tf.cast(self.model.score_all(user_idx), tf.float32)
        return tf.math.top_k(tf.where(seen_mask(seen, self.n_items), NEG_INF, scores), k)


class RankedRetriever(tf.Module):
    """Exact top-k ranked ahead: every user's best ``k_cap`` unseen items by ``score_all``.

    Ranked at export time by ``recpipe.evaluation.ranking.top_k_items`` (the code that evaluation
    measures), so serving a known user is a row lookup, whatever the model. A request for k items
    gets the first k of the row: ``tf.math.top_k`` keeps the lower item index first on ties, so
    that is the top k. Slots without an unseen item hold score -inf (item 0).
    """

    def __init__(self, items: np.ndarray, scores: np.ndarray) -> None:
        super().__init__(name="ranked")
        self.ranked_items = tf.Variable(np.maximum(items, 0).astype(np.int32), trainable=False, name="ranked_items")
        self.ranked_scores = tf.Variable(scores.astype(np.float32), trainable=False, name="ranked_scores")

    @classmethod
    def rank(cls, model: RecModel, seen: sp.csr_matrix, k_cap: int) -> RankedRetriever:
        """Rank every user of ``seen`` (rows: users, entries: their seen items) by ``model``."""
        users = np.arange(seen.shape[0], dtype=np.int32)
        return cls(*top_k_items(lambda u: model.score_all(tf.constant(u)), users, seen, k_cap))

    def top_k(self, user_idx: tf.Tensor, seen: tf.RaggedTensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return tf.gather(self.ranked_scores, user_idx)[:, :k], tf.gather(self.ranked_items, user_idx)[:, :k]


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

    def top_k(self, user_idx: tf.Tensor, seen: tf.RaggedTensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        max_seen = tf.cast(tf.reduce_max(tf.concat([seen.row_lengths(), [0]], 0)), tf.int32)
        excluded = seen_mask(seen, self.n_items)
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
