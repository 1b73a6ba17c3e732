"""The metric registry: every metric the evaluate stage reports, its direction, and how its keys are
spelled (the contract of reports/*.json and of the MLflow metrics, see docs/contracts.md).

A key is ``<metric>`` (rmse, mae) or ``<metric>_at_<K>`` (``metric_key``, parsed back by
``split_at_k``), optionally for a user segment (``light_users.<key>``, ``segment_key``) or over
the cold items (``cold_<key>``, ``cold_key``); a baseline's value in the MLflow run is
``baseline.<name>.<key>`` (``baseline_key``) and a bootstrap interval ``<key>_ci_low`` /
``<key>_ci_high`` (``ci_keys``). The functions computing the metrics are in ``metrics``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A reported metric: ``name``; ``higher_is_better`` (None: no better direction, the
    beyond-accuracy metrics describe lists rather than score them); ``at_k``: keyed
    ``<name>_at_<K>`` (a cut-off of the top-K lists) or plain ``<name>``."""

    name: str
    higher_is_better: bool | None
    at_k: bool


RANKING_METRICS = ("precision", "recall", "ndcg", "map", "hit_rate", "mrr")  # at each of evaluate.ks
BEYOND_ACCURACY_METRICS = ("coverage", "diversity", "novelty", "popularity")  # at BEYOND_ACCURACY_K
PER_USER_BEYOND_ACCURACY = ("novelty", "popularity", "diversity")  # one value per user (not coverage)
RATING_METRICS = ("rmse", "mae")  # rating models on rated test data
BEYOND_ACCURACY_K = 10
TABLE_K = 10  # the cut-off of the report's tables and of the headline metrics

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        *(Metric(name, True, at_k=True) for name in RANKING_METRICS),
        *(Metric(name, None, at_k=True) for name in BEYOND_ACCURACY_METRICS),
        *(Metric(name, False, at_k=False) for name in RATING_METRICS),
    )
}

SEGMENTS = ("light_users", "heavy_users")
COLD_PREFIX = "cold_"
BASELINE_PREFIX = "baseline."

_AT_K = re.compile(r"(?P<metric>.+)_at_(?P<k>\d+)")


def metric_key(name: str, k: int) -> str:
    """Contract spelling of a cut-off metric: ``metric_key("ndcg", 10) == "ndcg_at_10"``."""
    return f"{name}_at_{k}"


def split_at_k(key: str) -> tuple[str, int] | None:
    """``("ndcg", 10)`` for ``ndcg_at_10``; None for a key not spelled ``<metric>_at_<K>``."""
    m = _AT_K.fullmatch(key)
    return None if m is None else (m["metric"], int(m["k"]))


def segment_key(segment: str, key: str) -> str:
    """``light_users.ndcg_at_10``: ``key`` over the users of ``segment`` (one of ``SEGMENTS``)."""
    return f"{segment}.{key}"


def cold_key(key: str) -> str:
    """``cold_ndcg_at_10``: ``key`` over the cold items alone (``recpipe.evaluation.cold``)."""
    return COLD_PREFIX + key


def ci_keys(key: str) -> tuple[str, str]:
    """``(<key>_ci_low, <key>_ci_high)``: the bounds of ``key``'s bootstrap interval."""
    return f"{key}_ci_low", f"{key}_ci_high"


def baseline_key(name: str, key: str) -> str:
    """``baseline.<name>.<key>``: a baseline's metric (or hyperparameter) in the MLflow run."""
    return f"{BASELINE_PREFIX}{name}.{key}"


def split_baseline_key(key: str) -> tuple[str, str] | None:
    """``(name, key)`` of a ``baseline_key``; None for any other key."""
    if not key.startswith(BASELINE_PREFIX):
        return None
    name, _, rest = key.removeprefix(BASELINE_PREFIX).rpartition(".")
    return name, rest


def base_metric(key: str) -> str:
    """The metric key behind a segment or cold-item key: ``light_users.ndcg_at_10`` and
    ``cold_ndcg_at_10`` -> ``ndcg_at_10``."""
    return key.rpartition(".")[2].removeprefix(COLD_PREFIX)


def higher_is_better(key: str) -> bool | None:
    """True for ranking metrics, False for rating errors, None when there is no better direction
    or the key is no registered metric (segment and cold-item keys: that of ``base_metric``)."""
    key = base_metric(key)
    at_k = split_at_k(key)
    metric = METRICS.get(at_k[0] if at_k else key)
    if metric is None or metric.at_k != (at_k is not None):
        return None
    return metric.higher_is_better


MAIN_METRICS = (*(metric_key(m, TABLE_K) for m in RANKING_METRICS), *RATING_METRICS)
BEYOND_METRICS = tuple(metric_key(m, BEYOND_ACCURACY_K) for m in BEYOND_ACCURACY_METRICS)
