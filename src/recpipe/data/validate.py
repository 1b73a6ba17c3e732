"""Validate data/raw's tables before preprocessing (``recpipe.data.raw.read_raw`` reads them).

Every problem a user can fix raises :class:`recpipe.errors.DataError` naming the file, the column,
how many rows are affected and the first such row (row numbers count from 0, as in
``pd.read_parquet(file).iloc[row]``). When ingest recorded the original source file in
data/raw/source.json (``{"path": ...}``), the message mentions it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recpipe.data.schema import INDEX, INTERACTIONS, required
from recpipe.errors import DataError

RESERVED_COLUMN = INDEX.name
NA_ID_HINT = (
    "CSV cells spelled NA, null, NaN, N/A, ... are read as missing; if such an id is real, list "
    "the cells that mean missing in data.na_values (e.g. `recpipe compose data=files "
    "'data.na_values=[\"\"]'`)"
)  # the vocabulary index that preprocess adds to the item and user tables


def validate_interactions(
    df: pd.DataFrame,
    file: str,
    *,
    rating_scale: Sequence[float] | None = None,
    require_timestamps: str | None = None,
    source: str | None = None,
) -> pd.DataFrame:
    """Check the interactions table and return its contract columns with normalised dtypes.

    Errors: no rows, missing columns, null or empty ids, non-numeric, partly missing, non-finite or
    out-of-``rating_scale`` ratings, non-integer or negative timestamps, and null timestamps when
    ``require_timestamps`` names a reason. The input frame is not modified.
    """
    hint = source_hint(source)
    if len(df) == 0:
        raise DataError(file, "no interactions", n_rows=0, hint=hint)
    _require_columns(list(df.columns), required(INTERACTIONS), file, hint)
    df = df.reset_index(drop=True)
    return pd.DataFrame(
        {
            "user_id": _check_ids(df["user_id"], df, file, "user_id", hint),
            "item_id": _check_ids(df["item_id"], df, file, "item_id", hint),
            "rating": _check_ratings(df, file, rating_scale, hint),
            "timestamp": _check_timestamps(df, file, require_timestamps, hint),
        }
    )


def validate_table(table: pa.Table, file: str, required: Sequence[str], *, source: str | None = None) -> pa.Table:
    """Check an item or user table (id column ``required[0]``) and return it with string ids.

    Errors: missing columns, a column named ``index`` (reserved), null/empty or repeated ids.
    """
    hint = source_hint(source)
    _require_columns(table.column_names, required, file, hint)
    if RESERVED_COLUMN in table.column_names:
        raise DataError(
            file,
            f"the column name '{RESERVED_COLUMN}' is reserved for the vocabulary index",
            column=RESERVED_COLUMN,
            hint="rename the column in the source",
        )
    id_col = required[0]
    frame = table.to_pandas()
    ids = _check_ids(frame[id_col], frame, file, id_col, hint)
    check_rows(frame, ids.duplicated(keep="first").to_numpy(), file, id_col, "repeated id", hint)
    return table.set_column(table.column_names.index(id_col), id_col, pa.array(ids.to_numpy(object), pa.string()))


def source_hint(source: str | None) -> str | None:
    return f"Ingested from {source}" if source else None


def _require_columns(present: Sequence[str], required: Sequence[str], file: str, hint: str | None) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(
            file,
            f"missing column{'s' if len(missing) > 1 else ''} (has: {', '.join(map(str, present))})",
            column=", ".join(missing),
            hint=hint,
        )


def check_rows(df: pd.DataFrame, bad: np.ndarray, file: str, column: str, problem: str, hint: str | None) -> None:
    """Raise a DataError if ``bad`` flags any row of ``df``, showing the first one (row = position in ``df``)."""
    if not bad.any():
        return
    row = int(np.flatnonzero(bad)[0])
    raise DataError(
        file, problem, column=column, n_rows=int(bad.sum()), row=row, example=example_row(df, row), hint=hint
    )


def example_row(df: pd.DataFrame, position: int) -> dict[str, Any]:
    """Row ``position`` of ``df`` as plain Python values, for error messages."""
    return {str(k): _scalar(v) for k, v in df.iloc[position].items()}


def _scalar(v: Any) -> Any:
    """A plain Python value for messages (numpy scalars unwrapped, missing values as None)."""
    if isinstance(v, (list, np.ndarray)):
        return list(v)
    if pd.isna(v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _check_ids(ids: pd.Series, df: pd.DataFrame, file: str, column: str, hint: str | None) -> pd.Series:
    """Ids as a categorical of strings (cheap to group and count); null or blank ids are an error."""
    if not (isinstance(ids.dtype, pd.CategoricalDtype) and pd.api.types.is_string_dtype(ids.cat.categories)):
        ids = ids.astype("str").astype("category")
    codes = ids.cat.codes.to_numpy()
    blank = np.append(ids.cat.categories.str.strip() == "", False)  # code -1 (null) picks the False
    check_rows(df, (codes < 0) | blank[codes], file, column, "missing id (null or empty)", _join(NA_ID_HINT, hint))
    return ids


def _check_ratings(df: pd.DataFrame, file: str, rating_scale: Sequence[float] | None, hint: str | None) -> pd.Series:
    """Ratings as float32: all present (explicit feedback) or all null (implicit), within the scale."""
    raw = df["rating"]
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    given = raw.notna().to_numpy()
    null = values.isna().to_numpy()
    check_rows(df, given & null, file, "rating", "not a number", hint)
    check_rows(
        df,
        null & (not null.all()),
        file,
        "rating",
        "missing rating (ratings must be all present or, for implicit feedback, all null)",
        hint,
    )
    v = values.to_numpy()
    check_rows(df, ~null & ~np.isfinite(v), file, "rating", "not a finite number", hint)
    if rating_scale is not None:
        lo, hi = (float(x) for x in rating_scale)
        check_rows(
            df,
            ~null & ((v < lo) | (v > hi)),
            file,
            "rating",
            f"rating outside data.rating_scale [{lo:g}, {hi:g}]",
            _join("Fix the data, or the scale (e.g. `recpipe compose data.rating_scale=[0,10]`)", hint),
        )
    return values.astype("float32")


def _check_timestamps(df: pd.DataFrame, file: str, require_timestamps: str | None, hint: str | None) -> pd.Series:
    """Timestamps as Int64 seconds: integers >= 0, null allowed unless ``require_timestamps``."""
    raw = df["timestamp"]
    values = pd.to_numeric(raw, errors="coerce")
    given = raw.notna().to_numpy()
    null = values.isna().to_numpy()
    problem = "not an integer number of seconds"
    check_rows(df, given & null, file, "timestamp", problem, hint)
    v = values.to_numpy(dtype="float64", na_value=np.nan)
    if values.dtype.kind == "f":
        check_rows(df, ~null & (v != np.floor(v)), file, "timestamp", problem, hint)
    check_rows(df, ~null & (v < 0), file, "timestamp", "negative timestamp", hint)
    if require_timestamps:
        check_rows(
            df,
            null,
            file,
            "timestamp",
            "missing timestamp",
            _join(f"{require_timestamps} orders interactions by time; supply timestamps or use split=random", hint),
        )
    return values.astype("Int64")


def _join(*hints: str | None) -> str | None:
    return ". ".join(h for h in hints if h) or None
