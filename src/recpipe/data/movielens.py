"""MovieLens: the ML-100K copy inside the recbole wheel, and GroupLens releases (zip, folder or URL).

The recbole wheel (installed with ``--no-deps``) is only a carrier of the ML-100K files in RecBole's
atomic format; recbole itself is never imported (it needs torch). GroupLens releases come in three
layouts: ml-100k (``u.data``/``u.item``/``u.user``), ml-1m (``*.dat`` with ``::``) and the CSV
releases (``ratings.csv``/``movies.csv``: ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m).
"""

from __future__ import annotations

import csv
import importlib.metadata
import io
import logging
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from recpipe.data.download import fetch
from recpipe.data.raw import (
    NO_GENRE,
    RawData,
    id_strings,
    int32_or_null,
    interactions_frame,
    items_frame,
    numbers,
    reading,
    sha256_file,
    split_genres,
    split_title_year,
)
from recpipe.data.validate import check_rows
from recpipe.errors import DataError, RecpipeError
from recpipe.terminal import printable

RECBOLE = "recbole==1.2.1"
BUILTIN_DIR = "recbole/dataset_example/ml-100k"
# sha256 of the files in the recbole 1.2.1 wheel, computed once from the installed wheel.
BUILTIN_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
# u.genre of ML-100K: the order of the 19 genre flags in u.item.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
# ML-1M README: occupation codes in users.dat.
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)

log = logging.getLogger(__name__)
Tables = tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]
Scale = Sequence[float] | None  # data.rating_scale: [lowest, highest]
# What to do about a bad value in a release file: GroupLens publishes none, so the file was changed or damaged.
RELEASE_HINT = "GroupLens releases have none: re-download or re-extract the release"


# --- ML-100K from the recbole wheel -----------------------------------------------------------


def builtin_files() -> dict[str, Path]:
    """Paths of the ML-100K atomic files in the installed recbole wheel."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise RecpipeError(
            "data=ml100k reads MovieLens 100K from the recbole wheel, which is not installed: "
            f"run `pip install --no-deps {RECBOLE}` (or `make setup`)"
        ) from None
    files = {name: Path(str(dist.locate_file(f"{BUILTIN_DIR}/{name}"))) for name in BUILTIN_SHA256}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise RecpipeError(
            f"recbole {dist.version} is installed without the MovieLens 100K files ({', '.join(missing)}): "
            f"run `pip install --no-deps --force-reinstall {RECBOLE}`"
        )
    return files


def read_builtin(files: Mapping[str, Path]) -> RawData:
    """ML-100K from RecBole atomic files (keys as in ``BUILTIN_SHA256``), each checked against its sha256."""
    for name, path in files.items():
        verify_sha256(path, BUILTIN_SHA256[name], f"run `pip install --no-deps --force-reinstall {RECBOLE}`")
    inter = read_atomic(files["ml-100k.inter"])
    item = read_atomic(files["ml-100k.item"])
    user = read_atomic(files["ml-100k.user"])
    # recbole keeps a year left in a few titles, "... (1995)", and puts junk in their year field
    title, title_year = split_title_year(item["movie_title"])
    items = items_frame(
        item["item_id"],
        title,
        int32_or_null(item["release_year"]).fillna(title_year),
        split_genres(item["class"], None),
    )
    return RawData(
        interactions=interactions_frame(
            inter["user_id"],
            inter["item_id"],
            inter["rating"],
            inter["timestamp"],
            file=str(files["ml-100k.inter"]),
        ),
        items=items,
        users=users_frame(user["user_id"], user["age"], user["gender"], user["occupation"], user["zip_code"]),
        source={
            "source": "movielens_builtin",
            "name": "ml-100k",
            "package": RECBOLE,
            "path": BUILTIN_DIR,
            "sha256": {name: BUILTIN_SHA256[name] for name in files},
        },
    )


def load_builtin(cfg: DictConfig) -> RawData:
    """``data.source=movielens_builtin``: MovieLens 100K from the installed recbole wheel."""
    if cfg.get("name", "ml-100k") != "ml-100k":
        raise RecpipeError(
            f"data.name={cfg.name!r}: the built-in copy is ml-100k only; use data=grouplens for other releases"
        )
    return read_builtin(builtin_files())


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; every column read as text."""
    with open(path, encoding="utf-8") as f:
        names = [field.split(":")[0] for field in f.readline().rstrip("\n").split("\t")]
        return pd.read_csv(
            f, sep="\t", header=None, names=names, dtype=str, quoting=csv.QUOTE_NONE, keep_default_na=False
        )


def verify_sha256(path: Path, expected: str, hint: str) -> None:
    """Raise a RecpipeError (with ``hint``) unless ``path`` has sha256 ``expected``."""
    got = sha256_file(path)
    if got != expected.lower():
        raise RecpipeError(f"{path}: sha256 {got} does not match the expected {expected.lower()}; {hint}")


def users_frame(
    user_id: pd.Series, age: pd.Series, gender: pd.Series, occupation: pd.Series, zip_code: pd.Series
) -> pd.DataFrame:
    """The MovieLens users table: user_id, age (int32), gender, occupation, zip."""
    return pd.DataFrame(
        {
            "user_id": id_strings(user_id).array,
            "age": int32_or_null(age).array,
            "gender": gender.astype("str").array,
            "occupation": occupation.astype("str").array,
            "zip": zip_code.astype("str").array,
        }
    )


# --- GroupLens releases -----------------------------------------------------------------------


class Release:
    """A GroupLens release, a zip file or an extracted folder; files are found by name at its top or
    one folder down (``ml-100k/u.data``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            members = [p.relative_to(path).as_posix() for p in path.glob("*") if p.is_file()]
            members += [p.relative_to(path).as_posix() for p in path.glob("*/*") if p.is_file()]
        elif zipfile.is_zipfile(path):
            with reading(path), zipfile.ZipFile(path) as z:
                members = [n for n in z.namelist() if not n.endswith("/")]
        else:
            raise DataError(
                str(path),
                "not a zip file or a folder (data.path)",
                hint="Give the release's .zip (complete, not truncated) or its extracted folder",
            )
        self.members = sorted(members, key=lambda m: (m.count("/"), m))
        self.opened: list[str] = []

    def find(self, name: str) -> str:
        """The member path of file ``name``."""
        for m in self.members:
            if m.rsplit("/", 1)[-1] == name and m.count("/") <= 1:
                return m
        raise RecpipeError(f"{self.path}: no {name} in this release; is data.name right for it?")

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Open file ``name`` of the release for binary reading."""
        member = self.find(name)
        self.opened.append(member)
        log.info(f"ingest: reading {self.where(name)}")
        if self.path.is_dir():
            with reading(self.where(name)), open(self.path / member, "rb") as f:
                yield f
        else:
            with reading(self.where(name)), zipfile.ZipFile(self.path) as z, z.open(member) as f:
                yield f

    def checksums(self) -> dict[str, str]:
        """sha256 of the zip, or of each file read from a folder."""
        if self.path.is_dir():
            return {m: sha256_file(self.path / m) for m in self.opened}
        return {self.path.name: sha256_file(self.path)}

    def read_table(self, name: str, names: list[str], sep: str, encoding: str = "utf-8") -> pd.DataFrame:
        """A headerless, unquoted table of the release, all columns as text; ``::`` separators allowed."""
        with self.open(name) as f:
            data: IO[bytes] = f
            if sep == "::":
                data, sep = io.BytesIO(f.read().replace(b"::", b"\t")), "\t"
            table = pd.read_csv(
                data,
                sep=sep,
                header=None,
                names=names,
                dtype=str,
                encoding=encoding,
                quoting=csv.QUOTE_NONE,
                keep_default_na=False,
            )
        if table.empty:
            raise DataError(self.where(name), "the file has no rows", hint="Re-download or re-extract the release")
        return table

    def where(self, name: str) -> str:
        """File ``name`` of the release as messages show it: ``folder/member`` or ``release.zip:member``."""
        member = self.find(name)
        return str(self.path / member) if self.path.is_dir() else f"{self.path}:{member}"


def _ml100k(rel: Release, scale: Scale) -> Tables:
    data = rel.read_table("u.data", ["user", "item", "rating", "timestamp"], "\t")
    item = rel.read_table("u.item", ["item", "title", "date", "video_date", "url", *ML100K_GENRES], "|", "latin-1")
    user = rel.read_table("u.user", ["user", "age", "gender", "occupation", "zip"], "|")
    title, year = split_title_year(item["title"])
    flags = genre_flags(item[list(ML100K_GENRES)], rel.where("u.item"))
    genres = [[g for g, on in zip(ML100K_GENRES, row) if on and g not in NO_GENRE] for row in flags]
    check_item_ids(item, "item", rel.where("u.item"))
    return (
        release_interactions(data, ("user", "item", "rating", "timestamp"), rel.where("u.data"), scale),
        items_frame(item["item"], title, year, pd.Series(genres, dtype=object)),
        users_frame(user["user"], user["age"], user["gender"], user["occupation"], user["zip"]),
    )


def genre_flags(table: pd.DataFrame, file: str) -> np.ndarray:
    """u.item's 0/1 genre columns as booleans; anything else raises a DataError naming the row."""
    values = table.apply(pd.to_numeric, errors="coerce")
    bad = ~values.isin([0, 1]).all(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(
            file,
            "genre flags that are not 0 or 1",
            column="genres",
            n_rows=int(bad.sum()),
            row=row,
            example={k: v for k, v in table.iloc[row].items() if v not in ("0", "1")},
        )
    return values.to_numpy(dtype=np.int8).astype(bool)


def _ml1m(rel: Release, scale: Scale) -> Tables:
    data = rel.read_table("ratings.dat", ["user", "item", "rating", "timestamp"], "::")
    movies = rel.read_table("movies.dat", ["item", "title", "genres"], "::", "latin-1")
    user = rel.read_table("users.dat", ["user", "gender", "age", "occupation", "zip"], "::")
    title, year = split_title_year(movies["title"])
    codes = pd.to_numeric(user["occupation"], errors="coerce")
    occupation = codes.map(lambda c: ML1M_OCCUPATIONS[int(c)] if 0 <= c < len(ML1M_OCCUPATIONS) else str(c))
    check_item_ids(movies, "item", rel.where("movies.dat"))
    return (
        release_interactions(data, ("user", "item", "rating", "timestamp"), rel.where("ratings.dat"), scale),
        items_frame(movies["item"], title, year, split_genres(movies["genres"], "|")),
        users_frame(user["user"], user["age"], user["gender"], occupation, user["zip"]),
    )


def _csv_release(rel: Release, scale: Scale) -> Tables:
    with rel.open("ratings.csv") as f:
        data = pd.read_csv(f, dtype=str)  # checked by release_interactions
    with rel.open("movies.csv") as f:
        movies = pd.read_csv(f, dtype=str, keep_default_na=False, encoding="utf-8")
    _require(data, ("userId", "movieId", "rating", "timestamp"), rel.where("ratings.csv"))
    _require(movies, ("movieId", "title", "genres"), rel.where("movies.csv"))
    check_item_ids(movies, "movieId", rel.where("movies.csv"))
    title, year = split_title_year(movies["title"])
    return (
        release_interactions(data, ("userId", "movieId", "rating", "timestamp"), rel.where("ratings.csv"), scale),
        items_frame(movies["movieId"], title, year, split_genres(movies["genres"], "|")),
        None,
    )


def _require(table: pd.DataFrame, columns: Sequence[str], file: str) -> None:
    """``table`` (a CSV release file) must have ``columns`` and at least one row."""
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(
            file,
            "missing column(s) of this release's layout",
            column=", ".join(missing),
            hint=f"Columns present: {', '.join(printable(c) for c in table.columns[:50])}",
        )
    if table.empty:
        raise DataError(file, "the file has no rows", hint="Re-download or re-extract the release")


def release_interactions(data: pd.DataFrame, columns: Sequence[str], file: str, scale: Scale) -> pd.DataFrame:
    """The interactions of a release's ratings file, read as text into ``data``, whose ``columns`` are
    user, item, rating and timestamp.

    A missing or blank value (an empty cell, a short row), a rating that is no number or lies outside
    ``scale`` (``data.rating_scale``; None: any finite number) raises a DataError naming ``file``, the
    column and the first such row (rows count from 0, after the header). Checks are vectorised.
    """
    log.info(f"ingest: checking {len(data):,} rows of {file}")
    for column in columns:
        problem = "missing value (an empty cell or a short row)"
        check_rows(data, blank(data[column]), file, column, problem, RELEASE_HINT)
    user, item, rating, timestamp = columns
    values = numbers(data[rating])
    v = values.to_numpy()
    check_rows(data, np.isnan(v), file, rating, "rating is not a number", RELEASE_HINT)
    if scale is None:
        check_rows(data, ~np.isfinite(v), file, rating, "rating is not a finite number", RELEASE_HINT)
    else:
        lo, hi = (float(x) for x in scale)
        check_rows(
            data,
            ~((v >= lo) & (v <= hi)),
            file,
            rating,
            f"rating outside data.rating_scale [{lo:g}, {hi:g}]",
            f"{RELEASE_HINT}; if this release has another scale, set data.rating_scale",
        )
    return interactions_frame(data[user], data[item], values, data[timestamp], file=file)


def check_item_ids(table: pd.DataFrame, column: str, file: str) -> None:
    """A release's item ids (``table[column]``, text) are present and unique, else a DataError naming the row."""
    check_rows(table, blank(table[column]), file, column, "missing movie id", RELEASE_HINT)
    check_rows(table, table[column].duplicated().to_numpy(), file, column, "repeated movie id", RELEASE_HINT)


def blank(values: pd.Series) -> np.ndarray:
    """Which text ``values`` are missing or only whitespace."""
    return values.isna().to_numpy() | (values.str.strip() == "").to_numpy(dtype=bool, na_value=False)


LAYOUTS: dict[str, Callable[[Release, Scale], Tables]] = {
    "ml-100k": _ml100k,
    "ml-1m": _ml1m,
    **dict.fromkeys(("ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m"), _csv_release),
}


def load_grouplens(cfg: DictConfig) -> RawData:
    """``data.source=grouplens``: release ``data.name`` from ``data.path`` (zip or folder) or ``data.url``."""
    layout = LAYOUTS.get(cfg.name)
    if layout is None:
        raise RecpipeError(f"data.name={cfg.name!r} is not a known GroupLens release; one of {', '.join(LAYOUTS)}")
    sha256 = cfg.get("sha256")
    origin: dict[str, Any]
    if cfg.get("path"):
        path = Path(cfg.path)
        if not path.exists():
            raise RecpipeError(f"{path} not found (data.path)")
        if sha256 and path.is_dir():
            raise RecpipeError(
                f"data.sha256 is the digest of a zip file, but data.path={path} is a folder, so it cannot be "
                "checked: point data.path at the release's .zip, or set data.sha256=null (the sha256 of each "
                "file read from a folder is recorded in data/raw/source.json)"
            )
        if sha256:
            verify_sha256(path, sha256, "fix data.sha256 or data.path")
        origin = {"path": str(path)}
    else:
        path = fetch(cfg.url, cfg.cache_dir, sha256=sha256)
        origin = {"url": cfg.url, "path": str(path)}
    release = Release(path)
    interactions, items, users = layout(release, cfg.get("rating_scale"))
    source = {"source": "grouplens", "name": cfg.name, **origin, "sha256": release.checksums()}
    return RawData(interactions=interactions, items=items, users=users, source=source)
