"""Cold-item metrics: which items are cold, and ranking among them against a per-user reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recpipe.evaluation.cold import cold_items, cold_metrics, cold_users

from .helpers import ref_user

KS = (1, 3, 5)


def matrix(dense: np.ndarray) -> sp.csr_matrix:
    return sp.csr_matrix(dense.astype(np.float32))


@st.composite
def cold_case(draw):
    n_users, n_items = draw(st.integers(1, 8)), draw(st.integers(1, 12))
    cells = st.lists(st.lists(st.booleans(), min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users)
    seen = np.array(draw(cells), dtype=bool)
    truth = np.array(draw(cells), dtype=bool) & ~seen
    # integer scores: many ties, broken by the lower item index
    scores = np.array(
        draw(
            st.lists(
                st.lists(st.integers(-3, 3), min_size=n_items, max_size=n_items), min_size=n_users, max_size=n_users
            )
        ),
        dtype=np.float32,
    )
    return seen, truth, scores


@settings(max_examples=200, deadline=None)
@given(cold_case())
def test_cold_metrics_match_reference(case):
    seen, truth, scores = case
    n_users, n_items = truth.shape
    cold = cold_items(matrix(seen), matrix(truth))
    expected_cold = [i for i in range(n_items) if truth[:, i].any() and not seen[:, i].any()]
    assert cold.tolist() == expected_cold

    got = cold_metrics(lambda u: scores[u], matrix(truth), cold, KS, batch_size=3)
    users = [u for u in range(n_users) if truth[u, expected_cold].any()]
    assert cold_users(matrix(truth), cold).tolist() == users
    if not users:
        assert got == {}
        return
    sums: dict[str, float] = {}
    for u in users:
        ranked = sorted(expected_cold, key=lambda i: (-scores[u, i], i))[: max(KS)]
        ranked += [-1] * (max(KS) - len(ranked))
        relevant = {i for i in expected_cold if truth[u, i]}
        for k in KS:
            for metric, value in ref_user(ranked, relevant, k).items():
                if metric != "_top":
                    sums[f"cold_{metric}_at_{k}"] = sums.get(f"cold_{metric}_at_{k}", 0.0) + value
    assert got == pytest.approx({key: total / len(users) for key, total in sums.items()})


def test_items_seen_in_train_or_val_are_never_candidates():
    seen = np.zeros((2, 4), bool)
    seen[0, 1] = True  # item 1 is warm; items 2, 3 are cold; item 0 is not in test at all
    truth = np.zeros((2, 4), bool)
    truth[1, [1, 2, 3]] = True
    assert cold_items(matrix(seen), matrix(truth)).tolist() == [2, 3]
    # the warm item scores highest but is not ranked: both cold items fill the top 2
    scores = np.array([[0, 9, 1, 2], [0, 9, 1, 2]], np.float32)
    got = cold_metrics(lambda u: scores[u], matrix(truth), np.array([2, 3]), (2,))
    assert got["cold_recall_at_2"] == 1.0 and got["cold_precision_at_2"] == 1.0
    assert math.isclose(got["cold_ndcg_at_2"], 1.0)
