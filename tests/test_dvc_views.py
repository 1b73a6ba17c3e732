"""What `dvc metrics show`, `dvc exp show` and `dvc plots show` show after a real `dvc repro`:
headline metrics only, the model/split/data columns, metric-vs-K lines per system, the training
curve, and an HTML page that renders with no network."""

from __future__ import annotations

import json
import re

import pytest

from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS

from .helpers import TINY_PIPELINE, run

pytestmark = pytest.mark.integration  # real dvc / recpipe subprocesses

BASELINES = ["popularity", "item_knn"]
KS = [5, 10, 20, 50, 100]


def test_metrics_show_is_the_headline_set(tiny_pipeline):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_pipeline).stdout)
    files = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    metrics = files["reports/metrics.json"]["data"]
    assert list(metrics) == list(HEADLINE_METRICS)  # mf predicts ratings: rmse/mae too, in this order
    assert files["reports/baselines.json"]["data"] == {
        b: {k: files["reports/baselines.json"]["data"][b][k] for k in HEADLINE_BASELINE_METRICS} for b in BASELINES
    }
    assert files["models/train/metrics.json"]["data"]["model"] == "mf"
    assert set(files["models/train/metrics.json"]["data"]) == {
        "model",
        "split",
        "data",
        "train_seconds",
        "best_epoch",
        "best_val_rmse",
    }
    table = run(["dvc", "metrics", "show"], tiny_pipeline).stdout
    assert table.splitlines()[0].split()[0] == "Path" and len(table.splitlines()) == 4  # a row per file
    detail = json.loads((tiny_pipeline / "reports/detail.json").read_text())
    assert {"ndcg_at_100", "light_users.ndcg_at_10"} <= set(detail["model"]) and set(detail["baselines"]) == set(
        BASELINES
    )


def test_exp_show_has_model_split_data_and_headline_columns(tiny_pipeline):
    header = run(["dvc", "exp", "show", "--csv"], tiny_pipeline).stdout.splitlines()[0].split(",")
    first = [c for c in header if c not in ("Experiment", "rev", "typ", "Created", "parent")]
    assert first[:6] == ["model", "split", "data", "train_seconds", "best_epoch", "best_val_rmse"]
    assert first[6 : 6 + len(HEADLINE_METRICS)] == list(HEADLINE_METRICS)  # the first screen of the pager
    assert {
        "model.name",
        "split.name",
        "data.source",
        "ndcg_at_10",
        "recall_at_10",
        "rmse",
        "popularity.ndcg_at_10",
        "best_val_rmse",
        "train_seconds",
    } <= set(header)
    metric_columns = [c for c in header if c in HEADLINE_METRICS or "." in c and c.split(".")[0] in BASELINES]
    assert len(metric_columns) == len(HEADLINE_METRICS) + len(BASELINES) * len(HEADLINE_BASELINE_METRICS)
    assert not any("light_users" in c or "_at_100" in c for c in header)


def test_plots_show_lines_per_system_and_training_curve(tiny_pipeline):
    plots = json.loads(run(["dvc", "plots", "show", "--json"], tiny_pipeline).stdout)["data"]
    at_k = [d for p in plots["metric vs K"] for d in p["content"]["data"]["values"]]
    systems = {d["system"] for d in at_k}
    assert systems == {"mf", *BASELINES}
    for metric in ("ndcg", "recall"):
        for system in systems:
            assert sorted(int(d["k"]) for d in at_k if d["metric"] == metric and d["system"] == system) == KS
    assert {d["metric"] for d in at_k} == {"ndcg", "recall"}
    spec = plots["metric vs K"][0]["content"]
    assert spec["spec"]["encoding"]["color"]["field"] == "system"
    curve = [d for p in plots["training curve"] for d in p["content"]["data"]["values"]]
    epochs = int(next(o for o in TINY_PIPELINE if o.startswith("model.epochs=")).split("=")[1])
    assert {d["series"] for d in curve} == {"loss", "val_rmse"}
    assert sorted(int(d["epoch"]) for d in curve if d["series"] == "loss") == list(range(1, epochs + 1))


def test_plots_html_renders_offline(tiny_pipeline, tmp_path):
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], tiny_pipeline)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert not re.search(r"<script[^>]*\ssrc\s*=\s*[\"']?(https?:)?//", html, re.I), "a script loads from the network"
    assert "window.vegaEmbed=" in html and html.count("vegaEmbed(") >= 2
