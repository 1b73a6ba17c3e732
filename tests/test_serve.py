"""``recpipe serve``: the real HTTP service (a ``recpipe serve`` subprocess, and uvicorn in a thread for
reloads and the MLflow registry) against the SavedModel's own signature output, and every error path."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import tensorflow as tf
from mlflow import MlflowClient
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.io import write_json
from recpipe.paths import Paths
from recpipe.serving.batcher import MicroBatcher
from recpipe.serving.export import build_server, register_server, save_server
from recpipe.serving.http import MAX_BATCH, MAX_BODY_BYTES, ServiceState
from recpipe.serving.load import load_export
from recpipe.serving.runtime import ModelSource, load
from recpipe.training import build_model, fit

from .helpers import BIN, REPO, ThreadServer, TinyMF, env, export_cfg, free_port, wait_ready

pytestmark = pytest.mark.integration

KEY = "test-key-123"
MAX_K = 20


@pytest.fixture(scope="module")
def exports(tmp_path_factory, toy_data: Processed) -> dict[str, Path]:
    """Exports of two different MF models (ranked ahead, and scored on-line by the graph) and of a
    content model (which has ``similar_items``)."""
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for name, seed, precompute in (("mf", 0, 10**9), ("mf2", 1, 0)):
        out[name] = root / name
        model = TinyMF(toy_data.n_users, toy_data.n_items, seed=seed)
        cfg = export_cfg(max_k=MAX_K, precompute_max_scores=precompute)
        save_server(build_server(model, toy_data, cfg), out[name], "brute_force")
    cfg = OmegaConf.load(REPO / "conf" / "model" / "content.yaml")
    content, _ = build_model(cfg, toy_data, seed=0)
    fit(content, toy_data, cfg, seed=0)
    out["content"] = root / "content"
    save_server(build_server(content, toy_data, export_cfg(max_k=MAX_K)), out["content"], "brute_force")
    return out


@pytest.fixture(scope="module")
def served(exports) -> Iterator[str]:
    """``recpipe serve`` on the MF export, in a subprocess, with an API key; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "recpipe"), "serve", "--port", str(port), "--model", str(exports["mf"])],
        env={**env(), "RECPIPE_API_KEY": KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["X-API-Key"] = KEY
        yield s


def signature_top_k(path: Path, users: list[str], k: int) -> dict[str, list]:
    out = load_export(path).signatures["serving_default"](user_id=tf.constant(users), k=tf.constant(k))
    return {name: v.numpy().tolist() for name, v in out.items()}


def as_rows(items: list[dict]) -> tuple[list[str], list[str], list[float]]:
    return [i["item_id"] for i in items], [i["title"] for i in items], [i["score"] for i in items]


def test_get_and_post_recommend_match_the_signature(served, http, exports, toy_data):
    users = toy_data.users["user_id"].astype(str).tolist()[:5] + ["nobody"]
    expected = signature_top_k(exports["mf"], users, 7)
    batch = http.post(f"{served}/v1/recommend", json={"user_ids": users, "k": 7})
    assert batch.status_code == 200, batch.text
    assert batch.json()["k"] == 7
    for n, (user, result) in enumerate(zip(users, batch.json()["results"])):
        single = http.get(f"{served}/v1/recommend", params={"user_id": user, "k": 7}).json()
        assert single["user_id"] == result["user_id"] == user
        ids, titles, scores = as_rows(result["items"])
        assert as_rows(single["items"])[:2] == (ids, titles)
        assert as_rows(single["items"])[2] == pytest.approx(scores)  # batch size changes float rounding
        assert ids == [i.decode() for i in expected["item_ids"][n]]
        assert titles == [t.decode() for t in expected["titles"][n]]
        assert scores == pytest.approx(expected["scores"][n])
        assert scores == sorted(scores, reverse=True)
        assert result["fallback"] is single["fallback"] is (user == "nobody")
    pop = toy_data.item_popularity()
    assert batch.json()["results"][-1]["items"][0]["score"] == pop.max()  # unknown user: popularity


def test_integer_user_ids_and_users_with_few_unseen_items(served, http, toy_data):
    user = toy_data.users["user_id"].astype(str).iloc[0]
    if user.isdigit():
        as_int = http.post(f"{served}/v1/recommend", json={"user_ids": [int(user)], "k": 3}).json()
        assert as_int["results"][0]["user_id"] == user and not as_int["results"][0]["fallback"]
    # k = max_k = 20 of 60 items: every user has that many unseen items; the answer never pads
    full = http.get(f"{served}/v1/recommend", params={"user_id": user, "k": MAX_K}).json()
    assert len(full["items"]) == MAX_K and all(i["item_id"] for i in full["items"])


def test_model_info_and_probes(served, http, exports, toy_data):
    info = http.get(f"{served}/v1/model").json()
    assert info["export_path"] == str(exports["mf"].resolve())
    assert info["max_k"] == MAX_K and info["index"] == "brute_force" and info["similar_items"] is False
    assert info["exported_at"] and info["revision"]
    assert "metrics" not in info  # an export outside a pipeline: no reports to read, nothing invented
    for path in ("/healthz", "/readyz"):  # open without the key
        assert requests.get(f"{served}{path}").status_code == 200
    assert http.get(f"{served}/docs").status_code == 200
    assert "/v1/recommend" in http.get(f"{served}/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "method, path, kwargs, status, message",
    [
        ("get", "/v1/recommend", {"params": {"user_id": "1"}}, 422, "query.k: Field required"),
        ("get", "/v1/recommend", {"params": {"user_id": "1", "k": "ten"}}, 422, "query.k"),
        ("get", "/v1/recommend", {"params": {"user_id": "1", "k": "2.5"}}, 422, "query.k"),
        ("get", "/v1/recommend", {"params": {"user_id": "1", "k": "0"}}, 422, f"k must be between 1 and {MAX_K}"),
        ("get", "/v1/recommend", {"params": {"user_id": "1", "k": str(MAX_K + 1)}}, 422, "k must be between"),
        ("get", "/v1/recommend", {"params": {"k": "3"}}, 422, "query.user_id: Field required"),
        ("get", "/v1/recommend", {"params": {"user_id": "", "k": "3"}}, 422, "query.user_id"),
        ("post", "/v1/recommend", {"json": {"user_ids": [], "k": 3}}, 422, "body.user_ids"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"] * (MAX_BATCH + 1), "k": 3}}, 422, "body.user_ids"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"], "k": "3"}}, 422, "body.k"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"], "k": 3.5}}, 422, "body.k"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"]}}, 422, "body.k: Field required"),
        ("post", "/v1/recommend", {"json": {"user_ids": [None], "k": 3}}, 422, "body.user_ids.0"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"], "k": 3, "extra": 1}}, 422, "body.extra"),
        ("post", "/v1/recommend", {"json": {"user_ids": [""], "k": 3}}, 422, "user ids must have"),
        ("post", "/v1/recommend", {"json": {"user_ids": ["1"], "k": 999}}, 422, "k must be between"),
        ("post", "/v1/recommend", {"json": ["1"]}, 422, "body"),
        (
            "post",
            "/v1/recommend",
            {"data": '{"user_ids": ["1"], "k": 3', "headers": {"Content-Type": "application/json"}},
            400,
            "malformed JSON",
        ),
        (
            "post",
            "/v1/recommend",
            {"data": "x" * (MAX_BODY_BYTES + 1), "headers": {"Content-Type": "application/json"}},
            413,
            "larger than",
        ),
        (
            "post",
            "/v1/recommend",
            {"data": iter([b"[" + b" " * MAX_BODY_BYTES, b"]"]), "headers": {"Content-Type": "application/json"}},
            413,
            "larger than",
        ),
        ("get", "/v1/similar", {"params": {"item_id": "1", "k": "3"}}, 404, "no similar_items signature"),
        ("get", "/v1/nothing", {}, 404, "Not Found"),
        ("delete", "/v1/recommend", {}, 405, "Method Not Allowed"),
    ],
)
def test_bad_requests_are_json_4xx(served, http, method, path, kwargs, status, message):
    r = getattr(http, method)(f"{served}{path}", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["status"] == status and message in error["message"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}])
@pytest.mark.parametrize("path", ["/v1/recommend?user_id=1&k=3", "/v1/model", "/docs", "/nothing"])
def test_api_key_is_required(served, headers, path):
    r = requests.get(f"{served}{path}", headers=headers)
    assert r.status_code == 401 and "X-API-Key" in r.json()["error"]["message"]
    assert requests.post(f"{served}/admin/reload", headers=headers).status_code == 401


def test_bad_model_source_exits_2(tmp_path):
    with pytest.raises(RecpipeError, match="expected models:/<name>@<alias> or models:/<name>/<version>"):
        ModelSource.parse("models:/x@")
    with pytest.raises(RecpipeError, match="models:/no-such-model@champion in the MLflow registry"):
        ModelSource.parse("models:/no-such-model@champion").revision()
    proc = subprocess.run(
        [str(BIN / "recpipe"), "serve", "--port", str(free_port()), "--model", str(tmp_path)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert f"recpipe serve: error: {tmp_path}: no exported model" in proc.stderr


def replace_dir(src: Path, dest: Path) -> None:
    """Put a copy of export ``src`` at ``dest`` the way ``save_server`` does (rename onto it)."""
    tmp = dest.with_name(dest.name + ".new")
    shutil.copytree(src, tmp)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def test_reload_swaps_the_model_without_failing_requests(tmp_path, exports, toy_data):
    served = tmp_path / "export"
    replace_dir(exports["mf"], served)
    users = toy_data.users["user_id"].astype(str).tolist()[:8]
    old, new = (signature_top_k(exports[n], users, 5)["item_ids"] for n in ("mf", "mf2"))
    assert old != new
    with ThreadServer(ServiceState(ModelSource(path=served))) as s:
        first = requests.get(f"{s.base}/v1/model").json()["revision"]

        def ask(n: int) -> tuple[str, list[str]]:
            r = requests.get(f"{s.base}/v1/recommend", params={"user_id": users[n % 8], "k": 5})
            assert r.status_code == 200, r.text
            return r.json()["model_revision"], [i["item_id"] for i in r.json()["items"]]

        replace_dir(exports["mf2"], served)
        with ThreadPoolExecutor(8) as pool:
            during = pool.map(ask, range(400))
            reload = requests.post(f"{s.base}/admin/reload")
            during = list(during)
        assert reload.status_code == 200 and reload.json()["reloaded"]
        second = reload.json()["model"]["revision"]
        assert second != first
        for n, (revision, items) in enumerate(during):  # each answer wholly from one model
            expected = old if revision == first else new
            assert revision in (first, second) and items == [i.decode() for i in expected[n % 8]]
        assert ask(0) == (second, [i.decode() for i in new[0]])

        shutil.rmtree(served)  # a failed reload keeps serving the loaded model
        failed = requests.post(f"{s.base}/admin/reload")
        assert failed.status_code == 500 and f"still serving revision {second}" in failed.json()["error"]["message"]
        assert ask(1)[0] == second and requests.get(f"{s.base}/readyz").status_code == 200


def test_non_finite_scores_are_null(tmp_path, toy_data):
    """A diverged model's infinite scores are JSON nulls (not a 500), scored on-line and ranked ahead.
    (NaN scores: a ranked export refuses them, the on-line signature leaves those items out.)"""
    model = TinyMF(toy_data.n_users, toy_data.n_items)
    emb = model.user_emb.numpy()
    emb[0, 0] = np.inf  # the first user's scores: +-inf
    model.user_emb.assign(emb)
    user = toy_data.users["user_id"].astype(str).iloc[0]
    for precompute in (0, 10**9):
        path = tmp_path / str(precompute)
        save_server(build_server(model, toy_data, export_cfg(precompute_max_scores=precompute)), path, "brute_force")
        with ThreadServer(ServiceState(ModelSource(path=path))) as s:
            r = requests.get(f"{s.base}/v1/recommend", params={"user_id": user, "k": 5})
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            assert len(items) == 5 and all(i["item_id"] and i["score"] is None for i in items)


def test_similar_items_for_catalog_and_new_items(tmp_path, exports, toy_data):
    export = load_export(exports["content"])
    catalog = export.similar.catalog.numpy()
    ids = [i.decode() for i in export.similar.item_ids.numpy()]
    with ThreadServer(ServiceState(ModelSource(path=exports["content"]), batching=False)) as s:
        assert requests.get(f"{s.base}/v1/model").json()["similar_items"] is True
        r = requests.get(f"{s.base}/v1/similar", params={"item_id": ids[3], "k": 5})
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        cosine = catalog @ catalog[3]
        assert [i["item_id"] for i in got] == [ids[j] for j in np.argsort(-cosine, kind="stable") if j != 3][:5]
        assert [i["score"] for i in got] == pytest.approx(sorted(np.delete(cosine, 3), reverse=True)[:5], abs=1e-6)

        item = toy_data.items.iloc[7]
        params = {"title": item["title"], "genres": "|".join(item["genres"]), "year": int(item["year"]), "k": 4}
        new = requests.get(f"{s.base}/v1/similar", params=params).json()
        sig = export.signatures["similar_items"](
            title=tf.constant([item["title"]]),
            genres=tf.constant([params["genres"]]),
            year=tf.constant([float(item["year"])]),
            k=tf.constant(4),
        )
        assert [i["item_id"] for i in new["items"]] == [i.decode() for i in sig["item_ids"].numpy()[0]]
        assert new["items"][0]["score"] == pytest.approx(1.0, abs=1e-5)  # itself (or an item with the same features)

        for params, status, message in [
            ({"item_id": "no-such-item", "k": 3}, 404, "unknown item_id"),
            ({"k": 3}, 422, "exactly one of item_id"),
            ({"item_id": ids[0], "title": "x", "k": 3}, 422, "exactly one of item_id"),
            ({"item_id": ids[0]}, 422, "query.k"),
            ({"title": "x", "year": "soon", "k": 3}, 422, "query.year"),
            ({"item_id": ids[0], "k": MAX_K + 1}, 422, "k must be between"),
        ]:
            r = requests.get(f"{s.base}/v1/similar", params=params)
            assert r.status_code == status and message in r.json()["error"]["message"], r.text


def test_registry_alias_is_served_and_followed(tmp_path, toy_data, exports):
    """models:/<name>@champion from a sqlite MLflow registry: metadata, then the alias moving is picked up."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.create_experiment("serve-test", artifact_location=(tmp_path / "artifacts").as_uri())
    cfg = export_cfg(max_k=MAX_K)
    cfg.registered_model_name = "recpipe-serve-test"
    versions = []
    for seed in (0, 1):
        server = build_server(TinyMF(toy_data.n_users, toy_data.n_items, seed=seed), toy_data, cfg)
        with mlflow.start_run(experiment_id=experiment):
            mlflow.set_tags({"model": "mf", "recpipe.dataset_fingerprint": "abc123"})
            mlflow.log_metrics({"ndcg_at_10": 0.25 + seed, "rmse": 0.9})
            versions.append(register_server(server, cfg, example_user="1"))
    client = MlflowClient()
    client.set_registered_model_alias(cfg.registered_model_name, "champion", versions[0])
    user = toy_data.users["user_id"].astype(str).iloc[2]
    source = ModelSource.parse(f"models:/{cfg.registered_model_name}@champion")
    with ThreadServer(ServiceState(source, reload_interval_s=0.3)) as s:
        info = requests.get(f"{s.base}/v1/model").json()
        assert info["registered_name"] == cfg.registered_model_name and info["registered_version"] == versions[0]
        assert info["aliases"] == ["champion"] and info["model"] == "mf"
        assert info["data_fingerprint"] == "abc123" and info["metrics"] == {"ndcg_at_10": 0.25, "rmse": 0.9}
        top = requests.get(f"{s.base}/v1/recommend", params={"user_id": user, "k": 5}).json()
        assert [i["item_id"] for i in top["items"]] == [
            i.decode() for i in signature_top_k(exports["mf"], [user], 5)["item_ids"][0]
        ]

        client.set_registered_model_alias(cfg.registered_model_name, "champion", versions[1])
        deadline = time.monotonic() + 20
        while requests.get(f"{s.base}/readyz").json()["model_revision"] != versions[1]:
            assert time.monotonic() < deadline, "the alias move was not picked up"
            time.sleep(0.2)
        top = requests.get(f"{s.base}/v1/recommend", params={"user_id": user, "k": 5}).json()
        assert [i["item_id"] for i in top["items"]] == [
            i.decode() for i in signature_top_k(exports["mf2"], [user], 5)["item_ids"][0]
        ]
        assert requests.get(f"{s.base}/v1/model").json()["metrics"] == {"ndcg_at_10": 1.25, "rmse": 0.9}


def test_concurrent_requests_share_model_calls(exports, toy_data):
    """The micro-batcher answers each request as its own model call would, in fewer calls."""
    model = load(ModelSource(path=exports["mf2"]))  # scored by the graph: what the batcher is for
    assert not model.instant
    calls: list[int] = []

    def call(m, users, k):
        calls.append(len(users))
        return m.recommend(users, k)

    users = toy_data.users["user_id"].astype(str).tolist()[:32] + ["nobody"]
    ks = [1 + n % MAX_K for n in range(len(users))]

    async def run() -> list:
        batcher = MicroBatcher(call)
        batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(model, [u], k) for u, k in zip(users, ks)))
        finally:
            await batcher.stop()

    answers = asyncio.run(run())
    assert sum(calls) == len(users) and len(calls) < len(users)
    for user, k, (ids, titles, scores, known) in zip(users, ks, answers):
        e_ids, e_titles, e_scores, e_known = model.recommend([user], k)
        assert ids.tolist() == e_ids.tolist() and titles.tolist() == e_titles.tolist()
        np.testing.assert_allclose(scores, e_scores, rtol=1e-5, atol=1e-5)
        assert known.tolist() == e_known.tolist() == [user != "nobody"]


def test_model_metadata_from_the_pipeline_files(tmp_path, exports):
    """An export at <root>/models/export shows the model name, metrics and data fingerprint beside it."""
    paths = Paths(tmp_path)
    shutil.copytree(exports["mf"], paths.export)
    write_json(paths.train_summary, {"model": "mf", "train_seconds": 1.0})
    write_json(paths.reports / "metrics.json", {"ndcg_at_10": 0.25, "recall_at_10": None, "rmse": 0.9})
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  preprocess:\n    cmd: recpipe preprocess\n"
        "    outs:\n    - path: data/processed\n      md5: 0123abcd.dir\n"
    )
    meta = load(ModelSource(path=paths.export)).metadata
    assert meta["model"] == "mf" and meta["data_fingerprint"] == "0123abcd"
    assert meta["metrics"] == {"ndcg_at_10": 0.25, "rmse": 0.9}  # headline metrics that exist, nothing else
    elsewhere = load(ModelSource(path=exports["mf"])).metadata
    assert not {"model", "data_fingerprint", "metrics"} & set(elsewhere)
