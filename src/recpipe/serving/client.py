"""The client commands on an export: ``recpipe recommend`` and ``recpipe similar``."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from recpipe.errors import RecpipeError, UsageError
from recpipe.serving.load import export_info, load_export, recommend
from recpipe.serving.similar import SIGNATURE, similar_items
from recpipe.terminal import print_ranked


def recommend_command(user: str, k: int, export_dir: Path) -> int:
    """``recpipe recommend``: print a user's top-k (rank, item id, title, score) from the export."""
    check_k(k, export_dir)
    export = load_export(export_dir)
    recs = recommend(export, [user], k)
    known = bool(export.is_known(tf.constant([user])).numpy()[0])
    note = "" if known else " (unknown user: most popular items)"
    print_ranked(f"top {len(recs)} for user {user}{note}", recs, 9)
    return 0


def similar_command(title: str, genres: str, year: int | None, k: int, export_dir: Path) -> int:
    """``recpipe similar``: print the catalog items most like a new item, from the export's
    ``similar_items`` signature."""
    check_k(k, export_dir)
    export = load_export(export_dir)
    if SIGNATURE not in export.signatures:
        raise RecpipeError(
            f"{export_dir} has no {SIGNATURE} signature: only model=hybrid and model=content exports "
            "can place a new item from its features"
        )
    rows = similar_items(export.signatures[SIGNATURE], title, genres, year, k)
    described = ", ".join(p for p in (repr(title), genres, None if year is None else str(year)) if p)
    print_ranked(f"top {len(rows)} items similar to a new item ({described})", rows, 7)
    return 0


def check_k(k: int, export_dir: str | Path) -> None:
    """Refuse a ``-k`` outside [1, the export's max_k] (an export never returns more than max_k items,
    and k is an int32 in the signature); the message says how to get more."""
    most = int(export_info(export_dir)["max_k"])
    if not 1 <= k <= most:
        raise UsageError(
            f"-k {k}: {export_dir} returns at most {most} items (export.max_k, capped at the catalog size); "
            f"use -k 1..{most}, or re-export with a larger max_k (`recpipe compose export.max_k=N`, then "
            "`dvc repro export`)"
        )
