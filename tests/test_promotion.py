"""The promotion gate on a real sqlite MLflow registry and a small synthetic pipeline run stage by stage:
who becomes champion and why, ``recpipe promote`` and its errors, and ``recpipe serve`` following the alias."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from recpipe.serving.http import ServiceState
from recpipe.serving.promotion import ALIAS, EVIDENCE_FILE, TAG_DECISION, TAG_REASON, Evidence, decide
from recpipe.serving.runtime import ModelSource

from .helpers import CONF, Result, ThreadServer, cli

NAME = "gate-test"
BASE = [
    "data=synthetic",
    "data.n_users=200",
    "data.n_items=100",
    "data.n_interactions=4000",
    "evaluate.ks=[5,10]",
    "evaluate.baselines=[popularity]",
    "evaluate.bootstrap.n_resamples=200",
    "export.max_k=20",
    f"export.registered_model_name={NAME}",
    "mlflow.experiment=gate-test",
]
MF = ["model=mf", "model.epochs=3", "model.jit_compile=false"]


def pipeline(root: Path, *overrides: str, stages: tuple[str, ...]) -> None:
    for args in (["compose", "--config-dir", str(CONF), *BASE, *overrides], *([s] for s in stages)):
        result = cli(args, root)
        assert result.code == 0, result.text


def promote(repo: Path, *args: str) -> Result:
    return cli(["promote", *args], repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Iterator[Path]:
    """Three exports into a fresh registry: random (v1, first: champion), mf (v2, better: champion),
    random again (v3, worse: kept); models/export/promotion.json of v1 and v3 kept beside."""
    root = tmp_path_factory.mktemp("promotion")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        evidence = []
        for model, stages in [
            (["model=random"], ("ingest", "preprocess", "train", "evaluate", "export")),
            (MF, ("train", "evaluate", "export")),
            (["model=random"], ("train", "evaluate", "export")),
        ]:
            pipeline(root, *model, stages=stages)
            evidence.append((root / "models/export" / EVIDENCE_FILE).read_bytes())
        (root / "evidence").mkdir()
        for i, blob in enumerate(evidence, start=1):
            (root / "evidence" / f"v{i}.json").write_bytes(blob)
        yield root


@pytest.fixture
def client(repo, monkeypatch) -> MlflowClient:
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, ALIAS).version)


def test_first_export_is_champion_better_moves_it_worse_does_not(repo, client):
    v1, v2, v3 = (client.get_model_version(NAME, str(v)) for v in (1, 2, 3))
    assert (v1.tags[TAG_DECISION], v2.tags[TAG_DECISION], v3.tags[TAG_DECISION]) == ("promoted", "promoted", "kept")
    assert v1.tags[TAG_REASON] == f"no {ALIAS} yet"
    assert "lower bound above 0" in v2.tags[TAG_REASON] and "of v1" in v2.tags[TAG_REASON]
    assert "lower bound not above 0" in v3.tags[TAG_REASON] and "of v2" in v3.tags[TAG_REASON]
    assert champion(client) == "2"
    # the evidence: the reports' headline metric and interval, the data and split, as tags and in the export
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    evidence = Evidence.from_tags(v3.tags)
    assert evidence is not None and evidence.metric == "ndcg_at_10"
    assert evidence.metric_value == metrics["ndcg_at_10"] and evidence.metric_ci_low == metrics["ndcg_at_10_ci_low"]
    assert evidence.dataset_fingerprint == client.get_run(v3.run_id).data.tags["recpipe.dataset_fingerprint"]
    assert evidence.split == "random" and evidence.test_users == len(pd.read_csv(repo / "reports/per_user.csv"))
    assert json.loads((repo / "models/export" / EVIDENCE_FILE).read_text()) == dataclasses.asdict(evidence)
    # the same input gives the same models/export/promotion.json, whatever the registry decided
    assert (repo / "evidence/v1.json").read_bytes() == (repo / "evidence/v3.json").read_bytes()
    assert (repo / "evidence/v1.json").read_bytes() != (repo / "evidence/v2.json").read_bytes()
    decision = client.download_artifacts(v3.run_id, "promotion/decision-v3.json", str(repo))
    assert '"outcome": "kept"' in Path(decision).read_text()


def test_promote_by_hand_and_serve_follows_the_alias(repo, client):
    """A version measured on other data is not comparable: the champion stays unless --force; the
    service on models:/<name>@champion picks up each move."""
    v2 = client.get_model_version(NAME, "2")
    other = str(client.create_model_version(NAME, v2.source, run_id=v2.run_id).version)
    for key, value in {**v2.tags, "recpipe.dataset_fingerprint": "0" * 32}.items():
        client.set_model_version_tag(NAME, other, key, value)
    with ThreadServer(ServiceState(ModelSource.parse(f"models:/{NAME}@{ALIAS}"), reload_interval_s=0.3)) as s:

        def served() -> str:
            return requests.get(f"{s.base}/readyz").json()["model_revision"]

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 30
            while served() != version:
                assert time.monotonic() < deadline, f"the service did not follow {ALIAS} to v{version}"
                time.sleep(0.2)

        assert served() == "2"
        r = promote(repo)  # the latest version: the other-data one
        assert r.code == 1 and f"v{other} not promoted ({ALIAS} stays v2): not comparable" in r.out, r.text
        assert "dataset_fingerprint" in r.out and "--force" in r.out
        r = promote(repo, "--version", other, "--force")
        assert r.code == 0 and "forced by hand" in r.out, r.text
        wait_for(other)
        assert client.get_model_version(NAME, other).tags[TAG_DECISION] == "forced"
        assert promote(repo, "--version", "2").code == 1  # against the other-data champion: not comparable
        assert promote(repo, "--version", "2", "--force").code == 0
        wait_for("2")
        r = promote(repo, "--version", "2")
        assert r.code == 0 and f"already {ALIAS}" in r.out, r.text
        r = promote(repo, "--version", "1")  # random against mf: worse
        assert r.code == 1 and "lower bound not above 0" in r.out, r.text
    assert champion(client) == "2"


def test_promote_errors_exit_2(repo, client, tmp_path, monkeypatch):
    for args, message in [
        (["--version", "99"], f"{NAME} has no version 99 (versions: 1, 2, 3"),
        (["--version", "x"], f"{NAME} has no version x"),
        (["--name", "nothing"], "no registered model 'nothing'"),
    ]:
        r = promote(repo, *args)
        assert r.code == 2 and message in r.err, r.text
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # no params.yaml, no mlflow.db in tmp_path
    r = promote(tmp_path)
    assert r.code == 2 and "no MLflow tracking store at sqlite:///" in r.err, r.text
    assert not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://example.invalid")
    assert promote(repo).code == 2


def _evidence(**changes: object) -> Evidence:
    base = dict(
        metric="ndcg_at_10",
        metric_value=0.2,
        metric_ci_low=0.18,
        metric_ci_high=0.22,
        dataset_fingerprint="abc",
        split="random",
        split_config_hash="s1",
        test_users=50,
        bootstrap_n_resamples=200,
        bootstrap_level=0.95,
        bootstrap_seed=0,
    )
    return Evidence(**{**base, **changes})  # type: ignore[arg-type]


def test_evidence_tags_round_trip():
    evidence = _evidence()
    assert Evidence.from_tags(evidence.tags()) == evidence
    assert Evidence.from_tags({**evidence.tags(), "recpipe.metric_value": "n/a"}) is None
    assert Evidence.from_tags({k: v for k, v in evidence.tags().items() if k != "recpipe.split"}) is None


USERS = [str(u) for u in range(50)]
GOOD = pd.Series(np.linspace(0.2, 0.6, 50), index=USERS)
BAD = pd.Series(np.linspace(0.0, 0.4, 50), index=USERS)


@pytest.mark.parametrize(
    "candidate, champion, values, promoted, reason",
    [
        (None, _evidence(), (GOOD, BAD), False, "no evaluation evidence"),
        (_evidence(), None, (GOOD, BAD), False, "not comparable: champion v1 has no evaluation evidence"),
        (_evidence(), _evidence(split="temporal"), (GOOD, BAD), False, "split temporal != random"),
        (_evidence(), _evidence(split_config_hash="s2"), (GOOD, BAD), False, "split_config_hash s2 != s1"),
        (_evidence(), _evidence(dataset_fingerprint="def"), (GOOD, BAD), False, "dataset_fingerprint def != abc"),
        (_evidence(), _evidence(), (None, BAD), False, "no per-user values logged for this version"),
        (_evidence(), _evidence(), (GOOD, None), False, "champion v1 has no per-user values"),
        (_evidence(), _evidence(), (GOOD, BAD.iloc[1:]), False, "other test users"),
        (_evidence(), _evidence(), (GOOD, BAD), True, "lower bound above 0"),
        (_evidence(), _evidence(), (GOOD, GOOD), False, "difference +0.0000 [+0.0000, +0.0000]"),
        (_evidence(), _evidence(), (BAD, GOOD), False, "lower bound not above 0"),
    ],
)
def test_decide(candidate, champion, values, promoted, reason):
    decision = decide(candidate, champion, "1", values)
    assert decision[0] is promoted and reason in decision[1]
    assert (decision[2] is not None) == ("lower bound" in reason or "difference" in reason)
