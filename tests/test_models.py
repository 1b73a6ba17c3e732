"""The gradient-trained models (mf, ncf, two_tower): learning, save/load, factorization, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from recpipe.data.preprocess import preprocess, write_processed
from recpipe.data.processed import Processed, load_processed
from recpipe.data.raw import write_raw
from recpipe.data.synthetic import generate
from recpipe.data.validate import read_raw
from recpipe.errors import DataError, RecpipeError
from recpipe.models import build
from recpipe.training import build_model, fit, load_model, make_optimizer, save_model

from .conftest import REPO

# XLA compilation takes seconds per model: tests of the default (XLA) path turn it back on
FAST = {"epochs": 4, "patience": 4, "batch_size": 256, "jit_compile": False}
# name -> (conf/model file, overrides): every objective / mode of the three models
VARIANTS = {
    "mf": ("mf", {"embedding_dim": 8, "implicit_dim": 4}),
    "mf_rating_only": ("mf", {"embedding_dim": 8, "implicit_weight": 0.0}),
    "ncf_implicit": ("ncf", {"embedding_dim": 8, "layers": [16, 8], "dropout": 0.1}),
    "ncf_rating": ("ncf", {"embedding_dim": 8, "layers": [16, 8], "objective": "rating"}),
    "two_tower": ("two_tower", {"embedding_dim": 8, "layers": [16, 8]}),
    "two_tower_plain": ("two_tower", {"embedding_dim": 8, "sampling_correction": False,
                                      "remove_accidental_hits": False, "min_rating": 4}),
}
FACTORIZED = ["mf", "mf_rating_only", "two_tower", "two_tower_plain"]


def model_cfg(variant: str, **overrides: object) -> DictConfig:
    """conf/model/<file>.yaml with the variant's overrides and fast training settings."""
    file, changes = VARIANTS[variant]
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{file}.yaml"), FAST, changes, overrides)


def toy_processed(path: Path, n_users: int = 80, n_items: int = 60, n_interactions: int = 1500) -> Processed:
    """A small synthetic dataset through the real ingest and preprocess functions, written to ``path``."""
    write_raw(generate(n_users, n_items, n_interactions, seed=3), path / "raw")
    tables = read_raw(path / "raw", rating_scale=[1, 5])
    options = {"duplicates": "latest", "min_user_interactions": 1, "min_item_interactions": 1, "min_rating": None}
    write_processed(preprocess(tables, options, {"name": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0}),
                    path / "processed")
    return load_processed(path / "processed")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Processed:
    return toy_processed(tmp_path_factory.mktemp("toy"))


def all_users(data: Processed) -> tf.Tensor:
    return tf.range(data.n_users, dtype=tf.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss_and_keeps_the_best_epoch(variant: str, data: Processed) -> None:
    cfg = model_cfg(variant, jit_compile=True)
    model = build(cfg, data.n_users, data.n_items)
    result = fit(model, data, cfg, seed=0)
    losses = result.history["loss"].to_numpy()
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result.best_value == result.history[result.metric].iloc[result.best_epoch - 1]
    assert result.examples_per_second > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_load_give_identical_scores(variant: str, data: Processed, tmp_path: Path) -> None:
    cfg = model_cfg(variant, epochs=1)
    model = build(cfg, data.n_users, data.n_items)
    fit(model, data, cfg, seed=0)
    save_model(model, cfg, data.n_users, data.n_items, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.score_all(all_users(data)), model.score_all(all_users(data)))
    if model.predicts_ratings:
        users, items = data.test["user_idx"].to_numpy(), data.test["item_idx"].to_numpy()
        np.testing.assert_array_equal(loaded.predict_rating(users, items), model.predict_rating(users, items))


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_all_traces_with_an_unknown_number_of_users(variant: str, data: Processed) -> None:
    """As the export traces it."""
    model = build(model_cfg(variant), data.n_users, data.n_items)
    model.prepare(data.train)
    traced = tf.function(model.score_all, input_signature=[tf.TensorSpec([None], tf.int32)])
    for users in (tf.constant([3], tf.int32), all_users(data)):
        np.testing.assert_allclose(traced(users), model.score_all(users), rtol=1e-6)


def test_ncf_scores_users_in_chunks(data: Processed, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(model_cfg("ncf_implicit"), data.n_users, data.n_items)
    whole = model.score_all(all_users(data)).numpy()
    # chunks of 2 users: 3 chunks for 5 users, the last one padded
    monkeypatch.setattr("recpipe.models.ncf.SCORE_BUDGET", 2 * data.n_items * model.hidden[0].units)
    np.testing.assert_allclose(model.score_all(tf.range(5, dtype=tf.int32)), whole[:5], rtol=1e-5)


@pytest.mark.parametrize("variant", FACTORIZED)
def test_factorized_vectors_rank_like_score_all(variant: str, data: Processed) -> None:
    cfg = model_cfg(variant, epochs=2)
    model = build(cfg, data.n_users, data.n_items)
    fit(model, data, cfg, seed=0)
    users = all_users(data)
    scores = model.score_all(users).numpy()
    dot = (model.query_vectors(users) @ tf.transpose(model.candidate_vectors())).numpy()
    offset = scores - dot  # at most a per-user constant
    np.testing.assert_allclose(offset, offset[:, :1].repeat(data.n_items, axis=1), atol=1e-5)
    np.testing.assert_array_equal(np.argsort(-scores, axis=1, kind="stable")[:, :5],
                                  np.argsort(-(dot + offset[:, :1]), axis=1, kind="stable")[:, :5])


def test_ncf_is_not_factorized_and_scores_all_items_like_single_pairs(data: Processed) -> None:
    cfg = model_cfg("ncf_rating")
    model = build(cfg, data.n_users, data.n_items)
    model.prepare(data.train)
    assert model.query_vectors(all_users(data)) is None and model.candidate_vectors() is None
    users = np.repeat(np.arange(data.n_users, dtype=np.int32), data.n_items)
    items = np.tile(np.arange(data.n_items, dtype=np.int32), data.n_users)
    pairs = model.predict_rating(users, items).numpy().reshape(data.n_users, data.n_items)
    np.testing.assert_allclose(model.score_all(all_users(data)), pairs, rtol=1e-5)


@pytest.mark.parametrize("variant", ["mf", "ncf_implicit", "two_tower"])
def test_same_seed_same_training(variant: str, data: Processed) -> None:
    runs = []
    for _ in range(2):
        cfg = model_cfg(variant, epochs=2, jit_compile=True)
        model, _ = build_model(cfg, data, seed=7)
        runs.append((fit(model, data, cfg, seed=7).history, model.score_all(all_users(data)).numpy()))
    assert runs[0][0]["loss"].tolist() == runs[1][0]["loss"].tolist()
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_rating_models_need_ratings_and_implicit_ones_positives(data: Processed) -> None:
    unrated = data.train.assign(rating=np.nan)
    for variant in ("mf", "ncf_rating"):
        model = build(model_cfg(variant), data.n_users, data.n_items)
        with pytest.raises(DataError, match="rating"):
            model.prepare(unrated)
    assert len(build(model_cfg("ncf_implicit"), data.n_users, data.n_items).prepare(unrated)) == len(unrated)
    model = build(model_cfg("two_tower", min_rating=4), data.n_users, data.n_items)
    assert len(model.prepare(data.train)) == (data.train["rating"] >= 4).sum() > 0
    model = build(model_cfg("two_tower", min_rating=6), data.n_users, data.n_items)
    with pytest.raises(DataError, match="rating >= 6"):
        model.prepare(data.train)


def test_ncf_checks_its_config(data: Processed) -> None:
    with pytest.raises(RecpipeError, match="objective"):
        build(model_cfg("ncf_rating", objective="ranking"), data.n_users, data.n_items)
    with pytest.raises(RecpipeError, match="layers"):
        build(model_cfg("ncf_rating", layers=[]), data.n_users, data.n_items)


def test_unknown_optimizer_is_a_user_error() -> None:
    with pytest.raises(RecpipeError, match="optimizer"):
        make_optimizer("no_such_optimizer", 0.1)
