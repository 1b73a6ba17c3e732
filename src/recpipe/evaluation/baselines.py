"""Baselines: the classic models (``recpipe.models.classic``) fit on the train split and scored by
the same code as the trained model.

``cfg.evaluate.baselines`` lists the names (popularity, random, item_knn, user_knn, ease);
``cfg.evaluate.baseline_params.<name>`` holds each one's hyperparameters, the same keys as
``conf/model/<name>.yaml`` (random takes the pipeline ``seed``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.classic import CLASSIC_MODELS, ClosedFormModel, fit_classic


def available() -> list[str]:
    return sorted(CLASSIC_MODELS)


def build(
    name: str, data: Processed, seed: int, params: Mapping[str, Any] | None = None
) -> tuple[ClosedFormModel, dict[str, Any]]:
    """Baseline ``name`` fit on ``data``'s train split, and the hyperparameters it used."""
    if name not in CLASSIC_MODELS:
        raise RecpipeError(f"unknown baseline {name!r} in evaluate.baselines; available: {', '.join(available())}")
    return fit_classic(name, data, {"seed": seed, **(params or {})})
