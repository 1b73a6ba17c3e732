"""Ratings per second of MF training (``recpipe.training.fit``) on a synthetic set of a few million ratings.

    python bench/bench_mf.py [--shape ml-25m|ml-100k] [--ratings 3000000] [--users 60000] [--items 12000]
                             [--epochs 3] [model.key=value ...]

Generates the data with ``recpipe.data.synthetic`` and splits it 0.8/0.1/0.1 with the real
preprocess functions (in a temporary directory), then trains conf/model/mf.yaml (plus any
``model.key=value`` overrides, e.g. ``model.implicit_weight=0`` for rating-only MF or
``model.batch_size=4096``) for a fixed number of epochs and prints the training throughput of
each epoch (validation time excluded; the first epoch includes tracing and XLA compilation) and
of the steady state; with ``model.solver=gibbs`` (one closed-form fit of ``--epochs`` sweeps) the
rate is ratings x sweeps per second of the whole fit, validation included. ``--shape`` sets users,
items and ratings of MovieLens 25M or 100K. On a shared machine wall-clock rates drop with the
load (printed before and after); ratings per CPU-second (all threads) show the cost independent of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

import recpipe  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from recpipe.data.preprocess import preprocess
from recpipe.data.processed import Processed, load_processed, write_processed
from recpipe.data.raw import read_raw, write_raw
from recpipe.data.synthetic import generate
from recpipe.training import build_model, fit

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"ml-25m": (162_000, 59_000, 25_000_000), "ml-100k": (943, 1_682, 100_000)}


def synthetic_processed(path: Path, n_users: int, n_items: int, n_ratings: int) -> Processed:
    """Synthetic ratings through the real ingest/preprocess functions (random 0.8/0.1/0.1 split)."""
    write_raw(generate(n_users, n_items, n_ratings, seed=0), path / "raw")
    options = {"duplicates": "latest", "min_user_interactions": 1, "min_item_interactions": 1, "min_rating": None}
    split = {"name": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0}
    write_processed(preprocess(read_raw(path / "raw", rating_scale=[1, 5]), options, split), path / "processed")
    return load_processed(path / "processed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), help="users, items and ratings of a MovieLens set")
    parser.add_argument("--ratings", type=int, default=3_000_000, help="synthetic ratings (default 3M)")
    parser.add_argument("--users", type=int, default=60_000)
    parser.add_argument("--items", type=int, default=12_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="model.key=value overrides of conf/model/mf.yaml")
    args = parser.parse_args(argv)
    if args.shape:
        args.users, args.items, args.ratings = SHAPES[args.shape]

    overrides = OmegaConf.from_dotlist(args.overrides)
    cfg = OmegaConf.merge(
        OmegaConf.load(REPO / "conf" / "model" / "mf.yaml"),
        overrides.get("model", {}),
        {"epochs": args.epochs, "patience": args.epochs},
    )
    with tempfile.TemporaryDirectory(prefix="bench_mf_") as tmp:
        start = time.perf_counter()
        data = synthetic_processed(Path(tmp), args.users, args.items, args.ratings)
        print(
            f"data: {len(data.train):,} train ratings, {data.n_users:,} users, {data.n_items:,} items "
            f"({time.perf_counter() - start:.0f} s to generate)"
        )
        model, _ = build_model(cfg, data, seed=0)
        load_before = os.getloadavg()
        cpu = [time.process_time()]
        result = fit(model, data, cfg, seed=0, on_epoch=lambda row: cpu.append(time.process_time()))
    print(f"config: {OmegaConf.to_container(cfg)}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {os.getloadavg()} on {os.cpu_count()} CPUs")
    passes = args.epochs if model.fitting == "closed_form" else 1
    if model.fitting == "closed_form":  # gibbs: the curve rows all arrive after the fit; time the whole fit
        epochs, seconds, cpu_seconds = [1], np.array([result.train_seconds]), np.array([cpu[-1] - cpu[0]])
    else:
        epochs, seconds, cpu_seconds = list(result.history["epoch"]), result.history["seconds"], np.diff(cpu)
    rates, cpu_rates = len(data.train) * passes / seconds, len(data.train) * passes / cpu_seconds
    for epoch, rate, cpu_rate in zip(epochs, rates, cpu_rates):
        print(f"epoch {epoch}: {rate:,.0f} ratings/s wall, {cpu_rate:,.0f} per CPU-second (incl. validation)")
    if passes > 1:
        sampling = len(data.train) * passes / model.sweep_seconds
        print(f"gibbs: {passes} sweeps in {model.sweep_seconds:.1f} s: {sampling:,.0f} ratings/s (sampling only)")
    else:
        print(f"steady state (after epoch 1): {result.examples_per_second:,.0f} ratings/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
