"""``model=random``: every user gets the catalog in a random order of their own, fixed by ``seed``."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel


def hash_uniform(seed: int | tf.Tensor, user_idx: Any, n_items: int) -> tf.Tensor:
    """Uniform [0, 1) float32 [len(user_idx), n_items], a pure function of (seed, user, item).

    A splitmix64 hash, so a user's scores do not depend on batching or on the other users.
    ``seed`` is an integer or an int64 scalar tensor.
    """

    def u64(value: int) -> tf.Tensor:
        return tf.constant(value, tf.uint64)

    def xorshift(x: tf.Tensor, shift: int) -> tf.Tensor:
        return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, u64(shift)))

    users = tf.cast(tf.convert_to_tensor(user_idx), tf.uint64)
    items = tf.cast(tf.range(n_items), tf.uint64)
    x = tf.bitwise.bitwise_or(tf.bitwise.left_shift(users[:, None], u64(32)), items[None, :])
    x = tf.bitwise.bitwise_xor(x, tf.cast(tf.convert_to_tensor(seed, tf.int64), tf.uint64) * u64(0x9E3779B97F4A7C15))
    x = xorshift(x, 30) * u64(0xBF58476D1CE4E5B9)
    x = xorshift(x, 27) * u64(0x94D049BB133111EB)
    x = xorshift(x, 31)
    return tf.cast(tf.bitwise.right_shift(x, u64(40)), tf.float32) * 2.0**-24


@register("random")
class Random(ClosedFormModel):
    """Scores ``hash_uniform(seed, user, item)``: reproducible, independent of batching."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.seed = tf.Variable(int(cfg.seed), dtype=tf.int64, trainable=False, name="seed")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        return {"seed": int(self.seed.numpy())}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return hash_uniform(self.seed, user_idx, self.n_items)
