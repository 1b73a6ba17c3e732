"""The exported top-K recommender: a self-contained TensorFlow SavedModel, and the commands around it.

``build_server`` wraps a trained model with everything serving needs (user and item vocabularies,
titles, train popularity, each user's seen items) in one ``tf.Module`` whose ``serving_default``
signature is ``(user_id: string [None], k: int32 scalar) -> {item_ids, scores, titles}`` [batch, k],
best first, never an item the user saw in train or val. Unknown users get the popularity ranking.
k is capped at ``min(max_k, n_items)``; when fewer than k items are left for a user the last slots
hold item id "" and score -inf. Models that can place a new item from its features (hybrid,
content) also get a ``similar_items`` signature (``recpipe.similar``).

Loading needs only TensorFlow (plus ``import tensorflow_recommenders`` or ``import scann`` for a
ScaNN export, which registers ScaNN's ops): ``tf.saved_model.load(path).signatures["serving_default"]``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf
from google.protobuf.message import DecodeError

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError, UsageError
from recpipe.io import atomic_dir
from recpipe.models.base import RecModel
from recpipe.similar import SIGNATURE as SIMILAR_SIGNATURE
from recpipe.similar import SimilarItems, supports_similar
from recpipe.terminal import print_ranked

SIGNATURE = "serving_default"
INFO_FILE = "recpipe_export.json"
INDEXES = ("brute_force", "scann")
_NEG_INF = float("-inf")


class ExactRetriever(tf.Module):
    """Top-k by the model's own ``score_all`` over the whole catalog."""

    def __init__(self, model: RecModel) -> None:
        super().__init__(name="exact")
        self.model = model

    def top_k(self, user_idx: tf.Tensor, excluded: tf.Tensor, k: tf.Tensor, max_seen: tf.Tensor):
        scores = tf.cast(self.model.score_all(user_idx), tf.float32)
        return tf.math.top_k(tf.where(excluded, _NEG_INF, scores), k)


class ScannRetriever(tf.Module):
    """Approximate top-k: a ScaNN index over candidate vectors, queried with stored user vectors.

    The index is asked for ``k + max_seen`` neighbours so that k remain after dropping seen items.
    """

    def __init__(self, query_vectors: np.ndarray, candidate_vectors: np.ndarray, scann_cfg: Any) -> None:
        import tensorflow_recommenders as tfrs

        super().__init__(name="scann")
        n_items = len(candidate_vectors)
        self.n_items = n_items
        self.query_vectors = tf.Variable(query_vectors, trainable=False, name="query_vectors")
        self.index = tfrs.layers.factorized_top_k.ScaNN(
            k=min(10, n_items),
            num_leaves=min(int(scann_cfg.num_leaves), n_items),
            num_leaves_to_search=min(int(scann_cfg.num_leaves_to_search), int(scann_cfg.num_leaves), n_items),
            training_iterations=int(scann_cfg.training_iterations),
            dimensions_per_block=int(scann_cfg.dimensions_per_block),
            num_reordering_candidates=scann_cfg.num_reordering_candidates,
        )
        self.index.index(tf.constant(candidate_vectors, tf.float32))

    def top_k(self, user_idx: tf.Tensor, excluded: tf.Tensor, k: tf.Tensor, max_seen: tf.Tensor):
        n_query = tf.clip_by_value(k + max_seen, 1, self.n_items)
        dist, cand = self.index(tf.gather(self.query_vectors, user_idx), k=n_query)
        cand = tf.cast(cand, tf.int32)
        # ScaNN may find fewer neighbours than asked (few points in the searched leaves): pad
        short = n_query - tf.shape(cand)[1]
        dist = tf.pad(dist, [[0, 0], [0, short]], constant_values=_NEG_INF)
        cand = tf.pad(cand, [[0, 0], [0, short]])
        dist = tf.where(tf.gather(excluded, cand, batch_dims=1), _NEG_INF, dist)
        vals, pos = tf.math.top_k(dist, k)
        return vals, tf.gather(cand, pos, batch_dims=1)


class TopKServer(tf.Module):
    """Vocabularies, seen items and popularity around a retriever; see the module docstring."""

    def __init__(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        titles: np.ndarray,
        popularity: np.ndarray,
        seen: tf.RaggedTensor,
        retriever: tf.Module,
        max_k: int,
    ) -> None:
        super().__init__(name="recpipe_top_k")
        self.n_users, self.n_items = len(user_ids), len(item_ids)
        self.k_cap = min(int(max_k), self.n_items)
        self.user_index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(user_ids, tf.string), tf.range(self.n_users, dtype=tf.int32)
            ),
            default_value=-1,
        )
        self.item_ids = tf.Variable(tf.constant(item_ids, tf.string), trainable=False, name="item_ids")
        self.titles = tf.Variable(tf.constant(titles, tf.string), trainable=False, name="titles")
        self.popularity = tf.Variable(popularity.astype(np.float32), trainable=False, name="popularity")
        # one extra, empty row (index n_users) stands for unknown users
        splits = np.append(seen.row_splits.numpy(), seen.row_splits.numpy()[-1])
        self.seen_splits = tf.Variable(splits.astype(np.int64), trainable=False, name="seen_splits")
        self.seen_items = tf.Variable(seen.flat_values.numpy().astype(np.int32), trainable=False, name="seen_items")
        self.retriever = retriever

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="user_id"), tf.TensorSpec([], tf.int32, name="k")]
    )
    def top_k(self, user_id: tf.Tensor, k: tf.Tensor) -> dict[str, tf.Tensor]:
        """Best ``k`` unseen items per user: ``item_ids``, ``scores``, ``titles`` [batch, k]."""
        k = tf.clip_by_value(k, 0, self.k_cap)
        idx = self.user_index.lookup(user_id)
        known = idx >= 0
        seen = tf.RaggedTensor.from_row_splits(self.seen_items, self.seen_splits, validate=False)
        batch_seen = tf.gather(seen, tf.where(known, idx, self.n_users))
        coords = tf.stack([tf.cast(batch_seen.value_rowids(), tf.int32), batch_seen.flat_values], axis=1)
        counts = tf.scatter_nd(coords, tf.ones_like(coords[:, 0]), [tf.shape(user_id)[0], self.n_items])
        max_seen = tf.cast(tf.reduce_max(tf.concat([batch_seen.row_lengths(), [0]], 0)), tf.int32)
        scores, items = self.retriever.top_k(tf.maximum(idx, 0), counts > 0, k, max_seen)
        pop_scores, pop_items = tf.math.top_k(self.popularity, k)
        scores = tf.where(known[:, None], scores, pop_scores[None, :])
        items = tf.where(known[:, None], items, pop_items[None, :])
        found = scores > _NEG_INF
        return {
            "item_ids": tf.where(found, tf.gather(self.item_ids, items), ""),
            "scores": scores,
            "titles": tf.where(found, tf.gather(self.titles, items), ""),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def __call__(self, user_id: tf.Tensor) -> dict[str, tf.Tensor]:
        """``top_k`` at the largest k served (what MLflow's pyfunc wrapper calls)."""
        return self.top_k(user_id, tf.constant(self.k_cap, tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def is_known(self, user_id: tf.Tensor) -> tf.Tensor:
        """Whether each user id is in the vocabulary (unknown ones get the popularity ranking)."""
        return self.user_index.lookup(user_id) >= 0


def seen_items(data: Processed, splits: tuple[str, ...] = ("train", "val")) -> tf.RaggedTensor:
    """Each user's item indices in ``splits``, as a ragged int32 [n_users, None]."""
    m = data.matrix(*splits)
    return tf.RaggedTensor.from_row_splits(m.indices.astype(np.int32), m.indptr.astype(np.int64))


def item_titles(items: pd.DataFrame) -> np.ndarray:
    """Display titles by item index: "Title (year)" when the year is known, the item id without a title."""
    ids = items["item_id"].astype(str)
    if "title" not in items.columns:
        return ids.to_numpy(dtype=object)
    titles = items["title"].astype(object).where(items["title"].notna(), ids).astype(str)
    if "year" in items.columns:
        year = pd.to_numeric(items["year"], errors="coerce")
        suffix = year.map(lambda y: "" if pd.isna(y) else f" ({int(y)})")
        titles = titles + suffix
    return titles.to_numpy(dtype=object)


def query_vectors(model: RecModel, n_users: int, batch_size: int = 4096) -> np.ndarray:
    """A factorized model's query vectors for every user index."""
    parts = [
        np.asarray(model.query_vectors(tf.range(s, min(s + batch_size, n_users), dtype=tf.int32)), np.float32)
        for s in range(0, n_users, batch_size)
    ]
    return np.concatenate(parts)


def build_server(model: RecModel, data: Processed, export_cfg: Any) -> TopKServer:
    """The serving module for ``model``: exact ``score_all`` ranking or a ScaNN index (export.index)."""
    index = export_cfg.index
    if index not in INDEXES:
        raise RecpipeError(f"export.index must be one of {', '.join(INDEXES)}, not {index!r}")
    if index == "scann":
        candidates = model.candidate_vectors()
        if candidates is None:
            raise RecpipeError(
                f"export.index=scann needs a factorized model (query and candidate vectors); "
                f"{type(model).__name__} is not one. Use export.index=brute_force."
            )
        retriever: tf.Module = ScannRetriever(
            query_vectors(model, data.n_users), np.asarray(candidates, np.float32), export_cfg.scann
        )
    else:
        retriever = ExactRetriever(model)
    server = TopKServer(
        user_ids=data.users["user_id"].astype(str).to_numpy(dtype=object),
        item_ids=server_item_ids(data),
        titles=item_titles(data.items),
        popularity=data.item_popularity(),
        seen=seen_items(data),
        retriever=retriever,
        max_k=int(export_cfg.max_k),
    )
    if supports_similar(model):  # model=hybrid / content: similar items for a new item's features too
        server.similar = SimilarItems(model, server_item_ids(data), item_titles(data.items), int(export_cfg.max_k))
    try:  # trace now: a model whose score_all needs a known batch size fails here, not mid-save
        server.top_k.get_concrete_function()
    except (TypeError, ValueError, NotImplementedError) as e:
        raise RecpipeError(
            f"cannot export {type(model).__name__}: its score_all does not trace in a tf.function with "
            f"an unknown batch size ({str(e).strip().splitlines()[-1].strip()})"
        ) from e
    return server


@contextmanager
def _quiet_keras_save() -> Iterator[None]:
    """Silence TensorFlow's 'Skipping full serialization of TF-Keras layer ... not built' warnings:
    the export needs the model's variables and traced functions, not Keras' own serialization."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def server_item_ids(data: Processed) -> np.ndarray:
    """Item ids by item index, as served."""
    return data.items["item_id"].astype(str).to_numpy(dtype=object)


def signatures(server: TopKServer) -> dict[str, Any]:
    """The export's signatures: ``serving_default``, and ``similar_items`` when the model has it."""
    out = {SIGNATURE: server.top_k.get_concrete_function()}
    if hasattr(server, "similar"):
        out[SIMILAR_SIGNATURE] = server.similar.top_k.get_concrete_function()
    return out


def save_options(index: str) -> tf.saved_model.SaveOptions:
    """SavedModel options; a ScaNN index needs its op namespace allowed."""
    return tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if index == "scann" else None)


def save_server(server: TopKServer, path: str | Path, index: str) -> None:
    """Save ``server`` as a SavedModel at ``path``, replacing it atomically."""
    info = {"index": index, "n_users": server.n_users, "n_items": server.n_items, "max_k": server.k_cap}
    with atomic_dir(path) as tmp, _quiet_keras_save():
        tf.saved_model.save(
            server, str(tmp), signatures=signatures(server), options=save_options(index),
        )
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def register_server(server: TopKServer, export_cfg: Any, example_user: str) -> str | None:
    """Log ``server`` to the active MLflow run and register it as ``export_cfg.registered_model_name``.

    Logged with ``mlflow.tensorflow`` as a TF2 module: its pyfunc takes a 1-D array of user ids
    and returns the top ``max_k`` (``TopKServer.__call__``). Returns the registered version, or
    None when no run is active.
    """
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    if mlflow.active_run() is None:
        return None
    text, ranked = np.dtype(object), (-1, -1)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(text, (-1,))]),
        outputs=Schema([
            TensorSpec(text, ranked, "item_ids"),
            TensorSpec(np.dtype(np.float32), ranked, "scores"),
            TensorSpec(text, ranked, "titles"),
        ]),
    )
    requirements = ["tensorflow", "tf-keras"] + (["tensorflow-recommenders", "scann"] if export_cfg.index == "scann" else [])
    with _quiet_keras_save():
        info = mlflow.tensorflow.log_model(
            server,
            name="serving_model",
            signature=signature,
            input_example=np.array([example_user], dtype=object),
            registered_model_name=export_cfg.registered_model_name,
            pip_requirements=[f"{p}=={version(p)}" for p in requirements],
            saved_model_kwargs={
                "signatures": signatures(server),
                "options": save_options(export_cfg.index),
            },
        )
    return None if info.registered_model_version is None else str(info.registered_model_version)


def export_info(path: str | Path) -> dict[str, Any]:
    """What ``save_server`` recorded about an export (index kind, sizes)."""
    info = Path(path) / INFO_FILE
    if not info.is_file():
        raise RecpipeError(f"{path}: no exported model; run `recpipe export` (or `dvc repro`)")
    try:
        data = json.loads(info.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RecpipeError(f"{info}: unreadable ({e}); re-run `recpipe export` (or `dvc repro export`)") from None
    if not isinstance(data, dict) or not isinstance(data.get("max_k"), int) or "index" not in data:
        raise RecpipeError(f"{info}: not an export description; re-run `recpipe export` (or `dvc repro export`)")
    return data


def load_export(path: str | Path) -> Any:
    """Load an export (importing ScaNN's ops first when it needs them).

    Keep the returned object alive while calling ``.signatures["serving_default"]``: the
    signature only holds weak references to the variables.
    """
    if export_info(path)["index"] == "scann":
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the Scann ops)
    try:
        return tf.saved_model.load(str(path))
    except (OSError, tf.errors.OpError, DecodeError) as e:
        reason = " ".join(str(e).split())[:300]
        raise RecpipeError(
            f"{path}: cannot load the exported model ({type(e).__name__}: {reason}); "
            "re-run `recpipe export` (or `dvc repro export`)"
        ) from None


def recommend(export: Any, user_ids: list[str], k: int) -> pd.DataFrame:
    """Top-k rows (user_id, rank, item_id, title, score) per user from a loaded export."""
    out = export.signatures[SIGNATURE](user_id=tf.constant(user_ids, tf.string), k=tf.constant(k, tf.int32))
    items, titles, scores = (out[name].numpy() for name in ("item_ids", "titles", "scores"))
    rows = [
        {"user_id": user, "rank": r + 1, "item_id": items[b, r].decode(),
         "title": titles[b, r].decode(), "score": float(scores[b, r])}
        for b, user in enumerate(user_ids)
        for r in range(items.shape[1])
        if items[b, r]
    ]
    return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "title", "score"])


def recommend_command(user: str, k: int, export_dir: Path) -> int:
    """``recpipe recommend``: print a user's top-k (rank, item id, title, score) from the export."""
    check_k(k, export_dir)
    export = load_export(export_dir)
    recs = recommend(export, [user], k)
    known = bool(export.is_known(tf.constant([user])).numpy()[0])
    note = "" if known else " (unknown user: most popular items)"
    print_ranked(f"top {len(recs)} for user {user}{note}", recs, 9)
    return 0


def check_k(k: int, export_dir: str | Path) -> None:
    """Refuse a ``-k`` outside [1, the export's max_k] (an export never returns more than max_k items,
    and k is an int32 in the signature); the message says how to get more."""
    most = int(export_info(export_dir)["max_k"])
    if not 1 <= k <= most:
        raise UsageError(
            f"-k {k}: {export_dir} returns at most {most} items (export.max_k, capped at the catalog size); "
            f"use -k 1..{most}, or re-export with a larger max_k (`recpipe compose export.max_k=N`, then "
            "`dvc repro export`)"
        )
