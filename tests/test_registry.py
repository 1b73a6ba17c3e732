"""The metric registry: directions and the spelling of every kind of key."""

from __future__ import annotations

from recpipe.evaluation import registry
from recpipe.evaluation.registry import higher_is_better


def test_direction_of_metrics():
    assert higher_is_better("ndcg_at_10") is True
    assert higher_is_better("hit_rate_at_100") is True
    assert higher_is_better("rmse") is False
    assert higher_is_better("popularity_at_10") is None
    # segment and cold-item keys take their metric's direction; unknown or misspelled keys have none
    assert higher_is_better("light_users.recall_at_5") is True
    assert higher_is_better("heavy_users.mae") is False
    assert higher_is_better("cold_mrr_at_20") is True
    assert higher_is_better("rmse_at_10") is None
    assert higher_is_better("ndcg") is None
    assert higher_is_better("train_seconds") is None


def test_keys_round_trip():
    key = registry.metric_key("hit_rate", 20)
    assert key == "hit_rate_at_20"
    assert registry.split_at_k(key) == ("hit_rate", 20)
    assert registry.split_at_k("rmse") is None
    assert registry.split_at_k("ndcg_at_10_ci_low") is None
    assert registry.segment_key("light_users", key) == "light_users.hit_rate_at_20"
    assert registry.cold_key(key) == "cold_hit_rate_at_20"
    assert registry.base_metric("heavy_users.cold_ndcg_at_5") == "ndcg_at_5"
    assert registry.ci_keys("ndcg_at_10") == ("ndcg_at_10_ci_low", "ndcg_at_10_ci_high")
    assert registry.baseline_key("item_knn", "ndcg_at_10") == "baseline.item_knn.ndcg_at_10"
    assert registry.split_baseline_key("baseline.item_knn.ndcg_at_10") == ("item_knn", "ndcg_at_10")
    assert registry.split_baseline_key("ndcg_at_10") is None


def test_report_tables_follow_the_registry():
    assert registry.MAIN_METRICS == (
        "precision_at_10",
        "recall_at_10",
        "ndcg_at_10",
        "map_at_10",
        "hit_rate_at_10",
        "mrr_at_10",
        "rmse",
        "mae",
    )
    assert registry.BEYOND_METRICS == ("coverage_at_10", "diversity_at_10", "novelty_at_10", "popularity_at_10")
    assert set(registry.METRICS) == {*registry.RANKING_METRICS, *registry.BEYOND_ACCURACY_METRICS, "rmse", "mae"}
