"""``recpipe train``: fit ``cfg.model`` on data/processed.

Writes models/model/ (weights + model_config.json), models/train_summary.json and
models/training_curve.csv (per-epoch loss and validation metric; evaluate copies it into
reports/plots/), and logs the curve and summary to the MLflow run.
"""
from __future__ import annotations

import logging
import math

import mlflow
from omegaconf import DictConfig, OmegaConf

from recpipe import training
from recpipe.data.processed import load_processed
from recpipe.io import write_json
from recpipe.paths import Paths
from recpipe.tracking import log_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Train, keep the best epoch's weights, save the model and what training did."""
    data = load_processed(paths.processed)
    model, context = training.build_model(cfg.model, data, int(cfg.seed), OmegaConf.select(cfg, "data.features"))
    log.info(f"training {cfg.model.name} on {len(data.train)} interactions "
             f"({data.n_users} users, {data.n_items} items)")

    def log_epoch(row: dict[str, float]) -> None:
        values = {"train_loss": row["loss"], "epoch_seconds": row["seconds"], **{
            k: v for k, v in row.items() if k.startswith("val_")
        }}
        log_metrics({k: v for k, v in values.items() if math.isfinite(v)}, step=int(row["epoch"]))

    result = training.fit(model, data, cfg.model, int(cfg.seed), on_epoch=log_epoch)
    training.save_model(model, cfg.model, data.n_users, data.n_items, paths.model, context)
    summary = training.train_summary(cfg.model, model, result)
    write_json(paths.train_summary, summary)
    training.write_training_curve(result, paths.root / "models" / "training_curve.csv")
    log_metrics({
        f"best_{result.metric}": result.best_value,
        "best_epoch": result.best_epoch,
        "train_seconds": result.train_seconds,
        "examples_per_second": result.examples_per_second,
        "n_params": summary["n_params"],
    })
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(paths.train_summary))
    log.info(f"best {result.metric} {result.best_value:.4f} at epoch {result.best_epoch}; "
             f"{result.examples_per_second:,.0f} examples/s; saved to {paths.model}")
