"""Load the preprocess stage's outputs (vocabularies and splits) for training, evaluation, export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recpipe.data.raw import reading
from recpipe.errors import DataError, RecpipeError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Processed:
    """Vocabularies (``users``, ``items``: id, ``index``, features) and the three splits.

    Each split carries ``user_idx`` and ``item_idx`` (int32 vocabulary indices) next to the
    contract columns.
    """

    users: pd.DataFrame
    items: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def split(self, name: str) -> pd.DataFrame:
        return getattr(self, name)

    def matrix(self, *splits: str) -> sp.csr_matrix:
        """Binary user x item matrix (float32 CSR) of the interactions in ``splits``."""
        frames = [self.split(s) for s in splits]
        rows = np.concatenate([f["user_idx"].to_numpy() for f in frames])
        cols = np.concatenate([f["item_idx"].to_numpy() for f in frames])
        m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0  # duplicates across splits count once
        return m

    def item_popularity(self) -> np.ndarray:
        """Train interaction count per item index (float64 [n_items])."""
        return np.bincount(self.train["item_idx"].to_numpy(), minlength=self.n_items).astype(np.float64)


def load_processed(path: str | Path) -> Processed:
    """Read data/processed/ and attach vocabulary indices to every split."""
    path = Path(path)
    if not (path / "items.parquet").exists():
        raise RecpipeError(f"{path}: no preprocessed data; run `recpipe preprocess` (or `dvc repro`)")
    users, items = _read(path / "users.parquet", "index", "user_id"), _read(path / "items.parquet", "index", "item_id")
    uidx = pd.Series(users["index"].to_numpy(np.int32), index=users["user_id"].to_numpy(object))
    iidx = pd.Series(items["index"].to_numpy(np.int32), index=items["item_id"].to_numpy(object))
    splits = {}
    for name in SPLITS:
        df = _read(path / f"{name}.parquet", "user_id", "item_id")
        df["user_idx"] = uidx.reindex(df["user_id"].to_numpy(object)).to_numpy(np.int32)
        df["item_idx"] = iidx.reindex(df["item_id"].to_numpy(object)).to_numpy(np.int32)
        splits[name] = df
    users = users.sort_values("index", ignore_index=True)
    items = items.sort_values("index", ignore_index=True)
    return Processed(users=users, items=items, **splits)


def _read(file: Path, *columns: str) -> pd.DataFrame:
    """A data/processed table that must have ``columns``; a damaged one is a DataError saying to re-run."""
    hint = "Re-run `recpipe preprocess` (or `dvc repro preprocess`)"
    with reading(file, hint):
        df = pd.read_parquet(file)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(
            str(file), f"missing column(s) {', '.join(missing)}: damaged or not written by recpipe", hint=hint
        )
    return df
