"""The files source (data=files): the user's own CSV or Parquet with a column mapping."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recpipe.data.files import load_files
from recpipe.data.raw import write_raw
from recpipe.errors import DataError

COLUMNS = {"user": "customer", "item": "product", "rating": "stars", "timestamp": "when"}


def files_cfg(interactions, **kw):
    base = {
        "source": "files",
        "interactions": str(interactions),
        "columns": COLUMNS,
        "items": None,
        "item_columns": {"item": "item_id", "title": "title", "year": "year", "genres": "genres"},
        "genres_sep": "|",
        "users": None,
        "user_columns": {"user": "user_id"},
        "sep": ",",
    }
    cfg = OmegaConf.create(base)
    return OmegaConf.merge(cfg, OmegaConf.create(kw))


def test_csv_with_mapping_and_no_item_table(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("customer,product,stars,when,extra\n42,007,4,100,x\n7,12,3.5,200,y\n42,12,5,,z\n")
    raw = load_files(files_cfg(path))
    inter = raw.interactions
    assert inter["user_id"].tolist() == ["42", "7", "42"]
    assert inter["item_id"].tolist() == ["007", "12", "12"]  # text ids keep their spelling
    assert inter["rating"].dtype == np.float32 and inter["rating"].tolist() == [4.0, 3.5, 5.0]
    assert inter["timestamp"].tolist()[:2] == [100, 200] and pd.isna(inter["timestamp"].iloc[2])
    # no item table: one row per item, titled by its id
    assert raw.items["item_id"].tolist() == ["007", "12"]
    assert raw.items["title"].tolist() == ["007", "12"]
    assert raw.items["year"].isna().all() and raw.items["genres"].map(len).tolist() == [0, 0]
    assert raw.source["path"] == str(path) and list(raw.source["sha256"]) == [str(path)]
    write_raw(raw, tmp_path / "raw")
    assert pd.read_parquet(tmp_path / "raw" / "items.parquet")["item_id"].tolist() == ["007", "12"]


def test_parquet_numeric_ids_become_strings_without_decimals(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "customer": [42.0, np.nan, 3.0],  # floats because of the missing value
            "product": np.array([1, 2, 3], dtype=np.int64),
            "stars": [1, 2, 3],
            "when": pd.to_datetime(["1970-01-01 00:01:40", "2001-09-09 01:46:40", None]),
        }
    ).to_parquet(path)
    raw = load_files(files_cfg(path))
    inter = raw.interactions
    assert inter["user_id"].iloc[0] == "42" and inter["user_id"].iloc[2] == "3"
    assert pd.isna(inter["user_id"].iloc[1])  # kept null for preprocess to report
    assert inter["item_id"].tolist() == ["1", "2", "3"]
    assert inter["timestamp"].tolist()[:2] == [100, 1_000_000_000]


def test_text_ratings_are_kept_as_read_in_row_order(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("customer,product,stars,when\n1,1,4,1\n1,2,five,2\n2,1,3,3\n")
    inter = load_files(files_cfg(path)).interactions
    assert inter["rating"].tolist() == ["4", "five", "3"]
    write_raw(load_files(files_cfg(path)), tmp_path / "raw")
    back = pd.read_parquet(tmp_path / "raw" / "interactions.parquet")
    assert back["rating"].tolist() == ["4", "five", "3"]


def test_implicit_data_without_rating_or_timestamp(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("customer\tproduct\n1\ta\n2\tb\n")
    inter = load_files(files_cfg(path, columns={"rating": None, "timestamp": None})).interactions
    assert inter["rating"].isna().all() and inter["rating"].dtype == np.float32
    assert inter["timestamp"].isna().all()


def test_date_strings_become_seconds_and_bad_ones_name_the_row(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("customer,product,stars,when\n1,1,4,2001-09-09T01:46:40Z\n1,2,4,yesterday\n")
    with pytest.raises(DataError) as err:
        load_files(files_cfg(path))
    assert (err.value.column, err.value.row, err.value.example) == ("when", 1, {"when": "yesterday"})
    path.write_text("customer,product,stars,when\n1,1,4,2001-09-09T01:46:40Z\n")
    assert load_files(files_cfg(path)).interactions["timestamp"].tolist() == [1_000_000_000]


def test_missing_mapped_column_names_file_column_and_present_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating\n1,1,4\n")
    with pytest.raises(DataError) as err:
        load_files(files_cfg(path))
    message = str(err.value)
    assert str(path) in message and "'customer'" in message and "data.columns.user" in message
    assert "Columns present: user, item, rating" in message


def test_item_and_user_tables(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("customer,product,stars,when\n1,10,4,1\n2,20,3,2\n")
    items = tmp_path / "items.parquet"
    pd.DataFrame(
        {"id": [10, 20], "name": ["Alpha", "Beta"], "released": [1999.0, np.nan], "tags": ["Drama|Comedy", None]}
    ).to_parquet(items)
    users = tmp_path / "users.csv"
    users.write_text("uid,age,country\n1,30,NO\n2,41,SE\n")
    cfg = files_cfg(
        log,
        items=str(items),
        users=str(users),
        item_columns={"item": "id", "title": "name", "year": "released", "genres": "tags"},
        user_columns={"user": "uid"},
    )
    raw = load_files(cfg)
    assert raw.items["item_id"].tolist() == ["10", "20"]
    assert raw.items["title"].tolist() == ["Alpha", "Beta"]
    assert raw.items["year"].tolist()[0] == 1999 and pd.isna(raw.items["year"].iloc[1])
    assert [list(g) for g in raw.items["genres"]] == [["Drama", "Comedy"], []]
    assert list(raw.users.columns) == ["user_id", "age", "country"]
    assert raw.users["user_id"].tolist() == ["1", "2"]
    assert sorted(raw.source["sha256"]) == sorted([str(log), str(items), str(users)])
    write_raw(raw, tmp_path / "raw")
    assert pd.read_parquet(tmp_path / "raw" / "users.parquet")["country"].tolist() == ["NO", "SE"]

    cfg.item_columns.year = "year_missing"
    with pytest.raises(DataError, match=r"data\.item_columns\.year"):
        load_files(cfg)
