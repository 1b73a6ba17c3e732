"""`recpipe run`: Hydra jobs and sweeps with shared data, MLflow parent/child runs, Optuna."""

from __future__ import annotations

import time

import mlflow
import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from recpipe import tracking
from recpipe.cli import main
from recpipe.sweep import PROCESSED_SECTIONS, RAW_SECTIONS, prepare_data, section_hash

from .helpers import MODELS, REPO, SMALL, SMALL_SWEEP, check_sweep, commit, copy_repo, recpipe_run, run, sweep_runs

TINY_DATA = {"n_users": 60, "n_items": 40, "n_interactions": 900}


def data_cfg(**split):
    """The sections the data stages read: tiny synthetic data, a random split."""
    cfg = OmegaConf.create(
        {
            "data": OmegaConf.load(REPO / "conf/data/synthetic.yaml"),
            "split": OmegaConf.load(REPO / "conf/split/random.yaml"),
            "preprocess": OmegaConf.load(REPO / "conf/config.yaml").preprocess,
            "model": {"name": "mf"},
        }
    )
    cfg.data.update(TINY_DATA)
    cfg.split.update(split)
    return cfg


def test_section_hash_follows_sections_and_named_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = data_cfg()
    same = data_cfg()
    same.model.name = "ncf"  # not a data section
    assert section_hash(cfg, PROCESSED_SECTIONS) == section_hash(same, PROCESSED_SECTIONS)
    other_split = data_cfg(seed=7)
    assert section_hash(cfg, RAW_SECTIONS) == section_hash(other_split, RAW_SECTIONS)
    assert section_hash(cfg, PROCESSED_SECTIONS) != section_hash(other_split, PROCESSED_SECTIONS)

    # a source file's content is part of the key, not only its name
    files = OmegaConf.create({"data": {"source": "files", "interactions": "ratings.csv"}})
    (tmp_path / "ratings.csv").write_text("user_id,item_id\n1,2\n")
    before = section_hash(files, RAW_SECTIONS)
    (tmp_path / "ratings.csv").write_text("user_id,item_id\n1,2\n3,4\n")
    assert section_hash(files, RAW_SECTIONS) != before


def _prepare_in_run(cfg, cache):
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("t-sweep-cache")) as run:
        root = prepare_data(cfg, cache)
    return root, mlflow.get_run(run.info.run_id).data.metrics


def test_data_is_built_once_per_config_and_runs_get_its_metrics(tmp_path):
    cache = tmp_path / "cache"
    first, metrics = _prepare_in_run(data_cfg(), cache)
    processed = first / "data" / "processed"
    stamp = (processed / "train.parquet").stat().st_mtime_ns
    assert metrics["raw_interactions"] == TINY_DATA["n_interactions"]
    assert "data.splits.train.interactions" in metrics

    again, metrics_again = _prepare_in_run(data_cfg(), cache)
    assert again == first
    assert (processed / "train.parquet").stat().st_mtime_ns == stamp  # not rebuilt
    assert metrics_again == metrics  # replayed from the cache

    # another split: preprocess again on the same raw data
    other, _ = _prepare_in_run(data_cfg(seed=7), cache)
    assert other != first
    assert len(list((cache / "raw").glob("*/"))) == 1
    assert (other / "data" / "raw").resolve() == (first / "data" / "raw").resolve()
    assert (other / "data/processed/test.parquet").read_bytes() != (processed / "test.parquet").read_bytes()


def test_cache_keys_cover_the_data_stages_params_in_dvc_yaml():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage, sections in (("ingest", RAW_SECTIONS), ("preprocess", PROCESSED_SECTIONS)):
        for param in stages[stage]["params"]:
            assert str(param).split(".")[0] in sections, (stage, param)


# --- `recpipe run` end to end: real jobs on tiny synthetic data -------------------------------


@pytest.fixture(scope="module")
def model_sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sweep")
    proc = recpipe_run(workdir, "-m", f"model={','.join(MODELS)}", *SMALL_SWEEP)
    return workdir, proc


@pytest.mark.integration
def test_model_sweep_one_child_run_per_job(model_sweep):
    workdir, proc = model_sweep
    children = check_sweep(workdir, list(MODELS))
    # the three jobs share one preprocessed data set, built by the first
    assert len(list((workdir / "outputs/cache/processed").glob("*/"))) == 1
    assert (proc.stdout + proc.stderr).count("split=random: wrote") == 1
    data_metrics = [{k: v for k, v in r.data.metrics.items() if k.startswith("data.")} for r in children]
    assert data_metrics[0] and all(m == data_metrics[0] for m in data_metrics)


@pytest.mark.slow
@pytest.mark.integration
def test_queued_dvc_experiments_log_to_the_repository_database(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: <repo>/mlflow.db
        run(["recpipe", "compose", "model=mf", *SMALL], repo)
        commit(repo, "small config")
        # DVC composes params.yaml from conf/ and the -S overrides alone
        small = [a for o in SMALL for a in ("-S", o)]
        run(["dvc", "exp", "run", "--queue", *small, "-S", f"model={','.join(MODELS)}"], repo)
        run(["dvc", "queue", "start"], repo)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], repo).stdout
            if not any(s in status for s in ("Queued", "Running")):
                break
            time.sleep(3)
        assert status.count("Success") == len(MODELS), status
        shown = run(["dvc", "exp", "show", "--no-pager", "--md"], repo).stdout
    assert all(f"| {m} " in shown for m in MODELS), shown
    # each queued experiment ran in a copy under .dvc/tmp/exps, yet logged here
    assert not list((repo / ".dvc").rglob("mlflow.db"))
    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("recpipe").experiment_id])
    assert sorted(r.data.tags["model"] for r in runs) == sorted(MODELS)
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
@pytest.mark.integration
def test_optuna_search_improves_on_the_default_config(tmp_path, monkeypatch, capsys):
    recpipe_run(tmp_path, "model=mf", *SMALL)  # one job, not a sweep: a run without a parent
    parents, [default] = sweep_runs(tmp_path)
    assert not parents and "mlflow.parentRunId" not in default.data.tags

    n_trials = 4
    recpipe_run(tmp_path, "hparams_search=mf", f"hydra.sweeper.n_trials={n_trials}", *SMALL)
    [parent], runs = sweep_runs(tmp_path)
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == n_trials and len(runs) == n_trials + 1
    results = OmegaConf.load(tmp_path / parent.data.tags["recpipe.sweep_dir"] / "optimization_results.yaml")
    values = [t.data.metrics["objective"] for t in trials]
    assert results.best_value == pytest.approx(min(values))
    assert parent.data.metrics["best_value"] == pytest.approx(results.best_value)
    assert results.best_value < default.data.metrics["objective"]
    # `recpipe report` shows the search's best trial, labelled, not its last trial
    best = min(trials, key=lambda t: t.data.metrics["objective"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["report", "--all"]) == 0
    # the trials evaluate no baselines (conf/hparams_search/*.yaml): a group of their own
    out = capsys.readouterr().out.splitlines()
    [mf_row] = [line for line in out if line.startswith("| mf |") and "best of" in line]
    assert best.info.run_id[:8] in mf_row and f"(best of {n_trials} trials by val_rmse)" in mf_row
