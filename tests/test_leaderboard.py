"""`recpipe report`: like-for-like tables (one per data set, split and common config), sweeps shown
by their best trial, README's table generated from the committed params.yaml's config."""

from __future__ import annotations

import re
import uuid

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from recpipe import tracking
from recpipe.cli import main
from recpipe.config import load_params
from recpipe.errors import RecpipeError
from recpipe.leaderboard import END, START, evaluated_runs, group_runs, readme_config_hash, replace_block

from .helpers import REPO

ML100K = {
    tracking.TAG_FINGERPRINT: "a" * 32,
    tracking.TAG_SPLIT: "random",
    tracking.TAG_COMMON: "c0ffee",
    tracking.TAG_DATA: "ml-100k",
}
OWN_CSV = {
    tracking.TAG_FINGERPRINT: "b" * 32,
    tracking.TAG_SPLIT: "random",
    tracking.TAG_COMMON: "beef00",
    tracking.TAG_DATA: "files:my.csv",
}


def _run(client, exp, model, start, metrics, status="FINISHED", **tags):
    tags = {**({"model": model} if model else {}), **tags}
    run = client.create_run(exp, start_time=start, tags=tags, run_name=f"{model}-{start}")
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def experiment():
    """A fresh experiment: ML-100K runs (mf twice, ncf, an Optuna-like mf sweep) and a newer mf run
    on one's own CSV, plus runs the report must skip."""
    name = f"report-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking.tracking_uri())
    exp = client.create_experiment(name)
    base = {
        "baseline.popularity.ndcg_at_10": 0.11,
        "baseline.popularity.recall_at_10": 0.12,
        "baseline.popularity.precision_at_10": 0.5,
    }  # not a headline baseline metric: not shown
    ids = {
        "mf_old": _run(client, exp, "mf", 1000, {"ndcg_at_10": 0.1, "rmse": 1.2}, **ML100K),
        "ncf": _run(client, exp, "ncf", 2000, {"ndcg_at_10": 0.05, "train_seconds": 12.34}, **ML100K),
        "mf_new": _run(
            client,
            exp,
            "mf",
            3000,
            {
                "ndcg_at_10": 0.2,
                "ndcg_at_10_ci_low": 0.15,
                "ndcg_at_10_ci_high": 0.25,
                "rmse": 0.95,
                "train_seconds": 3.0,
                **base,
            },
            **ML100K,
        ),
        "mf_csv": _run(client, exp, "mf", 4000, {"ndcg_at_10": 0.045}, **OWN_CSV),
        # never shown: not evaluated / failed
        "mf_ingest_only": _run(client, exp, "mf", 5000, {"raw_interactions": 100.0}, **ML100K),
        "mf_failed": _run(client, exp, "mf", 6000, {"ndcg_at_10": 0.9}, status="FAILED", **ML100K),
        "parent": _run(client, exp, None, 7000, {"best_value": 0.8}, **{"recpipe.sweep_dir": "x"}),
    }
    return name, ids, client, exp


def test_groups_never_share_a_table(experiment):
    name, ids, _, _ = experiment
    groups = group_runs(evaluated_runs(name, ["ndcg_at_10"]))
    by_data = {g.key.data: g for g in groups}
    assert list(by_data) == ["files:my.csv", "ml-100k"]  # newest group first
    assert [(r.model, r.run_id) for r in by_data["ml-100k"].rows] == [("mf", ids["mf_new"]), ("ncf", ids["ncf"])]
    assert [r.run_id for r in by_data["files:my.csv"].rows] == [ids["mf_csv"]]
    assert by_data["ml-100k"].baselines == {"popularity": {"ndcg_at_10": 0.11, "recall_at_10": 0.12}}


def test_sweep_shows_its_best_trial_labelled(experiment):
    name, ids, client, exp = experiment
    child = {**ML100K, "mlflow.parentRunId": ids["parent"], "recpipe.objective": "val_rmse"}
    trials = {
        v: _run(client, exp, "mf", 8000 + i, {"ndcg_at_10": 0.3 + i / 100, "objective": v}, **child)
        for i, v in enumerate([0.9, 0.8, 0.95])
    }
    [group] = [g for g in group_runs(evaluated_runs(name, ["ndcg_at_10"])) if g.key.data == "ml-100k"]
    mf = next(r for r in group.rows if r.model == "mf")
    assert mf.run_id == trials[0.8] and mf.label == "best of 3 trials by val_rmse"  # lowest rmse, not the last
    # the sweep's own direction wins over the name's
    [group] = [
        g
        for g in group_runs(evaluated_runs(name, ["ndcg_at_10"]), {ids["parent"]: "maximize"})
        if g.key.data == "ml-100k"
    ]
    assert next(r for r in group.rows if r.model == "mf").run_id == trials[0.95]


def test_cli_default_is_the_params_config_and_all_shows_each_group(experiment, tmp_path, capsys):
    name, ids, _, _ = experiment
    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")
    assert main(["report", "--experiment", name, "--params", str(params)]) == 2
    assert "--all shows every group" in capsys.readouterr().err

    assert main(["report", "--experiment", name, "--all"]) == 0
    out = capsys.readouterr().out
    tables = out.split("Data `")[1:]
    assert len(tables) == 2
    assert "0.0450" in tables[0] and "ml-100k" not in tables[0]
    assert "| mf | 0.2000 [0.1500, 0.2500] | 0.9500 | 3.0 | mf-3000 " in tables[1] and "0.0450" not in tables[1]
    assert "| baseline: popularity | 0.1100 | - |" in tables[1]

    assert main(["report", "--experiment", name, "--dataset", "bbbb", "--params", str(params)]) == 0
    assert capsys.readouterr().out.count("Data `") == 1
    assert main(["report", "--experiment", name, "--split", "temporal"]) == 2


def test_cli_updates_readme_with_one_group_and_its_config_hash(experiment, tmp_path, capsys):
    name, ids, _, _ = experiment
    readme = tmp_path / "README.md"
    readme.write_text(f"# recpipe\n{START}\n{END}\n")
    assert main(["report", "--experiment", name, "--all", "--update-readme", str(readme)]) == 2
    assert "2 groups of runs match" in capsys.readouterr().err
    assert main(["report", "--experiment", name, "--dataset", "ml-100k", "--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert readme_config_hash(text) == "c0ffee"
    assert "| mf | 0.2000 [0.1500, 0.2500]" in text and ids["ncf"][:8] in text and "0.0450" not in text


def test_replace_block_keeps_the_rest():
    text = f"# Title\n\nintro\n{START}\nold table\n{END}\n\nmore\n"
    once = replace_block(text, "| new |\n")
    assert once == f"# Title\n\nintro\n{START}\n| new |\n{END}\n\nmore\n"
    assert replace_block(once, "| new |\n") == once
    with pytest.raises(RecpipeError, match="results:start"):
        replace_block("# no markers\n", "| new |\n")


def test_cli_errors_without_runs(capsys):
    assert main(["report", "--experiment", f"missing-{uuid.uuid4().hex[:8]}"]) == 2
    assert "no MLflow experiment" in capsys.readouterr().err


def test_common_config_hash_ignores_model_and_export():
    cfg = load_params(REPO / "params.yaml")
    other = OmegaConf.merge(cfg, {"model": {"name": "ncf"}, "export": {"max_k": 5}})
    assert tracking.common_config_hash(other) == tracking.common_config_hash(cfg)
    assert tracking.common_config_hash(OmegaConf.merge(cfg, {"split": {"seed": 7}})) != tracking.common_config_hash(cfg)


def test_readme_results_come_from_the_committed_params():
    """README's table was generated (recpipe report --update-readme) from runs of the committed
    params.yaml's data, split, evaluation and seed, and lists every model and the baselines."""
    text = (REPO / "README.md").read_text()
    block = text[text.index(START) : text.index(END)]
    expected = re.search(r"^MODELS := (.+)$", (REPO / "Makefile").read_text(), flags=re.M)[1]  # make results
    assert readme_config_hash(block) == tracking.common_config_hash(load_params(REPO / "params.yaml")), (
        f"README's results are from another config: run `recpipe run -m model={expected}` "
        "and `recpipe report --update-readme`"
    )
    models = re.findall(r"^\| (\w+) \|", block, flags=re.M)
    assert sorted(models) == sorted([*expected.split(","), "model"])  # "model": the header
    baselines = re.findall(r"^\| baseline: (\w+) \|", block, flags=re.M)
    assert sorted(baselines) == sorted(load_params(REPO / "params.yaml").evaluate.baselines)
