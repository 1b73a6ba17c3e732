"""Nothing is ever lost: whatever fails or is killed under `dvc repro` (an exception from a bad
params.yaml value, SIGKILL while computing, SIGKILL at the final swap of an output directory), every
stage's previous outputs stay byte-identical, dvc.lock stays consistent with them, and the next
`dvc repro` cleans up and completes. Real DVC on a tiny synthetic pipeline in a temporary repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import BIN, changed_deps, dvc_status, env, run, snapshot

pytestmark = pytest.mark.integration  # real dvc / recpipe subprocesses

OUTPUTS = ("data/raw", "data/processed", "models/train", "reports", "models/export")


@pytest.fixture(scope="module")
def repo(tiny_pipeline):
    return tiny_pipeline


def state(repo: Path) -> dict[str, bytes]:
    """Every output file and dvc.lock."""
    return {**snapshot(*(repo / o for o in OUTPUTS)), "dvc.lock": (repo / "dvc.lock").read_bytes()}


def set_param(repo: Path, old: str, new: str) -> None:
    params = repo / "params.yaml"
    text = params.read_text()
    assert old in text
    params.write_text(text.replace(old, new, 1))


def restore_params(repo: Path) -> None:
    run(["git", "checkout", "--", "params.yaml"], repo)


def leftovers(repo: Path) -> list[str]:
    """Temporary or renamed-aside directories an interrupted write left (none after a clean run)."""
    return sorted(
        str(p.relative_to(repo)) for d in ("data", "models", ".") for p in (repo / d).glob(".*.tmp")
    ) + sorted(str(p.relative_to(repo)) for d in ("data", "models", ".") for p in (repo / d).glob(".*.old"))


def killed_repro(repo: Path, until, extra_env: dict[str, str] | None = None) -> str:
    """Start `dvc repro` in its own process group, SIGKILL the group once ``until(output so far)``
    is true, and return the output."""
    log = repo.parent / "repro.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(BIN / "dvc"), "repro"],
            cwd=repo,
            env={**env(), **(extra_env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not until(log.read_text()):
            assert proc.poll() is None, f"dvc repro ended before the kill point:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text()


def test_fresh_repro_is_complete_and_status_clean(repo):
    assert dvc_status(repo) == {}
    assert "Running stage" not in run(["dvc", "repro"], repo).stdout
    assert leftovers(repo) == []
    assert (repo / "views/plots_page.html").exists() and (repo / "models/train/model/model_config.json").exists()


def test_failing_stage_keeps_every_output(repo):
    before = state(repo)
    set_param(repo, "optimizer: adam", "optimizer: nope")  # a hand-edited bad value: train fails
    proc = run(["dvc", "repro"], repo, check=False)
    assert proc.returncode != 0 and "nope" in proc.stdout + proc.stderr
    assert state(repo) == before
    restore_params(repo)
    assert dvc_status(repo) == {} and leftovers(repo) == []


def test_sigkill_while_training_keeps_every_output(repo):
    before = state(repo)
    set_param(repo, "learning_rate: 0.015", "learning_rate: 0.02")
    killed_repro(repo, lambda out: "training mf on" in out)
    assert state(repo) == before
    restore_params(repo)
    assert dvc_status(repo) == {} and leftovers(repo) == []


def test_file_where_an_output_directory_belongs_is_refused(repo):
    export = repo / "models/export"
    saved = repo.parent / "export.saved"
    export.rename(saved)
    export.write_text("not a SavedModel")
    try:
        proc = run(["dvc", "repro", "export"], repo, check=False)
        assert proc.returncode != 0
        assert "models/export is a file, but recpipe writes the folder models/export/ there" in proc.stderr
        assert export.read_text() == "not a SavedModel" and leftovers(repo) == []
    finally:
        export.unlink()
        saved.rename(export)
    assert changed_deps(repo) == {}


@pytest.mark.parametrize(
    ("exchange", "rate"), [(True, "0.02"), (False, "0.03")], ids=["renameat2-exchange", "rename-aside-fallback"]
)
def test_sigkill_at_the_final_swap_then_next_repro_recovers(repo, exchange, rate):
    """Leaves train run with a new learning rate (params.yaml not committed), evaluate and export out of date."""
    before = state(repo)
    marker = repo.parent / "swap-paused"
    hook = {"RECPIPE_SWAP_PAUSE": str(marker), **({} if exchange else {"RECPIPE_NO_RENAME_EXCHANGE": "1"})}
    params = repo / "params.yaml"
    params.write_text(re.sub(r"learning_rate: [0-9.]+", f"learning_rate: {rate}", params.read_text()))
    killed_repro(repo, lambda _: marker.exists(), hook)
    assert marker.read_text() == str(Path("models/train"))  # killed at the swap of train's output
    marker.unlink()
    after = state(repo)
    if exchange:  # nothing was switched: the old outputs are in place; the new one is a leftover
        assert after == before
        assert [p for p in leftovers(repo) if p.startswith("models/.train.")]
    else:  # killed between the two renames: the old directory waits aside, byte-identical
        aside = {
            k.replace("/models/.train.old/", "/models/train/"): v
            for k, v in snapshot(repo / "models/.train.old").items()
        }
        assert aside == {k: v for k, v in before.items() if "/models/train/" in k}
        assert {k: v for k, v in after.items() if "/models/" not in k or "/export/" in k} == {
            k: v for k, v in before.items() if "/models/train/" not in k
        }

    proc = run(["dvc", "repro", "train"], repo)  # recovers, cleans up, completes with the new learning rate
    assert "Running stage 'train'" in proc.stdout and leftovers(repo) == []
    assert changed_deps(repo) == {"evaluate": {"models/train/model"}, "export": {"models/train/model"}}
    assert f'learning_rate": {rate}' in (repo / "models/train/model/model_config.json").read_text()
