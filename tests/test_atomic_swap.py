"""recpipe.io.atomic_dir's swap and recover_dir's clean-up of what an interrupted write left."""

from __future__ import annotations

import os
import threading
import time

import pytest

from recpipe.errors import RecpipeError
from recpipe.io import atomic_dir, recover_dir


def make_dir(path, text="old"):
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside-fallback"])
def test_swap_replaces_whole_directory_and_leaves_nothing(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setenv("RECPIPE_NO_RENAME_EXCHANGE", "1")
    out = make_dir(tmp_path / "out")
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside-fallback"])
def test_pause_hook_stops_at_the_critical_point(tmp_path, monkeypatch, exchange):
    """While paused at the swap, the old content is whole: in place (exchange) or aside (fallback)."""
    marker = tmp_path / "paused"
    monkeypatch.setenv("RECPIPE_SWAP_PAUSE", str(marker))
    if not exchange:
        monkeypatch.setenv("RECPIPE_NO_RENAME_EXCHANGE", "1")
    root = tmp_path / "root"
    root.mkdir()
    out = make_dir(root / "out")

    def write():
        with atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")

    writer = threading.Thread(target=write)
    writer.start()
    while not marker.exists():
        time.sleep(0.01)
    where = out if exchange else root / ".out.old"
    assert (where / "a.txt").read_text() == "old"
    marker.unlink()
    writer.join()
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in root.iterdir()] == ["out"]


def test_recover_puts_back_the_directory_left_aside_and_removes_temporaries(tmp_path):
    make_dir(tmp_path / ".out.old", "kept")
    make_dir(tmp_path / ".out.x1y2.tmp", "half-written")
    (tmp_path / ".other.x.tmp").mkdir()  # another output's: not touched
    recover_dir(tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.x.tmp", "out"]


def test_recover_removes_a_stale_aside_file_or_directory(tmp_path):
    make_dir(tmp_path / "out", "current")
    (tmp_path / ".out.old").write_text("a file once renamed aside")  # the bug of issue 9: broke every export
    recover_dir(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    make_dir(tmp_path / ".out.old", "older")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("new")
    assert (tmp_path / "out" / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_where_the_directory_belongs_is_refused_and_kept(tmp_path):
    (tmp_path / "out").write_text("user data")
    with (
        pytest.raises(RecpipeError, match="out is a file, but recpipe writes the folder .*out/ there"),
        atomic_dir(tmp_path / "out"),
    ):
        pytest.fail("no work before the check")
    assert (tmp_path / "out").read_text() == "user data"
    assert os.listdir(tmp_path) == ["out"]
