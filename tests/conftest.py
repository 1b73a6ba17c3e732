"""Shared fixtures. ``import recpipe`` first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import recpipe  # noqa: F401
from recpipe.data.processed import Processed

from .helpers import TINY_PIPELINE, commit, copy_repo, run, toy_processed


@pytest.fixture(autouse=True, scope="session")
def _mlflow_tracking(tmp_path_factory: pytest.TempPathFactory):
    """Every test logs to a throwaway sqlite MLflow store, never the repository's mlflow.db."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy where `dvc repro` ran on TINY_PIPELINE and dvc.lock is committed (shared by the
    DVC tests: tests/test_dvc_views.py reads it; tests/test_integrity.py then fails and kills stages in it)."""
    repo = copy_repo(tmp_path_factory.mktemp("tiny_pipeline") / "repo")
    run(["recpipe", "compose", *TINY_PIPELINE], repo)
    commit(repo, "tiny config")
    run(["dvc", "repro"], repo)
    commit(repo, "dvc.lock")
    return repo


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Processed:
    """The toy data set (``helpers.toy_processed``), built once per session; do not modify it."""
    return toy_processed(tmp_path_factory.mktemp("toy"))
