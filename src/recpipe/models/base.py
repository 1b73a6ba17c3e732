"""What every recpipe model provides (``RecModel``), and the registry that finds models by name.

A model is built from its config section (``cfg.model``) and the vocabulary sizes, fit by the train
stage (``recpipe.training``), saved as weights plus the config that rebuilds it
(``recpipe.models.io``), and rebuilt by later stages. Evaluation and export only need
``score_all``; factorized models also expose their query and candidate vectors so export can build
an approximate (ScaNN) index over them. ``register`` checks a class against this contract.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import tensorflow as tf

from recpipe.errors import RecpipeError

if TYPE_CHECKING:
    from recpipe.data.processed import Processed
    from recpipe.features import FeatureSpec

OBJECTIVES = ("rating", "implicit")
FITTINGS = ("gradient", "closed_form")


class RecModel(tf.keras.Model):
    """Base for recpipe models (tf.keras / tfrs.Model). The whole contract:

    - ``objective``: ``"rating"`` (validated by RMSE, needs ``predicts_ratings`` and
      ``predict_rating``) or ``"implicit"`` (validated by recall@10 over the catalog);
    - ``fitting``: ``"gradient"``, trained by ``recpipe.training.fit`` with ``prepare`` (set
      data-derived constants, return the rows to fit) and ``compute_loss`` (the loss of one batch),
      or ``"closed_form"``, fit in one pass by ``fit_closed_form(data)``;
    - ``uses_features``: the constructor takes ``features`` (a ``FeatureSpec`` or its dict) and,
      when training, the ``items`` / ``users`` catalogs; the model keeps the spec as ``feature_spec``;
    - ``embeds_new_items``: ``item_vectors_from_features`` places an item known only by its
      features next to ``candidate_vectors()`` (the export's ``similar_items`` signature);
    - ``score_all`` (every model), ``predict_rating`` (rating models), ``query_vectors`` and
      ``candidate_vectors`` (factorized models: ``score_all(u) == query(u) @ candidates^T`` up to a
      per-user constant);
    - save / load: every learned value lives in a tf.Variable of the model, so the weights and the
      build config (``recpipe.models.io.save_model`` / ``load_model``) restore it.

    Constructor: ``cls(cfg, n_users=..., n_items=..., **context)``.
    """

    objective: str
    fitting: str
    predicts_ratings: bool = False
    uses_features: bool = False
    embeds_new_items: bool = False
    feature_spec: FeatureSpec | None = None
    data_passes: int = 1  # closed-form models: passes over the train rows per fit (throughput)
    # closed-form models validated while they fit (mf's gibbs sweeps): set by ``fit_closed_form``, one
    # row per validation (epoch, loss, the validation metric, seconds), the last one the kept model;
    # None: validated once after the fit. A DataFrame, which Keras does not track as model state.
    fit_history: pd.DataFrame | None = None

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Gradient models: set data-derived constants from ``train`` and return the rows to fit
        (``user_idx``, ``item_idx`` and, for rating models, ``rating``)."""
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Gradient models: the loss of one batch of ``prepare``'s rows (a dict of tensors, plus
        ``seed``, an int64 [2] seed for stateless random ops such as sampled negatives)."""
        raise NotImplementedError

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        """Closed-form models: fit on ``data.train`` (tuning on ``data.val`` where configured);
        returns the hyperparameters chosen (JSON-ready)."""
        raise NotImplementedError

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

    def item_vectors_from_features(self, encoded: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """``embeds_new_items`` models: vectors [n, d] of items given only by their encoded features
        (``recpipe.features.ItemEncoder`` output), comparable with ``candidate_vectors()``."""
        raise NotImplementedError(f"{type(self).__name__} cannot place an item from its features")


def _defines(cls: type, method: str) -> bool:
    """Whether ``cls`` (or a base between it and RecModel) overrides ``RecModel.<method>``."""
    return getattr(cls, method) is not getattr(RecModel, method)


def contract_gaps(cls: type) -> list[str]:
    """What ``cls`` lacks of the ``RecModel`` contract (empty when it is complete)."""
    if not (isinstance(cls, type) and issubclass(cls, RecModel)):
        return [f"{cls!r} is not a RecModel subclass"]
    gaps = []
    if getattr(cls, "objective", None) not in OBJECTIVES:
        gaps.append(f"objective (one of {', '.join(OBJECTIVES)})")
    fitting = getattr(cls, "fitting", None)
    needed = ["score_all"]
    if fitting == "gradient":
        needed += ["prepare", "compute_loss"]
    elif fitting == "closed_form":
        needed.append("fit_closed_form")
    else:
        gaps.append(f"fitting (one of {', '.join(FITTINGS)})")
    if cls.predicts_ratings or getattr(cls, "objective", None) == "rating":
        needed.append("predict_rating")
    if cls.embeds_new_items:
        needed += ["item_vectors_from_features", "candidate_vectors"]
        if not cls.uses_features:
            gaps.append("uses_features (embeds_new_items needs item features)")
    gaps += [method for method in needed if not _defines(cls, method)]
    return gaps


_REGISTRY: dict[str, type[RecModel]] = {}


def register(name: str) -> Callable[[type[RecModel]], type[RecModel]]:
    """Class decorator: make a model available as ``model=<name>``, once it fulfils the contract."""

    def deco(cls: type[RecModel]) -> type[RecModel]:
        gaps = contract_gaps(cls)
        if gaps:
            raise TypeError(f"model {name!r} ({cls.__qualname__}) does not implement: {'; '.join(gaps)}")
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[RecModel]:
    """The model class registered as ``name``."""
    if name not in _REGISTRY:
        raise RecpipeError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def build(model_cfg: Any, n_users: int, n_items: int, **context: Any) -> RecModel:
    """Build the model named ``model_cfg.name`` (extra context, e.g. item features, passed on)."""
    return get(model_cfg.name)(model_cfg, n_users=n_users, n_items=n_items, **context)
