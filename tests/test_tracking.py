"""One pipeline run = one MLflow run across the stages of one dvc repro."""
from __future__ import annotations

import mlflow
import pytest
from omegaconf import OmegaConf

from recpipe.tracking import flatten, log_metrics, pipeline_run


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
    with pytest.raises(RuntimeError):
        with pipeline_run(cfg, "ingest") as run:
            raise RuntimeError("boom")
    assert mlflow.get_run(run.info.run_id).info.status == "FAILED"


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}
