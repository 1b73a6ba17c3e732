"""MF's Gibbs solver (recpipe.models.gibbs): each step against a slow, obvious numpy reference, and
the whole ``solver: gibbs`` model (learns, saves, factorizes, reproducible)."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from recpipe.data.processed import Processed
from recpipe.models import blocks, build, gibbs
from recpipe.models.io import load_model, save_model
from recpipe.training import fit, rmse, write_training_curve

from .helpers import model_cfg


def tiny_ratings(seed: int = 0, n_rows: int = 30, n_cols: int = 20, n: int = 150):
    """Distinct random (row, col) pairs with values, some rows and columns left empty."""
    rng = np.random.default_rng(seed)
    cells = rng.choice((n_rows - 2) * n_cols, size=n, replace=False)
    return cells // n_cols, cells % n_cols, rng.normal(size=n), rng


def test_row_blocks_hold_every_entry_once_and_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "MIN_WIDTH", 2)
    rows, cols, values, _ = tiny_ratings()
    grouped = blocks.row_blocks(blocks.by_row(rows, cols, values, 30, 20), budget=40)
    assert len(grouped.rows) > 3
    seen = []
    for r, c, v, n in zip(grouped.rows, grouped.cols, grouped.values, grouped.counts):
        assert int(tf.size(c)) <= 40 or r.shape[0] == 1
        for row, cs, vs, count in zip(r.numpy(), c.numpy(), v.numpy(), n.numpy()):
            assert (cs[int(count) :] == 20).all() and (vs[int(count) :] == 0).all()  # padding
            seen += [(int(row), int(col), float(val)) for col, val in zip(cs[: int(count)], vs[: int(count)])]
    expected = [(int(r), int(c), float(np.float32(v))) for r, c, v in zip(rows, cols, values)]
    assert sorted(seen) == sorted(expected)
    concatenated = np.concatenate([r.numpy() for r in grouped.rows])
    np.testing.assert_array_equal(concatenated[grouped.order.numpy()], np.arange(30))


def test_by_row_keeps_every_entry_in_its_order_within_the_row() -> None:
    rows, cols, values = np.array([2, 0, 2, 2, 0]), np.array([1, 3, 1, 0, 2]), np.arange(5.0)
    matrix = blocks.by_row(rows, cols, values, 4, 4)  # (2, 1) twice: kept twice, not summed
    np.testing.assert_array_equal(matrix.indptr, [0, 2, 2, 5, 5])
    np.testing.assert_array_equal(matrix.indices, [3, 2, 1, 1, 0])
    np.testing.assert_array_equal(matrix.data, [1.0, 4.0, 0.0, 2.0, 3.0])


def test_stable_argsort_is_numpys_stable_argsort() -> None:
    keys = np.random.default_rng(0).integers(0, 200_000, 50_000)
    keys[:10] = [0, 2**32 - 1, 65535, 65536, 65536, 0, 7, 2**16 + 7, 7, 2**31]
    np.testing.assert_array_equal(blocks.stable_argsort(keys), np.argsort(keys, kind="stable"))


def test_sample_side_draws_from_the_gaussian_conditional() -> None:
    rows, cols, values, rng = tiny_ratings()
    k = 4
    other = rng.normal(size=(20, k)).astype(np.float32)
    prior_mean, alpha = rng.normal(size=k), 2.0
    root = rng.normal(size=(k, k))
    prior_precision = root @ root.T + np.eye(k)
    noise = rng.normal(size=(30, k)).astype(np.float32)
    grouped = blocks.row_blocks(blocks.by_row(rows, cols, values, 30, 20), budget=40)
    got, sse = gibbs.sample_side(
        grouped, tf.constant(other), tf.constant(alpha), *gibbs._f32(prior_mean[None], prior_precision, noise)
    )
    got = got.numpy()
    pred = (got[rows, :-1] * other[cols, :-1]).sum(1) + got[rows, -1] + other[cols, -1]
    np.testing.assert_allclose(float(sse), ((values - pred) ** 2).sum(), rtol=1e-4)  # under the drawn vectors
    concatenated = np.concatenate([r.numpy() for r in grouped.rows])
    for row in range(30):  # Lambda_r = Lambda + alpha sum f f^T, mean Lambda_r^-1 (Lambda mu + alpha sum f t)
        mine = rows == row
        features = np.column_stack([other[cols[mine], :-1], np.ones(mine.sum())])
        target = values[mine] - other[cols[mine], -1]
        precision = prior_precision + alpha * features.T @ features
        mean = np.linalg.solve(precision, prior_precision @ prior_mean + alpha * features.T @ target)
        z = noise[np.flatnonzero(concatenated == row)[0]]
        expected = mean + np.linalg.solve(np.linalg.cholesky(precision).T, z)  # covariance precision^-1
        np.testing.assert_allclose(got[row], expected, rtol=1e-3, atol=1e-3)


def test_squared_error_sums_the_residuals() -> None:
    rows, cols, values, rng = tiny_ratings()
    users, items = rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    grouped = blocks.row_blocks(blocks.by_row(rows, cols, values, 30, 20), budget=40)
    pred = (users[rows, :-1] * items[cols, :-1]).sum(1) + users[rows, -1] + items[cols, -1]
    got = gibbs.squared_error(grouped, *gibbs._f32(users, items))
    np.testing.assert_allclose(float(got), ((values - pred) ** 2).sum(), rtol=1e-4)


def test_wishart_draws_have_the_wishart_mean() -> None:
    rng = np.random.default_rng(0)
    scale = np.array([[1.0, 0.3], [0.3, 0.5]])
    draws = np.mean([gibbs.sample_wishart(scale, 5.0, rng) for _ in range(4000)], axis=0)
    np.testing.assert_allclose(draws, 5.0 * scale, rtol=0.05, atol=0.05)


def test_compress_is_the_sum_of_the_samples() -> None:
    rng = np.random.default_rng(0)
    users = [rng.normal(size=(12, 3)) for _ in range(4)]
    items = [rng.normal(size=(9, 3)) for _ in range(4)]
    total = np.sum([u @ v.T for u, v in zip(users, items)], axis=0)
    left, right = gibbs.compress(users, items, rank=9)
    np.testing.assert_allclose(left @ right.T, total, atol=1e-10)
    left, right = gibbs.compress(users, items, rank=2)  # the best rank-2 approximation (Eckart-Young)
    s = np.linalg.svd(total, compute_uv=False)
    np.testing.assert_allclose(np.linalg.norm(total - left @ right.T), np.sqrt((s[2:] ** 2).sum()), rtol=1e-8)


def gibbs_cfg(**overrides: object):
    settings = {"embedding_dim": 4, "implicit_dim": 4, "epochs": 6, "burn_in": 2, "validate_every": 3}
    return model_cfg("mf", solver="gibbs", **{**settings, **overrides})


def test_gibbs_mf_learns_saves_and_factorizes(toy_data: Processed, tmp_path: Path) -> None:
    cfg = gibbs_cfg()
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    assert model.fitting == "closed_form"
    result = fit(model, toy_data, cfg, seed=0)
    assert result.params == {"samples": 4}
    mean_only = np.sqrt(np.mean((toy_data.val["rating"] - toy_data.train["rating"].mean()) ** 2))
    assert result.best_value == pytest.approx(rmse(model, toy_data.val)) and result.best_value < mean_only
    save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    users = tf.range(toy_data.n_users, dtype=tf.int32)
    np.testing.assert_array_equal(load_model(tmp_path / "model").score_all(users), model.score_all(users))
    dot = model.query_vectors(users) @ tf.transpose(model.candidate_vectors())
    np.testing.assert_allclose(dot, model.score_all(users), atol=1e-5)
    rerun = build(cfg, toy_data.n_users, toy_data.n_items)
    again = fit(rerun, toy_data, cfg, seed=0)
    np.testing.assert_array_equal(rerun.score_all(users), model.score_all(users))
    write_training_curve(result, tmp_path / "curve.csv")
    write_training_curve(again, tmp_path / "again.csv")
    assert (tmp_path / "curve.csv").read_bytes() == (tmp_path / "again.csv").read_bytes()


def test_gibbs_mf_reports_every_validated_sweep(toy_data: Processed) -> None:
    cfg = gibbs_cfg(epochs=7, validate_every=3)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    rows: list[dict[str, float]] = []
    result = fit(model, toy_data, cfg, seed=0, on_epoch=rows.append)
    assert [row["epoch"] for row in rows] == list(result.history["epoch"]) == [3, 6, 7]
    assert result.best_epoch == 7 and rows[-1]["val_rmse"] == pytest.approx(result.best_value)
    assert len({row["val_rmse"] for row in rows}) == 3  # the running average moves


def test_gibbs_mf_without_ranking_term_scores_by_predicted_rating(
    toy_data: Processed, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = gibbs_cfg(implicit_weight=0.0, epochs=3, burn_in=10)  # burn_in capped: the last sweep is kept
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    with caplog.at_level(logging.WARNING, logger="recpipe.models.mf"):
        assert fit(model, toy_data, cfg, seed=0).params == {"samples": 1}
    assert "model.burn_in 10 >= model.epochs 3: burn_in 2 used" in caplog.text
    users = np.repeat(np.arange(toy_data.n_users, dtype=np.int32), toy_data.n_items)
    items = np.tile(np.arange(toy_data.n_items, dtype=np.int32), toy_data.n_users)
    unclipped = model.score_all(tf.range(toy_data.n_users, dtype=tf.int32)).numpy().ravel()
    np.testing.assert_allclose(np.clip(unclipped, 1, 5), model.predict_rating(users, items), rtol=1e-5)


def test_linked_prior_draws_the_ridge_posterior_of_the_link() -> None:
    rows, cols, _, rng = tiny_ratings(n_rows=8, n_cols=5, n=20)
    prior = gibbs.rated_prior(blocks.by_row(rows, cols, np.ones(len(rows)), 8, 5), max_features=4, k=2)
    assert prior.features.shape == (8, 4)  # the 4 most frequent columns, rows scaled by 1/sqrt(count)
    x = prior.features.toarray()
    counts = np.bincount(rows, minlength=8)
    np.testing.assert_allclose((x**2).sum(1)[counts > 0] * counts[counts > 0] <= counts[counts > 0] + 1e-9, True)
    residual, precision = rng.normal(size=(8, 2)), np.array([[2.0, 0.5], [0.5, 1.0]])
    draws = []
    for _ in range(3000):
        prior.lam = 0.7
        prior.sample(residual, precision, rng)
        draws.append(prior.link)
    # link | residual ~ MN(A^-1 x^T residual, A^-1, precision^-1) with A = x^T x + lam I
    inverse = np.linalg.inv(x.T @ x + 0.7 * np.eye(4))
    np.testing.assert_allclose(np.mean(draws, axis=0), inverse @ x.T @ residual, atol=0.06)
    first = np.array(draws)[:, :, 0]
    np.testing.assert_allclose(np.cov(first.T), inverse * np.linalg.inv(precision)[0, 0], atol=0.06)


def test_gibbs_mf_skips_validation_without_val_ratings(toy_data: Processed, caplog: pytest.LogCaptureFixture) -> None:
    unrated = dataclasses.replace(toy_data, val=toy_data.val.assign(rating=np.nan))
    cfg = gibbs_cfg()
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="recpipe.models.mf"):
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "Mean of empty slice"
        assert fit(model, unrated, cfg, seed=0).params == {"samples": 4}
    said = "\n".join(r.getMessage() for r in caplog.records if r.name == "recpipe.models.mf")
    assert "the validation split has no ratings; the sweeps are not validated" in said
    assert "val_rmse" not in said  # no per-sweep validation lines


@pytest.mark.parametrize("linked", [False, True])
def test_hyper_draws_have_the_normal_wishart_posterior_moments(linked: bool) -> None:
    # hyperprior mu0 = 0, beta0, W0 = I, nu0 = k (Salakhutdinov & Mnih 2008, eq. 14); a link of m
    # rows ~ N(0, (lam Lambda)^-1) adds lam link^T link to W^-1 and m to nu
    rng = np.random.default_rng(1)
    n, k, beta0, lam = 12, 2, 2.0, 0.5
    vectors = rng.normal(1.0, 0.7, size=(n, k))
    link = rng.normal(size=(3, k)) if linked else None
    xbar = vectors.mean(0)
    inv_scale = np.eye(k) + (vectors - xbar).T @ (vectors - xbar) + beta0 * n / (beta0 + n) * np.outer(xbar, xbar)
    nu = k + n
    if link is not None:
        inv_scale, nu = inv_scale + lam * link.T @ link, nu + 3
    draws = [gibbs.sample_hyper(vectors, beta0, rng, link, lam) for _ in range(4000)]
    means, precisions = np.array([d[0] for d in draws]), np.array([d[1] for d in draws])
    expected = nu * np.linalg.inv(inv_scale)  # E[Lambda] = nu W
    np.testing.assert_allclose(precisions.mean(0), expected, rtol=0.05, atol=0.02 * np.abs(expected).max())
    np.testing.assert_allclose(means.mean(0), n * xbar / (beta0 + n), atol=0.02)  # E[mu] = mu_n
    # Cov[mu] = E[(beta_n Lambda)^-1] = W^-1 / (beta_n (nu - k - 1))
    np.testing.assert_allclose(np.cov(means.T), inv_scale / ((beta0 + n) * (nu - k - 1)), atol=0.01)
