"""Load-test ``recpipe serve``: requests/s and latency percentiles at 1, 8 and 32 concurrent clients.

    python bench/serve.py [--model models/export] [--requests 2000] [--clients 1 8 32] [-k 10] \
        [--users data/processed/users.parquet] [--modes batching no-batching] [--post-batch 0]

Starts ``recpipe serve`` on a free 127.0.0.1 port as a subprocess (once per mode: micro-batching
on, and off with ``--no-batching``), waits for ``/readyz``, then for each client count drives it
with that many clients in one event loop (uvloop when installed), each on its own keep-alive
HTTP/1.1 connection sending ``GET /v1/recommend?user_id=..&k=..`` back to back (users drawn at
random, seeded, from ``--users``; ids 1..1000 when it is missing) until ``--requests`` have been
answered. The clients are plain asyncio streams with prepared request bytes (``Connection``): the
load generator shares the machine's cores with the server, and a general HTTP client library
costs three to four times its CPU per request. A warm-up of 200 requests comes first. Prints one
table row per (mode, clients): requests/s, p50, p95, p99 (ms, client side: the request written
until the whole body is read) and errors (non-200 answers or failed connections), and the load
average. ``--post-batch N`` sends ``POST /v1/recommend`` with N users per request instead.

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
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

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


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:``port``: sends prepared requests, reads answers
    (the server always sends ``Content-Length``). Reconnects after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of one request; raises OSError or ValueError (then reconnects next time)."""
        try:
            if self.streams is None:
                self.streams = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self.streams
            writer.write(request)
            status = int((await reader.readline()).split(b" ", 2)[1])
            length = None
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise ValueError("answer without Content-Length")
            return status, await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
            self.close()
            raise ValueError(f"broken answer: {e}") from e

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def http_request(method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> bytes:
    """The bytes of one request (``body``: sent as JSON)."""
    lines = [f"{method} {path}{'?' + urlencode(params) if params else ''} HTTP/1.1", "Host: 127.0.0.1"]
    data = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"recpipe serve exited {proc.returncode}:\n{proc.stderr.read()[-3000:]}")
        connection = Connection(port)
        try:
            if (await connection.send(http_request("GET", "/readyz")))[0] == 200:
                return
        except ValueError:
            pass
        finally:
            connection.close()
        await asyncio.sleep(0.2)
    raise SystemExit(f"recpipe serve not ready after {timeout} s")


def requests_for(users: list[str], n: int, k: int, post_batch: int, seed: int) -> list[bytes]:
    """``n`` prepared requests for random ``users`` (seeded): GET one user, or POST ``post_batch``."""
    rng = random.Random(seed)
    if post_batch:
        bodies = [{"user_ids": rng.choices(users, k=post_batch), "k": k} for _ in range(n)]
        return [http_request("POST", "/v1/recommend", body=body) for body in bodies]
    return [http_request("GET", "/v1/recommend", {"user_id": rng.choice(users), "k": k}) for _ in range(n)]


async def drive(port: int, requests: list[bytes], clients: int) -> tuple[float, np.ndarray, int]:
    """(wall seconds, latencies in ms, errors) for ``requests`` sent by ``clients`` concurrent clients."""
    latencies: list[float] = []
    errors = 0
    queue = iter(requests)

    async def client() -> None:
        nonlocal errors
        connection = Connection(port)
        for request in queue:  # shared: each request is sent once, by whichever client is free
            start = time.perf_counter()
            try:
                ok = (await connection.send(request))[0] == 200
            except ValueError:
                ok = False
            latencies.append((time.perf_counter() - start) * 1000)
            errors += not ok
        connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, np.array(latencies), errors


async def bench_mode(args: argparse.Namespace, mode: str, users: list[str]) -> list[list[str]]:
    port = free_port()
    proc = start_server(args.model, port, MODES[mode] + args.serve_args)
    rows = []
    try:
        await wait_ready(port, proc)
        await drive(port, requests_for(users, 200, args.k, args.post_batch, seed=0), 8)  # warm-up
        for clients in args.clients:
            requests = requests_for(users, args.requests, args.k, args.post_batch, seed=clients)
            wall, lat, errors = await drive(port, requests, clients)
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


def run(main: Coroutine[Any, Any, list[list[str]]]) -> list[list[str]]:
    """``main`` in a uvloop event loop when uvloop is installed (as ``recpipe serve`` uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


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
    rows = [row for mode in args.modes for row in run(bench_mode(args, mode, users))]
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
