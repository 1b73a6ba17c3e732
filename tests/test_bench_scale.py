"""bench/scale.py (issue 12's benchmark): its command line, the defaults it adds per model, its
recall check and how it fails. The stage runs themselves are the benchmark's job; one tiny failing
run checks what a user sees then."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

from recpipe.config import compose
from recpipe.schema import validate

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "scale.py"
_spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
assert _spec and _spec.loader
scale = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scale)


@pytest.mark.parametrize(
    "argv",
    [
        [
            "300000",
            "--users",
            "3000",
            "--items",
            "1500",
            "--keep",
            "k",
            "model.embedding_dim=16",
            "evaluate.max_users=5",
        ],
        [
            "--users",
            "3000",
            "300000",
            "model.embedding_dim=16",
            "--items",
            "1500",
            "evaluate.max_users=5",
            "--keep",
            "k",
        ],
        [
            "model.embedding_dim=16",
            "--keep",
            "k",
            "300000",
            "evaluate.max_users=5",
            "--users",
            "3000",
            "--items",
            "1500",
        ],
    ],
)
def test_arguments_in_any_order(argv: list[str]) -> None:
    args = scale.parse_args(argv)
    assert (args.n, args.users, args.items, args.keep) == (300000, 3000, 1500, Path("k"))
    assert args.overrides == ["model.embedding_dim=16", "evaluate.max_users=5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["0"], "argument N: expected a positive integer, got 0"),
        (["--", "-5"], "argument N: expected a positive integer, got -5"),
        (["--users", "0", "1000"], "argument --users: expected a positive integer, got 0"),
        (["--items", "-3", "1000"], "argument --items: expected a positive integer, got -3"),
        (["--items", "many"], "argument --items: expected a positive integer, got 'many'"),
    ],
)
def test_sizes_must_be_positive(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        scale.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_override_key() -> None:
    assert [scale.override_key(o) for o in ("model.epochs=3", "+a.b=1", "++a.b=2", "~a.b", "model=ease")] == [
        "model.epochs",
        "a.b",
        "a.b",
        "a.b",
        "model",
    ]


def test_scann_settings_scale_with_the_catalog() -> None:
    def settings(items: int) -> dict[str, int]:
        return {o.split("=")[0].rsplit(".", 1)[1]: int(o.split("=")[1]) for o in scale.scann_settings(items)}

    assert settings(59_000) == {"num_leaves": 250, "num_leaves_to_search": 40, "num_reordering_candidates": 500}
    small = settings(1500)
    assert small["num_leaves"] == 40 and small["num_leaves_to_search"] * 1500 / small["num_leaves"] >= 1000
    assert settings(40)["num_leaves_to_search"] == settings(40)["num_leaves"]  # a tiny catalog: every leaf
    large = settings(1_000_000)
    assert large["num_leaves"] > 1000 and large["num_leaves_to_search"] < large["num_leaves"]


def overrides_for(*user: str) -> list[str]:
    return scale.bench_overrides(3000, 60, 40, user)


def test_defaults_follow_the_model() -> None:
    mf = overrides_for()
    assert {"model=mf", "model.epochs=3", "evaluate.max_users=20000", "export.index=scann"} <= set(mf)
    assert not any(o.startswith("model.batch_size") for o in mf)  # gibbs MF has no batches
    assert "export.scann.num_leaves=7" in mf
    mine = overrides_for("model.epochs=5", "export.scann.num_leaves=3")
    assert "model.epochs=3" not in mine and "export.scann.num_leaves=7" not in mine
    assert mine[-2:] == ["model.epochs=5", "export.scann.num_leaves=3"]
    for model in ("item_knn", "ease", "blend"):
        chosen = overrides_for(f"model={model}")
        assert "model=mf" not in chosen and not any(o.startswith(("model.epochs", "export.")) for o in chosen)
        cfg = compose(chosen, REPO / "conf")
        validate(cfg, source="bench/scale.py")
        assert cfg.model.name == model and cfg.export.index == "brute_force"
    assert "export.index=scann" in overrides_for("model=ials")


def test_tie_aware_recall() -> None:
    inf = np.inf
    scores = np.array(
        [
            [5.0, 4.0, 3.0, 3.0, 1.0],  # items 2 and 3 tie at the cut (k=3)
            [5.0, 4.0, 3.0, 2.0, 1.0],
            [-inf, 1.0, -inf, 2.0, -inf],  # two recommendable items
            [-inf, -inf, -inf, -inf, -inf],
        ]
    )
    approx = np.array([[0, 1, 3], [0, 1, 4], [3, 1, -1], [-1, -1, -1]])
    np.testing.assert_allclose(scale.tie_aware_recall(scores, approx, k=3), [1.0, 2 / 3, 1.0, 1.0])
    # a seen item (-inf) or an empty slot is never a hit
    np.testing.assert_allclose(scale.tie_aware_recall(scores[2:3], np.array([[0, 3, -1]]), k=3), [0.5])


def test_last_lines_splits_progress_bars() -> None:
    log = "start\nbar 10%\rbar 50%\rbar 100%\n\nrecpipe train: error: it broke\n"
    assert scale.last_lines(log, 2) == ["bar 100%", "recpipe train: error: it broke"]


def test_stages_get_their_own_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://users-server:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://users-server:5000")
    env = scale.stage_env(tmp_path)
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/mlflow.db"
    assert "MLFLOW_REGISTRY_URI" not in env and env["TF_USE_LEGACY_KERAS"] == "1"


@pytest.fixture
def temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders (``tempfile``) of an in-process ``scale.main`` go to ``tmp_path``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.integration
def test_config_errors_leave_nothing_behind(temp_dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scale.main(["100", "--users", "10", "--items", "5", "model.epochs=0"]) == 2
    assert "model.epochs" in capsys.readouterr().err
    assert scale.main(["100", "--users", "10", "--items", "5", "data.n_items=0"]) == 2
    assert "sized by N, --users, --items" in capsys.readouterr().err
    assert list(temp_dirs.iterdir()) == []


@pytest.mark.integration
@pytest.mark.parametrize("keep", [[], ["--keep", "work"]])
def test_a_failing_stage_keeps_the_folder_and_shows_why(
    keep: list[str], temp_dirs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user_store = temp_dirs / "user.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{user_store}")
    monkeypatch.chdir(temp_dirs)  # a relative --keep is resolved (the stages run inside the folder)
    # 50 users x 20 items cannot hold 2000 distinct interactions: ingest fails
    assert scale.main(["--users", "50", *keep, "2000", "--items", "20", "model.embedding_dim=4"]) == 1
    out = capsys.readouterr().out
    assert "recpipe ingest failed (exit 2)" in out and "no stage finished" in out
    assert "data.n_interactions=2000 is more than 50 users can have" in out
    (work,) = temp_dirs.iterdir()
    assert f"the work folder is kept: {work}" in out
    assert (work / "params.yaml").is_file() and (work / "ingest.log").is_file()
    assert (work / "mlflow.db").is_file() and not user_store.exists()  # the stage's run went to the folder's store


def test_capped_finds_blend_members() -> None:
    ease = {"items_kept": 5, "max_items": 5, "dropped_interaction_share": 0.25}
    params = {"weights": {"ease": 1.0}, "members": {"ease": ease, "ials": {"factors": 8}}}
    assert list(scale.capped(params, "blend")) == [("blend.members.ease", ease)]


def test_what_the_run_recorded(tmp_path: Path) -> None:
    ease = {"items_kept": 8000, "max_items": 8000, "dropped_interaction_share": 0.12345, "lam": 400.0}
    (tmp_path / "reports").mkdir()
    (tmp_path / "models/train").mkdir(parents=True)
    evaluation = {"items": 59000, "baseline_params": {"ease": ease, "item_knn": {"k": 100}}}
    (tmp_path / "reports/evaluation.json").write_text(json.dumps(evaluation))
    summary = {"model": "blend", "fitted_params": {"window_ease": ease | {"items_kept": 59000}}}
    (tmp_path / "models/train/train_summary.json").write_text(json.dumps(summary))
    assert scale.item_caps(tmp_path) == [
        "blend.window_ease (model): 59,000 of 59,000 items kept (max_items 8,000), dropped interaction share 0.123",
        "ease (baseline): 8,000 of 59,000 items kept (max_items 8,000), dropped interaction share 0.123",
    ]
    log = "fit baseline popularity in 0.1 s\nEASE lambda: 40%|\rfit baseline ease in 50.4 s\nevaluated mf in 6.0 s\n"
    (tmp_path / "evaluate.log").write_text(log)
    assert scale.system_times(tmp_path / "evaluate.log") == ["fit: popularity 0 s; ease 50 s", "evaluated: mf 6 s"]
    assert scale.export_label("scann") == "ScaNN export"
    assert scale.export_label("brute_force") == "brute-force export (exact)"


def test_train_throughput_names_the_whole_fit_and_the_sweeps(tmp_path: Path) -> None:
    (tmp_path / "models/train").mkdir(parents=True)
    (tmp_path / "models/train/train_summary.json").write_text(json.dumps({"examples_per_second": 1_177_143.3}))
    log = "gibbs sweep 1/3  2,628,585 ratings/s\ngibbs sweep 3/3  2,953,925 ratings/s  val_rmse 0.8325\n"
    (tmp_path / "train.log").write_text(log)
    assert scale.throughput("train", tmp_path, 0) == "1.18 M ratings/s over the whole fit (2.95 M/s in the sweeps)"
    (tmp_path / "train.log").write_text("epoch 1/3 ...\n")  # a gradient-trained model: no sweeps
    assert scale.throughput("train", tmp_path, 0) == "1.18 M ratings/s over the whole fit"


def test_scann_is_sized_for_the_catalog_preprocess_left() -> None:
    assert set(scale.scann_settings(12)) <= set(scale.bench_overrides(3000, 60, 40, [], catalog=12))


def test_the_data_is_sized_by_the_arguments_only() -> None:
    from recpipe.errors import RecpipeError

    for override in ("data.n_interactions=1200", "data=grouplens", "data.n_users=5"):
        with pytest.raises(RecpipeError, match=r"data=synthetic, sized by N, --users, --items"):
            scale.bench_overrides(3000, 60, 40, [override])


def test_keep_refuses_a_file_and_a_folder_of_other_files(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert scale.unusable_keep(tmp_path / "afile") == "is a file"
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text("seed: 0\n")
    assert "a new or empty folder" in (scale.unusable_keep(project) or "")
    (project / scale.MARKER).touch()  # an earlier run's folder may be reused
    assert scale.unusable_keep(project) is None
    assert scale.unusable_keep(tmp_path / "new") is None and scale.unusable_keep(tmp_path / "project" / "x") is None


def test_keep_into_a_project_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert scale.main(["--users", "60", "--items", "40", "--keep", str(tmp_path), "600"]) == 2
    assert "a new or empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
