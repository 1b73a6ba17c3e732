"""The model behind ``recpipe serve``: where it comes from, loading it, querying it, describing it.

A model source is an export directory (``models/export``) or an MLflow registry URI
(``models:/<name>@<alias>`` or ``models:/<name>/<version>``), resolved to the SavedModel the export
stage logged. ``LoadedModel`` holds one loaded export with numpy-level query methods (thread-safe:
TensorFlow signatures can be called from several threads) and the metadata ``GET /v1/model`` shows.
``ModelSource.revision`` says which model the source points at now, so a watcher can see it move.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from recpipe.errors import RecpipeError
from recpipe.evaluation.headline import HEADLINE_METRICS  # what ``GET /v1/model`` shows when available
from recpipe.paths import Paths
from recpipe.serving.export import INFO_FILE
from recpipe.serving.export import SIGNATURE as TOP_K
from recpipe.serving.similar import SIGNATURE as SIMILAR

Ranked = tuple[np.ndarray, np.ndarray, np.ndarray]  # item_ids, titles, scores, best first
REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")
# the probe asks for "every item" to learn the export's k cap (``min(max_k, n_items)``)
_K_PROBE = 2**31 - 1


@dataclass(frozen=True)
class ModelSource:
    """An export directory (``path``) or a registered model (``name`` with ``alias`` or ``version``)."""

    path: Path | None = None
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ModelSource:
        """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a directory path."""
        if spec.startswith("models:/"):
            m = REGISTRY_URI.match(spec)
            if m is None:
                raise RecpipeError(f"--model {spec!r}: expected models:/<name>@<alias> or models:/<name>/<version>")
            return cls(name=m["name"], alias=m["alias"], version=m["version"])
        return cls(path=Path(spec))

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"

    def revision(self) -> str:
        """What the source points at now: the registered version, or the export's identity on disk
        (``save_server`` replaces the directory whole, so a new export has a new inode and mtime)."""
        if self.path is None:
            return str(self._registry_version().version)
        try:
            st = (self.path / "saved_model.pb").stat()
        except OSError as e:
            raise RecpipeError(f"{self.path}: no exported model (saved_model.pb: {e.strerror})") from e
        return f"{st.st_ino}:{st.st_mtime_ns}"

    def _registry_version(self) -> Any:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        from recpipe.tracking import tracking_uri

        client = MlflowClient(tracking_uri())
        assert self.name is not None  # a registry source
        try:
            if self.alias is not None:
                return client.get_model_version_by_alias(self.name, self.alias)
            return client.get_model_version(self.name, str(self.version))
        except MlflowException as e:
            raise RecpipeError(f"{self} in the MLflow registry at {tracking_uri()}: {e.message}") from e


@dataclass(frozen=True)
class RankedAnswers:
    """Every answer of a ranked export (``RankedRetriever``), read from its tables once at load.

    Row r < n_users holds known user r's ranking at the export's k cap, the last row the popularity
    ranking that unknown users get (from the signature itself); the signature's answer at any k is
    the first k columns. Item -1 is an empty slot (id and title "", score -inf). Answering is array
    indexing, with no TensorFlow call.
    """

    rows: dict[str, int]  # user id -> row
    items: np.ndarray  # int32 [n_users + 1, k cap], -1: empty slot
    scores: np.ndarray  # float32 [n_users + 1, k cap]
    item_ids: np.ndarray  # bytes [n_items + 1], the last one b""
    titles: np.ndarray  # bytes [n_items + 1], the last one b""

    @classmethod
    def read(cls, module: Any) -> RankedAnswers | None:
        """The answers of ``module`` (a loaded export), or None when it does not rank ahead."""
        retriever: Any = getattr(module, "retriever", None)
        if not hasattr(module, "user_ids") or not hasattr(retriever, "ranked_items"):
            return None
        item_ids = np.append(module.item_ids.numpy(), np.array([b""], object))
        titles = np.append(module.titles.numpy(), np.array([b""], object))
        scores = retriever.ranked_scores.numpy()
        items = np.where(np.isneginf(scores), -1, retriever.ranked_items.numpy())
        # the popularity answer, as the signature gives it to an unknown user
        popular = module.signatures[TOP_K](user_id=tf.constant([""]), k=tf.constant(scores.shape[1]))
        position = {item: n for n, item in enumerate(item_ids[:-1])}
        popular_items = [position.get(item, -1) for item in popular["item_ids"].numpy()[0]]
        return cls(
            rows={u.decode(): n for n, u in enumerate(module.user_ids.numpy())},
            items=np.vstack([items, np.array(popular_items, np.int32)]).astype(np.int32),
            scores=np.vstack([scores, popular["scores"].numpy()]),
            item_ids=item_ids,
            titles=titles,
        )

    def recommend(self, user_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As ``LoadedModel.recommend``."""
        unknown = len(self.rows)
        rows = np.fromiter((self.rows.get(u, unknown) for u in user_ids), np.int64, len(user_ids))
        k = max(0, min(k, self.items.shape[1]))
        items = self.items[rows, :k]
        return self.item_ids[items], self.titles[items], self.scores[rows, :k], rows < unknown


@dataclass
class LoadedModel:
    """One loaded export and what is known about it; see the module docstring."""

    module: Any  # the restored tf.Module: keep it alive, signatures hold weak references to its variables
    revision: str
    metadata: dict[str, Any]
    max_k: int = field(init=False)
    _workdir: Any = None  # a registry download, removed when this object goes

    def __post_init__(self) -> None:
        self.top_k = self.module.signatures[TOP_K]
        self.similar = self.module.signatures.get(SIMILAR)
        self.max_k = int(self.top_k(user_id=tf.constant([""]), k=tf.constant(_K_PROBE))["item_ids"].shape[1])
        self.metadata["max_k"] = self.max_k
        self.metadata["similar_items"] = self.similar is not None
        self.metadata["revision"] = self.revision
        self.metadata["loaded_at"] = datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="seconds")
        self.ranked = RankedAnswers.read(self.module)
        # recpipe_export.json's vocabulary (export.scoring): ranked ahead, scored online, or a ScaNN index
        online = "scann" if self.metadata.get("index") == "scann" else "online"
        self.metadata["scoring"] = "ranked" if self.ranked is not None else online
        # known users: the export's user vocabulary (older exports without one: their is_known function)
        self._users = (
            frozenset(u.decode() for u in self.module.user_ids.numpy()) if hasattr(self.module, "user_ids") else None
        )
        self._catalog: tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def instant(self) -> bool:
        """Whether ``recommend`` is array indexing (a ranked export), cheap enough for an event loop."""
        return self.ranked is not None

    def recommend(self, user_ids: list[str], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(item_ids, titles, scores [n, k], known [n]) as ``serving_default`` answers them; trailing
        "" slots mean the user has fewer than k unseen items."""
        if self.ranked is not None:
            return self.ranked.recommend(user_ids, k)
        users = tf.constant(user_ids, tf.string)
        out = self.top_k(user_id=users, k=tf.constant(k, tf.int32))
        if self._users is not None:
            known = np.fromiter((u in self._users for u in user_ids), bool, len(user_ids))
        else:
            known = self.module.is_known(users).numpy()
        return out["item_ids"].numpy(), out["titles"].numpy(), out["scores"].numpy(), known

    def similar_to_features(self, title: str, genres: str, year: float | None, k: int) -> Ranked:
        """(item_ids, titles, scores) [k] for a new item from the ``similar_items`` signature."""
        assert self.similar is not None
        out = self.similar(
            title=tf.constant([title]),
            genres=tf.constant([genres]),
            year=tf.constant([np.nan if year is None else year], tf.float32),
            k=tf.constant(k, tf.int32),
        )
        return out["item_ids"].numpy()[0], out["titles"].numpy()[0], out["scores"].numpy()[0]

    def similar_to_item(self, item_id: str, k: int) -> Ranked | None:
        """(item_ids, titles, scores) [<= k] of the catalog items nearest (cosine of the export's
        candidate vectors) to catalog item ``item_id``, itself left out; None for an unknown item."""
        index, ids, titles, vectors = self._similar_catalog()
        row = index.get(item_id)
        if row is None:
            return None
        scores = vectors @ vectors[row]
        scores[row] = -np.inf
        k = min(k, len(ids) - 1)
        top = np.argpartition(-scores, k - 1)[:k] if k > 0 else np.array([], np.int64)
        top = top[np.lexsort((top, -scores[top]))]  # best first, ties by catalog order
        return ids[top], titles[top], scores[top]

    def _similar_catalog(self) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]:
        """The ``similar_items`` module's item ids, titles and (unit) vectors, read once."""
        if self._catalog is None:
            sim = self.module.similar
            ids = sim.item_ids.numpy()
            self._catalog = (
                {i.decode(): n for n, i in enumerate(ids)},
                ids,
                sim.titles.numpy(),
                sim.catalog.numpy(),
            )
        return self._catalog


def load(source: ModelSource) -> LoadedModel:
    """Load what ``source`` points at now, with its metadata."""
    if source.path is not None:
        revision = source.revision()
        info = _read_json(source.path / INFO_FILE) or {}
        module = _load_saved_model(source.path, info.get("index") == "scann")
        exported = datetime.fromtimestamp((source.path / "saved_model.pb").stat().st_mtime, UTC)
        meta = {
            "source": str(source),
            "export_path": str(source.path.resolve()),
            "index": info.get("index"),
            "exported_at": exported.isoformat(timespec="seconds"),
            **_pipeline_metadata(source.path),
        }
        return LoadedModel(module, revision, meta)
    return _load_registered(source)


def _load_registered(source: ModelSource) -> LoadedModel:
    import mlflow
    import yaml
    from mlflow import MlflowClient

    from recpipe.tracking import tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    version = source._registry_version()
    workdir = tempfile.TemporaryDirectory(prefix="recpipe-serve-")
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{version.name}/{version.version}",
            dst_path=workdir.name,
            tracking_uri=tracking_uri(),
        )
    )
    flavor = (yaml.safe_load((local / "MLmodel").read_text()).get("flavors") or {}).get("tensorflow") or {}
    if "saved_model_dir" not in flavor:
        raise RecpipeError(f"{source} (version {version.version}): not a TensorFlow SavedModel from recpipe export")
    requirements = (local / "requirements.txt").read_text() if (local / "requirements.txt").exists() else ""
    module = _load_saved_model(local / flavor["saved_model_dir"], "scann" in requirements)
    run = MlflowClient(tracking_uri()).get_run(version.run_id) if version.run_id else None
    meta = {
        "source": str(source),
        "export_path": str(local / flavor["saved_model_dir"]),
        "registered_name": version.name,
        "registered_version": str(version.version),
        "aliases": sorted(version.aliases or []),
        "run_id": version.run_id,
        "exported_at": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
        "index": "scann" if "scann" in requirements else "brute_force",
        **(_run_metadata(run) if run is not None else {}),
    }
    return LoadedModel(module, str(version.version), meta, _workdir=workdir)


def _load_saved_model(path: Path, needs_scann: bool) -> Any:
    if not (path / "saved_model.pb").exists():
        raise RecpipeError(f"{path}: no exported model; run `recpipe export` (or `dvc repro`)")
    if needs_scann:
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the Scann ops)
    return tf.saved_model.load(str(path))


def _pipeline_metadata(export: Path) -> dict[str, Any]:
    """Model name, headline metrics and data fingerprint from the pipeline files around an export
    at the pipeline's own location (``<root>/models/export``); empty for an export elsewhere."""
    root = export.resolve().parent.parent
    paths = Paths(root)
    if paths.export.resolve() != export.resolve():
        return {}
    from recpipe.lineage import locked_hashes

    summary = _read_json(paths.train_summary) or {}
    metrics = _read_json(paths.reports / "metrics.json") or {}
    processed = locked_hashes({"preprocess"}, root).get("data/processed")
    return {
        "model": summary.get("model"),
        # as recpipe.tracking.dataset_fingerprint: the DVC hash of data/processed without ".dir"
        "data_fingerprint": processed.removesuffix(".dir") if processed else None,
        "metrics": {m: metrics[m] for m in HEADLINE_METRICS if metrics.get(m) is not None},
    }


def _run_metadata(run: Any) -> dict[str, Any]:
    """Model name, headline metrics, data fingerprint and git commit from the export's MLflow run."""
    from recpipe.tracking import TAG_FINGERPRINT

    tags, metrics = run.data.tags, run.data.metrics
    return {
        "model": tags.get("model"),
        "data_fingerprint": tags.get(TAG_FINGERPRINT),
        "git_commit": tags.get("git_commit"),
        "metrics": {m: metrics[m] for m in HEADLINE_METRICS if m in metrics},
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
