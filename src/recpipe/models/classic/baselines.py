"""Baselines: classic models fit on the train split, scored by the same code as the trained model.

``cfg.evaluate.baselines`` lists conf/model names; ``cfg.evaluate.baseline_models.<name>`` is that
model's config, composed from conf/model/<name>.yaml by conf/config.yaml's defaults list
(``- model@evaluate.baseline_models.<name>: <name>``), so a hyperparameter has one home.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from recpipe.config import plain_dict
from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.base import build
from recpipe.models.classic.base import ClosedFormModel

CLASSIC_MODELS = ("popularity", "random", "item_knn", "user_knn", "ease")


def fit_classic(
    name: str, data: Processed, params: Mapping[str, Any], users: np.ndarray | None = None
) -> tuple[ClosedFormModel, dict[str, Any]]:
    """Classic model ``name`` built with config ``params`` (its conf/model keys) and fit on ``data``,
    for scoring ``users`` (default all: see ``ClosedFormModel.score_users``).

    Returns the model and the hyperparameters it used (e.g. the lambda EASE chose).
    """
    if name not in CLASSIC_MODELS:
        raise RecpipeError(f"{name!r} is not a classic model; available: {', '.join(CLASSIC_MODELS)}")
    model = build(
        OmegaConf.create({**plain_dict(params, f"model {name}"), "name": name}),
        n_users=data.n_users,
        n_items=data.n_items,
    )
    assert isinstance(model, ClosedFormModel)
    model.score_users = users
    return model, model.fit_closed_form(data)


def fit_baselines(
    names: Sequence[str], data: Processed, configs: Mapping[str, Any], users: np.ndarray | None = None
) -> dict[str, tuple[ClosedFormModel, dict[str, Any]]]:
    """Each baseline of ``names`` fit on train with its config ``configs[name]``
    (``evaluate.baseline_models``), for scoring ``users`` (default all): name -> (model,
    hyperparameters used)."""
    fitted = {}
    for name in names:
        if name not in CLASSIC_MODELS:
            raise RecpipeError(
                f"unknown baseline {name!r} in evaluate.baselines; available: {', '.join(sorted(CLASSIC_MODELS))}"
            )
        if name not in configs:
            raise RecpipeError(
                f"evaluate.baselines lists {name!r} but evaluate.baseline_models has no {name!r}; add "
                f"`- model@evaluate.baseline_models.{name}: {name}` to the defaults of conf/config.yaml"
            )
        fitted[name] = fit_classic(name, data, configs[name], users)
    return fitted
