"""The pipeline's stages, declared once: their order, the module each runs, the one output each
writes and the config sections each reads.

``recpipe <stage>`` (``cli``), the MLflow run's stage order (``tracking``), the output checks
(``outputs``), ``Paths.output``, the code deps of dvc.yaml (``stage_deps``) and ``recpipe run``'s
jobs (``sweep``) all read this; tests/test_stage_deps.py checks that dvc.yaml's stages
(names, order, commands, outs) agree with it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    """One DVC stage: ``name`` (in dvc.yaml and ``recpipe <name>``), the ``module`` it runs, the
    ``Paths`` attribute of its one output (``output``), the config ``sections`` it reads (checked
    before it runs) and its ``help`` line; a stage without ``help`` is no ``recpipe`` command
    (dvc.yaml runs ``python -m <module> <output>``)."""

    name: str
    module: str
    output: str
    sections: tuple[str, ...] = ()
    help: str = ""

    @property
    def command(self) -> bool:
        """True for a ``recpipe <name>`` stage (run by ``cli.run_stage``)."""
        return bool(self.help)


# The recpipe stages, in DAG order (mlflow: the run's experiment name).
STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        "recpipe.stages.ingest",
        "raw",
        ("data", "mlflow"),
        "Read the configured source (data=...) into data/raw/*.parquet.",
    ),
    Stage(
        "preprocess",
        "recpipe.stages.preprocess",
        "processed",
        ("data", "split", "preprocess", "engine", "mlflow"),
        "Validate, deduplicate and filter data/raw, build vocabularies and train/val/test splits into data/processed/.",
    ),
    Stage(
        "train",
        "recpipe.stages.train",
        "train",
        ("data", "model", "seed", "engine", "mlflow"),
        "Train the configured model (model=...) on data/processed; writes models/train/ (model/, "
        "train_summary.json, metrics.json, training_curve.csv).",
    ),
    Stage(
        "evaluate",
        "recpipe.stages.evaluate",
        "reports",
        ("data", "model", "seed", "evaluate", "mlflow"),
        "Score the full catalog for every test user (or a seeded sample of evaluate.max_users of them), "
        "for the model and the baselines; writes "
        "reports/: metrics.json and baselines.json (headline metrics), detail.json (every metric, with "
        "per-segment and cold-item ones), intervals.json (bootstrap), evaluation.md and plots/.",
    ),
    Stage(
        "export",
        "recpipe.stages.export",
        "export",
        ("export", "seed", "split", "mlflow"),
        "Export a top-K serving SavedModel to models/export/ (with promotion.json, the evidence the "
        "promotion gate compares), register it in MLflow and move the alias 'champion' to it if it "
        "passes the gate (see recpipe promote --help).",
    ),
)
# dvc.yaml's last stage: the offline page `dvc plots show` fills (no recpipe command, no config).
PLOTS_PAGE = Stage("plots_page", "recpipe.plots_page", "plots_page")
DVC_STAGES: tuple[Stage, ...] = (*STAGES, PLOTS_PAGE)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    """The stage called ``name`` (any of ``DVC_STAGES``); KeyError for another name."""
    for s in DVC_STAGES:
        if s.name == name:
            return s
    raise KeyError(name)
