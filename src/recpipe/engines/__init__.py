"""Where the stages run: the ``engine`` config group (conf/engine/).

``engine=local`` (the default) runs every stage in the ``recpipe`` process. With ``engine=ray``
``recpipe train`` trains gradient models with Ray Train's ``TensorflowTrainer`` across
``engine.num_workers`` workers (``recpipe.engines.train``, ``recpipe.engines.ray_train``) and
``recpipe preprocess`` runs on Ray Data (``recpipe.engines.ray_preprocess``); both write the same
outputs as the local engine (docs/scale-out.md). The other stages run in the ``recpipe`` process
either way. This package imports only OmegaConf, so that preprocess's Ray workers do not load TensorFlow.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def name(cfg: Any) -> str:
    """``engine.name`` of ``cfg`` (``local`` when the config has no engine section)."""
    return str(OmegaConf.select(cfg, "engine.name", default="local"))
