"""The Markdown evaluation report shows the right numbers; the PNG plots are written."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from recpipe.errors import RecpipeError
from recpipe.evaluation.bootstrap import compare_to_baselines, sample_effect
from recpipe.evaluation.render import (
    plot_metric_vs_k,
    plot_popularity,
    recommended_popularity,
    render_markdown,
)


def row(markdown: str, metric: str) -> list[str]:
    """The cells of the table row for ``metric``."""
    for line in markdown.splitlines():
        if line.startswith(f"| {metric} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row for {metric} in:\n{markdown}")


@pytest.fixture
def evaluation():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.random(n)
    per_user = {
        "ease": {"ndcg_at_10": base + 0.05, "recall_at_10": base * 0.5, "novelty_at_10": 3 + rng.random(n)},
        "popularity": {"ndcg_at_10": base, "recall_at_10": base * 0.5 + 0.1, "novelty_at_10": 1 + rng.random(n)},
        "random": {"ndcg_at_10": base * 0.1, "recall_at_10": base * 0.05, "novelty_at_10": 6 + rng.random(n)},
    }
    means = {s: {m: float(v.mean()) for m, v in per.items()} for s, per in per_user.items()}
    means["ease"].update(coverage_at_10=0.25, diversity_at_10=float("nan"), rmse=0.91, mae=0.72)
    means["popularity"].update(coverage_at_10=0.04, diversity_at_10=float("nan"), rmse=0.88)
    means["random"].update(coverage_at_10=0.99, diversity_at_10=None)  # JSON null
    intervals = compare_to_baselines(
        "ease", per_user["ease"], {b: per_user[b] for b in ("popularity", "random")}, seed=3
    )
    return means, intervals


def test_markdown_table_has_means_intervals_and_significance(evaluation):
    means, iv = evaluation
    md = render_markdown("ease", means["ease"], {b: means[b] for b in ("popularity", "random")}, iv)
    assert md.startswith("# Evaluation report: ease")
    assert "400 test users" in md and "95% percentile bootstrap" in md and "1000 resamples" in md
    header = row(md.replace("| metric |", "| header |"), "header")
    assert header == ["header", "ease (model)", "popularity", "random", "Δ vs best baseline", "significant"]

    cells = row(md, "ndcg_at_10")
    lo, hi = iv["ci"]["ease"]["ndcg_at_10"]
    assert cells[1] == f"**{means['ease']['ndcg_at_10']:.4f}** [{lo:.4f}, {hi:.4f}]"  # best: bold
    lo, hi = iv["ci"]["random"]["ndcg_at_10"]
    assert cells[3] == f"{means['random']['ndcg_at_10']:.4f} [{lo:.4f}, {hi:.4f}]"
    d = iv["vs_best_baseline"]["ndcg_at_10"]
    assert cells[4] == f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] vs popularity"
    assert d["diff"] == pytest.approx(0.05)
    assert cells[5] == "**yes** (better)"

    cells = row(md, "recall_at_10")  # the model is 0.1 behind popularity on every user
    assert cells[2].startswith("**") and cells[4].startswith("-0.1000 [") and cells[5] == "**yes** (worse)"


def test_rating_errors_lower_is_better_and_only_when_present(evaluation):
    means, iv = evaluation
    md = render_markdown("ease", means["ease"], {b: means[b] for b in ("popularity", "random")}, iv)
    assert row(md, "rmse") == ["rmse", "0.9100", "**0.8800**", "—", "+0.0300 vs popularity", "— (no per-user values)"]
    assert row(md, "mae") == ["mae", "**0.7200**", "—", "—", "—", "—"]
    without = {k: v for k, v in means["ease"].items() if k not in ("rmse", "mae")}
    md = render_markdown("ease", without, {b: means[b] for b in ("popularity", "random")}, iv)
    assert "| rmse |" not in md and "| mae |" not in md


def test_beyond_accuracy_table(evaluation):
    means, iv = evaluation
    md = render_markdown("ease", means["ease"], {b: means[b] for b in ("popularity", "random")}, iv)
    beyond = md.split("## Beyond accuracy (top 10)")[1]
    assert row(beyond, "coverage_at_10") == ["coverage_at_10", "0.2500", "0.0400", "0.9900"]
    assert row(beyond, "diversity_at_10") == ["diversity_at_10", "—", "—", "—"]
    lo, hi = iv["ci"]["ease"]["novelty_at_10"]
    assert row(beyond, "novelty_at_10")[1] == f"{means['ease']['novelty_at_10']:.4f} [{lo:.4f}, {hi:.4f}]"
    assert "Δ vs best baseline" not in beyond  # no better direction for these


def test_not_significant_and_no_intervals():
    same = np.random.default_rng(1).random(200)
    iv = compare_to_baselines("m", {"ndcg_at_10": same}, {"popularity": {"ndcg_at_10": same.copy()}}, seed=0)
    means = {"ndcg_at_10": float(same.mean())}
    md = render_markdown("m", means, {"popularity": means}, iv)
    assert row(md, "ndcg_at_10")[-1] == "no"
    plain = render_markdown("m", means, {"popularity": {"ndcg_at_10": 0.1}}, {})
    assert "no bootstrap intervals" in plain
    assert row(plain, "ndcg_at_10") == [
        "ndcg_at_10",
        f"**{means['ndcg_at_10']:.4f}**",
        "0.1000",
        f"{means['ndcg_at_10'] - 0.1:+.4f} vs popularity",
        "— (no per-user values)",
    ]


def assert_png(path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_plot_metric_vs_k_writes_png(tmp_path):
    systems = {
        "mf": {f"ndcg_at_{k}": 0.2 + k / 500 for k in (5, 10, 20, 50, 100)} | {"rmse": 0.9},
        "popularity": {f"ndcg_at_{k}": 0.1 + k / 1000 for k in (5, 10, 20, 50, 100)},
    }
    path = tmp_path / "plots" / "ndcg_at_k.png"
    plot_metric_vs_k(systems, "ndcg", path)
    assert_png(path)
    # one panel per metric that has values (recall has none here)
    panels = tmp_path / "panels" / "metric_vs_k.png"
    plot_metric_vs_k(systems | {"random": {"hit_rate_at_10": 0.1}}, ["ndcg", "recall", "hit_rate"], panels)
    assert_png(panels)
    with pytest.raises(RecpipeError, match="no recall_at_K"):
        plot_metric_vs_k(systems, "recall", tmp_path / "recall.png")


def test_plot_popularity_writes_png(tmp_path):
    rng = np.random.default_rng(2)
    catalog = rng.zipf(1.6, size=500).astype(float) - 1  # includes never-seen items (0)
    topk = rng.integers(0, 500, size=(50, 12))
    topk[0, -3:] = -1  # empty slots
    rec = recommended_popularity(topk, catalog)
    assert rec.shape == (50 * 10 - 1,)
    np.testing.assert_array_equal(rec[:9], catalog[topk[0, :9]])
    most_popular = np.argsort(-catalog)[:10]
    path = tmp_path / "popularity.png"
    plot_popularity({"model": rec, "popularity": np.tile(catalog[most_popular], 50)}, path, catalog=catalog)
    assert_png(path)
    with pytest.raises(RecpipeError, match="no recommended items"):
        plot_popularity({"model": np.array([])}, tmp_path / "empty.png")


def test_summary_sections_segments_cold_items_and_baseline_params():
    metrics = {
        "ndcg_at_10": 0.3,
        "light_users.ndcg_at_10": 0.2,
        "heavy_users.ndcg_at_10": 0.35,
        "light_users.rmse": 1.1,
        "cold_ndcg_at_10": 0.05,
    }
    baselines = {
        "ease": {
            "ndcg_at_10": 0.33,
            "light_users.ndcg_at_10": 0.25,
            "heavy_users.ndcg_at_10": 0.3,
            "cold_ndcg_at_10": 0.01,
        }
    }
    summary = {
        "segments": {
            "light_users": {"train_interactions": "< 20", "users": 11},
            "heavy_users": {"train_interactions": ">= 20", "users": 80},
        },
        "cold_items": {"items": 13, "users": 10},
        "baseline_params": {"ease": {"lam": 400.0, "val_ndcg_at_10": [[100.0, 0.25], [400.0, 0.2653]]}},
    }
    md = render_markdown("mf", metrics, baselines, {}, summary)
    assert "light_users: 11 users with < 20 train interactions; heavy_users: 80 users" in md
    assert row(md, "light_users.ndcg_at_10") == ["light_users.ndcg_at_10", "0.2000", "**0.2500**"]
    assert row(md, "heavy_users.ndcg_at_10") == ["heavy_users.ndcg_at_10", "**0.3500**", "0.3000"]
    assert row(md, "light_users.rmse") == ["light_users.rmse", "**1.1000**", "—"]  # lower is better, alone
    assert "13 test items have no train or val interaction; the 10 users" in md
    assert row(md, "cold_ndcg_at_10") == ["cold_ndcg_at_10", "**0.0500**", "0.0100"]
    assert "- ease: lam=400; val_ndcg_at_10: 100 → 0.2500, 400 → 0.2653" in md
    # without a summary: no such sections
    assert "## By user segment" not in render_markdown("mf", metrics, baselines, {})


@pytest.mark.parametrize(("evaluated", "warned"), [(1, True), (99, True), (100, False), (2000, False)])
def test_sampled_users_note_gives_the_expected_widening_and_warns_on_tiny_samples(evaluated, warned):
    sample = sample_effect(evaluated, 3000)
    assert sample["too_few_users"] is warned
    md = render_markdown("mf", {"ndcg_at_10": 0.3}, {}, {}, {"user_sample": sample})
    note = md.split("## Sampled users\n\n", 1)[1].split("\n", 1)[0]
    width = f"{(3000 / evaluated) ** 0.5:.2f}x"
    assert f"sample of {evaluated} of the 3000 test users" in note and f"expected to be about {width}" in note
    assert "expected, not measured" in note and ("**Warning:** fewer than 100" in note) is warned
    assert not sample_effect(50, 50)["too_few_users"]  # every test user evaluated: no sample, no warning
