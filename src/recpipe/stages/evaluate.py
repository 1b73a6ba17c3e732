"""``recpipe evaluate``: the trained model and the baselines on the test split, over the full catalog.

Every system (the model, then each of ``evaluate.baselines``) is scored by the same code: ranking
metrics at each K, beyond-accuracy metrics at 10, rmse/mae for rating models, all of them also per
user segment (``light_users.<metric>`` / ``heavy_users.<metric>``) and, when test has cold items,
``cold_<metric>``. Paired bootstrap intervals over users compare the model with the best baseline.

Writes the reports directory as a whole (see ``write_reports``) and logs it to the active MLflow run.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from recpipe import tracking
from recpipe.data.processed import Processed, load_processed
from recpipe.evaluation import metrics as M
from recpipe.evaluation.bootstrap import ci_metrics, compare_to_baselines, sample_effect
from recpipe.evaluation.cold import cold_items_of, cold_metrics, cold_users
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS, headline
from recpipe.evaluation.ranking import EvalSet, RankingEval, ScoreFn, evaluate_ranking, users_with_truth
from recpipe.evaluation.report import (
    plot_metric_vs_k,
    plot_popularity,
    recommended_popularity,
    render_markdown,
)
from recpipe.evaluation.segments import describe_segments, segment_key, segment_metrics, user_segments
from recpipe.io import atomic_dir, write_json
from recpipe.models.base import RecModel
from recpipe.models.classic import fit_baselines
from recpipe.paths import Paths

log = logging.getLogger(__name__)

TABLE_METRICS = (
    "ndcg_at_10",
    "recall_at_10",
    "precision_at_10",
    "map_at_10",
    "mrr_at_10",
    "hit_rate_at_10",
    "coverage_at_10",
    "novelty_at_10",
    "diversity_at_10",
    "popularity_at_10",
    "rmse",
    "mae",
)
_AT_K = re.compile(r"(?P<metric>.+)_at_(?P<k>\d+)")
# metric-vs-K lines of reports/plots/metrics_at_k.csv (dvc plots: one line per system)
PLOT_METRICS = ("ndcg", "recall")


def model_scorer(model: RecModel) -> ScoreFn:
    """The model's ``score_all`` as a ranking scorer over int32 user indices."""
    return lambda users: model.score_all(tf.constant(users, tf.int32))


def rating_metrics(
    model: RecModel, frame: pd.DataFrame, rating_scale: Sequence[float] | None, batch_size: int = 65536
) -> dict[str, float]:
    """rmse and mae of the model's predicted ratings (clipped to ``rating_scale``) on ``frame``."""
    users = frame["user_idx"].to_numpy(np.int32)
    items = frame["item_idx"].to_numpy(np.int32)
    pred = np.concatenate(
        [
            np.asarray(
                model.predict_rating(tf.constant(users[s : s + batch_size]), tf.constant(items[s : s + batch_size]))
            )
            for s in range(0, len(users), batch_size)
        ]
    )
    actual = frame["rating"].to_numpy(np.float64)
    return {"rmse": M.rmse(pred, actual, rating_scale), "mae": M.mae(pred, actual, rating_scale)}


def evaluate_model(
    model: RecModel,
    data: Processed,
    evalset: EvalSet,
    ks: Sequence[int],
    batch_size: int,
    rating_scale: Sequence[float] | None,
    segments: Mapping[str, np.ndarray] | None = None,
    cold: np.ndarray | None = None,
) -> RankingEval:
    """All test metrics of ``model``: ranking and beyond-accuracy, rmse/mae for rating models on
    rated data, per user segment (``segments``: name -> bool mask over user indices) and over the
    ``cold`` items (``recpipe.evaluation.cold``)."""
    vectors = model.candidate_vectors()
    score = model_scorer(model)
    result = evaluate_ranking(score, evalset, ks, batch_size, None if vectors is None else np.asarray(vectors))
    rated = model.predicts_ratings and len(data.test) and data.test["rating"].notna().all()
    if rated:
        result.metrics.update(rating_metrics(model, data.test, rating_scale))
    for name, mask in (segments or {}).items():
        result.metrics.update(segment_metrics(result, {name: mask}, data.n_items))
        rows = data.test[np.asarray(mask)[data.test["user_idx"].to_numpy()]]
        if rated and len(rows):
            result.metrics.update(
                {segment_key(name, k): v for k, v in rating_metrics(model, rows, rating_scale).items()}
            )
    if cold is not None and len(cold):
        result.metrics.update(cold_metrics(score, evalset.truth, cold, ks, batch_size))
    return result


def metrics_at_k_table(
    systems: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = PLOT_METRICS
) -> pd.DataFrame:
    """Long table (metric, system, k, value) of each system's ``<metric>_at_<k>`` for ``metrics``
    (overall values only: segment and cold keys are in detail.json), for ``dvc plots``."""
    rows = [
        {"metric": m["metric"], "system": name, "k": int(m["k"]), "value": value}
        for name, values in systems.items()
        for key, value in values.items()
        if (m := _AT_K.fullmatch(key)) and m["metric"] in metrics
    ]
    table = pd.DataFrame(rows, columns=["metric", "system", "k", "value"])
    return table.sort_values(["metric", "system", "k"], ignore_index=True)


def format_table(systems: Mapping[str, Mapping[str, float]], rows: Sequence[str] = TABLE_METRICS) -> str:
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
    to the train popularity of every item in its top-10 lists (``report.recommended_popularity``).
    """

    model_name: str
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    intervals: dict[str, Any]
    summary: dict[str, Any]
    recommended: dict[str, np.ndarray]
    item_popularity: np.ndarray

    @property
    def systems(self) -> dict[str, dict[str, float]]:
        return {self.model_name: self.metrics, **self.baselines}


def write_reports(dest: Path, report: Report) -> None:
    """Write the reports directory ``dest`` as a whole (atomically).

    metrics.json and baselines.json hold the headline metrics only (``recpipe.evaluation.headline``;
    what ``dvc metrics show`` / ``dvc exp show`` display); detail.json holds every metric of every
    system (``detail``). Also intervals.json, evaluation.json, evaluation.md and plots/
    (metrics_at_k.csv for ``dvc plots``, metric_vs_k.png with a panel per ranking metric, popularity.png).
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
        at_k = metrics_at_k_table(report.systems, M.RANKING_METRICS)
        at_k[at_k["metric"].isin(PLOT_METRICS)].to_csv(plots / "metrics_at_k.csv", index=False)
        if len(at_k):
            plot_metric_vs_k(report.systems, M.RANKING_METRICS, plots / "metric_vs_k.png")
        if any(len(v) for v in report.recommended.values()):
            plot_popularity(report.recommended, plots / "popularity.png", report.item_popularity)


def detail(report: Report) -> dict[str, Any]:
    """reports/detail.json: every metric of the model and of each baseline (``{"model": {...},
    "baselines": {name: {...}}}``), with intervals as ``<metric>_ci_low`` / ``_ci_high`` and the
    model's difference to the best baseline as ``<metric>_vs_best_baseline`` (+ ``_ci_low`` /
    ``_ci_high``); undefined values are null."""
    model = dict(report.metrics) | ci_metrics(report.intervals, report.model_name)
    for metric, c in report.intervals.get("vs_best_baseline", {}).items():
        model[f"{metric}_vs_best_baseline"] = c["diff"]
        model[f"{metric}_vs_best_baseline_ci_low"], model[f"{metric}_vs_best_baseline_ci_high"] = c["low"], c["high"]
    return {
        "model": _json_ready(model),
        "baselines": {b: _json_ready(dict(v) | ci_metrics(report.intervals, b)) for b, v in report.baselines.items()},
    }


def mlflow_metrics(report: Report, seconds: float) -> dict[str, float]:
    """The MLflow metrics of ``report``: the headline set (``tracking.headline_metrics``, the
    same numbers a run backfilled from reports/detail.json holds) and the stage's time."""
    return tracking.headline_metrics(detail(report)) | {"time_evaluate_s": seconds}


def log_to_mlflow(report: Report, reports: Path, seconds: float) -> None:
    """Metrics (``mlflow_metrics``), the baselines' scalar hyperparameters as ``baseline.<name>.<param>``
    params, and the reports directory (with the full detail.json) as artifacts."""
    import mlflow

    if mlflow.active_run() is None:
        return
    tracking.log_metrics(mlflow_metrics(report, seconds))
    mlflow.log_params(
        {
            f"baseline.{name}.{key}": value
            for name, used in report.summary["baseline_params"].items()
            for key, value in used.items()
            if isinstance(value, (int, float, str))
        }
    )
    mlflow.log_artifacts(str(reports), artifact_path="reports")


def system_name(model_name: str, baselines: Sequence[str]) -> str:
    """The model's column name: its config name, or ``<name>_model`` when a baseline has that name."""
    return f"{model_name}_model" if model_name in baselines else model_name


def run(cfg: DictConfig, paths: Paths) -> None:
    """Evaluate models/model and the configured baselines on data/processed's test split."""
    from recpipe.models.io import load_model

    start = time.perf_counter()
    ev: Any = cfg.evaluate
    ks = [int(k) for k in ev.ks]
    batch_size = int(ev.batch_size)
    data = load_processed(paths.processed)
    model = load_model(paths.model)
    evalset = EvalSet.from_processed(data, "test", ev.get("max_users"), int(cfg.seed))
    rating_scale = OmegaConf.select(cfg, "data.rating_scale")
    names = list(ev.baselines)
    model_name = system_name(OmegaConf.select(cfg, "model.name") or "model", names)
    light_below = int(ev.light_user_threshold)
    train_counts = np.bincount(data.train["user_idx"].to_numpy(), minlength=data.n_users)
    segments = user_segments(train_counts, light_below)
    cold = cold_items_of(data)

    fitted = fit_baselines(names, data, ev.baseline_models, users_with_truth(evalset.truth))
    results: dict[str, RankingEval] = {}
    for name, system in [(model_name, model), *((b, m) for b, (m, _) in fitted.items())]:
        t = time.perf_counter()
        results[name] = evaluate_model(system, data, evalset, ks, batch_size, rating_scale, segments, cold)
        log.info(f"evaluated {name} in {time.perf_counter() - t:.1f} s")

    boot = ev.bootstrap
    intervals = compare_to_baselines(
        model_name,
        results[model_name].per_user,
        {b: results[b].per_user for b in names},
        metrics=list(boot.metrics),
        n_resamples=int(boot.n_resamples),
        seed=int(cfg.seed),
        level=float(boot.level),
    )
    users = results[model_name].users
    summary = {
        "model": model_name,
        "test_users": len(users),
        "user_sample": sample_effect(len(users), evalset.all_users),
        "items": data.n_items,
        "segments": describe_segments(segments, users, light_below),
        "cold_items": {"items": len(cold), "users": len(cold_users(evalset.truth, cold))},
        "baseline_params": {b: used for b, (_, used) in fitted.items()},
    }
    popularity = data.item_popularity()
    report = Report(
        model_name=model_name,
        metrics=results[model_name].metrics,
        baselines={b: results[b].metrics for b in names},
        intervals=intervals,
        summary=summary,
        recommended={n: recommended_popularity(r.topk, popularity) for n, r in results.items()},
        item_popularity=popularity,
    )
    write_reports(paths.reports, report)
    seconds = time.perf_counter() - start
    log_to_mlflow(report, paths.reports, seconds)
    log.info(f"{len(users)} test users, {data.n_items} items, {len(cold)} cold items, {seconds:.1f} s")
    log.info(format_table(report.systems))
