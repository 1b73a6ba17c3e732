"""Train on MovieLens 100K with engine=local and engine=ray at 1, 2, ... workers; print the table of
docs/scale-out.md ("What scales how").

    python bench/bench_ray_train.py [--models mf two_tower] [--workers 1 2] [--address local] \
        [--overrides model.epochs=10 ...]

Runs the real commands (`recpipe compose`, `ingest`, `preprocess` once, then `train` and `evaluate`
per row) in a temporary directory with its own MLflow store; `--address` is engine.address (default
`local`: a Ray cluster inside each `recpipe train`; or a running cluster's `host:port`). Columns:
epochs run, train seconds and examples/s (train_summary.json), the best validation value, ndcg@10
and recall@10 of the evaluate stage, and the wall time of `recpipe train`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECPIPE = str(Path(sys.executable).parent / "recpipe")
HEADER = (
    "| model | engine | workers | epochs run | train s | examples/s | best validation | ndcg@10 | recall@10 | wall s |"
    "\n|---|---|---:|---:|---:|---:|---|---:|---:|---:|"
)
FAST_EVALUATE = ["evaluate.baselines=[popularity]", "evaluate.bootstrap.n_resamples=10"]


def recpipe(workdir: Path, *args: str) -> float:
    """Run ``recpipe ARGS`` in ``workdir``; its wall seconds (its output goes to workdir/recpipe.log)."""
    start = time.perf_counter()
    with (workdir / "recpipe.log").open("a") as log:
        subprocess.run([RECPIPE, *args], cwd=workdir, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def row(workdir: Path, model: str, engine: list[str], overrides: list[str]) -> str:
    """Train and evaluate ``model`` with ``engine`` overrides; one markdown table row."""
    recpipe(workdir, "compose", *FAST_EVALUATE, f"model={model}", *engine, *overrides)
    wall = recpipe(workdir, "train")
    recpipe(workdir, "evaluate")
    summary = json.loads((workdir / "models/train/train_summary.json").read_text())
    metrics = json.loads((workdir / "reports/metrics.json").read_text())
    name = "local" if engine == ["engine=local"] else "ray"
    workers = next((e.split("=")[1] for e in engine if e.startswith("engine.num_workers=")), "1")
    return (
        f"| {model} | {name} | {workers} | {summary['epochs_run']} | {summary['train_seconds']:.1f} | "
        f"{summary['examples_per_second']:,.0f} | {summary['metric']} {summary['best_value']:.4f} | "
        f"{metrics['ndcg_at_10']:.4f} | {metrics['recall_at_10']:.4f} | {wall:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mf", "two_tower"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--address", default="local")
    parser.add_argument("--overrides", nargs="*", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        workdir = Path(tmp)
        (workdir / "conf").symlink_to(REPO / "conf")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
        os.environ.setdefault("RAY_TMPDIR", str(workdir / "ray"))
        recpipe(workdir, "compose", *FAST_EVALUATE)
        recpipe(workdir, "ingest")
        recpipe(workdir, "preprocess")
        print(HEADER, flush=True)
        engines = [["engine=local"]] + [
            ["engine=ray", f"engine.num_workers={n}", f"engine.address={args.address}"] for n in args.workers
        ]
        for model in args.models:
            for engine in engines:
                print(row(workdir, model, engine, args.overrides), flush=True)


if __name__ == "__main__":
    main()
