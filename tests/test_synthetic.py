"""The synthetic source (data=synthetic): sizes, determinism, power laws and learnable signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpipe.data.synthetic import ItemSampler, alias_table, generate
from recpipe.errors import RecpipeError


@pytest.fixture(scope="module")
def data():
    return generate(300, 200, 30_000, seed=5)


def test_exact_size_every_user_and_contract_types(data):
    inter = data.interactions
    assert len(inter) == 30_000
    assert inter["user_id"].nunique() == 300 and len(data.users) == 300
    assert set(inter["item_id"]) <= set(data.items["item_id"]) and len(data.items) == 200
    assert inter["rating"].dtype == np.float32
    assert set(inter["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert inter["timestamp"].is_monotonic_increasing and inter["timestamp"].notna().all()
    assert inter.duplicated(["user_id", "item_id"]).mean() < 0.01
    assert data.items["genres"].map(len).between(1, 2).all()
    assert {g for gs in data.items["genres"] for g in gs} <= {f"genre_{k:02d}" for k in range(1, 19)}
    assert data.items["year"].between(1950, 2024).all()


def test_same_seed_same_data_other_seed_other_data(data):
    again = generate(300, 200, 30_000, seed=5)
    assert again.interactions.equals(data.interactions) and again.items.equals(data.items)
    assert not generate(300, 200, 30_000, seed=6).interactions.equals(data.interactions)


def test_item_popularity_follows_the_exponent():
    def top_decile_share(exponent: float) -> float:
        data = generate(2000, 500, 20_000, popularity_exponent=exponent, seed=1)
        counts = data.interactions["item_id"].value_counts()
        return counts.iloc[: len(counts) // 10].sum() / counts.sum()

    assert top_decile_share(1.2) > 0.45
    assert top_decile_share(0.0) < 0.2


def test_ratings_carry_user_and_item_signal(data):
    """Biases fitted on half the data predict the other half better than the global mean does."""
    inter = data.interactions.sample(frac=1.0, random_state=0)
    train, test = inter.iloc[:20_000], inter.iloc[20_000:]
    mean = train["rating"].mean()
    item_bias = (train["rating"] - mean).groupby(train["item_id"]).mean()
    user_bias = (train["rating"] - mean - train["item_id"].map(item_bias)).groupby(train["user_id"]).mean()
    pred = mean + test["item_id"].map(item_bias).fillna(0) + test["user_id"].map(user_bias).fillna(0)
    rmse = lambda p: float(np.sqrt(np.mean((test["rating"] - p) ** 2)))  # noqa: E731
    assert rmse(pred) < 0.9 * rmse(mean)


def test_users_concentrate_on_a_genre():
    """Each user's most frequent genre has a far larger share than with genres shuffled across rows."""
    data = generate(1000, 500, 20_000, seed=2)
    genre = data.interactions["item_id"].map(data.items.set_index("item_id")["genres"].map(lambda g: g[0]))
    shuffled = np.random.default_rng(0).permutation(genre.to_numpy())

    def top_share(g) -> float:
        by_user = pd.Series(g).groupby(data.interactions["user_id"].to_numpy())
        return by_user.agg(lambda x: x.value_counts(normalize=True).iloc[0]).mean()

    assert top_share(genre.to_numpy()) > top_share(shuffled) + 0.1


def test_alias_sampler_draws_the_given_distribution():
    rng = np.random.default_rng(0)
    weights = np.array([5.0, 1.0, 0.0, 2.0, 2.0])
    prob, alias = alias_table(weights)
    k = rng.integers(0, 5, 200_000)
    freq = np.bincount(np.where(rng.random(len(k)) < prob[k], k, alias[k]), minlength=5) / len(k)
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.005)

    genre = np.array([1, 0, 1, 0, 1])
    sampler = ItemSampler(weights, genre)
    drawn = sampler.in_genre(np.zeros(100_000, dtype=np.int64), rng)
    freq = pd.Series(drawn).value_counts(normalize=True).sort_index()
    assert freq.index.tolist() == [1, 3]
    np.testing.assert_allclose(freq.to_numpy(), [1 / 3, 2 / 3], atol=0.01)


def test_sizes_that_cannot_be_met_are_refused():
    with pytest.raises(RecpipeError, match="n_interactions"):
        generate(2, 10, 1000)
    assert len(generate(50, 10, 20).interactions) == 20  # fewer interactions than users is fine
