"""The serving export: round trip in a fresh TensorFlow-only process, fallbacks, ScaNN, MLflow, recommend."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe import serving
from recpipe.data.preprocess import preprocess, write_processed
from recpipe.data.processed import Processed, load_processed
from recpipe.data.raw import write_raw
from recpipe.data.synthetic import generate
from recpipe.data.validate import read_raw
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import top_k_items
from recpipe.models import RecModel, build
from recpipe.paths import Paths
from recpipe.stages import export as export_stage
from recpipe.training import save_model

from .conftest import REPO


class TinyMF(RecModel):
    """Dot product of fixed random user and item embeddings: a factorized model."""

    def __init__(self, n_users: int, n_items: int, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.user_emb = tf.Variable(rng.normal(size=(n_users, dim)).astype(np.float32))
        self.item_emb = tf.Variable(rng.normal(size=(n_items, dim)).astype(np.float32))

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.query_vectors(user_idx), self.item_emb, transpose_b=True)

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.user_emb, user_idx)

    def candidate_vectors(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.item_emb)


class TinyMLP(RecModel):
    """A one-hidden-layer MLP over (user, item) embedding pairs: not factorized."""

    def __init__(self, n_users: int, n_items: int, dim: int = 4, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.user_emb = tf.Variable(rng.normal(size=(n_users, dim)).astype(np.float32))
        self.item_emb = tf.Variable(rng.normal(size=(n_items, dim)).astype(np.float32))
        self.w1 = tf.Variable(rng.normal(size=(2 * dim, hidden)).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(size=(hidden,)).astype(np.float32))

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        u = tf.gather(self.user_emb, user_idx)[:, None, :]
        n_users, n_items = tf.shape(u)[0], tf.shape(self.item_emb)[0]
        pairs = tf.concat(
            [tf.repeat(u, n_items, axis=1), tf.repeat(self.item_emb[None], n_users, axis=0)], axis=2
        )
        return tf.tensordot(tf.nn.relu(tf.tensordot(pairs, self.w1, 1)), self.w2, 1)


def toy_processed(path: Path, n_users: int = 80, n_items: int = 60, n_interactions: int = 1500) -> Processed:
    """A small synthetic dataset through the real ingest/preprocess functions, read back from disk."""
    write_raw(generate(n_users, n_items, n_interactions, seed=1), path / "raw")
    tables = read_raw(path / "raw", rating_scale=[1, 5])
    options = {"duplicates": "latest", "min_user_interactions": 1, "min_item_interactions": 1, "min_rating": None}
    write_processed(preprocess(tables, options, {"name": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0}),
                    path / "processed")
    return load_processed(path / "processed")


def save_mf(data: Processed, path: Path) -> RecModel:
    """An (untrained) MatrixFactorization from conf/model/mf.yaml, saved by training.save_model to ``path``."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / "mf.yaml")
    model = build(cfg, n_users=data.n_users, n_items=data.n_items)
    model.prepare(data.train)
    save_model(model, cfg, data.n_users, data.n_items, path)
    return model


def export_cfg(index: str = "brute_force", max_k: int = 1000) -> OmegaConf:
    return OmegaConf.create({
        "index": index, "max_k": max_k, "registered_model_name": "recpipe-test",
        "scann": {"num_leaves": 4, "num_leaves_to_search": 4, "training_iterations": 10,
                  "dimensions_per_block": 2, "num_reordering_candidates": 1000},
    })


def query_fresh_process(exports: dict[str, Path], queries: list[tuple[list[str], int]]) -> dict[str, list[dict]]:
    """``serving_default`` on ``queries`` for each export, in a new Python that imports only TensorFlow.

    Exports named ``scann*`` are loaded last, after ``import tensorflow_recommenders`` (ScaNN's ops).
    """
    code = textwrap.dedent("""
        import json, sys
        import tensorflow as tf
        exports, queries = json.loads(sys.argv[1]), json.loads(sys.argv[2])
        results = {}
        for name, path in sorted(exports.items(), key=lambda e: e[0].startswith("scann")):
            if name.startswith("scann"):
                import tensorflow_recommenders
            else:
                assert "tensorflow_recommenders" not in sys.modules and "scann" not in sys.modules
            f = tf.saved_model.load(path).signatures["serving_default"]
            results[name] = [{n: v.numpy().tolist() for n, v in f(user_id=tf.constant(users), k=tf.constant(k)).items()}
                             for users, k in queries]
        assert not any(m.startswith("recpipe") for m in sys.modules), "recpipe was imported"
        print(json.dumps(results, default=lambda b: b.decode()))
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [json.dumps({n: str(p) for n, p in exports.items()}), json.dumps(queries)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Processed:
    return toy_processed(tmp_path_factory.mktemp("data"))


N_QUERY = 20
UNKNOWN = ["no-such-user", "also-unknown"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data) -> dict[str, tuple[RecModel, list[dict]]]:
    """Three exports (exact MF, exact MLP, ScaNN MF), each queried in one fresh process:
    [N_QUERY known users at k=10, two unknown users and a known one at k=10, 3 users at k=10000]."""
    root = tmp_path_factory.mktemp("exports")
    models = {"mf": TinyMF(data.n_users, data.n_items), "mlp": TinyMLP(data.n_users, data.n_items)}
    models["scann"] = models["mf"]
    paths = {}
    for name, model in models.items():
        index = "scann" if name == "scann" else "brute_force"
        paths[name] = root / name
        serving.save_server(serving.build_server(model, data, export_cfg(index)), paths[name], index)
    users = data.users["user_id"].to_numpy(object)[:N_QUERY].tolist()
    results = query_fresh_process(paths, [(users, 10), (UNKNOWN + users[:1], 10), (users[:3], 10_000)])
    return {name: (models[name], results[name]) for name in models}


def seen(data: Processed) -> list[set[int]]:
    m = data.matrix("train", "val")
    return [set(m[u].indices) for u in range(data.n_users)]


def expected_top(model: RecModel, data: Processed, users: np.ndarray, k: int) -> list[list[str]]:
    """Top-k item ids by the evaluation ranking code (score_all, train+val excluded)."""
    items, _ = top_k_items(lambda u: model.score_all(tf.constant(u)), users, data.matrix("train", "val"), k)
    ids = data.items["item_id"].to_numpy(object)
    return [[ids[i] for i in row if i >= 0] for row in items]


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_fresh_process_top10_matches_rank_scoring(data, exported, name):
    model, (top10, _, _) = exported[name]
    # ScaNN searching every leaf and re-scoring every candidate exactly gives the exact ranking
    assert top10["item_ids"] == expected_top(model, data, np.arange(N_QUERY, dtype=np.int32), 10)
    assert np.array(top10["scores"]).shape == (N_QUERY, 10)
    assert all(np.all(np.diff(row) <= 0) for row in top10["scores"])
    titles = {i: f"{t} ({y})" for i, t, y in zip(data.items["item_id"], data.items["title"], data.items["year"])}
    assert top10["titles"][0] == [titles[i] for i in top10["item_ids"][0]]


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_unknown_users_get_popularity_order(data, exported, name):
    _, (top10, fallback, _) = exported[name]
    pop = data.item_popularity()
    order = np.argsort(-pop, kind="stable")[:10]  # ties: lower index first
    ids = data.items["item_id"].to_numpy(object)
    for row in range(len(UNKNOWN)):
        assert fallback["item_ids"][row] == ids[order].tolist()
        assert fallback["scores"][row] == pop[order].tolist()
    assert fallback["item_ids"][len(UNKNOWN)] == top10["item_ids"][0]


@pytest.mark.parametrize("name", ["mf", "mlp", "scann"])
def test_k_beyond_catalog_returns_every_unseen_item(data, exported, name):
    _, (_, _, everything) = exported[name]
    ids = data.items["item_id"].to_numpy(object)
    assert np.array(everything["item_ids"]).shape == (3, data.n_items)
    for row, user_items in enumerate(seen(data)[:3]):
        got = [i for i in everything["item_ids"][row] if i]
        assert len(got) == len(set(got)) == data.n_items - len(user_items)
        assert not set(got) & {ids[i] for i in user_items}
        assert all(s == float("-inf") for s in everything["scores"][row][len(got):])


def test_item_titles():
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["Heat", None, "Alien"],
                          "year": pd.array([1995, 1999, None], dtype="Int32")})
    assert serving.item_titles(items).tolist() == ["Heat (1995)", "2 (1999)", "Alien"]
    assert serving.item_titles(items[["item_id"]]).tolist() == ["1", "2", "3"]


def test_max_k_caps_k(tmp_path, data):
    server = serving.build_server(TinyMF(data.n_users, data.n_items), data, export_cfg(max_k=7))
    out = server.top_k(tf.constant(["x", data.users["user_id"].iloc[0]]), tf.constant(50))
    assert out["item_ids"].shape == (2, 7)


def test_scann_needs_a_factorized_model(data):
    with pytest.raises(RecpipeError, match="factorized"):
        serving.build_server(TinyMLP(data.n_users, data.n_items), data, export_cfg("scann"))
    with pytest.raises(RecpipeError, match="export.index"):
        serving.build_server(TinyMF(data.n_users, data.n_items), data, export_cfg("annoy"))


class StaticBatchMF(TinyMF):
    """Scores users one at a time in a Python loop: needs a batch size known when tracing."""

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.concat([super(StaticBatchMF, self).score_all(user_idx[i : i + 1])
                          for i in range(int(user_idx.shape[0]))], axis=0)


def test_untraceable_score_all_is_a_clear_error(data):
    with pytest.raises(RecpipeError, match="StaticBatchMF: its score_all does not trace"):
        serving.build_server(StaticBatchMF(data.n_users, data.n_items), data, export_cfg())


def test_register_in_mlflow_and_load_back(tmp_path, data):
    server = serving.build_server(TinyMF(data.n_users, data.n_items), data, export_cfg(max_k=5))
    assert serving.register_server(server, export_cfg(), "1") is None  # no active run: nothing logged
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.create_experiment("export-test", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        version = serving.register_server(server, export_cfg(max_k=5), example_user="1")
    assert version is not None
    loaded = mlflow.pyfunc.load_model(f"models:/recpipe-test/{version}")
    assert loaded.metadata.signature.inputs.inputs[0].shape == (-1,)
    pred = loaded.predict(np.array(["1", "unknown"], dtype=object))
    expected = server.top_k(tf.constant(["1", "unknown"]), tf.constant(5))
    assert pred["item_ids"].numpy().tolist() == expected["item_ids"].numpy().tolist()


def test_export_stage_saves_a_loadable_model(tmp_path, caplog):
    caplog.set_level("INFO", logger="recpipe")
    paths = Paths(tmp_path)
    data = toy_processed(paths.processed.parent)
    model = save_mf(data, paths.model)
    export_stage.run(OmegaConf.create({"export": export_cfg(max_k=20)}), paths)
    assert "exported brute_force top-k model" in caplog.text
    assert serving.export_info(paths.export) == {"index": "brute_force", "n_users": data.n_users,
                                                 "n_items": data.n_items, "max_k": 20}
    recs = serving.recommend(serving.load_export(paths.export), [data.users["user_id"].iloc[0]], 5)
    assert recs["item_id"].tolist() == expected_top(model, data, np.array([0], np.int32), 5)[0]


def test_recommend_command_prints_ranked_titles(tmp_path, data, capsys):
    serving.save_server(serving.build_server(TinyMF(data.n_users, data.n_items), data, export_cfg()),
                        tmp_path / "export", "brute_force")
    user = data.users["user_id"].iloc[3]
    assert serving.recommend_command(user, 4, tmp_path / "export") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"top 4 for user {user}"
    recs = serving.recommend(serving.load_export(tmp_path / "export"), [user], 4)
    for line, rec in zip(lines[2:], recs.itertuples()):
        assert line.split()[:2] == [str(rec.rank), rec.item_id] and line.endswith(rec.title)
    assert len(lines) == 6
    serving.recommend_command("nobody", 3, tmp_path / "export")
    assert "unknown user" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(RecpipeError, match="recpipe export"):
        serving.recommend_command(user, 3, tmp_path / "missing")
