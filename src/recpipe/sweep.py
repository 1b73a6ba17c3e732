"""``recpipe run``: the pipeline as Hydra jobs, for sweeps (``-m``) and Optuna searches.

Each job runs preprocess -> train -> evaluate (ingest too when its raw data is missing) with its
composed config. Raw and preprocessed data are shared between jobs through
``outputs/cache/{raw,processed}/<hash of the sections they depend on>/``, built under a file lock
so parallel workers build each one once. Models and reports go to the job's Hydra output folder,
never to the DVC outputs data/, models/, reports/.

Isolation: every ``recpipe run`` invocation gets its own id (``invocation_id``: time to the
microsecond plus a random part), resolved in its Hydra output folders
(``outputs/hydra/multirun/<date>/<time>-<random>``), so concurrent invocations never share a folder.

Tracking: a sweep is one MLflow parent run (made by ``MlflowSweepCallback`` before any job starts,
tagged with the invocation id and recorded in a file named after it) and each job one child run of
the parent of its own invocation, with the flattened config and the stages' metrics. The job
returns its objective (a value from the job's models/train/train_summary.json), which the Optuna sweeper
optimises.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from filelock import FileLock
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from recpipe import tracking
from recpipe.config import compose, plain_dict
from recpipe.errors import RecpipeError
from recpipe.io import read_json, write_json
from recpipe.paths import Paths
from recpipe.pipeline import stage
from recpipe.schema import validate

log = logging.getLogger(__name__)

CACHE_DIR = Path("outputs") / "cache"
# The config sections each data stage reads (as in dvc.yaml's params); a cache entry is keyed by them.
RAW_SECTIONS = ("data",)
PROCESSED_SECTIONS = ("data", "preprocess", "split")
STAGE_METRICS_SUFFIX = ".metrics.json"
JOB_STAGES = ("train", "evaluate")
INVOCATION_ENV = "RECPIPE_INVOCATION"
TAG_INVOCATION = "recpipe.invocation"
TAG_OBJECTIVE = "recpipe.objective"  # the name of the value a job returns (metric ``objective``)


def new_invocation_id() -> str:
    """``<date>/<time>-<microseconds>-<6 random hex>``: unique per ``recpipe run`` invocation."""
    return f"{datetime.now():%Y-%m-%d/%H-%M-%S-%f}-{secrets.token_hex(3)}"


def invocation_id() -> str:
    """This invocation's id (the Hydra resolver ``${recpipe_invocation:}``): set by ``main`` and
    inherited by launcher workers through the environment, made here when missing."""
    return os.environ.setdefault(INVOCATION_ENV, new_invocation_id())


def parent_run_file(sweep_dir: Path) -> Path:
    """Where the sweep's parent run id is left for the jobs of this invocation."""
    return sweep_dir / f"mlflow_parent_run.{invocation_id().replace('/', '_')}.json"


OmegaConf.register_new_resolver("recpipe_invocation", invocation_id, replace=True)
MAX_PRECHECKED_JOBS = 64  # job configs validated before a sweep starts


def main(args: Sequence[str], config_dir: str | Path = "conf") -> int:
    """``recpipe run [hydra args...]``: run the Hydra app with primary config ``conf/run.yaml``."""
    import hydra

    config_dir = Path(config_dir).resolve()
    if not (config_dir / "run.yaml").exists():
        raise RecpipeError(f"{config_dir}/run.yaml not found; run from the repository root")
    for overrides in job_overrides(args):  # every job's config, before Hydra starts any of them
        validate(compose(overrides, config_dir, config_name="run"), source="conf/ or the overrides")
    sys.argv = ["recpipe run", *args]
    os.environ[INVOCATION_ENV] = new_invocation_id()
    hydra.main(version_base="1.3", config_path=str(config_dir), config_name="run")(run_job)()
    return 0


def job_overrides(args: Sequence[str], limit: int = MAX_PRECHECKED_JOBS) -> list[list[str]]:
    """The job overrides a ``recpipe run`` command line describes, discrete sweeps (``model=mf,ncf``,
    ``range(...)``) expanded, at most ``limit`` jobs; ``hydra.*`` overrides and Optuna intervals
    left out. Empty when the line holds Hydra options other than ``-m`` or does not parse: Hydra then
    reports it, and each job still validates its config as it starts (``run_job``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        return []
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:
        return []
    prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}
    choices: list[list[str]] = []
    for o in parsed:
        if o.key_or_group.startswith("hydra") or (o.is_sweep_override() and not o.is_discrete_sweep()):
            continue
        head = f"{prefix.get(o.type, '')}{o.key_or_group}"
        if o.is_sweep_override():
            choices.append([f"{head}={v}" for v in o.sweep_string_iterator()])
        else:
            assert o.input_line is not None  # the parser sets it on every override it returns
            choices.append([o.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), limit)]


def run_job(cfg: DictConfig) -> float:
    """Hydra task: one pipeline job in the job's output folder, tracked as one MLflow run.

    Returns the job's objective (see ``objective``), which the Optuna sweeper optimises. The
    config is validated first; a RecpipeError ends the command with its message and exit code 2
    (Hydra would print it with a traceback).
    """
    try:
        validate(cfg, source="conf/ or the overrides")
        return _run_job(cfg)
    except RecpipeError as e:
        log.error("recpipe run: error: %s", e)
        raise SystemExit(2) from None


def _run_job(cfg: DictConfig) -> float:
    import mlflow
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    parent = None
    if hc.mode == RunMode.MULTIRUN:
        parent_file = parent_run_file(Path(hc.sweep.dir))
        if not parent_file.exists():
            raise RecpipeError(f"{parent_file} not found: sweeps need conf/run.yaml's hydra.callbacks")
        parent = read_json(parent_file)
    job = cast(DictConfig, hc.job)  # HydraConfig.get() is a DictConfig typed as Hydra's dataclasses
    job_num = job.get("num", 0)  # unset outside a sweep
    tags = {
        "recpipe.job_dir": str(out),
        "recpipe.job_num": str(job_num),
        "recpipe.overrides": " ".join(hc.overrides.task),
        TAG_INVOCATION: invocation_id(),
    }
    with job_run(cfg, parent=parent, tags=tags):
        data_root = prepare_data(cfg)
        link = Paths(root=out).data
        if not link.exists():
            link.symlink_to(Paths(root=data_root).data.resolve(), target_is_directory=True)
        tracking.log_data(cfg, Paths(root=out).processed)
        run_stages(cfg, Paths(root=out), JOB_STAGES)
        summary = read_json(Paths(root=out).train_summary)
        value = objective(summary, cfg.sweep.objective)
        tracking.log_metrics({"objective": value})
        mlflow.set_tag(TAG_OBJECTIVE, cfg.sweep.objective or summary["metric"])
    direction = OmegaConf.select(cast(DictConfig, hc.sweeper), "direction")
    if parent is not None and isinstance(direction, str):
        n_trials = OmegaConf.select(cast(DictConfig, hc.sweeper), "n_trials")
        name = cfg.sweep.objective or summary["metric"]
        log.info(search_progress(Path(hc.sweep.dir), int(job_num), value, direction, n_trials, name))
    return value


def search_progress(
    sweep_dir: Path, job_num: int, value: float, direction: str, n_trials: int | None, name: str
) -> str:
    """Record trial ``job_num``'s objective ``value`` in the search's progress file (shared by
    parallel workers, under a lock) and return the progress line: ``trial i/N: <name> v; best so
    far b (trial j)``, best by ``direction`` (``minimize`` / ``maximize``)."""
    path = sweep_dir / f"progress.{invocation_id().replace('/', '_')}.json"
    with FileLock(f"{path}.lock"):
        values = read_json(path) if path.exists() else {}
        values[str(job_num)] = value
        write_json(path, values)
    pick = min if direction == "minimize" else max
    best = pick(values, key=lambda k: values[k])
    done = f"{len(values)}/{n_trials}" if n_trials else str(len(values))
    return f"trial {done} (job {job_num}): {name} {value:.4f}; best so far {values[best]:.4f} (job {best})"


def run_stages(cfg: DictConfig, paths: Paths, stages: Sequence[str]) -> None:
    """Run the stage modules ``stages`` in order on ``paths`` (they log to the active run)."""
    for name in stages:
        importlib.import_module(stage(name).module).run(cfg, paths)


def objective(summary: dict[str, Any], key: str | None) -> float:
    """The value a job returns from its train summary: the best validation value when ``key`` is
    None or names the train stage's validation metric, else ``summary[key]`` (dotted keys reach
    into nested entries)."""
    if key is None or summary.get("metric") == key:
        return float(summary["best_value"])
    value = OmegaConf.select(OmegaConf.create(summary), key)
    if value is None:
        raise RecpipeError(
            f"sweep.objective={key!r} is not in models/train/train_summary.json (keys: {', '.join(summary)})"
        )
    return float(value)


def section_hash(cfg: DictConfig, sections: Sequence[str]) -> str:
    """Hash of the config ``sections`` plus the size and mtime of local files they name."""
    part = OmegaConf.masked_copy(cfg, list(sections))
    files = {
        str(v): [(st := Path(v).stat()).st_size, st.st_mtime_ns]
        for v in tracking.flatten(plain_dict(part)).values()
        if isinstance(v, str) and v and Path(v).is_file()
    }
    return tracking.config_hash(OmegaConf.create({"config": part, "files": files}))


def prepare_data(cfg: DictConfig, cache: Path = CACHE_DIR) -> Path:
    """Ingest and preprocess into the cache unless already there; return the root (a ``Paths``
    root) whose data/processed holds the preprocessed data for ``cfg``."""
    raw_root = cache / "raw" / section_hash(cfg, RAW_SECTIONS)
    root = cache / "processed" / section_hash(cfg, PROCESSED_SECTIONS)
    root.mkdir(parents=True, exist_ok=True)
    raw_root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        with FileLock(f"{raw_root}.lock"):
            cached_stage(cfg, raw_root, "ingest")
        raw_link = Paths(root=root).raw
        if not raw_link.is_symlink():
            raw_link.parent.mkdir(parents=True, exist_ok=True)
            raw_link.symlink_to(Paths(root=raw_root).raw.resolve(), target_is_directory=True)
        cached_stage(cfg, root, "preprocess")
    return root


def cached_stage(cfg: DictConfig, root: Path, stage: str) -> None:
    """Run ``stage`` on ``Paths(root)`` unless a previous call did; then log the metrics that call
    logged, so every job's run has the same metrics whether or not it built the data.

    The metrics file, written last, marks the cache entry complete. Call under a lock on ``root``.
    """
    done = root / f"{stage}{STAGE_METRICS_SUFFIX}"
    if done.exists():
        tracking.log_metrics(read_json(done))
        return
    before = active_metrics()
    run_stages(cfg, Paths(root=root), [stage])
    write_json(done, {k: v for k, v in active_metrics().items() if before.get(k) != v})


def active_metrics() -> dict[str, float]:
    """The latest value of each metric of the active MLflow run ({} without one)."""
    import mlflow

    run = mlflow.active_run()
    return dict(mlflow.get_run(run.info.run_id).data.metrics) if run else {}


@contextmanager
def job_run(cfg: DictConfig, *, parent: dict[str, str] | None, tags: dict[str, str]) -> Iterator[Any]:
    """An active MLflow run for one job (``tracking.start_new_run``), a child of ``parent``
    (``{"run_id", "experiment_id"}``) when given."""
    experiment_id = tracking.ensure_experiment(cfg.mlflow.experiment)
    if parent and parent["experiment_id"] != experiment_id:
        raise RecpipeError(f"sweep parent run {parent['run_id']} is in another experiment than mlflow.experiment")
    parent_run_id = parent["run_id"] if parent else None
    with tracking.start_new_run(cfg, experiment_id, {**tags, **tracking.git_info()}, parent_run_id) as run:
        yield run


class MlflowSweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun, whose id the jobs read from the sweep
    folder. It ends FINISHED with the sweep, or FAILED if the process exits before that."""

    def __init__(self) -> None:
        self.run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        experiment_id = tracking.ensure_experiment(config.mlflow.experiment)
        direction = OmegaConf.select(config, "hydra.sweeper.direction")
        tags = {
            "recpipe.sweep_dir": str(sweep_dir),
            TAG_INVOCATION: invocation_id(),
            "recpipe.overrides": " ".join(config.hydra.overrides.task),
            "recpipe.sweeper": str(config.hydra.sweeper._target_).rsplit(".", 1)[-1],
            **({"recpipe.direction": str(direction)} if direction else {}),
            **tracking.git_info(),
            **tracking.process_tags(),
        }
        self.run_id = tracking.create_run(experiment_id, f"sweep-{datetime.now():%Y-%m-%d}", tags)
        write_json(parent_run_file(sweep_dir), {"run_id": self.run_id, "experiment_id": experiment_id})
        atexit.register(self._end, "FAILED")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = Path(str(config.hydra.sweep.dir)) / "optimization_results.yaml"
        if results.exists() and self.run_id is not None:
            from mlflow import MlflowClient

            best = OmegaConf.load(results)
            client = MlflowClient(tracking.tracking_uri())
            client.log_metric(self.run_id, "best_value", float(best.best_value))
            for k, v in best.best_params.items():
                client.log_param(self.run_id, f"best.{k}", v)
        self._end("FINISHED")

    def _end(self, status: str) -> None:
        if self.run_id is None:
            return
        from mlflow import MlflowClient

        MlflowClient(tracking.tracking_uri()).set_terminated(self.run_id, status)
        self.run_id = None
