"""Time the evaluate stage on MovieLens 100K: the model and every baseline over all test users.

    python bench/bench_evaluate.py [--data DIR] [--lam 400] [--reports DIR] \
        [--overrides evaluate.bootstrap.n_resamples=200 ...]

Builds ML-100K raw and processed data (the default random split) in a temporary directory, or
reuses ``--data`` (a directory holding raw/ and processed/, built when missing). "The model" is
EASE with a fixed lambda (``recpipe.models.classic``, fit in closed form and saved like a trained
model), so no training is needed. Then runs ``recpipe.stages.evaluate.run`` with the default
configuration (conf/, all five baselines, EASE's lambda tuned on val, segments, cold items,
bootstrap, reports) and prints wall and CPU time: the whole stage, and the part that scores the
model and the baselines (the "evaluated ..." lines it prints per system).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

import recpipe  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from recpipe.config import compose
from recpipe.data.preprocess import preprocess
from recpipe.data.processed import load_processed, write_processed
from recpipe.data.raw import read_raw, write_raw
from recpipe.data.sources import load_source
from recpipe.models.classic import fit_classic
from recpipe.models.io import save_model
from recpipe.paths import Paths
from recpipe.stages import evaluate

REPO = Path(__file__).resolve().parents[1]


def build_data(paths: Paths, cfg) -> None:
    """data/raw and data/processed for ``cfg`` (the default: ML-100K, random split) under ``paths``."""
    if not (paths.raw / "interactions.parquet").exists():
        write_raw(load_source(cfg.data), paths.raw)
    if not (paths.processed / "items.parquet").exists():
        tables = read_raw(paths.raw, rating_scale=OmegaConf.select(cfg, "data.rating_scale"))
        write_processed(preprocess(tables, cfg.preprocess, cfg.split), paths.processed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", type=Path, default=None, help="directory for raw/ and processed/ (default: temporary)"
    )
    parser.add_argument("--lam", type=float, default=400.0, help="EASE lambda of the model (default: 400)")
    parser.add_argument("--reports", type=Path, default=None, help="copy the reports directory here")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of conf/ (e.g. evaluate.ks=[10])")
    args = parser.parse_args(argv)

    cfg = compose(["model=ease", f"model.lam={args.lam}", *args.overrides], REPO / "conf")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = Paths(root)
        if args.data is not None:
            args.data.mkdir(parents=True, exist_ok=True)
            (root / "data").symlink_to(args.data.resolve(), target_is_directory=True)
        build_data(paths, cfg)
        data = load_processed(paths.processed)
        model, _ = fit_classic("ease", data, cfg.model)
        save_model(model, cfg.model, data.n_users, data.n_items, paths.model)

        out = io.StringIO()
        wall, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(out):
            evaluate.run(cfg, paths)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        log = out.getvalue()
        metrics = json.loads((paths.reports / "metrics.json").read_text())
        baselines = json.loads((paths.reports / "baselines.json").read_text())
        summary = json.loads((paths.reports / "evaluation.json").read_text())
        if args.reports is not None:
            shutil.copytree(paths.reports, args.reports, dirs_exist_ok=True)

    print(log)
    fits = sum(float(s) for s in re.findall(r"fit baseline \S+ in ([\d.]+) s", log))
    scoring = sum(float(s) for s in re.findall(r"evaluated \S+ in ([\d.]+) s", log))
    print(
        f"ML-100K, {summary['test_users']} test users x {summary['items']} items, model + "
        f"{len(baselines)} baselines:\n"
        f"  scoring + metrics (model and baselines): {scoring:.1f} s\n"
        f"  fitting baselines (EASE lambda tuned on val): {fits:.1f} s\n"
        f"  whole stage: {wall:.1f} s wall, {cpu:.1f} s CPU"
    )
    print(
        f"  model EASE(lam={args.lam:g}) ndcg_at_10 {metrics['ndcg_at_10']:.4f}; "
        f"ease baseline (lam={summary['baseline_params']['ease']['lam']:g}) {baselines['ease']['ndcg_at_10']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
