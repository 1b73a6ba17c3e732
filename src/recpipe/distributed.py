"""Training across workers with ``tf.distribute.MultiWorkerMirroredStrategy``: what
``recpipe.training.fit`` runs instead of its single-process epoch when given a strategy.

Every worker runs the same loop on the same seeded order of the training rows: each global batch
(``model.batch_size`` rows, as without a strategy) is cut into one equal part per replica, each
replica computes the loss of its part, gradients are summed across workers (all-reduce) and every
replica applies the same update, so the variables stay identical everywhere. Validation values are
averaged across workers, so all of them take the same early-stopping decision. This module knows
nothing of Ray: ``recpipe.engines.ray_train`` starts the workers (Ray Train sets ``TF_CONFIG``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.models.base import RecModel


def replica_part(batch: dict[str, tf.Tensor], n_replicas: int, replica: int) -> dict[str, tf.Tensor]:
    """Replica ``replica``'s share of a global batch (``training.make_dataset``'s element): rows
    ``[replica * b, (replica + 1) * b)`` with ``b = batch size / n_replicas``, and a seed of its own
    (``step * n_replicas + replica``), so sampled negatives differ between replicas; with one
    replica this is the batch itself."""
    size = tf.shape(batch["user_idx"])[0] // n_replicas
    part = {k: v[replica * size : (replica + 1) * size] for k, v in batch.items() if k != "seed"}
    seed = batch["seed"]
    part["seed"] = tf.stack([seed[0], seed[1] * n_replicas + replica])
    return part


def check_batch_size(batch_size: int, n_replicas: int) -> None:
    """The global batch must split evenly across replicas (every replica runs the same program)."""
    if batch_size % n_replicas:
        raise RecpipeError(
            f"model.batch_size: {batch_size} rows do not split evenly across {n_replicas} workers; "
            f"use a multiple of engine.num_workers (e.g. {batch_size - batch_size % n_replicas or n_replicas})"
        )


def distribute(
    strategy: tf.distribute.Strategy, global_batches: Callable[[], tf.data.Dataset]
) -> tf.distribute.DistributedDataset:
    """Each worker's input: ``global_batches()`` (the same seeded global batches on every worker)
    cut to the worker's replica share. CPU workers hold one replica each."""

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if context.num_input_pipelines != context.num_replicas_in_sync:
            raise RecpipeError(
                f"{context.num_replicas_in_sync} replicas on {context.num_input_pipelines} workers: recpipe "
                "trains one replica per worker (CPU workers, engine.num_workers)"
            )
        n, replica = context.num_replicas_in_sync, context.input_pipeline_id
        return global_batches().map(lambda batch: replica_part(batch, n, replica))

    return strategy.distribute_datasets_from_function(dataset)


def epoch_function(
    strategy: tf.distribute.Strategy,
    model: RecModel,
    optimizer: tf.keras.optimizers.Optimizer,
    jit_compile: bool,
) -> Callable[[Iterator, tf.Tensor], tf.Tensor]:
    """A tf.function ``(distributed batch iterator, steps)`` that runs ``steps`` global batches and
    returns the mean loss of the global batches.

    A global batch's loss is the mean of the replicas' losses: each replica's loss is divided by
    the number of replicas, and the optimizer sums gradients across them. With ``jit_compile`` the
    loss and gradients of a replica are one XLA program (dense embedding gradients, as without a
    strategy); the all-reduce and the update run outside XLA, which has no cross-worker collectives
    on CPU.
    """
    variables = model.trainable_variables
    replicas = strategy.num_replicas_in_sync

    @tf.function(jit_compile=jit_compile)
    def gradients(batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, list]:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(batch, training=True) / replicas
        grads = tape.gradient(loss, variables)
        if jit_compile:
            grads = [tf.convert_to_tensor(g) for g in grads]
        return loss, grads

    def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
        loss, grads = gradients(batch)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    @tf.function
    def run_epoch(batches: Iterator, steps: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        for _ in tf.range(steps):
            total += strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(step, args=(next(batches),)), axis=None)
        return total / tf.cast(steps, tf.float32)

    return run_epoch


def agreed(strategy: tf.distribute.Strategy, value: Callable[[], float]) -> Callable[[], float]:
    """``value`` averaged across all replicas: the same number on every worker (each worker
    computes it on identical variables; the average removes any last-bit difference, so no worker
    stops early alone and leaves the others waiting in a collective)."""

    def mean() -> float:
        local = tf.constant(value(), tf.float64)
        per_replica = strategy.run(lambda: tf.identity(local))
        return float(strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None))

    return mean
