"""The ``recpipe`` command: one subcommand per DVC stage, plus compose and recommend.

Entry points stay thin: parse arguments, load params.yaml, open the pipeline's MLflow run, call
the stage's pure function. Errors a user can fix are printed without a traceback (exit 2).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import recpipe  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from recpipe.errors import RecpipeError

STAGES: dict[str, str] = {
    "ingest": "Read the configured source (data=...) into data/raw/*.parquet.",
    "preprocess": "Validate, deduplicate and filter data/raw, build vocabularies and train/val/test "
    "splits into data/processed/.",
    "train": "Train the configured model (model=...) on data/processed; writes models/model/ and "
    "models/train_summary.json.",
    "evaluate": "Score the full catalog for every test user, for the model and the baselines; writes "
    "reports/metrics.json, baselines.json, intervals.json (bootstrap), evaluation.md and plots/ "
    "(with per-segment and cold-item metrics).",
    "export": "Export a top-K serving SavedModel to models/export/ and register it in MLflow.",
}

EPILOG = """\
Stages read only params.yaml. Change configuration with `recpipe compose [overrides]`
(Hydra syntax, e.g. `recpipe compose model=ncf split=temporal`) and then `dvc repro`,
or in one step with `dvc exp run -S model=ncf`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recpipe",
        description="Reproducible recommender-system pipeline: "
        "ingest -> preprocess -> train -> evaluate -> export.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in STAGES.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--params", default="params.yaml", type=Path,
            help="composed configuration to read (default: params.yaml)",
        )
    p = sub.add_parser(
        "compose",
        help="Compose conf/ with Hydra overrides and write params.yaml.",
        description="Compose conf/config.yaml with Hydra overrides and write the result to "
        "params.yaml, the only configuration DVC stages read. Example: recpipe compose "
        "data=synthetic split=leave_last model.embedding_dim=64",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. split=temporal")
    p.add_argument("--config-dir", default="conf", type=Path, help="default: conf")
    p.add_argument("--output", default="params.yaml", type=Path, help="default: params.yaml")
    p.add_argument(
        "--check", action="store_true",
        help="do not write; exit 1 if the output file differs from the composed config",
    )
    p = sub.add_parser(
        "recommend",
        help="Print top-k recommendations for a user from models/export.",
        description="Load the exported SavedModel and print a user's top-k items with titles. "
        "Users the model has never seen get the most popular items.",
    )
    p.add_argument("--user", required=True, help="user id as in the source data, e.g. 42")
    p.add_argument("-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("--export-dir", default="models/export", type=Path)
    p = sub.add_parser(
        "similar",
        help="Print the catalog items most like a new item given only by its features (hybrid/content export).",
        description="Score a new item's feature-only vector (model=hybrid or model=content) against the "
        "catalog in models/export and print the k most similar items. Example: recpipe similar "
        '--title "The Matrix" --genres "Action|Sci-Fi" --year 1999 -k 10',
    )
    p.add_argument("--title", required=True, help="the new item's title")
    p.add_argument("--genres", default="", help='"|"-separated genres, e.g. "Action|Sci-Fi"')
    p.add_argument("--year", type=int, default=None, help="release year (optional)")
    p.add_argument("-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("--export-dir", default="models/export", type=Path)
    p = sub.add_parser(
        "serve",
        help="Serve an export over HTTP (JSON): /v1/recommend, /v1/similar, /v1/model, /docs.",
        description="HTTP JSON service (FastAPI on uvicorn) over an exported SavedModel; endpoints in "
        "docs/contracts.md. With RECPIPE_API_KEY set, requests need header X-API-Key.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default: 8080")
    p.add_argument("--model", default="models/export",
                   help="export directory, or models:/<name>@<alias> / models:/<name>/<version> from the "
                   "MLflow registry (default: models/export)")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="one model call per request instead of micro-batching concurrent requests")
    p.add_argument("--batch-wait-ms", type=float, default=0.0,
                   help="how long a batch waits for more requests; 0 takes what queued while the previous "
                   "model call ran (default: 0, the fastest in bench/serve.py)")
    p.add_argument("--reload-interval", type=float, default=0.0, metavar="SECONDS",
                   help="check the source this often and swap in a new export / registry version "
                   "(default: 0, off; POST /admin/reload always works)")
    sub.add_parser(
        "run",
        add_help=False,
        help="Run preprocess -> train -> evaluate as Hydra jobs (outputs/hydra/), each an MLflow "
        "run: `recpipe run -m model=mf,ncf,two_tower`, `recpipe run hparams_search=mf` (Optuna). "
        "Takes Hydra's arguments; see `recpipe run --help`.",
    )
    p = sub.add_parser(
        "report",
        help="Print a markdown table of each model's latest evaluated MLflow run.",
        description="Markdown table of the latest finished run of each model in the MLflow "
        "experiment (metrics with intervals when logged, train time). --update-readme rewrites "
        "the block between <!-- results:start --> and <!-- results:end --> in README.md.",
    )
    p.add_argument("--experiment", default="recpipe", help="MLflow experiment (default: recpipe)")
    p.add_argument("--metrics", nargs="+", metavar="NAME", help="columns (default: the @10 metrics, rmse, mae)")
    p.add_argument("--sweep", metavar="PARENT_RUN_ID", help="only the runs of this sweep")
    p.add_argument(
        "--update-readme", nargs="?", const=Path("README.md"), type=Path, metavar="PATH",
        help="write the table into PATH (default: README.md) instead of printing it",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # Hydra parses its own arguments (overrides, -m, --help, ...)
        from recpipe.sweep import main as run_main

        try:
            return run_main(argv[1:])
        except RecpipeError as e:
            print(f"recpipe run: error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    try:
        if args.command == "report":
            from recpipe.report import report_command

            return report_command(args.experiment, args.metrics, args.sweep, args.update_readme)
        if args.command == "compose":
            from recpipe.config import compose_command

            return compose_command(args.overrides, args.config_dir, args.output, check=args.check)
        if args.command == "similar":
            from recpipe.serving.client import similar_command

            return similar_command(args.title, args.genres, args.year, args.k, args.export_dir)
        if args.command == "recommend":
            from recpipe.serving.client import recommend_command

            return recommend_command(args.user, args.k, args.export_dir)
        if args.command == "serve":
            from recpipe.serving.http import serve_command

            return serve_command(args.host, args.port, args.model, args.batching, args.batch_wait_ms,
                                 args.reload_interval)
        return run_stage(args.command, args.params)
    except RecpipeError as e:
        print(f"recpipe {args.command}: error: {e}", file=sys.stderr)
        return 2


def run_stage(name: str, params: Path) -> int:
    """Run stage ``name`` with the config in ``params`` inside the pipeline's MLflow run."""
    from recpipe import tracking
    from recpipe.config import load_params
    from recpipe.paths import Paths

    cfg = load_params(params)
    stage = importlib.import_module(f"recpipe.stages.{name}")
    with tracking.pipeline_run(cfg, name):
        stage.run(cfg, Paths())
    return 0


if __name__ == "__main__":
    sys.exit(main())
