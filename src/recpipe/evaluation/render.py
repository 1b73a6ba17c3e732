"""The evaluation report: a Markdown table of the model against its baselines, and PNG plots.

Plots use matplotlib's object API (``Figure`` renders with the Agg canvas), so no pyplot state or
display is involved. Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
from matplotlib.figure import Figure

from recpipe.errors import RecpipeError
from recpipe.evaluation.bootstrap import MIN_SAMPLE_USERS
from recpipe.evaluation.registry import (
    BEYOND_ACCURACY_K,
    BEYOND_METRICS,
    MAIN_METRICS,
    RANKING_METRICS,
    TABLE_K,
    cold_key,
    higher_is_better,
    metric_key,
    segment_key,
    split_at_k,
)
from recpipe.io import atomic_file


def _fmt(value: float, sign: bool = False) -> str:
    """Four decimals for values below 10 (two above); '—' for NaN."""
    if math.isnan(value):
        return "—"
    decimals = 4 if abs(value) < 10 else 2
    return f"{value:{'+' if sign else ''}.{decimals}f}"


def _best(metric: str, systems: Mapping[str, Mapping[str, float]]) -> set[str]:
    """Names of the systems with the best value of ``metric`` (empty without a better direction)."""
    direction = higher_is_better(metric)
    values = {s: v[metric] for s, v in systems.items() if metric in v and not math.isnan(v[metric])}
    if direction is None or not values:
        return set()
    target = (max if direction else min)(values.values())
    return {s for s, v in values.items() if v == target}


def _cell(metric: str, system: str, systems: Mapping[str, Mapping[str, float]], ci: Mapping, bold: bool) -> str:
    value = systems[system].get(metric, float("nan"))
    text = _fmt(value)
    if bold:
        text = f"**{text}**"
    bounds = ci.get(system, {}).get(metric)
    if bounds is not None and not math.isnan(value):
        text += f" [{_fmt(bounds[0])}, {_fmt(bounds[1])}]"
    return text


def _comparison(
    metric: str, model_name: str, systems: Mapping[str, Mapping[str, float]], vs_best: Mapping
) -> tuple[str, str]:
    """(difference to the best baseline, significance) cells for one metric row."""
    direction = higher_is_better(metric)
    if metric in vs_best:
        c = vs_best[metric]
        diff = f"{_fmt(c['diff'], True)} [{_fmt(c['low'], True)}, {_fmt(c['high'], True)}] vs {c['baseline']}"
        if not c["significant"]:
            return diff, "no"
        better = (c["diff"] > 0) == bool(direction)
        return diff, f"**yes** ({'better' if better else 'worse'})"
    baselines = {s: v for s, v in systems.items() if s != model_name}
    best = sorted(_best(metric, baselines))
    if not best or metric not in systems[model_name]:
        return "—", "—"
    d = systems[model_name][metric] - baselines[best[0]][metric]
    return f"{_fmt(d, True)} vs {best[0]}", "— (no per-user values)"


def _table(
    rows: list[str],
    model_name: str,
    systems: Mapping[str, Mapping[str, float]],
    intervals: Mapping[str, Any],
    compare: bool,
) -> list[str]:
    names = list(systems)
    header = ["metric", *(f"{n} (model)" if n == model_name else n for n in names)]
    if compare:
        header += ["Δ vs best baseline", "significant"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ci = intervals.get("ci", {})
    for metric in rows:
        best = _best(metric, systems)
        cells = [metric, *(_cell(metric, s, systems, ci, s in best) for s in names)]
        if compare:
            cells += _comparison(metric, model_name, systems, intervals.get("vs_best_baseline", {}))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(
    model_name: str,
    metrics: Mapping[str, float | None],
    baselines: Mapping[str, Mapping[str, float | None]],
    intervals: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
) -> str:
    """Markdown report of ``model_name`` vs ``baselines`` at K=10 (and rmse/mae when present).

    ``metrics`` / ``baselines`` are metrics.json / baselines.json (null = undefined); ``intervals``
    is ``bootstrap.compare_to_baselines(...)`` output (``{}`` renders the means alone). Sections on
    user segments (``<segment>.<metric>`` keys), cold items (``cold_<metric>`` keys) and the
    baselines' hyperparameters come from ``summary`` (evaluation.json) when given.
    """
    systems = {
        name: {k: math.nan if v is None else float(v) for k, v in values.items()}
        for name, values in {model_name: metrics, **baselines}.items()
    }
    main = [m for m in MAIN_METRICS if m in metrics]
    beyond = [m for m in BEYOND_METRICS if m in metrics]
    out = [f"# Evaluation report: {model_name}", ""]
    if intervals.get("ci"):
        out.append(
            f"Means over {intervals['n_users']} test users; brackets: {intervals['level']:.0%} percentile "
            f"bootstrap intervals ({intervals['n_resamples']} resamples of users). "
            "Δ vs best baseline: model minus the best baseline on that metric, with a paired "
            "bootstrap interval; significant when that interval excludes 0."
        )
    else:
        out.append("Means over the test users (no bootstrap intervals were computed).")
    out += ["Best value per row in bold.", ""]
    if main:
        out += ["## Accuracy", "", *_table(main, model_name, systems, intervals, compare=True), ""]
    if beyond:
        out += [
            f"## Beyond accuracy (top {BEYOND_ACCURACY_K})",
            "",
            *_table(beyond, model_name, systems, intervals, compare=False),
            "",
        ]
    if summary:
        out += _summary_sections(model_name, systems, summary)
    return "\n".join(out)


def sample_note(sample: Mapping[str, Any]) -> str:
    """The report's paragraph on a user sample (``bootstrap.sample_effect``), with a warning when it is too small."""
    note = (
        f"Evaluated on a seeded sample of {sample['evaluated_users']} of the {sample['test_users']} test users "
        "(evaluate.max_users): the means and intervals are over the sample. A bootstrap interval narrows as "
        "1/sqrt(users), so these are expected to be about "
        f"{sample['interval_width_vs_all_users']:.2f}x as wide as over all test users (the square root of "
        "test users / evaluated users; expected, not measured)."
    )
    if sample.get("too_few_users"):
        note += (
            f" **Warning:** fewer than {MIN_SAMPLE_USERS} evaluated users: the intervals and significance "
            "tests say little (over 1 user an interval has zero width); raise evaluate.max_users."
        )
    return note


def _summary_sections(
    model_name: str, systems: Mapping[str, Mapping[str, float]], summary: Mapping[str, Any]
) -> list[str]:
    """The segment, cold-item and baseline-hyperparameter sections of ``render_markdown``."""
    model = systems[model_name]
    out: list[str] = []
    sample = summary.get("user_sample", {})
    if sample.get("evaluated_users", 0) < sample.get("test_users", 0):
        out += ["## Sampled users", "", sample_note(sample), ""]
    segments = summary.get("segments", {})
    rows = [segment_key(seg, m) for seg in segments for m in (*MAIN_METRICS, *BEYOND_METRICS)]
    rows = [r for r in rows if r in model]
    if rows:
        described = "; ".join(
            f"{seg}: {info['users']} users with {info['train_interactions']} train interactions"
            for seg, info in segments.items()
        )
        out += ["## By user segment", "", f"{described}.", "", *_table(rows, model_name, systems, {}, False), ""]
    cold = summary.get("cold_items", {})
    rows = [r for r in (cold_key(metric_key(m, TABLE_K)) for m in RANKING_METRICS) if r in model]
    if rows:
        out += [
            "## Cold items",
            "",
            f"{cold.get('items')} test items have no train or val interaction; the {cold.get('users')} "
            "users with one of them in test rank the cold items only.",
            "",
            *_table(rows, model_name, systems, {}, False),
            "",
        ]
    params = summary.get("baseline_params", {})
    if params:
        out += ["## Baseline hyperparameters", ""]
        out += [f"- {name}: {_params_text(used)}" for name, used in params.items()]
        out.append("")
    return out


def _params_text(params: Mapping[str, Any]) -> str:
    """``k=100; shrink=0``; a list of (value, score) pairs (EASE's validation ndcg per lambda) as
    ``key: a → score, ...``."""
    if not params:
        return "none"
    parts = []
    for key, value in params.items():
        if isinstance(value, list):
            parts.append(f"{key}: " + ", ".join(f"{a:g} → {_fmt(float(v))}" for a, v in value))
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return "; ".join(parts)


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_metric_vs_k(
    all_metrics: Mapping[str, Mapping[str, float]], metrics: str | Sequence[str], path: str | os.PathLike
) -> None:
    """``<metric>_at_K`` against K for every system (model and baselines), one panel per metric
    (those any system has), to one PNG."""
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for metric in wanted:
        for name, values in all_metrics.items():
            ks = sorted(at_k[1] for key in values if (at_k := split_at_k(key)) and at_k[0] == metric)
            if ks:
                series.setdefault(metric, {})[name] = (ks, [values[metric_key(metric, k)] for k in ks])
    if not series:
        raise RecpipeError(
            f"no {' / '.join(f'{m}_at_K' for m in wanted)} values to plot (systems: {', '.join(all_metrics)})"
        )
    cols = min(3, len(series))
    rows = -(-len(series) // cols)
    fig = Figure(figsize=(4.2 * cols + 1.6, 3.4 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    colors = {name: f"C{i % 10}" for i, name in enumerate(all_metrics)}  # one colour per system everywhere
    for ax, (metric, lines) in zip(axes, series.items()):
        for name, (ks, ys) in lines.items():
            ax.plot(ks, ys, marker="o", markersize=4, label=name, color=colors[name])
        ticks = sorted({k for ks, _ in lines.values() for k in ks})
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(k) for k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("K (list length)")
        ax.set_title(f"{metric}@K")
        ax.grid(alpha=0.3)
    for ax in axes[len(series) :]:
        ax.set_visible(False)
    legend = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(legend.values()), list(legend), loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.suptitle("Ranking metrics at K on the test users")
    fig.tight_layout()
    _save(fig, path)


def recommended_popularity(
    topk_items: np.ndarray, item_popularity: np.ndarray, k: int = BEYOND_ACCURACY_K
) -> np.ndarray:
    """Train popularity of every item in the top ``k`` lists (empty slots, item -1, left out)."""
    top = np.asarray(topk_items)[:, :k]
    return np.asarray(item_popularity)[top[top >= 0]]


def plot_popularity(
    rec_popularity: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    catalog: np.ndarray | None = None,
) -> None:
    """Histogram (log bins) of the popularity of recommended items per system, vs the catalog's.

    ``rec_popularity`` maps a system to the popularity of each item it recommended
    (``recommended_popularity``); ``catalog`` is every item's train popularity.
    """
    series = {n: np.asarray(v, dtype=np.float64) for n, v in rec_popularity.items() if len(v)}
    if not series:
        raise RecpipeError("no recommended items to plot")
    everything = np.concatenate([*series.values(), *([] if catalog is None else [catalog])])
    # Log-spaced integer edges: popularity is a count, so every bin holds at least one value.
    edges = np.unique(np.floor(np.logspace(0, np.log10(everything.max() + 2), 31)))
    bins = cast(Sequence[float], edges)  # hist takes an array; matplotlib's stub only names sequences
    fig = Figure(figsize=(7.2, 4.2))
    ax = fig.subplots()
    if catalog is not None:
        catalog = np.asarray(catalog, dtype=np.float64)
        ax.hist(
            catalog + 1,
            bins,
            weights=np.full(len(catalog), 1 / len(catalog)),
            color="0.82",
            label=f"catalog ({len(catalog)} items, median {np.median(catalog):g})",
        )
    for name, pop in series.items():
        ax.hist(
            pop + 1,
            bins,
            weights=np.full(len(pop), 1 / len(pop)),
            histtype="step",
            linewidth=2,
            label=f"{name} (median {np.median(pop):g})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("item popularity: train interactions + 1 (log scale)")
    ax.set_ylabel("share of items")
    ax.set_title("Popularity of recommended items vs the catalog")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _save(fig, path)
