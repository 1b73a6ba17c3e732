"""The exported top-K recommender: a self-contained TensorFlow SavedModel (models/export/).

``build_server`` wraps a trained model with everything serving needs (user and item vocabularies,
titles, train popularity, each user's seen items) in one ``tf.Module`` whose ``serving_default``
signature is ``(user_id: string [None], k: int32 scalar) -> {item_ids, scores, titles}`` [batch, k],
best first, never an item the user saw in train or val. Unknown users get the popularity ranking.
k is capped at ``min(max_k, n_items)``; when fewer than k items are left for a user the last slots
hold item id "" and score -inf. Models that embed new items from their features (hybrid, content)
also get a ``similar_items`` signature (``recpipe.serving.similar``). ``recpipe.serving.load``
reads an export back.

Exact exports of small catalogs (``users x items <= export.precompute_max_scores``) hold every
known user's ranking, computed at export time (``RankedRetriever``): serving is a row lookup, the
same answers as scoring on-line. Larger ones score on-line with the model's own graph
(``ExactRetriever``: the model's ``score_all`` traced into the signature, e.g. all of a blend's
members in one graph). ``recpipe_export.json`` says which (``scoring``: ``ranked``, ``online`` or
``scann``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.io import atomic_dir, write_json
from recpipe.models.base import RecModel
from recpipe.serving.retrieval import NEG_INF, ExactRetriever, RankedRetriever, ScannRetriever, query_vectors
from recpipe.serving.similar import SIGNATURE as SIMILAR_SIGNATURE
from recpipe.serving.similar import SimilarItems, supports_similar

SIGNATURE = "serving_default"
INFO_FILE = "recpipe_export.json"
INDEXES = ("brute_force", "scann")


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
        similar: SimilarItems | None = None,
    ) -> None:
        super().__init__(name="recpipe_top_k")
        self.n_users, self.n_items = len(user_ids), len(item_ids)
        self.k_cap = k_cap(max_k, self.n_items)
        self.user_index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(user_ids, tf.string), tf.range(self.n_users, dtype=tf.int32)
            ),
            default_value=-1,
        )
        self.user_ids = tf.Variable(tf.constant(user_ids, tf.string), trainable=False, name="user_ids")
        self.item_ids = tf.Variable(tf.constant(item_ids, tf.string), trainable=False, name="item_ids")
        self.titles = tf.Variable(tf.constant(titles, tf.string), trainable=False, name="titles")
        self.popularity = tf.Variable(popularity.astype(np.float32), trainable=False, name="popularity")
        # one extra, empty row (index n_users) stands for unknown users
        splits = np.append(seen.row_splits.numpy(), seen.row_splits.numpy()[-1])
        self.seen_splits = tf.Variable(splits.astype(np.int64), trainable=False, name="seen_splits")
        self.seen_items = tf.Variable(seen.flat_values.numpy().astype(np.int32), trainable=False, name="seen_items")
        self.retriever = retriever
        self.similar = similar  # model=hybrid / content: similar items for a new item's features

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
        scores, items = self.retriever.top_k(tf.maximum(idx, 0), batch_seen, k)
        pop_scores, pop_items = tf.math.top_k(self.popularity, k)
        scores = tf.where(known[:, None], scores, pop_scores[None, :])
        items = tf.where(known[:, None], items, pop_items[None, :])
        found = scores > NEG_INF
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


# the splits whose items a user has seen: never recommended to them
SEEN_SPLITS = ("train", "val")


def k_cap(max_k: int, n_items: int) -> int:
    """The largest k served: ``export.max_k``, at most the number of items."""
    return min(int(max_k), n_items)


def seen_items(m: sp.csr_matrix) -> tf.RaggedTensor:
    """Each user's item indices (the row's nonzeros of ``m``), as a ragged int32 [n_users, None]."""
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


def build_server(model: RecModel, data: Processed, export_cfg: Any) -> TopKServer:
    """The serving module for ``model``: exact ``score_all`` ranking or a ScaNN index (export.index)."""
    index = export_cfg.index
    if index not in INDEXES:
        raise RecpipeError(f"export.index must be one of {', '.join(INDEXES)}, not {index!r}")
    seen = data.matrix(*SEEN_SPLITS)
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
    elif data.n_users * data.n_items <= int(export_cfg.precompute_max_scores):
        retriever = RankedRetriever.rank(model, seen, k_cap(export_cfg.max_k, data.n_items))
    else:
        retriever = ExactRetriever(model, data.n_items)
    server = TopKServer(
        user_ids=data.users["user_id"].astype(str).to_numpy(dtype=object),
        item_ids=server_item_ids(data),
        titles=item_titles(data.items),
        popularity=data.item_popularity(),
        seen=seen_items(seen),
        retriever=retriever,
        max_k=int(export_cfg.max_k),
        similar=SimilarItems(model, server_item_ids(data), item_titles(data.items), int(export_cfg.max_k))
        if supports_similar(model)
        else None,
    )
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


def scoring(server: TopKServer) -> str:
    """How ``server`` finds a known user's items: ``ranked`` ahead, ``online`` exact, or ``scann``."""
    return {RankedRetriever: "ranked", ExactRetriever: "online", ScannRetriever: "scann"}[type(server.retriever)]


def signatures(server: TopKServer) -> dict[str, Any]:
    """The export's signatures: ``serving_default``, and ``similar_items`` when the model has it."""
    out = {SIGNATURE: server.top_k.get_concrete_function()}
    if server.similar is not None:
        out[SIMILAR_SIGNATURE] = server.similar.top_k.get_concrete_function()
    return out


def save_options(index: str) -> tf.saved_model.SaveOptions:
    """SavedModel options; a ScaNN index needs its op namespace allowed."""
    return tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if index == "scann" else None)


def save_server(server: TopKServer, path: str | Path, index: str, extra: Mapping[str, Any] | None = None) -> None:
    """Save ``server`` as a SavedModel at ``path``, replacing it atomically; ``extra`` maps file
    names to objects written beside it as JSON (the export stage's promotion.json)."""
    info = {
        "index": index,
        "scoring": scoring(server),
        "n_users": server.n_users,
        "n_items": server.n_items,
        "max_k": server.k_cap,
    }
    with atomic_dir(path) as tmp, _quiet_keras_save():
        tf.saved_model.save(
            server,
            str(tmp),
            signatures=signatures(server),
            options=save_options(index),
        )
        content_uuid(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
        for name, obj in (extra or {}).items():
            write_json(tmp / name, obj)


def content_uuid(saved_model: Path) -> None:
    """Replace the random uuid TensorFlow writes into a SavedModel's fingerprint.pb with one derived
    from the fingerprint's own hashes, so that the same model saves to the same bytes (and DVC sees
    an unchanged export as unchanged)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    file = Path(saved_model) / "fingerprint.pb"
    if not file.exists():
        return
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(file.read_bytes())
    fingerprint.uuid = ""
    digest = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(digest[:16], "big"))
    file.write_bytes(fingerprint.SerializeToString(deterministic=True))


def register_server(server: TopKServer, export_cfg: Any, example_user: str) -> str | None:
    """Log ``server`` to the active MLflow run and register it as ``export_cfg.registered_model_name``.

    Logged with ``mlflow.tensorflow`` as a TF2 module: its pyfunc takes a 1-D array of user ids
    and returns the top ``max_k`` (``TopKServer.__call__``). Returns the registered version, or
    None when no run is active.
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    if mlflow.active_run() is None:
        return None
    text, ranked = np.dtype(object), (-1, -1)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(text, (-1,))]),
        outputs=Schema(
            [
                TensorSpec(text, ranked, "item_ids"),
                TensorSpec(np.dtype(np.float32), ranked, "scores"),
                TensorSpec(text, ranked, "titles"),
            ]
        ),
    )
    scann = ["tensorflow-recommenders", "scann"] if export_cfg.index == "scann" else []
    requirements = ["tensorflow", "tf-keras", *scann]
    try:
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
    except MlflowException as e:  # a tracking server with authentication (403) or expired credentials (401)
        if e.error_code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            raise
        raise RecpipeError(
            f"export.registered_model_name={export_cfg.registered_model_name!r}: the MLflow server at "
            f"{mlflow.get_tracking_uri()} refused to register the model ({e.message}). Ask its admin for "
            "permission on that registered model, or name one of your own"
        ) from None
    return None if info.registered_model_version is None else str(info.registered_model_version)
