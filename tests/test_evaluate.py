"""The evaluate stage: model and baselines scored alike, rating errors, the reports it writes."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation import reports, systems
from recpipe.evaluation.bootstrap import compare_to_baselines
from recpipe.evaluation.cold import cold_items_of, cold_metrics
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS
from recpipe.evaluation.ranking import EvalSet, RankingEval, rank_metrics
from recpipe.evaluation.registry import RANKING_METRICS
from recpipe.evaluation.segments import user_segments
from recpipe.models.classic import fit_baselines
from recpipe.paths import Paths
from recpipe.stages import evaluate

from .helpers import TinyMF, baseline_configs, save_mf, toy_processed

KS = (5, 10, 20)


class TinyRatingMF(TinyMF):
    """TinyMF that also predicts ratings: 3 + dot product (often outside 1..5, so clipping matters)."""

    predicts_ratings = True

    def predict_rating(self, user_idx: tf.Tensor, item_idx: tf.Tensor) -> tf.Tensor:
        u, i = tf.gather(self.user_emb, user_idx), tf.gather(self.item_emb, item_idx)
        return 3.0 + tf.reduce_sum(u * i, axis=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Processed:
    return toy_processed(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def evalset(data) -> EvalSet:
    return EvalSet.from_processed(data, "test")


def test_model_metrics_have_contract_names_and_match_rank_metrics(data, evalset):
    model = TinyRatingMF(data.n_users, data.n_items)
    result = systems.evaluate_model(model, data, evalset, KS, batch_size=16, rating_scale=[1, 5])
    ranking = {f"{m}_at_{k}" for m in RANKING_METRICS for k in KS}
    beyond = {f"{m}_at_10" for m in ("coverage", "novelty", "popularity", "diversity")}
    assert set(result.metrics) == ranking | beyond | {"rmse", "mae"}
    direct = rank_metrics(
        lambda u: model.score_all(tf.constant(u)).numpy(), data.matrix("train", "val"), data.matrix("test"), KS
    )
    assert {k: result.metrics[k] for k in direct} == pytest.approx(direct)
    assert len(result.users) == data.test["user_idx"].nunique()
    # the synthetic items all have genres
    assert 0 <= result.metrics["diversity_at_10"] <= 1


def test_rating_errors_are_clipped_to_the_scale(data):
    model = TinyRatingMF(data.n_users, data.n_items)
    got = systems.rating_metrics(model, data.test, [1, 5], batch_size=7)
    pred = 3 + np.sum(model.user_emb.numpy()[data.test["user_idx"]] * model.item_emb.numpy()[data.test["item_idx"]], 1)
    assert (pred > 5).any() and (pred < 1).any()
    err = np.clip(pred, 1, 5) - data.test["rating"].to_numpy()
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


def test_ranking_only_model_has_no_rating_metrics(data, evalset):
    result = systems.evaluate_model(TinyMF(data.n_users, data.n_items), data, evalset, KS, 64, [1, 5])
    assert "rmse" not in result.metrics and "mae" not in result.metrics


def evaluate_baselines(names, data, evalset, seed, changes=None):
    fitted = fit_baselines(names, data, baseline_configs(seed, changes))
    return {n: systems.evaluate_model(m, data, evalset, KS, 32, [1, 5]) for n, (m, _) in fitted.items()}


def test_baselines_scored_like_the_model(data, evalset):
    out = evaluate_baselines(["popularity", "random"], data, evalset, seed=1)
    pop = data.item_popularity()
    direct = rank_metrics(lambda u: np.tile(pop, (len(u), 1)), data.matrix("train", "val"), data.matrix("test"), KS)
    assert {k: out["popularity"].metrics[k] for k in direct} == pytest.approx(direct)
    again = evaluate_baselines(["random"], data, evalset, seed=1)
    assert again["random"].metrics == pytest.approx(out["random"].metrics)
    other = evaluate_baselines(["random"], data, evalset, seed=2)
    assert not np.array_equal(other["random"].topk, out["random"].topk)
    # popularity recommends (nearly) the same few items to everyone
    assert out["popularity"].metrics["coverage_at_10"] < out["random"].metrics["coverage_at_10"]
    with pytest.raises(RecpipeError, match="unknown baseline 'oracle'.*popularity, random"):
        fit_baselines(["oracle"], data, baseline_configs(0))
    with pytest.raises(RecpipeError, match="baseline_models has no 'ease'.*model@evaluate.baseline_models.ease: ease"):
        fit_baselines(["ease"], data, {})


def test_cf_baselines_beat_random_and_take_their_params(data, evalset):
    params = {"item_knn": {"k": 20}, "user_knn": {"k": 10, "shrink": 1.0}, "ease": {"lam": 50}}
    fitted = fit_baselines(["item_knn", "user_knn", "ease"], data, baseline_configs(0, params))
    assert {n: used for n, (_, used) in fitted.items()} == {
        "item_knn": {"k": 20, "shrink": 0.0},
        "user_knn": {"k": 10, "shrink": 1.0},
        "ease": {"lam": 50.0, "max_items": 8_000, "items_kept": 60, "dropped_interaction_share": 0.0},
    }
    out = evaluate_baselines(["item_knn", "user_knn", "ease", "random"], data, evalset, 0, params)
    for name in ("item_knn", "user_knn", "ease"):
        assert out[name].metrics["ndcg_at_10"] > out["random"].metrics["ndcg_at_10"], name


def with_cold_items(data: Processed, n_cold: int = 6) -> Processed:
    """``data`` with every interaction of its ``n_cold`` most popular items moved to test."""
    cold = np.argsort(-data.item_popularity(), kind="stable")[:n_cold]
    splits = {}
    moved = []
    for name in ("train", "val"):
        frame = data.split(name)
        is_cold = frame["item_idx"].isin(cold)
        splits[name] = frame[~is_cold]
        moved.append(frame[is_cold])
    test = pd.concat([data.test, *moved], ignore_index=True)
    return Processed(data.users, data.items, splits["train"], splits["val"], test)


def test_segment_and_cold_metrics(data):
    cold_data = with_cold_items(data)
    evalset = EvalSet.from_processed(cold_data, "test")
    model = TinyRatingMF(data.n_users, data.n_items)
    counts = np.bincount(cold_data.train["user_idx"], minlength=data.n_users)
    threshold = int(np.median(counts))
    segments = user_segments(counts, threshold)
    cold = cold_items_of(cold_data)
    assert len(cold) == 6
    result = systems.evaluate_model(model, cold_data, evalset, KS, 16, [1, 5], segments, cold)
    m = result.metrics
    # the segment means weight back to the overall mean
    light = segments["light_users"][result.users]
    assert light.any() and not light.all()
    assert light.mean() * m["light_users.ndcg_at_10"] + (1 - light.mean()) * m[
        "heavy_users.ndcg_at_10"
    ] == pytest.approx(m["ndcg_at_10"])
    # rating errors per segment: over the test rows of that segment's users
    rows = cold_data.test[segments["heavy_users"][cold_data.test["user_idx"]]]
    assert m["heavy_users.rmse"] == pytest.approx(systems.rating_metrics(model, rows, [1, 5])["rmse"])
    assert {"light_users.coverage_at_10", "heavy_users.mae"} <= set(m)
    scorer = systems.model_scorer(model)
    assert {k: v for k, v in m.items() if k.startswith("cold_")} == pytest.approx(
        cold_metrics(scorer, evalset.truth, cold, KS)
    )
    assert {f"cold_{k}_at_{n}" for k in RANKING_METRICS for n in KS} <= set(m)
    # without cold items there are no cold keys
    plain = systems.evaluate_model(model, data, EvalSet.from_processed(data), KS, 16, [1, 5], segments, cold[:0])
    assert not any(k.startswith("cold_") for k in plain.metrics)


def make_report(name: str = "mf") -> reports.Report:
    rng = np.random.default_rng(0)
    model = {
        "ndcg_at_5": 0.3,
        "ndcg_at_10": 0.4,
        "coverage_at_10": 0.5,
        "diversity_at_10": float("nan"),
        "rmse": 0.9,
        "light_users.ndcg_at_10": 0.2,
        "cold_ndcg_at_10": 0.05,
    }
    base = {"popularity": {"ndcg_at_5": 0.1, "ndcg_at_10": 0.2}, "random": {"ndcg_at_5": 0.0, "ndcg_at_10": 0.01}}
    per_user = {s: {"ndcg_at_10": rng.random(50)} for s in (name, "popularity", "random")}
    intervals = compare_to_baselines(name, per_user[name], {b: per_user[b] for b in base}, n_resamples=50)
    summary = {
        "segments": {"light_users": {"train_interactions": "< 20", "users": 7}},
        "cold_items": {"items": 3, "users": 2},
        "baseline_params": {"popularity": {}, "random": {"seed": 0}},
    }
    recommended = {s: rng.integers(0, 30, 40).astype(float) for s in (name, "popularity", "random")}
    result = RankingEval({}, per_user[name], np.arange(50), np.zeros((50, 10), np.int64))
    table = reports.per_user_table(result, pd.Series(np.arange(100, 150)), ["ndcg_at_10", "recall_at_10"])
    popularity = rng.integers(0, 30, 20).astype(float)
    return reports.Report(name, model, base, intervals, summary, recommended, popularity, table)


def test_write_reports(tmp_path):
    report = make_report()
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "stale.json").write_text("{}")
    reports.write_reports(tmp_path / "reports", report)

    out = tmp_path / "reports"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "baselines.json",
        "detail.json",
        "evaluation.json",
        "evaluation.md",
        "intervals.json",
        "metrics.json",
        "per_user.csv",
        "plots",
        "plots/metric_vs_k.png",
        "plots/metrics_at_k.csv",
        "plots/popularity.png",
    ]
    # the model's per-user values by user id (recall_at_10 is not among them: left out)
    per_user = pd.read_csv(out / "per_user.csv")
    assert list(per_user.columns) == ["user_id", "ndcg_at_10"] and per_user["user_id"].tolist() == list(range(100, 150))
    np.testing.assert_array_equal(per_user["ndcg_at_10"], report.per_user["ndcg_at_10"])
    low, high = report.intervals["ci"]["mf"]["ndcg_at_10"]
    # headline metrics only, in HEADLINE_METRICS order (the columns of dvc metrics/exp show)
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == [k for k in HEADLINE_METRICS if k in metrics]
    assert metrics == {
        "ndcg_at_10": 0.4,
        "coverage_at_10": 0.5,
        "diversity_at_10": None,
        "rmse": 0.9,
        "ndcg_at_10_ci_low": low,
        "ndcg_at_10_ci_high": high,
    }
    assert json.loads((out / "baselines.json").read_text()) == {
        "popularity": {"ndcg_at_10": 0.2},
        "random": {"ndcg_at_10": 0.01},
    }
    assert json.loads((out / "intervals.json").read_text()) == report.intervals
    assert json.loads((out / "evaluation.json").read_text()) == report.summary
    detail = json.loads((out / "detail.json").read_text())
    assert detail == reports.detail(report)
    assert detail["model"]["ndcg_at_10_ci_low"] == report.intervals["ci"]["mf"]["ndcg_at_10"][0]
    assert detail["baselines"]["popularity"]["ndcg_at_10"] == 0.2
    md = (out / "evaluation.md").read_text()
    assert "| ndcg_at_10 | **0.4000** [" in md and "| light_users.ndcg_at_10 | **0.2000** | — | — |" in md
    assert "| cold_ndcg_at_10 | **0.0500** |" in md and "- random: seed=0" in md
    table = pd.read_csv(out / "plots" / "metrics_at_k.csv")
    assert list(table.columns) == ["metric", "system", "k", "value"]
    assert len(table) == 2 + 2 + 2  # overall ndcg_at_K of each system; no cold or segment values
    row = table[(table.system == "popularity") & (table.k == 10)]
    assert row[["metric", "value"]].values.tolist() == [["ndcg", 0.2]]


def test_mlflow_metric_names():
    """MLflow gets the headline set only; everything else is in detail.json (an artifact)."""
    report = make_report()
    flat = reports.mlflow_metrics(report, 1.5)
    low, high = report.intervals["ci"]["mf"]["ndcg_at_10"]
    assert flat["ndcg_at_10_ci_low"] == low and flat["ndcg_at_10_ci_high"] == high
    assert flat["baseline.popularity.ndcg_at_10"] == 0.2
    model_keys = {k for k in flat if not k.startswith("baseline.")} - {"time_evaluate_s"}
    assert model_keys <= set(HEADLINE_METRICS)
    assert {k.rsplit(".", 1)[1] for k in flat if k.startswith("baseline.")} <= set(HEADLINE_BASELINE_METRICS)
    assert "ndcg_at_5" not in flat and "baseline.random.ndcg_at_10_ci_low" not in flat
    diff = report.intervals["vs_best_baseline"]["ndcg_at_10"]
    assert reports.detail(report)["model"]["ndcg_at_10_vs_best_baseline_ci_low"] == diff["low"]
    assert "diversity_at_10" not in flat and flat["time_evaluate_s"] == 1.5  # NaN is not logged
    assert systems.system_name("ease", ["popularity", "ease"]) == "ease_model"
    assert systems.system_name("mf", ["popularity", "ease"]) == "mf"


def test_format_table():
    text = reports.format_table({"mf": {"ndcg_at_10": 0.31234, "rmse": 0.9}, "popularity": {"ndcg_at_10": 0.2}})
    lines = text.splitlines()
    assert lines[0].split() == ["mf", "popularity"]
    assert lines[1].split() == ["ndcg_at_10", "0.3123", "0.2000"]
    assert lines[2].split() == ["rmse", "0.9000", "-"]


def test_stage_writes_reports_and_logs_to_mlflow(tmp_path, caplog):
    caplog.set_level("INFO", logger="recpipe")
    paths = Paths(tmp_path)
    data = toy_processed(paths.processed.parent)
    save_mf(data, paths.model)
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "model": {"name": "tiny"},
            "data": {"rating_scale": [1, 5]},
            "evaluate": {
                "ks": list(KS),
                "batch_size": 32,
                "baselines": ["popularity", "random", "ease"],
                "baseline_models": baseline_configs(0, {"ease": {"lam": "auto", "grid": [10, 100]}}),
                "light_user_threshold": 15,
                "bootstrap": {"metrics": ["ndcg_at_10", "recall_at_10"], "n_resamples": 100, "level": 0.9},
            },
        }
    )
    experiment = mlflow.create_experiment("evaluate-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        evaluate.run(cfg, paths)
    saved = json.loads((paths.reports / "detail.json").read_text())["model"]
    assert {"rmse", "mae", "ndcg_at_5", "diversity_at_10", "light_users.ndcg_at_10", "heavy_users.rmse"} <= set(saved)
    assert set(json.loads((paths.reports / "metrics.json").read_text())) == set(HEADLINE_METRICS)
    intervals = json.loads((paths.reports / "intervals.json").read_text())
    assert intervals["n_resamples"] == 100 and intervals["level"] == 0.9
    assert set(intervals["ci"]) == {"tiny", "popularity", "random", "ease"}
    summary = json.loads((paths.reports / "evaluation.json").read_text())
    assert summary["baseline_params"]["ease"]["lam"] in (10.0, 100.0)
    assert summary["segments"]["light_users"]["train_interactions"] == "< 15"
    logged = mlflow.get_run(run.info.run_id)
    assert logged.data.metrics["ndcg_at_10"] == pytest.approx(saved["ndcg_at_10"])
    assert {
        "baseline.popularity.ndcg_at_10",
        "time_evaluate_s",
        "ndcg_at_10_ci_low",
        "mrr_at_10",
        "coverage_at_10",
    } <= set(logged.data.metrics)
    assert "recall_at_10_vs_best_baseline" not in logged.data.metrics  # detail: in detail.json
    costs = {k: v for k, v in logged.data.metrics.items() if k.startswith("cost.")}  # seconds, MLflow only
    assert set(costs) == {f"cost.{b}.fit_s" for b in ("popularity", "random", "ease")} | {
        f"cost.{s}.evaluate_s" for s in ("tiny", "popularity", "random", "ease")
    }
    assert all(v >= 0 for v in costs.values())
    assert logged.data.params["baseline.ease.lam"] == str(summary["baseline_params"]["ease"]["lam"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")}
    assert {"reports/metrics.json", "reports/detail.json", "reports/evaluation.md", "reports/plots"} <= artifacts
    out = caplog.text
    assert "tiny" in out and "popularity" in out and "ndcg_at_10" in out


def test_a_tiny_user_sample_is_evaluated_with_a_warning(data, caplog):
    """evaluate.max_users=3: the sample's users only, in the summary and per_user table, and a warning."""
    caplog.set_level("INFO", logger="recpipe")
    ev = OmegaConf.create(
        {
            "ks": [10],
            "batch_size": 32,
            "max_users": 3,
            "baselines": ["popularity"],
            "baseline_models": baseline_configs(0),
            "light_user_threshold": 15,
            "bootstrap": {"metrics": ["ndcg_at_10"], "n_resamples": 20, "level": 0.9},
        }
    )
    report = systems.evaluate_systems(TinyMF(data.n_users, data.n_items), "tiny", data, ev, 0, None)
    sample = report.summary["user_sample"]
    assert sample["evaluated_users"] == 3 and sample["too_few_users"]
    assert report.per_user is not None and len(report.per_user) == 3
    assert "evaluate.max_users=3: 3 of" in caplog.text and "fewer than 100" in caplog.text
