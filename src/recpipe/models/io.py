"""The saved model, models/model/: its writer (``save_model``) and reader (``load_model``).

A saved model is the TF checkpoint of its variables (``weights``) and model_config.json: the model
config, the vocabulary sizes and the JSON-ready build context (e.g. a feature spec), everything
``recpipe.models.build`` needs to rebuild it before the weights are restored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
from omegaconf import DictConfig, OmegaConf

from recpipe.errors import RecpipeError
from recpipe.io import atomic_dir
from recpipe.models.base import RecModel, build

CONFIG_FILE = "model_config.json"
WEIGHTS = "weights"


def save_model(
    model: RecModel,
    model_cfg: Any,
    n_users: int,
    n_items: int,
    path: Path,
    context: Mapping[str, Any] | None = None,
) -> None:
    """Write the weights (TF checkpoint) and model_config.json to ``path``, atomically."""
    config = {
        "model": OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg),
        "n_users": n_users,
        "n_items": n_items,
        "context": dict(context or {}),
    }
    with atomic_dir(path) as tmp:
        model.save_weights(str(tmp / WEIGHTS))
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model(path: Path) -> RecModel:
    """Rebuild the model saved in ``path`` by ``save_model`` and load its weights; a missing,
    damaged or incomplete model is a RecpipeError naming the file and the stage to re-run."""
    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise RecpipeError(f"{path}: no trained model; run `recpipe train` (or `dvc repro`)")
    damaged = f"{path}: the saved model is damaged or incomplete ({{}}); re-run `recpipe train` (or `dvc repro train`)"
    try:
        config: Mapping[str, Any] = json.loads((path / CONFIG_FILE).read_text())
        model_cfg, n_users, n_items = OmegaConf.create(config["model"]), config["n_users"], config["n_items"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecpipeError(damaged.format(f"{CONFIG_FILE}: {type(e).__name__}: {e}")) from None
    model = build(model_cfg, n_users=n_users, n_items=n_items, **config.get("context", {}))
    try:
        model.load_weights(str(path / WEIGHTS)).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, IndexError, AssertionError) as e:  # IndexError: truncated data file
        reason = " ".join(str(e).split())[:300]
        raise RecpipeError(damaged.format(f"weights: {type(e).__name__}: {reason}")) from None
    return model
