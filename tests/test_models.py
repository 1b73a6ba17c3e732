"""The gradient-trained models (mf, ncf, two_tower, mult_vae): learning, save/load, factorization, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import DataError, RecpipeError
from recpipe.models import build
from recpipe.models.io import load_model, save_model
from recpipe.training import build_model, fit, make_optimizer

from .helpers import VARIANTS, model_cfg

FACTORIZED = ["mf", "mf_rating_only", "two_tower", "two_tower_plain"]


def all_users(toy_data: Processed) -> tf.Tensor:
    return tf.range(toy_data.n_users, dtype=tf.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss_and_keeps_the_best_epoch(variant: str, toy_data: Processed) -> None:
    cfg = model_cfg(variant, jit_compile=True)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    result = fit(model, toy_data, cfg, seed=0)
    losses = result.history["loss"].to_numpy()
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert result.best_value == result.history[result.metric].iloc[result.best_epoch - 1]
    assert result.examples_per_second > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_load_give_identical_scores(variant: str, toy_data: Processed, tmp_path: Path) -> None:
    cfg = model_cfg(variant, epochs=1)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    fit(model, toy_data, cfg, seed=0)
    save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.score_all(all_users(toy_data)), model.score_all(all_users(toy_data)))
    if model.predicts_ratings:
        users, items = toy_data.test["user_idx"].to_numpy(), toy_data.test["item_idx"].to_numpy()
        np.testing.assert_array_equal(loaded.predict_rating(users, items), model.predict_rating(users, items))


@pytest.mark.parametrize("variant", VARIANTS)
def test_score_all_traces_with_an_unknown_number_of_users(variant: str, toy_data: Processed) -> None:
    """As the export traces it."""
    model = build(model_cfg(variant), toy_data.n_users, toy_data.n_items)
    model.prepare(toy_data.train)
    traced = tf.function(model.score_all, input_signature=[tf.TensorSpec([None], tf.int32)])
    for users in (tf.constant([3], tf.int32), all_users(toy_data)):
        np.testing.assert_allclose(traced(users), model.score_all(users), rtol=1e-6, atol=1e-6)


def test_ncf_scores_users_in_chunks(toy_data: Processed, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build(model_cfg("ncf_implicit"), toy_data.n_users, toy_data.n_items)
    whole = model.score_all(all_users(toy_data)).numpy()
    # chunks of 2 users: 3 chunks for 5 users, the last one padded
    monkeypatch.setattr("recpipe.models.ncf.SCORE_BUDGET", 2 * toy_data.n_items * model.hidden[0].units)
    np.testing.assert_allclose(model.score_all(tf.range(5, dtype=tf.int32)), whole[:5], rtol=1e-5)


@pytest.mark.parametrize("variant", FACTORIZED)
def test_factorized_vectors_rank_like_score_all(variant: str, toy_data: Processed) -> None:
    cfg = model_cfg(variant, epochs=2)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    fit(model, toy_data, cfg, seed=0)
    users = all_users(toy_data)
    scores = model.score_all(users).numpy()
    dot = (model.query_vectors(users) @ tf.transpose(model.candidate_vectors())).numpy()
    offset = scores - dot  # at most a per-user constant
    np.testing.assert_allclose(offset, offset[:, :1].repeat(toy_data.n_items, axis=1), atol=1e-5)
    np.testing.assert_array_equal(
        np.argsort(-scores, axis=1, kind="stable")[:, :5],
        np.argsort(-(dot + offset[:, :1]), axis=1, kind="stable")[:, :5],
    )


def test_ncf_is_not_factorized_and_scores_all_items_like_single_pairs(toy_data: Processed) -> None:
    cfg = model_cfg("ncf_rating")
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    model.prepare(toy_data.train)
    assert model.query_vectors(all_users(toy_data)) is None and model.candidate_vectors() is None
    users = np.repeat(np.arange(toy_data.n_users, dtype=np.int32), toy_data.n_items)
    items = np.tile(np.arange(toy_data.n_items, dtype=np.int32), toy_data.n_users)
    pairs = model.predict_rating(users, items).numpy().reshape(toy_data.n_users, toy_data.n_items)
    np.testing.assert_allclose(model.score_all(all_users(toy_data)), pairs, rtol=1e-5)


@pytest.mark.parametrize("variant", ["mf", "ncf_implicit", "two_tower"])
def test_same_seed_same_training(variant: str, toy_data: Processed) -> None:
    runs = []
    for _ in range(2):
        cfg = model_cfg(variant, epochs=2, jit_compile=True)
        model, _ = build_model(cfg, toy_data, seed=7)
        runs.append((fit(model, toy_data, cfg, seed=7).history, model.score_all(all_users(toy_data)).numpy()))
    assert runs[0][0]["loss"].tolist() == runs[1][0]["loss"].tolist()
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_rating_models_need_ratings_and_implicit_ones_positives(toy_data: Processed) -> None:
    unrated = toy_data.train.assign(rating=np.nan)
    for variant in ("mf", "ncf_rating"):
        model = build(model_cfg(variant), toy_data.n_users, toy_data.n_items)
        with pytest.raises(DataError, match="rating"):
            model.prepare(unrated)
    assert len(build(model_cfg("ncf_implicit"), toy_data.n_users, toy_data.n_items).prepare(unrated)) == len(unrated)
    model = build(model_cfg("two_tower", min_rating=4), toy_data.n_users, toy_data.n_items)
    assert len(model.prepare(toy_data.train)) == (toy_data.train["rating"] >= 4).sum() > 0
    model = build(model_cfg("two_tower", min_rating=6), toy_data.n_users, toy_data.n_items)
    with pytest.raises(DataError, match="rating >= 6"):
        model.prepare(toy_data.train)


def test_ncf_checks_its_config(toy_data: Processed) -> None:
    with pytest.raises(RecpipeError, match="objective"):
        build(model_cfg("ncf_rating", objective="ranking"), toy_data.n_users, toy_data.n_items)
    with pytest.raises(RecpipeError, match="layers"):
        build(model_cfg("ncf_rating", layers=[]), toy_data.n_users, toy_data.n_items)


def test_unknown_optimizer_is_a_user_error() -> None:
    with pytest.raises(RecpipeError, match="optimizer"):
        make_optimizer("no_such_optimizer", 0.1)
