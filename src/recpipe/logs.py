"""Logging for the ``recpipe`` command: recpipe's own messages through :mod:`logging`, and the
TensorFlow/XLA/absl start-up banners kept out of the terminal unless ``-v`` asks for them.

TensorFlow's C++ layers (tsl, XLA, absl) write straight to file descriptor 2, below Python: the
GPU probe's ``failed call to cuInit`` (an "error" on every machine without a GPU), the absl
``InitializeLog`` notice and XLA's "Compiled cluster" line. ``TF_CPP_MIN_LOG_LEVEL`` (set in
``recpipe/__init__.py``) silences tsl's INFO and WARNING; absl's own lines ignore it, so at default
verbosity :func:`filter_native_stderr` routes fd 2 through a filter that drops exactly those lines
(listed in ``NATIVE_NOISE``) and passes everything else through unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

# C++ log lines that carry no information for a recpipe user at default verbosity.
NATIVE_NOISE = re.compile(
    rb"^(?:"
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "  # tsl INFO/WARNING (when TF_CPP_MIN_LOG_LEVEL < 2)
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: E \S*cuda\S*\] failed call to cuInit"  # no GPU here
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: E \S*\] Unable to register cu(?:DNN|FFT|BLAS) factory"
    rb"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # absl INFO/WARNING
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb")"
)
# Python loggers of libraries that are chatty at INFO/WARNING level.
LIBRARY_LOGGERS = ("absl", "tensorflow", "h5py", "mlflow", "alembic", "numexpr", "git")


def configure(verbose: bool = False) -> None:
    """Configure logging once for the command: recpipe's messages at INFO (DEBUG with ``verbose``)
    to stderr, libraries at WARNING (absl and TensorFlow's Python loggers at ERROR) unless ``verbose``."""
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:  # MLflow configures its own logger when imported (later, by the stages)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("recpipe").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.INFO if verbose else logging.ERROR if name in ("absl", "tensorflow") else logging.WARNING
        )


def is_noise(line: bytes) -> bool:
    """True for a C++ log line that default verbosity hides (see ``NATIVE_NOISE``)."""
    return NATIVE_NOISE.match(line) is not None


def filter_native_stderr() -> None:
    """Route file descriptor 2 through a thread that drops ``NATIVE_NOISE`` lines.

    Text that does not end a line yet (progress bars redraw with ``\\r``) is passed on at once,
    unless it could be the start of a native log line. The pipe is drained at exit.
    """
    global _filtering
    if _filtering:
        return
    try:
        real = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no usable stderr (closed fd): nothing to filter
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_pump, args=(read_end, real), daemon=True, name="recpipe-stderr")
    thread.start()
    _filtering = True

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=5)

    atexit.register(restore)


_filtering = False
_MAYBE_NATIVE = re.compile(rb"^(?:\d|[IWEF]\d|WARNING: All)")


def _pump(read_end: int, real: int) -> None:
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_noise(line))
        if pending and not _MAYBE_NATIVE.match(pending):
            out, pending = out + pending, b""
        _write_all(real, out)
    if not is_noise(pending):
        _write_all(real, pending)
    os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
