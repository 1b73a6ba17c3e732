"""Evaluating systems on the test split: the trained model and the baselines, over the full catalog.

Every system (the model, then each of ``evaluate.baselines``) is scored by the same code: ranking
metrics at each K, beyond-accuracy metrics at 10, rmse/mae for rating models, all of them also per
user segment (``light_users.<metric>`` / ``heavy_users.<metric>``) and, when test has cold items,
``cold_<metric>``. Paired bootstrap intervals over users compare the model with the best baseline.
The result is a ``reports.Report`` (what ``reports.write_reports`` writes under reports/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.evaluation import metrics as M
from recpipe.evaluation.bootstrap import MIN_SAMPLE_USERS, compare_to_baselines, sample_effect
from recpipe.evaluation.cold import cold_items_of, cold_metrics, cold_users
from recpipe.evaluation.headline import PROMOTION_METRIC
from recpipe.evaluation.ranking import EvalSet, RankingEval, ScoreFn, evaluate_ranking, users_with_truth
from recpipe.evaluation.registry import segment_key
from recpipe.evaluation.render import recommended_popularity
from recpipe.evaluation.reports import Report, per_user_table
from recpipe.evaluation.segments import describe_segments, segment_metrics, user_segments
from recpipe.models.base import RecModel
from recpipe.models.classic import fit_baselines

log = logging.getLogger(__name__)


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


def system_name(model_name: str, baselines: Sequence[str]) -> str:
    """The model's column name: its config name, or ``<name>_model`` when a baseline has that name."""
    return f"{model_name}_model" if model_name in baselines else model_name


def evaluate_systems(
    model: RecModel,
    model_name: str,
    data: Processed,
    ev: Any,
    seed: int,
    rating_scale: Sequence[float] | None,
) -> Report:
    """Evaluate ``model`` (named ``model_name``, see ``system_name``) and the baselines of ``ev``
    (the ``evaluate`` config section) on ``data``'s test split; ``seed`` seeds the bootstrap."""
    ks = [int(k) for k in ev.ks]
    batch_size = int(ev.batch_size)
    evalset = EvalSet.from_processed(data, "test", ev.get("max_users"), seed)
    names = list(ev.baselines)
    light_below = int(ev.light_user_threshold)
    train_counts = np.bincount(data.train["user_idx"].to_numpy(), minlength=data.n_users)
    segments = user_segments(train_counts, light_below)
    cold = cold_items_of(data)

    scored_users = users_with_truth(evalset.truth)
    fitted: dict[str, tuple[Any, dict[str, Any]]] = {}
    costs: dict[str, dict[str, float]] = {}  # seconds per system and step: MLflow only (reports stay byte-identical)
    for name in names:
        t = time.perf_counter()
        fitted |= fit_baselines([name], data, ev.baseline_models, scored_users)
        costs[name] = {"fit_s": time.perf_counter() - t}
        log.info(f"fit baseline {name} in {costs[name]['fit_s']:.1f} s")
    results: dict[str, RankingEval] = {}
    for name, system in [(model_name, model), *((b, m) for b, (m, _) in fitted.items())]:
        t = time.perf_counter()
        results[name] = evaluate_model(system, data, evalset, ks, batch_size, rating_scale, segments, cold)
        costs.setdefault(name, {})["evaluate_s"] = time.perf_counter() - t
        log.info(f"evaluated {name} in {costs[name]['evaluate_s']:.1f} s")

    boot = ev.bootstrap
    intervals = compare_to_baselines(
        model_name,
        results[model_name].per_user,
        {b: results[b].per_user for b in names},
        metrics=list(boot.metrics),
        n_resamples=int(boot.n_resamples),
        seed=seed,
        level=float(boot.level),
    )
    users = results[model_name].users
    sample = sample_effect(len(users), evalset.all_users)
    if sample["too_few_users"]:
        log.warning(
            f"evaluate.max_users={ev.get('max_users')}: {len(users)} of {evalset.all_users} test users evaluated, "
            f"fewer than {MIN_SAMPLE_USERS}: the bootstrap intervals and significance tests say little"
        )
    summary = {
        "model": model_name,
        "test_users": len(users),
        "user_sample": sample,
        "items": data.n_items,
        "segments": describe_segments(segments, users, light_below),
        "cold_items": {"items": len(cold), "users": len(cold_users(evalset.truth, cold))},
        "baseline_params": {b: used for b, (_, used) in fitted.items()},
    }
    popularity = data.item_popularity()
    return Report(
        model_name=model_name,
        metrics=results[model_name].metrics,
        baselines={b: results[b].metrics for b in names},
        intervals=intervals,
        summary=summary,
        recommended={n: recommended_popularity(r.topk, popularity) for n, r in results.items()},
        item_popularity=popularity,
        per_user=per_user_table(results[model_name], data.users["user_id"], [PROMOTION_METRIC, *boot.metrics]),
        costs=costs,
    )
