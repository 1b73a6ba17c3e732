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
from recpipe.evaluation import baselines, metrics
from recpipe.evaluation.ranking import EvalSet, rank_metrics
from recpipe.paths import Paths
from recpipe.stages import evaluate

from .test_export import TinyMF, save_mf, toy_processed

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
    result = evaluate.evaluate_model(model, data, evalset, KS, batch_size=16, rating_scale=[1, 5])
    ranking = {f"{m}_at_{k}" for m in metrics.RANKING_METRICS for k in KS}
    beyond = {f"{m}_at_10" for m in ("coverage", "novelty", "popularity", "diversity")}
    assert set(result.metrics) == ranking | beyond | {"rmse", "mae"}
    direct = rank_metrics(lambda u: model.score_all(tf.constant(u)).numpy(), data.matrix("train", "val"),
                          data.matrix("test"), KS)
    assert {k: result.metrics[k] for k in direct} == pytest.approx(direct)
    assert len(result.users) == data.test["user_idx"].nunique()
    # the synthetic items all have genres
    assert 0 <= result.metrics["diversity_at_10"] <= 1


def test_rating_errors_are_clipped_to_the_scale(data):
    model = TinyRatingMF(data.n_users, data.n_items)
    got = evaluate.rating_metrics(model, data.test, [1, 5], batch_size=7)
    pred = 3 + np.sum(model.user_emb.numpy()[data.test["user_idx"]] * model.item_emb.numpy()[data.test["item_idx"]], 1)
    assert (pred > 5).any() and (pred < 1).any()
    err = np.clip(pred, 1, 5) - data.test["rating"].to_numpy()
    assert got["rmse"] == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-5)
    assert got["mae"] == pytest.approx(np.mean(np.abs(err)), rel=1e-5)


def test_ranking_only_model_has_no_rating_metrics(data, evalset):
    result = evaluate.evaluate_model(TinyMF(data.n_users, data.n_items), data, evalset, KS, 64, [1, 5])
    assert "rmse" not in result.metrics and "mae" not in result.metrics


def test_baselines_scored_like_the_model(data, evalset):
    out = evaluate.evaluate_baselines(["popularity", "random"], data, evalset, KS, 32, seed=1)
    pop = data.item_popularity()
    direct = rank_metrics(lambda u: np.tile(pop, (len(u), 1)), data.matrix("train", "val"), data.matrix("test"), KS)
    assert {k: out["popularity"].metrics[k] for k in direct} == pytest.approx(direct)
    again = evaluate.evaluate_baselines(["random"], data, evalset, KS, 7, seed=1)
    assert again["random"].metrics == pytest.approx(out["random"].metrics)
    other = evaluate.evaluate_baselines(["random"], data, evalset, KS, 32, seed=2)
    assert not np.array_equal(other["random"].topk, out["random"].topk)
    # popularity recommends (nearly) the same few items to everyone
    assert out["popularity"].metrics["coverage_at_10"] < out["random"].metrics["coverage_at_10"]
    with pytest.raises(RecpipeError, match="unknown baseline 'oracle'.*popularity, random"):
        baselines.build("oracle", data, 0)


def test_cf_baselines_beat_random(data, evalset):
    out = evaluate.evaluate_baselines(["item_knn", "user_knn", "ease", "random"], data, evalset, KS, 32, seed=0)
    for name in ("item_knn", "user_knn", "ease"):
        assert out[name].metrics["ndcg_at_10"] > out["random"].metrics["ndcg_at_10"], name


def test_write_reports(tmp_path):
    model = {"ndcg_at_5": 0.3, "ndcg_at_10": 0.4, "coverage_at_10": 0.5, "diversity_at_10": float("nan"), "rmse": 0.9}
    base = {"popularity": {"ndcg_at_5": 0.1, "ndcg_at_10": 0.2}, "random": {"ndcg_at_5": 0.0, "ndcg_at_10": 0.01}}
    curve = tmp_path / "training_curve.csv"
    curve.write_text("epoch,loss\n1,0.5\n")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "stale.json").write_text("{}")
    evaluate.write_reports(tmp_path / "reports", "mf", model, base, curve)

    reports = tmp_path / "reports"
    assert sorted(p.relative_to(reports).as_posix() for p in reports.rglob("*")) == [
        "baselines.json", "metrics.json", "plots", "plots/metrics_at_k.csv", "plots/training_curve.csv"]
    assert json.loads((reports / "metrics.json").read_text()) == {**model, "diversity_at_10": None}
    assert json.loads((reports / "baselines.json").read_text()) == base
    table = pd.read_csv(reports / "plots" / "metrics_at_k.csv")
    assert list(table.columns) == ["model", "k", "metric", "value"]
    assert len(table) == 4 + 2 + 2  # every _at_K value of each system; rmse is not one
    row = table[(table.model == "popularity") & (table.k == 10)]
    assert row[["metric", "value"]].values.tolist() == [["ndcg", 0.2]]
    assert (reports / "plots" / "training_curve.csv").read_text() == curve.read_text()

    evaluate.write_reports(reports, "mf", model, base, tmp_path / "no_curve.csv")
    assert not (reports / "plots" / "training_curve.csv").exists()


def test_format_table():
    text = evaluate.format_table({"mf": {"ndcg_at_10": 0.31234, "rmse": 0.9}, "popularity": {"ndcg_at_10": 0.2}})
    lines = text.splitlines()
    assert lines[0].split() == ["mf", "popularity"]
    assert lines[1].split() == ["ndcg_at_10", "0.3123", "0.2000"]
    assert lines[2].split() == ["rmse", "0.9000", "-"]


def test_stage_writes_reports_and_logs_to_mlflow(tmp_path, capsys):
    paths = Paths(tmp_path)
    data = toy_processed(paths.processed.parent)
    save_mf(data, paths.model)
    (paths.root / "models" / "training_curve.csv").write_text("epoch,loss\n1,0.5\n")
    cfg = OmegaConf.create({
        "seed": 0, "model": {"name": "tiny"}, "data": {"rating_scale": [1, 5]},
        "evaluate": {"ks": list(KS), "batch_size": 32, "baselines": ["popularity", "random"]},
    })
    experiment = mlflow.create_experiment("evaluate-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        evaluate.run(cfg, paths)
    saved = json.loads((paths.reports / "metrics.json").read_text())
    assert {"rmse", "mae", "ndcg_at_5", "diversity_at_10"} <= set(saved)  # MF predicts ratings
    assert (paths.plots / "training_curve.csv").exists()
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged["ndcg_at_10"] == pytest.approx(saved["ndcg_at_10"])
    assert "baseline.popularity.ndcg_at_10" in logged and "time_evaluate_s" in logged
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")}
    assert {"reports/metrics.json", "reports/baselines.json", "reports/plots"} <= artifacts
    out = capsys.readouterr().out
    assert "tiny" in out and "popularity" in out and "ndcg_at_10" in out

