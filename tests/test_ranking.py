"""Full-catalog ranking: seen items never ranked, results match a per-user reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.evaluation import metrics
from recpipe.evaluation.ranking import (
    EvalSet,
    evaluate_ranking,
    genre_matrix,
    rank_metrics,
    sample_users,
    top_k_items,
    users_with_truth,
)
from recpipe.evaluation.registry import RANKING_METRICS

N_USERS, N_ITEMS = 40, 25


def random_mask(rng: np.random.Generator, density: float) -> np.ndarray:
    return rng.random((N_USERS, N_ITEMS)) < density


@pytest.fixture
def case():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(N_USERS, N_ITEMS)).astype(np.float32)
    exclude = random_mask(rng, 0.3)
    truth = random_mask(rng, 0.2) & ~exclude
    return scores, sp.csr_matrix(exclude.astype(np.float32)), sp.csr_matrix(truth.astype(np.float32))


def test_top_k_never_returns_excluded_items(case):
    scores, exclude, _ = case
    users = np.arange(N_USERS, dtype=np.int32)
    items, vals = top_k_items(lambda u: tf.constant(scores[u]), users, exclude, k=10, batch_size=7)
    dense = exclude.toarray() != 0
    for u in users:
        assert not dense[u, items[u]].any()
        # best first, and nothing recommendable scores above the last one returned
        assert np.all(np.diff(vals[u]) <= 0)
        allowed = scores[u][~dense[u]]
        assert np.allclose(np.sort(allowed)[::-1][:10], vals[u])


def test_k_beyond_catalog_pads_with_minus_one(case):
    scores, exclude, _ = case
    users = np.arange(N_USERS, dtype=np.int32)
    items, vals = top_k_items(lambda u: scores[u], users, exclude, k=N_ITEMS + 5)
    n_allowed = N_ITEMS - np.diff(exclude.indptr)
    for u in users:
        assert (items[u] >= 0).sum() == n_allowed[u]
        assert np.all(items[u, n_allowed[u] :] == -1)
        assert np.all(np.isneginf(vals[u, n_allowed[u] :]))
        assert sorted(items[u, : n_allowed[u]]) == sorted(np.flatnonzero(exclude[u].toarray()[0] == 0))


def test_rank_metrics_match_per_user_reference(case):
    scores, exclude, truth = case
    ks = (1, 5, 10, 30)
    got = rank_metrics(lambda u: scores[u], exclude, truth, ks=ks, batch_size=6)
    per_user = rank_metrics(lambda u: scores[u], exclude, truth, ks=ks, per_user=True)
    users = users_with_truth(truth)
    assert len(per_user["ndcg_at_10"]) == len(users) < N_USERS
    ref: dict[str, list[float]] = {}
    for u in users:
        seen = set(exclude[u].indices)
        ranked = [i for i in np.argsort(-scores[u], kind="stable") if i not in seen]
        ranked += [-1] * (max(ks) - len(ranked))
        t = set(truth[u].indices)
        for k in ks:
            hits = np.array([[i in t for i in ranked[:k]]])
            for name, v in metrics.ranking_metrics(hits, np.array([len(t)]), [k]).items():
                ref.setdefault(name, []).append(float(v[0]))
    assert set(got) == set(ref)
    for name, values in ref.items():
        assert got[name] == pytest.approx(np.mean(values)), name
        assert np.allclose(per_user[name], values), name


def test_batching_does_not_change_results(case):
    scores, exclude, truth = case
    one = rank_metrics(lambda u: scores[u], exclude, truth, batch_size=1)
    many = rank_metrics(lambda u: scores[u], exclude, truth, batch_size=1000)
    assert one == pytest.approx(many)


def test_oracle_scorer_gets_perfect_recall(case):
    _, exclude, truth = case
    dense = truth.toarray()
    m = rank_metrics(lambda u: dense[u], exclude, truth, ks=(N_ITEMS,))
    assert m[f"recall_at_{N_ITEMS}"] == pytest.approx(1.0)
    assert m[f"ndcg_at_{N_ITEMS}"] == pytest.approx(1.0)


def test_scorer_errors_are_reported(case):
    _, exclude, truth = case
    with pytest.raises(RecpipeError, match="NaN"):
        rank_metrics(lambda u: np.full((len(u), N_ITEMS), np.nan), exclude, truth)
    with pytest.raises(RecpipeError, match="shape"):
        rank_metrics(lambda u: np.zeros((len(u), N_ITEMS - 1)), exclude, truth)


def test_genre_matrix():
    items = pd.DataFrame(
        {"item_id": ["a", "b", "c"], "genres": [np.array(["x", "y"]), np.array([], dtype=object), ["y"]]}
    )
    g = genre_matrix(items)
    assert g.shape == (3, 2)
    assert g.sum(axis=1).tolist() == [2, 0, 1]
    assert g[0] @ g[2] == 1
    assert genre_matrix(items.drop(columns="genres")) is None


def test_evaluate_ranking_adds_beyond_accuracy(case):
    scores, exclude, truth = case
    pop = np.asarray(exclude.sum(axis=0)).ravel()
    genres = np.eye(N_ITEMS, 3, dtype=bool)
    es = EvalSet(exclude=exclude, truth=truth, item_popularity=pop, n_train_users=N_USERS, item_genres=genres)
    result = evaluate_ranking(lambda u: scores[u], es, ks=(5,))
    out = result.metrics
    assert set(out) == {
        *(f"{m}_at_5" for m in RANKING_METRICS),
        "coverage_at_10",
        "novelty_at_10",
        "popularity_at_10",
        "diversity_at_10",
    }
    assert 0 < out["coverage_at_10"] <= 1
    # items 0-2 have one genre each, the rest none: without vectors only pairs among 0-2 count
    # (Jaccard 0); with identical vectors every other pair has similarity 1
    assert out["diversity_at_10"] == pytest.approx(1.0)
    with_vectors = evaluate_ranking(
        lambda u: scores[u], es, ks=(5,), item_vectors=np.ones((N_ITEMS, 2), np.float32)
    ).metrics
    assert with_vectors["diversity_at_10"] < 0.5
    assert set(result.per_user) == set(out) - {"coverage_at_10"}
    assert all(len(v) == len(result.users) == len(users_with_truth(truth)) for v in result.per_user.values())


def test_sampled_users_are_a_seeded_subset_and_all_means_unchanged(case):
    _, _, truth = case
    users = users_with_truth(truth)
    assert sample_users(truth, None, seed=0) is truth
    assert sample_users(truth, len(users), seed=0) is truth  # max_users covering all: today's evaluation
    sampled = sample_users(truth, 10, seed=5)
    kept = users_with_truth(sampled)
    assert len(kept) == 10 and set(kept) <= set(users)
    np.testing.assert_array_equal(sampled[kept].toarray(), truth[kept].toarray())
    np.testing.assert_array_equal(users_with_truth(sample_users(truth, 10, seed=5)), kept)
    assert not np.array_equal(users_with_truth(sample_users(truth, 10, seed=6)), kept)
    with pytest.raises(RecpipeError, match="max_users must be at least 1"):
        sample_users(truth, 0, seed=0)
