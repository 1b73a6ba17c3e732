"""The whole default pipeline on MovieLens 100K, as a user runs it (slow: CI runs it too)."""

from __future__ import annotations

import json

import pytest

from .helpers import commit, copy_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("ml100k") / "repo")
    run(["dvc", "repro"], repo)
    commit(repo, "first repro")
    return repo


def _ndcg_ratio(repo) -> float:
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    baselines = json.loads((repo / "reports/baselines.json").read_text())
    return metrics["ndcg_at_10"] / baselines["popularity"]["ndcg_at_10"]


def test_default_stats(repo):
    stats = json.loads((repo / "data/processed/stats.json").read_text())
    assert stats["raw"] == {"users": 943, "items": 1682, "interactions": 100000}


def test_default_model_quality(repo):
    """The default model (blend) is ahead of every baseline, EASE included: the paired bootstrap
    interval of its ndcg_at_10 minus the best baseline's is above zero, and it stays near issue 11's
    bar of 1.05x EASE's ndcg_at_10 (1.053x measured here: the README table; 1% slack for another
    CPU's float rounding in the gradient-trained members)."""
    model = json.loads((repo / "reports/detail.json").read_text())["model"]
    assert model["ndcg_at_10_vs_best_baseline_ci_low"] > 0
    assert _ndcg_ratio(repo) >= 1.5
    ease = json.loads((repo / "reports/baselines.json").read_text())["ease"]["ndcg_at_10"]
    assert json.loads((repo / "reports/metrics.json").read_text())["ndcg_at_10"] >= 1.04 * ease


def test_second_repro_does_nothing(repo):
    proc = run(["dvc", "repro"], repo)
    assert "Running stage" not in proc.stdout + proc.stderr


def test_recommend_prints_titles(repo):
    proc = run(["recpipe", "recommend", "--user", "42", "-k", "10"], repo)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 10
    assert "(" in proc.stdout  # ML-100K titles carry their year, e.g. "Star Wars (1977)"


@pytest.mark.parametrize("model", ["mf", "ncf", "two_tower"])
def test_exp_run_each_model(repo, model):
    run(["dvc", "exp", "run", "-S", f"model={model}", "-n", f"exp-{model}"], repo)
    assert _ndcg_ratio(repo) >= 1.5
    if model == "mf":  # issue 11's bar is 0.89 (0.8853 measured: README table); slack for rounding
        assert json.loads((repo / "reports/metrics.json").read_text())["rmse"] <= 0.895
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = json.dumps(shown)
    assert f"exp-{model}" in names
