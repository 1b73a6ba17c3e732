"""recpipe.tracking_dataset: a Parquet file's MLflow dataset from its footer equals the one MLflow
infers from the file's pandas frame (schema, required columns, profile)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.data.pandas_dataset import from_pandas

from recpipe.data.processed import _INTERACTIONS_SCHEMA
from recpipe.tracking_dataset import ParquetDataset


def _inferred(path) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # MLflow's hint on integer columns
        return from_pandas(pd.read_parquet(path), name="x", digest="d").to_dict()


@pytest.mark.parametrize("nulls", [False, True])
def test_schema_and_profile_equal_mlflow_inference(tmp_path, nulls: bool) -> None:
    n = 2500
    rating = np.full(n, np.nan, np.float32) if nulls else np.arange(n, dtype=np.float32) % 5 + 1
    timestamp = pa.array(np.arange(n), mask=(np.arange(n) == n - 1) if nulls else None, type=pa.int64())
    table = pa.table(
        {
            "user_id": pa.array([str(i % 7) for i in range(n)]),
            "item_id": pa.array([str(i % 11) for i in range(n)]),
            "rating": pa.array(rating, from_pandas=True),
            "timestamp": timestamp,
        },
        schema=_INTERACTIONS_SCHEMA,
    )
    path = tmp_path / "split.parquet"
    pq.write_table(table, path, row_group_size=1000)  # null counts summed over three row groups
    got = ParquetDataset(path, name="x", digest="d").to_dict()
    expected = _inferred(path)
    assert json.loads(got["profile"]) == json.loads(expected["profile"]) == {"num_rows": n, "num_elements": 4 * n}
    columns = json.loads(got["schema"])["mlflow_colspec"]
    assert {c["name"]: c["required"] for c in columns} == {
        "user_id": True,
        "item_id": True,
        "rating": not nulls,
        "timestamp": not nulls,
    }
    if nulls:  # pandas reads int64 with nulls as float64, so MLflow would say double
        assert [c["type"] for c in columns] == ["string", "string", "float", "long"]
    else:
        assert json.loads(got["schema"]) == json.loads(expected["schema"])


def test_null_counts_without_statistics(tmp_path) -> None:
    path = tmp_path / "nostats.parquet"
    pq.write_table(pa.table({"a": pa.array([1.0, None, 3.0])}), path, write_statistics=False)
    schema = json.loads(ParquetDataset(path, name="x", digest="d").to_dict()["schema"])
    assert schema == {"mlflow_colspec": [{"type": "double", "name": "a", "required": False}]}
