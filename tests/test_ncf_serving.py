"""NCF scores the same eagerly and traced with an unknown batch size (as the export serves it)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.models import build

from .conftest import REPO


def test_ncf_score_all_traces_with_unknown_batch():
    model = build(OmegaConf.load(REPO / "conf/model/ncf.yaml"), n_users=20, n_items=30)
    users = tf.constant([1, 3, 5], tf.int32)
    traced = tf.function(model.score_all, input_signature=[tf.TensorSpec([None], tf.int32)])
    np.testing.assert_allclose(traced(users).numpy(), model.score_all(users).numpy(), atol=1e-5)
    assert traced(users).shape == (3, 30)
