"""Two `recpipe run -m` started at the same moment: separate folders, separate parent runs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recpipe.sweep import new_invocation_id

from .helpers import BIN, REPO, env

pytestmark = pytest.mark.integration  # real dvc / recpipe subprocesses

TINY = [
    "model=mf",
    "data=synthetic",
    "data.n_users=60",
    "data.n_items=40",
    "data.n_interactions=900",
    "model.epochs=1",
    "evaluate.ks=[10]",
    "evaluate.baselines=[popularity]",
    "evaluate.bootstrap.n_resamples=20",
]
SWEEPS = {"a": "model.embedding_dim=4,8", "b": "model.embedding_dim=12,16"}


def test_invocation_ids_are_unique():
    ids = {new_invocation_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_concurrent_sweeps_never_share_a_folder_or_a_parent(tmp_path):
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    e = env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    procs = {
        name: subprocess.Popen(
            [str(BIN / "recpipe"), "run", "-m", sweep, *TINY],
            cwd=tmp_path,
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, sweep in SWEEPS.items()
    }
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("recpipe").experiment_id], max_results=100)
    parents = [r for r in runs if "recpipe.sweep_dir" in r.data.tags]
    assert len(parents) == 2 and len(runs) == 6
    assert len({r.info.run_name for r in runs}) == 6  # unique run names
    folders = {Path(p.data.tags["recpipe.sweep_dir"]) for p in parents}
    assert len(folders) == 2
    for parent in parents:
        assert parent.info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2
        # each parent has exactly its own jobs: same invocation, same sweep override, jobs in its folder
        assert {c.data.tags["recpipe.invocation"] for c in children} == {parent.data.tags["recpipe.invocation"]}
        sweep = parent.data.tags["recpipe.overrides"].split()[0]
        assert sweep in SWEEPS.values()
        dims = sorted(c.data.params["model.embedding_dim"] for c in children)
        assert dims == sorted(sweep.split("=")[1].split(","))
        folder = tmp_path / parent.data.tags["recpipe.sweep_dir"]
        assert {Path(c.data.tags["recpipe.job_dir"]).resolve() for c in children} == {
            (folder / str(n)).resolve() for n in range(2)
        }
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["0", "1"]
