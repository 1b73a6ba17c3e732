"""The promotion gate: the registry alias ``champion`` moves only to a model that is measurably better.

Every registered version carries its *evidence* as version tags (``recpipe.<field>`` of ``Evidence``:
the dataset fingerprint, split name and split config hash, the promotion metric with its bootstrap
interval) and the per-test-user values of the metric as the run artifact ``promotion/per_user.csv``.

The rule (``decide``), for a candidate version against the version ``champion`` points to:

- no evidence for the candidate (no evaluation) -> kept out;
- no champion yet -> promoted;
- champion measured on another dataset fingerprint, split or split config, or by another metric,
  or without evidence -> not comparable: the champion stays (``recpipe promote --force`` moves it);
- otherwise a paired bootstrap over the same test users of candidate minus champion
  (``recpipe.evaluation.bootstrap.paired_bootstrap_diff``, the candidate's resamples, level and
  seed): promoted only when the interval's lower bound is above zero.

The decision is recorded on the candidate version (tags ``recpipe.promotion``,
``recpipe.promotion_reason``, ``recpipe.promotion_champion``) and as the run artifact
``promotion/decision-v<version>.json``. It depends on the registry's state, so it is never written
to models/export/ (hashed in dvc.lock): that folder holds the evidence only (``EVIDENCE_FILE``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from recpipe.errors import RecpipeError
from recpipe.evaluation.bootstrap import paired_bootstrap_diff
from recpipe.evaluation.headline import PROMOTION_METRIC
from recpipe.io import read_json
from recpipe.paths import Paths
from recpipe.tracking import PER_USER_FILE, config_hash, dataset_fingerprint, tracking_uri

ALIAS = "champion"
EVIDENCE_FILE = "promotion.json"  # in models/export/
ARTIFACT_DIR = "promotion"  # run artifacts: per_user.csv, decision-v<version>.json
TAG_DECISION, TAG_REASON, TAG_CHAMPION = "recpipe.promotion", "recpipe.promotion_reason", "recpipe.promotion_champion"


@dataclass(frozen=True)
class Evidence:
    """What a comparison of two versions needs, from the pipeline's files (``collect``)."""

    metric: str
    metric_value: float
    metric_ci_low: float
    metric_ci_high: float
    dataset_fingerprint: str
    split: str
    split_config_hash: str
    test_users: int
    bootstrap_n_resamples: int
    bootstrap_level: float
    bootstrap_seed: int

    # the fields two versions must share to be compared
    COMPARED = ("metric", "dataset_fingerprint", "split", "split_config_hash")

    def tags(self) -> dict[str, str]:
        """As registry version tags ``recpipe.<field>``."""
        return {f"recpipe.{k}": str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Evidence | None:
        """Read back from ``tags``; None when a field is missing or unreadable (a version registered
        without evidence, or tags edited by hand)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = tags.get(f"recpipe.{f.name}")
            if text is None:
                return None
            try:
                values[f.name] = {"float": float, "int": int}.get(str(f.type), str)(text)
            except ValueError:
                return None
        return cls(**values)

    def mismatch(self, other: Evidence) -> str | None:
        """Why ``other`` cannot be compared with this (None when it can)."""
        for key in self.COMPARED:
            mine, theirs = getattr(self, key), getattr(other, key)
            if mine != theirs:
                return f"{key} {theirs} != {mine}"
        return None


def collect(cfg: DictConfig, paths: Paths) -> Evidence | None:
    """The evidence of the pipeline's current model from reports/ (metrics.json, intervals.json,
    per_user.csv), data/processed and the config; None when reports/ has no evaluation."""
    metrics_file, intervals_file = paths.reports / "metrics.json", paths.reports / "intervals.json"
    per_user_file = paths.reports / PER_USER_FILE
    if not (metrics_file.exists() and intervals_file.exists() and per_user_file.exists()):
        return None
    metrics, intervals = read_json(metrics_file), read_json(intervals_file)
    low, high = metrics.get(f"{PROMOTION_METRIC}_ci_low"), metrics.get(f"{PROMOTION_METRIC}_ci_high")
    if metrics.get(PROMOTION_METRIC) is None or low is None or high is None:
        return None
    split = OmegaConf.select(cfg, "split")
    return Evidence(
        metric=PROMOTION_METRIC,
        metric_value=float(metrics[PROMOTION_METRIC]),
        metric_ci_low=float(low),
        metric_ci_high=float(high),
        dataset_fingerprint=dataset_fingerprint(paths.processed),
        split=str(OmegaConf.select(cfg, "split.name") or ""),
        split_config_hash=config_hash(split) if split is not None else "",
        test_users=len(read_per_user(per_user_file)),
        bootstrap_n_resamples=int(intervals["n_resamples"]),
        bootstrap_level=float(intervals["level"]),
        bootstrap_seed=int(OmegaConf.select(cfg, "seed") or 0),
    )


def read_per_user(path: Path, metric: str = PROMOTION_METRIC) -> pd.Series:
    """``metric`` by user id from a per_user.csv."""
    table = pd.read_csv(path, dtype={"user_id": str})
    if metric not in table.columns:
        raise RecpipeError(f"{path}: no column {metric!r} (columns: {', '.join(table.columns)})")
    return table.set_index("user_id")[metric].astype(np.float64)


@dataclass(frozen=True)
class Decision:
    """What the gate did with ``version`` and why; ``diff`` is (mean, low, high) of candidate minus
    champion when they were compared."""

    name: str
    version: str
    promoted: bool
    reason: str
    champion: str | None = None
    diff: tuple[float, float, float] | None = None
    forced: bool = False

    @property
    def outcome(self) -> str:
        return "forced" if self.forced else "promoted" if self.promoted else "kept"

    def line(self) -> str:
        """The one line the export stage and ``recpipe promote`` print."""
        verb = (
            f"is {ALIAS}"
            if self.promoted
            else f"not promoted ({ALIAS} stays " + (f"v{self.champion})" if self.champion else "unset)")
        )
        return f"promotion: {self.name} v{self.version} {verb}: {self.reason}"

    def record(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **dataclasses.asdict(self)}


def decide(
    candidate: Evidence | None,
    champion: Evidence | None,
    champion_version: str | None,
    values: tuple[pd.Series | None, pd.Series | None] | None = None,
) -> tuple[bool, str, tuple[float, float, float] | None]:
    """``(promote, reason, diff)`` by the rule of the module docstring; ``values`` are the per-user
    metric values (by user id) of the candidate and of the champion (None when it has none)."""
    if candidate is None:
        return False, "no evaluation evidence for this version (reports/ had no per-user metrics)", None
    if champion_version is None:
        return True, f"no {ALIAS} yet", None
    force = "; `recpipe promote --force` moves it by hand"
    if champion is None:
        return False, f"not comparable: {ALIAS} v{champion_version} has no evaluation evidence{force}", None
    if (why := candidate.mismatch(champion)) is not None:
        other = f"was measured on other data or another split ({why})"
        return False, f"not comparable: {ALIAS} v{champion_version} {other}{force}", None
    mine, theirs = values or (None, None)
    if mine is None:
        return False, f"no per-user values logged for this version (artifact {ARTIFACT_DIR}/{PER_USER_FILE})", None
    if theirs is None:
        return False, f"not comparable: {ALIAS} v{champion_version} has no per-user values{force}", None
    if set(mine.index) != set(theirs.index):
        return False, f"not comparable: {ALIAS} v{champion_version} was measured on other test users{force}", None
    mean, low, high, _ = paired_bootstrap_diff(
        mine.to_numpy(),
        theirs.reindex(mine.index).to_numpy(),
        candidate.bootstrap_n_resamples,
        candidate.bootstrap_seed,
        candidate.bootstrap_level,
    )
    better = bool(low > 0)
    summary = (
        f"{candidate.metric} {candidate.metric_value:.4f} vs {champion.metric_value:.4f} of v{champion_version}, "
        f"difference {mean:+.4f} [{low:+.4f}, {high:+.4f}] (paired bootstrap over {len(mine)} test users, "
        f"{candidate.bootstrap_level:.0%}): lower bound {'above' if better else 'not above'} 0"
    )
    return better, summary, (mean, low, high)


# --- the registry ------------------------------------------------------------------------------


def client() -> Any:
    """An MlflowClient on ``tracking_uri()`` (works the same on sqlite and an MLflow server)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri())


def attach(name: str, version: str, evidence: Evidence | None, per_user: Path) -> None:
    """Tag version ``version`` of ``name`` with ``evidence`` and log ``per_user`` (per_user.csv) to the
    active run's ``promotion/`` artifacts."""
    import mlflow

    if evidence is None:
        return
    mlflow.log_artifact(str(per_user), artifact_path=ARTIFACT_DIR)
    c = client()
    for key, value in evidence.tags().items():
        c.set_model_version_tag(name, version, key, value)


def champion_version(name: str) -> Any | None:
    """The version ``champion`` points to, None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_model_version_by_alias(name, ALIAS)
    except MlflowException as e:
        # MLflow answers a missing alias with INVALID_PARAMETER_VALUE ("alias champion not found")
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def per_user_values(run_id: str | None) -> pd.Series | None:
    """The per-user metric values a version's run logged (``attach``), None when it has none."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    with tempfile.TemporaryDirectory(prefix="recpipe-promotion-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=f"{ARTIFACT_DIR}/{PER_USER_FILE}",
                dst_path=tmp,
                tracking_uri=tracking_uri(),
            )
        except (MlflowException, OSError):
            return None
        return read_per_user(Path(local))


def gate(name: str, version: Any, force: bool = False) -> Decision:
    """Decide on registered ``version`` (a ModelVersion) of ``name``; move ``champion`` when it is
    promoted (or ``force``); record the decision on the version and its run (not when the version
    is already champion: nothing is decided then)."""
    current = champion_version(name)
    champ = None if current is None else str(current.version)
    if champ == str(version.version):
        return Decision(name, champ, True, f"already {ALIAS}", champ)
    candidate = Evidence.from_tags(version.tags or {})
    champion = None if current is None else Evidence.from_tags(current.tags or {})
    values = None
    if current is not None and candidate is not None and champion is not None and not candidate.mismatch(champion):
        values = (per_user_values(version.run_id), per_user_values(current.run_id))
    promoted, reason, diff = decide(candidate, champion, champ, values)
    decision = Decision(name, str(version.version), promoted, reason, champ, diff)
    if force and not promoted:
        decision = dataclasses.replace(
            decision, promoted=True, forced=True, reason=f"forced by hand (the gate said: {reason})"
        )
    c = client()
    if decision.promoted:
        c.set_registered_model_alias(name, ALIAS, decision.version)
    for key, value in ((TAG_DECISION, decision.outcome), (TAG_REASON, decision.reason), (TAG_CHAMPION, champ or "")):
        c.set_model_version_tag(name, decision.version, key, value[:5000])
    if version.run_id:
        c.log_dict(version.run_id, decision.record(), f"{ARTIFACT_DIR}/decision-v{decision.version}.json")
    return decision


# --- recpipe promote ---------------------------------------------------------------------------


def registered_name(params: Path) -> str:
    """``export.registered_model_name`` of ``params`` (params.yaml), "recpipe" without one."""
    if params.exists():
        name = OmegaConf.select(OmegaConf.load(params), "export.registered_model_name")
        if name:
            return str(name)
    return "recpipe"


def _check_store() -> None:
    """Refuse a default sqlite store that does not exist (MLflow would create an empty one)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise RecpipeError(
            f"no MLflow tracking store at {uri}: run the pipeline first (dvc repro registers every export) "
            "or point MLFLOW_TRACKING_URI at the store that holds the registry"
        )


def find_version(name: str, version: str | None) -> Any:
    """Version ``version`` of ``name`` (default: the latest) as a ModelVersion; RecpipeError when
    the registry has no such model or version."""
    from mlflow.exceptions import MlflowException

    _check_store()
    c = client()
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException as e:
        raise RecpipeError(f"MLflow registry at {tracking_uri()}: {e.message}") from e
    numbers = sorted(int(v.version) for v in versions)
    if not numbers:
        raise RecpipeError(f"no registered model {name!r} in {tracking_uri()}: the export stage registers it")
    wanted = str(numbers[-1]) if version is None else version
    if not wanted.isdigit() or int(wanted) not in numbers:
        raise RecpipeError(f"{name} has no version {wanted} (versions: {', '.join(map(str, numbers))})")
    return c.get_model_version(name, wanted)


def promote_command(version: str | None, force: bool, params: Path, name: str | None = None) -> int:
    """``recpipe promote``: run the gate on a registered version (default: the latest), print the
    decision; exit 0 when ``champion`` points to the version afterwards, 1 when it does not."""
    from mlflow.exceptions import MlflowException

    name = name or registered_name(params)
    try:
        decision = gate(name, find_version(name, version), force=force)
    except MlflowException as e:
        raise RecpipeError(f"MLflow registry at {tracking_uri()}: {e.message}") from e
    print(decision.line())
    return 0 if decision.promoted else 1
