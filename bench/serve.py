"""Load-test ``recpipe serve``: requests/s and latency percentiles at 1, 8 and 32 concurrent clients.

    python bench/serve.py [--model models/export] [--requests 2000] [--clients 1 8 32] [-k 10] \
        [--users data/processed/users.parquet] [--modes batching no-batching] [--post-batch 0]

Starts ``recpipe serve`` on a free 127.0.0.1 port as a subprocess (once per mode: micro-batching
on, and off with ``--no-batching``), waits for ``/readyz``, then for each client count drives it
with that many aiohttp clients in one event loop, each sending ``GET /v1/recommend?user_id=..&k=..``
back to back (users drawn at random, seeded, from ``--users``; ids 1..1000 when it is missing)
until ``--requests`` have been answered. A warm-up of 200 requests comes first. Prints one table
row per (mode, clients): requests/s, p50, p95, p99 (ms, client side: connection pool, HTTP,
JSON) and errors (non-200 answers or failed connections). ``--post-batch N`` sends
``POST /v1/recommend`` with N users per request instead.

``--synthetic-items N`` benchmarks a large catalog instead of ``--model``: it first builds (once, in
``--workdir``) an export of a quick model on synthetic data with N items through the pipeline's own
stages (ingest, preprocess, train, export; no evaluation, no MLflow), by default MF for 1 epoch with a
ScaNN index (``SYNTHETIC``; ``--synthetic-overrides`` adds Hydra overrides), and serves it::

    python bench/serve.py --synthetic-items 59000 --modes batching
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

MODES = {"batching": [], "no-batching": ["--no-batching"]}
CONF = Path(__file__).resolve().parents[1] / "conf"
# the large-catalog run: a realistic number of users and interactions per item, trained quickly
SYNTHETIC = [
    "data=synthetic",
    "data.n_users=20000",
    "data.n_interactions=1000000",
    "model=mf",
    "model.epochs=1",
    "export.index=scann",
]


def synthetic_export(n_items: int, workdir: Path, overrides: list[str]) -> Path:
    """Export of ``SYNTHETIC`` + ``overrides`` with ``n_items`` items under ``workdir``, built by the
    ingest, preprocess, train and export stages unless it is there already; returns its directory."""
    from recpipe.config import compose
    from recpipe.paths import Paths

    cfg = compose([*SYNTHETIC, f"data.n_items={n_items}", *overrides], CONF)
    paths = Paths(workdir)
    if not (paths.export / "saved_model.pb").exists():
        for stage in ("ingest", "preprocess", "train", "export"):
            start = time.perf_counter()
            importlib.import_module(f"recpipe.stages.{stage}").run(cfg, paths)
            print(f"{stage}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return paths.export


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_ids(path: Path) -> list[str]:
    if path.exists():
        import pandas as pd

        return pd.read_parquet(path, columns=["user_id"])["user_id"].astype(str).tolist()
    return [str(i) for i in range(1, 1001)]


def start_server(model: str, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("RECPIPE_API_KEY", None)
    cmd = [sys.executable, "-m", "recpipe", "serve", "--port", str(port), "--model", model, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"recpipe serve exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
            try:
                async with session.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"recpipe serve not ready after {timeout} s")


async def drive(
    base: str, users: list[str], clients: int, n_requests: int, k: int, post_batch: int, seed: int
) -> tuple[float, np.ndarray, int]:
    """(wall seconds, latencies in ms, errors) for ``n_requests`` from ``clients`` concurrent clients."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors = 0
    remaining = n_requests
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    if post_batch:
                        body = {"user_ids": rng.choices(users, k=post_batch), "k": k}
                        request = session.post(f"{base}/v1/recommend", json=body)
                    else:
                        request = session.get(f"{base}/v1/recommend", params={"user_id": rng.choice(users), "k": k})
                    async with request as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return wall, np.array(latencies), errors


async def bench_mode(args: argparse.Namespace, mode: str, users: list[str]) -> list[list[str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, MODES[mode] + args.serve_args)
    rows = []
    try:
        await wait_ready(base, proc)
        await drive(base, users, 8, 200, args.k, args.post_batch, seed=0)  # warm-up (traces, pools)
        for clients in args.clients:
            wall, lat, errors = await drive(base, users, clients, args.requests, args.k, args.post_batch, seed=clients)
            p50, p95, p99 = np.percentile(lat, [50, 95, 99])
            rows.append(
                [
                    mode,
                    str(clients),
                    str(len(lat)),
                    f"{len(lat) / wall:.0f}",
                    f"{p50:.2f}",
                    f"{p95:.2f}",
                    f"{p99:.2f}",
                    str(errors),
                ]
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/export", help="export dir or models:/name@alias")
    parser.add_argument("--requests", type=int, default=2000, help="requests per client count (default 2000)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--users", type=Path, default=Path("data/processed/users.parquet"))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument(
        "--post-batch",
        type=int,
        default=0,
        metavar="N",
        help="POST N users per request instead of GET one (default 0: GET)",
    )
    parser.add_argument(
        "--serve-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="the rest goes to recpipe serve, e.g. --serve-args --batch-wait-ms 0",
    )
    parser.add_argument("--synthetic-items", type=int, default=None, metavar="N", help="see the module docstring")
    parser.add_argument("--synthetic-overrides", nargs="*", default=[], help="Hydra overrides for --synthetic-items")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where --synthetic-items builds (default /tmp/recpipe-bench-serve-N)"
    )
    args = parser.parse_args(argv)
    if args.synthetic_items:
        workdir = args.workdir or Path(f"/tmp/recpipe-bench-serve-{args.synthetic_items}")
        args.model = str(synthetic_export(args.synthetic_items, workdir, args.synthetic_overrides))
        args.users = workdir / "data" / "processed" / "users.parquet"
    users = user_ids(args.users)
    rows = [row for mode in args.modes for row in asyncio.run(bench_mode(args, mode, users))]
    load = os.getloadavg()
    header = ["mode", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"]
    print(
        f"recpipe serve --model {args.model}: k={args.k}, "
        f"{'POST ' + str(args.post_batch) + ' users' if args.post_batch else 'GET one user'} per request; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 2 + "---:|" * (len(header) - 2))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
