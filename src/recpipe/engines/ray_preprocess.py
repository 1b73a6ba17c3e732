"""``recpipe preprocess`` with ``engine=ray``: the local preprocess (``recpipe.data.preprocess``)
run on Ray Data for interactions larger than one machine's memory, writing the same bytes.

data/raw's interactions may be one Parquet file or a folder of Parquet shards
(``interactions.parquet/part-*.parquet``, read in file-name order, as the local engine reads them).
Every row keeps its position in that order, which decides every order-dependent choice as in the
local engine. Ray tasks read and validate the row groups, resolve duplicates per partition of
users (rows hashed by user, so each (user, item) pair and each user is in one partition), drop
low ratings and, pass after pass, rare users and items (counted with grouped aggregations), sort
the kept rows by position, and, for ``split=leave_last``, label each user's rows.

What this process holds (global, small next to the interactions): the distinct user and item ids
and their counts (vocabularies, the k-core's counts), the item and user tables, and the split's
global part: for ``split=random`` a label byte per kept row (plus the seeded permutation while it
is drawn), for ``split=temporal`` the kept rows' timestamps (8 bytes a row). The kept rows stream
through this process in order into the three split files (``SplitWriter``: the row groups of
``pq.write_table``), one block at a time.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import OmegaConf

from recpipe.data.preprocess import (
    FILTER_REASONS,
    _count_option,
    _not_in_table,
    build_vocabulary,
    deduplicate,
    filter_interactions,
    sorted_ids,
)
from recpipe.data.processed import SPLITS, SplitWriter, write_vocabularies
from recpipe.data.raw import read_catalogs, reading, source_path
from recpipe.data.splits import NEEDS_TIMESTAMPS, SPLITTERS, cold_item_rows, split_options
from recpipe.data.validate import source_hint, validate_interactions
from recpipe.engines.cluster import connected
from recpipe.errors import DataError, RecpipeError
from recpipe.io import atomic_dir

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger(__name__)

POSITION = "_position"  # a row's number in data/raw's interactions, counted across the shards
PART = "_part"  # the user partition of a row
LABEL = "_label"  # 0 train, 1 val, 2 test: a per-user split's label
ROWS_PER_PARTITION = 500_000  # user partitions: at least one per CPU, and about this many rows each
#: splitters run per user, on the user partitions; the others in this process on the columns named
PER_USER = frozenset({"leave_last"})
DRIVER_COLUMNS: dict[str, tuple[str, ...]] = {"random": (), "temporal": ("timestamp",)}
F = TypeVar("F", bound=Callable[..., Any])
# a user_errors RecpipeError in the traceback text of a failed Ray task
_TASK_ERROR = re.compile(r"^recpipe\.errors\.RecpipeError: (.*?)(?:\n\s*\n|\Z)", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class RowGroup:
    """One row group of an interactions shard: ``file``, its ``index`` in the file, its first row's
    number in the file (``first_row``) and across the shards (``position``)."""

    file: str
    index: int
    first_row: int
    position: int


def interaction_files(raw_dir: Path) -> list[Path]:
    """data/raw's interactions: ``interactions.parquet``, or the ``*.parquet`` shards of that folder in name order."""
    path = raw_dir.resolve() / "interactions.parquet"  # absolute: Ray workers read it
    if not path.exists():
        raise RecpipeError(f"{path}: not found; run `recpipe ingest` (or `dvc repro`) first")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise DataError(str(path), "a folder without Parquet shards (*.parquet)")
    return files


def row_groups(files: Sequence[Path], hint: str | None) -> list[RowGroup]:
    """The row groups of ``files``, in order, from their Parquet footers."""
    groups, position = [], 0
    for file in files:
        with reading(file, hint or "Check that it is a complete Parquet file"):
            meta = pq.ParquetFile(file).metadata
        first = 0
        for index in range(meta.num_row_groups):
            groups.append(RowGroup(str(file), index, first, position))
            n = meta.row_group(index).num_rows
            first, position = first + n, position + n
    return groups


def user_errors(fn: F) -> F:
    """A Ray task's RecpipeError as a plain RecpipeError (its message), which ``run`` finds in the
    failed task's traceback and raises as the stage's error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RecpipeError as e:
            raise RecpipeError(str(e)) from None

    return wrapper  # type: ignore[return-value]


def _cause(error: BaseException) -> str | None:
    """The message of the RecpipeError a Ray task raised: Ray hands this process the task's
    traceback as text (the exception object itself does not come back), so it is read from there."""
    found = _TASK_ERROR.search(str(error))
    return found.group(1).strip() if found else None


@user_errors
def read_row_groups(
    batch: dict[str, np.ndarray],
    rating_scale: Sequence[float] | None,
    require_timestamps: str | None,
    source: str | None,
) -> pd.DataFrame:
    """Read and validate row groups (``validate_interactions``, as ``read_raw`` does); a problem
    names the shard and the row in it. Adds each row's ``POSITION``."""
    frames = []
    for file, index, first_row, position in zip(
        batch["file"], batch["index"], batch["first_row"], batch["position"], strict=True
    ):
        with reading(file):
            table = pq.ParquetFile(file, read_dictionary=["user_id", "item_id"]).read_row_group(int(index))
        try:
            df = validate_interactions(
                table.to_pandas(), file, rating_scale=rating_scale, require_timestamps=require_timestamps, source=source
            )
        except DataError as e:  # the row in the shard; the count of bad rows would be the row group's only
            row = None if e.row is None else e.row + int(first_row)
            raise DataError(e.file, e.problem, column=e.column, row=row, example=e.example, hint=e.hint) from None
        df = df.astype({"user_id": "str", "item_id": "str"})
        df[POSITION] = np.arange(int(position), int(position) + len(df), dtype=np.int64)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def frame(table: pa.Table) -> pd.DataFrame:
    """A Ray block as ``read_raw``'s frames: nullable Int64 timestamps, float32 ratings (NaN for
    none), rows in position order with their position as the index."""
    df = table.drop_columns(["timestamp"]).to_pandas()
    df["timestamp"] = table.column("timestamp").to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get).array
    df["rating"] = df["rating"].astype(np.float32)
    return df.sort_values(POSITION, kind="stable").set_index(POSITION)


def with_partition(table: pa.Table, n_partitions: int) -> pa.Table:
    """``PART``: the partition of each row's user (a fixed hash of the id, the same in every process)."""
    hashed = pd.util.hash_array(table.column("user_id").to_numpy(zero_copy_only=False).astype(object))
    if PART in table.column_names:
        table = table.drop_columns([PART])
    return table.append_column(PART, pa.array((hashed % n_partitions).astype(np.int32)))


@user_errors
def deduplicate_partition(table: pa.Table, policy: str, file: str) -> pd.DataFrame:
    """``deduplicate`` on a partition: every row of a (user, item) pair is in it, in position order."""
    kept, _ = deduplicate(frame(table), policy, file=file)
    return kept.reset_index()


@user_errors
def keep_ratings(table: pa.Table, min_rating: float | None) -> pd.DataFrame:
    """The rows with a rating ``>= min_rating`` (``filter_interactions``'s first filter)."""
    kept, _ = filter_interactions(frame(table), min_rating=min_rating)
    return kept.reset_index()


def without(table: pa.Table, column: str, ids: pa.Array) -> pa.Table:
    """The rows whose ``column`` is not among ``ids``."""
    return table.filter(pc.invert(pc.is_in(table.column(column), value_set=ids)))


@user_errors
def label_partition(table: pa.Table, name: str, options: Mapping[str, Any], cold: pa.Array) -> pd.DataFrame:
    """A per-user splitter's ``LABEL`` for a partition's rows (complete users, position order);
    rows of cold items get 2 (test), the splitter divides the others (``make_splits``)."""
    df = frame(table)
    is_cold = df["item_id"].isin(cold.to_pylist()).to_numpy()
    labels = np.full(len(df), 2, dtype=np.int8)
    labels[~is_cold] = labels_of(SPLITTERS[name](df[~is_cold].reset_index(drop=True), **options), int((~is_cold).sum()))
    return df.assign(**{LABEL: labels}).reset_index()


def labels_of(splits: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], n: int) -> np.ndarray:
    """0/1/2 per row of a frame of ``n`` rows (index 0..n-1) from the splitter's three parts."""
    labels = np.zeros(n, dtype=np.int8)
    labels[splits[1].index.to_numpy()] = 1
    labels[splits[2].index.to_numpy()] = 2
    return labels


def run(cfg: Any, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Preprocess ``raw_dir`` on the Ray cluster of ``cfg.engine`` into ``out_dir`` (atomically):
    the same files, byte for byte, as the local engine. Returns the stats (stats.json)."""
    import ray

    options = cfg.preprocess
    name, split_args, cold_share, cold_seed = split_options(cfg.split)
    if name not in PER_USER and name not in DRIVER_COLUMNS:
        raise RecpipeError(f"split={name} does not run on engine=ray; use engine=local")
    minimums = {
        "min_user_interactions": ("user_id", _count_option(options, "min_user_interactions")),
        "min_item_interactions": ("item_id", _count_option(options, "min_item_interactions")),
    }
    source = source_path(raw_dir)
    groups = row_groups(interaction_files(raw_dir), source_hint(source))
    items_table, users_table = read_catalogs(raw_dir)
    with connected(cfg.engine):
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        try:
            return _run(
                cfg,
                raw_dir,
                (name, split_args, cold_share, cold_seed),
                minimums,
                groups,
                (items_table, users_table),
                out_dir,
            )
        except (ray.exceptions.RayError, ray.data.exceptions.UserCodeException) as e:
            message = _cause(e)
            if message is None:
                raise
            raise RecpipeError(message) from None


def _run(
    cfg: Any,
    raw_dir: Path,
    split: tuple[str, dict[str, Any], float, int],
    minimums: dict[str, tuple[str, int]],
    groups: list[RowGroup],
    catalogs: tuple[pa.Table, pa.Table | None],
    out_dir: Path,
) -> dict[str, Any]:
    """``run``'s steps on the connected cluster."""
    import ray

    options, (items_table, users_table) = cfg.preprocess, catalogs
    name, split_args, cold_share, cold_seed = split
    start = time.monotonic()
    file = str(raw_dir / "interactions.parquet")
    rating_scale = OmegaConf.select(cfg, "data.rating_scale")
    require = f"split={name}" if name in NEEDS_TIMESTAMPS else None
    source = source_path(raw_dir)
    raw = (
        ray.data.from_items([vars(g) for g in groups])
        .map_batches(
            functools.partial(read_row_groups, rating_scale=rating_scale, require_timestamps=require, source=source),
            batch_size=1,
            batch_format="numpy",
        )
        .materialize()
    )
    n_raw = raw.count()
    log.info(f"engine=ray: read {n_raw:,} interactions ({_since(start)})")
    if n_raw == 0:
        raise DataError(file, "no interactions", n_rows=0)
    counts = Counts.of(raw)
    _check_ratings_all_or_none(raw, n_raw, counts.rated, groups)
    stats: dict[str, Any] = {"raw": counts.stats(n_raw)}
    cpus = int(ray.cluster_resources().get("CPU", 1))
    n_partitions = max(cpus, math.ceil(n_raw / ROWS_PER_PARTITION))

    kept = (
        raw.map_batches(with_partition, fn_kwargs={"n_partitions": n_partitions}, batch_format="pyarrow")
        .groupby(PART)
        .map_groups(
            deduplicate_partition, fn_kwargs={"policy": options["duplicates"], "file": file}, batch_format="pyarrow"
        )
        .materialize()
    )
    n = kept.count()
    log.info(f"engine=ray: duplicates resolved in {n_partitions} user partitions ({_since(start)})")
    dropped = {"duplicates": n_raw - n, **dict.fromkeys(FILTER_REASONS, 0)}
    if options["min_rating"] is not None:
        kept = kept.map_batches(
            keep_ratings, fn_kwargs={"min_rating": options["min_rating"]}, batch_format="pyarrow"
        ).materialize()
        dropped["min_rating"], n = n - kept.count(), kept.count()
    changed = True
    while changed:  # the k-core, in filter_interactions' order: users, then items, until none is dropped
        changed = False
        for reason, (column, minimum) in minimums.items():
            kept, n_dropped = _drop_rare(kept, column, minimum)
            if n_dropped:
                dropped[reason] += n_dropped
                n -= n_dropped
                changed = True
    if n == 0:
        raise RecpipeError(
            f"no interactions left after the filters (dropped: {dict(list(dropped.items())[1:])}); lower "
            "preprocess.min_user_interactions / min_item_interactions / min_rating"
        )
    log.info(f"engine=ray: {n:,} interactions kept ({_since(start)})")
    counts = Counts.of(kept)
    user_ids, item_ids = sorted_ids(counts.users.index.to_series()), sorted_ids(counts.items.index.to_series())
    users = build_vocabulary(user_ids, users_table, "user_id")
    items = build_vocabulary(item_ids, items_table, "item_id")
    cold = pa.array(item_ids[cold_item_rows(pd.DataFrame({"item_id": item_ids}), cold_share, cold_seed)], pa.string())

    if name in PER_USER:
        kept = (
            kept.map_batches(with_partition, fn_kwargs={"n_partitions": n_partitions}, batch_format="pyarrow")
            .groupby(PART)
            .map_groups(
                label_partition, fn_kwargs={"name": name, "options": split_args, "cold": cold}, batch_format="pyarrow"
            )
        )
    ordered = kept.sort(POSITION).materialize()
    log.info(f"engine=ray: vocabularies built, rows sorted ({_since(start)})")
    labels = None if name in PER_USER else _driver_labels(ordered, name, split_args, cold)
    with atomic_dir(out_dir) as tmp:
        split_stats = _write_splits(ordered, tmp, labels, cold, user_ids, item_ids)
        stats["filtered"] = {
            "users": len(user_ids),
            "items": len(item_ids),
            "interactions": n,
            "items_not_in_item_table": _not_in_table(item_ids, items_table, "item_id"),
            "users_not_in_user_table": _not_in_table(user_ids, users_table, "user_id"),
        }
        stats["splits"] = split_stats
        stats["dropped"] = dropped
        write_vocabularies(tmp, users, items, stats)
    log.info(f"engine=ray: splits written ({_since(start)})")
    return stats


def _since(start: float) -> str:
    return f"{time.monotonic() - start:.1f} s"


def block_counts(table: pa.Table) -> pa.Table:
    """A block's rows per user id (``kind`` 0) and per item id (1), and its rows with a rating (2)."""
    parts = []
    for kind, column in enumerate(("user_id", "item_id")):
        counts = pc.value_counts(table.column(column).combine_chunks())
        ids, n = counts.field("values").cast(pa.string()), counts.field("counts")
        parts.append(pa.table({"kind": pa.array(np.full(len(ids), kind, np.int8)), "id": ids, "n": n}))
    rated = len(table) - table.column("rating").null_count
    parts.append(pa.table({"kind": pa.array([2], pa.int8()), "id": pa.array([""]), "n": pa.array([rated], pa.int64())}))
    return pa.concat_tables(parts)


@dataclass(frozen=True)
class Counts:
    """Rows per user id and per item id of a dataset (the k-core's counts; their ids make the
    vocabularies), and its rows with a rating: small, held in this process."""

    users: pd.Series
    items: pd.Series
    rated: int

    @classmethod
    def of(cls, ds: Dataset) -> Counts:
        """One pass of ``block_counts`` over ``ds``, summed here."""
        df = ds.map_batches(block_counts, batch_format="pyarrow", batch_size=None).to_pandas()
        empty = pd.Series(dtype=np.int64)
        total = (
            {kind: part.groupby("id", sort=False)["n"].sum() for kind, part in df.groupby("kind")} if len(df) else {}
        )
        return cls(total.get(0, empty), total.get(1, empty), int(total.get(2, empty).sum()))

    def stats(self, n: int) -> dict[str, int]:
        """``preprocess.counts``: distinct users and items, and ``n`` rows."""
        return {"users": len(self.users), "items": len(self.items), "interactions": n}


def _check_ratings_all_or_none(raw: Dataset, n: int, rated: int, groups: list[RowGroup]) -> None:
    """Ratings all present or all null across the shards (each row group was checked alone)."""
    if 0 < rated < n:
        first = cast(int, raw.filter(lambda row: row["rating"] is None or np.isnan(row["rating"])).min(POSITION))
        group = max((g for g in groups if g.position <= first), key=lambda g: g.position)
        raise DataError(
            group.file,
            "missing rating (ratings must be all present or, for implicit feedback, all null)",
            column="rating",
            n_rows=n - rated,
            row=group.first_row + first - group.position,
        )


def _drop_rare(ds: Dataset, column: str, minimum: int) -> tuple[Dataset, int]:
    """Drop the rows of ``column`` values with fewer than ``minimum`` rows; the rows left and how
    many went. Every value present has a row, so a minimum of 1 drops nothing."""
    if minimum <= 1:
        return ds, 0
    counts = Counts.of(ds)
    per_id = counts.users if column == "user_id" else counts.items
    rare = per_id[per_id < minimum]
    if rare.empty:
        return ds, 0
    ids = pa.array(rare.index.to_numpy(object), pa.string())
    kept = ds.map_batches(functools.partial(without, column=column, ids=ids), batch_format="pyarrow").materialize()
    return kept, int(rare.sum())


def _driver_labels(ordered: Dataset, name: str, split_args: dict[str, Any], cold: pa.Array) -> np.ndarray:
    """The labels of the rows not of cold items, in position order, from the splitter run in this
    process on the columns it reads (``DRIVER_COLUMNS``): none for ``random`` (only their number),
    the timestamps for ``temporal``."""
    columns = list(DRIVER_COLUMNS[name])
    parts: list[pd.DataFrame] = []
    n = 0
    for batch in _batches(ordered, ["item_id", *columns]):
        warm = ~batch["item_id"].isin(cold.to_pylist()).to_numpy()
        n += int(warm.sum())
        if columns:
            parts.append(batch.loc[warm, columns])
    slim = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(index=pd.RangeIndex(n))
    return labels_of(SPLITTERS[name](slim, **split_args), n)


def _batches(ds: Dataset, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """``ds``'s rows in order as frames (``frame``'s dtypes, index reset)."""
    previous = -1
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        df = frame(table).reset_index()
        if len(df):
            if df[POSITION].iloc[0] <= previous:
                raise RecpipeError("engine=ray: the sorted rows came back out of order; rerun preprocess")
            previous = int(df[POSITION].iloc[-1])
        yield df if columns is None else df[columns]


def _write_splits(
    ordered: Dataset,
    folder: Path,
    labels: np.ndarray | None,
    cold: pa.Array,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> dict[str, dict[str, int]]:
    """Stream the rows in order into train/val/test.parquet; returns ``preprocess.split_stats``."""
    writers = {s: SplitWriter(folder / f"{s}.parquet") for s in SPLITS}
    user_index, item_index = pd.Index(user_ids), pd.Index(item_ids)
    seen_users = np.zeros((len(SPLITS), len(user_ids)), dtype=bool)
    seen_items = np.zeros((len(SPLITS), len(item_ids)), dtype=bool)
    cold_ids = set(cold.to_pylist())
    done = 0
    try:
        for df in _batches(ordered):
            if labels is None:
                label = df[LABEL].to_numpy(np.int8)
            else:
                label = np.full(len(df), 2, dtype=np.int8)
                warm = ~df["item_id"].isin(cold_ids).to_numpy()
                label[warm] = labels[done : done + int(warm.sum())]
                done += int(warm.sum())
            for i, split in enumerate(SPLITS):
                rows = df[label == i]
                writers[split].write(rows)
                seen_users[i, user_index.get_indexer(rows["user_id"])] = True
                seen_items[i, item_index.get_indexer(rows["item_id"])] = True
    finally:
        for writer in writers.values():
            writer.close()
    stats: dict[str, dict[str, int]] = {}
    for i, split in enumerate(SPLITS):
        stats[split] = {
            "users": int(seen_users[i].sum()),
            "items": int(seen_items[i].sum()),
            "interactions": writers[split].rows,
        }
        if i:
            stats[split]["cold_users"] = int((seen_users[i] & ~seen_users[0]).sum())
            stats[split]["cold_items"] = int((seen_items[i] & ~seen_items[0]).sum())
    return stats
