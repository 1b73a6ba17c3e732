"""Baselines (popularity, random, classic CF), scored by the same ranking code as the trained model.

Each baseline is one function ``(data: Processed, seed: int) -> score_fn`` registered by name
(fitted on the train split); ``cfg.evaluate.baselines`` lists the names to run. A new baseline
is one more decorated function.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recpipe.cf import EASE, ItemKNN, UserKNN
from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import ScoreFn

BaselineBuilder = Callable[[Processed, int], ScoreFn]
_REGISTRY: dict[str, BaselineBuilder] = {}

_MASK64 = (1 << 64) - 1


def register(name: str) -> Callable[[BaselineBuilder], BaselineBuilder]:
    """Decorator: make a baseline available under ``name``."""

    def deco(fn: BaselineBuilder) -> BaselineBuilder:
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, data: Processed, seed: int) -> ScoreFn:
    """The scorer of baseline ``name`` fitted on ``data``'s train split."""
    if name not in _REGISTRY:
        raise RecpipeError(f"unknown baseline {name!r} in evaluate.baselines; available: {', '.join(available())}")
    return _REGISTRY[name](data, seed)


@register("popularity")
def popularity(data: Processed, seed: int) -> ScoreFn:
    """Every user gets items by train interaction count."""
    pop = data.item_popularity().astype(np.float32)
    return lambda users: np.broadcast_to(pop, (len(users), len(pop)))


def hash_uniform(seed: int, users: np.ndarray, n_items: int) -> np.ndarray:
    """Uniform [0, 1) float32 [len(users), n_items], a pure function of (seed, user, item).

    A splitmix64 hash, so a user's scores do not depend on batching or on the other users.
    """
    x = (np.asarray(users, np.uint64)[:, None] << np.uint64(32)) | np.arange(n_items, dtype=np.uint64)
    x ^= np.uint64((seed * 0x9E3779B97F4A7C15) & _MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return ((x >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)


@register("random")
def random(data: Processed, seed: int) -> ScoreFn:
    """Every user gets items in a seeded random order of their own."""
    n_items = data.n_items
    return lambda users: hash_uniform(seed, users, n_items)


@register("item_knn")
def item_knn(data: Processed, seed: int) -> ScoreFn:
    """Item-based CF (cosine top-k neighbours, ``recpipe.cf.ItemKNN`` defaults) fitted on train."""
    return ItemKNN().fit(data.matrix("train")).score


@register("user_knn")
def user_knn(data: Processed, seed: int) -> ScoreFn:
    """User-based CF (``recpipe.cf.UserKNN`` defaults) fitted on train."""
    return UserKNN().fit(data.matrix("train")).score


@register("ease")
def ease(data: Processed, seed: int) -> ScoreFn:
    """EASE (``recpipe.cf.EASE`` defaults) fitted on train."""
    return EASE().fit(data.matrix("train")).score
