"""The model contract (``RecModel``): ``register`` checks it, every registered model fulfils it, and
training, saving and serving dispatch on what a model declares."""

from __future__ import annotations

import pytest
import tensorflow as tf

from recpipe.models import available, get
from recpipe.models.base import RecModel, contract_gaps, register
from recpipe.serving.similar import supports_similar
from recpipe.training import build_model

from .helpers import REPO, composed


def test_every_registered_model_fulfils_the_contract():
    assert available() == sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
    for name in available():
        cls = get(name)
        assert contract_gaps(cls) == [], name
        assert cls.objective in ("rating", "implicit") and cls.fitting in ("gradient", "closed_form"), name


def test_declared_capabilities():
    closed_form = {n for n in available() if get(n).fitting == "closed_form"}
    assert closed_form == {
        "popularity",
        "random",
        "item_knn",
        "user_knn",
        "ease",
        "window_ease",
        "content",
        "ials",
        "blend",
    }
    assert {n for n in available() if get(n).uses_features} == {"content", "hybrid"}
    assert {n for n in available() if get(n).embeds_new_items} == {"content", "hybrid"}


def test_register_names_every_missing_piece():
    class Incomplete(RecModel):
        fitting = "gradient"
        embeds_new_items = True

    with pytest.raises(TypeError) as e:
        register("incomplete")(Incomplete)
    message = str(e.value)
    for piece in (
        "objective",
        "uses_features",
        "score_all",
        "prepare",
        "compute_loss",
        "item_vectors_from_features",
        "candidate_vectors",
    ):
        assert piece in message, piece
    assert "incomplete" not in available()

    class RatingClosedForm(RecModel):
        objective = "rating"
        fitting = "closed_form"

        def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
            return tf.zeros([tf.shape(user_idx)[0], 1])

    with pytest.raises(TypeError, match="fit_closed_form; predict_rating"):
        register("rating_closed_form")(RatingClosedForm)
    with pytest.raises(TypeError, match="not a RecModel subclass"):
        register("function")(lambda cfg, **kw: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "similar"), [("mf", False), ("content", True)])
def test_features_go_to_models_that_use_them(toy_data, name, similar):
    cfg = composed(f"model={name}", "data=synthetic")
    model, context = build_model(cfg.model, toy_data, seed=0, features_cfg=cfg.data.features)
    assert ("features" in context) == get(name).uses_features
    assert supports_similar(model) == similar
