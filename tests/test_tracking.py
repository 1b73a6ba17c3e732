"""One pipeline run = one MLflow run across the stages of one dvc repro."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import mlflow
import pytest
from omegaconf import OmegaConf

from recpipe.tracking import (
    TAG_HOST,
    TAG_PID,
    config_hash,
    create_run,
    ensure_experiment,
    flatten,
    log_metrics,
    pipeline_run,
    process_alive,
    process_id,
    process_tags,
    reap_dead_runs,
    session_id,
)


@pytest.fixture
def cfg():
    return OmegaConf.create({"seed": 1, "model": {"name": "mf", "dim": 8}, "mlflow": {"experiment": "t-tracking"}})


def _run(cfg, stage):
    with pipeline_run(cfg, stage) as run:
        log_metrics({f"{stage}_done": 1.0})
        return run.info.run_id


def test_stages_of_one_repro_share_a_run(tmp_path, monkeypatch, cfg):
    monkeypatch.chdir(tmp_path)
    ids = [_run(cfg, s) for s in ("ingest", "preprocess", "train", "evaluate", "export")]
    assert len(set(ids)) == 1
    run = mlflow.get_run(ids[0])
    assert run.data.params["model.dim"] == "8"
    assert {"ingest_done", "export_done"} <= set(run.data.metrics)
    assert run.data.tags["recpipe.first_stage"] == "ingest"
    assert run.data.tags["recpipe.last_stage"] == "export"
    assert run.info.status == "FINISHED"


def test_new_repro_or_new_config_opens_new_run(tmp_path, monkeypatch, cfg):
    monkeypatch.chdir(tmp_path)
    first = _run(cfg, "ingest")
    assert _run(cfg, "ingest") != first  # same stage again: a new repro
    partial = _run(cfg, "train")  # a repro that starts at train
    cfg.model.dim = 16
    assert _run(cfg, "evaluate") != partial  # changed config: a new run


def test_failed_stage_marks_run_failed(tmp_path, monkeypatch, cfg):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), pipeline_run(cfg, "ingest") as run:
        raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_run_names_are_unique(tmp_path, monkeypatch, cfg):
    monkeypatch.chdir(tmp_path)
    cfg.mlflow.experiment = "t-tracking-names"
    names = [mlflow.get_run(_run(cfg, "ingest")).info.run_name for _ in range(3)]
    prefix = f"mf-{config_hash(cfg)[:6]}"
    assert names == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]


def test_runs_of_dead_processes_are_marked_killed(cfg):
    """A run whose process died (SIGKILL: no chance to end it) is KILLED at the next start."""
    experiment = ensure_experiment(cfg.mlflow.experiment)
    sleeper = subprocess.Popen(["sleep", "60"])
    dead_tags = {TAG_PID: process_id(sleeper.pid), TAG_HOST: socket.gethostname()}
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    dead = create_run(experiment, "dead", dead_tags)
    alive = create_run(experiment, "alive", process_tags())
    reused = create_run(experiment, "reused", {**process_tags(), TAG_PID: f"{os.getpid()}:1"})  # pid reused
    assert set(reap_dead_runs(experiment)) == {dead, reused}
    client = mlflow.MlflowClient()
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(alive).info.status == "RUNNING"
    client.set_terminated(alive)
    assert not process_alive(dead_tags[TAG_PID]) and process_alive(process_id())


def test_session_is_the_dvc_process_above(tmp_path):
    """Stages run by one `dvc` process share a session; outside DVC there is none."""
    fake_dvc = tmp_path / "dvc"
    code = "from recpipe.tracking import session_id; print(session_id())"
    fake_dvc.write_text(f"#!/bin/sh\necho $$\n{sys.executable} -c '{code}'\n")
    fake_dvc.chmod(0o755)
    out = subprocess.run([str(fake_dvc)], capture_output=True, text=True, check=True, env=os.environ).stdout.split()
    assert out[1].startswith(f"{out[0]}:")  # the shell script named dvc, with its start time
    assert session_id() is None


def test_a_new_pipeline_execution_opens_a_new_run(tmp_path, monkeypatch, cfg):
    """Same config, later stage, but another `dvc repro` process: not the same pipeline execution."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("recpipe.tracking.session_id", lambda: "100:1")
    first = _run(cfg, "ingest")
    assert _run(cfg, "preprocess") == first
    monkeypatch.setattr("recpipe.tracking.session_id", lambda: "200:1")
    assert _run(cfg, "train") != first
