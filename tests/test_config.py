"""Hydra composition and params.yaml: the committed file is the composed defaults."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from recpipe.cli import main
from recpipe.config import compose, to_yaml

from .helpers import REPO


def test_params_yaml_is_composed_defaults():
    expected = to_yaml(compose([], REPO / "conf"))
    assert (REPO / "params.yaml").read_text() == expected, (
        "params.yaml is out of sync with conf/: run `recpipe compose` (or `make params`)"
    )


def test_overrides_change_groups():
    cfg = compose(["split=temporal", "data=synthetic", "data.n_users=10"], REPO / "conf")
    assert cfg.split.name == "temporal"
    assert cfg.data.source == "synthetic" and cfg.data.n_users == 10
    assert "hydra" not in cfg  # Hydra's own settings never reach params.yaml


def test_compose_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "params.yaml"
    assert main(["compose", "split=leave_last", "--config-dir", str(REPO / "conf"), "--output", str(out)]) == 0
    assert OmegaConf.load(out).split.name == "leave_last"
    conf = ["--config-dir", str(REPO / "conf"), "--output", str(out)]
    assert main(["compose", "split=leave_last", *conf, "--check"]) == 0
    assert main(["compose", "--config-dir", str(REPO / "conf"), "--output", str(out), "--check"]) == 1


def test_bad_override_is_a_clear_error(capsys):
    assert main(["compose", "split=nope", "--config-dir", str(REPO / "conf"), "--output", "/dev/null"]) == 2
    assert "split=nope" in capsys.readouterr().err


def test_dvc_stage_params_exist_in_params_yaml():
    """Every params key a dvc.yaml stage names resolves in params.yaml (no silent typos)."""
    params = OmegaConf.load(REPO / "params.yaml")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            assert OmegaConf.select(params, key) is not None, f"stage {name}: params key {key!r} missing"
