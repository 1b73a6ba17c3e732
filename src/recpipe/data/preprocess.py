"""From validated raw tables to what training reads (data/processed): duplicates resolved, filters
applied, vocabularies built, interactions split, and the stats of every step.

Choices (documented in conf/config.yaml, section ``preprocess``):

- filters run ``min_rating`` first, then drop users and items below ``min_user_interactions`` /
  ``min_item_interactions`` repeatedly until none is left (a k-core);
- the vocabularies are the users and items of the filtered interactions, so the item catalog
  (``items.parquet``) is exactly the items that have interactions; ids are in numeric order when
  all are decimal digits, else in text order; ``index`` is 0..n-1;
- items that interactions reference but the item table lacks are added (title = item id, no
  genres) and counted in ``stats.filtered.items_not_in_item_table``; users missing from a user
  table likewise get null features (``stats.filtered.users_not_in_user_table``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from recpipe.data.processed import Preprocessed
from recpipe.data.raw import RawTables
from recpipe.data.schema import INDEX
from recpipe.data.splits import make_splits
from recpipe.data.validate import example_row
from recpipe.errors import DataError, RecpipeError

DUPLICATE_POLICIES = ("latest", "first", "mean", "error")
NO_TIME = np.iinfo(np.int64).min  # a null timestamp, sorting before every real one
FILTER_REASONS = ("min_rating", "min_user_interactions", "min_item_interactions")


def deduplicate(df: pd.DataFrame, policy: str = "latest", *, file: str = "interactions") -> tuple[pd.DataFrame, int]:
    """Resolve repeated (user_id, item_id) pairs; returns the kept rows (in ``df``'s order) and how many went.

    ``latest`` keeps the row with the latest timestamp (ties: the later row), ``first`` the
    earliest (ties: the earlier row); a null timestamp counts as earliest. ``mean`` keeps the
    pair's first row with the mean rating and the latest timestamp. ``error`` raises a DataError
    naming ``file``.
    """
    if policy not in DUPLICATE_POLICIES:
        raise RecpipeError(f"preprocess.duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {policy!r}")
    users = pd.factorize(df["user_id"])[0].astype(np.int64)
    items, item_ids = pd.factorize(df["item_id"])
    pair = pd.Series(users * len(item_ids) + items)
    repeated = pair.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return df, 0
    if policy == "error":
        extra = pair.duplicated(keep="first").to_numpy()
        pos = int(np.flatnonzero(extra)[0])
        raise DataError(
            file,
            "repeated (user_id, item_id) pair",
            column="user_id, item_id",
            n_rows=int(extra.sum()),
            row=int(df.index[pos]),
            example=example_row(df, pos),
            hint="set preprocess.duplicates to latest, first or mean to keep one row per pair",
        )
    ts = df["timestamp"].to_numpy(dtype=np.int64, na_value=NO_TIME, copy=True)
    rows = np.flatnonzero(repeated)
    group = pd.factorize(pair.to_numpy()[rows])[0]  # 0, 1, ... in order of each pair's first row
    times = pd.Series(ts[rows])
    keep = ~repeated
    if policy == "mean":
        chosen = rows[~pd.Series(group).duplicated().to_numpy()]
        rating = df["rating"].to_numpy(dtype=np.float64, copy=True)
        rating[chosen] = np.bincount(group, weights=rating[rows]) / np.bincount(group)
        ts[chosen] = times.groupby(group).max().to_numpy()
        df = df.assign(rating=rating.astype(np.float32), timestamp=pd.arrays.IntegerArray(ts, ts == NO_TIME))
    else:
        best = (times == times.groupby(group).transform("max" if policy == "latest" else "min")).to_numpy()
        tied = pd.Series(group[best]).duplicated(keep="last" if policy == "latest" else "first").to_numpy()
        chosen = rows[best][~tied]
    keep[chosen] = True
    return df[keep], int(len(df) - keep.sum())


def filter_interactions(
    df: pd.DataFrame,
    *,
    min_user_interactions: int = 1,
    min_item_interactions: int = 1,
    min_rating: float | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep ratings ``>= min_rating``, then the k-core: drop users, then items, with too few
    interactions, again and again until every user and item has enough.

    Returns the kept rows and the number of interactions dropped per reason (``FILTER_REASONS``).
    """
    dropped = dict.fromkeys(FILTER_REASONS, 0)
    keep = np.ones(len(df), dtype=bool)
    if min_rating is not None:
        rating = df["rating"].to_numpy(dtype=np.float64)
        if np.isnan(rating).all():
            raise RecpipeError(
                "preprocess.min_rating is set but the interactions have no ratings "
                "(implicit feedback); set preprocess.min_rating=null"
            )
        keep = rating >= float(min_rating)
        dropped["min_rating"] = int((~keep).sum())
    groups = {
        "min_user_interactions": (*pd.factorize(df["user_id"]), min_user_interactions),
        "min_item_interactions": (*pd.factorize(df["item_id"]), min_item_interactions),
    }
    changed = True
    while changed:
        changed = False
        for reason, (group, uniques, minimum) in groups.items():
            counts = np.bincount(group[keep], minlength=len(uniques))
            low = keep & (counts[group] < minimum)
            if low.any():
                keep &= ~low
                dropped[reason] += int(low.sum())
                changed = True
    return df[keep], dropped


def sorted_ids(ids: pd.Series) -> np.ndarray:
    """The distinct ids in vocabulary order: numeric when all are decimal digits (ties by text), else text."""
    unique = pd.Series(pd.unique(ids), dtype="str")
    if unique.str.fullmatch(r"\d{1,18}").all():
        frame = pd.DataFrame({"number": unique.astype("int64"), "id": unique})
        return frame.sort_values(["number", "id"], kind="stable")["id"].to_numpy(object)
    return unique.sort_values(kind="stable").to_numpy(object)


def build_vocabulary(ids: np.ndarray, table: pa.Table | None, id_column: str) -> pa.Table:
    """Vocabulary table: ``id_column`` = ``ids`` in order, ``index`` int32 0..n-1, then ``table``'s
    other columns for each id (types kept).

    Ids missing from ``table`` get null features, except ``title`` (falls back to the id) and a
    list-typed ``genres`` (empty list).
    """
    id_array = pa.array(ids, pa.string())
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        id_column: id_array,
        INDEX.name: pa.array(np.arange(len(ids), dtype=np.int32)),
    }
    if table is not None:
        positions = pd.Index(table.column(id_column).to_pandas()).get_indexer(ids)
        features = table.drop_columns([id_column]).take(pa.array(positions, mask=positions < 0))
        for name in features.column_names:
            col = features.column(name)
            if name == "title":
                col = pc.coalesce(col, pc.cast(id_array, col.type))
            elif name == "genres" and pa.types.is_list(col.type):
                col = pc.coalesce(col, pa.scalar([], type=col.type))
            columns[name] = col
    return pa.table(columns)


def preprocess(
    raw: RawTables, options: Mapping[str, Any], split_cfg: Mapping[str, Any], *, progress: bool = False
) -> Preprocessed:
    """Deduplicate, filter, build vocabularies and split ``raw`` as ``options`` (``cfg.preprocess``)
    and ``split_cfg`` (``cfg.split``) say. Raises before anything is written."""
    df = raw.interactions
    stats: dict[str, Any] = {"raw": counts(df)}
    with tqdm(total=4, desc="preprocess", unit="step", disable=not progress) as bar:
        bar.set_postfix_str("duplicates")
        df, n_duplicates = deduplicate(df, options["duplicates"], file=raw.files["interactions"])
        bar.update()
        bar.set_postfix_str("filters")
        df, dropped = filter_interactions(
            df,
            min_user_interactions=_count_option(options, "min_user_interactions"),
            min_item_interactions=_count_option(options, "min_item_interactions"),
            min_rating=options["min_rating"],
        )
        if df.empty:
            raise RecpipeError(
                f"no interactions left after the filters (dropped: {dropped}); lower "
                "preprocess.min_user_interactions / min_item_interactions / min_rating"
            )
        bar.update()
        bar.set_postfix_str("vocabularies")
        user_ids, item_ids = sorted_ids(df["user_id"]), sorted_ids(df["item_id"])
        users = build_vocabulary(user_ids, raw.users, "user_id")
        items = build_vocabulary(item_ids, raw.items, "item_id")
        bar.update()
        bar.set_postfix_str("splits")
        train, val, test = make_splits(df, split_cfg)
        bar.update()
    stats["filtered"] = {
        **counts(df),
        "items_not_in_item_table": _not_in_table(item_ids, raw.items, "item_id"),
        "users_not_in_user_table": _not_in_table(user_ids, raw.users, "user_id"),
    }
    stats["splits"] = split_stats(train, val, test)
    stats["dropped"] = {"duplicates": n_duplicates, **dropped}
    return Preprocessed(train=train, val=val, test=test, users=users, items=items, stats=stats)


def counts(df: pd.DataFrame) -> dict[str, int]:
    """Distinct users, distinct items and rows of an interactions frame."""
    return {"users": int(df["user_id"].nunique()), "items": int(df["item_id"].nunique()), "interactions": len(df)}


def split_stats(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``counts`` per split; val and test also count their users and items absent from train (cold)."""
    stats = {"train": counts(train)}
    for name, df in (("val", val), ("test", test)):
        stats[name] = counts(df)
        for key, column in (("cold_users", "user_id"), ("cold_items", "item_id")):
            stats[name][key] = int((~pd.Index(df[column].unique()).isin(train[column].unique())).sum())
    return stats


def summary(stats: Mapping[str, Any]) -> str:
    """A few human-readable lines about what preprocess did."""
    dropped, added = stats["dropped"], stats["filtered"]["items_not_in_item_table"]
    lines = [
        f"raw:      {_counts_text(stats['raw'])}",
        "dropped:  " + (", ".join(f"{n:,} by {reason}" for reason, n in dropped.items() if n) or "nothing"),
        f"kept:     {_counts_text(stats['filtered'])}",
    ]
    if added:
        lines.append(f"note:     the item table lacks {added:,} of these items; they were added with title = item id")
    for name, s in stats["splits"].items():
        cold = f" ({s['cold_users']:,} users and {s['cold_items']:,} items not in train)" if "cold_users" in s else ""
        lines.append(f"{name + ':':<9} {_counts_text(s)}{cold}")
    return "\n".join(lines)


def _counts_text(s: Mapping[str, int]) -> str:
    return f"{s['interactions']:,} interactions, {s['users']:,} users, {s['items']:,} items"


def _not_in_table(ids: np.ndarray, table: pa.Table | None, column: str) -> int | None:
    """How many of ``ids`` ``table`` lacks (None without a table)."""
    if table is None:
        return None
    return int((~pd.Index(ids).isin(table.column(column).to_pandas())).sum())


def _count_option(options: Mapping[str, Any], key: str) -> int:
    value = options[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RecpipeError(f"preprocess.{key} must be an integer >= 0, got {value!r}")
    return value
