"""The client commands on an export: ``recpipe recommend`` and ``recpipe similar``."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.serving.load import load_export, recommend
from recpipe.serving.similar import SIGNATURE, similar_items


def recommend_command(user: str, k: int, export_dir: Path) -> int:
    """``recpipe recommend``: print a user's top-k (rank, item id, title, score) from the export."""
    if k < 1:
        raise RecpipeError(f"-k must be at least 1 (got {k})")
    export = load_export(export_dir)
    recs = recommend(export, [user], k)
    known = bool(export.is_known(tf.constant([user])).numpy()[0])
    note = "" if known else " (unknown user: most popular items)"
    print(f"top {len(recs)} for user {user}{note}")
    width = max([4, *recs["item_id"].str.len()])
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>9}  title")
    for r in recs.itertuples():
        print(f"{r.rank:>4}  {r.item_id:<{width}}  {r.score:>9.4f}  {r.title}")
    return 0


def similar_command(title: str, genres: str, year: int | None, k: int, export_dir: Path) -> int:
    """``recpipe similar``: print the catalog items most like a new item, from the export's
    ``similar_items`` signature."""
    if k < 1:
        raise RecpipeError(f"-k must be at least 1 (got {k})")
    export = load_export(export_dir)
    if SIGNATURE not in export.signatures:
        raise RecpipeError(
            f"{export_dir} has no {SIGNATURE} signature: only model=hybrid and model=content exports "
            "can place a new item from its features"
        )
    rows = similar_items(export.signatures[SIGNATURE], title, genres, year, k)
    described = ", ".join(p for p in (repr(title), genres, None if year is None else str(year)) if p)
    print(f"top {len(rows)} items similar to a new item ({described})")
    width = max([4, *rows["item_id"].str.len()])
    print(f"{'rank':>4}  {'item':<{width}}  {'score':>7}  title")
    for r in rows.itertuples():
        print(f"{r.rank:>4}  {r.item_id:<{width}}  {r.score:>7.4f}  {r.title}")
    return 0
