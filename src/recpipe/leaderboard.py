"""``recpipe report``: like-for-like markdown tables of the evaluated MLflow runs.

Runs are comparable only on the same data and protocol, so the report groups them by dataset
fingerprint (the DVC hash of the processed data, tag ``recpipe.dataset_fingerprint``), split and
common config hash (seed, data, preprocess, split, evaluate: ``tracking.common_config_hash``) and
prints one table per group, never two groups in one table. By default only the group(s) of the
current params.yaml's common config are shown (``--all`` shows every group; ``--dataset`` and
``--split`` choose groups instead).

In a table, each model's row is its latest *entry*: a single run, or a sweep (the child runs of one
parent) reduced to its best trial by the sweep's validation objective (metric ``objective``, its
name in tag ``recpipe.objective``), labelled as such. The baselines evaluated beside the models
(``baseline.<name>.<metric>``) follow as their own rows. A metric with an interval
(``<metric>_ci_low`` / ``_ci_high``) is shown as ``value [low, high]``.

README's results table is this output (``recpipe report --update-readme`` rewrites the block
between ``<!-- results:start -->`` and ``<!-- results:end -->`` with exactly one group, and
records its config hash there; a test compares it with the committed params.yaml).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recpipe import tracking
from recpipe.errors import RecpipeError
from recpipe.evaluation.headline import HEADLINE_BASELINE_METRICS
from recpipe.evaluation.registry import MAIN_METRICS, higher_is_better, split_baseline_key
from recpipe.io import atomic_file
from recpipe.tracking_server import check_server

DEFAULT_METRICS = MAIN_METRICS  # the @10 ranking metrics, rmse, mae
TRAIN_TIME = "train_seconds"  # logged by the train stage
OBJECTIVE = "objective"  # logged by every `recpipe run` job
START, END = "<!-- results:start -->", "<!-- results:end -->"
CONFIG_MARK = re.compile(r"<!-- results:config_hash=(?P<hash>[0-9a-f]+) -->")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Row:
    """One table row: the MLflow run it shows and, for a sweep's best trial, how it was chosen."""

    model: str
    run_id: str
    run_name: str
    start_time: int
    metrics: dict[str, float]
    label: str = ""


@dataclass(frozen=True)
class GroupKey:
    """What makes runs comparable: the same processed data, split and common config."""

    fingerprint: str
    split: str
    config_hash: str
    data: str

    def heading(self) -> str:
        return (
            f"Data `{self.data}`, split `{self.split}`, dataset fingerprint `{self.fingerprint[:12]}`, "
            f"config hash `{self.config_hash}`"
        )


@dataclass
class Group:
    key: GroupKey
    rows: list[Row] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)


def group_key(tags: dict[str, str]) -> GroupKey:
    return GroupKey(
        fingerprint=tags.get(tracking.TAG_FINGERPRINT, UNKNOWN),
        split=tags.get(tracking.TAG_SPLIT, UNKNOWN),
        config_hash=tags.get(tracking.TAG_COMMON, UNKNOWN),
        data=tags.get(tracking.TAG_DATA, UNKNOWN),
    )


def evaluated_runs(
    experiment: str, metrics: Sequence[str], parent_run_id: str | None = None, tracking_uri: str | None = None
) -> list[Any]:
    """Finished runs of ``experiment`` with a ``model`` tag and any of ``metrics`` (optionally only
    the children of sweep ``parent_run_id``), newest first; dead RUNNING runs are reaped first."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri or tracking.tracking_uri())
    check_server(client.tracking_uri, experiment)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise RecpipeError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; run the pipeline first")
    tracking.reap_dead_runs(exp.experiment_id)
    query = "attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.mlflow.parentRunId = '{parent_run_id}'"
    found, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time DESC"], page_token=token)
        found += [r for r in page if r.data.tags.get("model") and any(m in r.data.metrics for m in metrics)]
        token = page.token
        if not token:
            return found


def _row(run: Any, label: str = "") -> Row:
    return Row(
        run.data.tags["model"],
        run.info.run_id,
        run.info.run_name or "",
        run.info.start_time,
        dict(run.data.metrics),
        label,
    )


def best_trial(trials: Sequence[Any], direction: str | None = None) -> Row:
    """The trial of one sweep with the best ``objective`` (``direction`` ``minimize`` /
    ``maximize``, else from the objective's name: errors down, ranking metrics up), labelled
    ``best of N trials by <objective>``; a sweep of one job is that job's plain row."""
    if len(trials) == 1:
        return _row(trials[0])
    scored = [t for t in trials if OBJECTIVE in t.data.metrics] or list(trials)
    name = scored[0].data.tags.get("recpipe.objective", OBJECTIVE)
    higher = direction == "maximize" if direction else higher_is_better(name.removeprefix("val_")) is not False
    best = (max if higher else min)(scored, key=lambda t: t.data.metrics.get(OBJECTIVE, float("nan")))
    return _row(best, f"best of {len(trials)} trials by {name}")


def entries(runs: Iterable[Any], directions: dict[str, str] | None = None) -> list[Row]:
    """One row per model: its latest entry (a run, or a sweep reduced by ``best_trial``;
    ``directions``: a sweep parent's id -> its optimisation direction)."""
    directions = directions or {}
    sweeps: dict[tuple[str, str], list[Any]] = {}
    rows: list[Row] = []
    for r in runs:
        parent = r.data.tags.get("mlflow.parentRunId")
        if parent:
            sweeps.setdefault((parent, r.data.tags["model"]), []).append(r)
        else:
            rows.append(_row(r))
    rows += [  # a sweep is as recent as its latest trial
        replace(best_trial(trials, directions.get(parent)), start_time=max(t.info.start_time for t in trials))
        for (parent, _), trials in sweeps.items()
    ]
    newest: dict[str, Row] = {}
    for r in sorted(rows, key=lambda r: r.start_time, reverse=True):
        newest.setdefault(r.model, r)
    return sorted(newest.values(), key=lambda r: r.model)


def baseline_rows(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``baseline.<name>.<metric>`` metrics of one run as ``{name: {metric: value}}``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if (parts := split_baseline_key(key)) and parts[1] in HEADLINE_BASELINE_METRICS:
            out.setdefault(parts[0], {})[parts[1]] = value
    return dict(sorted(out.items()))


def group_runs(runs: Sequence[Any], directions: dict[str, str] | None = None) -> list[Group]:
    """Runs (newest first) grouped by ``group_key``, each reduced to one row per model (``entries``)
    with the baselines of the group's newest run; groups in order of their newest run."""
    by_key: dict[GroupKey, list[Any]] = {}
    for r in runs:
        by_key.setdefault(group_key(r.data.tags), []).append(r)
    return [
        Group(key, entries(members, directions), baseline_rows(dict(members[0].data.metrics)))
        for key, members in by_key.items()
    ]


def select(groups: Sequence[Group], config_hash: str | None, dataset: str | None, split: str | None) -> list[Group]:
    """The groups of ``config_hash`` whose fingerprint starts with or data is ``dataset`` and whose
    split is ``split`` (None: any)."""
    return [
        g
        for g in groups
        if (config_hash is None or g.key.config_hash == config_hash)
        and (dataset is None or g.key.fingerprint.startswith(dataset) or g.key.data == dataset)
        and (split is None or g.key.split == split)
    ]


def format_metric(metrics: dict[str, float], name: str) -> str:
    """``0.1234``, ``0.1234 [0.1100, 0.1350]`` when the interval is logged, ``-`` when missing."""
    if name not in metrics:
        return "-"
    text = f"{metrics[name]:.4f}"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is not None and high is not None:
        text += f" [{low:.4f}, {high:.4f}]"
    return text


def markdown_table(group: Group, metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """One row per model (metrics any row has, train time, the run's name and id, how it was
    chosen), then one per baseline."""
    columns = [m for m in metrics if any(m in r.metrics for r in group.rows)]
    lines = [
        "| model | " + " | ".join(columns) + " | train time (s) | MLflow run |",
        "|---|" + "---:|" * len(columns) + "---:|---|",
    ]
    for r in group.rows:
        seconds = f"{r.metrics[TRAIN_TIME]:.1f}" if TRAIN_TIME in r.metrics else "-"
        cells = [format_metric(r.metrics, m) for m in columns]
        label = f" ({r.label})" if r.label else ""
        lines.append(f"| {r.model} | " + " | ".join(cells) + f" | {seconds} | {r.run_name} `{r.run_id[:8]}`{label} |")
    for name, values in group.baselines.items():
        cells = [format_metric(values, m) for m in columns]
        lines.append(f"| baseline: {name} | " + " | ".join(cells) + " | - | (evaluated with each model) |")
    return "\n".join(lines) + "\n"


def render(groups: Sequence[Group], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Each group as its heading and its own table."""
    return "\n".join(f"{g.key.heading()}:\n\n{markdown_table(g, metrics)}" for g in groups)


def readme_block(group: Group, metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """README's results block: the config hash mark, the heading and the table."""
    return (
        f"<!-- results:config_hash={group.key.config_hash} -->\n{group.key.heading()} "
        f"(generated by `recpipe report --update-readme`):\n\n{markdown_table(group, metrics)}"
    )


def readme_config_hash(text: str) -> str | None:
    """The config hash README's results block was generated from."""
    m = CONFIG_MARK.search(text)
    return m["hash"] if m else None


def replace_block(text: str, block: str, path: str = "README.md") -> str:
    """``text`` with everything between the results markers replaced by ``block``."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise RecpipeError(f"{path}: no '{START}' ... '{END}' block to update")
    return text[: start + len(START)] + "\n" + block + text[end:]


def current_config_hash(params: Path) -> str | None:
    """``tracking.common_config_hash`` of ``params`` (None when the file is missing)."""
    from recpipe.config import load_params

    return tracking.common_config_hash(load_params(params)) if params.exists() else None


def report_command(
    experiment: str,
    metrics: Sequence[str] | None = None,
    parent_run_id: str | None = None,
    update_readme: Path | None = None,
    *,
    dataset: str | None = None,
    split: str | None = None,
    all_groups: bool = False,
    params: Path = Path("params.yaml"),
) -> int:
    """``recpipe report``: print one table per group, or with ``update_readme`` write the single
    selected group into that file."""
    metrics = list(metrics or DEFAULT_METRICS)
    runs = evaluated_runs(experiment, metrics, parent_run_id)
    directions = {r.info.run_id: r.data.tags.get("recpipe.direction", "") for r in _parents(runs)}
    config_hash = None if all_groups or dataset or split else current_config_hash(params)
    groups = select(group_runs(runs, directions), config_hash, dataset, split)
    if not groups:
        where = f" with the config of {params} (hash {config_hash}; --all shows every group)" if config_hash else ""
        raise RecpipeError(f"experiment {experiment!r} has no finished run with any of {', '.join(metrics)}{where}")
    if update_readme is None:
        sys.stdout.write(render(groups, metrics))
        return 0
    if len(groups) > 1:
        keys = "; ".join(g.key.heading() for g in groups)
        raise RecpipeError(f"{len(groups)} groups of runs match ({keys}); choose one with --dataset/--split")
    if not update_readme.exists():
        raise RecpipeError(f"{update_readme} not found")
    block = readme_block(groups[0], metrics)
    text = replace_block(update_readme.read_text(encoding="utf-8"), block, str(update_readme))
    with atomic_file(update_readme) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(
        f"updated the results table in {update_readme} ({len(groups[0].rows)} models, "
        f"config hash {groups[0].key.config_hash})"
    )
    return 0


def _parents(runs: Sequence[Any]) -> list[Any]:
    """The sweep parent runs of ``runs``."""
    from mlflow import MlflowClient

    ids = sorted({p for r in runs if (p := r.data.tags.get("mlflow.parentRunId"))})
    if not ids:
        return []
    client = MlflowClient(tracking.tracking_uri())
    return [client.get_run(i) for i in ids]
