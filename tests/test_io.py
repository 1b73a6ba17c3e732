"""Atomic outputs: a failing writer leaves the previous outputs untouched."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from recpipe.io import atomic_dir, atomic_file, read_json, recover_dir, write_json, write_parquet


def test_atomic_dir_replaces_whole_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing visible before success
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary leftovers


def test_atomic_dir_failure_keeps_old_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half-written")
        raise RuntimeError("interrupted")
    assert (out / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_recover_dir_restores_directory_renamed_aside(tmp_path):
    old = tmp_path / ".out.old"
    old.mkdir()
    (old / "a.txt").write_text("kept")
    recover_dir(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "kept"
    assert not old.exists()


def test_atomic_file_failure_keeps_old_file(tmp_path):
    target = tmp_path / "f.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError), atomic_file(target) as tmp:
        tmp.write_text("garbage")
        raise ValueError
    assert read_json(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_write_parquet_round_trip(tmp_path):
    df = pd.DataFrame({"user_id": ["1", "2"], "rating": [1.0, 2.5]})
    write_parquet(df, tmp_path / "x" / "df.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "x" / "df.parquet"), df, check_dtype=False)


def test_outputs_get_umask_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "f.json", {})
    with atomic_dir(tmp_path / "d"):
        pass
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
