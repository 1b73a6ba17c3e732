"""The whole pipeline on N synthetic interactions (ML-25M-shaped by default), stage by stage.

    python bench/scale.py [N] [--users 162000] [--items 59000] [--keep DIR] [overrides ...]

N, the options and Hydra overrides (``model.embedding_dim=16``, ``model=ease`` ...) mix in any
order. Composes the repository's conf/ (``python -m recpipe compose``: data=synthetic of that size
plus the defaults below and the overrides) into a temporary folder (or ``--keep DIR``) and runs the
DVC stages' commands there (``python -m recpipe ingest`` ... ``export``, the commands of dvc.yaml),
each under ``/usr/bin/time`` for its wall time and peak RSS, with their own MLflow store
(``MLFLOW_TRACKING_URI``: ``mlflow.db`` in that folder; nothing goes to the user's store or
registry). Then queries the exported model for a sample of users and compares its top-10 with
exact scoring by the trained model (recall@10; an item whose exact score ties the exact 10th best
counts as a hit) and times single-user and batched queries. Prints one table, each system's fit
and scoring time from the evaluate stage's log, and EASE's item cap (items kept, dropped share).
When a stage fails, it prints the stage's last log lines and the stages that finished, keeps the
folder and exits 1.

Defaults (each one only when the user gives no value for its key and the composed config has it):
``model=mf`` (the default blend has members dense in users x items), ``model.epochs=3`` as in
issue 12's measurement (MF's default gibbs solver: 3 sweeps), ``evaluate.max_users=20000`` (a
seeded sample of test users; the report states its effect on the intervals), and for a factorized
model (mf, ials, two_tower, content: candidate vectors) ``export.index=scann`` with an index sized
by ``--items`` (``scann_settings``; other models export brute force). For gradient-trained models
(``model.solver=gradient``, ncf, two_tower ...) a larger ``model.batch_size`` (e.g. 65536) lowers
the cost per rating: each Adam step updates whole embedding tables. MF's gibbs solver has no batches.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "preprocess", "train", "evaluate", "export")
# Defaults (see the module docstring and ``bench_overrides``)
MODEL = "model=mf"
SETTINGS = ("model.epochs=3", "evaluate.max_users=20000")
K = 10
LOG_LINES = 5
MARKER = ".recpipe_scale"  # marks a folder as a bench run's: --keep may reuse it
_TIMES = re.compile(r"(fit baseline|evaluated) (\S+) in ([\d.]+) s")


class StageFailed(Exception):
    """A stage command exited non-zero."""

    def __init__(self, stage: str, code: int, log: Path) -> None:
        super().__init__(f"recpipe {stage} failed (exit {code})")
        self.log = log


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: N, options and overrides in any order (an override has ``=`` or starts with ``~``)."""
    parser = argparse.ArgumentParser(
        prog="bench/scale.py",
        usage="%(prog)s [N] [--users U] [--items I] [--keep DIR] [overrides ...]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--users", type=positive_int, default=162_000, metavar="U", help="synthetic users (default 162000)"
    )
    parser.add_argument(
        "--items", type=positive_int, default=59_000, metavar="I", help="synthetic items (default 59000)"
    )
    parser.add_argument(
        "--keep", type=Path, metavar="DIR", help="run in this folder and keep it (default: a temporary one)"
    )
    parser.add_argument(
        "words",
        nargs="*",
        metavar="N | override",
        help="N: interactions (default 25000000); overrides: Hydra overrides (they win over the defaults above)",
    )
    args = parser.parse_intermixed_args(argv)
    args.overrides = [w for w in args.words if "=" in w or w.startswith("~")]
    numbers = [w for w in args.words if w not in args.overrides]
    if len(numbers) > 1:
        parser.error(f"one N expected, got {' '.join(numbers)} (an override looks like key=value)")
    try:
        args.n = positive_int(numbers[0]) if numbers else 25_000_000
    except argparse.ArgumentTypeError as e:
        parser.error(f"argument N: {e}")
    return args


def override_key(override: str) -> str:
    """The config key an override sets: ``model.epochs=3``, ``+a.b=1``, ``~a.b`` -> ``model.epochs``, ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def scann_settings(items: int) -> tuple[str, ...]:
    """``export.scann`` overrides for a catalog of ``items``: leaves grow with sqrt(items) (250 at
    59,000 items: recall@10 1.000 there), 16% of them searched but at least enough for ~1000 items
    (small catalogs are searched almost exhaustively), 2 x leaves candidates (at least 200)
    re-scored exactly. The export caps leaves at the catalog size."""
    leaves = max(1, round(250 * math.sqrt(items / 59_000)))
    search = min(leaves, max(math.ceil(leaves * 40 / 250), math.ceil(leaves * 1000 / items)))
    return (
        f"export.scann.num_leaves={leaves}",
        f"export.scann.num_leaves_to_search={search}",
        f"export.scann.num_reordering_candidates={max(200, 2 * leaves)}",
    )


def factorized(model_name: str) -> bool:
    """Whether model ``model_name`` has candidate vectors (what ``export.index=scann`` indexes)."""
    from recpipe.models import RecModel, get

    return get(model_name).candidate_vectors is not RecModel.candidate_vectors


def bench_overrides(n: int, users: int, items: int, overrides: Sequence[str], catalog: int | None = None) -> list[str]:
    """All overrides of the run: the data size, ``model=mf``, ``SETTINGS`` that the config composed
    with the user's choices has, ``export.index=scann`` for a factorized model and then
    ``scann_settings`` for ``catalog`` items (default ``items``; the catalog left after preprocess
    can be smaller), each default only when the user does not set its key; then ``overrides``.
    Raises RecpipeError when conf/ does not compose with them or ``overrides`` size the data."""
    from omegaconf import OmegaConf

    from recpipe.config import compose
    from recpipe.errors import RecpipeError

    data = ["data=synthetic", f"data.n_users={users}", f"data.n_items={items}", f"data.n_interactions={n}"]
    given = {override_key(o) for o in overrides}
    if sized := sorted(given & {override_key(o) for o in data}):
        raise RecpipeError(f"{', '.join(sized)}: the benchmark's data is data=synthetic, sized by N, --users, --items")
    model = [] if "model" in given else [MODEL]
    cfg = compose([*data, *model, *overrides], REPO / "conf")
    missing = object()
    defaults = [o for o in SETTINGS if OmegaConf.select(cfg, override_key(o), default=missing) is not missing]
    index = cfg.export.index
    if "export.index" not in given and factorized(cfg.model.name):
        index = "scann"
        defaults.append("export.index=scann")
    if index == "scann":
        defaults += scann_settings(catalog or items)
    return [*data, *model, *(o for o in defaults if override_key(o) not in given), *overrides]


def stage_env(work: Path) -> dict[str, str]:
    """The stages' environment: legacy Keras and an MLflow store (and so registry) of their own in ``work``."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
    return env | {"TF_USE_LEGACY_KERAS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}


def last_lines(text: str, lines: int = LOG_LINES) -> list[str]:
    """The last non-empty lines of a command's output (progress bars' carriage-return updates split)."""
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()][-lines:]


def run_stage(stage: str, work: Path, env: Mapping[str, str]) -> tuple[float, float]:
    """Run ``python -m recpipe <stage>`` in ``work`` (output to ``<stage>.log`` there); (wall
    seconds, peak RSS GiB). Raises StageFailed."""
    timing, log = work / f".time_{stage}", work / f"{stage}.log"
    command = ["/usr/bin/time", "-o", str(timing), "-f", "%e %M", sys.executable, "-m", "recpipe", stage]
    with log.open("w") as out:
        done = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise StageFailed(stage, done.returncode, log)
    wall, kib = timing.read_text().split()[-2:]
    return float(wall), int(kib) / 2**20


_SWEEP_RATE = re.compile(r"gibbs sweep \d+/\d+  ([\d,]+) ratings/s")


def throughput(stage: str, work: Path, n: int) -> str:
    """A stage's throughput column."""
    if stage == "train":
        summary = json.loads((work / "models/train/train_summary.json").read_text())
        rate = f"{summary['examples_per_second'] / 1e6:.2f} M ratings/s over the whole fit"
        sweeps = _SWEEP_RATE.findall((work / "train.log").read_text())  # gibbs MF: the sampling alone
        return rate + (f" ({float(sweeps[-1].replace(',', '')) / 1e6:.2f} M/s in the sweeps)" if sweeps else "")
    if stage in ("ingest", "preprocess"):
        return f"{n / 1e6:.1f} M interactions"
    if stage == "evaluate":
        info = json.loads((work / "reports/evaluation.json").read_text())
        sample = info.get("user_sample", {})
        return f"{sample.get('evaluated_users')} of {sample.get('test_users')} test users x {info['items']} items"
    return ""


def tie_aware_recall(scores: np.ndarray, approx: np.ndarray, k: int = K) -> np.ndarray:
    """Per-user recall@k of approximate top-k lists ``approx`` (item indices [n, k], -1: empty slot)
    against exact ``scores`` [n, items] (-inf: not recommendable, e.g. seen). An item is a hit when
    its exact score reaches the exact k-th best score, so items tied at the cut are not misses.
    Out of min(k, recommendable items); 1.0 for a user with none."""
    width = min(k, scores.shape[1])
    kth = -np.partition(-scores, width - 1, axis=1)[:, width - 1]
    got = np.take_along_axis(scores, np.maximum(approx, 0), axis=1)
    hits = ((approx >= 0) & np.isfinite(got) & (got >= kth[:, None])).sum(axis=1)
    wanted = np.minimum(width, np.isfinite(scores).sum(axis=1))
    return np.where(wanted > 0, hits / np.maximum(wanted, 1), 1.0)


def query_check(work: Path, n_users: int = 2000, seed: int = 0) -> dict[str, Any]:
    """recall@K (``tie_aware_recall``) of the exported model against exact scoring by the trained
    model (the same users, seen items excluded), and its query latency (one user; batches of 256)."""
    import recpipe  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    from recpipe.data.processed import load_processed
    from recpipe.models.io import load_model
    from recpipe.serving.load import export_info, load_export, recommend

    data = load_processed(work / "data/processed")
    model = load_model(work / "models/train/model")
    export = load_export(work / "models/export")
    picked = np.random.default_rng(seed).choice(data.n_users, size=min(n_users, data.n_users), replace=False)
    users = np.sort(picked).astype(np.int32)  # the models' user index dtype
    ids = data.users["user_id"].astype(str).to_numpy()
    item_index = {str(i): n for n, i in enumerate(data.items["item_id"].astype(str))}
    row = {ids[u]: r for r, u in enumerate(users)}
    got = recommend(export, list(ids[users]), K)
    approx = np.full((len(users), K), -1, dtype=np.int64)
    if len(got):  # users the export has no answer for keep -1 (misses)
        at = got["user_id"].map(row).to_numpy(np.int64), got["rank"].to_numpy(np.int64) - 1
        approx[at] = got["item_id"].map(item_index).to_numpy(np.int64)
    seen = data.matrix("train", "val")
    recalls = []
    for s in range(0, len(users), 256):
        batch = users[s : s + 256]
        scores = np.array(model.score_all(batch), dtype=np.float32)
        scores[seen[batch].nonzero()] = -np.inf
        recalls.append(tie_aware_recall(scores, approx[s : s + 256]))
    single = []
    for u in users[:200]:
        start = time.perf_counter()
        recommend(export, [ids[u]], K)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for s in range(0, len(users), 256):
        recommend(export, list(ids[users[s : s + 256]]), K)
    return {
        "index": export_info(work / "models/export")["index"],
        "recall": float(np.mean(np.concatenate(recalls))),
        "p50_ms": 1e3 * float(np.median(single)),
        "p99_ms": 1e3 * float(np.quantile(single, 0.99)),
        "batched_ms": 1e3 * (time.perf_counter() - start) / len(users),
    }


def capped(params: Mapping[str, Any], name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, params) of every fitted model in ``params`` (nested: a blend's members) with an item cap."""
    if "items_kept" in params:
        yield name, params
    for key, value in params.items():
        if isinstance(value, Mapping):
            yield from capped(value, f"{name}.{key}")


def item_caps(work: Path) -> list[str]:
    """What the run recorded about item caps (EASE's ``max_items``): items kept of the catalog and
    the share of train interactions dropped, for the model (train stage) and each baseline."""
    info = json.loads((work / "reports/evaluation.json").read_text())
    summary = json.loads((work / "models/train/train_summary.json").read_text())
    found = [(f"{name} (model)", p) for name, p in capped(summary.get("fitted_params") or {}, summary["model"])]
    for baseline, params in info.get("baseline_params", {}).items():
        found += [(f"{name} (baseline)", p) for name, p in capped(params, baseline)]
    return [
        f"{name}: {p['items_kept']:,} of {info['items']:,} items kept (max_items {p['max_items']:,}), "
        f"dropped interaction share {p['dropped_interaction_share']:.3f}"
        for name, p in found
    ]


def system_times(log: Path) -> list[str]:
    """The evaluate stage's per-system costs: one line of fit times, one of scoring times."""
    times = _TIMES.findall(log.read_text(errors="replace"))
    return [
        f"{label}: " + "; ".join(f"{name} {float(s):.0f} s" for what, name, s in times if what == kind)
        for kind, label in (("fit baseline", "fit"), ("evaluated", "evaluated"))
    ]


def export_label(index: str) -> str:
    """How the query check names the export: by its ``export.index``."""
    return {"scann": "ScaNN export", "brute_force": "brute-force export (exact)"}.get(index, f"{index} export")


def table(rows: Sequence[tuple[str, float, float, str]]) -> str:
    """The markdown table of the stages that ran."""
    lines = ["| stage | wall s | peak RSS GiB | throughput |", "|---|---:|---:|---|"]
    lines += [f"| {stage} | {wall:.0f} | {rss:.1f} | {rate} |" for stage, wall, rss, rate in rows]
    if rows:
        lines.append(f"| **total** | {sum(r[1] for r in rows):.0f} | {max(r[2] for r in rows):.1f} (max) | |")
    return "\n".join(lines)


def unusable_keep(path: Path) -> str | None:
    """Why ``--keep path`` cannot hold a run (it would overwrite a file or a project), or None."""
    if path.exists() and not path.is_dir():
        return "is a file"
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        return "is a folder with other files (a project?); give a new or empty folder, or one of an earlier run"
    return None


def catalog_size(work: Path) -> int:
    """The number of items in ``work``'s data/processed (the catalog the model ranks)."""
    return pq.ParquetFile(work / "data/processed/items.parquet").metadata.num_rows


def write_params(work: Path, env: Mapping[str, str], overrides: Sequence[str]) -> bool:
    """``recpipe compose`` the run's params.yaml into ``work``; False (its error printed) if it fails."""
    compose = [sys.executable, "-m", "recpipe", "compose", "--config-dir", str(REPO / "conf")]
    done = subprocess.run(
        [*compose, "--output", str(work / "params.yaml"), *overrides], cwd=work, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        print(*last_lines(done.stdout + done.stderr, 1), file=sys.stderr)
    return done.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from recpipe.errors import RecpipeError

    try:
        overrides = bench_overrides(args.n, args.users, args.items, args.overrides)
    except RecpipeError as e:
        message = " ".join(str(e).split("Config search path")[0].split())  # Hydra's lines as one
        print(f"bench/scale.py: error: {message}", file=sys.stderr)
        return 2
    if args.keep and (problem := unusable_keep(args.keep)):
        print(f"bench/scale.py: error: --keep {args.keep}: {problem}", file=sys.stderr)
        return 2
    work = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="recpipe_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    env = stage_env(work)
    keep = args.keep is not None
    rows: list[tuple[str, float, float, str]] = []
    try:
        if not write_params(work, env, overrides):
            return 2
        print(f"{args.n:,} interactions, {args.users:,} users, {args.items:,} items in {work}", flush=True)
        print("overrides: " + " ".join(overrides), flush=True)
        for stage in STAGES:
            wall, rss = run_stage(stage, work, env)
            rows.append((stage, wall, rss, throughput(stage, work, args.n)))
            print(f"  {stage}: {wall:.0f} s, {rss:.1f} GiB", flush=True)
            if stage == "preprocess" and (catalog := catalog_size(work)) != args.items:
                # ScaNN sized for the catalog preprocess left (a sparse run keeps fewer items)
                overrides = bench_overrides(args.n, args.users, args.items, args.overrides, catalog)
                if not write_params(work, env, overrides):
                    return 2
        check = query_check(work)
        costs, caps = system_times(work / "evaluate.log"), item_caps(work)
    except StageFailed as e:
        keep = True
        print(
            f"\n{e}; the last lines of {e.log}:",
            *(f"  {line}" for line in last_lines(e.log.read_text(errors="replace"))),
            sep="\n",
        )
        print(f"\nstages that finished:\n{table(rows)}" if rows else "\nno stage finished")
        print(f"\nthe work folder is kept: {work}")
        return 1
    except BaseException:  # anything else (the query check, Ctrl-C): keep the run for a look
        keep = True
        print(f"\nthe work folder is kept: {work}", file=sys.stderr)
        raise
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{table(rows)}\n")
    print("evaluate, per system (seconds):", *costs, sep="\n  ")
    print("item caps:", *(caps or ["none (no model with max_items)"]), sep="\n  ")
    print(
        f"{export_label(check['index'])}: recall@{K} vs exact {check['recall']:.3f} (an item tied with the exact "
        f"{K}th score counts as a hit); latency one user p50 {check['p50_ms']:.1f} ms, "
        f"p99 {check['p99_ms']:.1f} ms; batches of 256: {check['batched_ms']:.2f} ms per user"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
