"""What every recpipe model provides, and the registry that finds models by name.

A model is built from its config section (``cfg.model``) and the vocabulary sizes, trained by the
train stage, saved as weights under models/model/, and rebuilt from the same config by later stages.
Evaluation and export only need ``score_all``; factorized models also expose their query and
candidate vectors so export can build an approximate (ScaNN) index over them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf


class RecModel(tf.keras.Model):
    """Base for recpipe models (tf.keras / tfrs.Model).

    Subclasses set ``predicts_ratings`` and implement ``score_all``; rating models implement
    ``predict_rating``; factorized models implement ``query_vectors`` and ``candidate_vectors``
    such that ``score_all(u) == query_vectors(u) @ candidate_vectors()^T`` up to a per-user constant.
    """

    predicts_ratings: bool = False

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        """Scores of every item for users ``user_idx`` (int32 [batch]) -> float32 [batch, n_items]."""
        raise NotImplementedError

    def predict_rating(self, user_idx: tf.Tensor, item_idx: tf.Tensor) -> tf.Tensor:
        """Predicted ratings for (user, item) pairs, float32 [n] (rating models only)."""
        raise NotImplementedError(f"{type(self).__name__} does not predict ratings")

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor | None:
        """Query embeddings [batch, d] for factorized models, else None."""
        return None

    def candidate_vectors(self) -> tf.Tensor | None:
        """Candidate embeddings [n_items, d] for factorized models, else None."""
        return None


ModelBuilder = Callable[..., RecModel]
_REGISTRY: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Class decorator: make a model available as ``model=<name>``."""

    def deco(cls: ModelBuilder) -> ModelBuilder:
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> ModelBuilder:
    from recpipe.errors import RecpipeError

    if name not in _REGISTRY:
        raise RecpipeError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def build(model_cfg: Any, n_users: int, n_items: int, **context: Any) -> RecModel:
    """Build the model named ``model_cfg.name`` (extra context, e.g. item popularity, passed on)."""
    return get(model_cfg.name)(model_cfg, n_users=n_users, n_items=n_items, **context)
