"""Configuration: Hydra composes conf/ into params.yaml, the only file DVC stages read.

``dvc repro`` never runs Hydra, so ``recpipe compose`` writes params.yaml the same way
``dvc exp run -S ...`` does (compose, resolve, dump as YAML), and a test keeps the committed
params.yaml equal to the composed defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from recpipe.errors import RecpipeError
from recpipe.io import atomic_file

log = logging.getLogger(__name__)


def compose(overrides: Sequence[str] = (), config_dir: str | Path = "conf", config_name: str = "config") -> DictConfig:
    """Compose ``config_dir/<config_name>.yaml`` with Hydra ``overrides`` and resolve interpolations."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    config_dir = Path(config_dir).resolve()
    if not (config_dir / f"{config_name}.yaml").exists():
        raise RecpipeError(f"{config_dir}/{config_name}.yaml not found; run from the repository root")
    try:
        with initialize_config_dir(str(config_dir), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise RecpipeError(f"cannot compose config with overrides {list(overrides)}: {e}") from e
    return cfg


def plain_dict(cfg: DictConfig | Mapping[str, Any], what: str = "config") -> dict[str, Any]:
    """``cfg`` as a plain dict, interpolations resolved; ``what`` (e.g. "split") names it in the error."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    container = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(container, dict):  # a DictConfig holding None
        raise RecpipeError(f"{what}: expected a mapping, got {container!r}")
    return cast(dict[str, Any], container)


def to_yaml(cfg: DictConfig) -> str:
    """The params.yaml text for ``cfg``, byte-identical to what ``dvc exp run -S`` writes."""
    return OmegaConf.to_yaml(cfg)


def load_params(path: str | Path = "params.yaml") -> DictConfig:
    """Load a composed params.yaml."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    path = Path(path)
    if not path.exists():
        raise RecpipeError(f"{path} not found; create it with `recpipe compose` from the repository root")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, RecursionError, yaml.YAMLError, OmegaConfBaseException) as e:
        reason = " ".join(str(e).split())[:400]
        raise RecpipeError(
            f"{path}: not a readable YAML file ({type(e).__name__}: {reason}); fix it or recreate it with "
            "`recpipe compose`"
        ) from None
    if not isinstance(cfg, DictConfig):
        raise RecpipeError(f"{path}: expected a mapping at the top level; recreate it with `recpipe compose`")
    return cfg


def compose_command(overrides: Sequence[str], config_dir: Path, output: Path, *, check: bool = False) -> int:
    """``recpipe compose``: write (or with ``check``, compare) the composed config, once it validates."""
    from recpipe.outputs import Output, check_outputs
    from recpipe.schema import validate

    cfg = compose(overrides, config_dir)
    validate(cfg, source=f"{config_dir}/ or the overrides")
    text = to_yaml(cfg)
    if check:
        current = output.read_text() if output.exists() else ""
        if current != text:
            log.error("%s differs from the composed config; run `recpipe compose`", output)
            return 1
        log.info(f"{output} is up to date")
        return 0
    check_outputs([Output(output, folder=False)])
    with atomic_file(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info(f"wrote {output}" + (f" ({' '.join(overrides)})" if overrides else ""))
    return 0
