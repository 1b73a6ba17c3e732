"""The classic models (``recpipe.models.classic``): the scipy forms (cosine kNN along both axes, EASE)
against slow, obvious loop implementations; the TensorFlow models (model=popularity|random|item_knn|
user_knn|ease) score like the scipy forms; EASE's lambda tuned on val; save/load and a SavedModel
export in a fresh process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics
from recpipe.models.classic import CLASSIC_MODELS, fit_classic, gram, knn
from recpipe.models.classic.ease import EASE, tune_ease
from recpipe.models.classic.knn import CosineKNN
from recpipe.models.classic.random import hash_uniform
from recpipe.models.io import load_model, save_model
from recpipe.serving.export import build_server, save_server

from .helpers import REPO, expected_top, export_cfg, query_fresh_process

# --- the scipy forms against references: one pair at a time, plain Python ---------------------


def random_matrix(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[n_users - 1] = 0.0  # a user without interactions
    return sp.csr_matrix(dense)


def ref_neighbours(vectors: list[set[int]], k: int, shrink: float) -> list[dict[int, float]]:
    """For each vector, its k most cosine-similar others (ties: lower index), positive only."""
    out = []
    for i, a in enumerate(vectors):
        sims = []
        for j, b in enumerate(vectors):
            if j == i:
                continue
            denom = math.sqrt(len(a)) * math.sqrt(len(b)) + shrink
            sims.append((len(a & b) / denom if denom > 0 else 0.0, j))
        sims.sort(key=lambda t: (-t[0], t[1]))
        out.append({j: s for s, j in sims[:k] if s > 0})
    return out


def item_sets(X: sp.csr_matrix) -> list[set[int]]:
    return [set(X[u].indices.tolist()) for u in range(X.shape[0])]


def ref_itemknn(X: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    users = item_sets(X)
    columns = [set(np.flatnonzero(X[:, i].toarray().ravel()).tolist()) for i in range(X.shape[1])]
    nbrs = ref_neighbours(columns, k, shrink)
    scores = np.zeros(X.shape)
    for u, items in enumerate(users):
        for i in items:
            for j, s in nbrs[i].items():
                scores[u, j] += s
    return scores


def ref_userknn(X: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    users = item_sets(X)
    nbrs = ref_neighbours(users, k, shrink)
    scores = np.zeros(X.shape)
    for u in range(len(users)):
        for v, s in nbrs[u].items():
            for j in users[v]:
                scores[u, j] += s
    return scores


def ref_ease_weights(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """Column j of B: ridge regression of item j on every other item (its own weight fixed at 0)."""
    D = X.toarray().astype(np.float64)
    n = D.shape[1]
    B = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        A = D[:, others]
        B[others, j] = np.linalg.solve(A.T @ A + lam * np.eye(n - 1), A.T @ D[:, j])
    return B


CASES = [(seed, k, shrink) for seed in range(3) for k, shrink in [(1, 0.0), (3, 0.0), (5, 2.0), (50, 0.0)]]


@pytest.mark.parametrize("seed,k,shrink", CASES)
def test_itemknn_matches_reference(seed, k, shrink):
    X = random_matrix(25, 15, 0.25, seed)
    model = CosineKNN("item", k, shrink).fit(X)
    users = np.arange(X.shape[0])
    np.testing.assert_allclose(model.score(users), ref_itemknn(X, k, shrink), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,k,shrink", CASES)
def test_userknn_matches_reference(seed, k, shrink):
    X = random_matrix(25, 15, 0.25, seed)
    model = CosineKNN("user", k, shrink).fit(X)
    users = np.array([3, 0, 24, 3])  # any order, repeats allowed
    np.testing.assert_allclose(model.score(users), ref_userknn(X, k, shrink)[users], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dense_share", [1, 4, 1 << 30])
def test_similarity_blocks_and_dense_rows_give_the_same_result(monkeypatch, dense_share):
    """Blocked top-k, dense/sparse row split (none, some, all rows dense) and a subset of columns
    all give the rows of the one-block, all-sparse result."""
    X = random_matrix(40, 30, 0.2, seed=7).toarray()
    X[:3] = 1.0  # three users with every item: dense rows
    X = sp.csr_matrix(X)
    monkeypatch.setattr(gram, "DENSE_SHARE", 0)  # no row is dense
    whole = knn.topk_cosine(X, k=4).toarray()
    monkeypatch.setattr(gram, "DENSE_SHARE", dense_share)
    monkeypatch.setattr(knn, "_BLOCK_ELEMENTS", 70)  # two columns of 30 per block
    np.testing.assert_array_equal(knn.topk_cosine(X, k=4).toarray(), whole)
    some = np.array([29, 3, 17, 3])
    subset = knn.topk_cosine(X, k=4, columns=some).toarray()
    np.testing.assert_array_equal(subset[some], whole[some])
    assert not np.delete(subset, some, axis=0).any()
    assert ((whole > 0).sum(axis=1) <= 4).all()
    assert np.all(np.diag(whole) == 0)


def test_top_k_neighbours_break_ties_towards_lower_index():
    # item 0 is equally similar (1/sqrt(3)) to items 1, 2 and 3
    X = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1]], dtype=np.float32))
    S = knn.topk_cosine(X, k=2).toarray()
    assert set(np.flatnonzero(S[0])) == {1, 2}


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 10.0), (2, 0.5)])
def test_ease_matches_per_item_ridge_regression(seed, lam):
    X = random_matrix(30, 12, 0.3, seed)
    model = EASE(lam=lam).fit(X)
    B = ref_ease_weights(X, lam)
    np.testing.assert_allclose(model.B, B, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(np.arange(30)), X.toarray() @ B, rtol=1e-4, atol=1e-5)


def test_ease_has_zero_diagonal():
    model = EASE(lam=5.0).fit(random_matrix(50, 20, 0.3, seed=3))
    assert np.all(np.diag(model.B) == 0.0)


def test_ease_recovers_co_occurrence():
    # Items 0+1 always appear together, as do 2+3 and 4+5; item 6 appears alone.
    rows = [[0, 1]] * 10 + [[2, 3]] * 10 + [[4, 5]] * 10 + [[6]] * 5
    dense = np.zeros((len(rows) + 3, 7), np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1
    dense[-3, 0] = dense[-2, 2] = dense[-1, 5] = 1  # users holding one half of a pair
    X = sp.csr_matrix(dense)
    model = EASE(lam=1.0).fit(X)
    scores = model.score(np.arange(len(rows), len(rows) + 3))
    scores[dense[-3:] > 0] = -np.inf  # the caller's job: exclude seen items
    assert scores.argmax(axis=1).tolist() == [1, 3, 4]
    assert model.B[0, 1] > 0.5 and abs(model.B[0, 2]) < 1e-6 and abs(model.B[6, 0]) < 1e-6


def test_ease_keeps_the_most_popular_items():
    X = random_matrix(40, 12, 0.3, seed=4)
    model = EASE(lam=2.0, max_items=5).fit(X)
    counts = np.asarray(X.sum(axis=0)).ravel()
    np.testing.assert_array_equal(model.keep, np.sort(np.argsort(-counts, kind="stable")[:5]))
    alone = EASE(lam=2.0).fit(X[:, model.keep])  # the same as EASE on the kept columns only
    np.testing.assert_array_equal(model.B, alone.B)
    scores = model.score(np.arange(40))
    np.testing.assert_allclose(scores[:, model.keep], alone.score(np.arange(40)))
    dropped = np.delete(scores, model.keep, axis=1)  # finite, below every kept item, most popular first
    assert np.isfinite(dropped).all() and (dropped.max(axis=1) < scores[:, model.keep].min(axis=1)).all()
    by_popularity = np.delete(np.arange(12), model.keep)[np.argsort(-np.delete(counts, model.keep), kind="stable")]
    assert (np.argsort(-scores[:, by_popularity], axis=1, kind="stable") == np.arange(7)).all()
    assert model.dropped_share == pytest.approx(1 - counts[model.keep].sum() / counts.sum())


@pytest.mark.parametrize("model", [CosineKNN("item", 5, 0.0), CosineKNN("user", 5, 0.0), EASE(lam=10.0)])
def test_scores_shape_dtype_and_empty_user(model):
    X = random_matrix(20, 10, 0.3, seed=5)
    X.data[:] = 4.0  # ratings are binarised
    model.fit(X)
    s = model.score(np.array([0, 19], dtype=np.int32))
    assert s.shape == (2, 10) and s.dtype == np.float32
    np.testing.assert_array_equal(s[1], 0.0)  # user 19 has no interactions
    assert model.n_items == 10


def test_knn_axis_is_item_or_user():
    with pytest.raises(RecpipeError, match="axis must be one of item, user"):
        CosineKNN("items", 5, 0.0)


def test_errors_are_user_errors():
    with pytest.raises(RecpipeError, match="before fit"):
        CosineKNN("item", 5, 0.0).score(np.array([0]))
    with pytest.raises(RecpipeError, match="lam"):
        EASE(lam=0)
    with pytest.raises(RecpipeError, match="max_items must be at least 1"):
        EASE(lam=1.0, max_items=0).fit(random_matrix(4, 6, 0.5, seed=0))
    with pytest.raises(RecpipeError, match="k must be"):
        CosineKNN("user", 0, 0.0).fit(random_matrix(4, 6, 0.5, seed=0))


# --- the TensorFlow models ----------------------------------------------------------------

_MASK = (1 << 64) - 1


def ref_hash(seed: int, user: int, item: int) -> float:
    """splitmix64 of (user << 32 | item) ^ seed-derived key, top 24 bits, in plain Python integers."""
    x = ((user << 32) | item) ^ ((seed * 0x9E3779B97F4A7C15) & _MASK)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return (x >> 40) / 2**24


def all_scores(model, toy_data: Processed) -> np.ndarray:
    return model.score_all(tf.range(toy_data.n_users, dtype=tf.int32)).numpy()


def test_hash_uniform_matches_reference_is_seeded_and_batch_independent():
    users = np.arange(10, dtype=np.int32)
    a = hash_uniform(1, users, 50).numpy()
    assert a.shape == (10, 50) and a.dtype == np.float32
    assert a[3, 7] == pytest.approx(ref_hash(1, 3, 7), abs=0) and a[9, 49] == ref_hash(1, 9, 49)
    assert np.all((a >= 0) & (a < 1))
    assert np.array_equal(a[3:5], hash_uniform(1, users[3:5], 50).numpy())
    assert not np.array_equal(a, hash_uniform(2, users, 50).numpy())
    big = hash_uniform(0, np.arange(200, dtype=np.int32), 500).numpy()
    assert abs(big.mean() - 0.5) < 0.01


@pytest.mark.parametrize(
    ("name", "params", "reference", "used"),
    [
        ("item_knn", {"k": 7, "shrink": 1.0}, CosineKNN("item", 7, 1.0), {"k": 7, "shrink": 1.0}),
        ("user_knn", {"k": 5, "shrink": 0.0}, CosineKNN("user", 5, 0.0), {"k": 5, "shrink": 0.0}),
        ("ease", {"lam": 30}, EASE(lam=30), {"lam": 30.0, "max_items": 8_000, "items_kept": 60}),
        ("ease", {"lam": 30, "max_items": 20}, EASE(lam=30, max_items=20), {"max_items": 20, "items_kept": 20}),
    ],
)
def test_tf_models_score_like_the_scipy_forms(toy_data, name, params, reference, used):
    model, got = fit_classic(name, toy_data, params)
    expected = reference.fit(toy_data.matrix("train")).score(np.arange(toy_data.n_users))
    assert np.allclose(all_scores(model, toy_data), expected, atol=1e-5)
    assert {key: got[key] for key in used} == used


def test_popularity_and_random(toy_data):
    pop, _ = fit_classic("popularity", toy_data, {})
    scores = all_scores(pop, toy_data)
    assert np.array_equal(scores, np.tile(toy_data.item_popularity().astype(np.float32), (toy_data.n_users, 1)))
    rnd, used = fit_classic("random", toy_data, {"seed": 5})
    assert used == {"seed": 5}
    expected = hash_uniform(5, np.arange(toy_data.n_users), toy_data.n_items).numpy()
    assert np.array_equal(all_scores(rnd, toy_data), expected)


def test_ease_auto_picks_the_best_validation_lambda(toy_data):
    grid = [1.0, 30.0, 1000.0]
    model, used = fit_classic("ease", toy_data, {"lam": "auto", "grid": grid})
    train, val = toy_data.matrix("train"), toy_data.matrix("val")
    by_hand = {lam: rank_metrics(EASE(lam).fit(train).score, train, val, (10,))["ndcg_at_10"] for lam in grid}
    assert used["val_ndcg_at_10"] == [[lam, pytest.approx(v)] for lam, v in by_hand.items()]
    best = max(by_hand, key=by_hand.get)
    assert used["lam"] == best
    assert np.allclose(all_scores(model, toy_data), EASE(best).fit(train).score(np.arange(toy_data.n_users)), atol=1e-5)


def test_ease_errors(toy_data):
    empty_val = Processed(toy_data.users, toy_data.items, toy_data.train, toy_data.val.iloc[:0], toy_data.test)
    with pytest.raises(RecpipeError, match="validation split, which is empty"):
        fit_classic("ease", empty_val, {"lam": "auto", "grid": [10]})
    with pytest.raises(RecpipeError, match="non-empty grid"):
        tune_ease(toy_data.matrix("train"), toy_data.matrix("val"), [])
    with pytest.raises(RecpipeError, match="lam must be a number > 0"):
        fit_classic("ease", toy_data, {"lam": -1})
    with pytest.raises(RecpipeError, match="not a classic model"):
        fit_classic("mf", toy_data, {})


def test_conf_model_files_build_and_fit(toy_data):
    for name in CLASSIC_MODELS:
        cfg = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        assert cfg.name == name
        params = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "seed"} | {"seed": 0}
        fit_classic(name, toy_data, params)


# configs of the fitted models (the ones not listed need none)
PARAMS = {
    "item_knn": {"k": 10, "shrink": 0.0},
    "user_knn": {"k": 8, "shrink": 0.0},
    "ease": {"lam": 50},
    "random": {"seed": 3},
}


@pytest.fixture(scope="module")
def fitted(toy_data):
    return {name: fit_classic(name, toy_data, PARAMS.get(name, {}))[0] for name in CLASSIC_MODELS}


def test_save_and_load_keep_the_scores(toy_data, fitted, tmp_path):
    for name, model in fitted.items():
        cfg = OmegaConf.create({"name": name, **PARAMS.get(name, {})})
        save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / name)
        assert np.array_equal(all_scores(load_model(tmp_path / name), toy_data), all_scores(model, toy_data)), name


def test_exported_saved_model_matches_ranking(toy_data, fitted, tmp_path):
    # sparse rows @ sparse matrix, sparse rows @ dense-from-sparse, the uint64 hash (ease and
    # popularity use the same pieces)
    exported = {name: fitted[name] for name in ("item_knn", "user_knn", "random")}
    paths = {}
    for name, model in exported.items():
        paths[name] = tmp_path / name
        save_server(build_server(model, toy_data, export_cfg()), paths[name], "brute_force")
    users = toy_data.users["user_id"].to_numpy(object)[:10].tolist()
    results = query_fresh_process(paths, [(users, 10)])
    for name, model in exported.items():
        assert results[name][0]["item_ids"] == expected_top(model, toy_data, np.arange(10, dtype=np.int32), 10), name
