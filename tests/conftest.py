"""Shared fixtures. ``import recpipe`` first: it sets TF_USE_LEGACY_KERAS before TensorFlow loads."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import recpipe  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


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
