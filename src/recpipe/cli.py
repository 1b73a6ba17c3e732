"""The ``recpipe`` command: one subcommand per DVC stage, plus compose and recommend.

Entry points stay thin: parse arguments, load params.yaml, open the pipeline's MLflow run, call
the stage's pure function. Errors a user can fix are printed without a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import recpipe  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from recpipe import logs
from recpipe.errors import RecpipeError
from recpipe.pipeline import STAGES, stage

log = logging.getLogger(__name__)
INT32_MAX = 2**31 - 1
VERBOSE_FLAGS = ("-v", "--verbose")

EPILOG = """\
Stages read only params.yaml. Change configuration with `recpipe compose [overrides]`
(Hydra syntax, e.g. `recpipe compose model=ncf split=temporal`) and then `dvc repro`,
or in one step with `dvc exp run -S model=ncf`.
"""


def bounded_int(lo: int, hi: int = INT32_MAX) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (argparse turns the ValueError into exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected an integer from {lo} to {hi}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        *VERBOSE_FLAGS,
        action="store_true",
        default=argparse.SUPPRESS,
        help="show debug messages and TensorFlow's own start-up/GPU/XLA messages",
    )
    parser = argparse.ArgumentParser(
        prog="recpipe",
        description="Reproducible recommender-system pipeline: ingest -> preprocess -> train -> evaluate -> export.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for s in STAGES:
        p = sub.add_parser(s.name, help=s.help, description=s.help, parents=[common])
        p.add_argument(
            "--params",
            default="params.yaml",
            type=Path,
            help="composed configuration to read (default: params.yaml)",
        )
    p = sub.add_parser(
        "compose",
        parents=[common],
        help="Compose conf/ with Hydra overrides and write params.yaml.",
        description="Compose conf/config.yaml with Hydra overrides and write the result to "
        "params.yaml, the only configuration DVC stages read. Example: recpipe compose "
        "data=synthetic split=leave_last model.embedding_dim=64",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. split=temporal")
    p.add_argument("--config-dir", default="conf", type=Path, help="default: conf")
    p.add_argument("--output", default="params.yaml", type=Path, help="default: params.yaml")
    p.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the output file differs from the composed config",
    )
    p = sub.add_parser(
        "recommend",
        parents=[common],
        help="Print top-k recommendations for a user from models/export.",
        description="Load the exported SavedModel and print a user's top-k items with titles. "
        "Users the model has never seen get the most popular items.",
    )
    p.add_argument("--user", required=True, help="user id as in the source data, e.g. 42")
    p.add_argument(
        "-k",
        type=bounded_int(1),
        default=10,
        help="number of items, at most the export's max_k (default: 10)",
    )
    p.add_argument("--export-dir", default="models/export", type=Path)
    p = sub.add_parser(
        "similar",
        parents=[common],
        help="Print the catalog items most like a new item given only by its features (hybrid/content export).",
        description="Score a new item's feature-only vector (model=hybrid or model=content) against the "
        "catalog in models/export and print the k most similar items. Example: recpipe similar "
        '--title "The Matrix" --genres "Action|Sci-Fi" --year 1999 -k 10',
    )
    p.add_argument("--title", required=True, help="the new item's title")
    p.add_argument("--genres", default="", help='"|"-separated genres, e.g. "Action|Sci-Fi"')
    p.add_argument("--year", type=bounded_int(1, 9999), default=None, help="release year (optional)")
    p.add_argument(
        "-k",
        type=bounded_int(1),
        default=10,
        help="number of items, at most the export's max_k (default: 10)",
    )
    p.add_argument("--export-dir", default="models/export", type=Path)
    p = sub.add_parser(
        "promote",
        parents=[common],
        help="Move the registry alias 'champion' to a registered version if it passes the promotion gate.",
        description="Run the promotion gate (the one the export stage runs) on a registered model version "
        "and move the alias 'champion' to it when it passes: no champion yet, or the same dataset "
        "fingerprint and split as the champion and a paired bootstrap interval of the difference in "
        "ndcg_at_10 over the same test users whose lower bound is above 0. A champion measured on other "
        "data or another split is not comparable and stays unless --force. Prints the decision and "
        "records it on the version (tags recpipe.promotion*). Exit 0: the version is champion; 1: it is "
        "not; 2: error. The registry is MLFLOW_TRACKING_URI (default: sqlite mlflow.db at the project root).",
    )
    p.add_argument("--version", default=None, help="registered version number (default: the latest)")
    p.add_argument("--force", action="store_true", help="move the alias even when the gate says no")
    p.add_argument(
        "--name",
        default=None,
        help="registered model name (default: export.registered_model_name of --params, else recpipe)",
    )
    p.add_argument("--params", default="params.yaml", type=Path, help="default: params.yaml")
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="Serve an export over HTTP (JSON): /v1/recommend, /v1/similar, /v1/model, /docs.",
        description="HTTP JSON service (FastAPI on uvicorn) over an exported SavedModel; endpoints in "
        "docs/contracts.md. With RECPIPE_API_KEY set, requests need header X-API-Key.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=bounded_int(1, 65535), default=8080, help="default: 8080")
    p.add_argument(
        "--model",
        default="models/export",
        help="export directory, or models:/<name>@<alias> / models:/<name>/<version> from the "
        "MLflow registry (default: models/export)",
    )
    p.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="one model call per request instead of micro-batching concurrent requests",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a batch waits for more requests; 0 takes what queued while the previous "
        "model call ran (default: 0, the fastest in bench/serve.py)",
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="check the source this often and swap in a new export / registry version "
        "(default: 0, off; POST /admin/reload always works)",
    )
    sub.add_parser(
        "run",
        add_help=False,
        help="Run preprocess -> train -> evaluate as Hydra jobs (outputs/hydra/), each an MLflow "
        "run: `recpipe run -m model=mf,ncf,two_tower`, `recpipe run hparams_search=mf` (Optuna). "
        "Takes Hydra's arguments; see `recpipe run --help`.",
    )
    p = sub.add_parser(
        "report",
        parents=[common],
        help="Print like-for-like markdown tables of the evaluated MLflow runs (one per data set/split).",
        description="One markdown table per group of comparable runs (same dataset fingerprint, split "
        "and common config: seed, data, preprocess, split, evaluate); by default only the group of "
        "params.yaml's config, with --dataset/--split the groups of that data/split. Each model's row "
        "is its latest run, or the best trial of its latest "
        "sweep by the sweep's validation objective (labelled); baselines follow. --update-readme "
        "rewrites the block between <!-- results:start --> and <!-- results:end --> in README.md "
        "with one group and records its config hash.",
    )
    p.add_argument("--experiment", default="recpipe", help="MLflow experiment (default: recpipe)")
    p.add_argument("--metrics", nargs="+", metavar="NAME", help="columns (default: the @10 metrics, rmse, mae)")
    p.add_argument("--sweep", metavar="PARENT_RUN_ID", help="only the runs of this sweep")
    p.add_argument("--all", action="store_true", dest="all_groups", help="every group, not only params.yaml's config")
    p.add_argument(
        "--dataset",
        metavar="FINGERPRINT|DATA",
        help="only this data: a dataset fingerprint (prefix) or a data name such as ml-100k",
    )
    p.add_argument("--split", metavar="NAME", help="only this split (random, temporal, leave_last)")
    p.add_argument(
        "--params",
        default="params.yaml",
        type=Path,
        help="config whose group is shown by default (default: params.yaml)",
    )
    p.add_argument(
        "--update-readme",
        nargs="?",
        const=Path("README.md"),
        type=Path,
        metavar="PATH",
        help="write the table into PATH (default: README.md) instead of printing it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``recpipe`` command. Errors a user can fix (:class:`RecpipeError`) print one message and
    exit 2; anything else is a bug in recpipe and keeps its traceback.

    ``argv`` None means the real command line: then TensorFlow's native start-up messages are also
    filtered (``recpipe.logs``), which in-process callers (tests) do not want on their stderr.
    """
    process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = False
    while argv[:1] and argv[0] in VERBOSE_FLAGS:  # `recpipe -v run ...`: before Hydra's arguments
        verbose, argv = True, argv[1:]
    if argv[:1] == ["run"]:  # Hydra parses its own arguments (overrides, -m, --help, ...)
        from recpipe.sweep import main as run_main

        _configure(verbose, process)
        return _guarded("run", lambda: run_main(argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    for dest, flag in (("k", "-k"), ("year", "--year")):
        if isinstance(getattr(args, dest, None), list):  # argparse drops a "--" value (`-k=--`)
            parser.error(f"argument {flag}: expected an integer, got '--'")
    _configure(verbose or getattr(args, "verbose", False), process)
    return _guarded(args.command, lambda: _dispatch(args))


def _configure(verbose: bool, process: bool) -> None:
    logs.configure(verbose)
    if process and not verbose:
        logs.filter_native_stderr()


def _guarded(command: str, call: Callable[[], int]) -> int:
    """Run ``call``; a RecpipeError becomes one message and exit code 2, Ctrl-C exit code 130."""
    try:
        return call()
    except RecpipeError as e:
        log.error("recpipe %s: error: %s", command, e)
        return 2
    except KeyboardInterrupt:
        log.error("recpipe %s: interrupted", command)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    """Run the subcommand ``args.command``."""
    if args.command == "report":
        from recpipe.leaderboard import report_command
        from recpipe.outputs import Output, check_outputs

        check_tracking_uri()
        if args.update_readme is not None:
            check_outputs([Output(args.update_readme, folder=False)])
        return report_command(
            args.experiment,
            args.metrics,
            args.sweep,
            args.update_readme,
            dataset=args.dataset,
            split=args.split,
            all_groups=args.all_groups,
            params=args.params,
        )
    if args.command == "compose":
        from recpipe.config import compose_command

        return compose_command(args.overrides, args.config_dir, args.output, check=args.check)
    if args.command == "similar":
        from recpipe.serving.client import similar_command

        return similar_command(args.title, args.genres, args.year, args.k, args.export_dir)
    if args.command == "recommend":
        from recpipe.serving.client import recommend_command

        return recommend_command(args.user, args.k, args.export_dir)
    if args.command == "promote":
        from recpipe.serving.promotion import promote_command

        check_tracking_uri()
        return promote_command(args.version, args.force, args.params, args.name)
    if args.command == "serve":
        from recpipe.serving.http import serve_command

        return serve_command(args.host, args.port, args.model, args.batching, args.batch_wait_ms, args.reload_interval)
    return run_stage(args.command, args.params)


# URI schemes MLflow 3 stores accept (an SQLAlchemy dialect may add a driver: postgresql+psycopg2).
MLFLOW_SCHEMES = (
    "",
    "file",
    "sqlite",
    "postgresql",
    "mysql",
    "mssql",
    "http",
    "https",
    "databricks",
    "databricks-uc",
    "uc",
)


def check_tracking_uri() -> None:
    """Refuse an MLFLOW_TRACKING_URI whose scheme MLflow cannot store runs in (else: a traceback
    from deep inside MLflow once the stage logs)."""
    from urllib.parse import urlparse

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and urlparse(uri).scheme.split("+")[0] not in MLFLOW_SCHEMES:
        raise RecpipeError(
            f"MLFLOW_TRACKING_URI={uri!r}: MLflow cannot store runs there; use a path, sqlite:///mlflow.db, "
            "http(s)://<server> or a database URI, or unset it (default: sqlite mlflow.db at the project root)"
        )


def run_stage(name: str, params: Path) -> int:
    """Run stage ``name`` with the config in ``params`` inside the pipeline's MLflow run.

    First repairs what an interrupted earlier run left beside the stage's output directory, or
    refuses (before any work) when a file stands where that directory belongs.
    """
    from recpipe import tracking
    from recpipe.config import load_params
    from recpipe.io import recover_dir
    from recpipe.outputs import STAGE_OUTPUTS, check_outputs
    from recpipe.paths import Paths
    from recpipe.schema import validate

    declared = stage(name)
    cfg = load_params(params)
    validate(cfg, source=str(params), sections=declared.sections)
    paths = Paths()
    check_outputs(STAGE_OUTPUTS[name](paths))
    check_tracking_uri()
    recover_dir(paths.output(name))
    module = importlib.import_module(declared.module)
    with tracking.pipeline_run(cfg, name):
        module.run(cfg, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
