"""Metric functions against plain-Python reference implementations and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recpipe.evaluation import metrics
from recpipe.evaluation.registry import RANKING_METRICS

from .helpers import ref_user

KS = (1, 3, 5, 10)


# --- slow, obvious references: one user at a time, plain Python -------------------------------


@st.composite
def ranking_case(draw):
    n_items = draw(st.integers(2, 30))
    n_users = draw(st.integers(1, 8))
    width = draw(st.integers(1, 12))
    ranked, truth = [], []
    for _ in range(n_users):
        items = draw(st.permutations(range(n_items)))[: min(width, n_items)]
        ranked.append(list(items) + [-1] * (width - len(items)))
        truth.append(set(draw(st.lists(st.integers(0, n_items - 1), min_size=1, max_size=n_items))))
    return n_items, ranked, truth


def to_csr(truth: list[set[int]], n_items: int) -> sp.csr_matrix:
    rows = [u for u, t in enumerate(truth) for _ in t]
    cols = [i for t in truth for i in sorted(t)]
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(truth), n_items))


@settings(max_examples=200, deadline=None)
@given(ranking_case())
def test_ranking_metrics_match_reference(case):
    n_items, ranked, truth = case
    topk = np.array(ranked, dtype=np.int32)
    got = metrics.metrics_from_topk(topk, to_csr(truth, n_items), KS)
    for k in KS:
        for u in range(len(ranked)):
            ref = ref_user(ranked[u], truth[u], k)
            for name in RANKING_METRICS:
                assert got[f"{name}_at_{k}"][u] == pytest.approx(ref[name]), (name, k, u)


def test_hand_computed_case():
    # ranks 1..5 = items 3, 7, 1, 9, 4; truth {7, 9, 8}: hits at ranks 2 and 4
    topk = np.array([[3, 7, 1, 9, 4]])
    truth = to_csr([{7, 9, 8}], 10)
    m = metrics.mean(metrics.metrics_from_topk(topk, truth, [5]))
    assert m["precision_at_5"] == pytest.approx(2 / 5)
    assert m["recall_at_5"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg_at_5"] == pytest.approx(dcg / idcg)
    assert m["map_at_5"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert m["hit_rate_at_5"] == 1.0
    assert m["mrr_at_5"] == pytest.approx(1 / 2)


def test_perfect_ranking_scores_one():
    topk = np.array([[4, 2, 0], [1, 3, 0]])
    truth = to_csr([{4, 2}, {1, 3}], 5)
    m = metrics.mean(metrics.metrics_from_topk(topk, truth, [2]))
    for name in ("precision", "recall", "ndcg", "map", "hit_rate", "mrr"):
        assert m[f"{name}_at_2"] == pytest.approx(1.0)


def test_rmse_mae_clip_to_rating_scale():
    pred = np.array([6.0, 0.0, 3.5])
    actual = np.array([5.0, 1.0, 3.0])
    assert metrics.rmse(pred, actual, [1, 5]) == pytest.approx(math.sqrt(0.25 / 3))
    assert metrics.mae(pred, actual, [1, 5]) == pytest.approx(0.5 / 3)
    assert metrics.rmse(pred, actual) == pytest.approx(math.sqrt((1 + 1 + 0.25) / 3))
    assert metrics.mae(pred, actual) == pytest.approx(2.5 / 3)


# --- beyond accuracy -------------------------------------------------------------------------


def ref_diversity(items: list[int], genres: list[set[str]], vectors: np.ndarray | None) -> float:
    sims = []
    items = [i for i in items if i >= 0]
    for a in range(len(items)):
        for b in range(a + 1, len(items)):
            ga, gb = genres[items[a]], genres[items[b]]
            if ga and gb:
                sims.append(len(ga & gb) / len(ga | gb))
            elif vectors is not None:
                va, vb = vectors[items[a]], vectors[items[b]]
                na, nb = np.linalg.norm(va), np.linalg.norm(vb)
                cos = float(va @ vb / (na * nb)) if na > 0 and nb > 0 else 0.0
                sims.append(min(max(cos, 0.0), 1.0))
    return 1 - sum(sims) / len(sims) if sims else float("nan")


@st.composite
def beyond_case(draw):
    n_items = draw(st.integers(3, 15))
    names = ["a", "b", "c", "d"]
    genres = [set(draw(st.lists(st.sampled_from(names), max_size=3))) for _ in range(n_items)]
    vectors = np.array(
        draw(st.lists(st.lists(st.integers(-3, 3), min_size=3, max_size=3), min_size=n_items, max_size=n_items)),
        dtype=np.float64,
    )
    n_users = draw(st.integers(1, 6))
    width = draw(st.integers(1, 6))
    ranked = []
    for _ in range(n_users):
        items = list(draw(st.permutations(range(n_items))))[: min(width, n_items)]
        ranked.append(items + [-1] * (width - len(items)))
    pop = np.array(draw(st.lists(st.integers(0, 50), min_size=n_items, max_size=n_items)), float)
    return n_items, genres, vectors, ranked, pop


def genre_array(genres: list[set[str]]) -> np.ndarray:
    names = sorted(set().union(*genres)) or ["x"]
    return np.array([[n in g for n in names] for g in genres], dtype=bool)


@settings(max_examples=150, deadline=None)
@given(beyond_case(), st.booleans())
def test_beyond_accuracy_match_reference(case, use_vectors):
    n_items, genres, vectors, ranked, pop = case
    vecs = vectors if use_vectors else None
    topk = np.array(ranked, dtype=np.int32)
    n_train_users = 60
    got_div = metrics.diversity(topk, genre_array(genres), vecs, chunk=2)
    got_nov = metrics.novelty(topk, pop, n_train_users)
    got_pop = metrics.popularity(topk, pop)
    for u, items in enumerate(ranked):
        rec = [i for i in items if i >= 0]
        ref = ref_diversity(items, genres, vecs)
        if math.isnan(ref):
            assert math.isnan(got_div[u])
        else:
            assert got_div[u] == pytest.approx(ref, abs=1e-6)
        assert got_nov[u] == pytest.approx(sum(-math.log2(max(pop[i], 1) / n_train_users) for i in rec) / len(rec))
        assert got_pop[u] == pytest.approx(sum(pop[i] for i in rec) / len(rec))
    recommended = {i for items in ranked for i in items if i >= 0}
    assert metrics.coverage(topk, n_items) == pytest.approx(len(recommended) / n_items)


def test_beyond_accuracy_hand_computed():
    topk = np.array([[0, 1, 2], [0, 3, -1]])
    genres = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    pop = np.array([8.0, 4.0, 2.0, 0.0, 1.0])
    out = metrics.mean(metrics.beyond_accuracy(topk, pop, n_train_users=8, item_genres=genres, k=10))
    assert metrics.coverage(topk, len(pop)) == pytest.approx(4 / 5)
    # user 0: -log2(8/8), -log2(4/8), -log2(2/8) -> 0, 1, 2; user 1: 0 and -log2(1/8) = 3
    assert out["novelty_at_10"] == pytest.approx((1.0 + 1.5) / 2)
    assert out["popularity_at_10"] == pytest.approx((14 / 3 + 4.0) / 2)
    # user 0 pairs: J(0,1)=1/2, J(0,2)=0, J(1,2)=0 -> 1 - 1/6; user 1: item 3 has no genres and
    # there are no vectors, so no pair: skipped from the mean
    assert out["diversity_at_10"] == pytest.approx(1 - 1 / 6)
