"""The scipy forms of the classic models (cosine kNN along both axes, EASE) against slow, obvious loop
implementations on small random data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recpipe.errors import RecpipeError
from recpipe.models.classic import knn
from recpipe.models.classic.ease import EASE
from recpipe.models.classic.knn import CosineKNN


def random_matrix(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.float32)
    dense[n_users - 1] = 0.0  # a user without interactions
    return sp.csr_matrix(dense)


# --- references: one pair at a time, plain Python ---------------------------------------------

def ref_neighbours(vectors: list[set[int]], k: int, shrink: float) -> list[dict[int, float]]:
    """For each vector, its k most cosine-similar others (ties: lower index), positive only."""
    out = []
    for i, a in enumerate(vectors):
        sims = []
        for j, b in enumerate(vectors):
            if j == i:
                continue
            denom = math.sqrt(len(a)) * math.sqrt(len(b)) + shrink
            sims.append((len(a & b) / denom if denom > 0 else 0.0, j))
        sims.sort(key=lambda t: (-t[0], t[1]))
        out.append({j: s for s, j in sims[:k] if s > 0})
    return out


def item_sets(X: sp.csr_matrix) -> list[set[int]]:
    return [set(X[u].indices.tolist()) for u in range(X.shape[0])]


def ref_itemknn(X: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    users = item_sets(X)
    columns = [set(np.flatnonzero(X[:, i].toarray().ravel()).tolist()) for i in range(X.shape[1])]
    nbrs = ref_neighbours(columns, k, shrink)
    scores = np.zeros(X.shape)
    for u, items in enumerate(users):
        for i in items:
            for j, s in nbrs[i].items():
                scores[u, j] += s
    return scores


def ref_userknn(X: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    users = item_sets(X)
    nbrs = ref_neighbours(users, k, shrink)
    scores = np.zeros(X.shape)
    for u in range(len(users)):
        for v, s in nbrs[u].items():
            for j in users[v]:
                scores[u, j] += s
    return scores


def ref_ease_weights(X: sp.csr_matrix, lam: float) -> np.ndarray:
    """Column j of B: ridge regression of item j on every other item (its own weight fixed at 0)."""
    D = X.toarray().astype(np.float64)
    n = D.shape[1]
    B = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        A = D[:, others]
        B[others, j] = np.linalg.solve(A.T @ A + lam * np.eye(n - 1), A.T @ D[:, j])
    return B


# --- tests ------------------------------------------------------------------------------------

CASES = [(seed, k, shrink) for seed in range(3) for k, shrink in [(1, 0.0), (3, 0.0), (5, 2.0), (50, 0.0)]]


@pytest.mark.parametrize("seed,k,shrink", CASES)
def test_itemknn_matches_reference(seed, k, shrink):
    X = random_matrix(25, 15, 0.25, seed)
    model = CosineKNN("item", k, shrink).fit(X)
    users = np.arange(X.shape[0])
    np.testing.assert_allclose(model.score(users), ref_itemknn(X, k, shrink), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed,k,shrink", CASES)
def test_userknn_matches_reference(seed, k, shrink):
    X = random_matrix(25, 15, 0.25, seed)
    model = CosineKNN("user", k, shrink).fit(X)
    users = np.array([3, 0, 24, 3])  # any order, repeats allowed
    np.testing.assert_allclose(
        model.score(users), ref_userknn(X, k, shrink)[users], rtol=1e-5, atol=1e-6
    )


def test_similarity_blocks_give_the_same_result(monkeypatch):
    X = random_matrix(40, 30, 0.2, seed=7)
    whole = knn.topk_cosine(X, k=4).toarray()
    monkeypatch.setattr(knn, "_BLOCK_ELEMENTS", 70)  # two rows of 30 per block
    blocked = knn.topk_cosine(X, k=4).toarray()
    np.testing.assert_array_equal(whole, blocked)
    assert ((whole > 0).sum(axis=1) <= 4).all()
    assert np.all(np.diag(whole) == 0)


def test_top_k_mask_breaks_ties_towards_lower_index():
    sim = np.array([[0.5, 0.9, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.2, 0.0]])
    mask = knn.top_k_mask(sim, 2)
    np.testing.assert_array_equal(mask, [[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]])


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 10.0), (2, 0.5)])
def test_ease_matches_per_item_ridge_regression(seed, lam):
    X = random_matrix(30, 12, 0.3, seed)
    model = EASE(lam=lam).fit(X)
    B = ref_ease_weights(X, lam)
    np.testing.assert_allclose(model.B, B, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.score(np.arange(30)), X.toarray() @ B, rtol=1e-4, atol=1e-5)


def test_ease_has_zero_diagonal():
    model = EASE(lam=5.0).fit(random_matrix(50, 20, 0.3, seed=3))
    assert np.all(np.diag(model.B) == 0.0)


def test_ease_recovers_co_occurrence():
    # Items 0+1 always appear together, as do 2+3 and 4+5; item 6 appears alone.
    rows = [[0, 1]] * 10 + [[2, 3]] * 10 + [[4, 5]] * 10 + [[6]] * 5
    dense = np.zeros((len(rows) + 3, 7), np.float32)
    for u, items in enumerate(rows):
        dense[u, items] = 1
    dense[-3, 0] = dense[-2, 2] = dense[-1, 5] = 1  # users holding one half of a pair
    X = sp.csr_matrix(dense)
    model = EASE(lam=1.0).fit(X)
    scores = model.score(np.arange(len(rows), len(rows) + 3))
    scores[dense[-3:] > 0] = -np.inf  # the caller's job: exclude seen items
    assert scores.argmax(axis=1).tolist() == [1, 3, 4]
    assert model.B[0, 1] > 0.5 and abs(model.B[0, 2]) < 1e-6 and abs(model.B[6, 0]) < 1e-6


@pytest.mark.parametrize("model", [CosineKNN("item", 5, 0.0), CosineKNN("user", 5, 0.0), EASE(lam=10.0)])
def test_scores_shape_dtype_and_empty_user(model):
    X = random_matrix(20, 10, 0.3, seed=5)
    X.data[:] = 4.0  # ratings are binarised
    model.fit(X)
    s = model.score(np.array([0, 19], dtype=np.int32))
    assert s.shape == (2, 10) and s.dtype == np.float32
    np.testing.assert_array_equal(s[1], 0.0)  # user 19 has no interactions
    assert model.n_items == 10


def test_knn_axis_is_item_or_user():
    with pytest.raises(RecpipeError, match="axis must be one of item, user"):
        CosineKNN("items", 5, 0.0)


def test_errors_are_user_errors():
    with pytest.raises(RecpipeError, match="before fit"):
        CosineKNN("item", 5, 0.0).score(np.array([0]))
    with pytest.raises(RecpipeError, match="lam"):
        EASE(lam=0)
    with pytest.raises(RecpipeError, match="limit is 5 items"):
        EASE(lam=1.0, max_items=5).fit(random_matrix(4, 6, 0.5, seed=0))
    with pytest.raises(RecpipeError, match="k must be"):
        CosineKNN("user", 0, 0.0).fit(random_matrix(4, 6, 0.5, seed=0))
