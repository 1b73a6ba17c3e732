"""``recpipe train`` with ``engine=ray``: the model's own training loop (``recpipe.training.fit``)
run by Ray Train's ``TensorflowTrainer`` across ``engine.num_workers`` workers under
``tf.distribute.MultiWorkerMirroredStrategy`` (``recpipe.distributed``; Ray sets ``TF_CONFIG``).

The processed data goes to the workers through Ray's object store. Every worker trains on its
share of each global batch; the chief (rank 0) writes the best epoch's weights and the training
history into a Ray Train checkpoint (under ``engine.storage_path``), which this process loads into
its own model, so the train stage writes models/train/ and logs to MLflow exactly as with the local
engine.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from recpipe import training
from recpipe.config import plain_dict
from recpipe.data.processed import Processed
from recpipe.distributed import check_batch_size
from recpipe.engines.cluster import connected
from recpipe.errors import RecpipeError
from recpipe.models.base import RecModel

log = logging.getLogger(__name__)

WEIGHTS = "weights"  # the chief's checkpoint: TF checkpoint of the model's variables ...
RESULT = "train_result.json"  # ... the TrainResult ...
WORKERS = "workers.json"  # ... and where the workers ran


def fit(
    model: RecModel, data: Processed, cfg: Any, on_epoch: Callable[[dict[str, float]], None] | None = None
) -> training.TrainResult:
    """Train ``cfg.model`` on the cluster of ``cfg.engine`` and load the chief's best weights into
    ``model`` (built by ``training.build_model`` from the same config); ``on_epoch`` is called with
    each epoch's history row once training is done."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    engine = cfg.engine
    workers, cpus = int(engine.num_workers), float(engine.cpus_per_worker)
    check_batch_size(int(cfg.model.batch_size), workers)
    model.prepare(data.train)  # bad training data fails here, before any worker starts
    job = {
        "model": plain_dict(cfg.model, "model"),
        "seed": int(cfg.seed),
        "features": OmegaConf.to_container(OmegaConf.select(cfg, "data.features", default={}) or {}),
    }
    with connected(engine), _storage(OmegaConf.select(engine, "storage_path")) as storage:
        log.info(f"training {cfg.model.name} on {workers} Ray workers (MultiWorkerMirroredStrategy)")
        trainer = TensorflowTrainer(
            _train_worker,
            train_loop_config={**job, "data": ray.put(data)},
            scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(name=f"recpipe-train-{cfg.model.name}", storage_path=storage),
        )
        try:
            checkpoint = trainer.fit().checkpoint
        except ray.train.TrainingFailedError as e:
            raise _worker_error(e) from e
        if checkpoint is None:
            raise RecpipeError("engine=ray: the training workers ended without the chief's checkpoint")
        with checkpoint.as_directory() as folder:
            model.load_weights(str(Path(folder) / WEIGHTS)).assert_existing_objects_matched()
            result = _read_result(Path(folder) / RESULT)
            placement = json.loads((Path(folder) / WORKERS).read_text())
    log.info(f"trained on {placement['workers']} workers on {placement['nodes']} Ray node(s)")
    for row in result.history.to_dict("records"):
        if on_epoch is not None:
            on_epoch(row)
    return result


def _train_worker(job: dict[str, Any]) -> None:
    """One Ray Train worker: build the model in the strategy's scope, run ``training.fit`` on this
    worker's share of every batch, and (chief) report the weights and history as a checkpoint."""
    import ray
    import ray.train
    import tensorflow as tf

    from recpipe import logs

    context = ray.train.get_context()
    rank = context.get_world_rank()
    logs.configure()
    logs.filter_native_stderr()  # TensorFlow's start-up banners, as in the recpipe command
    if rank != 0:  # the chief speaks for all workers
        logging.getLogger("recpipe").setLevel(logging.WARNING)
    data = ray.get(job["data"])
    model_cfg, seed = OmegaConf.create(job["model"]), int(job["seed"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        nodes = _count_nodes(strategy, ray.get_runtime_context().get_node_id())
        model, _ = training.build_model(model_cfg, data, seed, OmegaConf.create(job["features"]))
        result = training.fit(model, data, model_cfg, seed, strategy=strategy)
    with tempfile.TemporaryDirectory() as folder:
        model.save_weights(str(Path(folder) / WEIGHTS))  # on every worker: reading variables may be collective
        _write_result(result, Path(folder) / RESULT)
        (Path(folder) / WORKERS).write_text(json.dumps({"workers": context.get_world_size(), "nodes": nodes}))
        checkpoint = ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
        ray.train.report({"best_value": result.best_value, "best_epoch": result.best_epoch}, checkpoint=checkpoint)


def _count_nodes(strategy: Any, node_id: str) -> int:
    """How many Ray nodes the workers run on (all-gathered; node ids are hex, 60 bits of each suffice)."""
    import tensorflow as tf

    mine = tf.constant([int(node_id[:15], 16)], tf.int64)
    return len(set(strategy.gather(strategy.run(lambda: tf.identity(mine)), axis=0).numpy().tolist()))


def _write_result(result: training.TrainResult, path: Path) -> None:
    fields = asdict(result) | {"history": result.history.to_dict("records")}
    path.write_text(json.dumps(fields))


def _read_result(path: Path) -> training.TrainResult:
    fields = json.loads(path.read_text())
    return training.TrainResult(**(fields | {"history": pd.DataFrame(fields["history"])}))


@contextmanager
def _storage(path: str | None) -> Iterator[str]:
    """Ray Train's storage for the run: ``path`` (a URI, or a folder made absolute as Ray requires),
    or a temporary folder removed afterwards."""
    if path:
        yield str(path) if "://" in str(path) else str(Path(path).resolve())
        return
    with tempfile.TemporaryDirectory(prefix="recpipe-ray-train-") as folder:
        yield folder


def _worker_error(error: BaseException) -> Exception:
    """The RecpipeError a worker raised (bad input or config: exit 2), else ``error`` itself."""
    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, RecpipeError):
            return RecpipeError(f"engine=ray, a training worker: {e}")
        stack += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
        if hasattr(e, "as_instanceof_cause"):
            stack.append(e.as_instanceof_cause())
    return error if isinstance(error, Exception) else RuntimeError(str(error))
