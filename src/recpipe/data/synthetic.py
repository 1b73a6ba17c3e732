"""``data.source=synthetic``: seeded interactions that look like a ratings log and carry learnable signal.

* item popularity and user activity follow power laws (Zipf exponents), every user has at least one
  interaction when there are at least as many interactions as users, and no user more than
  ``MAX_USER_SHARE`` of the catalog;
* each user prefers one genre: a share ``GENRE_AFFINITY`` of their items comes from it (signal for
  ranking models), the rest from global popularity;
* ratings 1..5 come from user and item biases, a dot product of latent factors (signal for rating
  models), the genre match and noise;
* rows are in time order with increasing timestamps; repeated (user, item) pairs are re-drawn a few
  times, so the few that remain are rare.

Everything is vectorised numpy, in chunks where a per-row matrix would be large, so tens of millions of
rows fit in 1-2 GB.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from omegaconf import DictConfig
from tqdm import tqdm

from recpipe import __version__
from recpipe.data.raw import RawData, ids_from_index, interactions_frame, items_frame
from recpipe.errors import RecpipeError

GENRE_AFFINITY = 0.5
MAX_USER_SHARE = 0.5
N_FACTORS = 8
REDRAW_ROUNDS = 16  # the first MIXED_ROUNDS like the original draw, then uniform
MIXED_ROUNDS = 4
CHUNK = 1_000_000
START = 1_420_070_400  # 2015-01-01 UTC
SPAN = 3 * 365 * 86_400  # seconds covered by the log


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Probabilities proportional to rank^-exponent, the ranks shuffled over the n entities."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return rng.permutation(w / w.sum())


def user_counts(n_interactions: int, activity: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: multinomial by ``activity``, at least one each if possible, at most ``cap``."""
    n_users = len(activity)
    if n_interactions > cap * n_users:
        raise RecpipeError(
            f"data.n_interactions={n_interactions} is more than {n_users} users can have without repeating "
            f"items ({cap} each); raise data.n_items or data.n_users"
        )
    base = 1 if n_interactions >= n_users else 0
    counts = base + rng.multinomial(n_interactions - base * n_users, activity)
    while (excess := int(np.maximum(counts - cap, 0).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = activity * (counts < cap)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table (Vose's construction) for drawing index k with probability weights[k] / sum.

    Drawing is O(1) per sample and touches only the two small tables: draw k uniformly, keep it with
    probability ``prob[k]``, else take ``alias[k]``.
    """
    n = len(weights)
    q = (weights * (n / weights.sum())).tolist()
    prob, alias = [1.0] * n, list(range(n))
    small = [k for k in range(n) if q[k] < 1.0]
    large = [k for k in range(n) if q[k] >= 1.0]
    while small and large:
        s, big = small.pop(), large[-1]
        prob[s], alias[s] = q[s], big
        q[big] += q[s] - 1.0
        if q[big] < 1.0:
            small.append(large.pop())
    return np.array(prob), np.array(alias, dtype=np.int64)


class ItemSampler:
    """Draws items by popularity, globally or within a genre, with alias tables (vectorised)."""

    def __init__(self, popularity: np.ndarray, genre: np.ndarray) -> None:
        self.n = len(popularity)
        self.prob, self.alias = alias_table(popularity)
        # per genre: a table over that genre's items, which sit at order[start[g]:start[g] + size[g]]
        self.order = np.argsort(genre, kind="stable").astype(np.int32)
        n_genres = int(genre.max()) + 1
        self.size = np.bincount(genre, minlength=n_genres)
        self.start = np.r_[0, np.cumsum(self.size)[:-1]]
        self.genre_prob = np.ones(self.n)
        self.genre_alias = np.arange(self.n)
        for g in np.flatnonzero(self.size):
            seg = slice(self.start[g], self.start[g] + self.size[g])
            prob, alias = alias_table(popularity[self.order[seg]])
            self.genre_prob[seg], self.genre_alias[seg] = prob, alias + self.start[g]

    @staticmethod
    def _draw(k: np.ndarray, prob: np.ndarray, alias: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(len(k)) < prob[k], k, alias[k])

    def popular(self, size: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.integers(0, self.n, size)
        return self._draw(k, self.prob, self.alias, rng).astype(np.int32)

    def in_genre(self, genres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``genres``; every genre drawn from must have items."""
        k = self.start[genres] + (rng.random(len(genres)) * self.size[genres]).astype(np.int64)
        return self.order[self._draw(k, self.genre_prob, self.genre_alias, rng)]

    def mixed(self, user_genre: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of ``user_genre``: from that genre with probability GENRE_AFFINITY, else popular."""
        items = self.popular(len(user_genre), rng)
        own = rng.random(len(user_genre)) < GENRE_AFFINITY
        items[own] = self.in_genre(user_genre[own], rng)
        return items


def redraw_repeats(
    users: np.ndarray, items: np.ndarray, n_items: int, draw: Callable[[np.ndarray, int], np.ndarray]
) -> int:
    """Re-draw ``items`` at repeated (user, item) pairs, ``draw(positions, round)`` giving new items, for up
    to REDRAW_ROUNDS rounds; returns how many repeats remain. One sort, then only the re-drawn rows are checked."""
    key = users.astype(np.int64) * n_items + items
    order = np.argsort(key)
    key = key[order]
    first = np.r_[True, key[1:] != key[:-1]]
    taken = key[first]  # sorted keys of the rows that stay
    again = order[~first]
    del key, order, first
    for round_ in range(REDRAW_ROUNDS):
        if len(again) == 0:
            break
        items[again] = draw(again, round_)
        new = users[again].astype(np.int64) * n_items + items[again]
        pos = np.minimum(np.searchsorted(taken, new), len(taken) - 1)
        bad = taken[pos] == new
        _, first_of = np.unique(new, return_index=True)
        ok = np.zeros(len(new), dtype=bool)
        ok[first_of] = True
        bad |= ~ok
        accepted = np.sort(new[~bad])
        taken = np.insert(taken, np.searchsorted(taken, accepted), accepted)
        again = again[bad]
    return len(again)


def generate(
    n_users: int,
    n_items: int,
    n_interactions: int,
    *,
    popularity_exponent: float = 1.0,
    activity_exponent: float = 0.7,
    n_genres: int = 18,
    seed: int = 42,
) -> RawData:
    """A synthetic ratings log of exactly ``n_interactions`` rows (see the module docstring)."""
    if min(n_users, n_items, n_genres) < 1 or n_interactions < 0:
        raise RecpipeError("data.n_users, data.n_items and data.n_genres must be >= 1, data.n_interactions >= 0")
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, n_genres, n_items)
    sampler = ItemSampler(zipf_weights(n_items, popularity_exponent, rng), item_genre)
    user_genre = item_genre[rng.integers(0, n_items, n_users)]  # a genre that has items
    cap = max(1, math.floor(MAX_USER_SHARE * n_items))
    counts = user_counts(n_interactions, zipf_weights(n_users, activity_exponent, rng), cap, rng)

    bar = tqdm(total=4, desc="synthetic", unit="step", disable=n_interactions < 4 * CHUNK, leave=False)
    bar.set_postfix_str("users and items")
    users = rng.permutation(np.repeat(np.arange(n_users, dtype=np.int32), counts))
    items = sampler.mixed(user_genre[users], rng)
    bar.update()

    def draw(positions: np.ndarray, round_: int) -> np.ndarray:
        # later rounds draw uniformly: heavy users may have used up the popular items of their genre
        if round_ < MIXED_ROUNDS:
            return sampler.mixed(user_genre[users[positions]], rng)  # noqa: F821  (deleted after the draws end)
        return rng.integers(0, n_items, len(positions), dtype=np.int32)

    bar.set_postfix_str("repeated pairs")
    redraw_repeats(users, items, n_items, draw)
    bar.update()
    bar.set_postfix_str("ratings")
    ratings = _ratings(users, items, user_genre, item_genre, rng)
    timestamps = START + np.floor(np.cumsum(rng.exponential(SPAN / max(n_interactions, 1), n_interactions)))
    bar.update()
    bar.set_postfix_str("ids")
    interactions = interactions_frame(
        ids_from_index(users, n_users),
        ids_from_index(items, n_items),
        pd.Series(ratings),
        pd.Series(timestamps.astype(np.int64)),
    )
    bar.update()
    bar.close()
    del users, items, ratings, timestamps

    genre_names = np.array([f"genre_{g + 1:02d}" for g in range(n_genres)], dtype=object)
    second = rng.integers(0, n_genres, n_items)
    has_second = (rng.random(n_items) < 0.3) & (second != item_genre)
    genres = [
        [genre_names[a], genre_names[b]] if two else [genre_names[a]]
        for a, b, two in zip(item_genre, second, has_second)
    ]
    item_ids = ids_from_index(np.arange(n_items), n_items)
    items_df = items_frame(
        item_ids, "Item " + item_ids, pd.Series(rng.integers(1950, 2025, n_items)), pd.Series(genres, dtype=object)
    )
    users_df = pd.DataFrame(
        {
            "user_id": ids_from_index(np.arange(n_users), n_users).array,
            "age": rng.integers(16, 75, n_users).astype(np.int32),
            "gender": pd.Series(np.where(rng.random(n_users) < 0.5, "F", "M"), dtype="str").array,
        }
    )
    params = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_interactions,
        "n_genres": n_genres,
        "popularity_exponent": popularity_exponent,
        "activity_exponent": activity_exponent,
        "seed": seed,
    }
    source = {"source": "synthetic", "generator": f"recpipe {__version__}", "params": params}
    return RawData(interactions=interactions, items=items_df, users=users_df, source=source)


def _ratings(
    users: np.ndarray, items: np.ndarray, user_genre: np.ndarray, item_genre: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Ratings 1..5 (float32) from biases, latent factors, genre match and noise, in chunks of rows."""
    n_users, n_items = len(user_genre), len(item_genre)
    user_bias = rng.normal(0.0, 0.4, n_users).astype(np.float32)
    item_bias = rng.normal(0.0, 0.5, n_items).astype(np.float32)
    scale = np.float32(0.8 / math.sqrt(N_FACTORS))
    user_f = rng.normal(size=(n_users, N_FACTORS)).astype(np.float32) * scale
    item_f = rng.normal(size=(n_items, N_FACTORS)).astype(np.float32)
    out = np.empty(len(users), dtype=np.float32)
    for start in range(0, len(users), CHUNK):
        u, i = users[start : start + CHUNK], items[start : start + CHUNK]
        # np.take: much faster than fancy indexing for gathering rows
        dot = np.einsum("ij,ij->i", np.take(user_f, u, axis=0), np.take(item_f, i, axis=0))
        score = (
            3.6
            + user_bias[u]
            + item_bias[i]
            + dot
            + 0.4 * (user_genre[u] == item_genre[i])
            + rng.normal(0.0, 0.5, len(u)).astype(np.float32)
        )
        out[start : start + CHUNK] = np.clip(np.rint(score), 1, 5)
    return out


def load_synthetic(cfg: DictConfig) -> RawData:
    """``data.source=synthetic``: :func:`generate` with the sizes and exponents in ``data``."""
    return generate(
        int(cfg.n_users),
        int(cfg.n_items),
        int(cfg.n_interactions),
        popularity_exponent=float(cfg.get("popularity_exponent", 1.0)),
        activity_exponent=float(cfg.get("activity_exponent", 0.7)),
        n_genres=int(cfg.get("n_genres", 18)),
        seed=int(cfg.get("seed", 42)),
    )
