"""Run the real pipeline (recpipe and dvc commands) in a throwaway copy of the repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

BIN = Path(sys.executable).parent
# Not copied (top level only): environments, outputs, caches and local state.
SKIP_TOP = {".venv", ".git", "data", "models", "reports", "mlflow.db", "mlartifacts", "outputs", ".recpipe",
            ".pytest_cache", ".hypothesis", ".benchmarks"}
SKIP_ANY = shutil.ignore_patterns("__pycache__", "*.egg-info")


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = set(SKIP_ANY(directory, names))
    here = Path(directory).resolve()
    if here == REPO:
        skipped |= SKIP_TOP & set(names)
    elif here == REPO / ".dvc":
        skipped |= {"cache", "tmp"} & set(names)
    return skipped


def copy_repo(dest: Path) -> Path:
    """Copy the project (without outputs) to ``dest`` and make it a fresh git repository."""
    shutil.copytree(REPO, dest, ignore=_ignore)
    (dest / "data").mkdir(exist_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    commit(dest, "copy")
    return dest


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message, "--allow-empty"], repo)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["TF_USE_LEGACY_KERAS"] = "1"
    # CI machines may have no git identity; dvc exp run commits experiment refs.
    for who in ("AUTHOR", "COMMITTER"):
        e.setdefault(f"GIT_{who}_NAME", "recpipe-test")
        e.setdefault(f"GIT_{who}_EMAIL", "test@recpipe.invalid")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the project's environment; on failure show its output."""
    if cmd[0] in ("recpipe", "dvc"):
        cmd = [str(BIN / cmd[0]), *cmd[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc_status(repo: Path, *targets: str) -> dict:
    """``dvc status --json``: {stage: [changes]} of the stages that are out of date ({} when clean)."""
    return json.loads(run(["dvc", "status", "--json", *targets], repo).stdout or "{}")


def changed_deps(repo: Path) -> dict[str, set[str]]:
    """Out-of-date stages -> the dependency paths (files, directories, params.yaml) DVC names."""
    return {
        stage: {path for change in changes if isinstance(change, dict) for path in change.get("changed deps", {})}
        for stage, changes in dvc_status(repo).items()
    }


def snapshot(*dirs: Path) -> dict[str, bytes]:
    """Every file under ``dirs`` (path -> bytes), to compare outputs before and after."""
    return {str(f): f.read_bytes() for d in dirs for f in sorted(d.rglob("*")) if f.is_file()}
