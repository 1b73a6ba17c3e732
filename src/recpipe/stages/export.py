"""``recpipe export``: the trained model as a top-K serving SavedModel in models/export/.

The SavedModel (see ``recpipe.serving.export``) is also logged to the active MLflow run and registered
in the model registry as ``cfg.export.registered_model_name``; the promotion gate
(``recpipe.serving.promotion``) then decides whether the ``champion`` alias moves to it. The gate's
evidence (from reports/ and data/processed) is written to models/export/promotion.json; its decision
depends on the registry, so it is recorded in MLflow only (and printed).
"""

from __future__ import annotations

import dataclasses
import logging

from omegaconf import DictConfig

from recpipe.data.processed import load_processed
from recpipe.paths import Paths
from recpipe.serving import promotion
from recpipe.serving.export import build_server, register_server, save_server, scoring
from recpipe.serving.load import load_export, recommend
from recpipe.terminal import printable
from recpipe.tracking import PER_USER_FILE

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Build the serving module from models/model and data/processed, save it, register it."""
    from recpipe.models.io import load_model

    data = load_processed(paths.processed)
    server = build_server(load_model(paths.model), data, cfg.export)
    evidence = promotion.collect(cfg, paths)
    # register first, swap last: a failure leaves the previous models/export/ (and dvc.lock)
    version = register_server(server, cfg.export, example_user=str(data.users["user_id"].iloc[0]))
    if version:
        name = cfg.export.registered_model_name
        promotion.attach(name, version, evidence, paths.reports / PER_USER_FILE)
        log.info(promotion.gate(name, promotion.client().get_model_version(name, version)).line())
    extra = {promotion.EVIDENCE_FILE: dataclasses.asdict(evidence)} if evidence else {}
    save_server(server, paths.export, cfg.export.index, extra)
    registered = f"; registered as {cfg.export.registered_model_name} v{version}" if version else ""
    log.info(
        f"exported {cfg.export.index} top-k model ({data.n_users} users, {data.n_items} items, "
        f"k <= {server.k_cap}, scoring {scoring(server)}) to {paths.export}{registered}"
    )
    sample = recommend(load_export(paths.export), [str(data.users["user_id"].iloc[0])], 5)
    log.info(sample.map(lambda v: printable(v) if isinstance(v, str) else v).to_string(index=False))
