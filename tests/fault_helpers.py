"""Helpers of the fault-injection tests (tests/test_faults_*.py): run the real ``recpipe`` command
in-process or as a subprocess, snapshot outputs byte for byte, make a folder unwritable."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from recpipe.cli import main
from recpipe.config import compose, to_yaml

from .helpers import REPO

BIN = Path(sys.executable).parent
# A tiny, fast configuration: synthetic data (TINY_DATA), 2 epochs, one baseline.
TINY_DATA = ["data=synthetic", "data.n_users=40", "data.n_items=30", "data.n_interactions=400"]
TINY = [
    "model=mf",  # not the default blend: one quick model
    "model.epochs=2",
    "model.batch_size=256",
    "evaluate.baselines=[popularity]",
    "evaluate.bootstrap.n_resamples=10",
    "export.max_k=20",
]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def params_text(*overrides: str, data: Sequence[str] = TINY_DATA) -> str:
    """params.yaml for the TINY config with ``data`` overrides plus ``overrides``, as ``recpipe compose`` writes it."""
    return _composed((*data, *TINY, *overrides))


@functools.lru_cache(maxsize=256)
def _composed(overrides: tuple[str, ...]) -> str:
    return to_yaml(compose(overrides, REPO / "conf"))


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """Run with ``path`` as the working directory (stages read and write relative to it)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def cli(args: Sequence[str], cwd: Path) -> Result:
    """``recpipe ARGS`` in this process, in ``cwd``: exit code (argparse's exits included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with inside(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: a bad argument exits 2 with its usage message
            code = e.code if isinstance(e.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def run_recpipe(args: Sequence[str], cwd: Path, timeout: float = 120) -> Result:
    """``recpipe ARGS`` as a real subprocess (console script) in ``cwd``."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    proc = subprocess.run(
        [str(BIN / "recpipe"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), for byte-identity checks."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def outputs(root: Path) -> dict[str, bytes]:
    """The pipeline outputs under ``root``: data/raw, data/processed, models/, reports/."""
    found: dict[str, bytes] = {}
    for sub in ("data/raw", "data/processed", "models", "reports"):
        if (root / sub).exists():
            found |= {f"{sub}/{k}": v for k, v in snapshot(root / sub).items()}
    return found


def fake_outputs(root: Path) -> dict[str, bytes]:
    """Previous outputs of every stage (distinct bytes per file) under ``root``; returns their snapshot."""
    files = [
        "data/raw/interactions.parquet",
        "data/raw/source.json",
        "data/processed/train.parquet",
        "data/processed/stats.json",
        "models/train/model/model_config.json",
        "models/train/train_summary.json",
        "models/train/training_curve.csv",
        "models/export/recpipe_export.json",
        "reports/metrics.json",
        "reports/plots/metrics_at_k.csv",
    ]
    for i, name in enumerate(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"previous output {i} of {name}\n".encode())
    return outputs(root)


def assert_clean_failure(result: Result, *places: str) -> None:
    """Exit code 2, one message naming every one of ``places``, no traceback."""
    assert result.code == 2, f"exit {result.code}\n{result.text}"
    assert "Traceback" not in result.text, result.text
    for place in places:
        assert place in result.err, f"{place!r} not in the message:\n{result.err}"


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` unwritable even for root (``chattr +i``); chmod for other users."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        import pytest

        pytest.skip("cannot make a folder unwritable for root here (chattr +i failed)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
