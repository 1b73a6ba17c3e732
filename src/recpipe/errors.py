"""Errors a user can act on: printed by the CLI without a traceback, with a non-zero exit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RecpipeError(Exception):
    """A problem with input, configuration or environment that the user can fix."""


class DataError(RecpipeError):
    """Bad input data: names the file, the column, how many rows, and one example row."""

    def __init__(
        self,
        file: str,
        problem: str,
        *,
        column: str | None = None,
        n_rows: int | None = None,
        row: int | None = None,
        example: Mapping[str, Any] | None = None,
        hint: str | None = None,
    ) -> None:
        self.file, self.problem, self.column = str(file), problem, column
        self.n_rows, self.row, self.hint = n_rows, row, hint
        self.example = {k: _plain(v) for k, v in example.items()} if example else None
        parts = [f"{self.file}"]
        if column is not None:
            parts.append(f"column '{column}'")
        msg = ", ".join(parts) + f": {problem}"
        if n_rows is not None:
            msg += f" ({n_rows} row{'s' if n_rows != 1 else ''})"
        if row is not None:
            msg += f"; first at row {row}"
        if self.example:
            msg += ": " + ", ".join(f"{k}={v!r}" for k, v in self.example.items())
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, so messages show ``1e+30``, not ``np.float64(1e+30)``."""
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


class ConfigError(RecpipeError):
    """A configuration value that is missing, unknown, of the wrong type or out of range.

    ``key`` is the dotted path in params.yaml / conf/ (``model.epochs``).
    """

    def __init__(self, key: str, problem: str, *, hint: str | None = None) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}" + (f". {hint}" if hint else ""))


class UsageError(RecpipeError):
    """A command-line value out of its range (``recpipe recommend -k 0``)."""


class OutputError(RecpipeError):
    """An output location a stage cannot write: names the path and what is wrong with it."""


class FileInTheWayError(OutputError):
    """A file stands where an output folder belongs; nothing is deleted (it may be the user's).
    Raised by ``outputs.check_output`` before a stage starts and by ``io.recover_dir``."""

    def __init__(self, path: object) -> None:
        super().__init__(f"{path} is a file, but recpipe writes the folder {path}/ there; move or delete the file")
