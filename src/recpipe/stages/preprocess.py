"""``recpipe preprocess``: validate data/raw, then write data/processed (splits, vocabularies, stats);
with ``engine=ray`` on Ray Data (``recpipe.engines.ray_preprocess``), the same bytes."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from recpipe import engines
from recpipe.data.preprocess import preprocess, summary
from recpipe.data.processed import write_processed
from recpipe.data.raw import read_raw
from recpipe.data.splits import NEEDS_TIMESTAMPS
from recpipe.paths import Paths
from recpipe.tracking import log_metrics, stats_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Read and validate the raw tables, preprocess them, and replace data/processed atomically."""
    split = cfg.split.name
    if engines.name(cfg) == "ray":
        from recpipe.engines import ray_preprocess

        stats = ray_preprocess.run(cfg, paths.raw, paths.processed)
    else:
        raw = read_raw(
            paths.raw,
            rating_scale=OmegaConf.select(cfg, "data.rating_scale"),
            require_timestamps=f"split={split}" if split in NEEDS_TIMESTAMPS else None,
        )
        result = preprocess(raw, cfg.preprocess, cfg.split, progress=True)
        write_processed(result, paths.processed)
        stats = result.stats
    log_metrics(stats_metrics(stats))
    log.info(summary(stats))
    log.info(f"split={split}: wrote {paths.processed}")
