"""``data.source=files``: the user's own interactions (and optional item and user tables), CSV or Parquet.

Columns are mapped by the config (``data.columns``, ``data.item_columns``, ``data.user_columns``).
Values are not validated here beyond what the contract types need: the preprocess stage checks
them and reports offending rows, so row order is kept and text ratings stay text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from recpipe.data.raw import (
    RawData,
    id_strings,
    interactions_frame,
    items_frame,
    items_from_interactions,
    reading,
    sha256_file,
    split_genres,
)
from recpipe.errors import DataError, RecpipeError
from recpipe.terminal import printable

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt")


def read_table(
    path: str | Path,
    mapping: Mapping[str, str | None],
    *,
    key: str,
    sep: str = ",",
    text: Iterable[str] = (),
    all_columns: bool = False,
    na_values: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read the columns named in ``mapping`` (config key -> column; None: not mapped) from a CSV or Parquet file.

    ``key`` is the config section of the mapping, for messages. Columns in ``text`` are read from CSV as
    text (ids keep their spelling); ``all_columns`` reads every column, not only the mapped ones.
    ``na_values`` (``data.na_values``) lists the CSV cells read as missing; None keeps pandas' defaults
    ("", "NA", "null", "NaN", "N/A", ...). A mapped column that is missing raises a DataError naming
    the file and listing the columns present; an empty or corrupt file raises one naming the file.
    """
    path = Path(path)
    if path.is_dir():
        setting = "interactions" if key == "columns" else key.split("_")[0] + "s"  # item_columns -> items
        raise RecpipeError(f"{path} is a folder; data.{setting} must name a CSV or Parquet file")
    if not path.is_file():
        raise RecpipeError(f"{path} not found")
    suffixes = [s.lower() for s in path.suffixes]
    parquet = any(s in PARQUET_SUFFIXES for s in suffixes)
    if not parquet and not any(s in CSV_SUFFIXES for s in suffixes):
        raise RecpipeError(f"{path}: unknown file type; use {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}")
    if ".tsv" in suffixes:
        sep = "\t"
    na = {} if na_values is None else {"na_values": list(na_values), "keep_default_na": False}
    with reading(path):
        present = pq.read_schema(path).names if parquet else list(pd.read_csv(path, sep=sep, nrows=0).columns)
        for name, column in mapping.items():
            if column is not None and column not in present:
                raise DataError(
                    str(path),
                    f"no such column (data.{key}.{name})",
                    column=column,
                    hint=f"Columns present: {', '.join(printable(c) for c in present[:50])}",
                )
        columns = None if all_columns else list(dict.fromkeys(c for c in mapping.values() if c is not None))
        if parquet:
            _check_flat(pq.read_schema(path), mapping, path, key)
            return pd.read_parquet(path, columns=columns)
        text_columns = {c: str for c in text if c is not None}
        return pd.read_csv(path, sep=sep, usecols=columns, dtype=text_columns, **na)


def _check_flat(schema: pa.Schema, mapping: Mapping[str, str | None], path: Path, key: str) -> None:
    """Mapped Parquet columns hold single values (genres may be lists), not lists, structs or maps."""
    for name, column in mapping.items():
        if column is not None and name != "genres" and pa.types.is_nested(schema.field(column).type):
            raise DataError(
                str(path),
                f"{schema.field(column).type} values where single values are expected (data.{key}.{name})",
                column=column,
            )


def load_files(cfg: DictConfig) -> RawData:
    """``data.source=files``: interactions, optional items and users from the configured files."""
    sep = cfg.get("sep") or ","
    cols = cfg.columns
    if not cols.get("user") or not cols.get("item"):
        raise RecpipeError("data.columns.user and data.columns.item must name the id columns")
    na_values = cfg.get("na_values")
    df = read_table(cfg.interactions, cols, key="columns", sep=sep, text=(cols.user, cols.item), na_values=na_values)
    if df.empty:
        raise DataError(str(cfg.interactions), "no interactions (the file has a header but no rows)", n_rows=0)
    interactions = interactions_frame(
        df[cols.user],
        df[cols.item],
        df[cols.rating] if cols.get("rating") else None,
        df[cols.timestamp] if cols.get("timestamp") else None,
        file=str(cfg.interactions),
    )
    items = read_items(cfg, sep) if cfg.get("items") else items_from_interactions(interactions["item_id"])
    users = read_users(cfg, sep) if cfg.get("users") else None
    tables = {k: str(cfg[k]) for k in ("items", "users") if cfg.get(k)}
    source = {
        "source": "files",
        "path": str(cfg.interactions),
        **tables,
        "sha256": {p: sha256_file(p) for p in (str(cfg.interactions), *tables.values())},
    }
    return RawData(interactions=interactions, items=items, users=users, source=source)


def read_items(cfg: DictConfig, sep: str) -> pd.DataFrame:
    """The item table ``data.items`` mapped by ``data.item_columns`` (title, year, genres optional)."""
    ic = cfg.item_columns
    t = read_table(
        cfg["items"],
        ic,
        key="item_columns",
        sep=sep,
        text=(ic.item, ic.get("title"), ic.get("genres")),
        na_values=cfg.get("na_values"),
    )
    n = len(t)
    return items_frame(
        t[ic.item],
        t[ic.title] if ic.get("title") else id_strings(t[ic.item]),
        t[ic.year] if ic.get("year") else pd.Series([None] * n, dtype=object),
        split_genres(t[ic.genres], cfg.get("genres_sep")) if ic.get("genres") else pd.Series([[]] * n, dtype=object),
    )


def read_users(cfg: DictConfig, sep: str) -> pd.DataFrame:
    """The user table ``data.users``: its id column (``data.user_columns.user``) as ``user_id``, then the rest."""
    col = cfg.user_columns.user
    u = read_table(
        cfg.users,
        {"user": col},
        key="user_columns",
        sep=sep,
        text=(col,),
        all_columns=True,
        na_values=cfg.get("na_values"),
    )
    others = u.drop(columns=[c for c in (col, "user_id") if c in u.columns]).reset_index(drop=True)
    return pd.concat([pd.DataFrame({"user_id": id_strings(u[col]).array}), others], axis=1)
