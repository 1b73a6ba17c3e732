"""The engine config group and the pieces of engine=ray that need no cluster (tests/test_ray_engine.py
runs the pipeline on a real two-node Ray cluster)."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pandas as pd
import pytest

from recpipe import training
from recpipe.data.raw import write_raw
from recpipe.data.sources import load_source
from recpipe.distributed import check_batch_size, replica_part
from recpipe.engines import ray_preprocess
from recpipe.engines import train as engine
from recpipe.engines.cluster import address, check_reachable
from recpipe.errors import ConfigError, RecpipeError
from recpipe.schema import validate

from .helpers import composed


def test_engine_defaults_to_local_and_ray_validates():
    assert composed().engine.name == "local"
    cfg = composed("engine=ray", "engine.num_workers=3")
    validate(cfg)
    assert (cfg.engine.num_workers, cfg.engine.address) == (3, None)


@pytest.mark.parametrize(
    ("override", "key"),
    [("engine.num_workers=0", "engine.num_workers"), ("+engine.workers=2", "engine.workers")],
)
def test_bad_engine_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(composed("engine=ray", override))


def test_address_is_the_config_then_ray_address_then_local(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert address(composed("engine=ray").engine) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert address(composed("engine=ray").engine) == "10.0.0.1:6379"
    assert address(composed("engine=ray", "engine.address=127.0.0.1:7000").engine) == "127.0.0.1:7000"


def test_replicas_share_each_global_batch_with_seeds_of_their_own():
    rows = pd.DataFrame({"user_idx": np.arange(40) % 7, "item_idx": np.arange(40), "rating": np.ones(40)})
    batch = next(iter(training.make_dataset(rows, batch_size=8, seed=3)))
    parts = [replica_part(batch, 2, r) for r in range(2)]
    for column in ("user_idx", "item_idx", "rating"):
        np.testing.assert_array_equal(np.concatenate([p[column].numpy() for p in parts]), batch[column].numpy())
    seeds = [tuple(p["seed"].numpy()) for p in parts]
    assert seeds[0] != seeds[1]
    assert tuple(replica_part(batch, 1, 0)["seed"].numpy()) == tuple(batch["seed"].numpy())


def test_batch_must_split_evenly_across_workers():
    check_batch_size(1024, 2)
    with pytest.raises(RecpipeError, match=r"model\.batch_size: 1001 .* 2 workers"):
        check_batch_size(1001, 2)


def test_closed_form_models_fit_in_this_process_with_engine_ray(toy_data, caplog):
    cfg = composed("engine=ray", "model=popularity")
    model, _ = training.build_model(cfg.model, toy_data, int(cfg.seed))
    with caplog.at_level(logging.INFO, logger="recpipe"):
        result = engine.fit(model, toy_data, cfg)
    assert "fit in closed form, on one worker (this process)" in caplog.text
    assert result.best_epoch == 1


def test_an_unreachable_cluster_fails_fast_with_its_address():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RecpipeError, match=rf"engine\.address='127\.0\.0\.1:{port}': no Ray cluster answers"):
        check_reachable(f"127.0.0.1:{port}")
    check_reachable("local")


def test_preprocess_on_an_unreachable_cluster_fails_before_writing(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = composed("data=synthetic", "data.n_interactions=500", "engine=ray", f"engine.address=127.0.0.1:{port}")
    write_raw(load_source(cfg.data), tmp_path / "raw")
    with pytest.raises(RecpipeError, match=rf"engine\.address='127\.0\.0\.1:{port}': no Ray cluster answers"):
        ray_preprocess.run(cfg, tmp_path / "raw", tmp_path / "processed")
    assert not (tmp_path / "processed").exists()


@pytest.mark.parametrize(
    ("split", "problem"),
    [("split=random", None), ("+split.window=3", "split=random: got an unexpected keyword argument 'window'")],
)
def test_preprocess_on_ray_checks_the_split_before_connecting(tmp_path, split, problem):
    cfg = composed("data=synthetic", "data.n_interactions=500", "engine=ray", split)
    (tmp_path / "raw").mkdir()
    expected = problem or "data/raw/interactions.parquet: not found"
    with pytest.raises(RecpipeError, match=expected.replace("data/raw", str(tmp_path / "raw"))):
        ray_preprocess.run(cfg, tmp_path / "raw", tmp_path / "processed")
