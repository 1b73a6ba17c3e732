"""MLflow wiring: one pipeline run = one MLflow run that every stage of the same ``dvc repro`` logs into.

DVC runs each stage as its own process, so the run is found again through a small state file
(``.recpipe/mlflow_run.json``, git-ignored). A stage continues the recorded run when the config
(params.yaml) is the same and the stage comes later in the DAG than the last stage that logged
to it; otherwise it opens a new run. So a full ``dvc repro`` is one run, and a repro that only
re-runs ``train`` onward (new model config) is a new run that says which stages it covers.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recpipe.io import write_json

STAGE_ORDER = ("ingest", "preprocess", "train", "evaluate", "export")
STATE_FILE = Path(".recpipe") / "mlflow_run.json"
ARTIFACT_DIR = "mlartifacts"


def project_root() -> Path:
    """The repository root: ``DVC_ROOT`` (set by DVC for stage commands) or the working directory.

    Queued DVC experiments run in a temporary copy under ``<repo>/.dvc/tmp/exps/``; their root is
    the repository the copy was made from, so their runs land in the same ``mlflow.db``.
    """
    root = Path(os.environ.get("DVC_ROOT") or ".").resolve()
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``mlflow.db`` (sqlite) at the ``project_root()``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys; lists stay values (``{"a": {"b": 1}} -> {"a.b": 1}``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_info(cwd: Path = Path(".")) -> dict[str, str]:
    """Commit and dirty flag of the repository at ``cwd`` (empty when it is not a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(status.strip())).lower()}


def dvc_lock_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """The md5 of each stage output recorded in dvc.lock, as ``dvc.<path>`` tags."""
    if not lock.exists():
        return {}
    import yaml

    data = yaml.safe_load(lock.read_text()) or {}
    tags = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                tags[f"dvc.{out['path']}"] = out["md5"]
    return tags


def _read_state() -> dict[str, Any]:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def ensure_experiment(name: str) -> str:
    """Point MLflow at ``tracking_uri()`` and return the id of experiment ``name``, creating it
    (artifacts in ``mlartifacts/`` beside a sqlite database) when missing.

    With sqlite, a file lock beside the database serialises this first access, in which MLflow
    creates or migrates the tables: parallel processes (sweep workers, ``dvc queue start -j 2``)
    doing that at once on a new database fail.
    """
    import mlflow
    from filelock import FileLock

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    with FileLock(f"{db}.lock") if db else nullcontext():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = (db.parent / ARTIFACT_DIR).as_uri() if db else None
        return mlflow.create_experiment(name, artifact_location=artifacts)


@contextmanager
def pipeline_run(cfg: DictConfig, stage: str) -> Iterator[Any]:
    """Open (or continue) the pipeline's MLflow run for ``stage``; yields the active run."""
    import mlflow

    experiment_id = ensure_experiment(cfg.mlflow.experiment)
    key = config_hash(cfg)
    state = _read_state()
    run_id = None
    if (
        state.get("config_hash") == key
        and state.get("experiment_id") == experiment_id
        and state.get("stage") in STAGE_ORDER
        and STAGE_ORDER.index(stage) > STAGE_ORDER.index(state["stage"])
    ):
        run_id = state.get("run_id")
    try:
        run = mlflow.start_run(run_id=run_id, experiment_id=experiment_id)
    except mlflow.exceptions.MlflowException:  # recorded run deleted: start afresh
        run_id = None
        run = mlflow.start_run(experiment_id=experiment_id)
    with run:
        if run_id is None:
            model = OmegaConf.select(cfg, "model.name") or "pipeline"
            mlflow.set_tag("mlflow.runName", f"{model}-{key[:6]}")
            mlflow.log_params({k: str(v)[:6000] for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()})
            mlflow.set_tags({"recpipe.config_hash": key, "recpipe.first_stage": stage, "model": model})
        mlflow.set_tags({**git_info(), **dvc_lock_hashes(), "recpipe.last_stage": stage})
        yield run
        write_json(
            STATE_FILE,
            {"run_id": run.info.run_id, "experiment_id": experiment_id, "config_hash": key, "stage": stage},
        )


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run (no-op outside a run, e.g. in unit tests)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
