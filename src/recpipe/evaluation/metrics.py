"""Recommendation metrics as pure numpy functions over top-K lists.

Ranking metrics take ``hits`` (bool [n_users, K]: whether the item at each rank, best first, is
one of the user's truth items) and ``n_truth`` (int [n_users]: how many truth items each user
has), and return one value per user; averaging over users is the caller's choice (``mean``), so
per-user values stay available for bootstrap intervals. Relevance is binary. Rank positions that
hold no item (fewer candidates than K) are encoded as item ``-1`` and never count as hits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import scipy.sparse as sp

# Metric names, directions and key spellings live in the registry.
from recpipe.evaluation.registry import BEYOND_ACCURACY_K, metric_key


def _discounts(k: int) -> np.ndarray:
    """1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top ``k`` divided by ``k``."""
    return hits[:, :k].sum(axis=1) / k


def recall_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top ``k`` divided by the number of truth items."""
    return hits[:, :k].sum(axis=1) / n_truth


def ndcg_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """DCG of the top ``k`` (log2(rank+1) discount) over the ideal DCG of min(|truth|, k) hits."""
    disc = _discounts(k)
    dcg = hits[:, :k] @ disc[: hits[:, :k].shape[1]]
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(n_truth, k)]
    return dcg / ideal


def map_at_k(hits: np.ndarray, n_truth: np.ndarray, k: int) -> np.ndarray:
    """Sum of precision@rank over the hit ranks within ``k``, divided by min(|truth|, k)."""
    h = hits[:, :k]
    prec = np.cumsum(h, axis=1) / np.arange(1, h.shape[1] + 1)
    return (prec * h).sum(axis=1) / np.minimum(n_truth, k)


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 when any truth item is in the top ``k``, else 0."""
    hit = cast(np.ndarray, hits[:, :k].any(axis=1))  # an array, one value per row: hits is 2-D
    return hit.astype(np.float64)


def mrr_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1 / rank of the first hit within ``k``, 0 without a hit."""
    h = hits[:, :k]
    first = h.argmax(axis=1)
    return np.where(h.any(axis=1), 1.0 / (first + 1), 0.0)


def hits_from_topk(topk_items: np.ndarray, truth_rows: sp.csr_matrix) -> np.ndarray:
    """bool [n, K]: whether ``topk_items[u, r]`` is in row ``u`` of ``truth_rows`` (-1 never is)."""
    n, k = topk_items.shape
    valid = topk_items >= 0
    rows = np.repeat(np.arange(n), k)
    cols = np.where(valid, topk_items, 0).ravel()
    found = np.asarray(truth_rows[rows, cols]).reshape(n, k) != 0
    return found & valid


def ranking_metrics(hits: np.ndarray, n_truth: np.ndarray, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user precision/recall/ndcg/map/hit_rate/mrr at each K, keyed ``<metric>_at_<K>``."""
    n_truth = np.asarray(n_truth)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[metric_key("precision", k)] = precision_at_k(hits, k)
        out[metric_key("recall", k)] = recall_at_k(hits, n_truth, k)
        out[metric_key("ndcg", k)] = ndcg_at_k(hits, n_truth, k)
        out[metric_key("map", k)] = map_at_k(hits, n_truth, k)
        out[metric_key("hit_rate", k)] = hit_rate_at_k(hits, k)
        out[metric_key("mrr", k)] = mrr_at_k(hits, k)
    return out


def metrics_from_topk(topk_items: np.ndarray, truth_rows: sp.csr_matrix, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-user ranking metrics of top-K lists (rows aligned with ``truth_rows``, each >= 1 item)."""
    hits = hits_from_topk(topk_items, truth_rows)
    return ranking_metrics(hits, np.diff(truth_rows.indptr), ks)


def mean(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """Average each per-user metric over users (NaN entries, e.g. undefined diversity, skipped)."""
    out = {}
    for key, v in per_user.items():
        finite = v[~np.isnan(v)]
        out[key] = float(finite.mean()) if finite.size else float("nan")
    return out


def _clip(pred: np.ndarray, rating_scale: Sequence[float] | None) -> np.ndarray:
    pred = np.asarray(pred, dtype=np.float64)
    return pred if rating_scale is None else np.clip(pred, rating_scale[0], rating_scale[1])


def rmse(pred: np.ndarray, actual: np.ndarray, rating_scale: Sequence[float] | None = None) -> float:
    """Root mean squared error of ``pred`` (clipped to ``rating_scale`` = [lo, hi]) vs ``actual``."""
    return float(np.sqrt(np.mean((_clip(pred, rating_scale) - np.asarray(actual, np.float64)) ** 2)))


def mae(pred: np.ndarray, actual: np.ndarray, rating_scale: Sequence[float] | None = None) -> float:
    """Mean absolute error of ``pred`` (clipped to ``rating_scale`` = [lo, hi]) vs ``actual``."""
    return float(np.mean(np.abs(_clip(pred, rating_scale) - np.asarray(actual, np.float64))))


def coverage(topk_items: np.ndarray, n_items: int) -> float:
    """Share of the catalog recommended to at least one user."""
    items = topk_items[topk_items >= 0]
    return float(np.unique(items).size / n_items)


def _per_user_mean(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    counts = valid.sum(axis=1)
    total = np.where(valid, values, 0.0).sum(axis=1)
    return np.divide(total, counts, out=np.full(len(counts), np.nan), where=counts > 0)


def novelty(topk_items: np.ndarray, item_popularity: np.ndarray, n_train_users: int) -> np.ndarray:
    """Per-user mean self-information -log2(pop_i / n_train_users) of the recommended items.

    Items never seen in training count as popularity 1 (the rarest observable), not infinity.
    """
    valid = topk_items >= 0
    pop = np.maximum(item_popularity[np.where(valid, topk_items, 0)], 1.0)
    return _per_user_mean(-np.log2(pop / n_train_users), valid)


def popularity(topk_items: np.ndarray, item_popularity: np.ndarray) -> np.ndarray:
    """Per-user mean train interaction count of the recommended items."""
    valid = topk_items >= 0
    return _per_user_mean(item_popularity[np.where(valid, topk_items, 0)], valid)


def _pair_similarity(
    idx: np.ndarray, item_genres: np.ndarray | None, unit_vectors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, usable) [n, k, k] of the item pairs in each row of ``idx`` (see ``diversity``)."""
    n, k = idx.shape
    if item_genres is not None:
        g = item_genres[idx].astype(np.float32)  # [n, k, n_genres]
        inter = g @ g.transpose(0, 2, 1)
        size = g.sum(axis=2)
        union = size[:, :, None] + size[:, None, :] - inter
        has = size > 0
        both = has[:, :, None] & has[:, None, :]
        sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    else:
        both = np.zeros((n, k, k), bool)
        sim = np.zeros((n, k, k), np.float32)
    if unit_vectors is None:
        return sim, both
    v = unit_vectors[idx]
    return np.where(both, sim, np.clip(v @ v.transpose(0, 2, 1), 0.0, 1.0)), np.ones_like(both)


def diversity(
    topk_items: np.ndarray,
    item_genres: np.ndarray | None,
    item_vectors: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """Per-user intra-list diversity: 1 - mean pairwise similarity of the recommended items.

    A pair's similarity is the Jaccard index of the two items' genre sets (``item_genres``: bool
    [n_items, n_genres]). When either item has no genres it is the cosine similarity of the
    items' vectors (``item_vectors`` [n_items, d], clipped at 0 so it stays in [0, 1] like
    Jaccard), and without vectors the pair is skipped. Users with no usable pair get NaN.
    Users are processed ``chunk`` at a time to bound memory.
    """
    unit = None
    if item_vectors is not None:
        v = np.asarray(item_vectors, np.float32)
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        unit = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    n, k = topk_items.shape
    upper = np.triu(np.ones((k, k), bool), 1)[None]
    out = np.full(n, np.nan)
    for start in range(0, n, chunk):
        top = topk_items[start : start + chunk]
        valid = top >= 0
        sim, usable = _pair_similarity(np.where(valid, top, 0), item_genres, unit)
        pair_ok = usable & valid[:, :, None] & valid[:, None, :] & upper
        counts = pair_ok.sum(axis=(1, 2))
        total = np.where(pair_ok, sim, 0.0).sum(axis=(1, 2))
        out[start : start + len(top)] = 1.0 - np.divide(total, counts, out=np.full(len(top), np.nan), where=counts > 0)
    return out


def beyond_accuracy(
    topk_items: np.ndarray,
    item_popularity: np.ndarray,
    n_train_users: int,
    item_genres: np.ndarray | None,
    item_vectors: np.ndarray | None = None,
    k: int = BEYOND_ACCURACY_K,
) -> dict[str, np.ndarray]:
    """Per-user novelty/popularity/diversity of the top ``k`` lists (coverage is ``coverage``)."""
    top = topk_items[:, :k]
    return {
        metric_key("novelty", k): novelty(top, item_popularity, n_train_users),
        metric_key("popularity", k): popularity(top, item_popularity),
        metric_key("diversity", k): diversity(top, item_genres, item_vectors),
    }
