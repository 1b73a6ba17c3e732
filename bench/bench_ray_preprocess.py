"""Preprocess a synthetic data set with engine=local and engine=ray on running Ray clusters; print
the table of docs/scale-out.md ("How preprocess is distributed") and check the outputs are the same.

    python bench/bench_ray_preprocess.py --addresses 127.0.0.1:6379 [127.0.0.1:6380 ...] \
        [--interactions 2000000] [--shards 8] [--overrides split=leave_last ...]

Writes a synthetic data/raw (``data=synthetic`` at the given sizes, plus 2% repeated pairs) whose
interactions are ``--shards`` Parquet files, then runs preprocess once with the local engine and
once per address (``engine.address``; ``local`` starts a cluster inside the run), each in a fresh
process, and compares every data/processed file with the local engine's. Columns: engine, address,
the cluster's nodes and CPUs, wall seconds of the preprocess call, and whether the bytes match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from recpipe.config import compose  # noqa: E402
from recpipe.data.raw import RawData, write_raw  # noqa: E402
from recpipe.data.sources import load_source  # noqa: E402

HEADER = "| engine | address | nodes | CPUs | wall s | same bytes as local |\n|---|---|---:|---:|---:|---|"


def overrides(args: argparse.Namespace) -> list[str]:
    n = args.interactions
    return [
        "data=synthetic",
        f"data.n_interactions={n}",
        f"data.n_users={n // 50}",
        f"data.n_items={n // 200}",
        *args.overrides,
    ]


def make_raw(folder: Path, args: argparse.Namespace) -> Path:
    """data/raw with the interactions in ``args.shards`` Parquet files (and repeated pairs)."""
    raw = load_source(compose(overrides(args), REPO / "conf").data)
    df = raw.interactions
    repeats = df.sample(frac=0.02, random_state=1)
    write_raw(RawData(pd.concat([df, repeats], ignore_index=True), raw.items, raw.users, raw.source), folder)
    table = pq.read_table(folder / "interactions.parquet")
    (folder / "interactions.parquet").unlink()
    (folder / "interactions.parquet").mkdir()
    bounds = np.linspace(0, len(table), args.shards + 1).astype(int)
    for i in range(args.shards):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        pq.write_table(part, folder / f"interactions.parquet/part-{i:05d}.parquet")
    return folder


def run_one(engine: str, raw: Path, out: Path, args: argparse.Namespace) -> dict:
    """Preprocess ``raw`` into ``out`` on ``engine`` (``local`` or a Ray address) in this process."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    engine_overrides = ["engine=local"] if engine == "engine-local" else ["engine=ray", f"engine.address={engine}"]
    cfg = compose([*overrides(args), *engine_overrides], REPO / "conf")
    start = time.perf_counter()
    if engine == "engine-local":
        from recpipe.data.preprocess import preprocess
        from recpipe.data.processed import write_processed
        from recpipe.data.raw import read_raw
        from recpipe.data.splits import NEEDS_TIMESTAMPS

        needs = f"split={cfg.split.name}" if cfg.split.name in NEEDS_TIMESTAMPS else None
        tables = read_raw(raw, rating_scale=cfg.data.rating_scale, require_timestamps=needs)
        write_processed(preprocess(tables, cfg.preprocess, cfg.split), out)
        return {"seconds": time.perf_counter() - start}
    from recpipe.engines import ray_preprocess

    ray_preprocess.run(cfg, raw, out)  # logs "connected to ... (N CPUs on M node(s))"
    return {"seconds": time.perf_counter() - start}


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addresses", nargs="+", default=["local"], help="engine.address values to run on")
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--overrides", nargs="*", default=[], help="more Hydra overrides (split=..., preprocess....)")
    parser.add_argument("--one", nargs=3, metavar=("ENGINE", "RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        engine, raw, out = args.one
        print(json.dumps(run_one(engine, Path(raw), Path(out), args)))
        return
    with tempfile.TemporaryDirectory(prefix="bench-ray-pre-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        raw = make_raw(work / "raw", args)
        print(
            f"data/raw: {args.interactions:,} interactions (+2% repeats) in {args.shards} shards, "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
        rows, reference = [], None
        for i, engine in enumerate(["engine-local", *args.addresses]):
            out = work / f"processed-{i}"
            cmd = [sys.executable, __file__, "--one", engine, str(raw), str(out), f"--interactions={args.interactions}"]
            cmd += ["--overrides", *args.overrides]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            size = re.search(r"\(([\d.]+) CPUs on (\d+) node", proc.stderr)
            nodes, cpus = (size.group(2), size.group(1)) if size else ("1", "1")
            same = "(reference)" if reference is None else str(hashes(out) == reference)
            reference = reference or hashes(out)
            name = "local" if engine == "engine-local" else "ray"
            address = "" if name == "local" else engine
            rows.append(f"| {name} | {address} | {nodes} | {cpus} | {result['seconds']:.0f} | {same} |")
            print(rows[-1], file=sys.stderr)
        print(HEADER)
        print("\n".join(rows))


if __name__ == "__main__":
    main()
