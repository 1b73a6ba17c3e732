"""The whole pipeline on N synthetic interactions (ML-25M-shaped by default), stage by stage.

    python bench/scale.py [N] [--users 162000] [--items 59000] [--keep DIR] [overrides ...]

Composes the repository's conf/ (``recpipe compose``: data=synthetic of that size plus the
overrides below and any given) into a temporary folder and runs the DVC stages' commands there
(``recpipe ingest`` ... ``recpipe export``, the commands of dvc.yaml), each under
``/usr/bin/time`` for its wall time and peak RSS. Then queries the exported ScaNN model for a
sample of users and compares its top-10 with exact scoring by the trained model (recall@10) and
times single-user and batched queries. Prints one table; per-baseline fit and scoring times come
from the evaluate stage's log.

Defaults for this size (override any): ``model.epochs=3`` as in issue 12's measurement,
``model.batch_size=65536`` (each Adam step updates whole embedding tables, so the cost per rating
falls with the batch size), ``evaluate.max_users=20000`` (a seeded sample of test users; the
report states its effect on the intervals) and a ScaNN index sized for ~60k items.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "preprocess", "train", "evaluate", "export")
DEFAULTS = (
    "model=mf",  # the pipeline at scale with MF (blend, the ML-100K default, is dense in users x items)
    "model.epochs=3",
    "model.batch_size=65536",
    "evaluate.max_users=20000",
    "export.index=scann",
    "export.scann.num_leaves=250",
    "export.scann.num_leaves_to_search=40",
    "export.scann.num_reordering_candidates=500",
)
_LOG_TIME = re.compile(r"(fit baseline|evaluated) (\S+) in ([\d.]+) s")


def run_stage(stage: str, work: Path, log: Path) -> tuple[float, float]:
    """Run ``recpipe <stage>`` in ``work`` (output to ``log``); (wall seconds, peak RSS GiB)."""
    timing = work / f".time_{stage}"
    with log.open("w") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-o", str(timing), "-f", "%e %M", "recpipe", stage], cwd=work, stdout=out, stderr=out
        )
    if done.returncode != 0:
        sys.exit(f"recpipe {stage} failed (exit {done.returncode}); see {log}")
    wall, kib = timing.read_text().split()[-2:]
    return float(wall), int(kib) / 2**20


def throughput(stage: str, work: Path, n: int) -> str:
    """A stage's throughput column."""
    import json

    if stage == "train":
        summary = json.loads((work / "models/train/train_summary.json").read_text())
        return f"{summary['examples_per_second'] / 1e6:.2f} M ratings/s (train incl. validation)"
    if stage in ("ingest", "preprocess"):
        return f"{n / 1e6:.1f} M interactions"
    if stage == "evaluate":
        info = json.loads((work / "reports/evaluation.json").read_text())
        sample = info.get("user_sample", {})
        return f"{sample.get('evaluated_users')} of {sample.get('test_users')} test users x {info['items']} items"
    return ""


def scann_check(work: Path, n_users: int = 2000, seed: int = 0) -> dict[str, float]:
    """recall@10 of the exported ScaNN model against exact scoring by the trained model (the same
    users, seen items excluded), and its query latency (one user; batches of 256)."""
    import recpipe  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    from recpipe.data.processed import load_processed
    from recpipe.evaluation.ranking import top_k_items
    from recpipe.models.io import load_model
    from recpipe.serving.load import load_export, recommend

    data = load_processed(work / "data/processed")
    model = load_model(work / "models/train/model")
    users = np.sort(np.random.default_rng(seed).choice(data.n_users, size=min(n_users, data.n_users), replace=False))
    exact, _ = top_k_items(lambda u: model.score_all(u), users, data.matrix("train", "val"), 10)
    export = load_export(work / "models/export")
    ids = data.users["user_id"].astype(str).to_numpy()
    item_index = {str(i): n for n, i in enumerate(data.items["item_id"].astype(str))}
    got = recommend(export, list(ids[users]), 10)
    approx = got.groupby("user_id")["item_id"].apply(lambda s: {item_index[i] for i in s}).to_dict()
    recall = np.mean([len(approx.get(ids[u], set()) & set(exact[r])) / 10 for r, u in enumerate(users)])
    single = []
    for u in users[:200]:
        start = time.perf_counter()
        recommend(export, [ids[u]], 10)
        single.append(time.perf_counter() - start)
    start = time.perf_counter()
    for s in range(0, len(users), 256):
        recommend(export, list(ids[users[s : s + 256]]), 10)
    batched = (time.perf_counter() - start) / len(users)
    return {
        "recall": float(recall),
        "p50_ms": 1e3 * float(np.median(single)),
        "p99_ms": 1e3 * float(np.quantile(single, 0.99)),
        "batched_ms": 1e3 * batched,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("n", nargs="?", type=int, default=25_000_000, help="interactions (default 25M)")
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--items", type=int, default=59_000)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides (after the defaults above)")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="recpipe_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    overrides = [
        "data=synthetic",
        f"data.n_users={args.users}",
        f"data.n_items={args.items}",
        f"data.n_interactions={args.n}",
        *DEFAULTS,
        *args.overrides,
    ]
    compose = ["recpipe", "compose", "--config-dir", str(REPO / "conf"), "--output", str(work / "params.yaml")]
    subprocess.run([*compose, *overrides], cwd=work, check=True, stdout=subprocess.DEVNULL)
    print(f"{args.n:,} interactions, {args.users:,} users, {args.items:,} items in {work}", flush=True)
    rows = []
    try:
        for stage in STAGES:
            wall, rss = run_stage(stage, work, work / f"{stage}.log")
            rows.append((stage, wall, rss, throughput(stage, work, args.n)))
            print(f"  {stage}: {wall:.0f} s, {rss:.1f} GiB", flush=True)
        check = scann_check(work)
        costs = _LOG_TIME.findall((work / "evaluate.log").read_text())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| stage | wall s | peak RSS GiB | throughput |\n|---|---:|---:|---|")
    for stage, wall, rss, rate in rows:
        print(f"| {stage} | {wall:.0f} | {rss:.1f} | {rate} |")
    print(f"| **total** | {sum(r[1] for r in rows):.0f} | {max(r[2] for r in rows):.1f} (max) | |")
    print(
        "\nevaluate, per system: " + "; ".join(f"{what.split()[0]} {name} {float(s):.0f} s" for what, name, s in costs)
    )
    print(
        f"ScaNN export: recall@10 vs exact {check['recall']:.3f}; latency one user p50 {check['p50_ms']:.1f} ms, "
        f"p99 {check['p99_ms']:.1f} ms; batches of 256: {check['batched_ms']:.2f} ms per user"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
