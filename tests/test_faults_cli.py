"""Fault injection on the command line and the file system: ``-k`` values, hostile titles, output
locations that cannot be written, and the default verbosity (no TensorFlow/absl/XLA banners)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recpipe.data.preprocess import preprocess
from recpipe.data.processed import load_processed, write_processed
from recpipe.data.raw import RawData, read_raw, write_raw
from recpipe.data.synthetic import generate
from recpipe.logs import is_noise
from recpipe.outputs import STAGE_OUTPUTS
from recpipe.paths import Paths
from recpipe.serving.export import INFO_FILE, build_server, save_server
from recpipe.terminal import printable

from .helpers import (
    REPO,
    assert_clean_failure,
    cli,
    export_cfg,
    fake_outputs,
    outputs,
    params_text,
    read_only,
    run_recpipe,
    save_mf,
    tree_bytes,
)

HOSTILE_TITLE = "Evil\nTitle\x1b[31m\r\x07"
MAX_K = 20
CLI_SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def processed_data(root: Path, title: str | None = None):
    """Small synthetic data/raw and data/processed under ``root`` (every item titled ``title``)."""
    raw = generate(80, 60, 1500, seed=1)
    if title is not None:
        raw = RawData(raw.interactions, raw.items.assign(title=title), raw.users, raw.source)
    paths = Paths(root)
    write_raw(raw, paths.raw)
    options = {"duplicates": "latest", "min_user_interactions": 1, "min_item_interactions": 1, "min_rating": None}
    split = {"name": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0}
    write_processed(preprocess(read_raw(paths.raw, rating_scale=[1, 5]), options, split), paths.processed)
    return load_processed(paths.processed)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export (max_k 20) of an untrained MF whose item titles are all ``HOSTILE_TITLE``."""
    root = tmp_path_factory.mktemp("export")
    data = processed_data(root, HOSTILE_TITLE)
    model = save_mf(data, Paths(root).model)
    save_server(build_server(model, data, export_cfg(max_k=MAX_K)), Paths(root).export, "brute_force")
    return Paths(root).export


BAD_K = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_K + 1, max_value=2**31 - 1),
    st.integers(min_value=2**31),
    st.sampled_from(["ten", "1.5", "", "1e3", "0x10", " ", "--", "2147483648", "9" * 40]),
)


@CLI_SETTINGS
@given(k=BAD_K, command=st.sampled_from(["recommend", "similar"]))
def test_bad_k_is_refused(export_dir, k, command):
    target = ["--user", "1"] if command == "recommend" else ["--title", "New"]
    result = cli([command, *target, f"-k={k}", "--export-dir", str(export_dir)], export_dir.parent)
    assert_clean_failure(result, "-k")
    if isinstance(k, int) and MAX_K < k <= 2**31 - 1:
        assert f"returns at most {MAX_K} items" in result.err and "export.max_k" in result.err
    elif isinstance(k, int):
        assert f"expected an integer from 1 to 2147483647, got {k}" in result.err
    else:
        assert "-k: expected an integer" in result.err


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, MAX_K), user=st.sampled_from(["1", "2", "unknown\nuser\x1b[2J"]))
def test_valid_k_prints_k_escaped_rows(export_dir, k, user):
    result = cli(["recommend", "--user", user, "-k", str(k), "--export-dir", str(export_dir)], export_dir.parent)
    assert result.code == 0, result.text
    lines = result.out.splitlines()
    assert len(lines) == k + 2  # header, column names, exactly k items: no silent cap
    assert all(f"  {printable(HOSTILE_TITLE)} (" in line for line in lines[2:])  # title (year)
    assert not any(c in result.out for c in "\x1b\r\x07") and printable(user) in lines[0]


def test_similar_needs_a_feature_model_export(export_dir):
    result = cli(["similar", "--title", "New", "-k", "3", "--export-dir", str(export_dir)], export_dir.parent)
    assert_clean_failure(result, "has no similar_items signature")


@pytest.mark.parametrize("garbage", [b"", b"{not json", b'{"index": "brute_force"}'])
def test_damaged_export_is_a_clear_error(tmp_path, garbage):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / INFO_FILE).write_bytes(garbage)
    result = cli(["recommend", "--user", "1", "--export-dir", "export"], tmp_path)
    assert_clean_failure(result, "export", "re-run `recpipe export`")


@pytest.mark.integration
def test_huge_k_as_a_subprocess(tmp_path):
    result = run_recpipe(["recommend", "--user", "1", "-k", "2147483648"], tmp_path)
    assert_clean_failure(result, "-k", "expected an integer from 1 to 2147483647, got 2147483648")


def test_printable_escapes_control_characters():
    assert printable("a\nb\tc\x1b[0m\x00é") == "a\\nb\\tc\\x1b[0m\\x00é"
    assert printable("Amélie (2001)") == "Amélie (2001)"


# --- output locations ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGE_OUTPUTS))
def test_something_in_the_way_of_an_output(tmp_path, stage):
    """Each stage refuses, before any work, when a file sits where one of its output folders (or the
    folder holding an output) belongs, or a folder where an output file belongs; nothing changes."""
    for n, out in enumerate(STAGE_OUTPUTS[stage](Paths(Path(".")))):
        for blocker in {out.path, out.path.parent} - {Path(".")}:
            root = tmp_path / f"case{n}-{len(blocker.parts)}"
            (root / blocker.parent).mkdir(parents=True)
            (root / "params.yaml").write_text(params_text())
            if blocker == out.path and not out.folder:
                (root / blocker).mkdir()
                (root / blocker / "kept.txt").write_text("kept")
            else:
                (root / blocker).write_text("a file in the way\n")
            before = tree_bytes(root)
            result = cli([stage], root)
            assert_clean_failure(result, str(blocker), "move or delete")
            assert tree_bytes(root) == before


@pytest.mark.parametrize("folder,stage", [("data", "ingest"), ("models", "train"), ("reports", "evaluate")])
def test_unwritable_output_folder(tmp_path, folder, stage):
    (tmp_path / "params.yaml").write_text(params_text())
    before = fake_outputs(tmp_path)
    with read_only(tmp_path / folder):
        result = cli([stage], tmp_path)
    assert_clean_failure(result, f"cannot write in {folder}")
    assert outputs(tmp_path) == before


@pytest.mark.integration
def test_unwritable_models_as_a_subprocess(tmp_path):
    (tmp_path / "params.yaml").write_text(params_text())
    processed_data(tmp_path)
    before = fake_outputs(tmp_path)
    with read_only(tmp_path / "models" / "train"):
        result = run_recpipe(["train"], tmp_path)
    assert_clean_failure(result, "cannot write in models/train")
    assert outputs(tmp_path) == before


# --- default verbosity --------------------------------------------------------------------------

NOISE = [
    b"2026-12-06 08:13:36.362689: E external/local_xla/xla/stream_executor/cuda/cuda_platform.cc:51] "
    b"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    b"I0000 00:00:1796544785.841244    5378 device_compiler.h:196] Compiled cluster using XLA!  This line is "
    b"logged at most once for the lifetime of the process.",
    b"2026-12-06 08:23:18.863818: I external/local_xla/xla/service/service.cc:163] XLA service initialized",
]
KEPT = [
    b"recpipe train: error: x",
    b"2026-12-06 08:13:36.362689: E tensorflow/core/x.cc:1] a real error",
    b"E0000 00:00:1796544785.841244    5378 x.cc:1] an absl error",
    b"epoch   1/2  loss 5.2848",
]


def test_native_noise_patterns():
    assert all(is_noise(line) for line in NOISE)
    assert not any(is_noise(line) for line in KEPT)


@pytest.mark.integration
def test_native_stderr_filter_in_a_process():
    """Lines written straight to fd 2 (as C++ does) are filtered; the rest, partial lines and
    progress-bar redraws included, pass through unchanged and in order."""
    script = textwrap.dedent(f"""
        import os, sys
        from recpipe import logs
        logs.filter_native_stderr()
        for line in {NOISE + KEPT!r}:
            os.write(2, line + b"\\n")
        os.write(2, b"progress 50%\\rprogress 100%")
        print("python stderr", file=sys.stderr)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    expected = b"".join(line + b"\n" for line in KEPT) + b"progress 50%\rprogress 100%python stderr\n"
    assert proc.stderr == expected


@pytest.mark.integration
def test_train_is_quiet_by_default_and_verbose_with_v(tmp_path):
    (tmp_path / "params.yaml").write_text(params_text("model.epochs=1", "model.solver=gradient"))
    processed_data(tmp_path)
    quiet = run_recpipe(["train"], tmp_path)
    assert quiet.code == 0, quiet.text
    assert "training mf on" in quiet.err and "best val_rmse" in quiet.err
    for banner in ("cuInit", "absl::InitializeLog", "Compiled cluster", "XLA service", "Traceback"):
        assert banner not in quiet.text
    verbose = run_recpipe(["train", "-v"], tmp_path)
    assert verbose.code == 0, verbose.text
    assert "Compiled cluster using XLA" in verbose.err  # mf trains with jit_compile: XLA says so


def test_compose_and_report_outputs_in_the_way(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    result = cli(["compose", "--config-dir", str(REPO / "conf")], tmp_path)
    assert_clean_failure(result, "params.yaml is a folder", "move or delete")
    (tmp_path / "README.md").mkdir()
    result = cli(["report", "--update-readme"], tmp_path)
    assert_clean_failure(result, "README.md is a folder")


@pytest.fixture(scope="module")
def pipeline_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/processed and an (untrained) models/train/model, as train writes them."""
    root = tmp_path_factory.mktemp("pipeline")
    data = processed_data(root)
    save_mf(data, Paths(root).model)
    (root / "params.yaml").write_text(params_text())
    return root


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_stage_outputs_are_named_by_the_next_stage(pipeline_root, tmp_path_factory, data):
    """A damaged data/processed file or saved model: the stage reading it exits 2, names the file
    or folder and says which stage to re-run; nothing is written."""
    import shutil

    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(pipeline_root, root, dirs_exist_ok=True)
    files = sorted(str(p.relative_to(root)) for p in (root / "data" / "processed").glob("*.parquet"))
    files += sorted(
        str(p.relative_to(root))
        for p in (root / "models" / "train" / "model").iterdir()
        if p.is_file() and p.name != "checkpoint"
    )
    name = data.draw(st.sampled_from(files))
    raw = (root / name).read_bytes()
    (root / name).write_bytes(raw[: data.draw(st.integers(0, max(0, len(raw) // 2)))])
    stage = "train" if name.startswith("data/") else data.draw(st.sampled_from(["evaluate", "export"]))
    before = outputs(root)
    result = cli([stage], root)
    assert_clean_failure(result, name if name.startswith("data/") else "models/train/model", "-run `recpipe ")
    assert outputs(root) == before
