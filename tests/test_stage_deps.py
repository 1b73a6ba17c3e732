"""dvc.yaml's code deps cover each stage's import closure (computed from the code, not listed by
hand), and each stage's params cover the config sections it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recpipe import stage_deps
from recpipe.paths import Paths
from recpipe.pipeline import DVC_STAGES, STAGES, stage

from .helpers import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(file: Path, deps: list[str]) -> bool:
    """``file`` is a dep or lies under a dep directory."""
    rel = file.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


@pytest.mark.parametrize("name", stage_deps.STAGES)
def test_deps_cover_import_closure(name):
    deps = DVC_YAML[name]["deps"]
    files = stage_deps.stage_files(name)
    assert stage_deps.module_file(stage(name).module) in files
    assert (REPO / "src/recpipe/cli.py" in files) == stage(name).command
    missing = sorted(str(f.relative_to(REPO)) for f in files if not covered(f, deps))
    assert not missing, f"dvc.yaml stage {name} lacks deps (see `python -m recpipe.stage_deps`): {missing}"
    stale = [d for d in deps if d.startswith("src/") and not (REPO / d).exists()]
    assert not stale, f"dvc.yaml stage {name} names missing files: {stale}"


def test_dvc_yaml_stages_are_the_declared_ones():
    """dvc.yaml runs the stages of ``recpipe.pipeline`` in its order, each writing its one output."""
    assert list(DVC_YAML) == [s.name for s in DVC_STAGES]
    for s in DVC_STAGES:
        entry = DVC_YAML[s.name]
        output = Paths().output(s.name).as_posix()
        expected = f"recpipe {s.name}" if s.command else f"python -m {s.module} {output}"
        assert entry["cmd"] == expected
        assert entry["outs"] == [{output: {"persist": True}}]
    # each recpipe stage depends on the outputs of stages before it only
    for i, s in enumerate(STAGES):
        data_deps = {d for d in DVC_YAML[s.name]["deps"] if not d.startswith(("src/", "${"))}
        earlier = {Paths().output(e.name).as_posix() for e in STAGES[:i]}
        assert all(any(d == o or d.startswith(f"{o}/") for o in earlier) for d in data_deps), (s.name, data_deps)


def test_closure_follows_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "recpipe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from recpipe.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\nimport os\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "unused.py").write_text("")
    files = stage_deps.closure([("recpipe.a", None)], tmp_path)
    assert {f.relative_to(tmp_path).as_posix() for f in files} == {
        "recpipe/__init__.py",
        "recpipe/a.py",
        "recpipe/sub/__init__.py",
        "recpipe/sub/b.py",
        "recpipe/sub/c.py",
    }


def test_train_closure_has_what_the_issue_found_missing():
    train = {f.relative_to(REPO / "src").as_posix() for f in stage_deps.stage_files("train")}
    assert {"recpipe/models/classic/__init__.py", "recpipe/data/processed.py", "recpipe/evaluation/ranking.py"} <= train
    evaluate = {f.relative_to(REPO / "src").as_posix() for f in stage_deps.stage_files("evaluate")}
    assert {"recpipe/models/io.py", "recpipe/features.py", "recpipe/models/mf.py"} <= evaluate


@pytest.mark.parametrize(
    ("stage", "sections"),
    [
        ("ingest", {"data"}),
        ("preprocess", {"preprocess", "split", "data.rating_scale"}),
        ("train", {"seed", "model", "data.features"}),
        ("evaluate", {"seed", "evaluate", "data.rating_scale", "model.name"}),
        ("export", {"export"}),
    ],
)
def test_params_cover_what_the_stage_reads(stage, sections):
    """The config keys each stage module reads (``cfg.<section>`` / OmegaConf.select) are declared."""
    declared = set(DVC_YAML[stage]["params"])
    assert sections <= declared
    source = (REPO / "src/recpipe/stages" / f"{stage}.py").read_text()
    for section in sections:
        top = section.split(".")[0]
        assert f"cfg.{top}" in source or f'"{section}"' in source or f"cfg.{section}" in source, section
