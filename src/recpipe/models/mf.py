"""Biased matrix factorization on explicit ratings, with an implicit-feedback term for ranking.

Two solvers (``model.solver``): ``gibbs``, Bayesian MF sampled by Gibbs sweeps
(``recpipe.models.gibbs``) with an iALS ranking term solved on the same row blocks, and ``gradient``,
MAP MF with a sampled logistic ranking term trained by ``recpipe.training.fit``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.evaluation import metrics
from recpipe.models import gibbs, ials
from recpipe.models.base import RecModel, register
from recpipe.models.blocks import RowBlocks, by_row, row_blocks
from recpipe.models.common import (
    constant,
    mean_square_norm,
    normal_init,
    rating_rows,
    sampled_logistic_loss,
    uniform_negatives,
)

log = logging.getLogger(__name__)

SOLVERS = ("gibbs", "gradient")


@register("mf")
class MatrixFactorization(RecModel):
    """Rating r(u, i) = mu + b_u + b_i + p_u . q_i, fit by MSE with L2 on the rows each batch uses.

    Rating MSE alone ranks rarely rated items high, so with ``implicit_weight > 0`` the model also
    learns which items a user rates: the ranking score s(u, i) = p_u . q_i + x_u . y_i + c_i
    (``implicit_dim`` extra factors x, y and an item bias c) is fit by logistic loss of each rated
    item against ``num_negatives`` items drawn uniformly from the catalog, weighted by
    ``implicit_weight``. The factors p, q are shared by both scores. ``score_all`` returns s, or
    the predicted rating when ``implicit_weight`` is 0; either way it factorizes, with query
    [p_u, x_u, 1] and candidate [q_i, y_i, c_i] (or [p_u, 1] and [q_i, b_i]).

    ``solver: gibbs`` (``fitting`` closed form) samples the rating model instead
    (``gibbs.gibbs_bpmf``: ``epochs`` sweeps, the average after ``burn_in`` kept as its best
    rank-``posterior_rank`` factorization p, q with the averaged biases; with
    ``rated_prior_columns`` > 0 the prior mean of each user's vector depends on which items the
    user rated in train, SVD++'s implicit feedback, and each item's on which users rated it, see
    ``gibbs.LinkedPrior``), then fits the ranking factors x, y by ``implicit_iterations`` iALS
    iterations (``ials.fit_ials``, ``implicit_alpha0``, ``implicit_lam``,
    ``implicit_nu``) on which items each user rated: s(u, i) = x_u . y_i. The validation RMSE of
    the running average is logged every ``validate_every`` sweeps and kept as ``fit_history`` (the
    training curve).
    """

    predicts_ratings = True
    objective = "rating"
    fitting = "gradient"

    def __init__(self, cfg: Any, n_users: int, n_items: int, **context: Any) -> None:
        super().__init__(name="mf")
        self.cfg = cfg
        self.n_users, self.n_items = n_users, n_items
        self.solver = str(cfg.get("solver", "gradient"))
        if self.solver not in SOLVERS:
            raise RecpipeError(f"model.solver: expected one of {', '.join(SOLVERS)}, got {self.solver!r}")
        self.sampled = self.solver == "gibbs"
        self.fitting = "closed_form" if self.sampled else "gradient"
        self.sweep_seconds = 0.0  # gibbs: seconds spent sampling in the last fit
        self.implicit = float(cfg.implicit_weight) > 0
        self.implicit_weight = float(cfg.implicit_weight)
        self.num_negatives = int(cfg.num_negatives)
        self.l2, self.bias_l2 = float(cfg.l2), float(cfg.bias_l2)
        dim = int(cfg.posterior_rank if self.sampled else cfg.embedding_dim)

        def weight(name: str, rows: int, width: int | None = None) -> tf.Variable:
            shape, init = ((rows, width), normal_init()) if width else ((rows,), "zeros")
            return self.add_weight(name=name, shape=shape, initializer=init)

        self.user_factors = weight("user_factors", n_users, dim)
        self.item_factors = weight("item_factors", n_items, dim)
        self.user_bias, self.item_bias = weight("user_bias", n_users), weight("item_bias", n_items)
        if self.implicit:
            extra = int(cfg.implicit_dim)
            self.user_extra = weight("user_extra", n_users, extra)
            self.item_extra = weight("item_extra", n_items, extra)
            self.rank_bias = weight("rank_bias", n_items)  # zero with the gibbs solver (iALS has none)
        self.global_mean = constant(self, "global_mean")
        self.min_rating = constant(self, "min_rating")
        self.max_rating = constant(self, "max_rating")

    def prepare(self, train: pd.DataFrame) -> pd.DataFrame:
        """Set the global mean and rating range from ``train``; return the rows to fit."""
        rows = rating_rows(train, "mf")
        ratings = rows["rating"].to_numpy("float64")
        self.global_mean.assign(ratings.mean())
        self.min_rating.assign(ratings.min())
        self.max_rating.assign(ratings.max())
        return rows

    def fit_closed_form(self, data: Processed) -> dict[str, Any]:
        """``solver: gibbs``: sample the rating model, solve the ranking factors (see the class)."""
        cfg = self.cfg
        rows = self.prepare(data.train)
        users, items = rows["user_idx"].to_numpy(np.int64), rows["item_idx"].to_numpy(np.int64)
        centred = rows["rating"].to_numpy(np.float64) - float(self.global_mean.numpy())
        dim, columns = int(cfg.embedding_dim), int(cfg.rated_prior_columns)
        start = time.perf_counter()
        log.info(f"gibbs: grouping {len(rows):,} ratings by user and by item, setting up the priors")
        ratings = by_row(users, items, centred, self.n_users, self.n_items)
        matrices = (ratings, ratings.T.tocsr())  # by user, by item
        with ThreadPoolExecutor(2) as pool:  # the two sides' setups overlap where numpy/LAPACK free the GIL
            blocks = [pool.submit(row_blocks, matrix) for matrix in matrices]
            linked = [pool.submit(gibbs.rated_prior, matrix, columns, dim + 1) for matrix in matrices if columns]
            by_user, by_item = (future.result() for future in blocks)
            priors = (linked[0].result(), linked[1].result()) if columns else (None, None)
        seconds = time.perf_counter() - start
        log.info(f"gibbs: set up in {seconds:.1f}s")
        sweeps = self.data_passes = int(cfg.epochs)
        burn_in = min(int(cfg.burn_in), sweeps - 1)
        if burn_in < int(cfg.burn_in):
            log.warning(
                f"model.burn_in {cfg.burn_in} >= model.epochs {sweeps}: burn_in {burn_in} used (the last sweep is kept)"
            )
        val = data.val.dropna(subset=["rating"])
        every = int(cfg.validate_every)
        if val.empty:
            log.info("gibbs: the validation split has no ratings; the sweeps are not validated")

        clock = {"last": 0.0, "sampling": 0.0, "validated": 0.0}
        curve: list[dict[str, float]] = []

        def on_sweep(sweep: int, posterior: Any) -> None:
            clock["sampling"] += time.perf_counter() - clock["last"]
            progress = f"gibbs sweep {sweep}/{sweeps}  {len(rows) * sweep / clock['sampling']:,.0f} ratings/s"
            if not val.empty and (sweep % every == 0 or sweep == sweeps):
                self._set_posterior(posterior())
                val_rmse = metrics.rmse(self.predict_rating(*_pairs(val)).numpy(), val["rating"].to_numpy(np.float64))
                seconds, clock["validated"] = clock["sampling"] - clock["validated"], clock["sampling"]
                curve.append({"epoch": sweep, "loss": float("nan"), "val_rmse": val_rmse, "seconds": seconds})
                progress += f"  val_rmse {val_rmse:.4f} (mean of {max(sweep - burn_in, 0)} samples)"
            log.info(progress)
            clock["last"] = time.perf_counter()

        clock["last"] = time.perf_counter()  # sampling time: the sweeps, without the setup and validation
        posterior = gibbs.gibbs_bpmf(
            by_user,
            by_item,
            dim,
            sweeps,
            burn_in,
            int(cfg.posterior_rank),
            int(cfg.seed),
            priors=priors,
            on_sweep=on_sweep,
        )
        self._set_posterior(posterior)
        self.sweep_seconds = clock["sampling"]
        self.fit_history = pd.DataFrame(curve) if curve else None
        if self.implicit:
            self._solve_implicit(by_user, by_item)
        return {"samples": posterior.samples}

    def _set_posterior(self, posterior: gibbs.Posterior) -> None:
        """Store a Gibbs posterior mean as the rating factors (zero-padded to ``posterior_rank``)."""
        for variable, value in ((self.user_factors, posterior.users), (self.item_factors, posterior.items)):
            padded = np.zeros(variable.shape, np.float32)
            padded[:, : value.shape[1]] = value
            variable.assign(padded)
        self.user_bias.assign(posterior.user_bias.astype(np.float32))
        self.item_bias.assign(posterior.item_bias.astype(np.float32))

    def _solve_implicit(self, by_user: RowBlocks, by_item: RowBlocks) -> None:
        """Fit the ranking factors x, y by ``implicit_iterations`` iALS iterations from seeded item factors."""
        cfg = self.cfg
        users, items = ials.fit_ials(
            by_user,
            by_item,
            int(cfg.implicit_dim),
            float(cfg.implicit_alpha0),
            float(cfg.implicit_lam),
            float(cfg.implicit_nu),
            int(cfg.implicit_iterations),
            0.1,
            int(cfg.seed),
        )
        self.user_extra.assign(users)
        self.item_extra.assign(items)

    def compute_loss(self, batch: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        users, items = batch["user_idx"], batch["item_idx"]
        p, q = tf.gather(self.user_factors, users), tf.gather(self.item_factors, items)
        b_u, b_i = tf.gather(self.user_bias, users), tf.gather(self.item_bias, items)
        dot = tf.reduce_sum(p * q, axis=1)
        error = batch["rating"] - (self.global_mean + b_u + b_i + dot)
        loss = (
            tf.reduce_mean(tf.square(error))
            + self.l2 * (mean_square_norm(p) + mean_square_norm(q))
            + self.bias_l2 * tf.reduce_mean(tf.square(b_u) + tf.square(b_i))
        )
        if not self.implicit:
            return loss
        x, y = tf.gather(self.user_extra, users), tf.gather(self.item_extra, items)
        pos = dot + tf.reduce_sum(x * y, axis=1) + tf.gather(self.rank_bias, items)
        negatives = uniform_negatives(tf.size(users) * self.num_negatives, self.n_items, batch["seed"])
        if self.num_negatives > 1:
            p, x = tf.repeat(p, self.num_negatives, axis=0), tf.repeat(x, self.num_negatives, axis=0)
        neg = (
            tf.reduce_sum(p * tf.gather(self.item_factors, negatives), axis=1)
            + tf.reduce_sum(x * tf.gather(self.item_extra, negatives), axis=1)
            + tf.gather(self.rank_bias, negatives)
        )
        return (
            loss
            + self.l2 * (mean_square_norm(x) + mean_square_norm(y))
            + self.implicit_weight * sampled_logistic_loss(pos, neg, self.num_negatives)
        )

    def predict_rating(self, user_idx: tf.Tensor, item_idx: tf.Tensor) -> tf.Tensor:
        rating = (
            self.global_mean
            + tf.gather(self.user_bias, user_idx)
            + tf.gather(self.item_bias, item_idx)
            + tf.reduce_sum(tf.gather(self.user_factors, user_idx) * tf.gather(self.item_factors, item_idx), axis=1)
        )
        return tf.clip_by_value(rating, self.min_rating, self.max_rating)

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        scores = tf.matmul(self.query_vectors(user_idx), self.candidate_vectors(), transpose_b=True)
        if self.implicit:
            return scores
        return scores + self.global_mean + tf.gather(self.user_bias, user_idx)[:, None]

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        parts = [tf.gather(self.user_factors, user_idx)]
        if self.implicit:
            parts = [*parts[self.sampled :], tf.gather(self.user_extra, user_idx)]
        return tf.concat([*parts, tf.ones_like(parts[0][:, :1])], axis=1)

    def candidate_vectors(self) -> tf.Tensor:
        if self.implicit:
            parts = [self.item_factors, self.item_extra, self.rank_bias[:, None]]
            return tf.concat(parts[self.sampled :], axis=1)
        return tf.concat([self.item_factors, self.item_bias[:, None]], axis=1)


def _pairs(rows: pd.DataFrame) -> tuple[tf.Tensor, tf.Tensor]:
    """The (user_idx, item_idx) columns of ``rows`` as int32 tensors."""
    return tf.constant(rows["user_idx"].to_numpy(np.int32)), tf.constant(rows["item_idx"].to_numpy(np.int32))
