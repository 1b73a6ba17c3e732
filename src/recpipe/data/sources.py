"""The ingest sources, by name (``data.source``): each turns the ``data`` config section into RawData."""
from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from recpipe.data.files import load_files
from recpipe.data.movielens import load_builtin, load_grouplens
from recpipe.data.raw import RawData
from recpipe.data.synthetic import load_synthetic
from recpipe.errors import RecpipeError

SOURCES: dict[str, Callable[[DictConfig], RawData]] = {
    "movielens_builtin": load_builtin,
    "grouplens": load_grouplens,
    "files": load_files,
    "synthetic": load_synthetic,
}


def load_source(data: DictConfig) -> RawData:
    """Read the source that ``data.source`` names."""
    loader = SOURCES.get(data.get("source"))
    if loader is None:
        raise RecpipeError(f"unknown data.source {data.get('source')!r}; one of {', '.join(SOURCES)}")
    return loader(data)
