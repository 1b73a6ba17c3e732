"""The recpipe source files each DVC stage runs: the import closure of ``recpipe.stages.<name>``
plus what ``recpipe.cli`` imports to run a stage, computed from the code (module- and
function-level imports, parsed with ``ast``), never listed by hand.

``python -m recpipe.stage_deps`` prints each stage's code deps for dvc.yaml (a directory when
every module in it is needed), ``--write`` puts them into dvc.yaml; a test checks that dvc.yaml's deps
cover the closure.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

from recpipe import pipeline

PACKAGE = "recpipe"
SRC = Path(__file__).resolve().parent.parent  # src/
STAGES = tuple(s.name for s in pipeline.DVC_STAGES)
# What ``recpipe <stage>`` runs besides the stage module: cli's module level and ``run_stage``.
RUNNER = ("recpipe.cli", "run_stage")


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of module ``name`` under ``src`` (a package's ``__init__.py``), or None."""
    base = src.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported_modules(file: Path, module: str, only_function: str | None = None) -> set[str]:
    """Absolute names of the recpipe modules ``file`` (module ``module``) imports anywhere in it, or
    at its top level and in function ``only_function``. ``from a import b`` yields ``a`` and ``a.b``
    (``b`` may be a submodule)."""
    tree = ast.parse(file.read_text(), str(file))
    if only_function is None:
        nodes: Iterable[ast.AST] = ast.walk(tree)
    else:
        funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == only_function]
        nodes = [*tree.body, *(n for f in funcs for n in ast.walk(f))]
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def closure(seeds: Iterable[tuple[str, str | None]], src: Path = SRC) -> set[Path]:
    """Files of every recpipe module reachable by imports from ``seeds`` ((module, function or None:
    the whole module)), with the ``__init__.py`` of each enclosing package (importing runs them)."""
    files: set[Path] = set()
    todo = list(seeds)
    seen: set[str] = set()
    while todo:
        name, only = todo.pop()
        key = f"{name}:{only}"
        if key in seen:
            continue
        seen.add(key)
        file = module_file(name, src)
        if file is None:  # a name imported from a module, not a module
            continue
        files.add(file)
        parts = name.split(".")
        todo.extend((".".join(parts[:i]), None) for i in range(1, len(parts)))
        todo.extend((m, None) for m in imported_modules(file, name, only))
    return files


def stage_files(name: str, src: Path = SRC) -> set[Path]:
    """The source files the command of stage ``name`` runs (``recpipe <name>`` or ``python -m``)."""
    declared = pipeline.stage(name)
    if not declared.command:
        return closure([(declared.module, None)], src)
    return closure([(declared.module, None), RUNNER], src)


def compact(files: set[Path], root: Path) -> list[str]:
    """``files`` as repository paths, a directory standing for all of its ``.py`` files when each
    of them (in every subdirectory) is in ``files``."""
    out: set[Path] = set()
    for f in files:
        d = f.parent
        while d.name != PACKAGE and all(p in files for p in d.rglob("*.py")):
            f, d = d, d.parent
        out.add(f)
    return sorted(p.relative_to(root).as_posix() for p in out)


def rewrite_dvc_yaml(text: str, root: Path) -> str:
    """``text`` (dvc.yaml) with each stage's ``src/recpipe`` deps replaced by its computed code deps,
    in place of the first of them; every other line (data deps, params, comments) is kept."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    stage: str | None = None
    written: set[str] = set()
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stage in STAGES and stripped.startswith(f"- src/{PACKAGE}"):
            if stage not in written:
                indent = line[: len(line) - len(line.lstrip())]
                out.extend(f"{indent}- {path}\n" for path in compact(stage_files(stage), root))
                written.add(stage)
            continue
        out.append(line)
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    """Print each stage's code deps; ``--write`` rewrites them in dvc.yaml instead."""
    argv = sys.argv[1:] if argv is None else argv
    root = SRC.parent
    if argv == ["--write"]:
        dvc_yaml = root / "dvc.yaml"
        dvc_yaml.write_text(rewrite_dvc_yaml(dvc_yaml.read_text(), root))
        return 0
    for stage in STAGES:
        print(f"{stage}:")
        for path in compact(stage_files(stage), root):
            print(f"  - {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
