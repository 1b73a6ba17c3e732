"""MLflow wiring: one pipeline run = one complete MLflow run, whatever DVC ran or skipped.

DVC runs each stage as its own process, so the run is found again through a small state file
(``.recpipe/mlflow_run.json``, git-ignored). A stage continues the recorded run when it belongs to
the same pipeline execution (the same ``dvc repro`` / ``dvc exp run`` process, see ``session_id``),
the config (params.yaml) is the same and the stage comes later in the DAG than the last stage that
logged to it; otherwise it opens a new run.

A run is complete even when DVC skipped or restored stages: after each stage, the outputs of every
stage that is consistent with this config and ``dvc.lock`` (``recpipe.lineage``) are logged again
(data statistics, the train summary, the headline metrics, the detail file), with the datasets
(``mlflow.log_input``), the dataset fingerprint and the lineage tags. Runs carry the pid and host of
the process that logs to them; a run left RUNNING by a process that died is marked KILLED by the
next recpipe process that opens the experiment.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from recpipe import lineage
from recpipe.config import plain_dict
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS, HEADLINE_METRICS, headline
from recpipe.evaluation.registry import baseline_key
from recpipe.io import read_json, write_json
from recpipe.paths import Paths
from recpipe.pipeline import STAGE_NAMES
from recpipe.tracking_server import check_server

STATE_FILE = Path(".recpipe") / "mlflow_run.json"
ARTIFACT_DIR = "mlartifacts"
# The config sections every model of a comparison shares: runs with the same hash of these are
# like for like (same data, split, evaluation protocol and seed); README's table records it.
COMMON_SECTIONS = ("seed", "data", "preprocess", "split", "evaluate")
DETAIL_FILE = "detail.json"
# reports/per_user.csv: the model's per-test-user values (user_id + the bootstrap metrics and the
# promotion metric), what paired comparisons between models of the same data and split resample
PER_USER_FILE = "per_user.csv"
# Tags (besides git_commit, git_dirty, dvc.<path>) that reports and tests rely on.
TAG_FINGERPRINT = "recpipe.dataset_fingerprint"
TAG_DATA = "recpipe.data"
TAG_SPLIT = "recpipe.split"
TAG_COMMON = "recpipe.common_config_hash"
TAG_PID, TAG_HOST = "recpipe.pid", "recpipe.host"


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


def common_config_hash(cfg: DictConfig) -> str:
    """``config_hash`` of the ``COMMON_SECTIONS`` of ``cfg`` (the parts every model shares)."""
    return config_hash(OmegaConf.masked_copy(cfg, [s for s in COMMON_SECTIONS if s in cfg]))


def data_label(data: Mapping[str, Any]) -> str:
    """A short name for the config's data source: ``ml-100k``, ``synthetic``, ``files:ratings.csv``."""
    if data.get("name"):
        return str(data["name"])
    if data.get("interactions"):
        return f"{data.get('source', 'files')}:{Path(str(data['interactions'])).name}"
    return str(data.get("source", "unknown"))


def git_info(cwd: Path = Path(".")) -> dict[str, str]:
    """Commit and dirty flag of the repository at ``cwd`` (empty when it is not a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"git_commit": commit, "git_dirty": str(bool(status.strip())).lower()}


# --- processes: who logs to a run, and whether it is still alive ---------------------------------


def _proc_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot ('' where /proc is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def process_id(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of a process (default: this one): unique on a host even when the pid
    is reused later."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_proc_start(pid)}"


def process_alive(ident: str) -> bool:
    """True while the process ``process_id`` returned ``ident`` for is still running."""
    pid_text, _, start = ident.partition(":")
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (ValueError, PermissionError):
        return True  # unparsable (not ours to judge) or another user's live process
    return not start or _proc_start(pid) in ("", start)


def process_tags() -> dict[str, str]:
    return {TAG_PID: process_id(), TAG_HOST: socket.gethostname()}


def session_id() -> str | None:
    """The ``process_id`` of the nearest ``dvc`` process above this one (the ``dvc repro`` or
    ``dvc exp run`` that runs the stage), None outside DVC."""
    pid = os.getppid()
    while pid > 1:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:3]):  # dvc, python dvc, python -m dvc
            return process_id(pid)
        pid = ppid
    return None


# --- the experiment, run creation and dead runs ------------------------------------------------


def db_lock() -> AbstractContextManager[Any]:
    """A file lock beside the sqlite database (nothing for other stores): serialises first access
    (table creation) and run naming between processes."""
    from filelock import FileLock

    uri = tracking_uri()
    return FileLock(f"{uri.removeprefix('sqlite:///')}.lock") if uri.startswith("sqlite:///") else nullcontext()


def ensure_experiment(name: str) -> str:
    """Point MLflow at ``tracking_uri()`` and return the id of experiment ``name``, creating it
    (artifacts in ``mlartifacts/`` beside a sqlite database) when missing; runs of it that a dead
    process left RUNNING on this host are marked KILLED (``reap_dead_runs``). A tracking server
    is checked first (``tracking_server.check_server``)."""
    import mlflow

    uri = tracking_uri()
    check_server(uri, name)
    mlflow.set_tracking_uri(uri)
    with db_lock():
        experiment = mlflow.get_experiment_by_name(name)
        if experiment is None:
            db = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
            artifacts = (db.parent / ARTIFACT_DIR).as_uri() if db else None
            experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
    reap_dead_runs(experiment_id)
    return experiment_id


def reap_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of the experiment whose process (tags ``recpipe.pid`` and
    ``recpipe.host`` = this host) is gone; returns their ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    query = f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{socket.gethostname()}'"
    dead = [
        r
        for r in client.search_runs([experiment_id], query, max_results=10000)
        if not process_alive(r.data.tags.get(TAG_PID, ""))
    ]
    for r in dead:
        client.set_tag(r.info.run_id, "recpipe.end_reason", f"process {r.data.tags[TAG_PID]} died")
        client.set_terminated(r.info.run_id, "KILLED")
    return [r.info.run_id for r in dead]


def create_run(experiment_id: str, prefix: str, tags: Mapping[str, str], parent_run_id: str | None = None) -> str:
    """Create a run named ``<prefix>-<n>``, n one more than any run of the experiment with that
    prefix (under ``db_lock``, so concurrent processes get distinct names); returns its id."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri())
    tags = {**tags, **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})}
    with db_lock():
        taken = client.search_runs(
            [experiment_id],
            f"attributes.run_name LIKE '{prefix}-%'",
            max_results=50000,
            run_view_type=ViewType.ALL,  # deleted runs keep their names
        )
        suffixes = [name[len(prefix) + 1 :] for r in taken if (name := r.info.run_name or "").startswith(f"{prefix}-")]
        numbers = [int(n) for n in suffixes if n.isdigit()]
        run = client.create_run(experiment_id, run_name=f"{prefix}-{max(numbers, default=0) + 1}", tags=tags)
    return run.info.run_id


def run_prefix(cfg: DictConfig) -> str:
    """``<model>-<config hash, 6 characters>``: the name stem of a run of ``cfg``."""
    return f"{OmegaConf.select(cfg, 'model.name') or 'pipeline'}-{config_hash(cfg)[:6]}"


def config_tags(cfg: DictConfig) -> dict[str, str]:
    """The tags every recpipe run carries about its config (model, hashes, data source, split)."""
    data = plain_dict(cfg.data, "data") if "data" in cfg else {}
    return {
        "model": str(OmegaConf.select(cfg, "model.name") or "pipeline"),
        "recpipe.config_hash": config_hash(cfg),
        TAG_COMMON: common_config_hash(cfg),
        TAG_DATA: data_label(data),
        TAG_SPLIT: str(OmegaConf.select(cfg, "split.name") or ""),
    }


def log_config(cfg: DictConfig) -> None:
    """The flattened config as params of the active run."""
    import mlflow

    mlflow.log_params({k: str(v)[:6000] for k, v in flatten(plain_dict(cfg)).items()})


def start_new_run(
    cfg: DictConfig, experiment_id: str, tags: Mapping[str, str], parent_run_id: str | None = None
) -> Any:
    """Create a run of ``cfg`` (named ``<run_prefix>-<n>``, a child of ``parent_run_id`` when given),
    tagged with ``config_tags``, ``tags`` and ``process_tags``, start it and log the flattened config
    as params; returns the active run. The one way recpipe opens a new run: the pipeline's
    (``pipeline_run``) and each ``recpipe run`` job's (``sweep.job_run``)."""
    import mlflow

    all_tags = {**config_tags(cfg), **tags, **process_tags()}
    run = mlflow.start_run(run_id=create_run(experiment_id, run_prefix(cfg), all_tags, parent_run_id))
    log_config(cfg)
    return run


# --- what a run holds: metrics from the files the stages write --------------------------------


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log numeric metrics to the active run (no-op outside a run, e.g. in unit tests)."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def stats_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """data/processed/stats.json as metrics ``data.<dotted key>``."""
    return _finite({f"data.{k}": v for k, v in flatten(stats).items()})


def train_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """models/train_summary.json as metrics: ``best_<val metric>``, best_epoch, train_seconds, ..."""
    keys = ("best_epoch", "train_seconds", "examples_per_second", "n_params")
    return _finite({f"best_{summary['metric']}": summary["best_value"], **{k: summary.get(k) for k in keys}})


def headline_metrics(detail: Mapping[str, Any]) -> dict[str, float]:
    """The headline metrics of reports/detail.json (``{"model": {...}, "baselines": {name: {...}}}``):
    the model's ``HEADLINE_METRICS`` under their names, each baseline's
    ``HEADLINE_BASELINE_METRICS`` as ``baseline.<name>.<key>``; undefined (null/NaN) ones left out."""
    flat: dict[str, Any] = headline(detail["model"], HEADLINE_METRICS)
    for name, values in detail.get("baselines", {}).items():
        flat.update({baseline_key(name, k): v for k, v in headline(values, HEADLINE_BASELINE_METRICS).items()})
    return _finite(flat)


def dataset_fingerprint(processed: Path) -> str:
    """The DVC hash of the processed data directory (what dvc.lock records for data/processed)."""
    fingerprint = lineage.dvc_hash(processed)
    if fingerprint is None:
        raise FileNotFoundError(processed)
    return fingerprint.removesuffix(".dir")


def log_data(cfg: DictConfig, processed: Path) -> None:
    """Log the processed data a run used: statistics (``stats_metrics``), the fingerprint tag,
    and the train and test splits as MLflow datasets (contexts ``training`` / ``evaluation``,
    named ``<data>/<split>/<train|test>``, digest = the file's md5, schema and row count from the
    Parquet footer: ``tracking_dataset``)."""
    import mlflow

    from recpipe.tracking_dataset import ParquetDataset

    mlflow.set_tag(TAG_FINGERPRINT, dataset_fingerprint(processed))
    log_metrics(stats_metrics(read_json(processed / "stats.json")))
    label = f"{config_tags(cfg)[TAG_DATA]}/{config_tags(cfg)[TAG_SPLIT]}"
    for part, context in (("train", "training"), ("test", "evaluation")):
        path = processed / f"{part}.parquet"
        dataset = ParquetDataset(path, name=f"{label}/{part}", digest=str(lineage.dvc_hash(path)))
        mlflow.log_input(dataset, context=context)


def log_consistent_outputs(cfg: DictConfig, stage: str, paths: Paths) -> set[str]:
    """After ``stage`` ran: log what the other stages' outputs on disk say, for each stage whose
    outputs belong to this config (``lineage.consistent_stages``); tag the DVC hash of each of
    their outputs as ``dvc.<path>``. Returns the consistent stages."""
    import mlflow

    consistent = lineage.consistent_stages(cfg, stage, paths.root)
    if stage != "ingest" and (paths.processed / "stats.json").exists():
        log_data(cfg, paths.processed)
    if "train" in consistent - {stage} and paths.train_summary.exists():
        log_metrics(train_metrics(read_json(paths.train_summary)))
        mlflow.log_artifact(str(paths.train_summary))
    detail = paths.reports / DETAIL_FILE
    if "evaluate" in consistent - {stage} and detail.exists():
        log_metrics(headline_metrics(read_json(detail)))
        mlflow.log_artifact(str(detail), artifact_path="reports")
    hashes = lineage.locked_hashes(consistent - {stage}, paths.root)
    if stage in consistent:  # its lock entry is written after it exits: hash what it wrote
        hasher = lineage.RepoHasher(paths.root)
        hashes |= {p: h for p in lineage.declared_outputs(stage, paths.root) if (h := hasher(p))}
    mlflow.set_tags({f"dvc.{p}": h for p, h in hashes.items()})
    return consistent


# --- the pipeline's run ------------------------------------------------------------------------


def _read_state() -> dict[str, Any]:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def continued_run(cfg: DictConfig, stage: str, experiment_id: str) -> str | None:
    """The run recorded in the state file when ``stage`` continues it (same DVC process, same
    config and experiment, a later stage than the last one that logged), else None."""
    state = _read_state()
    if (
        state.get("config_hash") == config_hash(cfg)
        and state.get("experiment_id") == experiment_id
        and state.get("session") == session_id()
        and state.get("stage") in STAGE_NAMES
        and STAGE_NAMES.index(stage) > STAGE_NAMES.index(state["stage"])
    ):
        return state.get("run_id")
    return None


@contextmanager
def pipeline_run(cfg: DictConfig, stage: str, paths: Paths | None = None) -> Iterator[Any]:
    """Open (or continue) the pipeline's MLflow run for ``stage``; yields the active run. When the
    stage succeeds, the run is completed from the consistent outputs (``log_consistent_outputs``)."""
    paths = paths or Paths()
    import mlflow

    experiment_id = ensure_experiment(cfg.mlflow.experiment)
    run_id = continued_run(cfg, stage, experiment_id)
    if run_id is not None:
        try:
            run = mlflow.start_run(run_id=run_id)
        except mlflow.exceptions.MlflowException:  # recorded run deleted: start afresh
            run_id = None
    if run_id is None:
        run = start_new_run(cfg, experiment_id, {"recpipe.first_stage": stage})
    with run:
        mlflow.set_tags({**git_info(), **process_tags(), "recpipe.last_stage": stage})
        yield run
        log_consistent_outputs(cfg, stage, paths)
        write_json(
            STATE_FILE,
            {
                "run_id": run.info.run_id,
                "experiment_id": experiment_id,
                "config_hash": config_hash(cfg),
                "stage": stage,
                "session": session_id(),
            },
        )
