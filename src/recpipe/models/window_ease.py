"""``model=window_ease``: EASE over the item pairs a user interacted with close together in time.

SLIST (Choi, Kim, Lee, Shim & Lee, "Session-aware Linear Item-Item Models for Session-based
Recommendation", WWW 2021) fits EASE's closed form (Steck 2019) to item pairs weighted by how
close they are in a session. Here each user's train history in time order (timestamp, then row
order; a source without timestamps keeps its row order) is one sequence, and the matrix EASE
inverts counts each pair of items ``k`` positions apart (``1 <= k <= window``) with weight
``decay^(k-1)`` instead of once per user; its diagonal is each item's number of users, as in
EASE's gram. Fitting (``B = -P / diag(P)`` with ``P = (G + lam I)^-1``, ``lam`` chosen on
validation), scoring (``X_u B``) and ``max_items`` are EASE's (``recpipe.models.classic.ease``).
On MovieLens, whose users rate many films in one sitting in the order the site shows them,
ratings close in a user's history are more related than ratings far apart, which plain
co-occurrence ignores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models.base import register
from recpipe.models.classic.base import as_binary_csr
from recpipe.models.classic.ease import EASEModel, kept_items


def time_ordered(train: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(user_idx, item_idx)`` of ``train`` sorted by user, then timestamp (nulls first), then row."""
    users = train["user_idx"].to_numpy()
    times = train["timestamp"].to_numpy(dtype=np.int64, na_value=np.iinfo(np.int64).min)
    order = np.lexsort((np.arange(len(train)), times, users))
    return users[order], train["item_idx"].to_numpy()[order]


def window_gram(
    users: np.ndarray, items: np.ndarray, keep: np.ndarray, n_items: int, window: int, decay: float
) -> np.ndarray:
    """float32 [len(keep), len(keep)] over the ``keep`` items: entry (i, j), i != j, sums
    ``decay^(k-1)`` over the times i and j are ``k <= window`` positions apart in one user's
    sequence (``users``, ``items``: interactions grouped by user, in order); the diagonal holds each
    item's number of interactions. Accumulated in place in the one dense float32 matrix, one
    rounding per entry and distance (no sparse sums, which fill up to len(keep)^2 entries)."""
    if window < 1:
        raise RecpipeError(f"model.window must be at least 1, got {window}")
    if not 0 < decay <= 1:
        raise RecpipeError(f"model.decay must be in (0, 1], got {decay}")
    column = np.full(n_items, -1, dtype=np.int64)
    column[keep] = np.arange(len(keep))
    cols = column[items]
    n = len(keep)
    gram = np.zeros((n, n), dtype=np.float32)
    flat = gram.reshape(-1)  # a view: entry (i, j) at i * n + j
    for k in range(1, window + 1):
        a, b = cols[:-k], cols[k:]
        pair = (users[:-k] == users[k:]) & (a >= 0) & (b >= 0) & (a != b)
        if not pair.any():
            break  # no user has k + 1 interactions: no larger distance either
        a, b = a[pair], b[pair]
        entries, counts = np.unique(np.concatenate([a * n + b, b * n + a]), return_counts=True)
        flat[entries] += counts * decay ** (k - 1)
    gram[np.diag_indices(n)] = np.bincount(cols[cols >= 0], minlength=n)
    return gram


@register("window_ease")
class WindowEASE(EASEModel):
    """EASE whose item-item matrix weights pairs by their distance in the user's time-ordered history."""

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(cfg, n_users, n_items)
        self.window, self.decay = int(cfg.window), float(cfg.decay)

    def kept_gram(self, data: Processed) -> tuple[np.ndarray, np.ndarray]:
        keep = kept_items(as_binary_csr(data.matrix("train")), self.max_items)
        users, items = time_ordered(data.train)
        return keep, window_gram(users, items, keep, self.n_items, self.window, self.decay)
