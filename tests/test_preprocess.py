"""Duplicates, filters, vocabularies, and the preprocess stage end to end on small hand-made data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import DictConfig, OmegaConf

from recpipe.data.preprocess import build_vocabulary, deduplicate, filter_interactions, sorted_ids
from recpipe.data.processed import load_processed
from recpipe.errors import DataError, RecpipeError
from recpipe.paths import Paths
from recpipe.stages.preprocess import run

from .helpers import PROCESSED_FILES

REPO = Path(__file__).resolve().parents[1]


def random_interactions(seed: int, *, implicit: bool = False) -> pd.DataFrame:
    """Small interactions with many repeated pairs, tied and null timestamps."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 150))
    ts = pd.array(rng.integers(0, 6, n), dtype="Int64")
    ts[rng.random(n) < 0.2] = pd.NA
    return pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, 5, n).astype(str), dtype="str").astype("category"),
            "item_id": pd.Series(rng.integers(0, 8, n).astype(str), dtype="str"),
            "rating": np.full(n, np.nan, np.float32) if implicit else rng.integers(1, 6, n).astype(np.float32),
            "timestamp": ts,
        }
    )


def reference_deduplicate(df: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Row by row: remember each pair's chosen row (and for mean, the aggregate)."""
    chosen: dict[tuple[str, str], int] = {}
    ratings: dict[tuple[str, str], list[float]] = {}
    for pos, (u, i, t) in enumerate(zip(df["user_id"], df["item_id"], df["timestamp"])):
        key = (str(u), str(i))
        ratings.setdefault(key, []).append(float(df["rating"].iloc[pos]))
        t = -1 if pd.isna(t) else int(t)
        if key not in chosen:
            chosen[key] = pos
            continue
        best = df["timestamp"].iloc[chosen[key]]
        best = -1 if pd.isna(best) else int(best)
        if (policy == "latest" and t >= best) or (policy == "first" and t < best):
            chosen[key] = pos
    out = df.iloc[sorted(chosen.values())].copy()
    if policy == "mean":
        for label, (u, i) in zip(out.index, zip(out["user_id"], out["item_id"])):
            rows = df[(df["user_id"] == u) & (df["item_id"] == i)]
            out.loc[label, "rating"] = np.float32(np.mean(ratings[(str(u), str(i))]))
            out.loc[label, "timestamp"] = rows["timestamp"].max()
    return out


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("policy", ["latest", "first", "mean"])
def test_deduplicate_matches_reference(seed: int, policy: str) -> None:
    df = random_interactions(seed, implicit=policy == "mean" and seed % 2 == 1)
    out, dropped = deduplicate(df, policy)
    expected = reference_deduplicate(df, policy)
    pd.testing.assert_frame_equal(out, expected)
    assert dropped == len(df) - len(out)
    assert not out.duplicated(["user_id", "item_id"]).any()


def test_deduplicate_policies_by_hand() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["a", "a", "a", "b", "a"],
            "item_id": ["x", "x", "y", "x", "x"],
            "rating": np.array([1, 2, 5, 4, 3], np.float32),
            "timestamp": pd.array([20, 30, 10, None, 30], dtype="Int64"),
        }
    )
    latest, n = deduplicate(df, "latest")
    assert n == 2 and latest["rating"].tolist() == [5, 4, 3]  # tie at 30: the later row
    first, _ = deduplicate(df, "first")
    assert first["rating"].tolist() == [1, 5, 4]
    mean, _ = deduplicate(df, "mean")
    assert mean.index.tolist() == [0, 2, 3] and mean["rating"].tolist() == [2, 5, 4]
    assert mean["timestamp"].tolist()[:2] == [30, 10] and mean["rating"].dtype == np.float32
    same, n = deduplicate(df.iloc[[0, 2, 3]], "error")  # no duplicates: no error, nothing dropped
    assert n == 0 and len(same) == 3
    with pytest.raises(DataError) as info:
        deduplicate(df, "error", file="data/raw/interactions.parquet")
    e = info.value
    assert (e.file, e.column, e.n_rows, e.row) == ("data/raw/interactions.parquet", "user_id, item_id", 2, 1)
    assert e.example == {"user_id": "a", "item_id": "x", "rating": 2.0, "timestamp": 30}
    assert "preprocess.duplicates" in str(e)
    with pytest.raises(RecpipeError, match="must be one of latest, first, mean, error, got 'last'"):
        deduplicate(df, "last")


def reference_kcore(df: pd.DataFrame, min_user: int, min_item: int) -> tuple[list[int], int, int]:
    rows = list(range(len(df)))
    by_user = by_item = 0
    while True:
        users = [df["user_id"].iloc[r] for r in rows]
        low = [r for r in rows if users.count(df["user_id"].iloc[r]) < min_user]
        by_user += len(low)
        rows = [r for r in rows if r not in low]
        items = [df["item_id"].iloc[r] for r in rows]
        low_items = [r for r in rows if items.count(df["item_id"].iloc[r]) < min_item]
        by_item += len(low_items)
        rows = [r for r in rows if r not in low_items]
        if not low and not low_items:
            return rows, by_user, by_item


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize(("min_user", "min_item"), [(1, 1), (3, 2), (8, 12), (20, 1)])
def test_kcore_matches_reference(seed: int, min_user: int, min_item: int) -> None:
    df = random_interactions(seed)
    out, dropped = filter_interactions(df, min_user_interactions=min_user, min_item_interactions=min_item)
    rows, by_user, by_item = reference_kcore(df, min_user, min_item)
    pd.testing.assert_frame_equal(out, df.iloc[rows])
    assert dropped == {"min_rating": 0, "min_user_interactions": by_user, "min_item_interactions": by_item}
    if len(out):
        assert out["user_id"].value_counts().loc[lambda c: c > 0].min() >= min_user
        assert out["item_id"].value_counts().min() >= min_item


def test_min_rating_keeps_positives_first() -> None:
    df = random_interactions(3)
    out, dropped = filter_interactions(df, min_rating=4)
    assert (out["rating"] >= 4).all() and dropped["min_rating"] == int((df["rating"] < 4).sum())
    with pytest.raises(RecpipeError, match="min_rating is set but the interactions have no ratings"):
        filter_interactions(random_interactions(3, implicit=True), min_rating=4)


def test_sorted_ids_numeric_when_all_digits_else_text() -> None:
    assert sorted_ids(pd.Series(["10", "9", "010", "100", "9"])).tolist() == ["9", "010", "10", "100"]
    assert sorted_ids(pd.Series(["b10", "a", "9", "b9"], dtype="category")).tolist() == ["9", "a", "b10", "b9"]


def test_build_vocabulary_carries_features_and_fills_missing_items() -> None:
    items = pa.table(
        {
            "item_id": ["b", "a", "z"],
            "title": ["B", "A", "Z"],
            "year": pa.array([None, 1999, 2000], pa.int32()),
            "genres": pa.array([["Drama"], [], ["X"]], pa.list_(pa.string())),
        }
    )
    vocab = build_vocabulary(np.array(["a", "b", "c"], object), items, "item_id")
    assert vocab.schema == pa.schema(
        [
            ("item_id", pa.string()),
            ("index", pa.int32()),
            ("title", pa.string()),
            ("year", pa.int32()),
            ("genres", pa.list_(pa.string())),
        ]
    )
    assert vocab.to_pylist() == [
        {"item_id": "a", "index": 0, "title": "A", "year": 1999, "genres": []},
        {"item_id": "b", "index": 1, "title": "B", "year": None, "genres": ["Drama"]},
        {"item_id": "c", "index": 2, "title": "c", "year": None, "genres": []},
    ]
    assert build_vocabulary(np.array(["u2", "u1"], object), None, "user_id").to_pylist() == [
        {"user_id": "u2", "index": 0},
        {"user_id": "u1", "index": 1},
    ]


# ---------------------------------------------------------------- the stage, end to end

SMALL = pd.DataFrame(
    [  # user, item, rating, timestamp
        ("1", "10", 4, 100),
        ("1", "11", 5, 200),
        ("1", "9", 3, 300),
        ("2", "10", 4, 110),
        ("2", "11", 2, 210),
        ("2", "11", 3, 250),
        ("2", "9", 5, 310),
        ("3", "10", 1, 120),
        ("3", "13", 5, 130),
        ("4", "10", 5, 140),
        ("3", "11", 4, 220),
    ],
    columns=["user_id", "item_id", "rating", "timestamp"],
).astype({"rating": "float32", "timestamp": "int64"})


def make_raw(root: Path, interactions: pd.DataFrame = SMALL, *, users: bool = True) -> None:
    raw = Paths(root).raw
    raw.mkdir(parents=True, exist_ok=True)
    interactions.to_parquet(raw / "interactions.parquet", index=False)
    pq.write_table(
        pa.table(
            {
                "item_id": ["10", "11", "13", "99"],
                "title": ["Ten", "Eleven", "Thirteen", "Unused"],
                "year": pa.array([1990, None, 2001, 2002], pa.int32()),
                "genres": pa.array([["Drama"], [], ["Comedy"], []], pa.list_(pa.string())),
            }
        ),
        raw / "items.parquet",
    )
    if users:
        pd.DataFrame({"user_id": ["1", "2", "4"], "age": [30, 40, 50]}).to_parquet(raw / "users.parquet", index=False)


def config(split: dict | None = None, **preprocess) -> DictConfig:
    return OmegaConf.create(
        {
            "data": {"rating_scale": [1, 5]},
            "preprocess": {
                "duplicates": "latest",
                "min_user_interactions": 2,
                "min_item_interactions": 2,
                "min_rating": None,
                **preprocess,
            },
            "split": split or {"name": "leave_last", "n_val": 1, "n_test": 1},
        }
    )


def test_stage_writes_the_contract_outputs_and_exact_stats(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="recpipe")
    make_raw(tmp_path)
    run(config(), Paths(tmp_path))
    out = Paths(tmp_path).processed
    assert sorted(p.name for p in out.iterdir()) == PROCESSED_FILES
    interactions_schema = pa.schema(
        [("user_id", pa.string()), ("item_id", pa.string()), ("rating", pa.float32()), ("timestamp", pa.int64())]
    )
    for name in ("train", "val", "test"):
        assert pq.read_schema(out / f"{name}.parquet") == interactions_schema
    assert pq.read_schema(out / "items.parquet") == pa.schema(
        [
            ("item_id", pa.string()),
            ("index", pa.int32()),
            ("title", pa.string()),
            ("year", pa.int32()),
            ("genres", pa.list_(pa.string())),
        ]
    )
    assert pq.read_schema(out / "users.parquet") == pa.schema(
        [("user_id", pa.string()), ("index", pa.int32()), ("age", pa.int64())]
    )

    # dedup (2,11) keeps ts 250; user 4 (1 interaction) then item 13 (1 interaction) drop out;
    # leave_last: users 1 and 2 give their last two to test and val, user 3 has only 2 and stays in train
    def rows(name: str) -> list[tuple]:
        return [tuple(r) for r in pd.read_parquet(out / f"{name}.parquet").itertuples(index=False)]

    assert rows("train") == [("1", "10", 4, 100), ("2", "10", 4, 110), ("3", "10", 1, 120), ("3", "11", 4, 220)]
    assert rows("val") == [("1", "11", 5, 200), ("2", "11", 3, 250)]
    assert rows("test") == [("1", "9", 3, 300), ("2", "9", 5, 310)]
    items = pd.read_parquet(out / "items.parquet")
    assert items["item_id"].tolist() == ["9", "10", "11"] and items["index"].tolist() == [0, 1, 2]
    assert items["title"].tolist() == ["9", "Ten", "Eleven"]  # item 9 is not in the item table
    assert [list(g) for g in items["genres"]] == [[], ["Drama"], []]
    users = pd.read_parquet(out / "users.parquet")
    assert users["user_id"].tolist() == ["1", "2", "3"] and users["age"].tolist()[:2] == [30, 40]
    assert pd.isna(users["age"].iloc[2])

    stats = json.loads((out / "stats.json").read_text())
    assert stats == {
        "raw": {"users": 4, "items": 4, "interactions": 11},
        "filtered": {
            "users": 3,
            "items": 3,
            "interactions": 8,
            "items_not_in_item_table": 1,
            "users_not_in_user_table": 1,
        },
        "splits": {
            "train": {"users": 3, "items": 2, "interactions": 4},
            "val": {"users": 2, "items": 1, "interactions": 2, "cold_users": 0, "cold_items": 0},
            "test": {"users": 2, "items": 1, "interactions": 2, "cold_users": 0, "cold_items": 1},
        },
        "dropped": {"duplicates": 1, "min_rating": 0, "min_user_interactions": 1, "min_item_interactions": 1},
    }
    printed = caplog.text
    assert "kept:     8 interactions, 3 users, 3 items" in printed
    assert "the item table lacks 1 of these items" in printed

    processed = load_processed(out)  # what train/evaluate read
    assert processed.n_users == 3 and processed.n_items == 3
    assert processed.test["item_idx"].tolist() == [0, 0]


def test_stage_without_user_table_and_with_random_split_counts_cold_users(tmp_path: Path) -> None:
    make_raw(tmp_path, users=False)
    run(
        config(
            {"name": "random", "ratios": [0.5, 0.25, 0.25], "seed": 0}, min_user_interactions=0, min_item_interactions=0
        ),
        Paths(tmp_path),
    )
    out = Paths(tmp_path).processed
    assert pd.read_parquet(out / "users.parquet").columns.tolist() == ["user_id", "index"]
    processed = load_processed(out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["filtered"]["users_not_in_user_table"] is None
    train_users = set(processed.train["user_id"])
    for name in ("val", "test"):
        split = processed.split(name)
        assert stats["splits"][name]["cold_users"] == len(set(split["user_id"]) - train_users)
        assert stats["splits"][name]["cold_items"] == len(set(split["item_id"]) - set(processed.train["item_id"]))
        assert stats["splits"][name]["interactions"] == len(split) == 3
    assert sum(stats["splits"][s]["cold_users"] for s in ("val", "test")) > 0  # user 4 has one interaction
    assert processed.users["index"].tolist() == list(range(processed.n_users))
    for df in (processed.train, processed.val, processed.test):
        assert (df["user_idx"] >= 0).all() and (df["item_idx"] >= 0).all()


def test_split_id_missing_from_the_vocabulary_is_a_data_error(tmp_path: Path) -> None:
    make_raw(tmp_path)
    run(config(), Paths(tmp_path))
    test_file = Paths(tmp_path).processed / "test.parquet"
    table = pq.read_table(test_file)
    ids = table.column("item_id").to_pylist()
    ids[-1] = "no-such-item"
    pq.write_table(table.set_column(1, "item_id", pa.array(ids, pa.string())), test_file)
    with pytest.raises(DataError) as info:
        load_processed(Paths(tmp_path).processed)
    e = info.value
    assert (e.file, e.column, e.n_rows, e.row) == (str(test_file), "item_id", 1, len(ids) - 1)
    assert e.example == {"item_id": "no-such-item"} and "items.parquet" in str(e)


def test_text_rating_fails_before_writing_and_keeps_previous_outputs(tmp_path: Path) -> None:
    make_raw(tmp_path)
    run(config(), Paths(tmp_path))
    out = Paths(tmp_path).processed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = SMALL.astype({"rating": "str"})
    bad.loc[4, "rating"] = "abc"
    make_raw(tmp_path, bad)
    with pytest.raises(DataError) as info:
        run(config(), Paths(tmp_path))
    e = info.value
    assert (e.file, e.column, e.n_rows, e.row) == (str(Paths(tmp_path).raw / "interactions.parquet"), "rating", 1, 4)
    assert e.example["rating"] == "abc"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["processed", "raw"]  # no temporary left behind


def test_time_split_without_timestamps_names_the_rows(tmp_path: Path) -> None:
    no_time = SMALL.astype({"timestamp": "float64"})
    no_time.loc[2, "timestamp"] = None
    make_raw(tmp_path, no_time)
    with pytest.raises(
        DataError,
        match=r"column 'timestamp': missing timestamp \(1 row\); first at row 2.*"
        r"split=temporal orders interactions by time",
    ):
        run(
            config({"name": "temporal", "val_start": None, "test_start": None, "ratios": [0.8, 0.1, 0.1]}),
            Paths(tmp_path),
        )
    assert not Paths(tmp_path).processed.exists()


@pytest.mark.parametrize(
    ("preprocess", "message"),
    [
        ({"min_user_interactions": 50}, "no interactions left after the filters"),
        ({"min_item_interactions": -1}, "preprocess.min_item_interactions must be an integer >= 0"),
        ({"duplicates": "error"}, "repeated \\(user_id, item_id\\) pair"),
    ],
)
def test_config_problems_are_clear_errors(tmp_path: Path, preprocess: dict, message: str) -> None:
    make_raw(tmp_path)
    with pytest.raises(RecpipeError, match=message):
        run(config(**preprocess), Paths(tmp_path))


def test_conf_defaults_run(tmp_path: Path) -> None:
    """The preprocess section of conf/config.yaml and every conf/split/*.yaml drive the stage."""
    make_raw(tmp_path)
    preprocess = OmegaConf.load(REPO / "conf" / "config.yaml").preprocess
    for split in sorted((REPO / "conf" / "split").glob("*.yaml")):
        cfg = OmegaConf.create(
            {"data": {"rating_scale": [1, 5]}, "preprocess": preprocess, "split": OmegaConf.load(split)}
        )
        run(cfg, Paths(tmp_path))
        stats = json.loads((Paths(tmp_path).processed / "stats.json").read_text())
        assert sum(stats["splits"][s]["interactions"] for s in ("train", "val", "test")) == 10
