"""``recpipe train``: fit ``cfg.model`` on data/processed.

Writes one directory, models/train/, replaced as a whole: model/ (weights + model_config.json),
train_summary.json, metrics.json (model/split/data labels and the headline train metrics, for
``dvc metrics`` and ``dvc exp show``) and
training_curve.csv (per-epoch loss and validation metric, for ``dvc plots``); logs the curve and
summary to the MLflow run.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from recpipe import training
from recpipe.data.processed import load_processed
from recpipe.engines import train as engine
from recpipe.evaluation.headline import run_labels, train_headline
from recpipe.io import atomic_dir, write_json
from recpipe.models.io import save_model
from recpipe.paths import Paths
from recpipe.tracking import log_metrics, train_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Train, keep the best epoch's weights, save the model and what training did."""
    data = load_processed(paths.processed)
    model, context = training.build_model(cfg.model, data, int(cfg.seed), OmegaConf.select(cfg, "data.features"))
    log.info(
        f"training {cfg.model.name} on {len(data.train)} interactions ({data.n_users} users, {data.n_items} items)"
    )

    def log_epoch(row: dict[str, float]) -> None:
        values = {
            "train_loss": row["loss"],
            "epoch_seconds": row["seconds"],
            **{k: v for k, v in row.items() if k.startswith("val_")},
        }
        log_metrics({k: v for k, v in values.items() if math.isfinite(v)}, step=int(row["epoch"]))

    result = engine.fit(model, data, cfg, on_epoch=log_epoch)  # engine=ray: on the Ray cluster
    summary = training.train_summary(cfg.model, model, result)
    # MLflow first, the swap last: a failure anywhere leaves the previous models/train/ (and dvc.lock)
    with atomic_dir(paths.train) as tmp:

        def staged(path: Path) -> Path:  # where ``path`` of models/train/ is, before the swap
            return tmp / path.relative_to(paths.train)

        save_model(model, cfg.model, data.n_users, data.n_items, staged(paths.model), context)
        write_json(staged(paths.train_summary), summary)
        write_json(staged(paths.train_metrics), run_labels(cfg) | train_headline(summary), sort_keys=False)
        training.write_training_curve(result, staged(paths.training_curve))
        log_metrics(train_metrics(summary))
        if mlflow.active_run() is not None:
            mlflow.log_artifact(str(staged(paths.train_summary)))
    log.info(
        f"best {result.metric} {result.best_value:.4f} at epoch {result.best_epoch}; "
        f"{result.examples_per_second:,.0f} examples/s; saved to {paths.model}"
    )
