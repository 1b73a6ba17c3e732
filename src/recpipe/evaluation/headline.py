"""The headline metrics: the few values shown side by side (``dvc metrics show``, ``dvc exp show``,
MLflow). Everything else the evaluate stage computes goes to ``reports/detail.json``.

Defined once here; the DVC metrics files and the MLflow run use exactly these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from recpipe.evaluation.registry import BEYOND_METRICS, MAIN_METRICS, TABLE_K, ci_keys, metric_key

# The trained model, in reports/metrics.json (rmse/mae only for models that predict ratings): the
# ranking metrics at 10 (precision, recall, ndcg, map, hit_rate, mrr), rmse, mae, the
# beyond-accuracy metrics (coverage, diversity, novelty, popularity) and ndcg_at_10's interval.
HEADLINE_METRICS: tuple[str, ...] = (*MAIN_METRICS, *BEYOND_METRICS, *ci_keys(metric_key("ndcg", TABLE_K)))
# The one metric the promotion gate (recpipe.serving.promotion) compares models by: every model is
# evaluated on ranking, and its per-user values are in reports/per_user.csv.
PROMOTION_METRIC = metric_key("ndcg", TABLE_K)
# Each baseline, in reports/baselines.json as {name: {metric: value}}.
HEADLINE_BASELINE_METRICS: tuple[str, ...] = (metric_key("ndcg", TABLE_K), metric_key("recall", TABLE_K))
# The train stage, in models/train/metrics.json; plus ``best_<validation metric>``.
HEADLINE_TRAIN_METRICS: tuple[str, ...] = ("train_seconds", "best_epoch")
# Labels first in models/train/metrics.json, so that dvc exp show / dvc metrics show start with what
# each row is: config key -> label.
RUN_LABELS: dict[str, str] = {"model": "model.name", "split": "split.name", "data": "data.source"}


def headline(values: Mapping[str, float | None], keys: tuple[str, ...]) -> dict[str, float | None]:
    """The ``keys`` present in ``values``, in the order of ``keys`` (NaN becomes None: JSON null)."""
    return {k: _finite(values[k]) for k in keys if k in values}


def train_headline(summary: Mapping[str, Any]) -> dict[str, float]:
    """Train time, best epoch and best validation value (named ``best_<metric>``, e.g.
    ``best_val_rmse``: rating and ranking validation never share a column) of a train summary."""
    return {**{k: summary[k] for k in HEADLINE_TRAIN_METRICS}, f"best_{summary['metric']}": summary["best_value"]}


def run_labels(cfg: Any) -> dict[str, str]:
    """``RUN_LABELS`` of a config (those it has), e.g.
    ``{"model": "mf", "split": "random", "data": "movielens_builtin"}``."""
    from omegaconf import OmegaConf

    values = {label: OmegaConf.select(cfg, key) for label, key in RUN_LABELS.items()}
    return {label: str(v) for label, v in values.items() if v is not None}


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
