"""Generate N synthetic interactions and write data/raw-style Parquet; print time and peak RSS.

    python bench/bench_synthetic.py [N] [--users U] [--items I] [--out DIR]

Defaults: N = 10,000,000 rows, N / 50 users, N / 500 items, written to a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import recpipe  # noqa: F401
from recpipe.data.raw import write_raw
from recpipe.data.synthetic import generate


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="?", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="directory to write (default: a temporary one)")
    args = parser.parse_args(argv)
    n_users = args.users or max(1, args.rows // 50)
    n_items = args.items or max(1, args.rows // 500)

    start = time.perf_counter()
    raw = generate(n_users, n_items, args.rows)
    generated = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "raw"
        write_raw(raw, out)
        written = time.perf_counter()
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    print(
        f"synthetic: {args.rows:,} rows, {n_users:,} users, {n_items:,} items | generate {generated - start:.1f} s, "
        f"write {written - generated:.1f} s ({size:.0f} MiB Parquet), total {written - start:.1f} s "
        f"({args.rows / (written - start):,.0f} rows/s) | peak RSS {peak_rss_mb():,.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
