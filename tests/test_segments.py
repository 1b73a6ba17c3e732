"""Per-segment metrics against a user-by-user reference on random evaluations."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recpipe.evaluation.ranking import RankingEval
from recpipe.evaluation.segments import describe_segments, segment_metrics, user_segments

N_ITEMS = 15


@st.composite
def evaluation_case(draw):
    n_users = draw(st.integers(1, 12))
    users = np.array(sorted(draw(st.sets(st.integers(0, n_users - 1), min_size=1))), dtype=np.int32)
    n = len(users)
    finite = st.floats(0, 1, allow_nan=False)
    per_user = {
        "ndcg_at_10": np.array(draw(st.lists(finite, min_size=n, max_size=n))),
        # diversity can be undefined (NaN) for some users
        "diversity_at_10": np.array(draw(st.lists(st.one_of(finite, st.just(math.nan)), min_size=n, max_size=n))),
    }
    topk = np.array(
        draw(st.lists(st.lists(st.integers(-1, N_ITEMS - 1), min_size=12, max_size=12), min_size=n, max_size=n)),
        dtype=np.int32,
    )
    counts = np.array(draw(st.lists(st.integers(0, 40), min_size=n_users, max_size=n_users)))
    threshold = draw(st.integers(0, 41))
    result = RankingEval(metrics={}, per_user=per_user, users=users, topk=topk)
    return result, counts, threshold


def reference(result: RankingEval, counts: np.ndarray, threshold: int) -> dict[str, float]:
    """Loop over the evaluated users; a segment's mean skips NaN; coverage counts distinct top-10 items."""
    out = {}
    for segment, member in (("light_users", lambda c: c < threshold), ("heavy_users", lambda c: c >= threshold)):
        rows = [r for r, u in enumerate(result.users) if member(counts[u])]
        for metric, values in result.per_user.items():
            vals = [values[r] for r in rows if not math.isnan(values[r])]
            out[f"{segment}.{metric}"] = sum(vals) / len(vals) if vals else math.nan
        items = {int(i) for r in rows for i in result.topk[r, :10] if i >= 0}
        out[f"{segment}.coverage_at_10"] = len(items) / N_ITEMS if rows else math.nan
    return out


@settings(max_examples=150, deadline=None)
@given(evaluation_case())
def test_segment_metrics_match_reference(case):
    result, counts, threshold = case
    got = segment_metrics(result, user_segments(counts, threshold), N_ITEMS)
    want = reference(result, counts, threshold)
    assert set(got) == set(want)
    for key, value in want.items():
        assert (math.isnan(got[key]) and math.isnan(value)) or math.isclose(got[key], value, abs_tol=1e-12), key


def test_light_users_have_fewer_train_interactions_than_the_threshold():
    seg = user_segments(np.array([0, 19, 20, 21]), 20)
    assert seg["light_users"].tolist() == [True, True, False, False]
    assert seg["heavy_users"].tolist() == [False, False, True, True]
    assert describe_segments(seg, np.array([1, 2, 3]), 20) == {
        "light_users": {"train_interactions": "< 20", "users": 1},
        "heavy_users": {"train_interactions": ">= 20", "users": 2},
    }
