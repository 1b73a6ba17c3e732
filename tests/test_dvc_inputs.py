"""Every input file is a DVC dependency of ingest: editing one makes ingest (and, through data/raw,
what follows) out of date in `dvc status`, whether the source was set by `recpipe compose` +
`dvc repro` or by `dvc exp run -S`. Real DVC in a temporary git repository, tiny files."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from .helpers import CSV_FILES, changed_deps, commit, copy_repo, make_zip, run

pytestmark = pytest.mark.integration  # real dvc / recpipe subprocesses

RATINGS = "user_id,item_id,rating,timestamp\n" + "".join(
    f"{u},{i},{1 + (u + i) % 5},{1000 + 7 * u + i}\n" for u in range(12) for i in range(10) if (u * i) % 3
)
ITEMS = "item_id,title,year,genres\n" + "".join(f"{i},Movie {i},{1990 + i},Drama|Comedy\n" for i in range(10))
USERS = "user_id,age\n" + "".join(f"{u},{20 + u}\n" for u in range(12))
FILES = ["data=files", "data.interactions=data/ratings.csv", "data.items=data/items.csv", "data.users=data/users.csv"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("inputs") / "repo")
    for name, text in (("ratings.csv", RATINGS), ("items.csv", ITEMS), ("users.csv", USERS)):
        (repo / "data" / name).write_text(text)
    make_zip(repo / "data" / "ml.zip", "ml-latest-small")
    with zipfile.ZipFile(repo / "data" / "ml.zip") as z:
        z.extractall(repo / "data")
    commit(repo, "input files")
    return repo


def edited(repo: Path, path: Path, change: str = "\n") -> set[str] | None:
    """What `dvc status` says changed for ingest (None: up to date) while ``path`` has ``change``
    appended; the file is restored afterwards. (Later stages never ran in this repository.)"""
    before = path.read_bytes()
    path.write_bytes(before + change.encode())
    try:
        return changed_deps(repo).get("ingest")
    finally:
        path.write_bytes(before)


def test_files_source_each_table_is_a_dependency(repo):
    run(["recpipe", "compose", *FILES], repo)
    run(["dvc", "repro", "ingest"], repo)
    assert changed_deps(repo).get("ingest") is None
    for name in ("ratings.csv", "items.csv", "users.csv"):
        assert edited(repo, repo / "data" / name, "11,3,4,2000\n" if name == "ratings.csv" else "99,x\n") == {
            f"data/{name}"
        }, name
    assert changed_deps(repo).get("ingest") is None  # restored: up to date again


def test_absent_tables_and_external_files(repo, tmp_path):
    outside = tmp_path / "items.csv"  # a table outside the repository: an external dependency
    outside.write_text(ITEMS)
    run(["recpipe", "compose", "data=files", "data.interactions=data/ratings.csv", f"data.items={outside}"], repo)
    run(["dvc", "repro", "ingest"], repo)
    assert changed_deps(repo).get("ingest") is None
    assert edited(repo, outside, "77,x,2001,Drama\n") == {str(outside)}
    # no users table: editing the file that used to be one changes nothing
    assert edited(repo, repo / "data" / "users.csv", "99,x\n") is None


def test_grouplens_zip_and_folder(repo):
    zip_path, folder = repo / "data" / "ml.zip", repo / "data" / "ml-latest-small"
    for path in (zip_path, folder):
        run(
            [
                "recpipe",
                "compose",
                "data=grouplens",
                "data.name=ml-latest-small",
                f"data.path={path.relative_to(repo)}",
            ],
            repo,
        )
        run(["dvc", "repro", "ingest"], repo)
        assert changed_deps(repo).get("ingest") is None
    ratings = folder / "ratings.csv"
    assert edited(repo, ratings, "3,20,2.5,881250999\n") == {"data/ml-latest-small"}
    run(["recpipe", "compose", "data=grouplens", "data.name=ml-latest-small", "data.path=data/ml.zip"], repo)
    run(["dvc", "repro", "ingest"], repo)
    before = zip_path.read_bytes()
    make_zip(zip_path, "ml-latest-small")
    with zipfile.ZipFile(zip_path, "a") as z:
        z.writestr("ml-latest-small/README.txt", "a newer release")
    try:
        assert changed_deps(repo).get("ingest") == {"data/ml.zip"}
    finally:
        zip_path.write_bytes(before)
    assert CSV_FILES["ratings.csv"].splitlines()[0] in ratings.read_text()


def test_exp_run_set_params_track_the_files_too(repo):
    run(["recpipe", "compose", "data=synthetic"], repo)
    commit(repo, "synthetic")
    run(["dvc", "exp", "run", "ingest", *[a for o in FILES for a in ("-S", o)]], repo)
    params = (repo / "params.yaml").read_text()
    assert "items: data/items.csv" in params and "users: data/users.csv" in params  # data.inputs, composed by DVC
    assert changed_deps(repo).get("ingest") is None
    assert edited(repo, repo / "data" / "items.csv", "99,x,2001,Drama\n") == {"data/items.csv"}


def test_hand_edited_params_that_skip_inputs_is_refused(repo):
    run(["recpipe", "compose", *FILES], repo)
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("items: data/items.csv\n", "items: data/other.csv\n", 1))
    shutil.copy(repo / "data" / "items.csv", repo / "data" / "other.csv")
    proc = run(["recpipe", "ingest"], repo, check=False)
    assert proc.returncode == 2
    assert "data.items='data/other.csv' is not among data.inputs" in proc.stderr
    assert "Traceback" not in proc.stderr
