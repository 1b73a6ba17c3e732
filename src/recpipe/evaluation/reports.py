"""The reports directory: everything the evaluate stage writes under reports/, and what it logs to MLflow.

metrics.json and baselines.json (the headline metrics, ``recpipe.evaluation.headline``), detail.json
(every metric of every system), intervals.json (bootstrap), evaluation.json (users, segments, cold
items, baseline hyperparameters), evaluation.md (``render.render_markdown``) and plots/.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recpipe import tracking
from recpipe.evaluation.bootstrap import ci_metrics
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS, headline
from recpipe.evaluation.ranking import RankingEval
from recpipe.evaluation.registry import (
    BEYOND_METRICS,
    MAIN_METRICS,
    RANKING_METRICS,
    baseline_key,
    ci_keys,
    split_at_k,
)
from recpipe.evaluation.render import plot_metric_vs_k, plot_popularity, render_markdown
from recpipe.io import atomic_dir, write_json

# metric-vs-K lines of reports/plots/metrics_at_k.csv (dvc plots: one line per system)
PLOT_METRICS = ("ndcg", "recall")


def metrics_at_k_table(
    systems: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = PLOT_METRICS
) -> pd.DataFrame:
    """Long table (metric, system, k, value) of each system's ``<metric>_at_<k>`` for ``metrics``
    (overall values only: segment and cold keys are in detail.json), for ``dvc plots``."""
    rows = [
        {"metric": at_k[0], "system": name, "k": at_k[1], "value": value}
        for name, values in systems.items()
        for key, value in values.items()
        if (at_k := split_at_k(key)) and at_k[0] in metrics
    ]
    table = pd.DataFrame(rows, columns=["metric", "system", "k", "value"])
    return table.sort_values(["metric", "system", "k"], ignore_index=True)


def format_table(
    systems: Mapping[str, Mapping[str, float]], rows: Sequence[str] = (*MAIN_METRICS, *BEYOND_METRICS)
) -> str:
    """A plain-text table: one row per metric (those any system has), one column per system."""
    names = list(systems)
    rows = [r for r in rows if any(r in v for v in systems.values())]
    width = max(map(len, rows), default=0)
    cols = [max(len(n), 9) for n in names]
    lines = [" " * width + "".join(f"  {n:>{c}}" for n, c in zip(names, cols))]
    for r in rows:
        cells = []
        for n, c in zip(names, cols):
            v = systems[n].get(r, float("nan"))
            cells.append(f"  {'-':>{c}}" if math.isnan(v) else f"  {v:>{c}.4f}")
        lines.append(f"{r:<{width}}" + "".join(cells))
    return "\n".join(lines)


def _json_ready(values: Mapping[str, float]) -> dict[str, float | None]:
    """NaN (an undefined metric, e.g. diversity without genres) becomes JSON null."""
    return {k: None if math.isnan(v) else float(v) for k, v in sorted(values.items())}


@dataclass(frozen=True)
class Report:
    """Everything the reports directory holds for one evaluation.

    ``summary`` is evaluation.json (users, segments, cold items, baseline hyperparameters);
    ``intervals`` is ``bootstrap.compare_to_baselines`` output; ``recommended`` maps each system
    to the train popularity of every item in its top-10 lists (``report.recommended_popularity``);
    ``per_user`` is per_user.csv (``per_user_table``). ``costs``: wall seconds per system and step
    (``fit_s`` for baselines, ``evaluate_s``), logged to MLflow only: a timing in reports/ would make
    reruns differ.
    """

    model_name: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    intervals: dict[str, Any]
    summary: dict[str, Any]
    recommended: dict[str, np.ndarray]
    item_popularity: np.ndarray
    per_user: pd.DataFrame | None = None
    costs: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def systems(self) -> dict[str, dict[str, float]]:
        return {self.model_name: self.metrics, **self.baselines}


def write_reports(dest: Path, report: Report) -> None:
    """Write the reports directory ``dest`` as a whole (atomically).

    metrics.json and baselines.json hold the headline metrics only (``recpipe.evaluation.headline``;
    what ``dvc metrics show`` / ``dvc exp show`` display); detail.json holds every metric of every
    system (``detail``). Also intervals.json, evaluation.json, evaluation.md and plots/
    (metrics_at_k.csv for ``dvc plots``, metric_vs_k.png with a panel per ranking metric, popularity.png)
    and per_user.csv (the model's per-test-user values, for paired comparisons with other models).
    """
    everything = detail(report)
    with atomic_dir(dest) as tmp:
        # headline files keep the order of the headline lists: the column order of dvc metrics/exp show
        write_json(tmp / "metrics.json", headline(everything["model"], HEADLINE_METRICS), sort_keys=False)
        write_json(
            tmp / "baselines.json",
            {b: headline(v, HEADLINE_BASELINE_METRICS) for b, v in everything["baselines"].items()},
            sort_keys=False,
        )
        write_json(tmp / tracking.DETAIL_FILE, everything)
        write_json(tmp / "intervals.json", report.intervals)
        write_json(tmp / "evaluation.json", report.summary)
        if report.per_user is not None:
            report.per_user.to_csv(tmp / tracking.PER_USER_FILE, index=False)
        markdown = render_markdown(
            report.model_name,
            _json_ready(report.metrics),
            {b: _json_ready(v) for b, v in report.baselines.items()},
            report.intervals,
            report.summary,
        )
        (tmp / "evaluation.md").write_text(markdown + "\n", encoding="utf-8")
        plots = tmp / "plots"
        plots.mkdir()
        at_k = metrics_at_k_table(report.systems, RANKING_METRICS)
        at_k[at_k["metric"].isin(PLOT_METRICS)].to_csv(plots / "metrics_at_k.csv", index=False)
        if len(at_k):
            plot_metric_vs_k(report.systems, RANKING_METRICS, plots / "metric_vs_k.png")
        if any(len(v) for v in report.recommended.values()):
            plot_popularity(report.recommended, plots / "popularity.png", report.item_popularity)


def per_user_table(result: RankingEval, user_ids: pd.Series, metrics: Sequence[str]) -> pd.DataFrame:
    """reports/per_user.csv: ``user_id`` and the model's value of each of ``metrics`` (those it has)
    for every evaluated test user (the sample, with evaluate.max_users), in user index order (NaN: undefined)."""
    wanted = [m for m in dict.fromkeys(metrics) if m in result.per_user]
    return pd.DataFrame(
        {
            "user_id": user_ids.astype(str).to_numpy(dtype=object)[result.users],
            **{m: result.per_user[m] for m in wanted},
        }
    )


def detail(report: Report) -> dict[str, Any]:
    """reports/detail.json: every metric of the model and of each baseline (``{"model": {...},
    "baselines": {name: {...}}}``), with intervals as ``<metric>_ci_low`` / ``_ci_high`` and the
    model's difference to the best baseline as ``<metric>_vs_best_baseline`` (+ ``_ci_low`` /
    ``_ci_high``); undefined values are null."""
    model = dict(report.metrics) | ci_metrics(report.intervals, report.model_name)
    for metric, c in report.intervals.get("vs_best_baseline", {}).items():
        model[f"{metric}_vs_best_baseline"] = c["diff"]
        low, high = ci_keys(f"{metric}_vs_best_baseline")
        model[low], model[high] = c["low"], c["high"]
    return {
        "model": _json_ready(model),
        "baselines": {b: _json_ready(dict(v) | ci_metrics(report.intervals, b)) for b, v in report.baselines.items()},
    }


def mlflow_metrics(report: Report, seconds: float) -> dict[str, float]:
    """The MLflow metrics of ``report``: the headline set (``tracking.headline_metrics``, the
    same numbers a run backfilled from reports/detail.json holds), the stage's time and each
    system's costs as ``cost.<system>.<step>_s``."""
    costs = {f"cost.{name}.{step}": value for name, steps in report.costs.items() for step, value in steps.items()}
    return tracking.headline_metrics(detail(report)) | {"time_evaluate_s": seconds} | costs


def log_to_mlflow(report: Report, reports: Path, seconds: float) -> None:
    """Metrics (``mlflow_metrics``), the baselines' scalar hyperparameters as ``baseline.<name>.<param>``
    params, and the reports directory (with the full detail.json) as artifacts."""
    import mlflow

    if mlflow.active_run() is None:
        return
    tracking.log_metrics(mlflow_metrics(report, seconds))
    mlflow.log_params(
        {
            baseline_key(name, key): value
            for name, used in report.summary["baseline_params"].items()
            for key, value in used.items()
            if isinstance(value, (int, float, str))
        }
    )
    mlflow.log_artifacts(str(reports), artifact_path="reports")
