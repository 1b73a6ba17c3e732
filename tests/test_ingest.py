"""The ingest stage: the source registry, data/raw/ as written, the stage and CLI, and ML-100K from recbole."""

from __future__ import annotations

import importlib.metadata
import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from recpipe.cli import main
from recpipe.data import movielens
from recpipe.data.raw import RawData, items_from_interactions, write_raw
from recpipe.data.sources import SOURCES, load_source
from recpipe.errors import RecpipeError
from recpipe.paths import Paths
from recpipe.stages import ingest

from .helpers import REPO

SMALL_SYNTHETIC = {"source": "synthetic", "n_users": 40, "n_items": 30, "n_interactions": 500, "seed": 3}


def tiny_raw(**source) -> RawData:
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(["1", "2", "2"], dtype="str"),
            "item_id": pd.Series(["a", "a", "b"], dtype="str"),
            "rating": pd.Series([4.0, 5.0, 3.0], dtype="float32"),
            "timestamp": pd.array([10, 20, None], dtype="Int64"),
        }
    )
    return RawData(interactions, items_from_interactions(interactions["item_id"]), None, {"source": "test", **source})


def test_every_configured_source_is_registered():
    for path in sorted((REPO / "conf" / "data").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.source in SOURCES, path.name
        assert "rating_scale" in cfg and (cfg.rating_scale is None or len(cfg.rating_scale) == 2), path.name


def test_unknown_source_names_the_choices():
    with pytest.raises(RecpipeError, match="synthetic"):
        load_source(OmegaConf.create({"source": "nope"}))


def test_write_raw_writes_contract_schema(tmp_path):
    out = tmp_path / "raw"
    summary = write_raw(tiny_raw(path="x.csv"), out)
    assert summary == {"interactions": 3, "users": 2, "items": 2, "item_rows": 2}
    assert sorted(p.name for p in out.iterdir()) == ["interactions.parquet", "items.parquet", "source.json"]
    inter = pq.read_schema(out / "interactions.parquet")
    assert [(f.name, f.type) for f in inter] == [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]
    items = pq.read_schema(out / "items.parquet")
    # every item has no genres: still list<string>, and years are int32 though all null
    assert items.field("genres").type == pa.list_(pa.string())
    assert items.field("year").type == pa.int32()
    info = json.loads((out / "source.json").read_text())
    assert info == {"source": "test", "path": "x.csv", "rows": summary}
    back = pd.read_parquet(out / "interactions.parquet")
    assert back["timestamp"].isna().tolist() == [False, False, True]


def test_write_raw_replaces_the_whole_directory(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "users.parquet").write_bytes(b"stale")
    write_raw(tiny_raw(), out)
    assert not (out / "users.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]  # no temporary directories left behind


def test_write_raw_leaves_old_output_when_the_source_is_broken(tmp_path):
    out = tmp_path / "raw"
    write_raw(tiny_raw(), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = tiny_raw()
    with pytest.raises(ValueError, match="timestamp"):
        write_raw(RawData(broken.interactions.drop(columns="timestamp"), broken.items, None, broken.source), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_stage_writes_raw_and_prints_summary(tmp_path, caplog):
    caplog.set_level("INFO", logger="recpipe")
    cfg = OmegaConf.create({"data": SMALL_SYNTHETIC})
    ingest.run(cfg, Paths(tmp_path))
    out = caplog.text
    assert "500 interactions, 40 users" in out
    raw = tmp_path / "data" / "raw"
    assert len(pd.read_parquet(raw / "interactions.parquet")) == 500
    assert len(pd.read_parquet(raw / "users.parquet")) == 40
    assert json.loads((raw / "source.json").read_text())["params"]["seed"] == 3


def test_same_config_gives_byte_identical_raw(tmp_path):
    """data/raw is a DVC output: re-running ingest must not change its hash."""
    cfg = OmegaConf.create({"data": SMALL_SYNTHETIC})
    ingest.run(cfg, Paths(tmp_path / "a"))
    ingest.run(cfg, Paths(tmp_path / "b"))
    files = sorted(p.name for p in (tmp_path / "a" / "data" / "raw").iterdir())
    for name in files:
        assert (tmp_path / "a/data/raw" / name).read_bytes() == (tmp_path / "b/data/raw" / name).read_bytes()


def test_cli_ingest_runs_and_reports_user_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    OmegaConf.save(OmegaConf.create({"data": SMALL_SYNTHETIC, "mlflow": {"experiment": "test-ingest"}}), params)
    assert main(["ingest", "--params", str(params)]) == 0
    assert (tmp_path / "data" / "raw" / "items.parquet").exists()

    OmegaConf.save(
        OmegaConf.create(
            {
                "data": {
                    "source": "files",
                    "interactions": "missing.csv",
                    "columns": {"user": "u", "item": "i"},
                    "inputs": {"interactions": "missing.csv"},
                },
                "mlflow": {"experiment": "test-ingest"},
            }
        ),
        params,
    )
    assert main(["ingest", "--params", str(params)]) == 2
    assert "missing.csv not found" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / "data" / "raw" / "interactions.parquet")) == 500  # kept


# --- MovieLens 100K from the recbole wheel ------------------------------------------------------


@pytest.fixture(scope="module")
def ml100k() -> RawData:
    return load_source(OmegaConf.load(REPO / "conf" / "data" / "ml100k.yaml"))


def test_ml100k_builtin_counts_and_types(ml100k):
    assert ml100k.summary() == {
        "interactions": 100000,
        "users": 943,
        "items": 1682,
        "item_rows": 1682,
        "user_rows": 943,
    }
    first = ml100k.interactions.iloc[0]
    assert (first.user_id, first.item_id, first.rating, first.timestamp) == ("196", "242", 3.0, 881250949)
    assert ml100k.interactions["rating"].dtype == "float32"
    assert sorted(ml100k.interactions["rating"].unique()) == [1, 2, 3, 4, 5]
    toy = ml100k.items.iloc[0]
    assert (toy.item_id, toy.title, toy.year, list(toy.genres)) == (
        "1",
        "Toy Story",
        1995,
        ["Animation", "Children's", "Comedy"],
    )
    assert ml100k.items["genres"].map(len).min() == 0  # "unknown" genre means none
    assert ml100k.items["year"].isna().sum() == 1  # item 267 has no title or date in the data
    user = ml100k.users.iloc[0]
    assert (user.user_id, user.age, user.gender, user.occupation, user.zip) == ("1", 24, "M", "technician", "85711")
    assert ml100k.source["sha256"] == movielens.BUILTIN_SHA256


def test_ml100k_checksum_mismatch_fails(tmp_path):
    files = {}
    for name, path in movielens.builtin_files().items():
        files[name] = tmp_path / name
        shutil.copy(path, files[name])
    with open(files["ml-100k.inter"], "a") as f:
        f.write("1\t1\t5\t881250949\n")
    with pytest.raises(RecpipeError, match=r"ml-100k\.inter: sha256 .* does not match .*pip install"):
        movielens.read_builtin(files)


def test_ml100k_without_recbole_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(movielens.importlib.metadata, "distribution", missing)
    with pytest.raises(RecpipeError, match=r"pip install --no-deps recbole==1\.2\.1"):
        movielens.builtin_files()
