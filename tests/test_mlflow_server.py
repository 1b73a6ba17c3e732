"""MLflow's server against a sweep's database: the REST API has the runs, the UI renders them."""

from __future__ import annotations

import importlib.util
import struct
import sys

import pytest

from .helpers import JOB_METRICS, MODELS, REPO, SMALL_SWEEP, check_sweep, recpipe_run, run

pytestmark = pytest.mark.integration

SCRIPT = REPO / "scripts" / "mlflow_screenshot.py"
_spec = importlib.util.spec_from_file_location("mlflow_screenshot", SCRIPT)
shot = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shot)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished three-model sweep run by two parallel workers; its working directory."""
    workdir = tmp_path_factory.mktemp("served")
    recpipe_run(
        workdir, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"model={','.join(MODELS)}", *SMALL_SWEEP
    )
    return workdir


def test_parallel_workers_lose_no_run_or_metric(sweep):
    check_sweep(sweep, list(MODELS))


@pytest.fixture(scope="module")
def server(sweep):
    with shot.mlflow_server(f"sqlite:///{sweep / 'mlflow.db'}") as base:
        yield base


def test_rest_api_lists_the_sweep_and_its_child_runs(server):
    exp = shot.api(server, "GET", "experiments/get-by-name", experiment_name="recpipe")["experiment"]
    ids = [exp["experiment_id"]]
    parents = shot.api(server, "POST", "runs/search", experiment_ids=ids, filter="tags.`recpipe.sweep_dir` != ''")[
        "runs"
    ]
    assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
    parent_id = parents[0]["info"]["run_id"]
    children = shot.api(
        server, "POST", "runs/search", experiment_ids=ids, filter=f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in children]
    assert sorted(t["model"] for t in tags) == sorted(MODELS)
    for r in children:
        metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
        assert set(metrics) >= JOB_METRICS
        params = {p["key"]: p["value"] for p in r["data"]["params"]}
        assert params["data.source"] == "synthetic"
        history = shot.api(server, "GET", "metrics/get-history", run_id=r["info"]["run_id"], metric_key="ndcg_at_10")
        assert [m["value"] for m in history["metrics"]] == [metrics["ndcg_at_10"]]


@pytest.mark.slow
def test_screenshot_of_the_comparison_page(server, tmp_path):
    out = tmp_path / "compare.png"
    proc = run([sys.executable, str(SCRIPT), "--server", server, "--output", str(out)], tmp_path)
    assert all(m in proc.stdout for m in MODELS)  # the script waited until the page named each run
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 1200 and height >= 800
    assert len(png) > 50_000  # a rendered page, not a blank one
