"""The DVC pipeline end to end in a temporary copy of the repository."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from .helpers import commit, copy_repo, run

pytestmark = pytest.mark.integration

SMALL = ["model=mf", "data=synthetic", "data.n_users=300", "data.n_items=150", "data.n_interactions=6000"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("pipeline") / "repo")


def _stages_run(proc) -> list[str]:
    out = proc.stdout + proc.stderr
    return [s for s in ("ingest", "preprocess") if f"Running stage '{s}'" in out]


def test_repro_data_stages_then_nothing_to_do(repo):
    run(["recpipe", "compose", *SMALL], repo)
    commit(repo, "small synthetic config")
    first = run(["dvc", "repro", "preprocess"], repo)
    assert _stages_run(first) == ["ingest", "preprocess"]
    stats = json.loads((repo / "data/processed/stats.json").read_text())
    assert stats["raw"]["interactions"] == 6000
    assert set(stats["splits"]) == {"train", "val", "test"}
    second = run(["dvc", "repro", "preprocess"], repo)
    assert _stages_run(second) == []

    # a split parameter re-runs preprocess, never ingest
    run(["recpipe", "compose", *SMALL, "split.seed=7"], repo)
    third = run(["dvc", "repro", "preprocess"], repo)
    assert _stages_run(third) == ["preprocess"]


def test_exp_run_with_hydra_override_changes_splits(repo):
    run(["recpipe", "compose", *SMALL], repo)
    run(["dvc", "repro", "preprocess"], repo)
    commit(repo, "baseline")
    before = pd.read_parquet(repo / "data/processed/test.parquet")
    run(["dvc", "exp", "run", "preprocess", *[a for o in SMALL for a in ("-S", o)], "-S", "split=temporal"], repo)
    after = pd.read_parquet(repo / "data/processed/test.parquet")
    params = (repo / "params.yaml").read_text()
    assert "name: temporal" in params
    assert not before[["user_id", "item_id"]].equals(after[["user_id", "item_id"]])
    # temporal: every test interaction is at or after every train interaction
    train = pd.read_parquet(repo / "data/processed/train.parquet")
    assert after["timestamp"].min() >= train["timestamp"].max()


def test_text_rating_stops_preprocess_and_keeps_outputs(repo):
    good = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 2, 3, 3] * 5,
            "item_id": [10, 11, 10, 12, 11, 12] * 5,
            "rating": [4, 5, 3, 2, 5, 1] * 5,
            "timestamp": range(30),
        }
    )
    good.drop_duplicates(["user_id", "item_id"]).to_csv(repo / "data/ratings.csv", index=False)
    files = ["data=files", "data.interactions=data/ratings.csv"]
    run(["recpipe", "compose", *files], repo)
    run(["recpipe", "ingest"], repo)
    run(["recpipe", "preprocess"], repo)
    before = {p.name: p.read_bytes() for p in (repo / "data/processed").iterdir()}

    bad = pd.read_csv(repo / "data/ratings.csv", dtype=str)
    bad.loc[3, "rating"] = "five"
    bad.to_csv(repo / "data/ratings.csv", index=False)
    run(["recpipe", "ingest"], repo)
    proc = run(["recpipe", "preprocess"], repo, check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    for part in ("interactions", "rating", "five"):
        assert part in proc.stderr, proc.stderr
    assert "row 3" in proc.stderr  # 0-based row of the raw file, as pandas counts
    assert {p.name: p.read_bytes() for p in (repo / "data/processed").iterdir()} == before
