"""Bootstrap intervals over users: per-metric confidence intervals and paired differences.

Users are resampled with replacement and the statistic is the mean over the resampled users
(NaN entries, e.g. a user whose diversity is undefined, are skipped as ``metrics.mean`` does).
Intervals are percentile intervals. The resampled user indices depend only on ``seed`` and the
number of users, so every metric and every system evaluated on the same users is resampled
with the same index draws: differences are paired.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from recpipe.errors import RecpipeError
from recpipe.evaluation.registry import ci_keys, higher_is_better

# Index elements drawn per chunk (rows of resampled users x n_users), int64: 32 MB.
_CHUNK_ELEMENTS = 1 << 22
_EMPTY = "bootstrap over an empty set of users (no test user has a test item?)"


# A user sample (evaluate.max_users) smaller than this is too small for its bootstrap intervals and
# significance tests to mean much: the interval of a mean over n users is a resampling of n values
# (over 1 user it has zero width), and its coverage holds only for n in the hundreds.
MIN_SAMPLE_USERS = 100


def sample_effect(evaluated: int, of: int) -> dict[str, Any]:
    """What evaluating a sample of ``evaluated`` of ``of`` test users does to the intervals: a
    bootstrap interval of a mean narrows as 1 / sqrt(users), so those over the sample are expected to
    be about ``sqrt(of / evaluated)`` times as wide as over every user (``interval_width_vs_all_users``,
    a formula, not a measurement). ``too_few_users``: a sample of fewer than ``MIN_SAMPLE_USERS``."""
    return {
        "evaluated_users": evaluated,
        "test_users": of,
        "share": round(evaluated / of, 6) if of else 1.0,
        "interval_width_vs_all_users": round(float(np.sqrt(of / evaluated)), 4) if evaluated else 1.0,
        "too_few_users": evaluated < min(of, MIN_SAMPLE_USERS),
    }


def _check(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise RecpipeError(f"bootstrap n_resamples must be at least 1, got {n_resamples}")
    if not 0 < level < 1:
        raise RecpipeError(f"bootstrap level must be in (0, 1), got {level}")


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (resample slice, user indices [rows, n]) chunks; the draws depend on seed and n only."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // n)
    starts = range(0, n_resamples, rows)
    for start in tqdm(starts, desc="bootstrap", unit="chunk", leave=False, disable=len(starts) < 4):
        stop = min(start + rows, n_resamples)
        yield slice(start, stop), rng.integers(0, n, size=(stop - start, n))


def resampled_means(values: np.ndarray, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``values`` [m, n_users] over ``n_resamples`` bootstrap samples of users -> [m, n_resamples].

    NaN entries are skipped inside each resample; a resample with no finite entry gives NaN.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    m, n = values.shape
    if n == 0:
        raise RecpipeError(_EMPTY)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    out = np.empty((m, n_resamples))
    for cols, idx in _index_chunks(n, n_resamples, seed):
        for row in range(m):
            total = filled[row][idx].sum(axis=1)
            count = finite[row][idx].sum(axis=1)
            out[row, cols] = np.divide(total, count, out=np.full(len(total), np.nan), where=count > 0)
    return out


def _percentiles(means: np.ndarray, level: float) -> np.ndarray:
    """[..., 2] percentile interval of bootstrap means along the last axis."""
    alpha = (1.0 - level) / 2.0
    return np.moveaxis(np.nanquantile(means, [alpha, 1.0 - alpha], axis=-1), 0, -1)


def _nanmean(values: np.ndarray) -> float:
    if values.size == 0:
        raise RecpipeError(_EMPTY)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise RecpipeError("bootstrap values are all NaN")
    return float(finite.mean())


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of per-user ``values`` and its percentile bootstrap interval."""
    _check(n_resamples, level)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise RecpipeError(f"bootstrap needs one value per user (1-D), got shape {values.shape}")
    mean = _nanmean(values)
    low, high = _percentiles(resampled_means(values, n_resamples, seed)[0], level)
    return mean, float(low), float(high)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, bool]:
    """``(mean_diff, low, high, significant)`` for ``a - b`` resampled over the same users.

    ``a`` and ``b`` are per-user values aligned by user; users where either is NaN are skipped.
    ``significant`` is True when the interval excludes 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise RecpipeError(f"paired bootstrap needs aligned per-user values, got {a.shape} and {b.shape}")
    mean, low, high = bootstrap_ci(a - b, n_resamples, seed, level)
    return mean, low, high, bool(low > 0 or high < 0)


def compare_to_baselines(
    model_name: str,
    model: Mapping[str, np.ndarray],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    metrics: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Intervals for the per-user metrics of the model and the baselines, and paired differences.

    ``model`` and each baseline map metric keys to per-user values over the same users in the
    same order (``RankingEval.per_user``); ``metrics`` restricts which keys are used
    (default: all the model's). For each metric with a better direction the best baseline (by
    mean) is compared with the model. Returns a JSON-ready dict::

        {"level", "n_resamples", "n_users",
         "ci": {system: {metric: [low, high]}},
         "vs_best_baseline": {metric: {"baseline", "diff", "low", "high", "significant"}}}
    """
    _check(n_resamples, level)
    wanted = list(model) if metrics is None else list(metrics)
    systems = {
        name: {m: np.asarray(per[m], dtype=np.float64) for m in wanted if m in per}
        for name, per in {model_name: model, **baselines}.items()
    }
    shapes = {v.shape for per in systems.values() for v in per.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise RecpipeError(f"per-user metrics must be 1-D and aligned over the same users, got shapes {sorted(shapes)}")
    # A metric undefined for every user (diversity without genres or vectors) gets no interval.
    systems = {name: {m: v for m, v in per.items() if np.isfinite(v).any()} for name, per in systems.items()}
    rows = [(s, m) for s, per in systems.items() for m in per]
    if not rows:
        raise RecpipeError(f"no per-user metric with a finite value among {wanted}")
    stacked = [systems[s][m] for s, m in rows]
    best: dict[str, str] = {}
    for metric, values in systems[model_name].items():
        direction = higher_is_better(metric)
        if direction is None:
            continue
        means = {b: _nanmean(systems[b][metric]) for b in baselines if metric in systems[b]}
        if not means:
            continue
        best[metric] = (max if direction else min)(means, key=means.__getitem__)
        stacked.append(values - systems[best[metric]][metric])
    bounds = _percentiles(resampled_means(np.stack(stacked), n_resamples, seed), level)
    ci: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    for (s, m), (low, high) in zip(rows, bounds):
        ci[s][m] = [float(low), float(high)]
    vs_best = {}
    for (metric, baseline), diff, (low, high) in zip(best.items(), stacked[len(rows) :], bounds[len(rows) :]):
        vs_best[metric] = {
            "baseline": baseline,
            "diff": _nanmean(diff),
            "low": float(low),
            "high": float(high),
            "significant": bool(low > 0 or high < 0),
        }
    return {
        "level": level,
        "n_resamples": n_resamples,
        "n_users": int(stacked[0].shape[0]),
        "ci": ci,
        "vs_best_baseline": vs_best,
    }


def ci_metrics(intervals: Mapping[str, Any], system: str) -> dict[str, float]:
    """One system's intervals as flat MLflow metrics ``<metric>_ci_low`` / ``<metric>_ci_high``."""
    out = {}
    for metric, (low, high) in intervals["ci"].get(system, {}).items():
        low_key, high_key = ci_keys(metric)
        out[low_key], out[high_key] = low, high
    return out
