"""Each stage's output locations, checked before the stage starts its work.

A stage replaces its outputs at the very end (``recpipe.io``); a folder it cannot write, or a file
where an output folder belongs, would only show up then, after minutes of training. ``check_outputs``
finds both in milliseconds, before anything is read or written, and names the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from recpipe.errors import FileInTheWayError, OutputError
from recpipe.paths import Paths
from recpipe.pipeline import STAGE_NAMES


@dataclass(frozen=True)
class Output:
    """An output location: a folder (replaced whole) or a single file."""

    path: Path
    folder: bool


STAGE_OUTPUTS: dict[str, Callable[[Paths], list[Output]]] = {
    stage: (lambda p, stage=stage: [Output(p.output(stage), True)])  # type: ignore[misc]
    for stage in STAGE_NAMES
}  # each stage writes one output folder, replaced whole (dvc.yaml)


def check_outputs(outputs: Sequence[Output]) -> None:
    """Raise an OutputError unless every output can be written where it belongs."""
    for out in outputs:
        check_output(out)


def check_output(out: Output) -> None:
    """``out.path`` must be of its kind if it exists, every existing ancestor a folder, and the
    folder it is (or will be) written in writable; an existing output folder must be writable too
    (its old contents are removed when it is replaced)."""
    path = out.path
    kind = "folder" if out.folder else "file"
    if path.exists() or path.is_symlink():
        if out.folder and not path.is_dir():
            raise FileInTheWayError(path)
        if not out.folder and path.is_dir():
            raise OutputError(
                f"{path} is a folder, but recpipe writes the file {path} there; move or delete the folder"
            )
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{parent} is a file, but the {kind} {path} is written inside it; move or delete {parent}")
    probe_writable(parent, path)
    if out.folder and path.is_dir():
        probe_writable(path, path)


def probe_writable(folder: Path, output: Path) -> None:
    """Create and remove a scratch folder in ``folder`` (permission bits do not tell the truth for
    root, read-only mounts or immutable folders); raise an OutputError naming both paths."""
    try:
        scratch = tempfile.mkdtemp(prefix=".recpipe-write-check.", dir=folder)
    except OSError as e:
        raise OutputError(
            f"cannot write in {folder} ({e.strerror or e}), where {output} is written; make it writable "
            f"(e.g. `chmod u+w {folder}`) or run from a writable copy of the project"
        ) from None
    shutil.rmtree(scratch, ignore_errors=True)
    if os.path.exists(scratch):  # pragma: no cover - the folder let us create but not remove
        raise OutputError(f"cannot remove files in {folder}, where {output} is replaced; make it writable")
