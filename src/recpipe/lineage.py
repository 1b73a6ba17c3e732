"""What ``dvc.lock`` says about the files on disk, checked without DVC's repository lock.

Stage commands run while ``dvc repro`` holds the repository lock, so they cannot ask DVC for
``dvc status``. Instead this module hashes files the way DVC does (``dvc_data``: a file's md5, a
directory's ``<md5>.dir``) and compares them with ``dvc.lock``: a stage is *up to date* when its
recorded params equal the current config and every recorded dependency and output hash equals the
file on disk now — DVC's own definition, so outputs of an up-to-date stage belong to this config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from omegaconf import Container, DictConfig, OmegaConf

LOCK_FILE = "dvc.lock"
PARAMS_FILE = "params.yaml"


def dvc_hash(path: Path, ignore: Any = None) -> str | None:
    """The hash DVC records for ``path`` (``md5`` of a file, ``<md5>.dir`` of a directory, without
    what the ``ignore`` filter excludes); None when it does not exist."""
    if not Path(path).exists():
        return None
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem
    from dvc_objects.fs.local import LocalFileSystem

    staging = HashFileDB(MemoryFileSystem(), "memory://recpipe-staging")
    _, _, obj = build(staging, str(Path(path).resolve()), LocalFileSystem(), "md5", dry_run=True, ignore=ignore)
    return obj.hash_info.value


class RepoHasher:
    """``dvc_hash`` of paths relative to a DVC repository root, with the repository's .dvcignore
    applied as DVC does; each path hashed once."""

    def __init__(self, root: Path) -> None:
        from dvc.ignore import DvcIgnoreFilter
        from dvc_objects.fs.local import LocalFileSystem

        self.root = root
        self.ignore = DvcIgnoreFilter(LocalFileSystem(), str(root.resolve()))
        self.hashes: dict[str, str | None] = {}

    def __call__(self, path: str) -> str | None:
        if path not in self.hashes:
            self.hashes[path] = dvc_hash(self.root / path, self.ignore)
        return self.hashes[path]


def read_lock(root: Path = Path(".")) -> dict[str, dict[str, Any]]:
    """The stages recorded in ``root/dvc.lock`` (name -> entry); {} without a lock file."""
    lock = root / LOCK_FILE
    if not lock.exists():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("stages") or {}


def params_match(recorded: Mapping[str, Any], cfg: DictConfig) -> bool:
    """True when every param a stage recorded (``{"model": {...}, "data.features": ...}``) has the
    same value in ``cfg``."""
    for key, value in recorded.items():
        current = OmegaConf.select(cfg, key, default=None)
        if isinstance(current, Container):
            current = OmegaConf.to_container(current, resolve=True)
        if current != value:
            return False
    return True


def stage_up_to_date(entry: Mapping[str, Any], cfg: DictConfig, hasher: RepoHasher) -> bool:
    """True when the locked stage ``entry`` matches ``cfg`` and the files under ``hasher.root``."""
    if not params_match((entry.get("params") or {}).get(PARAMS_FILE) or {}, cfg):
        return False
    files = [*(entry.get("deps") or []), *(entry.get("outs") or [])]
    return all(f.get("md5") and hasher(f["path"]) == f["md5"] for f in files)


def upstream(lock: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    """Each locked stage's direct upstream stages: those whose outputs it depends on (an output
    itself or a path inside an output directory, e.g. ``models/train/model`` of ``models/train``)."""
    producers = {PurePosixPath(o["path"]): name for name, e in lock.items() for o in e.get("outs") or []}

    def producer(dep: str) -> str | None:
        path = PurePosixPath(dep)
        return next((name for out, name in producers.items() if path == out or out in path.parents), None)

    return {
        name: {p for d in e.get("deps") or [] if (p := producer(d["path"])) is not None} for name, e in lock.items()
    }


def consistent_stages(cfg: DictConfig, ran: str | None = None, root: Path = Path(".")) -> set[str]:
    """The stages whose outputs on disk were made from ``cfg``: up to date, with every upstream
    stage consistent too. ``ran``, the stage that has just run with ``cfg`` (its lock entry is
    written by DVC after it exits), counts as consistent."""
    lock = read_lock(root)
    if not lock:
        return {ran} if ran else set()
    hasher = RepoHasher(root)
    fresh = {name for name, e in lock.items() if stage_up_to_date(e, cfg, hasher)}
    parents = upstream(lock)
    done: dict[str, bool] = {}

    def consistent(name: str) -> bool:
        if name not in done:
            done[name] = name == ran or (name in fresh and all(consistent(u) for u in parents[name]))
        return done[name]

    return {name for name in lock if consistent(name)} | ({ran} if ran else set())


def declared_outputs(stage: str, root: Path = Path(".")) -> list[str]:
    """The outputs, metrics and plots files that ``root/dvc.yaml`` declares for ``stage``."""
    dvc_yaml = root / "dvc.yaml"
    if not dvc_yaml.exists():
        return []
    spec = ((yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}).get(stage) or {}
    entries = [*(spec.get("outs") or []), *(spec.get("metrics") or []), *(spec.get("plots") or [])]
    return sorted(e if isinstance(e, str) else next(iter(e)) for e in entries)


def locked_hashes(stages: set[str], root: Path = Path(".")) -> dict[str, str]:
    """``{output path: hash}`` as dvc.lock records them for ``stages``."""
    lock = read_lock(root)
    return {o["path"]: o["md5"] for s in stages for o in lock.get(s, {}).get("outs") or [] if o.get("md5")}
