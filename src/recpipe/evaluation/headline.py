"""The headline metrics: the ~20 numbers that `dvc metrics show`, `dvc exp show`, MLflow and
`recpipe report` put side by side. Everything else (other cut-offs, segments, cold items,
intervals of other metrics) stays in the detail file ``reports/detail.json``.
"""
from __future__ import annotations

# The model's metrics at K=10, rating errors, beyond-accuracy at 10, and the ndcg interval.
HEADLINE_METRICS = (
    "precision_at_10", "recall_at_10", "ndcg_at_10", "map_at_10", "hit_rate_at_10", "mrr_at_10",
    "rmse", "mae",
    "coverage_at_10", "diversity_at_10", "novelty_at_10", "popularity_at_10",
    "ndcg_at_10_ci_low", "ndcg_at_10_ci_high",
)
# Each baseline's metrics beside the model's (MLflow: ``baseline.<name>.<key>``).
HEADLINE_BASELINE_METRICS = ("ndcg_at_10", "recall_at_10")
