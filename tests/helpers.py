"""What several test modules share (a plain module, not tests): toy data sets through the real
ingest and preprocess, tiny models, reference implementations, and running the real pipeline
(recpipe, dvc) in a throwaway copy of the repository; and for the fault-injection tests
(tests/test_faults_*.py): the real ``recpipe`` command in-process or as a subprocess, outputs
snapshot byte for byte, a folder made unwritable."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import tensorflow as tf
from mlflow import MlflowClient
from omegaconf import DictConfig, OmegaConf

from recpipe import tracking
from recpipe.cli import main
from recpipe.config import compose, to_yaml
from recpipe.data.preprocess import preprocess
from recpipe.data.processed import Processed, load_processed, write_processed
from recpipe.data.raw import read_raw, write_raw
from recpipe.data.synthetic import generate
from recpipe.evaluation.ranking import top_k_items
from recpipe.models import RecModel, build
from recpipe.models.io import save_model

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# A small synthetic pipeline run by real DVC in a throwaway git repository (conftest.tiny_pipeline).
TINY_PIPELINE = [
    "model=mf",  # not the default blend: one quick model
    "model.solver=gradient",  # trained epoch by epoch: a training curve of model.epochs points
    "data=synthetic",
    "data.n_users=200",
    "data.n_items=100",
    "data.n_interactions=3000",
    "model.epochs=2",
    "evaluate.baselines=[popularity,item_knn]",
    "evaluate.bootstrap.n_resamples=50",
]

BIN = Path(sys.executable).parent
# Not copied (top level only): environments, outputs, caches and local state; dvc.lock too, since it
# records outputs the copy's empty DVC cache does not hold (each copy's pipeline records its own).
SKIP_TOP = {
    ".venv",
    ".git",
    "dvc.lock",
    "data",
    "models",
    "reports",
    "views",
    "mlflow.db",
    "mlartifacts",
    "outputs",
    ".recpipe",
    ".pytest_cache",
    ".hypothesis",
    ".benchmarks",
    ".mypy_cache",
    ".ruff_cache",
}
SKIP_ANY = shutil.ignore_patterns("__pycache__", "*.egg-info")

# the files of data/processed (docs/contracts.md), sorted
PROCESSED_FILES = ["items.parquet", "stats.json", "test.parquet", "train.parquet", "users.parquet", "val.parquet"]


def _ignore(directory: str, names: list[str]) -> set[str]:
    skipped = set(SKIP_ANY(directory, names))
    here = Path(directory).resolve()
    if here == REPO:
        skipped |= SKIP_TOP & set(names)
    elif here == REPO / ".dvc":
        skipped |= {"cache", "tmp"} & set(names)
    return skipped


def copy_repo(dest: Path) -> Path:
    """Copy the project (without outputs) to ``dest`` and make it a fresh git repository."""
    shutil.copytree(REPO, dest, ignore=_ignore)
    (dest / "data").mkdir(exist_ok=True)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    commit(dest, "copy")
    return dest


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", message, "--allow-empty"], repo)


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["TF_USE_LEGACY_KERAS"] = "1"
    # CI machines may have no git identity; dvc exp run commits experiment refs.
    for who in ("AUTHOR", "COMMITTER"):
        e.setdefault(f"GIT_{who}_NAME", "recpipe-test")
        e.setdefault(f"GIT_{who}_EMAIL", "test@recpipe.invalid")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with the project's environment; on failure show its output."""
    if cmd[0] in ("recpipe", "dvc"):
        cmd = [str(BIN / cmd[0]), *cmd[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class TinyMF(RecModel):
    """Dot product of fixed random user and item embeddings: a factorized model."""

    def __init__(self, n_users: int, n_items: int, dim: int = 8, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.user_emb = tf.Variable(rng.normal(size=(n_users, dim)).astype(np.float32))
        self.item_emb = tf.Variable(rng.normal(size=(n_items, dim)).astype(np.float32))

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.matmul(self.query_vectors(user_idx), self.item_emb, transpose_b=True)

    def query_vectors(self, user_idx: tf.Tensor) -> tf.Tensor:
        return tf.gather(self.user_emb, user_idx)

    def candidate_vectors(self) -> tf.Tensor:
        return tf.convert_to_tensor(self.item_emb)


class TinyMLP(RecModel):
    """A one-hidden-layer MLP over (user, item) embedding pairs: not factorized."""

    def __init__(self, n_users: int, n_items: int, dim: int = 4, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.user_emb = tf.Variable(rng.normal(size=(n_users, dim)).astype(np.float32))
        self.item_emb = tf.Variable(rng.normal(size=(n_items, dim)).astype(np.float32))
        self.w1 = tf.Variable(rng.normal(size=(2 * dim, hidden)).astype(np.float32))
        self.w2 = tf.Variable(rng.normal(size=(hidden,)).astype(np.float32))

    def score_all(self, user_idx: tf.Tensor) -> tf.Tensor:
        u = tf.gather(self.user_emb, user_idx)[:, None, :]
        n_users, n_items = tf.shape(u)[0], tf.shape(self.item_emb)[0]
        pairs = tf.concat([tf.repeat(u, n_items, axis=1), tf.repeat(self.item_emb[None], n_users, axis=0)], axis=2)
        return tf.tensordot(tf.nn.relu(tf.tensordot(pairs, self.w1, 1)), self.w2, 1)


def toy_processed(
    path: Path,
    n_users: int = 80,
    n_items: int = 60,
    n_interactions: int = 1500,
    seed: int = 1,
    n_genres: int = 18,
    **split: Any,
) -> Processed:
    """A small synthetic dataset through the real ingest and preprocess functions, written under
    ``path`` (raw/, processed/) and read back; ``split`` adds options to the random 80/10/10 split."""
    write_raw(generate(n_users, n_items, n_interactions, n_genres=n_genres, seed=seed), path / "raw")
    tables = read_raw(path / "raw", rating_scale=[1, 5])
    options = {"duplicates": "latest", "min_user_interactions": 1, "min_item_interactions": 1, "min_rating": None}
    write_processed(
        preprocess(tables, options, {"name": "random", "ratios": [0.8, 0.1, 0.1], "seed": 0, **split}),
        path / "processed",
    )
    return load_processed(path / "processed")


def save_mf(data: Processed, path: Path) -> RecModel:
    """An (untrained) MatrixFactorization from conf/model/mf.yaml, saved by training.save_model to ``path``."""
    cfg = OmegaConf.load(REPO / "conf" / "model" / "mf.yaml")
    model = build(cfg, n_users=data.n_users, n_items=data.n_items)
    model.prepare(data.train)
    save_model(model, cfg, data.n_users, data.n_items, path)
    return model


def export_cfg(index: str = "brute_force", max_k: int = 1000, precompute_max_scores: int = 25_000_000) -> OmegaConf:
    return OmegaConf.create(
        {
            "index": index,
            "max_k": max_k,
            "precompute_max_scores": precompute_max_scores,
            "registered_model_name": "recpipe-test",
            "scann": {
                "num_leaves": 4,
                "num_leaves_to_search": 4,
                "training_iterations": 10,
                "dimensions_per_block": 2,
                "num_reordering_candidates": 1000,
            },
        }
    )


def query_fresh_process(exports: dict[str, Path], queries: list[tuple[list[str], int]]) -> dict[str, list[dict]]:
    """``serving_default`` on ``queries`` for each export, in a new Python that imports only TensorFlow.

    Exports named ``scann*`` are loaded last, after ``import tensorflow_recommenders`` (ScaNN's ops).
    """
    code = textwrap.dedent("""
        import json, sys
        import tensorflow as tf
        exports, queries = json.loads(sys.argv[1]), json.loads(sys.argv[2])
        results = {}
        for name, path in sorted(exports.items(), key=lambda e: e[0].startswith("scann")):
            if name.startswith("scann"):
                import tensorflow_recommenders
            else:
                assert "tensorflow_recommenders" not in sys.modules and "scann" not in sys.modules
            f = tf.saved_model.load(path).signatures["serving_default"]
            results[name] = [{n: v.numpy().tolist() for n, v in f(user_id=tf.constant(users), k=tf.constant(k)).items()}
                             for users, k in queries]
        assert not any(m.startswith("recpipe") for m in sys.modules), "recpipe was imported"
        print(json.dumps(results, default=lambda b: b.decode()))
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [json.dumps({n: str(p) for n, p in exports.items()}), json.dumps(queries)]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# XLA compilation takes seconds per model: tests of the default (XLA) path turn it back on
FAST = {"epochs": 4, "patience": 4, "batch_size": 256, "jit_compile": False}


# name -> (conf/model file, overrides): every objective / mode of the three models
VARIANTS = {
    "mf": ("mf", {"solver": "gradient", "embedding_dim": 8, "implicit_dim": 4}),  # solver gibbs: test_mf_gibbs
    "mf_rating_only": ("mf", {"solver": "gradient", "embedding_dim": 8, "implicit_weight": 0.0}),
    "ncf_implicit": ("ncf", {"embedding_dim": 8, "layers": [16, 8], "dropout": 0.1}),
    "ncf_rating": ("ncf", {"embedding_dim": 8, "layers": [16, 8], "objective": "rating"}),
    "two_tower": ("two_tower", {"embedding_dim": 8, "layers": [16, 8]}),
    "mult_vae": ("mult_vae", {"hidden": 16, "latent": 8, "anneal_steps": 4}),
    "two_tower_plain": (
        "two_tower",
        {"embedding_dim": 8, "sampling_correction": False, "remove_accidental_hits": False, "min_rating": 4},
    ),
}


def model_cfg(variant: str, **overrides: object) -> DictConfig:
    """conf/model/<file>.yaml with the variant's overrides and fast training settings."""
    file, changes = VARIANTS[variant]
    return OmegaConf.merge(OmegaConf.load(REPO / "conf" / "model" / f"{file}.yaml"), FAST, changes, overrides)


def cold_processed(
    path: Path, cold_items: float = 0.2, n_users: int = 120, n_items: int = 200, n_interactions: int = 3000
) -> Processed:
    """Synthetic data (genre-driven users) through the real ingest and preprocess, ``cold_items`` held out."""
    return toy_processed(
        path, n_users, n_items, n_interactions, seed=5, n_genres=12, cold_items=cold_items, cold_seed=3
    )


def random_interactions(seed: int, n: int | None = None) -> pd.DataFrame:
    """A small interactions frame with many users, repeated timestamps and a shuffled index."""
    rng = np.random.default_rng(seed)
    n = n if n is not None else int(rng.integers(1, 120))
    df = pd.DataFrame(
        {
            "user_id": pd.Series(rng.integers(0, 12, n).astype(str), dtype="str"),
            "item_id": pd.Series(rng.integers(0, 30, n).astype(str), dtype="str"),
            "rating": rng.integers(1, 6, n).astype(np.float32),
            "timestamp": pd.array(rng.integers(0, 40, n), dtype="Int64"),  # many ties
        }
    )
    df.index = rng.permutation(n) + 1000  # splits must keep whatever index they get
    return df


def labels_of(df: pd.DataFrame, splits: tuple[pd.DataFrame, ...]) -> dict[int, int]:
    """Which split (0 train, 1 val, 2 test) each index label went to; asserts disjoint full coverage."""
    out: dict[int, int] = {}
    for k, part in enumerate(splits):
        assert list(part.columns) == list(df.columns)
        pd.testing.assert_frame_equal(part, df.loc[part.index])  # rows unchanged
        assert (np.diff(df.index.get_indexer(part.index)) > 0).all()  # in df's order
        for i in part.index:
            assert i not in out, "a row is in two splits"
            out[i] = k
    assert sorted(out) == sorted(df.index), "every row is in exactly one split"
    return out


def ref_user(ranked: list[int], truth: set[int], k: int) -> dict[str, float]:
    top = [i for i in ranked[:k] if i >= 0]
    hit_ranks = [r for r, i in enumerate(ranked[:k], start=1) if i >= 0 and i in truth]
    n_hits = len(hit_ranks)
    dcg = sum(1 / math.log2(r + 1) for r in hit_ranks)
    idcg = sum(1 / math.log2(r + 1) for r in range(1, min(len(truth), k) + 1))
    ap = 0.0
    for r in hit_ranks:
        ap += sum(1 for i in ranked[:r] if i >= 0 and i in truth) / r
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(truth),
        "ndcg": dcg / idcg,
        "map": ap / min(len(truth), k),
        "hit_rate": 1.0 if n_hits else 0.0,
        "mrr": 1 / hit_ranks[0] if hit_ranks else 0.0,
        "_top": top,
    }


SMALL = [
    "data=synthetic",
    "data.n_users=200",
    "data.n_items=100",
    "data.n_interactions=4000",
    "model.epochs=3",
    "evaluate.ks=[5,10]",
    "evaluate.baselines=[popularity]",
]
# SMALL for a sweep over models (`model=mf,ncf,...`): Hydra first composes the default model
# (blend, which has no epochs), so keys of the swept models are force-set with `++`.
SMALL_SWEEP = [f"++{o}" if o.startswith("model.") else o for o in SMALL]


MODELS = ("mf", "ncf", "two_tower")


# every job's run has the config, the data stages', train's and evaluate's metrics, its objective
JOB_METRICS = {
    "raw_interactions",
    "data.splits.train.interactions",
    "train_seconds",
    "time_evaluate_s",
    "ndcg_at_10",
    "recall_at_10",
    "coverage_at_10",
    "objective",
}


def recpipe_run(workdir: Path, *args: str, tracking_uri: str | None = None) -> subprocess.CompletedProcess:
    """``recpipe run ARGS`` in ``workdir`` (a copy of conf/) logging to ``tracking_uri`` (default:
    ``workdir``/mlflow.db)."""
    if not (workdir / "conf").exists():
        shutil.copytree(REPO / "conf", workdir / "conf")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}")
        return run(["recpipe", "run", *args], workdir)


def sweep_runs(workdir: Path, tracking_uri: str | None = None, experiment: str = "recpipe") -> tuple[list, list]:
    """(parent runs, child runs) of ``experiment`` at ``tracking_uri`` (default: ``workdir``'s MLflow database)."""
    client = MlflowClient(tracking_uri or f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "recpipe.sweep_dir" in r.data.tags]
    return parents, [r for r in runs if r not in parents]


def check_sweep(workdir: Path, models: list[str], tracking_uri: str | None = None, experiment: str = "recpipe") -> list:
    """One finished parent, one finished child per job (``models``, in job order) with the full
    metric set; job outputs in the job folders, none in the DVC output folders."""
    parents, children = sweep_runs(workdir, tracking_uri, experiment)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert sorted(r.data.tags["recpipe.job_num"] for r in children) == [str(i) for i in range(len(models))]
    sweep_dir = Path(parent.data.tags["recpipe.sweep_dir"])
    for run_ in children:
        assert run_.info.status == "FINISHED"
        assert run_.data.tags["mlflow.parentRunId"] == parent.info.run_id
        num = int(run_.data.tags["recpipe.job_num"])
        assert run_.data.tags["model"] == run_.data.params["model.name"] == models[num]
        assert set(run_.data.metrics) >= JOB_METRICS, JOB_METRICS - set(run_.data.metrics)
        assert run_.data.params["data.n_users"] == "200"
        job = workdir / sweep_dir / str(num)
        assert (job / "models/train/train_summary.json").exists()
        reported = tracking.headline_metrics(json.loads((job / "reports/detail.json").read_text()))
        assert {k: run_.data.metrics.get(k) for k in reported} == pytest.approx(reported)
    for dvc_out in ("data", "models", "reports"):
        assert not (workdir / dvc_out).exists()
    return children


def expected_top(model: RecModel, data: Processed, users: np.ndarray, k: int) -> list[list[str]]:
    """Top-k item ids by the evaluation ranking code (score_all, train+val excluded)."""
    items, _ = top_k_items(lambda u: model.score_all(tf.constant(u)), users, data.matrix("train", "val"), k)
    ids = data.items["item_id"].to_numpy(object)
    return [[ids[i] for i in row if i >= 0] for row in items]


def composed(*overrides: str) -> DictConfig:
    """The real conf/ composed with Hydra ``overrides`` and resolved, as ``recpipe compose`` writes it."""
    return compose(overrides, CONF)


def baseline_configs(seed: int, changes: dict[str, dict[str, Any]] | None = None) -> DictConfig:
    """``evaluate.baseline_models`` as conf/ composes it (conf/model/<name>.yaml) for pipeline ``seed``,
    with ``changes`` ({baseline: {key: value}}) as Hydra overrides."""
    overrides = [
        f"evaluate.baseline_models.{name}.{key}={value}"
        for name, values in (changes or {}).items()
        for key, value in values.items()
    ]
    return composed(f"seed={seed}", *overrides).evaluate.baseline_models


def dvc_status(repo: Path, *targets: str) -> dict:
    """``dvc status --json``: {stage: [changes]} of the stages that are out of date ({} when clean)."""
    return json.loads(run(["dvc", "status", "--json", *targets], repo).stdout or "{}")


def changed_deps(repo: Path) -> dict[str, set[str]]:
    """Out-of-date stages -> the dependency paths (files, directories, params.yaml) DVC names."""
    return {
        stage: {path for change in changes if isinstance(change, dict) for path in change.get("changed deps", {})}
        for stage, changes in dvc_status(repo).items()
    }


def snapshot(*dirs: Path) -> dict[str, bytes]:
    """Every file under ``dirs`` (path -> bytes), to compare outputs before and after."""
    return {str(f): f.read_bytes() for d in dirs for f in sorted(d.rglob("*")) if f.is_file()}


# --- GroupLens releases in their three file layouts (tiny; the same content in each) -------------
RATINGS = [
    ("1", "10", "4", "881250949"),
    ("1", "20", "3", "881250950"),
    ("2", "10", "5", "881250951"),
    ("3", "30", "1", "881250952"),
]
ML100K_FILES = {
    "u.data": "".join("\t".join(r) + "\n" for r in RATINGS),
    # id | title | release date | video date | url | 19 genre flags (unknown, Action, Adventure, Animation, ...)
    "u.item": "10|Café Society (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "20|Heat (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "30|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
    "u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|32067\n",
}
ML1M_FILES = {
    "ratings.dat": "".join("::".join(r) + "\n" for r in RATINGS),
    "movies.dat": "10::Café Society (1995)::Action|Adventure\n20::Heat (1995)::Thriller\n30::Mystery Movie::\n",
    "users.dat": "1::M::25::17::85711\n2::F::50::0::94043\n3::M::18::20::32067\n",
}
CSV_FILES = {
    "ratings.csv": "userId,movieId,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in RATINGS),
    "movies.csv": 'movieId,title,genres\n10,"Café Society, The (1995)",Action|Adventure\n'
    "20,Heat (1995),Thriller\n30,Mystery Movie,(no genres listed)\n",
    "links.csv": "movieId,imdbId,tmdbId\n10,1,2\n",
}
# ml-latest, ml-20m, ml-25m and ml-32m share the CSV layout (their tag/genome files are not read)
LAYOUTS = {
    "ml-100k": ML100K_FILES,
    "ml-1m": ML1M_FILES,
    "ml-latest-small": CSV_FILES,
    "ml-25m": CSV_FILES,
    "ml-32m": CSV_FILES,
}
# ML-100K and ML-1M are latin-1 files; the CSV releases are UTF-8.
ENCODING = {"u.item": "latin-1", "movies.dat": "latin-1"}


def make_zip(path: Path, name: str) -> Path:
    """A release zip as GroupLens publishes it: every file under a folder named like the release."""
    with zipfile.ZipFile(path, "w") as z:
        for file, text in LAYOUTS[name].items():
            z.writestr(f"{name}/{file}", text.encode(ENCODING.get(file, "utf-8")))
    return path


# --- fault injection: the real recpipe command, outputs byte for byte, unwritable folders ---------
# A tiny, fast configuration: synthetic data (TINY_DATA), 2 epochs, one baseline.
TINY_DATA = ["data=synthetic", "data.n_users=40", "data.n_items=30", "data.n_interactions=400"]
TINY = [
    "model=mf",  # not the default blend: one quick model
    "model.epochs=2",
    "model.batch_size=256",
    "evaluate.baselines=[popularity]",
    "evaluate.bootstrap.n_resamples=10",
    "export.max_k=20",
]


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def params_text(*overrides: str, data: Sequence[str] = TINY_DATA) -> str:
    """params.yaml for the TINY config with ``data`` overrides plus ``overrides``, as ``recpipe compose`` writes it."""
    return _composed((*data, *TINY, *overrides))


@functools.lru_cache(maxsize=256)
def _composed(overrides: tuple[str, ...]) -> str:
    return to_yaml(compose(overrides, REPO / "conf"))


@contextlib.contextmanager
def inside(path: Path) -> Iterator[None]:
    """Run with ``path`` as the working directory (stages read and write relative to it)."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def cli(args: Sequence[str], cwd: Path) -> Result:
    """``recpipe ARGS`` in this process, in ``cwd``: exit code (argparse's exits included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with inside(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: a bad argument exits 2 with its usage message
            code = e.code if isinstance(e.code, int) else 1
    return Result(code, out.getvalue(), err.getvalue())


def run_recpipe(args: Sequence[str], cwd: Path, timeout: float = 120) -> Result:
    """``recpipe ARGS`` as a real subprocess (console script) in ``cwd``."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    proc = subprocess.run(
        [str(BIN / "recpipe"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), for byte-identity checks."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def outputs(root: Path) -> dict[str, bytes]:
    """The pipeline outputs under ``root``: data/raw, data/processed, models/, reports/."""
    found: dict[str, bytes] = {}
    for sub in ("data/raw", "data/processed", "models", "reports"):
        if (root / sub).exists():
            found |= {f"{sub}/{k}": v for k, v in tree_bytes(root / sub).items()}
    return found


def fake_outputs(root: Path) -> dict[str, bytes]:
    """Previous outputs of every stage (distinct bytes per file) under ``root``; returns their snapshot."""
    files = [
        "data/raw/interactions.parquet",
        "data/raw/source.json",
        "data/processed/train.parquet",
        "data/processed/stats.json",
        "models/train/model/model_config.json",
        "models/train/train_summary.json",
        "models/train/training_curve.csv",
        "models/export/recpipe_export.json",
        "reports/metrics.json",
        "reports/plots/metrics_at_k.csv",
    ]
    for i, name in enumerate(files):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(f"previous output {i} of {name}\n".encode())
    return outputs(root)


def assert_clean_failure(result: Result, *places: str) -> None:
    """Exit code 2, one message naming every one of ``places``, no traceback."""
    assert result.code == 2, f"exit {result.code}\n{result.text}"
    assert "Traceback" not in result.text, result.text
    for place in places:
        assert place in result.err, f"{place!r} not in the message:\n{result.err}"


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` unwritable even for root (``chattr +i``); chmod for other users."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("cannot make a folder unwritable for root here (chattr +i failed)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"recpipe serve exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        try:
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} not ready after {timeout} s")


class ThreadServer:
    """uvicorn running ``create_app(state)`` in a thread on a free port."""

    def __init__(self, state: Any) -> None:
        import uvicorn

        from recpipe.serving.http import create_app

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(state), port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_ready(self.base)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
