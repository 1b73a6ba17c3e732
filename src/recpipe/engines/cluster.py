"""Connecting to the Ray cluster of ``engine=ray``.

``engine.address`` names the cluster; null means the ``RAY_ADDRESS`` environment variable, and
without it ``local``: a one-machine cluster started inside this process and stopped with it.
Every Ray worker runs this process's recpipe code (shipped as a ``py_modules`` runtime
environment, so the nodes need recpipe's dependencies installed, not recpipe itself) with
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow is imported.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

import recpipe
from recpipe.errors import RecpipeError

log = logging.getLogger(__name__)

# set in every Ray worker before it imports TensorFlow
WORKER_ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


def address(engine_cfg: Any) -> str:
    """The cluster to use: ``engine.address``, else ``RAY_ADDRESS``, else ``local``."""
    return str(OmegaConf.select(engine_cfg, "address") or os.environ.get("RAY_ADDRESS") or "local")


def runtime_env() -> dict[str, Any]:
    """The runtime environment of recpipe's Ray jobs: its code and ``WORKER_ENV``."""
    return {"py_modules": [str(Path(recpipe.__file__).parent)], "env_vars": dict(WORKER_ENV)}


def check_reachable(where: str, timeout: float = 10.0) -> None:
    """Fail fast when a ``host:port`` cluster address does not answer (Ray itself retries for minutes)."""
    host, sep, port = where.rpartition(":")
    if where == "local" or "://" in where or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RecpipeError(
            f"engine.address={where!r}: no Ray cluster answers there ({e.strerror or e}). Start one with "
            "`ray start --head --port=...` and give its address (engine.address or RAY_ADDRESS), or use "
            "engine.address=local"
        ) from None


@contextmanager
def connected(engine_cfg: Any) -> Iterator[str]:
    """Connect to the cluster (``address``) for the duration of the block; yields the address."""
    import ray

    where = address(engine_cfg)
    check_reachable(where)
    options: dict[str, Any] = {"include_dashboard": False} if where == "local" else {}
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        ray.init(
            address=where,
            runtime_env=runtime_env(),
            logging_level=logging.WARNING,
            # Ray's own Python loggers in the workers: errors only (recpipe's loggers keep INFO)
            logging_config=ray.LoggingConfig(log_level="ERROR"),
            **options,
        )
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise RecpipeError(
            f"engine.address={where!r}: cannot connect to a Ray cluster ({type(e).__name__}: {reason}). Start one "
            "with `ray start --head` and give its address (engine.address or RAY_ADDRESS), or use "
            "engine.address=local"
        ) from None
    root.handlers[:] = handlers  # Ray's logging_config is for its workers: this process keeps recpipe's logging
    root.setLevel(level)
    try:
        cpus, nodes = ray.cluster_resources().get("CPU", 0), sum(node["Alive"] for node in ray.nodes())
        log.info(f"engine=ray: connected to {where} ({cpus:g} CPUs on {nodes} node(s))")
        yield where
    finally:
        ray.shutdown()
