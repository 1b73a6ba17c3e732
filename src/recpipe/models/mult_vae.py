"""``model=mult_vae``: the variational autoencoder with a multinomial likelihood of Liang, Krishnan,
Hoffman & Jebara, "Variational Autoencoders for Collaborative Filtering" (WWW 2018), in tf.keras.

A user is the L2-normalised binary vector of their train items, with input dropout; the encoder
(tanh ``hidden`` layer) gives the mean and log-variance of a ``latent``-dimensional Gaussian, the
decoder (tanh ``hidden`` layer) the logits of a softmax over the whole catalog. The loss per user
is the multinomial log-likelihood of their items plus ``beta`` x KL(q(z|x) || N(0, I)), ``beta``
annealed linearly from 0 to ``beta_max`` over ``anneal_steps`` steps (the paper's partially
regularized VAE), plus ``l2`` on the layer weights. Scoring uses the mean of q(z|x) of the user's
train items, without dropout. Trained by ``recpipe.training.fit``: one training row per user, so
an epoch sees every user once, as in the paper.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.models.base import RecModel, register
from recpipe.models.common import constant, implicit_rows


def available_memory() -> int:
    """Bytes of memory this process may use: physical memory, or the cgroup's limit if lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            memory = min(memory, int(value))
    return memory


def check_dense_fits(n_users: int, n_items: int) -> None:
    """Refuse, before allocating, a users x items float32 input whose copies (the variable, the
    array it is filled from, the tensor converted from it) do not fit the memory available."""
    need, memory = 3 * 4 * n_users * n_items, available_memory()
    if need > memory:
        raise RecpipeError(
            f"model=mult_vae keeps the train matrix dense: {n_users:,} users x {n_items:,} items x 4 bytes, "
            f"3 copies while it is filled = {need / 2**30:.1f} GiB, more than the {memory / 2**30:.1f} GiB "
            "available; use a sparse model (model=ials, model=mf, model=ease) or a blend without it (model.members)"
        )


@register("mult_vae")
class MultVAE(RecModel):
    """Mult-VAE^PR: softmax decoder over the catalog, KL annealed to ``beta_max``."""

    objective = "implicit"
    fitting = "gradient"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        check_dense_fits(n_users, n_items)  # before any weight is allocated
        super().__init__(name="mult_vae")
        self.n_items, self.latent = n_items, int(cfg.latent)
        self.dropout, self.l2 = float(cfg.dropout), float(cfg.l2)
        self.beta_max, self.anneal_steps = float(cfg.beta_max), int(cfg.anneal_steps)
        self.min_rating = cfg.min_rating
        hidden = int(cfg.hidden)
        self.encoder = [tf.keras.layers.Dense(hidden, activation="tanh"), tf.keras.layers.Dense(2 * self.latent)]
        self.decoder = [tf.keras.layers.Dense(hidden, activation="tanh"), tf.keras.layers.Dense(n_items)]
        for layers, width in ((self.encoder, n_items), (self.decoder, self.latent)):
            for layer in layers:
                layer.build((None, width))
                width = layer.units
        # dense, so a step compiles with XLA (users x items floats: fine at MovieLens-1M scale)
        self.train_items = constant(self, "train_items", (n_users, n_items))
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", trainable=False)

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Keep the users' train items (the input); one row per user with a train item."""
        rows = implicit_rows(train, self.min_rating)
        users, items = rows["user_idx"].to_numpy(), rows["item_idx"].to_numpy()
        matrix = np.zeros(self.train_items.shape, np.float32)
        matrix[users, items] = 1.0
        self.train_items.assign(matrix)
        unique = np.unique(users).astype(np.int32)
        return pd.DataFrame({"user_idx": unique, "item_idx": np.zeros_like(unique)})

    def _encode(self, x: tf.Tensor, seed: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        h = tf.math.l2_normalize(x, axis=1)
        if seed is not None and self.dropout > 0:
            h = tf.nn.experimental.stateless_dropout(h, self.dropout, seed=seed)
        out = self.encoder[1](self.encoder[0](h))
        return out[:, : self.latent], out[:, self.latent :]

    def _decode(self, z: tf.Tensor) -> tf.Tensor:
        return self.decoder[1](self.decoder[0](z))

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        x = tf.gather(self.train_items, batch["user_idx"])
        seed = batch["seed"]
        mu, logvar = self._encode(x, seed if training else None)
        eps = tf.random.stateless_normal(tf.shape(mu), seed=tf.random.experimental.stateless_fold_in(seed, 1))
        z = mu + eps * tf.exp(0.5 * logvar) if training else mu
        log_softmax = tf.nn.log_softmax(self._decode(z))
        nll = -tf.reduce_mean(tf.reduce_sum(log_softmax * x, axis=1))
        kl = tf.reduce_mean(0.5 * tf.reduce_sum(tf.exp(logvar) + tf.square(mu) - 1.0 - logvar, axis=1))
        beta = self.beta_max * tf.minimum(1.0, self.steps / float(max(self.anneal_steps, 1)))
        if training:
            self.steps.assign_add(1.0)
        weights = [layer.kernel for layer in (*self.encoder, *self.decoder)]
        return nll + beta * kl + self.l2 * tf.add_n([tf.reduce_sum(tf.square(w)) for w in weights])

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        mu, _ = self._encode(tf.gather(self.train_items, user_idx), None)
        return self._decode(mu)
