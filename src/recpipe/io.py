"""Atomic writes: an interrupted stage leaves the old outputs or the new ones, never a mix."""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from recpipe.errors import FileInTheWayError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it replaces ``path`` whole.

    The switch from the old directory to the new one is one atomic step where the system has it
    (``renameat2(RENAME_EXCHANGE)`` on Linux): a crash leaves the complete old directory or the
    complete new one. Elsewhere the old directory is renamed aside first, and a crash between the
    two renames is undone by ``recover_dir`` at the next write (or stage start). Leftovers of an
    interrupted write (the temporary directory) are removed the same way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
        _swap_in(tmp, path)
    finally:
        _remove(tmp)


def recover_dir(path: str | os.PathLike) -> None:
    """Repair what an interrupted ``atomic_dir`` left beside the output directory ``path``.

    A directory left renamed aside (``.<name>.old``) is put back when ``path`` is missing, else
    removed; temporary directories (``.<name>.*.tmp``) are removed. A file standing where the
    directory belongs is refused with a ``FileInTheWayError`` (it may be the user's; nothing is deleted).
    Writers of one output must not run concurrently (DVC's repository lock sees to that).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileInTheWayError(path)
    old = _aside(path)
    if old.exists() or old.is_symlink():
        if path.exists() or not old.is_dir():
            _remove(old)
        else:
            os.replace(old, path)
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}"):
        _remove(leftover)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _swap_in(new: Path, path: Path) -> None:
    """Put the directory ``new`` at ``path``; the previous ``path`` (if any) ends up at ``new``.

    ``RECPIPE_SWAP_PAUSE=<file>`` (tests) pauses at the critical point until ``<file>`` is deleted:
    before the exchange, or between the two renames of the fallback.
    """
    if not path.exists():
        os.replace(new, path)
        return
    if _exchange(new, path):
        return
    old = _aside(path)
    os.replace(path, old)
    _pause_hook(path)
    os.replace(new, path)
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange ``a`` and ``b`` (Linux ``renameat2``); False where unsupported."""
    if os.environ.get("RECPIPE_NO_RENAME_EXCHANGE") or _renameat2 is None:
        return False
    _pause_hook(b)
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pause_hook(path: Path) -> None:
    marker = os.environ.get("RECPIPE_SWAP_PAUSE")
    if not marker:
        return
    Path(marker).write_text(str(path))
    while Path(marker).exists():
        time.sleep(0.05)


def _load_renameat2() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = _load_renameat2() if sys.platform.startswith("linux") else None


def _remove(p: Path) -> None:
    """Delete a file, symlink or directory tree if it exists."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = True) -> None:
    """Write ``obj`` as indented JSON (keys sorted unless ``sort_keys`` is False), atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n")


def write_parquet(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``df`` to Parquet (no pandas index), atomically."""
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
