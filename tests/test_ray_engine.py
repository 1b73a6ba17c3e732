"""engine=ray on a real Ray cluster on this machine: a head node and a second node started with
`ray start` as separate processes on 127.0.0.1 (like two machines), the DVC pipeline and
preprocess on Ray Data run on it, and the cluster stopped by the process ids the fixture started
(never `ray stop`, which would stop every Ray on the machine)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recpipe.data.preprocess import preprocess
from recpipe.data.processed import write_processed
from recpipe.data.raw import RawData, read_raw, write_raw
from recpipe.data.sources import load_source
from recpipe.data.splits import NEEDS_TIMESTAMPS
from recpipe.engines import ray_preprocess
from recpipe.errors import DataError, RecpipeError

from .helpers import BIN, PROCESSED_FILES, SMALL, commit, composed, copy_repo, env, run, tree_bytes

# The synthetic pipeline both engines run; MF's gradient solver (gibbs is fit in one process), batch
# 512 so that it takes several steps an epoch.
PIPELINE = [
    "model=mf",
    "model.solver=gradient",
    *SMALL,
    "data.n_interactions=6000",
    "model.batch_size=512",
    "evaluate.bootstrap.n_resamples=50",
]
# Metrics of engine=ray vs engine=local: the same data, the same global batches; the two workers
# draw their own sampled negatives, so the models differ like two seeds of the local engine do.
TOLERANCE = {"ndcg_at_10": 0.03, "recall_at_10": 0.03, "rmse": 0.03}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Ray authenticates every connection with a token: one for this module's cluster and its clients
RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def ray_env() -> dict[str, str]:
    return {**env(), **RAY_ENV}


def ray_node(temp_dir: Path, log: Path, *args: str) -> subprocess.Popen:
    """`ray start --block` (one node: its raylet, object store and workers are its children) in a
    process group of its own; ports not given are picked free so that no other Ray is touched.
    (Ray replaces 127.0.0.1 by this machine's address, which every node here reaches.)"""
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    cmd = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    cmd += ["--num-cpus=1", f"--temp-dir={temp_dir}", *args, *(f"{k}={v}" for k, v in ports.items())]
    with log.open("w") as out:
        return subprocess.Popen(cmd, env=ray_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(nodes: list[subprocess.Popen]) -> None:
    """Stop the nodes ``ray_node`` started: SIGTERM to each one's process group (``ray start
    --block`` and the processes it started), SIGKILL 2 s later (a throwaway cluster needs no drain)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(2)
    for node in nodes:
        node.wait()


def wait_for_nodes(address: str, n: int, logs: list[Path], timeout: float = 120) -> None:
    """Wait until the cluster at ``address`` has ``n`` live nodes (`ray status` asks the head)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run(
            [str(BIN / "ray"), "status", f"--address={address}"], env=ray_env(), capture_output=True, text=True
        )
        if status.returncode == 0 and status.stdout.count(" node_") >= n:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster did not start {n} nodes:\n" + "\n".join(p.read_text() for p in logs))


@dataclass
class Cluster:
    """The test cluster: its address and the log files of its nodes."""

    address: str
    logs: list[Path]

    def ready(self) -> str:
        """Wait until both nodes have joined; the address."""
        wait_for_nodes(self.address, 2, self.logs)
        return self.address


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A Ray head and a second node on 127.0.0.1, 1 CPU each, dashboard off, started at once (the
    second node retries until the head is up; ``Cluster.ready`` waits for both)."""
    logs = tmp_path_factory.mktemp("ray_logs")
    # short: Ray's unix sockets live under the temp dir and their paths are limited to 107 bytes
    temp = Path(tempfile.mkdtemp(prefix="rp-ray-"))
    port = free_port()
    cluster = Cluster(f"127.0.0.1:{port}", [logs / "head.log", logs / "node.log"])
    head = ["--head", f"--port={port}", "--include-dashboard=false", f"--ray-client-server-port={free_port()}"]
    nodes = [ray_node(temp / "head", cluster.logs[0], *head)]
    try:
        nodes.append(ray_node(temp / "node", cluster.logs[1], f"--address={cluster.address}"))
        yield cluster
    finally:
        stop(nodes)
        shutil.rmtree(temp, ignore_errors=True)


def metrics(repo: Path) -> dict[str, float]:
    return json.loads((repo / "reports/metrics.json").read_text())


@pytest.mark.integration
def test_pipeline_on_a_two_node_cluster_matches_the_local_engine(ray_cluster, tmp_path):
    repo = copy_repo(tmp_path / "repo")
    run(["recpipe", "compose", *PIPELINE], repo)
    commit(repo, "local engine")
    run(["dvc", "repro", "evaluate"], repo)  # while the cluster starts
    local = metrics(repo)
    address = ray_cluster.ready()

    run(["recpipe", "compose", *PIPELINE, "engine=ray", "engine.num_workers=2"], repo)
    proc = subprocess.run(  # up to evaluate: export reads models/train/ as with any engine
        [str(BIN / "dvc"), "repro", "evaluate"],
        cwd=repo,
        env={**ray_env(), "RAY_ADDRESS": address},
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    (tmp_path / "dvc_repro_on_ray.log").write_text(out)
    assert proc.returncode == 0, out
    assert f"connected to {address} (2 CPUs on 2 node(s))" in out
    assert "on 2 Ray workers (MultiWorkerMirroredStrategy)" in out
    assert "trained on 2 workers on 2 Ray node(s)" in out
    assert "Stage 'preprocess' didn't change" in out  # the engine is train's parameter only
    on_ray = metrics(repo)
    for key, tolerance in TOLERANCE.items():
        assert abs(on_ray[key] - local[key]) <= tolerance, (key, on_ray[key], local[key])
    summary = json.loads((repo / "models/train/train_summary.json").read_text())
    assert summary["epochs_run"] >= 1 and summary["model"] == "mf"


# preprocess on both engines: duplicates (mean), a k-core, held-out cold items, a per-user split
PREPROCESS = [
    "data=synthetic",
    "data.n_users=150",
    "data.n_items=80",
    "data.n_interactions=2500",
    "split=leave_last",
    "split.cold_items=0.1",
    "preprocess.duplicates=mean",
    "preprocess.min_user_interactions=12",
    "preprocess.min_item_interactions=15",
]


def sharded_raw(folder: Path, cfg, shards: int = 3) -> Path:
    """A data/raw whose interactions are a folder of Parquet shards (as Spark writes them), with
    repeated (user, item) pairs across the shards; ``interactions.parquet`` beside it: the same rows."""
    raw = load_source(cfg.data)
    df = raw.interactions
    repeats = df.sample(frac=0.05, random_state=1).assign(rating=np.float32(2.0))
    write_raw(RawData(pd.concat([df, repeats], ignore_index=True), raw.items, raw.users, raw.source), folder / "whole")
    table = pq.read_table(folder / "whole/interactions.parquet")
    shutil.copytree(folder / "whole", folder / "raw", ignore=shutil.ignore_patterns("interactions.parquet"))
    (folder / "raw/interactions.parquet").mkdir()
    bounds = np.linspace(0, len(table), shards + 1).astype(int)
    for i in range(shards):
        pq.write_table(
            table.slice(bounds[i], bounds[i + 1] - bounds[i]), folder / f"raw/interactions.parquet/part-{i:05d}.parquet"
        )
    return folder / "raw"


def local_preprocess(cfg, raw: Path, out: Path) -> None:
    """What `recpipe preprocess` does with engine=local."""
    split = cfg.split.name
    needs = f"split={split}" if split in NEEDS_TIMESTAMPS else None
    tables = read_raw(raw, rating_scale=cfg.data.rating_scale, require_timestamps=needs)
    write_processed(preprocess(tables, cfg.preprocess, cfg.split), out)


def _ray_preprocess(cfg, raw: Path, out: Path) -> tuple[dict | None, str | None]:
    """``ray_preprocess.run``'s stats, or its RecpipeError's message."""
    try:
        return ray_preprocess.run(cfg, raw, out), None
    except RecpipeError as e:
        return None, str(e)


def preprocess_on_ray(cfg, raw: Path, out: Path) -> tuple[dict | None, str | None]:
    """Run ``ray_preprocess.run`` in a fresh process, as ``recpipe preprocess`` does: Ray reads its
    auth token (RAY_ENV, set by the test) once per process, and an earlier test of this pytest
    process may have loaded Ray without it."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_ray_preprocess, cfg, raw, out).result()


@pytest.mark.integration
def test_preprocess_on_ray_data_writes_the_local_engines_bytes(ray_cluster, tmp_path, monkeypatch):
    """Each split (leave_last per user; random and temporal through the driver's labels) on one cluster."""
    base = composed(*PREPROCESS)
    raw = sharded_raw(tmp_path, base)
    local_whole = tmp_path / "local_whole"
    local_preprocess(base, tmp_path / "whole", local_whole)  # the shards read in name order: one file's rows
    local_preprocess(base, raw, tmp_path / "local")
    assert tree_bytes(local_whole) == tree_bytes(tmp_path / "local")
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    ray_cluster.ready()

    on_cluster = ("engine=ray", f"engine.address={ray_cluster.address}")
    for split in ("leave_last", "random", "temporal"):
        cfg = composed(*PREPROCESS, f"split={split}", "split.cold_items=0.1", *on_cluster)
        local, on_ray = tmp_path / f"local_{split}", tmp_path / f"ray_{split}"
        local_preprocess(cfg, raw, local)
        stats, problem = preprocess_on_ray(cfg, raw, on_ray)
        assert problem is None and stats is not None, problem

        assert tree_bytes(on_ray) == tree_bytes(local), split
        assert sorted(p.name for p in on_ray.iterdir()) == PROCESSED_FILES
        # every filter did something, so the test covers each step
        dropped = stats["dropped"]
        assert min(dropped["duplicates"], dropped["min_user_interactions"], dropped["min_item_interactions"]) > 0
        assert stats["splits"]["test"]["cold_items"] > 0, split
        assert stats == json.loads((local / "stats.json").read_text())


@pytest.mark.integration
def test_preprocess_on_ray_data_names_a_bad_row_in_its_shard(ray_cluster, tmp_path, monkeypatch):
    cfg = composed(*PREPROCESS, "engine=ray", f"engine.address={ray_cluster.address}")
    raw = sharded_raw(tmp_path, cfg)
    shard = raw / "interactions.parquet/part-00001.parquet"
    table = pq.read_table(shard)
    ratings = table.column("rating").to_numpy().copy()
    ratings[7] = 9.0
    pq.write_table(table.set_column(2, "rating", pa.array(ratings, pa.float32())), shard)
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    ray_cluster.ready()

    stats, message = preprocess_on_ray(cfg, raw, tmp_path / "ray")
    assert stats is None and message is not None
    assert str(shard.resolve()) in message and "column 'rating'" in message and "at row 7: " in message, message
    assert "rating outside data.rating_scale [1, 5]" in message and "Traceback" not in message
    assert not (tmp_path / "ray").exists()
    with pytest.raises(DataError, match="rating outside data.rating_scale"):  # the local engine agrees
        local_preprocess(cfg, raw, tmp_path / "local")
