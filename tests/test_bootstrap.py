"""Bootstrap intervals over users: known answers, pairing, determinism, the baseline comparison."""

from __future__ import annotations

import numpy as np
import pytest

from recpipe.errors import RecpipeError
from recpipe.evaluation import bootstrap
from recpipe.evaluation.bootstrap import bootstrap_ci, compare_to_baselines, paired_bootstrap_diff


def test_constant_values_give_zero_width_interval():
    assert bootstrap_ci(np.full(50, 0.25), n_resamples=200, seed=1) == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("chunk_elements", [1 << 22, 1 << 15])  # one chunk, many chunks
def test_large_normal_sample_matches_normal_theory(monkeypatch, chunk_elements):
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.1, size=20_000)
    mean, low, high = bootstrap_ci(x, n_resamples=2000, seed=3)
    half = 1.96 * x.std() / np.sqrt(len(x))
    assert mean == pytest.approx(x.mean())
    assert low == pytest.approx(mean - half, abs=0.15 * half)
    assert high == pytest.approx(mean + half, abs=0.15 * half)


def test_level_widens_interval():
    x = np.random.default_rng(2).random(300)
    _, lo90, hi90 = bootstrap_ci(x, seed=4, level=0.90)
    _, lo99, hi99 = bootstrap_ci(x, seed=4, level=0.99)
    assert lo99 < lo90 < x.mean() < hi90 < hi99


def test_same_seed_same_result_other_seed_differs():
    x = np.random.default_rng(5).random(200)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)


def test_identical_systems_are_not_significant():
    a = np.random.default_rng(6).random(500)
    assert paired_bootstrap_diff(a, a.copy(), seed=0) == (0.0, 0.0, 0.0, False)


def test_shifted_system_is_significant_in_the_right_direction():
    rng = np.random.default_rng(7)
    a = rng.random(500)
    b = a + 0.05 + rng.normal(0, 0.05, 500)
    diff, low, high, significant = paired_bootstrap_diff(a, b, seed=0)
    assert significant and high < 0 and diff == pytest.approx(np.mean(a - b))
    assert paired_bootstrap_diff(b, a, seed=0)[3] and paired_bootstrap_diff(b, a, seed=0)[1] > 0


def test_pairing_detects_a_small_consistent_gain_that_overlapping_intervals_hide():
    rng = np.random.default_rng(8)
    a = rng.random(400)  # large between-user spread
    b = a + 0.01  # every user gains a little
    _, a_low, a_high = bootstrap_ci(a, seed=1)
    _, b_low, b_high = bootstrap_ci(b, seed=1)
    assert b_low < a_high  # the marginal intervals overlap...
    assert paired_bootstrap_diff(b, a, seed=1)[3]  # ...but the paired difference is clear


def test_nan_users_are_skipped():
    x = np.array([0.2, np.nan, 0.4, 0.6, np.nan])
    mean, low, high = bootstrap_ci(x, n_resamples=500, seed=0)
    assert mean == pytest.approx(0.4)
    assert 0.2 <= low <= mean <= high <= 0.6


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bootstrap_ci(np.array([])), "empty"),
        (lambda: bootstrap_ci(np.array([np.nan, np.nan])), "all NaN"),
        (lambda: bootstrap_ci(np.ones(3), n_resamples=0), "n_resamples"),
        (lambda: bootstrap_ci(np.ones(3), level=1.0), "level"),
        (lambda: paired_bootstrap_diff(np.ones(3), np.ones(4)), "aligned"),
    ],
)
def test_bad_input_is_a_user_error(call, match):
    with pytest.raises(RecpipeError, match=match):
        call()


def per_user_systems(n: int = 300):
    rng = np.random.default_rng(9)
    base = rng.random(n)
    model = {
        "ndcg_at_10": base + 0.1,
        "mae": rng.random(n),
        "novelty_at_10": rng.random(n) * 10,
    }
    baselines = {
        "popularity": {"ndcg_at_10": base + 0.09, "mae": model["mae"] - 0.2, "novelty_at_10": rng.random(n)},
        "random": {"ndcg_at_10": base * 0.1, "mae": model["mae"] + 0.5},
    }
    return model, baselines


def test_compare_to_baselines_matches_the_single_calls():
    model, baselines = per_user_systems()
    out = compare_to_baselines("ease", model, baselines, n_resamples=500, seed=11)
    assert out["n_users"] == 300 and out["level"] == 0.95 and out["n_resamples"] == 500
    for name, per in {"ease": model, **baselines}.items():
        for metric, values in per.items():
            _, low, high = bootstrap_ci(values, n_resamples=500, seed=11)
            assert out["ci"][name][metric] == [low, high]
    ndcg = out["vs_best_baseline"]["ndcg_at_10"]
    assert ndcg["baseline"] == "popularity"  # the higher mean
    diff, low, high, significant = paired_bootstrap_diff(
        model["ndcg_at_10"], baselines["popularity"]["ndcg_at_10"], n_resamples=500, seed=11
    )
    assert (ndcg["diff"], ndcg["low"], ndcg["high"], ndcg["significant"]) == (diff, low, high, significant)
    assert ndcg["diff"] == pytest.approx(0.01) and significant
    mae = out["vs_best_baseline"]["mae"]
    assert mae["baseline"] == "popularity" and mae["diff"] == pytest.approx(0.2) and mae["significant"]
    assert "novelty_at_10" not in out["vs_best_baseline"]  # no better direction


def test_compare_to_baselines_restricts_metrics_and_checks_alignment():
    model, baselines = per_user_systems()
    out = compare_to_baselines("ease", model, baselines, metrics=["ndcg_at_10"], n_resamples=100)
    assert {m for per in out["ci"].values() for m in per} == {"ndcg_at_10"}
    baselines["random"]["ndcg_at_10"] = baselines["random"]["ndcg_at_10"][:-1]
    with pytest.raises(RecpipeError, match="aligned"):
        compare_to_baselines("ease", model, baselines, n_resamples=100)


def test_metric_undefined_for_every_user_gets_no_interval():
    model, baselines = per_user_systems()
    model["diversity_at_10"] = np.full(300, np.nan)
    out = compare_to_baselines("ease", model, baselines, n_resamples=100)
    assert "diversity_at_10" not in out["ci"]["ease"] and "ndcg_at_10" in out["ci"]["ease"]


def test_ci_metrics_flattens_one_system_for_mlflow():
    model, baselines = per_user_systems()
    out = compare_to_baselines("ease", model, baselines, metrics=["ndcg_at_10", "mae"], n_resamples=100)
    flat = bootstrap.ci_metrics(out, "random")
    assert flat == {
        "ndcg_at_10_ci_low": out["ci"]["random"]["ndcg_at_10"][0],
        "ndcg_at_10_ci_high": out["ci"]["random"]["ndcg_at_10"][1],
        "mae_ci_low": out["ci"]["random"]["mae"][0],
        "mae_ci_high": out["ci"]["random"]["mae"][1],
    }
