"""The stores a team shares (docs/scale-out.md): an MLflow tracking server on PostgreSQL with
authentication (scripts/mlflow_server.py), and a DVC remote.

A real PostgreSQL (a temporary cluster on a free port) and a real ``mlflow server --app-name
basic-auth`` on 127.0.0.1; the pipeline and a parallel sweep log to it over HTTP as user alice; bob
is refused on alice's experiment, anonymous requests are refused. The same pipeline's outputs go
through a local directory DVC remote into a fresh clone.
"""

from __future__ import annotations

import importlib.util
import json
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.server.auth.client import AuthServiceClient

from recpipe import tracking
from recpipe.errors import RecpipeError
from recpipe.tracking_server import check_server

from .helpers import (
    MODELS,
    REPO,
    SMALL,
    SMALL_SWEEP,
    check_sweep,
    commit,
    copy_repo,
    dvc_status,
    recpipe_run,
    run,
    snapshot,
)

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location("mlflow_server", REPO / "scripts" / "mlflow_server.py")
srv = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))  # (its dataclass looks itself up)
_spec.loader.exec_module(srv)

USERS = ("alice", "bob")
DVC_OUTPUTS = ("data/raw", "data/processed", "models/train", "reports", "models/export", "views")


@dataclass(frozen=True)
class Server:
    url: str
    passwords: dict[str, str]  # user -> password (admin included)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """PostgreSQL and the MLflow server with basic auth, users alice and bob; both stopped (by PID) at the end."""
    state = Path(tempfile.mkdtemp(prefix="recpipe-mlflow-server-"))  # in /tmp: the postgres user reaches it
    state.chmod(0o711)
    passwords = {user: secrets.token_urlsafe(12) for user in ("admin", *USERS)}
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", passwords["admin"])
            mp.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(16))
            with (
                srv.postgres(state) as pg,
                srv.tracking_server(state, pg.uri("mlflow"), pg.uri("mlflow_auth"), db_password=pg.password) as url,
            ):
                _login(mp, url, "admin", passwords["admin"])
                for user in USERS:
                    AuthServiceClient(url).create_user(user, passwords[user])
                for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                    mp.delenv(name)
                yield Server(url, passwords)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _login(mp: pytest.MonkeyPatch, url: str, user: str, password: str) -> None:
    mp.setenv("MLFLOW_TRACKING_URI", url)
    mp.setenv("MLFLOW_TRACKING_USERNAME", user)
    mp.setenv("MLFLOW_TRACKING_PASSWORD", password)


@pytest.fixture
def alice(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowClient]:
    """Logged in as alice (the environment of this test and its subprocesses); her client."""
    _login(monkeypatch, server.url, "alice", server.passwords["alice"])
    # in-process MLflow calls too (models:/ URIs): an earlier test's mlflow.set_tracking_uri outlives its env
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    yield MlflowClient(server.url)
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def pipeline(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy where alice ran `dvc repro` (helpers.SMALL) against the server; dvc.lock committed."""
    repo = copy_repo(tmp_path_factory.mktemp("shared") / "repo")
    run(["recpipe", "compose", "model=mf", *SMALL], repo)
    with pytest.MonkeyPatch.context() as mp:
        _login(mp, server.url, "alice", server.passwords["alice"])
        run(["dvc", "repro"], repo)
    commit(repo, "dvc.lock")
    return repo


def _artifacts(client: MlflowClient, run_id: str, path: str, dest: Path) -> dict[str, bytes]:
    """The run's artifacts under ``path``, downloaded through the server: {path: bytes}."""
    local = Path(
        download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dest), tracking_uri=client.tracking_uri)
    )
    files = [local] if local.is_file() else sorted(f for f in local.rglob("*") if f.is_file())
    return {str(f.relative_to(dest)): f.read_bytes() for f in files}


def test_pipeline_run_loses_no_metric_or_artifact(pipeline: Path, alice: MlflowClient, tmp_path: Path):
    exp = alice.get_experiment_by_name("recpipe")
    (run_,) = alice.search_runs([exp.experiment_id])
    assert run_.info.status == "FINISHED"
    assert (run_.data.tags["recpipe.first_stage"], run_.data.tags["recpipe.last_stage"]) == ("ingest", "export")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # served by the server, not a local path
    expected = {
        **tracking.stats_metrics(json.loads((pipeline / "data/processed/stats.json").read_text())),
        **tracking.train_metrics(json.loads((pipeline / "models/train/train_summary.json").read_text())),
        **tracking.headline_metrics(json.loads((pipeline / "reports/detail.json").read_text())),
    }
    assert {k: run_.data.metrics.get(k) for k in expected} == pytest.approx(expected)
    reports = _artifacts(alice, run_.info.run_id, "reports", tmp_path)
    assert reports == {str(f.relative_to(pipeline)): b for f, b in _files(pipeline / "reports")}
    summary = _artifacts(alice, run_.info.run_id, "train_summary.json", tmp_path)
    assert summary == {"train_summary.json": (pipeline / "models/train/train_summary.json").read_bytes()}
    (version,) = alice.search_model_versions("name = 'recpipe'")
    assert version.run_id == run_.info.run_id


def _files(folder: Path) -> list[tuple[Path, bytes]]:
    return [(f, f.read_bytes()) for f in sorted(folder.rglob("*")) if f.is_file()]


def test_registered_model_is_served_from_the_server(pipeline: Path, alice: MlflowClient):
    from recpipe.serving.load import load_export, recommend
    from recpipe.serving.runtime import ModelSource, load

    registered = load(ModelSource.parse("models:/recpipe/1"))
    users = ["1", "2", "unknown-user"]
    assert registered.metadata["run_id"] == alice.search_model_versions("name = 'recpipe'")[0].run_id
    assert recommend(registered.module, users, 5).equals(recommend(load_export(pipeline / "models/export"), users, 5))


def test_parallel_sweep_loses_no_run_or_metric(alice: MlflowClient, server: Server, tmp_path: Path):
    models = list(MODELS[:2])
    recpipe_run(
        tmp_path,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"model={','.join(models)}",
        "mlflow.experiment=sweep",
        *SMALL_SWEEP,
        tracking_uri=server.url,
    )
    children = check_sweep(tmp_path, models, tracking_uri=server.url, experiment="sweep")
    sweep_dir = alice.get_run(children[0].data.tags["mlflow.parentRunId"]).data.tags["recpipe.sweep_dir"]
    for child in children:
        job = tmp_path / sweep_dir / child.data.tags["recpipe.job_num"]
        detail = _artifacts(alice, child.info.run_id, "reports/detail.json", tmp_path / child.info.run_id)
        assert detail == {"detail.json": (job / "reports/detail.json").read_bytes()}


def test_request_without_credentials_is_refused(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    answer = requests.get(f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=recpipe", timeout=30)
    assert answer.status_code == 401
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    proc = run(["recpipe", "report"], tmp_path, check=False)
    assert proc.returncode == 2
    assert "refused the credentials of no user" in proc.stderr and "MLFLOW_TRACKING_USERNAME" in proc.stderr


def test_another_users_experiment_is_refused(pipeline: Path, server: Server, monkeypatch: pytest.MonkeyPatch):
    _login(monkeypatch, server.url, "bob", server.passwords["bob"])
    api = f"{server.url}/api/2.0/mlflow"
    bob = ("bob", server.passwords["bob"])
    exp = requests.get(f"{api}/experiments/get-by-name", params={"experiment_name": "recpipe"}, auth=bob, timeout=30)
    assert exp.status_code == 403
    alice = ("alice", server.passwords["alice"])
    exp_id = requests.get(
        f"{api}/experiments/get-by-name", params={"experiment_name": "recpipe"}, auth=alice, timeout=30
    ).json()["experiment"]["experiment_id"]
    runs = requests.post(f"{api}/runs/search", json={"experiment_ids": [exp_id]}, auth=alice, timeout=30).json()
    run_id = runs["runs"][0]["info"]["run_id"]
    metric = {"run_id": run_id, "key": "ndcg_at_10", "value": 1.0, "timestamp": 0}
    assert requests.post(f"{api}/runs/log-metric", json=metric, auth=bob, timeout=30).status_code == 403
    assert requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=bob, timeout=30).status_code == 403
    with pytest.raises(
        RecpipeError, match=r"user 'bob' has no permission on the MLflow experiment 'recpipe' \(HTTP 403\)"
    ):
        check_server(server.url, "recpipe")  # what recpipe checks before it logs as bob
    _login(monkeypatch, server.url, "admin", server.passwords["admin"])
    AuthServiceClient(server.url).grant_user_permission("bob", "experiment", exp_id, "READ")
    assert requests.get(f"{api}/runs/get", params={"run_id": run_id}, auth=bob, timeout=30).status_code == 200
    assert requests.post(f"{api}/runs/log-metric", json=metric, auth=bob, timeout=30).status_code == 403


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(RecpipeError, match="the MLflow server does not answer"):
        check_server(f"http://127.0.0.1:{srv.free_port()}", "recpipe")  # at once, no retries


def test_dvc_remote_restores_every_output_into_a_fresh_clone(pipeline: Path, tmp_path: Path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], pipeline)
    commit(pipeline, "DVC remote")
    run(["dvc", "push"], pipeline)
    assert dvc_status(pipeline, "--cloud") == {}  # everything the lock names is in the remote
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(pipeline), str(clone)], tmp_path)
    assert not any((clone / out).exists() for out in DVC_OUTPUTS)
    run(["dvc", "pull"], clone)
    assert dvc_status(clone) == {}  # up to date: nothing to re-run
    outputs = [pipeline / out for out in DVC_OUTPUTS]
    restored = snapshot(*(clone / out for out in DVC_OUTPUTS))
    assert restored == {k.replace(str(pipeline), str(clone), 1): v for k, v in snapshot(*outputs).items()}
    assert restored  # data, model and reports
