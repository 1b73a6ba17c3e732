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


# The keys of each source's config that name files it reads. dvc.yaml's ingest stage depends on
# ``data.inputs`` (derived from these keys by conf/data/<source>.yaml), so each must be there.
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "files": ("interactions", "items", "users"),
    "grouplens": ("path",),
}


def check_inputs_declared(data: DictConfig) -> None:
    """Raise unless every file ``data`` names is among ``data.inputs``: DVC sees only those change."""
    declared = {str(v) for v in (data.get("inputs") or {}).values() if isinstance(v, str)}
    for key in INPUT_KEYS.get(data.get("source"), ()):
        value = data.get(key)
        if value and str(value) not in declared:
            raise RecpipeError(
                f"data.{key}={value!r} is not among data.inputs ({', '.join(sorted(declared)) or 'none'}), "
                f"so `dvc status` would not see it change. Set it with `recpipe compose data.{key}=...` "
                f"or `dvc exp run -S data.{key}=...`, which fill data.inputs, not by editing params.yaml"
            )


def load_source(data: DictConfig) -> RawData:
    """Read the source that ``data.source`` names."""
    loader = SOURCES.get(data.get("source"))
    if loader is None:
        raise RecpipeError(f"unknown data.source {data.get('source')!r}; one of {', '.join(SOURCES)}")
    return loader(data)
