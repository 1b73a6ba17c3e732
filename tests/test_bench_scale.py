"""bench/scale.py (issue 12's benchmark): its command line, the defaults it adds per model, its
recall check and how it fails. The stage runs themselves are the benchmark's job; one tiny failing
run checks what a user sees then."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
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


def run_scale(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """bench/scale.py run by this interpreter without an activated venv (PATH without it), temporary
    folders in ``cwd``."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(sys.executable).parent != Path(p))
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"} | {"PATH": path, "TMPDIR": str(cwd), **env}
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def temp_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary folders (``tempfile``) of an in-process ``scale.main`` go to ``tmp_path``."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


@pytest.mark.integration
def test_bad_sizes_leave_nothing_behind(temp_dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert scale.main(["100", "--users", "10", "--items", "5", "data.n_items=0"]) == 2
    assert "data.n_items: expected a positive integer, got 0" in capsys.readouterr().err
    assert list(temp_dirs.iterdir()) == []


@pytest.mark.integration
def test_a_failing_stage_keeps_the_folder_and_shows_why(temp_dirs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 50 users x 20 items cannot hold 2000 distinct interactions: ingest fails
    assert scale.main(["--users", "50", "2000", "--items", "20", "model.embedding_dim=4"]) == 1
    out = capsys.readouterr().out
    assert "recpipe ingest failed (exit 2)" in out and "no stage finished" in out
    assert "data.n_interactions=2000 is more than 50 users can have" in out
    (work,) = temp_dirs.iterdir()
    assert f"the work folder is kept: {work}" in out
    assert (work / "params.yaml").is_file() and (work / "ingest.log").is_file()


@pytest.mark.integration
def test_a_tiny_run_in_a_relative_folder_with_its_own_store(tmp_path: Path) -> None:
    user_store = tmp_path / "user.db"
    done = run_scale(
        "--users", "30", "--keep", "work", "300", "model=popularity", "--items", "20", "evaluate.baselines=[ease]",
        cwd=tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{user_store}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    work = tmp_path / "work"
    assert not user_store.exists() and (work / "mlflow.db").is_file() and (work / "params.yaml").is_file()
    assert "| export |" in done.stdout and "| **total** |" in done.stdout
    assert "evaluated: popularity" in done.stdout
    assert "ease (baseline): " in done.stdout and "dropped interaction share 0.000" in done.stdout
    assert "brute_force export: recall@10 vs exact 1.000" in done.stdout
