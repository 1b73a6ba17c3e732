"""Training shared by all models: tf.data input, a compiled (XLA) loop per epoch, validation and
early stopping.

``fit`` follows the model's contract (``recpipe.models.base.RecModel``): ``fitting == "gradient"``
models are trained by ``prepare`` + ``compute_loss`` steps, ``"closed_form"`` ones (the classic
models, content) by ``fit_closed_form``; ``objective`` picks the validation metric (RMSE for
``"rating"``, recall@10 over the full catalog for ``"implicit"``). Saving and loading live in
``recpipe.models.io``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe import distributed
from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation import metrics
from recpipe.evaluation.ranking import rank_metrics
from recpipe.evaluation.registry import metric_key
from recpipe.features import fit_feature_spec
from recpipe.io import atomic_file
from recpipe.models import RecModel, build, get

log = logging.getLogger(__name__)

VAL_K = 10


@dataclass(frozen=True)
class TrainResult:
    """What ``fit`` did: one history row per epoch (epoch, loss, val metric, seconds) and the best.

    ``examples_per_second`` is the training throughput after the first epoch (which includes
    tracing and XLA compilation), or of the only epoch.
    """

    history: pd.DataFrame
    metric: str
    best_epoch: int
    best_value: float
    train_seconds: float
    examples_per_second: float
    params: dict[str, Any] = field(default_factory=dict)  # hyperparameters a closed-form fit chose
    val_ndcg: float = float("nan")  # validation ndcg_at_10 of the kept weights (the sweeps' ranking objective)


def build_model(
    model_cfg: Any, data: Processed, seed: int, features_cfg: Any = None
) -> tuple[RecModel, dict[str, Any]]:
    """Build ``model_cfg``'s model for ``data`` (initialized from ``seed``); also return the
    JSON-ready build context to save.

    Models that use item/user features (``uses_features``: content, hybrid) get the feature spec
    fitted on the catalogs (``features_cfg`` = ``data.features``: which ones) and the catalogs to
    encode; the spec is the saved context.
    """
    tf.keras.utils.set_random_seed(seed)
    if not get(model_cfg.name).uses_features:
        return build(model_cfg, data.n_users, data.n_items), {}
    spec = fit_feature_spec(data.items, data.users, features_cfg)
    model = build(model_cfg, data.n_users, data.n_items, features=spec, items=data.items, users=data.users)
    return model, {"features": spec.to_dict()}


def make_optimizer(name: str, learning_rate: float) -> tf.keras.optimizers.Optimizer:
    """A tf.keras optimizer by name (``adam``, ``adagrad``, ``sgd``, ...)."""
    try:
        optimizer = tf.keras.optimizers.deserialize(
            {"class_name": name, "config": {"learning_rate": learning_rate, "is_legacy_optimizer": False}}
        )
    except (ValueError, TypeError) as e:
        raise RecpipeError(f"model.optimizer: {e}") from e
    if not isinstance(optimizer, tf.keras.optimizers.Optimizer):  # unknown names come back as strings
        raise RecpipeError(f"model.optimizer: unknown optimizer {name!r} (e.g. adam, adagrad, sgd)")
    return optimizer


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches in an epoch of ``n_rows`` rows (the last one filled up, see ``make_dataset``)."""
    return -(-n_rows // batch_size)


def make_dataset(rows: pd.DataFrame, batch_size: int, seed: int) -> tf.data.Dataset:
    """Full batches of ``rows`` as dicts of tensors, in a new seeded random order every epoch.

    An epoch is ``ceil(len(rows) / batch_size)`` batches of exactly ``batch_size`` rows: every
    row once, the last batch filled up with rows from the start of the epoch's order, so XLA
    compiles one program. The columns are held as in-memory tensors and each epoch gathers
    batches through a permutation drawn from the seed; one tf.data element per batch, not per
    row, keeps the input pipeline well above a million rows a second. Each batch also carries
    ``seed``, an int64 [2] seed of its own for the model's stateless random ops (e.g. sampled
    negatives), so training is reproducible with and without XLA.
    """
    columns = {c: tf.constant(rows[c].to_numpy(np.int32)) for c in ("user_idx", "item_idx")}
    if "rating" in rows:
        columns["rating"] = tf.constant(rows["rating"].to_numpy(np.float32))
    n = len(rows)
    steps = steps_per_epoch(n, batch_size)
    repeats = -(-steps * batch_size // n)

    def epoch(key: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([key, seed]))
        order = tf.reshape(tf.tile(order, [repeats])[: steps * batch_size], [steps, batch_size])

        def batch(step: tf.Tensor) -> dict[str, tf.Tensor]:
            picked = order[step]
            return {"seed": tf.stack([key, step]), **{c: tf.gather(t, picked) for c, t in columns.items()}}

        return tf.data.Dataset.range(steps).map(batch)

    return (
        tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        .take(1)
        .flat_map(epoch)
        .prefetch(tf.data.AUTOTUNE)
    )


def rmse(model: RecModel, rows: pd.DataFrame) -> float:
    """Root mean squared error of ``model.predict_rating`` on ``rows`` (user_idx, item_idx, rating); nan
    for no rows."""
    if rows.empty:
        return float("nan")
    pred = model.predict_rating(
        tf.constant(rows["user_idx"].to_numpy(np.int32)), tf.constant(rows["item_idx"].to_numpy(np.int32))
    ).numpy()
    return metrics.rmse(pred, rows["rating"].to_numpy(np.float64))


def validator(model: RecModel, data: Processed) -> tuple[str, Callable[[], float], bool]:
    """(metric name, function computing it, higher is better) for early stopping ``model``.

    Rating models: RMSE on the validation ratings. Others: recall@10 over the full catalog for the
    users with validation items, each user's train items excluded.
    """
    if data.val.empty:
        raise RecpipeError("data/processed/val.parquet is empty: early stopping needs a validation split")
    if model.objective == "rating":
        val = data.val.dropna(subset=["rating"])
        return "val_rmse", lambda: rmse(model, val), False
    exclude, truth = data.matrix("train"), data.matrix("val")
    key = metric_key("recall", VAL_K)

    def recall() -> float:
        return float(rank_metrics(lambda users: model.score_all(tf.constant(users)), exclude, truth, (VAL_K,))[key])

    return f"val_{key}", recall, True


def validation_ndcg(model: RecModel, data: Processed) -> float:
    """ndcg@10 over the full catalog on the validation split (each user's train items excluded):
    the ranking objective of hyperparameter searches, for every model."""
    values = rank_metrics(lambda u: model.score_all(tf.constant(u)), data.matrix("train"), data.matrix("val"), (VAL_K,))
    return float(values[metric_key("ndcg", VAL_K)])


def fit(
    model: RecModel,
    data: Processed,
    model_cfg: Any,
    seed: int,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` with early stopping on the validation metric.

    Reads ``optimizer``, ``learning_rate``, ``batch_size``, ``epochs``, ``patience``,
    ``min_epochs`` (default 1) and ``jit_compile`` (XLA, default false) from ``model_cfg``; prints
    one line per epoch and calls ``on_epoch`` with that epoch's history row. Ends with the weights
    of the best epoch from ``min_epochs`` on (as Keras' ``EarlyStopping(start_from_epoch=...)``),
    after ``patience`` epochs without improvement (``stops_early``): on a temporal split the first,
    popularity-like epoch of an implicit model can score best on validation, and would otherwise
    be kept before the model learned anything personal.
    ``closed_form`` models are fit by ``fit_closed_form(data)`` instead and validated once.
    With a ``strategy`` (``MultiWorkerMirroredStrategy``; ``model`` built in its scope, and this
    call too) each global batch is split across its replicas (``recpipe.distributed``).
    """
    tf.keras.utils.set_random_seed(seed)
    metric, validate, higher_is_better = validator(model, data)
    if model.fitting == "closed_form":
        result = _fit_closed_form(model, data, metric, validate, on_epoch)
        return replace(result, val_ndcg=validation_ndcg(model, data))
    rows = model.prepare(data.train)
    batch_size, jit_compile = int(model_cfg.batch_size), bool(model_cfg.get("jit_compile", False))
    steps = tf.constant(steps_per_epoch(len(rows), batch_size))
    optimizer = make_optimizer(str(model_cfg.optimizer), float(model_cfg.learning_rate))
    optimizer.build(model.trainable_variables)
    if strategy is None:
        dataset = make_dataset(rows, batch_size, seed)
        run_epoch = _epoch_function(model, optimizer, jit_compile)
    else:
        distributed.check_batch_size(batch_size, strategy.num_replicas_in_sync)
        dataset = distributed.distribute(strategy, lambda: make_dataset(rows, batch_size, seed))
        run_epoch = distributed.epoch_function(strategy, model, optimizer, jit_compile)
        validate = distributed.agreed(strategy, validate)

    min_epochs = min(int(model_cfg.get("min_epochs", 1)), int(model_cfg.epochs))
    history: list[dict[str, float]] = []
    best_value, best_epoch, best_weights = -np.inf if higher_is_better else np.inf, 0, model.get_weights()
    train_seconds = 0.0
    for epoch in range(1, int(model_cfg.epochs) + 1):
        start = time.perf_counter()
        loss = float(run_epoch(iter(dataset), steps))
        seconds = time.perf_counter() - start
        train_seconds += seconds
        if not np.isfinite(loss):
            raise RecpipeError(f"training diverged (loss {loss}) at epoch {epoch}; lower model.learning_rate")
        value = validate()
        row = {"epoch": epoch, "loss": loss, metric: value, "seconds": seconds}
        history.append(row)
        monitored = epoch >= min_epochs
        improved = monitored and (value > best_value if higher_is_better else value < best_value)
        if improved:
            best_value, best_epoch, best_weights = value, epoch, model.get_weights()
        log.info(
            f"epoch {epoch:3d}/{model_cfg.epochs}  loss {loss:.4f}  {metric} {value:.4f}"
            f"{' *' if improved else '  '}  {seconds:.1f}s"
        )
        if on_epoch is not None:
            on_epoch(row)
        if stops_early(epoch, best_epoch, int(model_cfg.patience), min_epochs):
            log.info(f"early stop: no {metric} improvement in {model_cfg.patience} epochs")
            break
    model.set_weights(best_weights)
    return TrainResult(
        history=pd.DataFrame(history),
        metric=metric,
        best_epoch=best_epoch,
        best_value=float(best_value),
        train_seconds=train_seconds,
        examples_per_second=_throughput(len(rows), [row["seconds"] for row in history]),
        val_ndcg=validation_ndcg(model, data),
    )


def stops_early(epoch: int, best_epoch: int, patience: int, min_epochs: int) -> bool:
    """Whether training ends after ``epoch``: ``patience`` epochs without a better validation
    value since ``best_epoch`` (the best from ``min_epochs`` on), and at least ``min_epochs`` run."""
    return epoch >= min_epochs and epoch - best_epoch >= patience


def _throughput(n_rows: int, epoch_seconds: list[float]) -> float:
    """Rows per second of training, leaving out the first epoch (tracing, XLA compilation) if there are more."""
    steady = epoch_seconds[1:] or epoch_seconds
    return n_rows * len(steady) / sum(steady)


def _fit_closed_form(
    model: RecModel,
    data: Processed,
    metric: str,
    validate: Callable[[], float],
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> TrainResult:
    """Fit a ``closed_form`` model in one pass and validate it. History: the model's ``fit_history``
    (one row per validation while fitting, the last one the kept model) or one row; no loss."""
    start = time.perf_counter()
    model.fit_history = None
    params = model.fit_closed_form(data)
    seconds = time.perf_counter() - start
    value = validate()
    row = {"epoch": 1, "loss": float("nan"), metric: value, "seconds": seconds}
    history = pd.DataFrame([row]) if model.fit_history is None else model.fit_history
    log.info(f"fit in closed form{f' {params}' if params else ''}  {metric} {value:.4f}  {seconds:.1f}s")
    if on_epoch is not None:
        for step in history.to_dict("records"):
            on_epoch(step)
    return TrainResult(
        history=history,
        metric=metric,
        best_epoch=int(history["epoch"].iloc[-1]),
        best_value=value,
        train_seconds=seconds,
        examples_per_second=len(data.train) * model.data_passes / max(seconds, 1e-9),
        params=params,
    )


def _epoch_function(model: RecModel, optimizer: tf.keras.optimizers.Optimizer, jit_compile: bool) -> Callable:
    """A tf.function ``(batch iterator, steps)`` that runs ``steps`` batches and returns their
    example-weighted mean loss.

    With ``jit_compile`` each step (loss, gradients and the optimizer update) is one XLA program:
    several times faster on CPU than TensorFlow's per-op kernels for embedding models. XLA has no
    ``tf.unique``, which Keras optimizers use to merge sparse gradients, so there embedding
    gradients are made dense: the update covers whole tables (Keras' Adam decays every row's
    moments at every step anyway), which XLA fuses into one pass per table.
    """
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True)
        gradients = tape.gradient(loss, variables)
        if jit_compile:
            gradients = [tf.convert_to_tensor(g) for g in gradients]
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    @tf.function
    def run_epoch(batches: Iterator[dict[str, tf.Tensor]], steps: tf.Tensor) -> tf.Tensor:
        # an explicit loop over an iterator: ``for batch in dataset`` would run the steps inside
        # tf.data (a dataset scan), without XLA and several times slower
        total, count = tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(steps):
            batch = next(batches)
            n = tf.cast(tf.shape(batch["user_idx"])[0], tf.float32)
            total, count = total + step(batch) * n, count + n
        return total / count

    return run_epoch


def count_params(model: RecModel) -> int:
    """Number of trainable parameters."""
    return int(sum(np.prod(v.shape) for v in model.trainable_variables))


def train_summary(model_cfg: Any, model: RecModel, result: TrainResult) -> dict[str, Any]:
    """models/train/train_summary.json: what was trained, how long, and the best validation value."""
    return {
        "model": str(model_cfg.name),
        "metric": result.metric,
        "best_value": result.best_value,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "train_seconds": round(result.train_seconds, 3),
        "examples_per_second": round(result.examples_per_second, 1),
        "n_params": count_params(model),
        "fitted_params": result.params,
        f"val_{metric_key('ndcg', VAL_K)}": result.val_ndcg,
    }


def write_training_curve(result: TrainResult, path: Path) -> None:
    """The per-epoch history as a long CSV (epoch, series, value; series ``loss`` and the
    validation metric, e.g. ``val_rmse``) for ``dvc plots``, atomically."""
    long = result.history.melt(id_vars="epoch", value_vars=["loss", result.metric], var_name="series")
    with atomic_file(path) as tmp:
        long.sort_values(["series", "epoch"], kind="stable").to_csv(tmp, index=False)
