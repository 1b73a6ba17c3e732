"""model=hybrid (feature towers, unknown-id row, id dropout) and similar items for a new item."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from recpipe.data.processed import Processed, write_processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.cold import cold_items_of, cold_metrics
from recpipe.features import encode_items
from recpipe.models.hybrid import Hybrid
from recpipe.models.io import load_model, save_model
from recpipe.serving.client import similar_command
from recpipe.serving.export import build_server, save_server
from recpipe.serving.similar import SimilarItems, similar_items
from recpipe.training import build_model, fit

from .helpers import REPO, cold_processed

FAST = {"embedding_dim": 16, "epochs": 6, "patience": 6, "batch_size": 128}


def model_cfg(name: str = "hybrid", **overrides: object) -> DictConfig:
    return OmegaConf.merge(
        OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml"), FAST if name == "hybrid" else {}, overrides
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Processed:
    return cold_processed(tmp_path_factory.mktemp("cold"))


@pytest.fixture(scope="module")
def trained(data: Processed) -> Hybrid:
    model, _ = build_model(model_cfg(), data, seed=0)
    fit(model, data, model_cfg(), seed=0)
    return model


def catalog_features(data: Processed, model: Hybrid, items: np.ndarray) -> dict[str, tf.Tensor]:
    return {k: tf.constant(v) for k, v in encode_items(data.items.iloc[items], model.feature_spec).items()}


def test_cold_items_are_placed_by_their_features_alone(data: Processed, trained: Hybrid) -> None:
    cold = cold_items_of(data)
    known = trained.candidate_tower.known.numpy()
    assert known[cold].sum() == 0 and known.sum() == data.train["item_idx"].nunique()
    vectors = trained.candidate_vectors().numpy()
    from_features = trained.item_vectors_from_features(catalog_features(data, trained, cold)).numpy()
    np.testing.assert_allclose(vectors[cold], from_features, atol=1e-5)
    warm = np.flatnonzero(known)[:5]
    assert not np.allclose(vectors[warm], trained.item_vectors_from_features(catalog_features(data, trained, warm)))


def test_ranks_cold_items_above_chance(data: Processed) -> None:
    # users of the synthetic data favour a genre; its years and titles are noise
    cfg = model_cfg(item_id_dropout=0.5, learning_rate=0.01, epochs=10, patience=10)
    model, _ = build_model(cfg, data, seed=0, features_cfg=OmegaConf.create({"item": ["genres"], "user": []}))
    fit(model, data, cfg, seed=0)
    cold = cold_items_of(data)
    got = cold_metrics(lambda u: model.score_all(tf.constant(u, tf.int32)), data.matrix("test"), cold, (5,))
    assert got["cold_recall_at_5"] > 1.5 * 5 / len(cold)  # a random ranking's expected recall: 5 / len(cold)


def test_history_input_counts_the_users_train_genres(data: Processed, trained: Hybrid) -> None:
    history = trained.query_tower.catalog["history"].numpy()
    genres = encode_items(data.items, trained.feature_spec)["genres"]
    n_genres = genres.shape[1]
    for u in (0, 7):
        items = data.train.loc[data.train["user_idx"] == u, "item_idx"].to_numpy()
        np.testing.assert_allclose(history[u, :n_genres], genres[items].sum(axis=0))
        assert history[u, n_genres:].sum() == len(items)  # one year bucket per item (synthetic years are known)


@pytest.mark.parametrize("dropout", [0.0, 1.0])
def test_item_id_dropout_in_training_only(data: Processed, dropout: float) -> None:
    model, _ = build_model(model_cfg(item_id_dropout=dropout), data, seed=0)
    idx = tf.range(data.n_items)
    features = catalog_features(data, model, np.arange(data.n_items))
    unknown = model.candidate_tower.embed(tf.fill([data.n_items], data.n_items), features)
    expected = unknown if dropout == 1.0 else model.candidate_tower(idx)
    np.testing.assert_allclose(model.candidate_tower(idx, training=True), expected, atol=1e-6)
    assert not np.allclose(model.candidate_tower(idx), unknown)  # at inference every item has its id


def test_concatenating_towers_and_save_load(data: Processed, tmp_path: Path) -> None:
    cfg = model_cfg(layers=[32, 16], epochs=2, user_id_dropout=0.2)
    model, context = build_model(cfg, data, seed=0)
    fit(model, data, cfg, seed=0)
    assert model.candidate_vectors().shape == (data.n_items, 16)
    save_model(model, cfg, data.n_users, data.n_items, tmp_path / "model", context)
    loaded = load_model(tmp_path / "model")
    users = tf.range(data.n_users, dtype=tf.int32)
    np.testing.assert_allclose(loaded.score_all(users), model.score_all(users), atol=1e-5)
    np.testing.assert_array_equal(loaded.candidate_tower.known, model.candidate_tower.known)


@pytest.mark.parametrize("name", ["hybrid", "content"])
def test_similar_items_for_a_new_item(data: Processed, trained: Hybrid, name: str, tmp_path: Path) -> None:
    if name == "hybrid":
        model = trained
    else:
        model, _ = build_model(model_cfg("content"), data, seed=0)
        fit(model, data, model_cfg("content"), seed=0)
    ids, titles = data.items["item_id"].to_numpy(object), data.items["title"].to_numpy(object)
    module = SimilarItems(model, ids, titles, max_k=10)
    # a "new" item with exactly the features of a cold item: its vector is that item's
    target = data.items.iloc[int(cold_items_of(data)[0])]
    query = dict(title=target["title"], genres="|".join(target["genres"]), year=float(target["year"]), k=5)
    rows = similar_items(module.top_k, **query)
    assert rows.columns.tolist() == ["rank", "item_id", "title", "score"] and rows["rank"].tolist() == [1, 2, 3, 4, 5]
    assert rows["score"].iloc[0] == pytest.approx(1.0, abs=1e-5) and rows["score"].is_monotonic_decreasing
    same = rows.loc[rows["score"] > 1 - 1e-5, "item_id"]
    assert target["item_id"] in set(same) or len(same) == 5  # ties: items with identical features
    encoded = encode_items(data.items.set_index("item_id").loc[list(same)], model.feature_spec)
    for values in encoded.values():
        assert (values == values[:1]).all()  # every top-scoring item has the query's features

    tf.saved_model.save(module, str(tmp_path / "similar"), signatures={"similar_items": module.top_k})
    loaded = tf.saved_model.load(str(tmp_path / "similar"))
    pd.testing.assert_frame_equal(similar_items(loaded.signatures["similar_items"], **query), rows, atol=1e-5)


def test_unknown_genres_and_missing_year_are_fine(data: Processed, trained: Hybrid) -> None:
    module = SimilarItems(trained, data.items["item_id"].to_numpy(object), data.items["title"].to_numpy(object), 50)
    rows = similar_items(module.top_k, title="Brand New", genres=" genre_01 | No Such Genre |", year=None, k=100)
    assert len(rows) == 50 and rows["item_id"].is_unique  # capped at max_k


def test_models_without_features_cannot_serve_similar_items(data: Processed) -> None:
    model, _ = build_model(OmegaConf.load(REPO / "conf" / "model" / "two_tower.yaml"), data, seed=0)
    with pytest.raises(RecpipeError, match="TwoTower cannot place an item from its features"):
        SimilarItems(model, data.items["item_id"].to_numpy(object), data.items["title"].to_numpy(object), 10)


def test_export_serves_similar_items(data: Processed, trained: Hybrid, tmp_path: Path, capsys) -> None:
    export_cfg = OmegaConf.create({"index": "brute_force", "max_k": 20, "precompute_max_scores": 0})
    save_server(build_server(trained, data, export_cfg), tmp_path / "export", "brute_force")
    target = data.items.iloc[int(cold_items_of(data)[0])]
    assert (
        similar_command(target["title"], "|".join(target["genres"]), int(target["year"]), 3, tmp_path / "export") == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"top 3 items similar to a new item ('{target['title']}', ")
    assert lines[1].split() == ["rank", "item", "score", "title"] and len(lines) == 5
    assert lines[2].split()[:3] == ["1", lines[2].split()[1], "1.0000"]

    plain, _ = build_model(OmegaConf.load(REPO / "conf" / "model" / "two_tower.yaml"), data, seed=0)
    save_server(build_server(plain, data, export_cfg), tmp_path / "plain", "brute_force")
    with pytest.raises(RecpipeError, match="has no similar_items signature"):
        similar_command("Anything", "", None, 3, tmp_path / "plain")
    for k in (0, 21):
        with pytest.raises(RecpipeError, match=f"-k {k}: .* returns at most 20 items"):
            similar_command("Anything", "", None, k, tmp_path / "export")


@pytest.mark.slow
def test_ml100k_cold_items_at_least_three_times_chance(tmp_path: Path) -> None:
    """The issue's bar: with split.cold_items=0.1 on ML-100K, content and hybrid reach a cold
    recall_at_20 of at least 3x a random ranking's (measured: about 3.4x and 3.3x)."""
    from recpipe.data.preprocess import preprocess
    from recpipe.data.processed import load_processed
    from recpipe.data.raw import read_raw, write_raw
    from recpipe.data.sources import load_source

    cfg = OmegaConf.load(REPO / "params.yaml")
    write_raw(load_source(cfg.data), tmp_path / "raw")
    split = OmegaConf.merge(cfg.split, {"cold_items": 0.1})
    write_processed(preprocess(read_raw(tmp_path / "raw"), cfg.preprocess, split), tmp_path / "processed")
    data = load_processed(tmp_path / "processed")
    cold = cold_items_of(data)
    chance = 20 / len(cold)
    for name in ("content", "hybrid"):
        model_config = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        model, _ = build_model(model_config, data, int(cfg.seed), cfg.data.features)
        fit(model, data, model_config, int(cfg.seed))
        got = cold_metrics(lambda u, m=model: m.score_all(tf.constant(u, tf.int32)), data.matrix("test"), cold, (20,))
        assert got["cold_recall_at_20"] >= 3 * chance, name
