"""Validation of data/raw: each problem is a DataError naming file, column, row count and first row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recpipe.data.raw import read_raw
from recpipe.data.validate import validate_interactions, validate_table
from recpipe.errors import DataError, RecpipeError

FILE = "data/raw/interactions.parquet"


def interactions(**columns) -> pd.DataFrame:
    """Five valid interactions; keyword arguments replace whole columns."""
    base = {
        "user_id": ["1", "1", "2", "3", "3"],
        "item_id": ["10", "11", "10", "12", "10"],
        "rating": np.array([4, 5, 3, 1, 2], dtype=np.float32),
        "timestamp": np.array([100, 200, 150, 120, 130], dtype=np.int64),
    }
    return pd.DataFrame({**base, **columns})


def items_table(**columns) -> pa.Table:
    base = {
        "item_id": ["10", "11", "12"],
        "title": ["A", "B", "C"],
        "year": pa.array([1990, None, 2001], pa.int32()),
        "genres": pa.array([["Drama"], [], ["Comedy", "Drama"]], pa.list_(pa.string())),
    }
    return pa.table({**base, **columns})


def test_valid_interactions_get_contract_dtypes() -> None:
    df = interactions(rating=["4", "5", " 3", "1.5", "2"], timestamp=[100.0, None, 150.0, 120.0, 130.0])
    before = df.copy()
    out = validate_interactions(df, FILE, rating_scale=[1, 5])
    pd.testing.assert_frame_equal(df, before)  # input untouched
    assert list(out.columns) == ["user_id", "item_id", "rating", "timestamp"]
    assert isinstance(out["user_id"].dtype, pd.CategoricalDtype)
    assert list(out["user_id"].astype(str)) == ["1", "1", "2", "3", "3"]
    assert out["rating"].dtype == np.float32 and out["rating"].tolist() == [4, 5, 3, 1.5, 2]
    assert out["timestamp"].dtype == "Int64" and out["timestamp"].isna().tolist() == [False, True, False, False, False]
    assert list(out.index) == [0, 1, 2, 3, 4]


def test_implicit_feedback_has_all_null_ratings() -> None:
    out = validate_interactions(interactions(rating=[None] * 5), FILE, rating_scale=None)
    assert out["rating"].dtype == np.float32 and out["rating"].isna().all()


def test_integer_ids_become_strings() -> None:
    out = validate_interactions(interactions(user_id=[1, 1, 2, 3, 3]), FILE)
    assert list(out["user_id"].astype(str)) == ["1", "1", "2", "3", "3"]


@pytest.mark.parametrize(
    ("columns", "kwargs", "column", "problem", "n_rows", "row", "example"),
    [
        (
            {"user_id": ["1", None, "2", None, "3"]},
            {},
            "user_id",
            "missing id (null or empty)",
            2,
            1,
            {"user_id": None, "item_id": "11"},
        ),
        (
            {"item_id": ["10", "11", "10", " ", "10"]},
            {},
            "item_id",
            "missing id (null or empty)",
            1,
            3,
            {"item_id": " "},
        ),
        (
            {"rating": ["4", "5", "3", "abc", "x"]},
            {},
            "rating",
            "not a number",
            2,
            3,
            {"rating": "abc", "user_id": "3"},
        ),
        ({"rating": [4.0, None, 3.0, 1.0, 2.0]}, {}, "rating", "missing rating", 1, 1, {"rating": None}),
        ({"rating": [4.0, 5.0, np.inf, 1.0, 2.0]}, {}, "rating", "not a finite number", 1, 2, {}),
        (
            {"rating": [4.0, 5.0, 3.0, 0.0, 7.0]},
            {"rating_scale": [1, 5]},
            "rating",
            "rating outside data.rating_scale [1, 5]",
            2,
            3,
            {"rating": 0.0},
        ),
        ({"timestamp": [100, 200, -5, 120, 130]}, {}, "timestamp", "negative timestamp", 1, 2, {"timestamp": -5}),
        (
            {"timestamp": [100.0, 200.5, 150.0, 120.0, 130.0]},
            {},
            "timestamp",
            "not an integer number of seconds",
            1,
            1,
            {"timestamp": 200.5},
        ),
        (
            {"timestamp": ["100", "200", "yesterday", "120", "130"]},
            {},
            "timestamp",
            "not an integer number of seconds",
            1,
            2,
            {"timestamp": "yesterday"},
        ),
        (
            {"timestamp": [100, None, 150, None, 130]},
            {"require_timestamps": "split=temporal"},
            "timestamp",
            "missing timestamp",
            2,
            1,
            {},
        ),
    ],
)
def test_each_problem_names_file_column_rows_and_first_row(
    columns: dict, kwargs: dict, column: str, problem: str, n_rows: int, row: int, example: dict
) -> None:
    with pytest.raises(DataError) as info:
        validate_interactions(interactions(**columns), FILE, **kwargs)
    e = info.value
    assert (e.file, e.column, e.n_rows, e.row) == (FILE, column, n_rows, row)
    assert problem in e.problem
    assert example.items() <= e.example.items()
    message = str(e)
    assert message.startswith(f"{FILE}, column '{column}': ")
    assert f"first at row {row}" in message and f"({n_rows} row" in message


def test_scale_and_time_hints() -> None:
    with pytest.raises(DataError, match=r"data.rating_scale=\[0,10\]"):
        validate_interactions(interactions(rating=np.full(5, 9, np.float32)), FILE, rating_scale=[1, 5])
    with pytest.raises(DataError, match="split=leave_last orders interactions by time"):
        validate_interactions(interactions(timestamp=[None] * 5), FILE, require_timestamps="split=leave_last")
    # without a reason, null timestamps are fine; without a scale, any finite rating is
    validate_interactions(interactions(timestamp=[None] * 5, rating=np.full(5, 9, np.float32)), FILE)


def test_missing_columns_and_empty_input() -> None:
    with pytest.raises(DataError) as info:
        validate_interactions(interactions().drop(columns=["rating", "timestamp"]), FILE)
    assert info.value.column == "rating, timestamp"
    assert "missing columns (has: user_id, item_id)" in str(info.value)
    with pytest.raises(DataError, match=f"^{FILE}: no interactions \\(0 rows\\)"):
        validate_interactions(interactions().iloc[:0], FILE)


def test_item_table_problems() -> None:
    out = validate_table(items_table(item_id=pa.array([10, 11, 12])), "items.parquet", ["item_id", "title"])
    assert out.column("item_id").to_pylist() == ["10", "11", "12"] and out.schema.field("item_id").type == pa.string()
    assert out.schema.field("year").type == pa.int32()
    cases = [
        (items_table(item_id=["10", "11", "10"]), "item_id", "repeated id", 2, {"item_id": "10", "title": "C"}),
        (items_table(item_id=["10", None, "12"]), "item_id", "missing id", 1, {"title": "B"}),
    ]
    for table, column, problem, row, example in cases:
        with pytest.raises(DataError) as info:
            validate_table(table, "items.parquet", ["item_id", "title"])
        assert (info.value.column, info.value.row) == (column, row) and problem in str(info.value)
        assert example.items() <= info.value.example.items()
    with pytest.raises(DataError, match="column 'title': missing column"):
        validate_table(items_table().drop_columns(["title"]), "items.parquet", ["item_id", "title"])
    with pytest.raises(DataError, match="column 'index': the column name 'index' is reserved"):
        validate_table(pa.table({"user_id": ["1"], "index": [0]}), "users.parquet", ["user_id"])


def write_raw(raw: Path, df: pd.DataFrame, items: pa.Table, users: pd.DataFrame | None = None) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    df.to_parquet(raw / "interactions.parquet", index=False)
    pq.write_table(items, raw / "items.parquet")
    if users is not None:
        users.to_parquet(raw / "users.parquet", index=False)


def test_read_raw_reads_validates_and_names_files(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "raw"
    write_raw(raw, interactions(), items_table(), pd.DataFrame({"user_id": ["1", "2"], "age": [30, 40]}))
    tables = read_raw(raw, rating_scale=[1, 5])
    assert tables.files["interactions"] == str(raw / "interactions.parquet")
    assert len(tables.interactions) == 5 and tables.items.num_rows == 3
    assert tables.users.column_names == ["user_id", "age"]
    (raw / "users.parquet").unlink()
    assert read_raw(raw).users is None


def test_read_raw_mentions_the_source_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw(raw, interactions(rating=["4", "5", "3", "abc", "2"]), items_table())
    (raw / "source.json").write_text(json.dumps({"source": "files", "path": "data/my_interactions.csv"}))
    with pytest.raises(DataError) as info:
        read_raw(raw)
    assert info.value.file == str(raw / "interactions.parquet")
    assert str(info.value).endswith("Ingested from data/my_interactions.csv")


def test_read_raw_missing_or_unreadable_files(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    with pytest.raises(RecpipeError, match="interactions.parquet: not found; run `recpipe ingest`"):
        read_raw(raw)
    write_raw(raw, interactions(), items_table())
    (raw / "items.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="items.parquet: not a readable Parquet file"):
        read_raw(raw)
