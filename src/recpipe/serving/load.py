"""Reading an export back: what it holds, loading it, and querying its top-K signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import tensorflow as tf
from google.protobuf.message import DecodeError

from recpipe.errors import RecpipeError
from recpipe.serving.export import INFO_FILE, SIGNATURE


def export_info(path: str | Path) -> dict[str, Any]:
    """What ``save_server`` recorded about an export (index kind, sizes)."""
    info = Path(path) / INFO_FILE
    if not info.is_file():
        raise RecpipeError(f"{path}: no exported model; run `recpipe export` (or `dvc repro`)")
    try:
        data = json.loads(info.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecpipeError(f"{info}: unreadable ({e}); re-run `recpipe export` (or `dvc repro export`)") from None
    if not isinstance(data, dict) or not isinstance(data.get("max_k"), int) or "index" not in data:
        raise RecpipeError(f"{info}: not an export description; re-run `recpipe export` (or `dvc repro export`)")
    return data


def load_export(path: str | Path) -> Any:
    """Load an export (importing ScaNN's ops first when it needs them).

    Keep the returned object alive while calling ``.signatures["serving_default"]``: the
    signature only holds weak references to the variables.
    """
    if export_info(path)["index"] == "scann":
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the Scann ops)
    try:
        return tf.saved_model.load(str(path))
    except (OSError, tf.errors.OpError, DecodeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise RecpipeError(
            f"{path}: cannot load the exported model ({type(e).__name__}: {reason}); "
            "re-run `recpipe export` (or `dvc repro export`)"
        ) from None


def recommend(export: Any, user_ids: list[str], k: int) -> pd.DataFrame:
    """Top-k rows (user_id, rank, item_id, title, score) per user from a loaded export."""
    out = export.signatures[SIGNATURE](user_id=tf.constant(user_ids, tf.string), k=tf.constant(k, tf.int32))
    items, titles, scores = (out[name].numpy() for name in ("item_ids", "titles", "scores"))
    rows = [
        {
            "user_id": user,
            "rank": r + 1,
            "item_id": items[b, r].decode(),
            "title": titles[b, r].decode(),
            "score": float(scores[b, r]),
        }
        for b, user in enumerate(user_ids)
        for r in range(items.shape[1])
        if items[b, r]
    ]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "title", "score"])
