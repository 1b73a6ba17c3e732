"""``recpipe evaluate``: the trained model and the baselines on the test split, over the full catalog.

Evaluating is ``recpipe.evaluation.systems.evaluate_systems``; writing reports/ (as a whole, see
``recpipe.evaluation.reports.write_reports``) and logging it to the active MLflow run is
``recpipe.evaluation.reports``.
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf

from recpipe.data.processed import load_processed
from recpipe.evaluation.reports import format_table, log_to_mlflow, write_reports
from recpipe.evaluation.systems import evaluate_systems, system_name
from recpipe.paths import Paths

log = logging.getLogger(__name__)


def run(cfg: DictConfig, paths: Paths) -> None:
    """Evaluate models/model and the configured baselines on data/processed's test split."""
    from recpipe.models.io import load_model

    start = time.perf_counter()
    data = load_processed(paths.processed)
    model = load_model(paths.model)
    model_name = system_name(OmegaConf.select(cfg, "model.name") or "model", list(cfg.evaluate.baselines))
    rating_scale = OmegaConf.select(cfg, "data.rating_scale")
    report = evaluate_systems(model, model_name, data, cfg.evaluate, int(cfg.seed), rating_scale)
    write_reports(paths.reports, report)
    seconds = time.perf_counter() - start
    log_to_mlflow(report, paths.reports, seconds)
    summary = report.summary
    log.info(
        f"{summary['test_users']} test users, {data.n_items} items, {summary['cold_items']['items']} cold items, "
        f"{seconds:.1f} s"
    )
    log.info(format_table(report.systems))
