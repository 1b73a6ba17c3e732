"""The train stage and the shared training loop: outputs, MLflow logging, early stopping, input pipeline."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig, OmegaConf

from recpipe import tracking
from recpipe.data.processed import Processed, load_processed
from recpipe.errors import RecpipeError
from recpipe.io import read_json
from recpipe.models import build
from recpipe.models.io import load_model
from recpipe.paths import Paths
from recpipe.stages import train as train_stage
from recpipe.training import fit, make_dataset, rmse, steps_per_epoch

from .helpers import REPO, model_cfg, toy_processed

SUMMARY_KEYS = {
    "model",
    "metric",
    "best_value",
    "best_epoch",
    "epochs_run",
    "train_seconds",
    "examples_per_second",
    "n_params",
    "fitted_params",
    "val_ndcg_at_10",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory laid out like the repository, with a small data/processed."""
    path = tmp_path_factory.mktemp("repo")
    toy_processed(path / "data")
    return path


def pipeline_cfg(model: DictConfig) -> DictConfig:
    return OmegaConf.create({"seed": 0, "model": model, "mlflow": {"experiment": "recpipe-test-train"}})


def test_stage_writes_the_model_summary_and_curve_and_logs_each_epoch(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)  # the pipeline run's state file is relative to the working directory
    cfg = pipeline_cfg(model_cfg("mf", epochs=3, patience=3))
    paths = Paths(root=root)
    with tracking.pipeline_run(cfg, "train") as run:
        train_stage.run(cfg, paths)

    assert (paths.model / "model_config.json").exists()
    summary = read_json(paths.train_summary)
    assert set(summary) == SUMMARY_KEYS
    assert summary["model"] == "mf" and summary["metric"] == "val_rmse" and summary["epochs_run"] == 3
    assert summary["n_params"] > 0 and summary["examples_per_second"] > 0
    train_metrics = read_json(paths.train_metrics)
    assert train_metrics == {
        "model": "mf",  # and split / data when the config has them (tests/test_dvc_views.py)
        "train_seconds": summary["train_seconds"],
        "best_epoch": summary["best_epoch"],
        "best_val_rmse": summary["best_value"],
    }
    assert list(train_metrics)[0] == "model"
    long = pd.read_csv(paths.training_curve)  # long format for dvc plots: epoch, series, value
    assert list(long.columns) == ["epoch", "series", "value"] and set(long["series"]) == {"loss", "val_rmse"}
    curve = long.pivot(index="epoch", columns="series", values="value").reset_index()
    assert curve["epoch"].tolist() == [1, 2, 3]
    assert curve["val_rmse"].iloc[summary["best_epoch"] - 1] == pytest.approx(summary["best_value"])

    data = load_processed(paths.processed)  # the saved model is the best epoch's
    assert rmse(load_model(paths.model), data.val) == pytest.approx(summary["best_value"], rel=1e-5)

    client = mlflow.tracking.MlflowClient()
    for name, column in (("val_rmse", "val_rmse"), ("train_loss", "loss")):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == pytest.approx(curve[column].tolist())
    assert client.get_run(run.info.run_id).data.metrics["best_val_rmse"] == pytest.approx(summary["best_value"])


def test_closed_form_models_train_through_the_same_stage(root: Path, tmp_path: Path) -> None:
    cfg = pipeline_cfg(OmegaConf.load(REPO / "conf" / "model" / "ease.yaml"))
    paths = Paths(root=tmp_path)
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    train_stage.run(cfg, paths)
    summary = read_json(paths.train_summary)
    assert summary["metric"] == "val_recall_at_10" and summary["epochs_run"] == 1
    assert summary["fitted_params"]["lam"] in cfg.model.grid
    curve = pd.read_csv(paths.training_curve)
    assert curve["series"].tolist() == ["loss", "val_recall_at_10"] and curve["epoch"].tolist() == [1, 1]
    assert sorted(p.name for p in paths.train.iterdir()) == [
        "metrics.json",
        "model",
        "train_summary.json",
        "training_curve.csv",
    ]


def test_gibbs_mf_curve_and_mlflow_have_each_validated_sweep(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(root)
    settings = {"embedding_dim": 4, "implicit_dim": 4, "epochs": 5, "burn_in": 1, "validate_every": 2}
    cfg = pipeline_cfg(model_cfg("mf", solver="gibbs", **settings))
    paths = Paths(root=tmp_path)
    (tmp_path / "data").symlink_to(root / "data", target_is_directory=True)
    with tracking.pipeline_run(cfg, "train") as run:
        train_stage.run(cfg, paths)
    summary = read_json(paths.train_summary)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 5  # the kept average: all 5 sweeps
    curve = pd.read_csv(paths.training_curve).pivot(index="epoch", columns="series", values="value")
    assert curve.index.tolist() == [2, 4, 5] and curve["loss"].isna().all()
    assert curve["val_rmse"].iloc[-1] == pytest.approx(summary["best_value"])
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "val_rmse")
    assert [m.step for m in history] == [2, 4, 5]
    assert [m.value for m in history] == pytest.approx(curve["val_rmse"].tolist())


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch(root: Path) -> None:
    data = load_processed(Paths(root=root).processed)
    cfg = model_cfg("mf_rating_only", epochs=40, patience=2, l2=0.0, bias_l2=0.0, learning_rate=0.05, embedding_dim=32)
    model = build(cfg, data.n_users, data.n_items)
    result = fit(model, data, cfg, seed=0)
    assert len(result.history) == result.best_epoch + 2 < 40
    assert result.history["val_rmse"].min() == result.best_value
    assert rmse(model, data.val) == pytest.approx(result.best_value, rel=1e-5)


def test_training_needs_a_validation_split(root: Path) -> None:
    data = load_processed(Paths(root=root).processed)
    no_val = Processed(data.users, data.items, data.train, data.val.iloc[:0], data.test)
    cfg = model_cfg("mf")
    with pytest.raises(RecpipeError, match="val"):
        fit(build(cfg, data.n_users, data.n_items), no_val, cfg, seed=0)


def test_dataset_gives_full_batches_of_every_row_in_a_seeded_new_order_each_epoch() -> None:
    rows = pd.DataFrame({"user_idx": np.arange(100), "item_idx": np.arange(100) % 7, "rating": np.ones(100)})

    def epochs(seed: int) -> list[list[dict[str, np.ndarray]]]:
        dataset = make_dataset(rows, batch_size=32, seed=seed)
        return [[{k: v.numpy() for k, v in b.items()} for b in dataset] for _ in range(2)]

    first, second = epochs(5)
    for epoch in (first, second):
        assert len(epoch) == steps_per_epoch(100, 32) == 4
        assert all(b["user_idx"].shape == (32,) and set(b) == {"user_idx", "item_idx", "rating", "seed"} for b in epoch)
        users = np.concatenate([b["user_idx"] for b in epoch])
        assert sorted(users[:100]) == list(range(100))  # every row once, then the fill-up
        np.testing.assert_array_equal(users[100:], users[:28])
        items = np.concatenate([b["item_idx"] for b in epoch])
        np.testing.assert_array_equal(items, rows["item_idx"].to_numpy()[users])
        assert len({tuple(b["seed"]) for b in epoch}) == 4  # every batch its own random seed
    assert not np.array_equal(first[0]["user_idx"], second[0]["user_idx"])
    assert all(np.array_equal(a["user_idx"], b["user_idx"]) for a, b in zip(epochs(5)[0], first))
    assert not np.array_equal(epochs(6)[0][0]["user_idx"], first[0]["user_idx"])
