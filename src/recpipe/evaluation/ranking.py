"""Full-catalog ranking evaluation: score every item for each user, mask seen items, take top-K.

A scorer is any ``score_fn(user_idx: int32 [b]) -> float32 [b, n_items]`` (a model's
``score_all``, or a baseline from ``recpipe.models.classic``), so models and baselines are
measured by exactly the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf
from tqdm.auto import tqdm

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation import metrics

ScoreFn = Callable[[np.ndarray], "np.ndarray | tf.Tensor"]
DEFAULT_KS = (5, 10, 20, 50, 100)
# batches of users ranked at the same time (threads)
RANKING_THREADS = 2
# scores (users x items) of one batch at most: 24 MB of float32, memory the allocator reuses from
# batch to batch, where a larger block is mapped afresh each time and costs page faults (ranking
# 8000 users x 59k items took 3.0-3.5 s CPU in batches of 71-142 users, 3.9-4.8 s in 1024s)
BATCH_SCORES = 6_000_000


def batch_users(batch_size: int, n_items: int) -> int:
    """Users per ranking batch: ``batch_size``, fewer when their scores would exceed ``BATCH_SCORES``."""
    return max(1, min(int(batch_size), BATCH_SCORES // max(n_items, 1)))


def _top_k_batch(score_fn: ScoreFn, users: np.ndarray, exclude: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``top_k_items`` of one batch of users."""
    n_items = exclude.shape[1]
    s = np.array(score_fn(users), dtype=np.float32, copy=True)
    if s.shape != (len(users), n_items):
        raise RecpipeError(
            f"scorer returned shape {s.shape} for {len(users)} users; expected ({len(users)}, {n_items})"
        )
    if np.isnan(s).any():
        raise RecpipeError("scorer returned NaN scores (did training diverge?)")
    seen = exclude[users].tocoo()
    s[seen.row[seen.data != 0], seen.col[seen.data != 0]] = -np.inf
    vals, idx = (t.numpy() for t in tf.math.top_k(s, k=min(k, n_items)))
    idx[np.isneginf(vals)] = -1
    return idx, vals


def top_k_items(
    score_fn: ScoreFn,
    users: np.ndarray,
    exclude: sp.csr_matrix,
    k: int,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` items of each user in ``users``, best first, never an item of ``exclude``'s row.

    Returns ``(items int32 [n, k], scores float32 [n, k])``. Slots with no recommendable item
    left (k beyond the catalog, or every item excluded) hold item -1 and score -inf. Ties keep
    the lower item index first (``tf.math.top_k``), so results are deterministic. Batches of
    ``batch_size`` users (at most ``BATCH_SCORES`` scores: ``batch_users``) are scored two at a
    time in threads (TensorFlow and numpy release the GIL), each batch's results written to its
    own rows.
    """
    width = min(k, exclude.shape[1])
    batch_size = batch_users(batch_size, exclude.shape[1])
    users = np.asarray(users, dtype=np.int32)
    items = np.full((len(users), k), -1, dtype=np.int32)
    scores = np.full((len(users), k), -np.inf, dtype=np.float32)
    starts = range(0, len(users), batch_size)
    with ThreadPoolExecutor(RANKING_THREADS) as pool:
        batches = pool.map(lambda start: _top_k_batch(score_fn, users[start : start + batch_size], exclude, k), starts)
        progress = tqdm(batches, total=len(starts), desc="ranking", unit="batch", leave=False, disable=len(starts) < 2)
        for start, (idx, vals) in zip(starts, progress):
            items[start : start + len(idx), :width] = idx
            scores[start : start + len(idx), :width] = vals
    return items, scores


def sample_users(truth: sp.csr_matrix, max_users: int | None, seed: int) -> sp.csr_matrix:
    """``truth`` with only a seeded sample of ``max_users`` of its users with a truth item kept
    (the other rows emptied); unchanged when ``max_users`` is None or not below their number."""
    users = users_with_truth(truth)
    if max_users is None or max_users >= len(users):
        return truth
    if max_users < 1:
        raise RecpipeError(f"max_users must be at least 1 (or null for all users), got {max_users}")
    picked = np.zeros(truth.shape[0], dtype=np.float32)
    picked[np.random.default_rng(seed).choice(users, size=max_users, replace=False)] = 1.0
    return sp.csr_matrix(sp.diags(picked) @ truth)


def users_with_truth(truth: sp.csr_matrix) -> np.ndarray:
    """Indices of the users with at least one truth item."""
    return np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int32)


def rank_metrics(
    score_fn: ScoreFn,
    exclude: sp.csr_matrix,
    truth: sp.csr_matrix,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    per_user: bool = False,
) -> dict[str, float] | dict[str, np.ndarray]:
    """precision/recall/ndcg/map/hit_rate/mrr at each K over every user with a truth item.

    ``exclude`` and ``truth`` are user x item matrices (nonzero = member). Returns the means
    (``{"ndcg_at_10": ...}``), or with ``per_user=True`` one array per metric aligned with
    ``users_with_truth(truth)``.
    """
    users = users_with_truth(truth)
    topk, _ = top_k_items(score_fn, users, exclude, max(ks), batch_size)
    per = metrics.metrics_from_topk(topk, truth[users], ks)
    return per if per_user else metrics.mean(per)


def genre_matrix(items: pd.DataFrame) -> np.ndarray | None:
    """bool [n_items, n_genres] from the vocabulary's ``genres`` lists (None when absent/empty)."""
    if "genres" not in items.columns:
        return None
    lists = items["genres"].map(lambda g: [] if g is None else list(g))
    exploded = lists.explode().dropna()
    if exploded.empty:
        return None
    codes, names = pd.factorize(exploded)
    out = np.zeros((len(items), len(names)), dtype=bool)
    out[exploded.index.to_numpy(), codes] = True
    return out


@dataclass(frozen=True)
class EvalSet:
    """What ranking evaluation needs from the data: masks, truth and item statistics."""

    exclude: sp.csr_matrix
    truth: sp.csr_matrix
    item_popularity: np.ndarray
    n_train_users: int
    item_genres: np.ndarray | None
    # users with a truth item before sampling (``max_users``); ``truth`` holds those evaluated
    all_users: int = 0

    @classmethod
    def from_processed(
        cls, data: Processed, split: str = "test", max_users: int | None = None, seed: int = 0
    ) -> EvalSet:
        """Truth from ``split`` (of a seeded sample of at most ``max_users`` users, ``sample_users``;
        None: all); train and val (those before ``split``) excluded from ranking."""
        before = {"val": ("train",), "test": ("train", "val")}[split]
        truth = data.matrix(split)
        return cls(
            exclude=data.matrix(*before),
            truth=sample_users(truth, max_users, seed),
            item_popularity=data.item_popularity(),
            n_train_users=int(data.train["user_idx"].nunique()),
            item_genres=genre_matrix(data.items.reset_index(drop=True)),
            all_users=len(users_with_truth(truth)),
        )


@dataclass(frozen=True)
class RankingEval:
    """Results of one scorer: user means (``metrics``) and the per-user values behind them.

    ``per_user`` arrays and ``topk`` rows (item indices, best first, -1 = empty slot) are aligned
    with ``users`` (every user with a truth item), e.g. for bootstrap intervals; coverage is a
    catalog-level number and only in ``metrics``.
    """

    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    topk: np.ndarray


def evaluate_ranking(
    score_fn: ScoreFn,
    evalset: EvalSet,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    item_vectors: np.ndarray | None = None,
) -> RankingEval:
    """Ranking metrics at each K plus coverage/novelty/popularity/diversity at 10.

    ``item_vectors`` (a factorized model's candidate vectors) give diversity a similarity for
    items without genres.
    """
    users = users_with_truth(evalset.truth)
    k10 = metrics.BEYOND_ACCURACY_K
    topk, _ = top_k_items(score_fn, users, evalset.exclude, max(*ks, k10), batch_size)
    per_user = metrics.metrics_from_topk(topk, evalset.truth[users], ks)
    per_user.update(
        metrics.beyond_accuracy(topk, evalset.item_popularity, evalset.n_train_users, evalset.item_genres, item_vectors)
    )
    means = metrics.mean(per_user)
    means[metrics.metric_key("coverage", k10)] = metrics.coverage(topk[:, :k10], evalset.exclude.shape[1])
    return RankingEval(metrics=means, per_user=per_user, users=users, topk=topk)
