"""One complete MLflow run per pipeline execution, whatever DVC ran, skipped or restored (real DVC,
real MLflow on sqlite, tiny synthetic data)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from recpipe import lineage, tracking
from recpipe.config import load_params
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS
from recpipe.pipeline import STAGE_NAMES

from .helpers import BIN, commit, copy_repo, env, run
from .helpers import SMALL as HELPERS_SMALL

pytestmark = pytest.mark.integration  # real dvc / recpipe subprocesses

SMALL = ["model=mf", *HELPERS_SMALL, "evaluate.bootstrap.n_resamples=50"]  # small pipeline, quick bootstrap
# what every pipeline run holds besides the headline metrics
DATA_METRICS = {"data.splits.train.interactions", "data.raw.interactions"}
TRAIN_METRICS = {"best_val_rmse", "train_seconds", "n_params"}
LINEAGE_TAGS = {
    "git_commit",
    "git_dirty",
    "dvc.data/raw",
    "dvc.data/processed",
    tracking.TAG_FINGERPRINT,
    tracking.TAG_COMMON,
    tracking.TAG_DATA,
    tracking.TAG_SPLIT,
    tracking.TAG_PID,
    tracking.TAG_HOST,
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("tracking") / "repo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
        run(["recpipe", "compose", *SMALL], repo)
        commit(repo, "small config")
        yield repo


@pytest.fixture
def client(repo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    return MlflowClient(tracking.tracking_uri())


def runs(client) -> list:
    """All runs of experiment recpipe, newest first."""
    exp = client.get_experiment_by_name("recpipe")
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=100)


def repro(repo, *compose_args: str) -> str:
    """Compose params.yaml (SMALL + args), `dvc repro`, and return its output."""
    run(["recpipe", "compose", *SMALL, *compose_args], repo)
    proc = run(["dvc", "repro"], repo)
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return [s for s in STAGE_NAMES if f"Running stage '{s}'" in output]


def assert_complete(run_, repo) -> None:
    """The run holds the headline set (as on disk), data statistics, train summary, config,
    lineage tags and datasets."""
    assert run_.info.status == "FINISHED"
    metrics = run_.data.metrics
    detail = json.loads((repo / "reports/detail.json").read_text())
    headline = tracking.headline_metrics(detail)
    assert set(HEADLINE_METRICS) <= set(headline)
    assert {f"baseline.popularity.{k}" for k in HEADLINE_BASELINE_METRICS} <= set(headline)
    assert {k: metrics.get(k) for k in headline} == pytest.approx(headline)
    assert set(metrics) >= DATA_METRICS | TRAIN_METRICS
    assert run_.data.params["model.epochs"] == str(load_params(repo / "params.yaml").model.epochs)
    assert set(run_.data.tags) >= LINEAGE_TAGS, LINEAGE_TAGS - set(run_.data.tags)
    lock = lineage.read_lock(repo)
    processed = next(o["md5"] for o in lock["preprocess"]["outs"] if o["path"] == "data/processed")
    assert run_.data.tags["dvc.data/processed"] == processed
    assert run_.data.tags[tracking.TAG_FINGERPRINT] == processed.removesuffix(".dir")
    contexts = {i.tags[0].value: i.dataset.name for i in run_.inputs.dataset_inputs}
    assert contexts == {"training": "synthetic/random/train", "evaluation": "synthetic/random/test"}


def test_full_repro_is_one_complete_run(repo, client):
    out = repro(repo)
    assert ran(out) == list(STAGE_NAMES)
    [only] = runs(client)
    assert_complete(only, repo)
    assert only.data.tags["recpipe.first_stage"] == "ingest" and only.data.tags["recpipe.last_stage"] == "export"
    assert only.info.run_name.startswith("mf-") and only.info.run_name.endswith("-1")
    # every output of every stage, as dvc.lock records it (export's too, hashed before DVC wrote it)
    assert {f"dvc.{p}": h for p, h in lineage.locked_hashes(set(STAGE_NAMES), repo).items()} == {
        k: v for k, v in only.data.tags.items() if k.startswith("dvc.")
    }


def test_repro_of_train_alone_holds_the_downstream_metrics(repo, client):
    """A change to train's code only: train re-runs with an identical model, DVC skips evaluate and
    export as unchanged (the case of `dvc exp run` where evaluate's result is current); the run
    (train alone) still holds evaluate's metrics, whose inputs are exactly what train just wrote."""
    stage = repo / "src/recpipe/stages/train.py"
    stage.write_text(stage.read_text() + "# a comment\n")
    commit(repo, "comment in the train stage")
    out = repro(repo)
    assert ran(out) == ["train"]
    latest = runs(client)[0]
    assert latest.data.tags["recpipe.first_stage"] == latest.data.tags["recpipe.last_stage"] == "train"
    assert_complete(latest, repo)


def test_only_export_runs(repo, client):
    out = repro(repo, "export.max_k=50")
    assert ran(out) == ["export"]
    latest = runs(client)[0]
    assert latest.data.tags["recpipe.first_stage"] == "export"
    assert_complete(latest, repo)


def test_outputs_of_another_config_are_not_logged(repo, client):
    """A changed model config makes train, evaluate and export's outputs stale: a stage run by hand
    (no dvc repro) logs none of them."""
    cfg = load_params(repo / "params.yaml")
    every_stage = set(lineage.read_lock(repo))  # the pipeline's stages and the plots page
    assert lineage.consistent_stages(cfg, None, repo) == every_stage
    # files .dvcignore excludes count as little as for DVC
    ignore, cache = repo / ".dvcignore", repo / "src/recpipe/models/__pycache__"
    text = ignore.read_text()
    ignore.write_text(text + "__pycache__\n")
    cache.mkdir()
    (cache / "base.cpython-311.pyc").write_bytes(b"\0")
    try:
        assert lineage.consistent_stages(cfg, None, repo) == every_stage
    finally:
        ignore.write_text(text)
        shutil.rmtree(cache)
    cfg.model.epochs = 7
    assert lineage.consistent_stages(cfg, None, repo) == {"ingest", "preprocess", "plots_page"}
    # right after train ran with this config: downstream stages count when their inputs are
    # train's new outputs (an identical model), not when train wrote something else
    assert lineage.consistent_stages(cfg, "train", repo) == every_stage
    saved = repo / "models/train/model/model_config.json"
    before = saved.read_bytes()
    saved.write_bytes(before + b" ")
    try:
        assert lineage.consistent_stages(cfg, "train", repo) == {"ingest", "preprocess", "train", "plots_page"}
    finally:
        saved.write_bytes(before)
    cfg.data.n_users = 201
    assert lineage.consistent_stages(cfg, None, repo) == {"plots_page"}  # it reads code only


def test_killed_stage_leaves_no_running_run(repo, client):
    """SIGKILL of a stage: its run is marked KILLED by the next recpipe process."""
    run(["recpipe", "compose", *SMALL, "model.epochs=100000", "model.patience=100000"], repo)
    proc = subprocess.Popen(
        [str(BIN / "recpipe"), "train"], cwd=repo, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not [r for r in runs(client) if r.info.status == "RUNNING"]:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [killed] = [r for r in runs(client) if r.info.status == "RUNNING"]
    assert killed.data.tags[tracking.TAG_PID].startswith(f"{proc.pid}:")
    run(["recpipe", "compose", *SMALL], repo)
    run(["recpipe", "report", "--all"], repo)  # any recpipe command that opens the store
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert not [r for r in runs(client) if r.info.status == "RUNNING"]
