"""``model=blend``: a weighted sum of several models' standardised scores, weighted on validation.

Ensembles of diverse recommenders beat their members (e.g. the Netflix Prize blends, Koren 2009;
Rendle et al. 2021 on iALS next to EASE and Mult-VAE, whose errors differ): here each member
(any registered model, configured under ``members``) is fit on the train split as it would be
alone, its scores are standardised per user over the catalog (mean 0, standard deviation 1), and
the blend scores ``sum_m w_m z_m(u)``. The weights are chosen on the validation split only: the
first member has weight 1 or 0 (scores are ranked, so only the ratios of the weights matter), the
others every combination of ``weight_grid``, keeping the one with the best validation ndcg_at_10
(each user's train items excluded, as in evaluation; ties: the first found).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation.ranking import rank_metrics, users_with_truth
from recpipe.evaluation.registry import TABLE_K, metric_key
from recpipe.models.base import RecModel, build, register

log = logging.getLogger(__name__)

TUNE_METRIC = metric_key("ndcg", TABLE_K)


def standardise(scores: tf.Tensor, dropped_rank: tf.Tensor | None = None) -> tf.Tensor:
    """Each row of ``scores`` [b, n] shifted and scaled to mean 0 and standard deviation 1.

    ``dropped_rank`` ([n]: -1, or for EASE's items beyond ``max_items`` their popularity rank in [0, 1),
    ``EASEModel.dropped_rank``): those items, whose scores are only an order below the kept ones, are
    left out of the mean and variance and placed 1 to 2 below the row's lowest standardised kept entry,
    most popular first, so they still rank last. Without such items rows are standardised exactly as
    ``tf.nn.moments`` does (bit for bit).
    """
    if dropped_rank is None:
        dropped_rank = -tf.ones(tf.shape(scores)[1:], scores.dtype)
    valid = tf.broadcast_to(dropped_rank[None, :] < 0, tf.shape(scores))
    all_valid = tf.reduce_all(valid, axis=1, keepdims=True)
    weights = tf.cast(valid, scores.dtype)
    safe = tf.where(valid, scores, tf.zeros_like(scores))
    mean_valid, var_valid = tf.nn.weighted_moments(safe, axes=[1], frequency_weights=weights, keepdims=True)
    mean_all, var_all = tf.nn.moments(safe, axes=[1], keepdims=True)
    mean = tf.where(all_valid, mean_all, tf.where(tf.math.is_finite(mean_valid), mean_valid, 0.0))
    var = tf.where(all_valid, var_all, tf.where(tf.math.is_finite(var_valid), var_valid, 0.0))
    z = (scores - mean) * tf.math.rsqrt(var + 1e-12)
    lowest = tf.reduce_min(tf.where(valid, z, tf.fill(tf.shape(z), np.inf)), axis=1, keepdims=True)
    below = tf.where(tf.math.is_finite(lowest), lowest, 0.0) - 1.0
    return tf.where(valid, z, below - dropped_rank[None, :])


def member_dropped_rank(model: RecModel) -> tf.Tensor | None:
    """``model``'s ``dropped_rank`` (EASE's items beyond ``max_items``), or None when it has none."""
    return getattr(model, "dropped_rank", None)


def weight_combinations(grid: list[float], n: int) -> list[np.ndarray]:
    """Every weight vector of ``n`` members whose first weight is 1 or 0 and the others from
    ``grid`` (not all zero): the first member at 1 before those without it."""
    rests = list(itertools.product(grid, repeat=n - 1))
    combos = [np.array([first, *rest], np.float32) for first in (1.0, 0.0) for rest in rests]
    return [w for w in combos if w.any()]


@register("blend")
class Blend(RecModel):
    """score(u) = sum over ``members`` of weight x standardised member score (weights from validation)."""

    objective = "implicit"
    fitting = "closed_form"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(name="blend")
        if not cfg.members:
            raise RecpipeError("model.members: a blend needs at least one member model")
        self.member_names = list(cfg.members)
        self.member_cfgs = [cfg.members[name] for name in self.member_names]
        self.members = [build(c, n_users, n_items) for c in self.member_cfgs]
        for name, member in zip(self.member_names, self.members):
            if member.uses_features:
                raise RecpipeError(f"model.members.{name}: feature models cannot be blended")
        self.weight_grid = [float(w) for w in cfg.weight_grid]
        self.seed = int(cfg.seed)
        self.member_weights = tf.Variable(tf.ones([len(self.members)]), trainable=False, name="member_weights")

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        from recpipe import training  # training imports the model registry

        params: dict[str, Any] = {}
        for name, member, member_cfg in zip(self.member_names, self.members, self.member_cfgs):
            log.info(f"blend: fitting member {name} ({member_cfg.name})")
            result = training.fit(member, data, member_cfg, self.seed)
            params[name] = result.params | {result.metric: result.best_value}
        weights, value = self._choose_weights(data)
        self.member_weights.assign(weights)
        return params | {"weights": dict(zip(self.member_names, weights.tolist())), f"val_{TUNE_METRIC}": value}

    def _choose_weights(self, data: Processed) -> tuple[np.ndarray, float]:
        """The weights of ``weight_grid`` with the best validation ndcg_at_10 (first member: 1 or 0)."""
        exclude, truth = data.matrix("train"), data.matrix("val")
        users = users_with_truth(truth)  # sorted: a user's row is found by searchsorted
        stacked = np.stack(
            [standardise(m.score_all(tf.constant(users)), member_dropped_rank(m)).numpy() for m in self.members]
        )
        best_weights, best_value = np.ones(len(self.members), np.float32), -np.inf
        for weights in weight_combinations(self.weight_grid, len(self.members)):
            blended = np.tensordot(weights, stacked, axes=1)

            def score(u: np.ndarray, blended: np.ndarray = blended) -> np.ndarray:
                return blended[np.searchsorted(users, u)]

            value = float(rank_metrics(score, exclude, truth, (TABLE_K,))[TUNE_METRIC])
            if value > best_value:
                best_weights, best_value = weights, value
        log.info(
            f"blend weights {dict(zip(self.member_names, best_weights.tolist()))}: val {TUNE_METRIC} {best_value:.4f}"
        )
        return best_weights, best_value

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        parts = [
            w * standardise(m.score_all(user_idx), member_dropped_rank(m))
            for w, m in zip(tf.unstack(self.member_weights), self.members)
        ]
        return tf.add_n(parts)
