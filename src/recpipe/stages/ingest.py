"""``recpipe ingest``: read the configured source (``data=...``) into data/raw/."""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from recpipe.data.raw import write_raw
from recpipe.data.sources import check_inputs_declared, load_source
from recpipe.paths import Paths
from recpipe.tracking import log_metrics

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Load ``cfg.data``'s source and write data/raw/ (Parquet tables and source.json) atomically."""
    check_inputs_declared(cfg.data)
    start = time.perf_counter()
    log.info(f"ingest: reading data={cfg.data.source}" + (f" {cfg.data.name}" if cfg.data.get("name") else ""))
    raw = load_source(cfg.data)
    log.info(
        f"ingest: read {len(raw.interactions):,} interactions in {time.perf_counter() - start:.1f} s; "
        f"writing {paths.raw}"
    )
    s = write_raw(raw, paths.raw)
    label = " ".join(str(raw.source[k]) for k in ("source", "name") if k in raw.source)
    log.info(
        f"ingest: {label}: {s['interactions']:,} interactions, {s['users']:,} users, "
        f"{s['items']:,} items -> {paths.raw} ({time.perf_counter() - start:.1f} s)"
    )
    log_metrics({f"raw_{k}": v for k, v in s.items()})
