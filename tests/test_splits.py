"""Splits against slow, obvious reference implementations on random cases, plus their error cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recpipe.data.splits import make_splits, split_leave_last, split_random, split_temporal
from recpipe.errors import RecpipeError

from .helpers import CONF, labels_of, random_interactions


def reference_temporal(df: pd.DataFrame, val_start: int, test_start: int) -> dict[int, int]:
    return {i: 0 if t < val_start else 1 if t < test_start else 2 for i, t in zip(df.index, df["timestamp"])}


def reference_cut(df: pd.DataFrame, q: float) -> int:
    ts = sorted(int(t) for t in df["timestamp"])
    k = int(np.floor(q * len(ts) + 0.5))
    return ts[k] if k < len(ts) else ts[-1] + 1


def reference_leave_last(df: pd.DataFrame, n_val: int, n_test: int) -> dict[int, int]:
    out = {}
    for user in set(df["user_id"]):
        rows = [
            (int(t), pos, i) for pos, (i, u, t) in enumerate(zip(df.index, df["user_id"], df["timestamp"])) if u == user
        ]
        rows.sort()
        for rank, (_, _, i) in enumerate(reversed(rows)):
            if len(rows) < n_val + n_test + 1:
                out[i] = 0
            elif rank < n_test:
                out[i] = 2
            elif rank < n_test + n_val:
                out[i] = 1
            else:
                out[i] = 0
    return out


@pytest.mark.parametrize("seed", range(12))
def test_random_split_sizes_coverage_and_determinism(seed: int) -> None:
    df = random_interactions(seed)
    ratios = [0.7, 0.2, 0.1] if seed % 2 else [0.8, 0.1, 0.1]
    splits = split_random(df, ratios, seed=seed)
    labels = labels_of(df, splits)
    n = len(df)
    assert len(splits[1]) == int(np.floor(ratios[1] * n + 0.5))
    assert len(splits[2]) == int(np.floor(ratios[2] * n + 0.5))
    assert len(splits[0]) == n - len(splits[1]) - len(splits[2])
    assert labels_of(df, split_random(df, ratios, seed=seed)) == labels  # same seed, same split
    # reference: walk the seeded permutation, filling train, then val, then test
    order = np.random.default_rng(seed).permutation(n)
    expected = {}
    for pos, row in enumerate(order):
        expected[df.index[row]] = 0 if pos < len(splits[0]) else 1 if pos < len(splits[0]) + len(splits[1]) else 2
    assert labels == expected


def test_random_split_seed_changes_split_and_ratios_hold_at_scale() -> None:
    df = random_interactions(0, n=10_000)
    a, b = labels_of(df, split_random(df, seed=1)), labels_of(df, split_random(df, seed=2))
    assert a != b
    assert [list(a.values()).count(k) for k in range(3)] == [8000, 1000, 1000]


@pytest.mark.parametrize("seed", range(12))
def test_temporal_split_with_cutoffs_matches_reference(seed: int) -> None:
    df = random_interactions(seed)
    rng = np.random.default_rng(seed)
    val_start, test_start = sorted(int(x) for x in rng.integers(-5, 45, 2))
    splits = split_temporal(df, val_start=val_start, test_start=test_start)
    assert labels_of(df, splits) == reference_temporal(df, val_start, test_start)


@pytest.mark.parametrize("seed", range(12))
def test_temporal_split_from_quantiles_matches_reference(seed: int) -> None:
    df = random_interactions(seed)
    ratios = [0.6, 0.25, 0.15]
    splits = split_temporal(df, ratios=ratios)
    val_start, test_start = reference_cut(df, 0.6), reference_cut(df, 0.85)
    assert labels_of(df, splits) == reference_temporal(df, val_start, test_start)
    train, val, test = (s["timestamp"] for s in splits)
    if len(train) and len(val):
        assert train.max() < val.min()
    if len(val) and len(test):
        assert val.max() < test.min()
    # one cut-off given, the other from its quantile
    given = split_temporal(df, val_start=None, test_start=test_start + 1, ratios=ratios)
    assert labels_of(df, given) == reference_temporal(df, val_start, test_start + 1)


def test_temporal_quantiles_give_the_ratios_without_ties() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["u"] * 1000,
            "item_id": [str(i) for i in range(1000)],
            "rating": np.ones(1000, np.float32),
            "timestamp": np.arange(1000)[::-1] * 7,
        }
    )
    train, val, test = split_temporal(df, ratios=[0.8, 0.1, 0.1])
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert train["timestamp"].max() < val["timestamp"].min() <= val["timestamp"].max() < test["timestamp"].min()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("n_val", "n_test"), [(1, 1), (0, 2), (2, 1)])
def test_leave_last_matches_reference(seed: int, n_val: int, n_test: int) -> None:
    df = random_interactions(seed)
    splits = split_leave_last(df, n_val=n_val, n_test=n_test)
    assert labels_of(df, splits) == reference_leave_last(df, n_val, n_test)
    train, val, test = splits
    for user, rows in test.groupby("user_id"):
        assert len(rows) == n_test
        earlier = pd.concat([train[train.user_id == user], val[val.user_id == user]])
        assert earlier["timestamp"].max() <= rows["timestamp"].min()


def test_leave_last_breaks_timestamp_ties_by_row_order() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["a"] * 4,
            "item_id": ["1", "2", "3", "4"],
            "rating": np.ones(4, np.float32),
            "timestamp": [5, 5, 5, 1],
        }
    )
    train, val, test = split_leave_last(df)
    assert list(train.item_id) == ["1", "4"] and list(val.item_id) == ["2"] and list(test.item_id) == ["3"]


@pytest.mark.parametrize("split", [split_temporal, split_leave_last])
def test_time_splits_need_timestamps(split) -> None:
    df = random_interactions(0, n=10)
    df["timestamp"] = pd.array([None] * 10, dtype="Int64")
    with pytest.raises(RecpipeError, match="needs a timestamp on every interaction; 10 have none"):
        split(df)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"name": "random", "ratios": [0.8, 0.3, 0.1]}, "summing to 1"),
        ({"name": "random", "ratios": [0.9, 0.1]}, "three non-negative"),
        ({"name": "random", "ratio": [0.8, 0.1, 0.1]}, "split=random: got an unexpected keyword argument 'ratio'"),
        ({"name": "temporal", "val_start": 30, "test_start": 10}, "val_start \\(30\\) is after test_start \\(10\\)"),
        ({"name": "leave_last", "n_test": -1}, "n_test must be an integer >= 0"),
        ({"name": "by_user"}, "unknown split 'by_user'; available: leave_last, random, temporal"),
    ],
)
def test_bad_split_config_is_a_clear_error(cfg: dict, message: str) -> None:
    with pytest.raises(RecpipeError, match=message):
        make_splits(random_interactions(1, n=20), cfg)


@pytest.mark.parametrize("name", ["random", "temporal", "leave_last"])
def test_conf_split_files_drive_make_splits(name: str) -> None:
    cfg = OmegaConf.load(CONF / "split" / f"{name}.yaml")
    assert cfg.name == name
    df = random_interactions(3, n=100)
    labels = labels_of(df, make_splits(df, cfg))
    assert set(labels.values()) == {0, 1, 2}
