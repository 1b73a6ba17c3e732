"""iALS against a per-user numpy solve, window EASE against a pair-by-pair count, the
validation-weighted blend, early stopping's minimum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf
from omegaconf import OmegaConf

from recpipe.data.processed import Processed
from recpipe.errors import RecpipeError
from recpipe.models import build
from recpipe.models.blend import standardise, weight_combinations
from recpipe.models.classic.ease import EASE
from recpipe.models.ials import entry_blocks, solve_side
from recpipe.models.io import load_model, save_model
from recpipe.models.window_ease import time_ordered, window_gram
from recpipe.sweep import objective, search_progress
from recpipe.training import fit, stops_early, train_summary, validation_ndcg

from .helpers import REPO, model_cfg

IALS = {
    "name": "ials",
    "factors": 4,
    "alpha0": 0.3,
    "lam": 0.05,
    "nu": 1.0,
    "iterations": 3,
    "init_std": 0.1,
    "seed": 1,
}


def test_ials_half_step_solves_each_rows_least_squares_problem() -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((7, 5)) < 0.4).astype(np.float32)
    H = rng.normal(size=(5, 3)).astype(np.float32)
    alpha0, lam, nu = 0.5, 0.1, 0.8
    W = rng.normal(size=(7, 3)).astype(np.float32)
    by_user, by_item = entry_blocks(sp.csr_matrix(X))
    for matrix, grouped, other in ((X, by_user, H), (X.T, by_item, W)):  # users given items, items given users
        got = solve_side(grouped, tf.constant(other), len(other), alpha0, lam, nu).numpy()
        for u, row in enumerate(matrix):  # minimise sum_obs (1 - w.h)^2 + alpha0 sum_all (w.h)^2 + reg |w|^2
            seen = other[row > 0]
            reg = lam * (row.sum() + alpha0 * len(other)) ** nu
            A = alpha0 * other.T @ other + seen.T @ seen + reg * np.eye(3)
            np.testing.assert_allclose(got[u], np.linalg.solve(A, seen.sum(0)), rtol=1e-4, atol=1e-5)


def test_ials_fits_saves_and_factorizes(toy_data: Processed, tmp_path: Path) -> None:
    cfg = OmegaConf.create(IALS)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    fit(model, toy_data, cfg, seed=0)
    users = tf.range(toy_data.n_users)
    scores = model.score_all(users).numpy()
    np.testing.assert_allclose(scores, model.query_vectors(users) @ tf.transpose(model.candidate_vectors()), rtol=1e-5)
    popular = toy_data.item_popularity()
    assert np.corrcoef(scores.mean(0), popular)[0, 1] > 0.5  # it learned from the data
    save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    np.testing.assert_array_equal(load_model(tmp_path / "model").score_all(users), scores)


def test_window_gram_counts_each_pair_by_its_distance_in_the_users_sequence() -> None:
    rng = np.random.default_rng(0)
    lengths = (6, 1, 7, 4)
    users = np.repeat(np.arange(len(lengths)), lengths)
    items = np.concatenate([rng.permutation(7)[:n] for n in lengths])  # items 1 and 4 are not kept
    keep, window, decay = np.array([0, 2, 3, 5, 6]), 3, 0.5
    expected = np.zeros((7, 7))
    for u in np.unique(users):  # slow reference: every pair of positions of one user
        seq = items[users == u]
        for p in range(len(seq)):
            expected[seq[p], seq[p]] += 1
            for q in range(len(seq)):
                if 1 <= abs(p - q) <= window and seq[p] != seq[q]:
                    expected[seq[p], seq[q]] += decay ** (abs(p - q) - 1)
    got = window_gram(users, items, keep, 7, window, decay)
    np.testing.assert_allclose(got, expected[np.ix_(keep, keep)], rtol=1e-6)


def test_window_ease_fits_a_matrix_that_is_not_positive_semidefinite() -> None:
    """Users with one identical time-ordered history weigh each item's neighbours as much as the item
    itself: the matrix has negative eigenvalues beyond -lam, Cholesky fails and EASE inverts by LU."""
    n_users, n_items, lam = 300, 30, 1.0
    users, items = np.repeat(np.arange(n_users), n_items), np.tile(np.arange(n_items), n_users)
    G = window_gram(users, items, np.arange(n_items), n_items, 100, 0.97)
    assert np.linalg.eigvalsh(G.astype(np.float64)).min() < -lam
    X = sp.csr_matrix((np.ones(len(users)), (users, items)), shape=(n_users, n_items))
    ease = EASE(lam).fit(X, (np.arange(n_items), G))
    assert np.isfinite(ease.score(np.arange(n_users))).all()
    with pytest.raises(RecpipeError, match=r"model=window_ease: .* lam I \(lam=1\) is singular"):
        EASE(lam, model="window_ease").fit(X, (np.arange(n_items), -lam * np.eye(n_items, dtype=np.float32)))


def test_window_ease_orders_by_time_and_with_an_unbounded_window_is_ease(toy_data: Processed, tmp_path: Path) -> None:
    users, items = time_ordered(toy_data.train)
    times = toy_data.train.set_index(["user_idx", "item_idx"])["timestamp"]
    ordered = times.loc[list(zip(users, items))].to_numpy()
    assert (np.diff(users) >= 0).all() and (np.diff(ordered)[np.diff(users) == 0] >= 0).all()
    ease_cfg = OmegaConf.create({"name": "ease", "lam": 20.0})
    window_cfg = OmegaConf.create({"name": "window_ease", "lam": 20.0, "window": toy_data.n_items, "decay": 1.0})
    models = [build(c, toy_data.n_users, toy_data.n_items) for c in (ease_cfg, window_cfg)]
    for cfg, model in zip((ease_cfg, window_cfg), models):
        fit(model, toy_data, cfg, seed=0)
    users = tf.range(toy_data.n_users)
    np.testing.assert_allclose(models[1].score_all(users), models[0].score_all(users), rtol=1e-4, atol=1e-5)
    near = OmegaConf.merge(window_cfg, {"window": 2, "decay": 0.5})
    model = build(near, toy_data.n_users, toy_data.n_items)
    fit(model, toy_data, near, seed=0)
    assert not np.allclose(model.score_all(users), models[0].score_all(users), atol=1e-3)
    save_model(model, near, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    np.testing.assert_array_equal(load_model(tmp_path / "model").score_all(users), model.score_all(users))


def test_mult_vae_refuses_a_dense_input_larger_than_half_the_memory() -> None:
    with pytest.raises(RecpipeError, match=r"mult_vae keeps the train matrix dense: 1,000,000 users x 2,000,000 items"):
        build(model_cfg("mult_vae"), 1_000_000, 2_000_000)  # 7.3 TiB: refused before any weight exists


def test_blend_weight_combinations_put_the_first_member_at_one_or_zero() -> None:
    combos = [w.tolist() for w in weight_combinations([0.0, 2.0], 3)]
    assert combos == [[1, 0, 0], [1, 0, 2], [1, 2, 0], [1, 2, 2], [0, 0, 2], [0, 2, 0], [0, 2, 2]]


def blend_cfg() -> object:
    vae = OmegaConf.merge(model_cfg("mult_vae"), {"epochs": 2, "patience": 2})
    members = {"ease": {"name": "ease", "lam": 50.0}, "ials": IALS, "mult_vae": vae}
    return OmegaConf.create({"name": "blend", "members": members, "weight_grid": [0.0, 0.5, 1.0], "seed": 0})


def test_blend_weights_come_from_validation_and_survive_save_and_load(toy_data: Processed, tmp_path: Path) -> None:
    cfg = blend_cfg()
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    result = fit(model, toy_data, cfg, seed=0)
    weights = result.params["weights"]
    assert weights["ease"] in (0.0, 1.0) and set(weights) == {"ease", "ials", "mult_vae"}
    assert result.params["val_ndcg_at_10"] == pytest.approx(result.val_ndcg, rel=1e-6)
    users = tf.range(toy_data.n_users)
    expected = sum(w * standardise(m.score_all(users)) for w, m in zip(weights.values(), model.members))
    np.testing.assert_allclose(model.score_all(users), expected, rtol=1e-5, atol=1e-5)
    ease_alone = model.members[0]
    assert result.val_ndcg >= validation_ndcg(ease_alone, toy_data) - 1e-9  # (1, 0, 0) is on the grid
    save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    np.testing.assert_allclose(load_model(tmp_path / "model").score_all(users), model.score_all(users), rtol=1e-6)


def test_blend_with_a_capped_ease_member_ranks_its_dropped_items_last_by_popularity(
    toy_data: Processed, tmp_path: Path
) -> None:
    members = {"ease": {"name": "ease", "lam": 50.0, "max_items": 10}, "pop": {"name": "popularity"}}
    cfg = OmegaConf.create({"name": "blend", "members": members, "weight_grid": [0.0], "seed": 0})
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    fit(model, toy_data, cfg, seed=0)  # the grid leaves only (1, 0): the EASE member alone
    save_model(model, cfg, toy_data.n_users, toy_data.n_items, tmp_path / "model")
    scores = load_model(tmp_path / "model").score_all(tf.range(toy_data.n_users)).numpy()
    dropped = model.members[0].dropped_rank.numpy()
    assert np.isfinite(scores).all() and (dropped >= 0).sum() == toy_data.n_items - 10
    assert (scores[:, dropped >= 0].max(axis=1) < scores[:, dropped < 0].min(axis=1)).all()
    by_popularity = np.flatnonzero(dropped >= 0)[np.argsort(dropped[dropped >= 0])]
    assert (np.diff(scores[:, by_popularity], axis=1) < 0).all()


def test_standardise_leaves_dropped_scores_out_and_ranks_them_last() -> None:
    kept = np.array([1.0, 2.0, 3.0, 6.0], np.float32)
    rows = tf.constant([[*kept, -1e30, 0.5], [*kept, 0.0, 4.0]], tf.float32)
    z = standardise(rows[:1], tf.constant([-1.0] * 4 + [0.5, 0.0])).numpy()
    z = np.concatenate([z, standardise(rows[1:]).numpy()])
    assert np.isfinite(z).all()
    np.testing.assert_allclose(z[0, :4], (kept - kept.mean()) / kept.std(), rtol=1e-5)
    assert (z[0, 4:] < z[0, :4].min()).all() and z[0, 5] > z[0, 4]  # below the kept ones, most popular first
    full = np.array([*kept, 0.0, 4.0])
    np.testing.assert_allclose(z[1], (full - full.mean()) / full.std(), rtol=1e-5)
    mean, var = tf.nn.moments(rows[1:], axes=[1], keepdims=True)  # no dropped entries: as before, bit for bit
    np.testing.assert_array_equal(z[1:], ((rows[1:] - mean) * tf.math.rsqrt(var + 1e-12)).numpy())


def test_the_default_blend_config_composes_its_members() -> None:
    cfg = OmegaConf.load(REPO / "params.yaml").model
    names = [m.name for m in cfg.members.values()]
    assert cfg.name == "blend" and names == ["ease", "ials", "mult_vae", "window_ease"]


def test_early_stopping_keeps_the_best_epoch_from_min_epochs_on(toy_data: Processed) -> None:
    assert not stops_early(epoch=3, best_epoch=1, patience=2, min_epochs=5)
    assert stops_early(epoch=7, best_epoch=5, patience=2, min_epochs=5)
    cfg = model_cfg("ncf_implicit", epochs=8, patience=1, min_epochs=5)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    result = fit(model, toy_data, cfg, seed=0)
    values = result.history[result.metric].to_numpy()
    assert 5 <= result.best_epoch < len(values) + 1 and len(values) >= 6
    assert result.best_value == values[4:].max()  # epochs 1-4 never count, however they score
    assert validation_ndcg(model, toy_data) == pytest.approx(result.val_ndcg)


def test_search_objective_is_the_validation_ndcg_and_progress_tracks_the_best(toy_data, tmp_path: Path) -> None:
    cfg = model_cfg("two_tower", epochs=1)
    model = build(cfg, toy_data.n_users, toy_data.n_items)
    summary = train_summary(cfg, model, fit(model, toy_data, cfg, seed=0))
    assert objective(summary, "val_ndcg_at_10") == pytest.approx(validation_ndcg(model, toy_data), rel=1e-6)
    assert summary["metric"] == "val_recall_at_10"  # early stopping is unchanged
    lines = [
        search_progress(tmp_path, job, v, "maximize", 3, "val_ndcg_at_10") for job, v in enumerate([0.2, 0.3, 0.1])
    ]
    assert lines[-1] == "trial 3/3 (job 2): val_ndcg_at_10 0.1000; best so far 0.3000 (job 1)"
    assert search_progress(tmp_path / "x", 0, 0.9, "minimize", None, "val_rmse").startswith("trial 1 (job 0)")
