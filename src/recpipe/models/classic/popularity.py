"""``model=popularity``: every user gets the items by train interaction count."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.models.base import register
from recpipe.models.classic.base import ClosedFormModel


@register("popularity")
class Popularity(ClosedFormModel):
    """Most popular items first (train interaction counts)."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.item_popularity = tf.Variable(tf.zeros([n_items]), trainable=False, name="item_popularity")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        self.item_popularity.assign(data.item_popularity().astype(np.float32))
        return {}

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.broadcast_to(self.item_popularity[None, :], [tf.shape(user_idx)[0], self.n_items])
