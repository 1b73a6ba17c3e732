"""Metrics per user segment: light users (few train interactions) vs heavy users.

A segment's metric is the mean of the per-user values over the segment's evaluated users, and its
coverage is that of the segment's top-10 lists. Keys are ``<segment>.<metric>``, e.g.
``light_users.ndcg_at_10``, next to the overall ``ndcg_at_10`` in metrics.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from recpipe.evaluation import metrics
from recpipe.evaluation.ranking import RankingEval
from recpipe.evaluation.registry import BEYOND_ACCURACY_K, SEGMENTS, metric_key, segment_key

LIGHT, HEAVY = SEGMENTS


def user_segments(train_counts: np.ndarray, light_below: int) -> dict[str, np.ndarray]:
    """bool masks over user indices: ``light_users`` have fewer than ``light_below`` train
    interactions (``train_counts`` [n_users]), ``heavy_users`` the rest."""
    light = np.asarray(train_counts) < light_below
    return {LIGHT: light, HEAVY: ~light}


def describe_segments(
    segments: Mapping[str, np.ndarray], users: np.ndarray, light_below: int
) -> dict[str, dict[str, Any]]:
    """For evaluation.json: each segment's rule and its number of evaluated ``users``."""
    rules = {LIGHT: f"< {light_below}", HEAVY: f">= {light_below}"}
    return {
        name: {"train_interactions": rules[name], "users": int(np.asarray(mask)[users].sum())}
        for name, mask in segments.items()
    }


def segment_metrics(result: RankingEval, segments: Mapping[str, np.ndarray], n_items: int) -> dict[str, float]:
    """``<segment>.<metric>`` for every per-user metric of ``result`` and coverage_at_10.

    ``segments`` maps a name to a bool mask over all user indices. A segment with no evaluated
    user gets NaN.
    """
    k = BEYOND_ACCURACY_K
    out: dict[str, float] = {}
    for name, mask in segments.items():
        member = np.asarray(mask)[result.users]
        values = metrics.mean({m: v[member] for m, v in result.per_user.items()})
        values[metric_key("coverage", k)] = (
            metrics.coverage(result.topk[member, :k], n_items) if member.any() else float("nan")
        )
        out.update({segment_key(name, m): v for m, v in values.items()})
    return out
