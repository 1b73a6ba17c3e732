"""The preprocess stage's output, data/processed/ (vocabularies, splits, stats): its writer
(``write_processed``) and its reader (``load_processed``, for training, evaluation and export).
Columns: ``recpipe.data.schema``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp

from recpipe.data.raw import reading
from recpipe.data.schema import INDEX, INTERACTIONS, ITEM_IDX, USER_IDX, arrow_schema
from recpipe.errors import DataError, RecpipeError
from recpipe.io import atomic_dir, write_json

SPLITS = ("train", "val", "test")
ROW_GROUP_ROWS = 1024 * 1024  # the row group size of pq.write_table (pyarrow's default)
_INTERACTIONS_SCHEMA = arrow_schema(INTERACTIONS)


@dataclass(frozen=True)
class Preprocessed:
    """The contents of data/processed: three splits (contract columns), vocabularies, stats."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    users: pa.Table
    items: pa.Table
    stats: dict[str, Any]


def write_processed(result: Preprocessed, path: str | Path) -> None:
    """Write ``result`` as the directory ``path`` in one atomic step (the old one stays until then)."""
    with atomic_dir(path) as tmp:
        for name in SPLITS:
            pq.write_table(interactions_table(getattr(result, name)), tmp / f"{name}.parquet")
        write_vocabularies(tmp, result.users, result.items, result.stats)


def interactions_table(frame: pd.DataFrame) -> pa.Table:
    """A split's rows as the Arrow table written to its Parquet file (contract columns and types)."""
    table = pa.Table.from_pandas(frame[_INTERACTIONS_SCHEMA.names], schema=_INTERACTIONS_SCHEMA, preserve_index=False)
    return table.replace_schema_metadata(None)


def write_vocabularies(folder: Path, users: pa.Table, items: pa.Table, stats: dict[str, Any]) -> None:
    """users.parquet, items.parquet and stats.json of data/processed into ``folder``."""
    pq.write_table(users, folder / "users.parquet")
    pq.write_table(items, folder / "items.parquet")
    write_json(folder / "stats.json", stats)


class SplitWriter:
    """A split's Parquet file written from its rows in order, batch by batch, with the same bytes as
    ``write_processed`` writing all of them at once: ``pq.write_table`` cuts a table into row groups
    of ``ROW_GROUP_ROWS`` rows, so this writer buffers rows and writes exactly those row groups."""

    def __init__(self, path: Path) -> None:
        self._writer = pq.ParquetWriter(path, _INTERACTIONS_SCHEMA)
        self._pending: list[pa.Table] = []
        self._n_pending = 0
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame``'s rows (contract columns)."""
        if len(frame):
            self._pending.append(interactions_table(frame))
            self._n_pending += len(frame)
            self.rows += len(frame)
        while self._n_pending >= ROW_GROUP_ROWS:
            self._flush(ROW_GROUP_ROWS)

    def close(self) -> None:
        """Write the last row group (an empty file has one empty table, like ``pq.write_table``'s)."""
        if self._n_pending or not self.rows:
            self._flush(self._n_pending)
        self._writer.close()

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self._pending) if self._pending else _INTERACTIONS_SCHEMA.empty_table()
        self._writer.write_table(table.slice(0, n).combine_chunks())
        rest = table.slice(n)
        self._pending, self._n_pending = ([rest] if len(rest) else []), len(rest)


@dataclass(frozen=True)
class Processed:
    """Vocabularies (``users``, ``items``: id, ``index``, features) and the three splits.

    Each split carries ``user_idx`` and ``item_idx`` (int32 vocabulary indices) next to the
    contract columns.
    """

    users: pd.DataFrame
    items: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def split(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

    def matrix(self, *splits: str) -> sp.csr_matrix:
        """Binary user x item matrix (float32 CSR) of the interactions in ``splits``."""
        frames = [self.split(s) for s in splits]
        rows = np.concatenate([f["user_idx"].to_numpy() for f in frames])
        cols = np.concatenate([f["item_idx"].to_numpy() for f in frames])
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0  # duplicates across splits count once
        return m

    def item_popularity(self) -> np.ndarray:
        """Train interaction count per item index (float64 [n_items])."""
        return np.bincount(self.train["item_idx"].to_numpy(), minlength=self.n_items).astype(np.float64)


def load_processed(path: str | Path) -> Processed:
    """Read data/processed/ and attach vocabulary indices to every split."""
    path = Path(path)
    if not (path / "items.parquet").exists():
        raise RecpipeError(f"{path}: no preprocessed data; run `recpipe preprocess` (or `dvc repro`)")
    index = INDEX.name
    users = _read(path / "users.parquet", index, "user_id").to_pandas()
    items = _read(path / "items.parquet", index, "item_id").to_pandas()
    splits = {}
    for name in SPLITS:
        file = path / f"{name}.parquet"
        table = _read(file, "user_id", "item_id")
        df = table.to_pandas()
        df[USER_IDX.name] = _indices(table, "user_id", users, file)
        df[ITEM_IDX.name] = _indices(table, "item_id", items, file)
        splits[name] = df
    users = users.sort_values(index, ignore_index=True)
    items = items.sort_values(index, ignore_index=True)
    return Processed(users=users, items=items, **splits)


def _indices(table: pa.Table, column: str, vocabulary: pd.DataFrame, file: Path) -> np.ndarray:
    """The vocabulary index (int32) of each id in ``table[column]`` (a vectorised Arrow lookup; ids
    as Python strings in a pandas index took ~10 s CPU per column at 20M rows); an id that is not in
    the vocabulary is a DataError."""
    ids = table.column(column)
    vocab = pa.array(vocabulary[column].to_numpy(object), pa.string()).cast(ids.type)
    at = pc.index_in(ids, value_set=vocab)
    if at.null_count:
        missing = at.is_null().to_numpy(zero_copy_only=False)
        row = int(np.flatnonzero(missing)[0])
        raise DataError(
            str(file),
            f"id not in the vocabulary ({column.removesuffix('_id')}s.parquet)",
            column=column,
            n_rows=int(missing.sum()),
            row=row,
            example={column: ids[row].as_py()},
            hint="Re-run `recpipe preprocess` (or `dvc repro preprocess`)",
        )
    return vocabulary[INDEX.name].to_numpy(np.int32)[at.to_numpy()]


def _read(file: Path, *columns: str) -> pa.Table:
    """A data/processed table that must have ``columns``; a damaged one is a DataError saying to re-run."""
    hint = "Re-run `recpipe preprocess` (or `dvc repro preprocess`)"
    with reading(file, hint):
        table = pq.read_table(file)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            str(file), f"missing column(s) {', '.join(missing)}: damaged or not written by recpipe", hint=hint
        )
    return table
