"""The ingest stage's output, data/raw/: its writer (``write_raw``), its reader (``read_raw``, which
validates with ``recpipe.data.validate``), and the conversions every source uses to reach it.

Every source returns a :class:`RawData` whose frames already have the contract columns
(``recpipe.data.schema``, docs/contracts.md): interactions ``user_id``, ``item_id`` (strings),
``rating`` (float32, null for implicit data), ``timestamp`` (int64 seconds, nullable); items
``item_id``, ``title``, ``year`` (int32, nullable), ``genres`` (list of strings); users ``user_id``
plus what the source has.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recpipe.data.schema import INTERACTION_COLUMNS, INTERACTIONS, ITEM_COLUMNS, ITEMS, USERS, required
from recpipe.data.validate import source_hint, validate_interactions, validate_table
from recpipe.errors import DataError, RecpipeError
from recpipe.io import atomic_dir, write_json

log = logging.getLogger(__name__)

# Genre tokens that mean "no genre" (ML-100K's "unknown" flag, the CSV releases' placeholder).
NO_GENRE = frozenset({"", "unknown", "(no genres listed)"})
# A title ending in its year, "Toy Story (1995)" or "Fawlty Towers (1975-1979)".
_TITLE_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:[-–]\d{0,4})?\)\s*$"
# Largest timestamp accepted: 9999-12-31T23:59:59Z in seconds (milliseconds are 1000x larger).
MAX_TIMESTAMP = 253_402_300_799
# What the readers raise for a file that is empty, truncated, corrupt or not of its type.
READ_ERRORS: tuple[type[BaseException], ...] = (
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
    pa.ArrowException,
    UnicodeDecodeError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    csv.Error,
    OSError,
)
# The contract types written; rating is cast only from numbers or nulls (validate names a bad one).
_ARROW_TYPES = {c.name: c.type for c in (*INTERACTIONS, *ITEMS)}


@dataclass(frozen=True)
class RawData:
    """One source's data in contract form, plus ``source``: provenance for data/raw/source.json."""

    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None
    source: dict[str, Any]

    def summary(self) -> dict[str, int]:
        """Interaction rows and distinct users and items among them; rows of the item/user tables."""
        out = {
            "interactions": len(self.interactions),
            "users": int(self.interactions["user_id"].nunique()),
            "items": int(self.interactions["item_id"].nunique()),
            "item_rows": len(self.items),
        }
        if self.users is not None:
            out["user_rows"] = len(self.users)
        return out


def write_raw(raw: RawData, path: str | os.PathLike) -> dict[str, int]:
    """Write ``raw`` as the directory ``path`` (interactions/items/users.parquet, source.json), atomically.

    Returns ``raw.summary()``, which source.json also records under ``rows``.
    """
    missing = [c for c in INTERACTION_COLUMNS if c not in raw.interactions] + [
        c for c in ITEM_COLUMNS if c not in raw.items
    ]
    if missing or (raw.users is not None and "user_id" not in raw.users):
        source = raw.source.get("source")
        raise ValueError(f"source {source!r} broke the raw contract: missing {missing or ['user_id']}")
    with atomic_dir(path) as tmp:
        _write_table(raw.interactions[list(INTERACTION_COLUMNS)], tmp / "interactions.parquet")
        _write_table(raw.items[list(ITEM_COLUMNS)], tmp / "items.parquet")
        if raw.users is not None:
            users = raw.users[["user_id", *(c for c in raw.users.columns if c != "user_id")]]
            _write_table(users, tmp / "users.parquet")
        summary = raw.summary()
        write_json(tmp / "source.json", {**raw.source, "rows": summary})
    return summary


def _write_table(df: pd.DataFrame, path: Path) -> None:
    """Parquet with the contract's Arrow types (e.g. an all-empty genres column stays list<string>)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    for i, field in enumerate(table.schema):
        target = _ARROW_TYPES.get(field.name)
        if field.name == "rating" and not (
            pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_null(field.type)
        ):
            target = None
        if target is not None and field.type != target:
            table = table.set_column(i, pa.field(field.name, target), table.column(i).cast(target))
    pq.write_table(table, path)


@dataclass(frozen=True)
class RawTables:
    """Validated raw tables.

    ``interactions`` has the contract columns with dtypes ``user_id``/``item_id`` categorical of str, ``rating``
    float32 (all NaN for implicit data), ``timestamp`` Int64 (nullable); its index is the row number
    in the file. ``items``/``users`` are the tables as read (Arrow, so feature types survive), with
    string ids that are unique and non-null. ``files`` maps "interactions", "items", "users" to the
    paths shown in messages.
    """

    interactions: pd.DataFrame
    items: pa.Table
    users: pa.Table | None
    files: dict[str, str]


def source_path(raw_dir: str | Path) -> str | None:
    """The original source file ingest recorded in ``raw_dir/source.json`` (key ``path``), if any."""
    try:
        info = json.loads((Path(raw_dir) / "source.json").read_text())
    except (OSError, ValueError):
        return None
    path = info.get("path") if isinstance(info, dict) else None
    return str(path) if path else None


def read_raw(
    raw_dir: str | Path,
    *,
    rating_scale: Sequence[float] | None = None,
    require_timestamps: str | None = None,
) -> RawTables:
    """Read and validate ``raw_dir``'s interactions.parquet, items.parquet and optional users.parquet.

    ``require_timestamps`` (e.g. "split=temporal") makes a null timestamp an error, naming the reason.
    """
    raw_dir = Path(raw_dir)
    source = source_path(raw_dir)
    files = {name: str(raw_dir / f"{name}.parquet") for name in ("interactions", "items", "users")}
    interactions = validate_interactions(
        _read_table(files["interactions"], source, dictionary=("user_id", "item_id")).to_pandas(),
        files["interactions"],
        rating_scale=rating_scale,
        require_timestamps=require_timestamps,
        source=source,
    )
    items, users = read_catalogs(raw_dir)
    return RawTables(interactions=interactions, items=items, users=users, files=files)


def read_catalogs(raw_dir: str | Path) -> tuple[pa.Table, pa.Table | None]:
    """``raw_dir``'s item table and its user table (None when there is none), validated."""
    source = source_path(raw_dir)
    items_file, users_file = str(Path(raw_dir) / "items.parquet"), str(Path(raw_dir) / "users.parquet")
    items = validate_table(_read_table(items_file, source), items_file, required(ITEMS), source=source)
    users = None
    if Path(users_file).exists():
        users = validate_table(_read_table(users_file, source), users_file, required(USERS), source=source)
    return items, users


def _read_table(file: str, source: str | None, dictionary: Sequence[str] = ()) -> pa.Table:
    """Read a Parquet file; string columns in ``dictionary`` come as dictionaries (pandas categoricals)."""
    if not Path(file).exists():
        raise RecpipeError(f"{file}: not found; run `recpipe ingest` (or `dvc repro`) first")
    try:
        return pq.read_table(file, read_dictionary=list(dictionary))
    except (OSError, pa.ArrowException) as e:
        raise DataError(file, f"not a readable Parquet file ({e})", hint=source_hint(source)) from e


def id_strings(values: pd.Series | np.ndarray | Iterable[Any]) -> pd.Series:
    """Ids as strings, nulls kept: integers and integral floats print without a decimal point (42 -> "42")."""
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_float_dtype(s.dtype):
        present = s.dropna()
        if (present == np.floor(present)).all():
            s = s.astype("Int64")
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        arr = pc.cast(pa.array(s, from_pandas=True), pa.string())
        return pd.Series(arr, index=s.index, dtype="str")
    if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:
        return s
    return s.map(_id_string, na_action="ignore").astype("str")


def _id_string(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)


def ids_from_index(index: np.ndarray, n: int) -> pd.Series:
    """Ids "1".."n" for 0-based integer ``index`` values, built once per id and gathered (fast for 10^7 rows)."""
    names = pc.cast(pa.array(np.arange(1, n + 1, dtype=np.int64)), pa.string())
    return pd.Series(names.take(pa.array(index)), dtype="str")


def ratings(values: pd.Series | None, n: int) -> pd.Series:
    """Numeric ratings as float32 (null for implicit data, ``values`` None); any text keeps every value as read.

    Text is not coerced to NaN: the preprocess stage validates ratings and reports the offending row.
    """
    if values is None:
        return pd.Series(np.full(n, np.nan, dtype=np.float32))
    try:
        return pd.to_numeric(values).astype(np.float32)
    except (ValueError, TypeError):
        return values.astype("str")


def numbers(values: pd.Series) -> pd.Series:
    """Text as float64 numbers, NaN where a value is no number (as ``pd.to_numeric(errors="coerce")``).

    Arrow parses a column of clean numbers ~25x faster than pandas; pandas handles the rest.
    """
    try:
        parsed = pc.cast(pa.array(values, type=pa.string(), from_pandas=True), pa.float64())
    except pa.ArrowException:
        return pd.to_numeric(values, errors="coerce").astype("float64")
    return pd.Series(parsed.to_numpy(zero_copy_only=False), index=values.index, name=values.name)


def timestamps(values: pd.Series | None, n: int, *, file: str = "") -> pd.Series:
    """Seconds since the epoch (nullable Int64) from numbers, datetimes or date strings.

    A column whose values are numbers is read as seconds: non-numbers among them, values that are
    not finite or beyond year 9999 (milliseconds?) raise a DataError naming ``file``, the column
    (``values.name``) and the first such row; fractions of a second are rounded, with a warning. A
    column of text that is no number is read as dates; a value that is not one raises a DataError.
    """
    if values is None:
        return pd.Series(pd.array([pd.NA] * n, dtype="Int64"))
    column = str(values.name or "timestamp")
    values = values.reset_index(drop=True)
    if pd.api.types.is_integer_dtype(values.dtype):
        seconds = values.astype("float64")
    elif pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _date_seconds(values, file, column)
    elif pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        seconds = values.astype("float64")
    else:
        seconds = numbers(values)
        if seconds.isna().all():
            return _date_seconds(values, file, column)
        _bad_timestamps(
            values,
            seconds.isna() & values.notna(),
            file,
            column,
            "text in a column of numeric timestamps (seconds since 1970)",
        )
    v = seconds.to_numpy(dtype="float64", na_value=np.nan)
    present = ~np.isnan(v)
    _bad_timestamps(values, present & ~np.isfinite(v), file, column, "timestamp is not a finite number")
    _bad_timestamps(
        values,
        present & np.isfinite(v) & (np.abs(v) > MAX_TIMESTAMP),
        file,
        column,
        f"timestamp beyond year 9999 in seconds (> {MAX_TIMESTAMP})",
        "timestamps are seconds since 1970; divide milliseconds by 1000",
    )
    fractional = present & (v != np.round(v))
    if fractional.any():
        row = int(np.flatnonzero(fractional)[0])
        log.warning(
            "%s, column '%s': %d timestamp(s) with fractions of a second rounded to whole seconds "
            "(first at row %d: %r)",
            file,
            column,
            int(fractional.sum()),
            row,
            float(seconds.iloc[row]),
        )
    return pd.Series(np.round(seconds.astype("float64"))).astype("Int64")


def _date_seconds(values: pd.Series, file: str, column: str) -> pd.Series:
    """Seconds since the epoch of datetimes or date strings; a value that is no date, or one outside
    the years pandas can hold as a date (1677-2262), raises a DataError."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return _datetime_seconds(values)
    try:
        parsed = pd.to_datetime(values, utc=True, errors="coerce", format="mixed")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        bad = np.array([_out_of_bounds(v) for v in values])
        _bad_timestamps(
            values, bad, file, column, "date outside the years 1677-2262", "Give such timestamps as seconds since 1970"
        )
        raise
    _bad_timestamps(
        values, parsed.isna() & values.notna(), file, column, "timestamps that are neither numbers (seconds) nor dates"
    )
    return _datetime_seconds(parsed)


def _datetime_seconds(values: pd.Series) -> pd.Series:
    """Seconds since the epoch of a datetime column, in its own unit (no nanosecond overflow)."""
    utc = values.dt.tz_convert("UTC").dt.tz_localize(None) if values.dt.tz is not None else values
    seconds = utc.to_numpy().astype("datetime64[s]").astype(np.int64)
    return pd.Series(pd.array(seconds, dtype="Int64")).mask(values.isna().to_numpy())


def _out_of_bounds(value: Any) -> bool:
    try:
        pd.to_datetime(value, utc=True, errors="coerce")
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        return True
    return False


def _bad_timestamps(
    values: pd.Series, bad: pd.Series | np.ndarray, file: str, column: str, problem: str, hint: str | None = None
) -> None:
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            file,
            problem,
            column=column,
            n_rows=int(bad.sum()),
            row=row,
            example={column: values.iloc[row]},
            hint=hint and hint[0].upper() + hint[1:],
        )


@contextmanager
def reading(
    file: str | os.PathLike,
    hint: str = "Check that it is complete and of the type its name says; re-export or re-download it",
) -> Iterator[None]:
    """Turn a reader's failure on an empty, truncated or corrupt ``file`` into a DataError naming it."""
    try:
        yield
    except READ_ERRORS as e:
        if isinstance(e, FileNotFoundError) and e.filename is not None and str(e.filename) != str(file):
            raise
        raise DataError(str(file), f"cannot read the file: {read_problem(e)}", hint=hint) from None


def read_problem(e: BaseException) -> str:
    """A one-line description of a reader's exception."""
    if isinstance(e, pd.errors.EmptyDataError):
        return "it is empty (no header, no rows)"
    text = " ".join(str(e).split()).rstrip(".") or type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


def int32_or_null(values: pd.Series) -> pd.Series:
    """Nullable int32 (years, ages); anything that is not a number becomes null."""
    return pd.to_numeric(values, errors="coerce").round().astype("Int32")


def split_title_year(titles: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Split "Toy Story (1995)" into the title "Toy Story" and the year 1995 (null when there is none)."""
    titles = titles.astype("str")
    parts = titles.str.extract(_TITLE_YEAR)
    return parts["title"].fillna(titles.str.strip()), int32_or_null(parts["year"])


def split_genres(values: pd.Series, sep: str | None) -> pd.Series:
    """Genre lists from strings joined by ``sep`` (None: whitespace); nulls and placeholders give []."""

    def split(v: Any) -> list[str]:
        return [g for g in (t.strip() for t in v.split(sep)) if g not in NO_GENRE] if isinstance(v, str) else []

    return values.map(split).astype(object)


def interactions_frame(
    user: pd.Series, item: pd.Series, rating: pd.Series | None, timestamp: pd.Series | None, *, file: str = ""
) -> pd.DataFrame:
    """The interactions table in contract form (``rating``/``timestamp`` None when the source has none)."""
    n = len(user)
    return pd.DataFrame(
        {
            "user_id": id_strings(user).array,
            "item_id": id_strings(item).array,
            "rating": ratings(rating, n).array,
            "timestamp": timestamps(timestamp, n, file=file).array,
        }
    )


def items_frame(item_id: pd.Series, title: pd.Series, year: pd.Series, genres: pd.Series) -> pd.DataFrame:
    """The items table in contract form (``genres``: lists of strings)."""
    return pd.DataFrame(
        {
            "item_id": id_strings(item_id).array,
            "title": title.astype("str").array,
            "year": int32_or_null(year).array,
            "genres": pd.Series(list(genres), dtype=object).array,
        }
    )


def items_from_interactions(item_ids: pd.Series) -> pd.DataFrame:
    """A minimal items table for a source without one: each item once, titled by its id, no year or genres."""
    ids = pd.Series(item_ids.dropna().unique(), dtype="str")
    no_year = pd.Series([None] * len(ids), dtype=object)
    return items_frame(ids, ids, no_year, pd.Series([[] for _ in ids], dtype=object))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
