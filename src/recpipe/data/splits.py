"""Train/validation/test splits of an interactions table (config group ``split``).

Each ``split_<name>(df, ...)`` is pure: it returns ``(train, val, test)``, three disjoint frames that
together hold every row of ``df`` once, each in ``df``'s row order with ``df``'s index.

Every split can also hold items out for cold-start evaluation (``split.cold_items``, a share of
the distinct items, drawn with ``split.cold_seed``): all interactions of those items go to test,
the splitter divides the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from recpipe.config import plain_dict
from recpipe.errors import RecpipeError

Splits = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]

#: split names whose result depends on time order: they need a timestamp on every interaction
NEEDS_TIMESTAMPS = frozenset({"temporal", "leave_last"})


def split_random(df: pd.DataFrame, ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 42) -> Splits:
    """Shuffle interactions with ``seed`` and cut at ``ratios`` (train, val, test; summing to 1).

    Split sizes are ``round(ratio * n)`` for val and test; train gets the rest.
    """
    r_train, r_val, r_test = _check_ratios(ratios)
    n = len(df)
    n_val, n_test = _rounded(r_val * n), _rounded(r_test * n)
    labels = np.zeros(n, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(n)
    labels[order[n - n_val - n_test : n - n_test]] = 1
    labels[order[n - n_test :]] = 2
    return _by_label(df, labels)


def split_temporal(
    df: pd.DataFrame,
    val_start: int | None = None,
    test_start: int | None = None,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
) -> Splits:
    """Global time cut-offs: ``timestamp < val_start`` trains, ``< test_start`` validates, the rest tests.

    A null cut-off is taken from the sorted timestamps ``t`` at the ``ratios`` quantile: the value
    ``t[round(q * n)]`` for ``q = ratios[0]`` (val_start) and ``ratios[0] + ratios[1]`` (test_start),
    so interactions tied at a cut-off all land on its later side.
    """
    ts = _timestamps(df, "temporal")
    r_train, r_val, _ = _check_ratios(ratios)
    if val_start is None or test_start is None:
        ordered = np.sort(ts)
        val_start = _cut(ordered, r_train) if val_start is None else int(val_start)
        test_start = _cut(ordered, r_train + r_val) if test_start is None else int(test_start)
    if val_start > test_start:
        raise RecpipeError(f"split=temporal: val_start ({val_start}) is after test_start ({test_start})")
    labels = (ts >= val_start).astype(np.int8) + (ts >= test_start).astype(np.int8)
    return _by_label(df, labels)


def split_leave_last(df: pd.DataFrame, n_val: int = 1, n_test: int = 1) -> Splits:
    """Each user's last ``n_test`` interactions to test and the ``n_val`` before them to val.

    Order is by timestamp; equal timestamps keep row order (a later row counts as later). Users
    with fewer than ``n_val + n_test + 1`` interactions keep them all in train.
    """
    for name, v in (("n_val", n_val), ("n_test", n_test)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise RecpipeError(f"split=leave_last: {name} must be an integer >= 0, got {v!r}")
    ts = _timestamps(df, "leave_last")
    users = pd.factorize(df["user_id"])[0]
    order = np.lexsort((ts, users))  # by user, then time; stable, so equal times keep row order
    sizes = np.bincount(users)
    starts = np.cumsum(sizes) - sizes
    user_sorted = users[order]
    size = sizes[user_sorted]
    from_end = size - 1 - (np.arange(len(df)) - starts[user_sorted])
    eligible = size >= n_val + n_test + 1
    label_sorted = np.where(eligible & (from_end < n_test), 2, np.where(eligible & (from_end < n_test + n_val), 1, 0))
    labels = np.empty(len(df), dtype=np.int8)
    labels[order] = label_sorted
    return _by_label(df, labels)


SPLITTERS: dict[str, Callable[..., Splits]] = {
    "random": split_random,
    "temporal": split_temporal,
    "leave_last": split_leave_last,
}


def cold_item_rows(df: pd.DataFrame, share: float, seed: int = 42) -> np.ndarray:
    """Bool mask of the rows whose item is among ``round(share * n_items)`` items drawn with ``seed``.

    Items are drawn uniformly from ``df``'s distinct ``item_id`` values (sorted, so the draw does
    not depend on row order).
    """
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise RecpipeError(f"split.cold_items must be a share of the items in [0, 1), got {share!r}")
    if share == 0:
        return np.zeros(len(df), dtype=bool)
    item_ids = df["item_id"]  # distinct values first: converting 10^7 rows to text is slow
    ids = np.sort(pd.Series(pd.unique(item_ids)).astype(str).to_numpy(object))
    n_cold = _rounded(share * len(ids))
    if n_cold == 0:
        return np.zeros(len(df), dtype=bool)
    cold = set(np.random.default_rng(seed).choice(ids, size=n_cold, replace=False))
    codes, uniques = pd.factorize(item_ids, use_na_sentinel=False)  # every code a real position (no -1)
    return np.array([str(u) in cold for u in uniques], dtype=bool)[codes]


def make_splits(df: pd.DataFrame, split_cfg: DictConfig | Mapping[str, Any]) -> Splits:
    """Split ``df`` as configured: ``split_cfg.name`` picks the splitter, other keys are its arguments.

    ``cold_items`` (default 0) and ``cold_seed`` (default 42) hold items out: every interaction of a
    held-out item goes to test, never to train or val; the splitter divides the other rows.
    """
    name, options, cold_share, cold_seed = split_options(split_cfg)
    cold = cold_item_rows(df, cold_share, cold_seed)
    splitter = SPLITTERS[name]
    if not cold.any():
        return splitter(df, **options)
    positions = df.reset_index(drop=True)  # index = row position, whatever index df has
    train, val, test = splitter(positions[~cold], **options)
    test_rows = np.sort(np.concatenate([test.index.to_numpy(), np.flatnonzero(cold)]))
    return df.iloc[train.index.to_numpy()], df.iloc[val.index.to_numpy()], df.iloc[test_rows]


def split_options(split_cfg: DictConfig | Mapping[str, Any]) -> tuple[str, dict[str, Any], float, int]:
    """``split_cfg`` checked: the splitter's name, its arguments, ``cold_items`` and ``cold_seed``."""
    options = plain_dict(split_cfg, "split")
    name = options.pop("name", None)
    cold_share, cold_seed = options.pop("cold_items", 0.0), int(options.pop("cold_seed", 42))
    if name not in SPLITTERS:
        raise RecpipeError(f"unknown split {name!r}; available: {', '.join(sorted(SPLITTERS))}")
    try:
        inspect.signature(SPLITTERS[name]).bind(None, **options)
    except TypeError as e:
        raise RecpipeError(f"split={name}: {e}") from e
    return name, options, cold_share, cold_seed


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(r) for r in ratios)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6:
        raise RecpipeError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    return values


def _rounded(x: float) -> int:
    return int(np.floor(x + 0.5))


def _cut(ordered: np.ndarray, q: float) -> int:
    """The timestamp before which ``round(q * n)`` of the ``n`` sorted timestamps fall (ties aside)."""
    k = _rounded(q * len(ordered))
    return int(ordered[k]) if k < len(ordered) else int(ordered[-1]) + 1


def _timestamps(df: pd.DataFrame, split: str) -> np.ndarray:
    ts = df["timestamp"]
    if ts.isna().any():
        raise RecpipeError(f"split={split} needs a timestamp on every interaction; {int(ts.isna().sum())} have none")
    return ts.to_numpy(dtype=np.int64)


def _by_label(df: pd.DataFrame, labels: np.ndarray) -> Splits:
    return df[labels == 0], df[labels == 1], df[labels == 2]
