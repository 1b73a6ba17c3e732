"""``recpipe train`` on the configured engine: ``training.fit`` in this process, or with
``engine=ray`` on Ray Train (``recpipe.engines.ray_train``) for gradient-trained models."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from recpipe import training
from recpipe.data.processed import Processed
from recpipe.engines import name
from recpipe.models.base import RecModel

log = logging.getLogger(__name__)


def fit(
    model: RecModel, data: Processed, cfg: Any, on_epoch: Callable[[dict[str, float]], None] | None = None
) -> training.TrainResult:
    """``training.fit`` on ``cfg.engine``: gradient models on the Ray cluster with ``engine=ray``;
    closed-form models (one pass over the data, no gradient steps to share) always in this process."""
    if name(cfg) == "ray":
        if model.fitting == "gradient":
            from recpipe.engines import ray_train

            return ray_train.fit(model, data, cfg, on_epoch)
        log.info(
            f"engine=ray: model {cfg.model.name} is fit in closed form, on one worker (this process); "
            "only gradient-trained models train across engine.num_workers"
        )
    return training.fit(model, data, cfg.model, int(cfg.seed), on_epoch=on_epoch)
