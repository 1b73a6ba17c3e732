"""The serving export: round trip in a fresh TensorFlow-only process, fallbacks, ScaNN, MLflow, recommend."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models import RecModel
from recpipe.paths import Paths
from recpipe.serving.client import recommend_command
from recpipe.serving.export import build_server, content_uuid, item_titles, register_server, save_server
from recpipe.serving.load import export_info, load_export, recommend
from recpipe.serving.runtime import ModelSource, load
from recpipe.stages import export as export_stage
from recpipe.training import build_model, fit

from .helpers import (
    TinyMF,
    TinyMLP,
    composed,
    expected_top,
    export_cfg,
    query_fresh_process,
    save_mf,
    toy_processed,
)

N_QUERY = 20
UNKNOWN = ["no-such-user", "also-unknown"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, toy_data) -> dict[str, tuple[RecModel, list[dict]]]:
    """Three exports (exact MF, exact MLP, ScaNN MF), each queried in one fresh process:
    [N_QUERY known users at k=10, two unknown users and a known one at k=10, 3 users at k=10000]."""
    root = tmp_path_factory.mktemp("exports")
    models = {"mf": TinyMF(toy_data.n_users, toy_data.n_items), "mlp": TinyMLP(toy_data.n_users, toy_data.n_items)}
    models["scann"] = models["mf"]
    paths = {}
    for name, model in models.items():
        index = "scann" if name == "scann" else "brute_force"
        paths[name] = root / name
        save_server(build_server(model, toy_data, export_cfg(index)), paths[name], index)
    users = toy_data.users["user_id"].to_numpy(object)[:N_QUERY].tolist()
    results = query_fresh_process(paths, [(users, 10), (UNKNOWN + users[:1], 10), (users[:3], 10_000)])
    return {name: (models[name], results[name]) for name in models}


def seen(toy_data: Processed) -> list[set[int]]:
    m = toy_data.matrix("train", "val")
    return [set(m[u].indices) for u in range(toy_data.n_users)]


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_fresh_process_top10_matches_rank_scoring(toy_data, exported, name):
    model, (top10, _, _) = exported[name]
    # ScaNN searching every leaf and re-scoring every candidate exactly gives the exact ranking
    assert top10["item_ids"] == expected_top(model, toy_data, np.arange(N_QUERY, dtype=np.int32), 10)
    assert np.array(top10["scores"]).shape == (N_QUERY, 10)
    assert all(np.all(np.diff(row) <= 0) for row in top10["scores"])
    items = toy_data.items
    titles = {i: f"{t} ({y})" for i, t, y in zip(items["item_id"], items["title"], items["year"])}
    assert top10["titles"][0] == [titles[i] for i in top10["item_ids"][0]]


@pytest.mark.parametrize(
    ("index", "precompute", "scoring"),
    [("brute_force", 10**9, "ranked"), ("brute_force", 0, "online"), ("scann", 10**9, "scann")],
)
def test_served_scoring_is_the_exports(tmp_path, toy_data, index, precompute, scoring):
    """``GET /v1/model``'s ``scoring`` (the loaded model's metadata) says what recpipe_export.json says."""
    model = TinyMF(toy_data.n_users, toy_data.n_items)
    save_server(build_server(model, toy_data, export_cfg(index, precompute_max_scores=precompute)), tmp_path, index)
    assert export_info(tmp_path)["scoring"] == scoring
    assert load(ModelSource(path=tmp_path)).metadata["scoring"] == scoring


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_unknown_users_get_popularity_order(toy_data, exported, name):
    _, (top10, fallback, _) = exported[name]
    pop = toy_data.item_popularity()
    order = np.argsort(-pop, kind="stable")[:10]  # ties: lower index first
    ids = toy_data.items["item_id"].to_numpy(object)
    for row in range(len(UNKNOWN)):
        assert fallback["item_ids"][row] == ids[order].tolist()
        assert fallback["scores"][row] == pop[order].tolist()
    assert fallback["item_ids"][len(UNKNOWN)] == top10["item_ids"][0]


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_k_beyond_catalog_returns_every_unseen_item(toy_data, exported, name):
    _, (_, _, everything) = exported[name]
    ids = toy_data.items["item_id"].to_numpy(object)
    assert np.array(everything["item_ids"]).shape == (3, toy_data.n_items)
    for row, user_items in enumerate(seen(toy_data)[:3]):
        got = [i for i in everything["item_ids"][row] if i]
        assert len(got) == len(set(got)) == toy_data.n_items - len(user_items)
        assert not set(got) & {ids[i] for i in user_items}
        assert all(s == float("-inf") for s in everything["scores"][row][len(got) :])


def test_item_titles():
    items = pd.DataFrame(
        {
            "item_id": ["1", "2", "3"],
            "title": ["Heat", None, "Alien"],
            "year": pd.array([1995, 1999, None], dtype="Int32"),
        }
    )
    assert item_titles(items).tolist() == ["Heat (1995)", "2 (1999)", "Alien"]
    assert item_titles(items[["item_id"]]).tolist() == ["1", "2", "3"]


def test_max_k_caps_k(tmp_path, toy_data):
    server = build_server(TinyMF(toy_data.n_users, toy_data.n_items), toy_data, export_cfg(max_k=7))
    out = server.top_k(tf.constant(["x", toy_data.users["user_id"].iloc[0]]), tf.constant(50))
    assert out["item_ids"].shape == (2, 7)


def test_scann_needs_a_factorized_model(toy_data):
    with pytest.raises(RecpipeError, match="factorized"):
        build_server(TinyMLP(toy_data.n_users, toy_data.n_items), toy_data, export_cfg("scann"))
    with pytest.raises(RecpipeError, match="export.index"):
        build_server(TinyMF(toy_data.n_users, toy_data.n_items), toy_data, export_cfg("annoy"))


class StaticBatchMF(TinyMF):
    """Scores users one at a time in a Python loop: needs a batch size known when tracing."""

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.concat(
            [super(StaticBatchMF, self).score_all(user_idx[i : i + 1]) for i in range(int(user_idx.shape[0]))], axis=0
        )


def test_untraceable_score_all_is_a_clear_error(toy_data):
    model = StaticBatchMF(toy_data.n_users, toy_data.n_items)
    with pytest.raises(RecpipeError, match="StaticBatchMF: its score_all does not trace"):
        build_server(model, toy_data, export_cfg(precompute_max_scores=0))
    build_server(model, toy_data, export_cfg())  # ranked ahead, eagerly: the graph never scores


def test_register_in_mlflow_and_load_back(tmp_path, toy_data):
    server = build_server(TinyMF(toy_data.n_users, toy_data.n_items), toy_data, export_cfg(max_k=5))
    assert register_server(server, export_cfg(), "1") is None  # no active run: nothing logged
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.create_experiment("export-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        version = register_server(server, export_cfg(max_k=5), example_user="1")
    assert version is not None
    loaded = mlflow.pyfunc.load_model(f"models:/recpipe-test/{version}")
    assert loaded.metadata.signature.inputs.inputs[0].shape == (-1,)
    pred = loaded.predict(np.array(["1", "unknown"], dtype=object))
    expected = server.top_k(tf.constant(["1", "unknown"]), tf.constant(5))
    assert pred["item_ids"].numpy().tolist() == expected["item_ids"].numpy().tolist()


def test_export_fingerprint_uuid_comes_from_the_content(tmp_path, toy_data):
    """TensorFlow writes a random uuid into fingerprint.pb; the export's is derived from the
    fingerprint's hashes, so the same model saved again (a fresh process traces the same graph) gives
    the same bytes and DVC sees an unchanged export as unchanged. The export still loads."""
    from tensorflow.core.protobuf import fingerprint_pb2

    save_server(
        build_server(TinyMF(toy_data.n_users, toy_data.n_items), toy_data, export_cfg()), tmp_path, "brute_force"
    )
    file = tmp_path / "fingerprint.pb"
    saved = file.read_bytes()
    random_uuid = fingerprint_pb2.FingerprintDef.FromString(saved)
    random_uuid.uuid = "123456789"  # what another save of the same model would carry without the fix
    file.write_bytes(random_uuid.SerializeToString())
    content_uuid(tmp_path)
    assert file.read_bytes() == saved
    assert load_export(tmp_path).signatures["serving_default"] is not None


def test_export_stage_saves_a_loadable_model(tmp_path, caplog):
    caplog.set_level("INFO", logger="recpipe")
    paths = Paths(tmp_path)
    toy_data = toy_processed(paths.processed.parent)
    model = save_mf(toy_data, paths.model)
    export_stage.run(OmegaConf.create({"export": export_cfg(max_k=20)}), paths)
    assert "exported brute_force top-k model" in caplog.text
    assert export_info(paths.export) == {
        "index": "brute_force",
        "scoring": "ranked",
        "n_users": toy_data.n_users,
        "n_items": toy_data.n_items,
        "max_k": 20,
    }
    recs = recommend(load_export(paths.export), [toy_data.users["user_id"].iloc[0]], 5)
    assert recs["item_id"].tolist() == expected_top(model, toy_data, np.array([0], np.int32), 5)[0]


def test_recommend_command_prints_ranked_titles(tmp_path, toy_data, capsys):
    save_server(
        build_server(TinyMF(toy_data.n_users, toy_data.n_items), toy_data, export_cfg()),
        tmp_path / "export",
        "brute_force",
    )
    user = toy_data.users["user_id"].iloc[3]
    assert recommend_command(user, 4, tmp_path / "export") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"top 4 for user {user}"
    recs = recommend(load_export(tmp_path / "export"), [user], 4)
    for line, rec in zip(lines[2:], recs.itertuples()):
        assert line.split()[:2] == [str(rec.rank), rec.item_id] and line.endswith(rec.title)
    assert len(lines) == 6
    recommend_command("nobody", 3, tmp_path / "export")
    assert "unknown user" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(RecpipeError, match="recpipe export"):
        recommend_command(user, 3, tmp_path / "missing")


@pytest.fixture(scope="module")
def blend(toy_data) -> RecModel:
    """``model=blend`` (all its members) fit quickly on the toy data."""
    cfg = composed("model=blend", "model.members.mult_vae.epochs=2", "model.weight_grid=[0.5,1.0]").model
    model, _ = build_model(cfg, toy_data, seed=0)
    fit(model, toy_data, cfg, seed=0)
    return model


def test_ranked_export_answers_as_the_model_scores(tmp_path, toy_data, blend):
    """A blend exported ranked ahead and on-line (its members in the graph) gives the model's own top-k
    (evaluation's ranking of score_all) and scores at every k; the server's table gives the signature's."""
    users = toy_data.users["user_id"].astype(str).tolist() + ["nobody"]
    out = {}
    for scoring, precompute in (("ranked", 10**9), ("online", 0)):
        save_server(
            build_server(blend, toy_data, export_cfg(precompute_max_scores=precompute)),
            tmp_path / scoring,
            "brute_force",
        )
        assert export_info(tmp_path / scoring)["scoring"] == scoring
        out[scoring] = load_export(tmp_path / scoring).signatures["serving_default"]
    served = load(ModelSource(path=tmp_path / "ranked"))
    assert served.instant and not load(ModelSource(path=tmp_path / "online")).instant
    for k in (1, 10, toy_data.n_items):
        ranked, online = (f(user_id=tf.constant(users), k=tf.constant(k)) for f in (out["ranked"], out["online"]))
        ids = [[i.decode() for i in row if i] for row in ranked["item_ids"].numpy()]
        assert ids[:-1] == expected_top(blend, toy_data, np.arange(toy_data.n_users, dtype=np.int32), k)
        assert ranked["item_ids"].numpy().tolist() == online["item_ids"].numpy().tolist()
        np.testing.assert_allclose(ranked["scores"].numpy(), online["scores"].numpy(), rtol=1e-5, atol=1e-5)
        table = served.recommend(users, k)
        for got, name in zip(table, ("item_ids", "titles", "scores")):
            assert got.tolist() == ranked[name].numpy().tolist()
        assert table[3].tolist() == [u != "nobody" for u in users]
