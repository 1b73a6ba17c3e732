"""`recpipe report`: the latest evaluated run of each model, as a markdown table and in README."""
from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from recpipe import tracking
from recpipe.cli import main
from recpipe.errors import RecpipeError
from recpipe.report import END, START, latest_runs, markdown_table, replace_block


def _run(client, exp, model, start, metrics, status="FINISHED", **tags):
    tags = {**({"model": model} if model else {}), **tags}
    run = client.create_run(exp, start_time=start, tags=tags, run_name=f"{model}-{start}")
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def experiment():
    """A fresh experiment with mf (twice), ncf, and runs the report must skip."""
    name = f"report-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking.tracking_uri())
    exp = client.create_experiment(name)
    ids = {
        "mf_old": _run(client, exp, "mf", 1000, {"ndcg_at_10": 0.1, "rmse": 1.2}),
        "ncf": _run(client, exp, "ncf", 2000, {"ndcg_at_10": 0.05, "train_seconds": 12.34}),
        "mf_new": _run(client, exp, "mf", 3000, {
            "ndcg_at_10": 0.2, "ndcg_at_10_ci_low": 0.15, "ndcg_at_10_ci_high": 0.25,
            "rmse": 0.95, "train_seconds": 3.0,
        }),
        # newer, but not evaluated / failed / not a model run: never shown
        "mf_ingest_only": _run(client, exp, "mf", 4000, {"raw_interactions": 100.0}),
        "mf_failed": _run(client, exp, "mf", 5000, {"ndcg_at_10": 0.9}, status="FAILED"),
        "parent": _run(client, exp, None, 6000, {"best_value": 0.9}),
    }
    return name, ids, client, exp


def test_latest_evaluated_run_of_each_model(experiment):
    name, ids, _, _ = experiment
    runs = latest_runs(name)
    assert [(r.model, r.run_id) for r in runs] == [("mf", ids["mf_new"]), ("ncf", ids["ncf"])]

    table = markdown_table(runs).splitlines()
    assert table[0] == "| model | ndcg_at_10 | rmse | train time (s) | MLflow run |"
    assert table[2].startswith("| mf | 0.2000 [0.1500, 0.2500] | 0.9500 | 3.0 | mf-3000 ")
    assert table[3].startswith("| ncf | 0.0500 | - | 12.3 | ncf-2000 ")
    assert len(table) == 4


def test_only_the_runs_of_one_sweep(experiment):
    name, ids, client, exp = experiment
    child = _run(client, exp, "mf", 500, {"ndcg_at_10": 0.3}, **{"mlflow.parentRunId": ids["parent"]})
    runs = latest_runs(name, parent_run_id=ids["parent"])
    assert [r.run_id for r in runs] == [child]


def test_replace_block_keeps_the_rest():
    text = f"# Title\n\nintro\n{START}\nold table\n{END}\n\nmore\n"
    once = replace_block(text, "| new |\n")
    assert once == f"# Title\n\nintro\n{START}\n| new |\n{END}\n\nmore\n"
    assert replace_block(once, "| new |\n") == once
    with pytest.raises(RecpipeError, match="results:start"):
        replace_block("# no markers\n", "| new |\n")


def test_cli_updates_readme(experiment, tmp_path, capsys):
    name, ids, _, _ = experiment
    readme = tmp_path / "README.md"
    readme.write_text(f"# recpipe\n{START}\n{END}\n")
    assert main(["report", "--experiment", name, "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| mf | 0.2000 [0.1500, 0.2500]" in text and ids["ncf"][:8] in text
    assert main(["report", "--experiment", name, "--metrics", "rmse"]) == 0
    out = capsys.readouterr().out
    assert "| model | rmse | train time (s) | MLflow run |" in out
    assert "ncf" not in out.split("MLflow run |", 1)[1]  # ncf has no rmse: no row


def test_cli_errors_without_runs(capsys):
    assert main(["report", "--experiment", f"missing-{uuid.uuid4().hex[:8]}"]) == 2
    assert "no MLflow experiment" in capsys.readouterr().err
