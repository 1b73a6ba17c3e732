"""The classic models (model=popularity|random|item_knn|user_knn|ease): TensorFlow scores equal the
scipy scorers, EASE's lambda tuned on val, save/load and a SavedModel export in a fresh process."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics
from recpipe.models.classic import CLASSIC_MODELS, fit_classic
from recpipe.models.classic.ease import EASE, tune_ease
from recpipe.models.classic.knn import CosineKNN
from recpipe.models.classic.random import hash_uniform
from recpipe.models.io import load_model, save_model
from recpipe.serving.export import build_server, save_server

from .helpers import REPO, expected_top, export_cfg, query_fresh_process

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
        ("ease", {"lam": 30}, EASE(lam=30), {"lam": 30.0}),
    ],
)
def test_tf_models_score_like_the_scipy_forms(toy_data, name, params, reference, used):
    model, got = fit_classic(name, toy_data, params)
    expected = reference.fit(toy_data.matrix("train")).score(np.arange(toy_data.n_users))
    assert np.allclose(all_scores(model, toy_data), expected, atol=1e-5)
    assert got == used


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
