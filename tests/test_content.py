"""model=content: TF-IDF feature vectors, user profiles, cosine scores, closed-form fit, cold items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.cold import cold_items_of, cold_metrics
from recpipe.features import FeatureSpec, encode_items, fit_feature_spec
from recpipe.models.content import (
    content_vectors,
    feature_blocks,
    interaction_weights,
    inverse_document_frequency,
    user_profiles,
)
from recpipe.models.io import load_model, save_model
from recpipe.training import build_model, fit

from .helpers import REPO, cold_processed

ITEMS = pd.DataFrame(
    {
        "item_id": ["a", "b", "c"],
        "index": [0, 1, 2],
        "title": ["Red Star", "Blue Star", "Red Moon"],
        "year": [1990, 2000, None],
        "genres": [["Action"], ["Action", "Drama"], []],
    }
)


def content_cfg(**overrides: object) -> OmegaConf:
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / "content.yaml"), overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Processed:
    return cold_processed(tmp_path_factory.mktemp("cold"))


def test_blocks_idf_and_vectors_by_hand() -> None:
    spec = FeatureSpec(
        item=("genres", "year", "title"),
        genres=("Action", "Drama"),
        year_boundaries=(1995.0,),
        title_vocabulary=("red", "star"),
    )
    blocks = feature_blocks(encode_items(ITEMS, spec), spec.item_sizes())
    np.testing.assert_array_equal(blocks["genres"], [[1, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(blocks["year"], [[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # missing year: no bucket
    np.testing.assert_array_equal(blocks["title"], [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0]])  # pad, unknown dropped
    counts = tf.concat(list(blocks.values()), axis=1)
    idf = inverse_document_frequency(counts).numpy()
    np.testing.assert_allclose(idf[:2], [np.log(4 / 3) + 1, np.log(4 / 2) + 1], rtol=1e-6)

    weights = {"genres": 4.0, "year": 1.0, "title": 0.0}
    vectors = content_vectors(blocks, tf.constant(idf), weights).numpy()
    # item a: genres block (Action only) with weight 4, year block weight 1, title weight 0
    np.testing.assert_allclose(vectors[0], np.array([2, 0, 0, 1, 0, 0, 0, 0, 0]) / np.sqrt(5), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), [1, 1, 0], atol=1e-6)  # c: no weighted feature


def test_profiles_and_interaction_weights() -> None:
    rows = pd.DataFrame({"user_idx": [0, 0, 1], "item_idx": [0, 1, 1], "rating": [5.0, 1.0, 4.0]})
    np.testing.assert_array_equal(interaction_weights(rows, "uniform"), [1, 1, 1])
    np.testing.assert_array_equal(interaction_weights(rows, "rating"), [5, 1, 4])
    np.testing.assert_array_equal(interaction_weights(rows, "centered"), [2, -2, 0])
    with pytest.raises(RecpipeError, match="weighting=rating needs ratings"):
        interaction_weights(rows.assign(rating=np.nan), "rating")
    with pytest.raises(RecpipeError, match="model.weighting must be one of"):
        interaction_weights(rows, "bm25")
    items = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    profiles = user_profiles(
        items, rows["user_idx"].to_numpy(), rows["item_idx"].to_numpy(), np.array([3.0, 4.0, 1.0]), n_users=3
    )
    np.testing.assert_allclose(profiles, [[3 / np.sqrt(73), 8 / np.sqrt(73)], [0, 1], [0, 0]], rtol=1e-6)


def test_scores_are_cosines_and_factorize(data: Processed) -> None:
    model, _ = build_model(content_cfg(), data, seed=0)
    fit(model, data, content_cfg(), seed=0)
    users = tf.range(data.n_users, dtype=tf.int32)
    scores = model.score_all(users).numpy()
    q, c = model.query_vectors(users).numpy(), model.candidate_vectors().numpy()
    np.testing.assert_allclose(scores, q @ c.T, atol=1e-6)
    trained = np.bincount(data.train["user_idx"], minlength=data.n_users) > 0
    np.testing.assert_allclose(np.linalg.norm(q[trained], axis=1), 1.0, atol=1e-5)
    assert scores.max() <= 1 + 1e-5 and scores.min() >= -1e-6  # non-negative features: cosines in [0, 1]
    assert not model.trainable_variables


def test_ranks_cold_items_above_chance(data: Processed) -> None:
    cfg = content_cfg(weights={"genres": 1.0, "year": 0.0, "title": 0.0})  # synthetic years, titles: noise
    model, _ = build_model(cfg, data, seed=0)
    fit(model, data, cfg, seed=0)
    cold = cold_items_of(data)
    got = cold_metrics(lambda u: model.score_all(tf.constant(u, tf.int32)), data.matrix("test"), cold, (5,))
    chance = 5 / len(cold)  # expected recall@5 of a random ranking of the cold items
    assert got["cold_recall_at_5"] > 1.5 * chance


def test_cold_items_of_the_users_genre_rank_first() -> None:
    """Users who only watch one genre get that genre's never-seen items first."""
    n_users, n_items = 6, 12
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(n_items)],
            "index": np.arange(n_items),
            "title": ["t"] * n_items,
            "year": [None] * n_items,
            "genres": [["Western"] if i % 2 else ["Musical"] for i in range(n_items)],
        }
    )
    users = pd.DataFrame({"user_id": [f"u{u}" for u in range(n_users)], "index": np.arange(n_users)})
    train = pd.DataFrame(
        {
            "user_idx": np.repeat(np.arange(n_users), 3),
            "item_idx": [u % 2 + 2 * j for u in range(n_users) for j in range(3)],
            "rating": 4.0,
        }
    )
    empty = train.iloc[:0]
    data = Processed(users=users, items=items, train=train, val=empty, test=empty)
    model, _ = build_model(content_cfg(), data, seed=0)
    model.fit_closed_form(data)
    scores = model.score_all(tf.range(n_users)).numpy()
    cold = np.arange(6, n_items)
    for u in range(n_users):
        ranked = cold[np.argsort(-scores[u, cold], kind="stable")]
        assert set(ranked[:3] % 2) == {u % 2}


def test_save_and_load_keep_the_scores(data: Processed, tmp_path: Path) -> None:
    cfg = content_cfg(weighting="centered", weights={"genres": 2.0, "year": 0.5, "title": 1.0})
    model, context = build_model(cfg, data, seed=0, features_cfg=OmegaConf.create({"item": ["genres", "year"]}))
    fit(model, data, cfg, seed=0)
    assert context["features"]["item"] == ["genres", "year"]
    save_model(model, cfg, data.n_users, data.n_items, tmp_path / "model", context)
    loaded = load_model(tmp_path / "model")
    users = tf.range(data.n_users, dtype=tf.int32)
    np.testing.assert_allclose(loaded.score_all(users).numpy(), model.score_all(users).numpy(), atol=1e-6)
    new = encode_items(data.items.iloc[:3], loaded.feature_spec)
    np.testing.assert_allclose(
        loaded.item_vectors_from_features(new).numpy(), model.candidate_vectors().numpy()[:3], atol=1e-6
    )


def test_needs_item_features(data: Processed) -> None:
    spec = fit_feature_spec(data.items, data.users, {"item": [], "user": ["age"]})
    with pytest.raises(RecpipeError, match="model=content needs item features"):
        from recpipe.models import build

        build(content_cfg(), data.n_users, data.n_items, features=spec, items=data.items)
