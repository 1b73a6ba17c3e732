"""The cold-item split: held-out items never reach train or val, all their rows go to test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from recpipe.data.splits import cold_item_rows, make_splits
from recpipe.errors import RecpipeError
from recpipe.evaluation.cold import cold_items_of

from .helpers import CONF, cold_processed, labels_of, random_interactions

SPLITS = {
    "random": {"name": "random", "ratios": [0.6, 0.2, 0.2], "seed": 1},
    "temporal": {"name": "temporal", "ratios": [0.6, 0.2, 0.2]},
    "leave_last": {"name": "leave_last", "n_val": 1, "n_test": 1},
}


@pytest.mark.parametrize("name", sorted(SPLITS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_items_only_in_test(name: str, seed: int) -> None:
    df = random_interactions(seed, n=200)
    train, val, test = make_splits(df, {**SPLITS[name], "cold_items": 0.25, "cold_seed": seed})
    labels_of(df, (train, val, test))  # disjoint, complete, rows unchanged, in df's order, df's index
    n_items = df["item_id"].nunique()
    cold = set(df.loc[cold_item_rows(df, 0.25, seed), "item_id"])
    assert len(cold) == int(np.floor(0.25 * n_items + 0.5))
    assert not cold & set(train["item_id"]) and not cold & set(val["item_id"])
    assert set(df.index[df["item_id"].isin(cold)]) <= set(test.index)  # every row of a cold item
    # the warm rows are split exactly as the splitter splits them alone
    warm = df[~df["item_id"].isin(cold)]
    for got, want in zip((train, val, test[~test["item_id"].isin(cold)]), make_splits(warm, SPLITS[name])):
        pd.testing.assert_frame_equal(got, want)


def test_cold_items_are_seeded_and_independent_of_row_order() -> None:
    df = random_interactions(4, n=200)
    chosen = set(df.loc[cold_item_rows(df, 0.3, 7), "item_id"])
    shuffled = df.sample(frac=1.0, random_state=0)
    assert set(shuffled.loc[cold_item_rows(shuffled, 0.3, 7), "item_id"]) == chosen
    assert set(df.loc[cold_item_rows(df, 0.3, 8), "item_id"]) != chosen
    assert not cold_item_rows(df, 0.0, 7).any()


def test_no_cold_items_leaves_the_split_unchanged() -> None:
    df = random_interactions(5, n=150)
    for got, want in zip(make_splits(df, {**SPLITS["random"], "cold_items": 0.0}), make_splits(df, SPLITS["random"])):
        pd.testing.assert_frame_equal(got, want)


@pytest.mark.parametrize("share", [-0.1, 1.0, "a lot", True])
def test_bad_share_is_a_clear_error(share: object) -> None:
    with pytest.raises(RecpipeError, match="split.cold_items must be a share of the items in \\[0, 1\\)"):
        make_splits(random_interactions(1, n=20), {**SPLITS["random"], "cold_items": share})


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_conf_split_files_default_to_no_cold_items(name: str) -> None:
    cfg = OmegaConf.load(CONF / "split" / f"{name}.yaml")
    assert cfg.cold_items == 0.0
    df = random_interactions(3, n=100)
    cfg.cold_items = 0.2
    train, val, test = make_splits(df, cfg)
    assert set(test["item_id"]) - set(train["item_id"]) - set(val["item_id"])  # the held-out items


def test_preprocess_keeps_cold_items_in_the_vocabulary(tmp_path: Path) -> None:
    data = cold_processed(tmp_path)
    cold = cold_items_of(data)
    assert len(cold) >= round(0.2 * data.n_items)  # the held-out items (random splits may add a few)
    held_out = set(data.items["item_id"].iloc[cold])
    assert not held_out & set(data.train["item_id"]) and not held_out & set(data.val["item_id"])
    assert data.test["item_idx"].isin(cold).any() and (data.test["item_idx"] >= 0).all()
    assert data.n_items == 200  # every item, cold ones included, is in the catalog
