"""``recpipe report``: a markdown table of each model's latest evaluated MLflow run.

README's results table is this output (``recpipe report --update-readme`` rewrites the block
between ``<!-- results:start -->`` and ``<!-- results:end -->``). A metric that has an interval
(``<metric>_ci_low`` / ``<metric>_ci_high`` in the same run) is shown as ``value [low, high]``.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recpipe import tracking
from recpipe.errors import RecpipeError
from recpipe.evaluation.report import MAIN_METRICS
from recpipe.io import atomic_file

DEFAULT_METRICS = MAIN_METRICS  # the @10 ranking metrics, rmse, mae
TRAIN_TIME = "train_seconds"  # logged by the train stage
START, END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass(frozen=True)
class ModelRun:
    """The MLflow run that a table row shows."""

    model: str
    run_id: str
    run_name: str
    start_time: int
    metrics: dict[str, float]


def latest_runs(
    experiment: str,
    metrics: Sequence[str] = DEFAULT_METRICS,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> list[ModelRun]:
    """The latest finished run of each model (tag ``model``) that logged any of ``metrics``,
    optionally only among the child runs of sweep ``parent_run_id``; sorted by model name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri or tracking.tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RecpipeError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; run the pipeline first")
    query = "attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    latest: dict[str, ModelRun] = {}
    token = None
    while True:
        page = client.search_runs(
            [exp.experiment_id], query, order_by=["attributes.start_time DESC"], page_token=token
        )
        for run in page:
            model = run.data.tags.get("model")
            if model and model not in latest and any(m in run.data.metrics for m in metrics):
                latest[model] = ModelRun(
                    model=model,
                    run_id=run.info.run_id,
                    run_name=run.info.run_name or "",
                    start_time=run.info.start_time,
                    metrics=dict(run.data.metrics),
                )
        token = page.token
        if not token:
            break
    return sorted(latest.values(), key=lambda r: r.model)


def format_metric(metrics: dict[str, float], name: str) -> str:
    """``0.1234``, ``0.1234 [0.1100, 0.1350]`` when the interval is logged, ``-`` when missing."""
    if name not in metrics:
        return "-"
    text = f"{metrics[name]:.4f}"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is not None and high is not None:
        text += f" [{low:.4f}, {high:.4f}]"
    return text


def markdown_table(runs: Sequence[ModelRun], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """One row per run: the ``metrics`` any run has, train time and the run's name and id."""
    columns = [m for m in metrics if any(m in r.metrics for r in runs)]
    lines = [
        "| model | " + " | ".join(columns) + " | train time (s) | MLflow run |",
        "|---|" + "---:|" * len(columns) + "---:|---|",
    ]
    for r in runs:
        seconds = f"{r.metrics[TRAIN_TIME]:.1f}" if TRAIN_TIME in r.metrics else "-"
        cells = [format_metric(r.metrics, m) for m in columns]
        lines.append(f"| {r.model} | " + " | ".join(cells) + f" | {seconds} | {r.run_name} `{r.run_id[:8]}` |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str, path: str = "README.md") -> str:
    """``text`` with everything between the results markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise RecpipeError(f"{path}: no '{START}' ... '{END}' block to update")
    return text[: start + len(START)] + "\n" + block + text[end:]


def report_command(
    experiment: str,
    metrics: Sequence[str] | None = None,
    parent_run_id: str | None = None,
    update_readme: Path | None = None,
) -> int:
    """``recpipe report``: print the table, or with ``update_readme`` write it into that file."""
    metrics = list(metrics or DEFAULT_METRICS)
    runs = latest_runs(experiment, metrics, parent_run_id)
    if not runs:
        raise RecpipeError(f"experiment {experiment!r} has no finished run with any of {', '.join(metrics)}")
    table = markdown_table(runs, metrics)
    if update_readme is None:
        sys.stdout.write(table)
        return 0
    if not update_readme.exists():
        raise RecpipeError(f"{update_readme} not found")
    text = replace_block(update_readme.read_text(encoding="utf-8"), table, str(update_readme))
    with atomic_file(update_readme) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"updated the results table in {update_readme} ({len(runs)} models)")
    return 0
