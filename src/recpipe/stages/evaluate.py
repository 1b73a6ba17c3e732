"""``recpipe evaluate``: the trained model and the baselines on the test split, over the full catalog.

Writes reports/metrics.json (flat metric keys), reports/baselines.json ({baseline: {same keys}}),
reports/plots/metrics_at_k.csv (long format: model, k, metric, value) and, when train wrote one,
reports/plots/training_curve.csv; logs all of it to the active MLflow run.
"""
from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from recpipe import tracking
from recpipe.data.processed import Processed, load_processed
from recpipe.evaluation import baselines as baseline_registry
from recpipe.evaluation import metrics as M
from recpipe.evaluation.ranking import EvalSet, RankingEval, ScoreFn, evaluate_ranking
from recpipe.io import atomic_dir, write_json
from recpipe.models.base import RecModel
from recpipe.paths import Paths

TABLE_METRICS = (
    "ndcg_at_10", "recall_at_10", "precision_at_10", "map_at_10", "mrr_at_10", "hit_rate_at_10",
    "coverage_at_10", "novelty_at_10", "diversity_at_10", "popularity_at_10", "rmse", "mae",
)
_AT_K = re.compile(r"(?P<metric>.+)_at_(?P<k>\d+)")


def model_scorer(model: RecModel) -> ScoreFn:
    """The model's ``score_all`` as a ranking scorer over int32 user indices."""
    return lambda users: model.score_all(tf.constant(users, tf.int32))


def rating_metrics(
    model: RecModel, frame: pd.DataFrame, rating_scale: Sequence[float] | None, batch_size: int = 65536
) -> dict[str, float]:
    """rmse and mae of the model's predicted ratings (clipped to ``rating_scale``) on ``frame``."""
    users = frame["user_idx"].to_numpy(np.int32)
    items = frame["item_idx"].to_numpy(np.int32)
    pred = np.concatenate([
        np.asarray(model.predict_rating(tf.constant(users[s : s + batch_size]), tf.constant(items[s : s + batch_size])))
        for s in range(0, len(users), batch_size)
    ])
    actual = frame["rating"].to_numpy(np.float64)
    return {"rmse": M.rmse(pred, actual, rating_scale), "mae": M.mae(pred, actual, rating_scale)}


def evaluate_model(
    model: RecModel,
    data: Processed,
    evalset: EvalSet,
    ks: Sequence[int],
    batch_size: int,
    rating_scale: Sequence[float] | None,
) -> RankingEval:
    """Ranking (and, for rating models on rated data, rmse/mae) metrics of ``model`` on test."""
    vectors = model.candidate_vectors()
    result = evaluate_ranking(
        model_scorer(model), evalset, ks, batch_size, None if vectors is None else np.asarray(vectors)
    )
    if model.predicts_ratings and len(data.test) and data.test["rating"].notna().all():
        result.metrics.update(rating_metrics(model, data.test, rating_scale))
    return result


def evaluate_baselines(
    names: Sequence[str], data: Processed, evalset: EvalSet, ks: Sequence[int], batch_size: int, seed: int
) -> dict[str, RankingEval]:
    """Each named baseline (``recpipe.evaluation.baselines``) scored exactly like the model."""
    return {
        name: evaluate_ranking(baseline_registry.build(name, data, seed), evalset, ks, batch_size)
        for name in names
    }


def metrics_at_k_table(systems: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Long table (model, k, metric, value) of every ``<metric>_at_<k>`` value of each system."""
    rows = [
        {"model": name, "k": int(m["k"]), "metric": m["metric"], "value": value}
        for name, values in systems.items()
        for key, value in values.items()
        if (m := _AT_K.fullmatch(key))
    ]
    table = pd.DataFrame(rows, columns=["model", "k", "metric", "value"])
    return table.sort_values(["metric", "model", "k"], ignore_index=True)


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


def write_reports(
    dest: Path,
    model_name: str,
    model_metrics: Mapping[str, float],
    baseline_metrics: Mapping[str, Mapping[str, float]],
    training_curve: Path | None = None,
) -> None:
    """Write the reports directory ``dest`` as a whole (atomically)."""
    with atomic_dir(dest) as tmp:
        write_json(tmp / "metrics.json", _json_ready(model_metrics))
        write_json(tmp / "baselines.json", {b: _json_ready(v) for b, v in baseline_metrics.items()})
        (tmp / "plots").mkdir()
        table = metrics_at_k_table({model_name: model_metrics, **baseline_metrics})
        table.to_csv(tmp / "plots" / "metrics_at_k.csv", index=False)
        if training_curve is not None and training_curve.exists():
            shutil.copyfile(training_curve, tmp / "plots" / "training_curve.csv")


def log_to_mlflow(
    model_metrics: Mapping[str, float], baseline_metrics: Mapping[str, Mapping[str, float]], reports: Path, seconds: float
) -> None:
    """Model metrics under their own names, baselines as ``baseline.<name>.<metric>``, reports as artifacts."""
    import mlflow

    if mlflow.active_run() is None:
        return
    flat = dict(model_metrics)
    for name, values in baseline_metrics.items():
        flat.update({f"baseline.{name}.{k}": v for k, v in values.items()})
    tracking.log_metrics({k: v for k, v in flat.items() if math.isfinite(v)} | {"time_evaluate_s": seconds})
    mlflow.log_artifacts(str(reports), artifact_path="reports")


def run(cfg: DictConfig, paths: Paths) -> None:
    """Evaluate models/model and the configured baselines on data/processed's test split."""
    from recpipe.training import load_model

    start = time.perf_counter()
    ev: Any = cfg.evaluate
    ks = [int(k) for k in ev.ks]
    data = load_processed(paths.processed)
    model = load_model(paths.model)
    evalset = EvalSet.from_processed(data, "test")
    rating_scale = OmegaConf.select(cfg, "data.rating_scale")
    model_name = OmegaConf.select(cfg, "model.name") or "model"

    result = evaluate_model(model, data, evalset, ks, int(ev.batch_size), rating_scale)
    base = evaluate_baselines(list(ev.baselines), data, evalset, ks, int(ev.batch_size), int(cfg.seed))
    base_metrics = {name: r.metrics for name, r in base.items()}
    write_reports(
        paths.reports, model_name, result.metrics, base_metrics, paths.root / "models" / "training_curve.csv"
    )
    seconds = time.perf_counter() - start
    log_to_mlflow(result.metrics, base_metrics, paths.reports, seconds)
    print(f"{len(result.users)} test users, {data.n_items} items, {seconds:.1f} s")
    print(format_table({model_name: result.metrics, **base_metrics}))
