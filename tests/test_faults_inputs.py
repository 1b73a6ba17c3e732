"""Fault injection: empty, corrupt and wrong-but-parseable input files, through the real ``recpipe``.

Hypothesis builds valid tables in every supported format (CSV, TSV, gzip CSV, Parquet, GroupLens
zips and folders), then damages them: empty files, truncation, bytes overwritten in the middle,
garbage, a damaged zip member, bad values in a valid file. Whatever the damage, ``recpipe ingest``
either reads the file or exits 2 with a message naming it, never with a traceback, and the previous
outputs stay byte-identical.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
import zlib
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recpipe.errors import ConfigError
from recpipe.schema import validate

from .helpers import (
    ENCODING,
    LAYOUTS,
    Result,
    assert_clean_failure,
    cli,
    fake_outputs,
    outputs,
    params_text,
    run_recpipe,
)

FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FORMATS = ("csv", "tsv", "csv.gz", "parquet")
# The GroupLens files each layout reads (links.csv is never opened).
READ = {name: [f for f in files if f != "links.csv"] for name, files in LAYOUTS.items()}


@st.composite
def interactions(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(3, 25))
    ids = st.integers(1, 9)
    return pd.DataFrame(
        {
            "user_id": draw(st.lists(ids, min_size=n, max_size=n)),
            "item_id": draw(st.lists(ids, min_size=n, max_size=n)),
            "rating": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)),
            "timestamp": draw(st.lists(st.integers(0, 2_000_000_000), min_size=n, max_size=n)),
        }
    )


def encode(df: pd.DataFrame, fmt: str) -> bytes:
    """``df`` as the bytes of a file of format ``fmt``."""
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    text = df.to_csv(index=False, sep="\t" if fmt == "tsv" else ",").encode()
    return gzip.compress(text, mtime=0) if fmt == "csv.gz" else text


def files_project(root: Path, data: Path, *overrides: str) -> Path:
    """A project in ``root`` whose params.yaml reads ``data`` (data=files, a path relative to ``root``)."""
    data = data.relative_to(root)
    (root / "params.yaml").write_text(params_text(*overrides, data=["data=files", f"data.interactions={data}"]))
    return root


def ingest_checked(root: Path, file: Path, *, must_fail: bool) -> Result:
    """``recpipe ingest`` in ``root``: a clean success, or exit 2 naming ``file`` with outputs untouched."""
    before = fake_outputs(root)
    result = cli(["ingest"], root)
    assert "Traceback" not in result.text, result.text
    if must_fail or result.code != 0:
        assert_clean_failure(result, str(file.relative_to(root)))
        assert outputs(root) == before
    return result


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> tuple[str, bytes]:
    """(kind, damaged bytes): empty, truncated, overwritten in the middle, or garbage."""
    kind = draw(st.sampled_from(["empty", "truncated", "overwritten", "garbage"]))
    if kind == "empty":
        return kind, b""
    if kind == "truncated":
        return kind, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "overwritten":
        at = draw(st.integers(len(data) // 4, 3 * len(data) // 4))
        patch = draw(st.binary(min_size=1, max_size=16))
        return kind, data[:at] + patch + data[at + len(patch) :]
    return kind, draw(st.binary(min_size=1, max_size=300))


def always_detected(fmt: str, kind: str) -> bool:
    """Damage no reader can take for data: an empty file; a truncated Parquet file (no footer) or
    gzip stream (no trailer); garbage that is no Parquet file."""
    return (
        kind == "empty"
        or (fmt in ("parquet", "csv.gz") and kind == "truncated")
        or (fmt == "parquet" and kind == "garbage")
    )


@FAST
@given(df=interactions(), fmt=st.sampled_from(FORMATS), data=st.data())
def test_damaged_files_of_every_format(tmp_path_factory, df, fmt, data):
    kind, damaged = data.draw(damage(encode(df, fmt)))
    root = tmp_path_factory.mktemp("files")
    file = root / f"interactions.{fmt}"
    file.write_bytes(damaged)
    ingest_checked(files_project(root, file), file, must_fail=always_detected(fmt, kind))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=interactions(), data=st.data())
def test_gzip_damaged_in_the_middle_is_refused(tmp_path_factory, df, data):
    raw = encode(df, "csv.gz")
    at = data.draw(st.integers(10, len(raw) - 9))  # inside the deflate stream, after the header
    flip = data.draw(st.integers(1, 255))
    damaged = raw[:at] + bytes([raw[at] ^ flip]) + raw[at + 1 :]
    root = tmp_path_factory.mktemp("gz")
    file = root / "interactions.csv.gz"
    file.write_bytes(damaged)
    # a flip in the unused padding bits after the deflate stream's last code changes nothing: no damage
    ingest_checked(files_project(root, file), file, must_fail=not decompresses_to(damaged, gzip.decompress(raw)))


def decompresses_to(data: bytes, expected: bytes) -> bool:
    """Whether gzip ``data`` is intact and decompresses to ``expected``."""
    try:
        return gzip.decompress(data) == expected
    except (OSError, EOFError, zlib.error):
        return False


def release_zip(path: Path, name: str, compression: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for file, text in LAYOUTS[name].items():
            z.writestr(f"{name}/{file}", text.encode(ENCODING.get(file, "utf-8")))
    return path


def member_data(path: Path, member: str) -> tuple[int, int]:
    """(offset, size) of ``member``'s stored bytes in the zip file."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = path.read_bytes()
    start = (
        info.header_offset
        + 30
        + int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
        + int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    )
    return start, info.compress_size


def grouplens_project(root: Path, name: str, path: Path, *overrides: str) -> Path:
    data = ["data=grouplens", f"data.name={name}", f"data.path={path.relative_to(root)}", *overrides]
    (root / "params.yaml").write_text(params_text(data=data))
    return root


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(sorted(LAYOUTS)),
    compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
    data=st.data(),
)
def test_zip_member_damaged_in_the_middle(tmp_path_factory, name, compression, data):
    root = tmp_path_factory.mktemp("zip")
    path = release_zip(root / f"{name}.zip", name, compression)
    member = f"{name}/{data.draw(st.sampled_from(READ[name]))}"
    start, size = member_data(path, member)
    at = data.draw(st.integers(start + size // 4, start + max(size // 4, 3 * size // 4 - 1)))
    raw = bytearray(path.read_bytes())
    raw[at] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))
    result = ingest_checked(grouplens_project(root, name, path), path, must_fail=True)
    assert member in result.err


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(LAYOUTS)), data=st.data())
def test_release_folder_with_an_empty_or_garbage_file(tmp_path_factory, name, data):
    root = tmp_path_factory.mktemp("folder")
    folder = root / "release" / name
    folder.mkdir(parents=True)
    for file, text in LAYOUTS[name].items():
        (folder / file).write_bytes(text.encode(ENCODING.get(file, "utf-8")))
    broken = folder / data.draw(st.sampled_from(READ[name]))
    broken.write_bytes(data.draw(st.sampled_from([b"", b"\x00\xff\xfe garbage \x81\n" * 3])))
    result = ingest_checked(grouplens_project(root, name, root / "release"), broken, must_fail=False)
    if broken.stat().st_size == 0:
        assert_clean_failure(result, str(broken.relative_to(root)))


def test_truncated_zip_is_refused(tmp_path):
    path = release_zip(tmp_path / "ml-100k.zip", "ml-100k", zipfile.ZIP_DEFLATED)
    path.write_bytes(path.read_bytes()[:-30])
    ingest_checked(grouplens_project(tmp_path, "ml-100k", path), path, must_fail=True)


# --- values that parse but are wrong ------------------------------------------------------------


@FAST
@given(df=interactions(), data=st.data(), fmt=st.sampled_from(["csv", "csv.gz"]))
def test_bad_timestamp_names_its_row(tmp_path_factory, df, data, fmt):
    row = data.draw(st.integers(0, len(df) - 1))
    bad = data.draw(
        st.one_of(
            st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).filter(lambda w: w not in ("nan", "inf")),
            st.sampled_from(["1e30", "1e13", "-1e30", "inf", "-inf", "2024-01-01", "12:00"]),
        )
    )
    df = df.astype({"timestamp": object})
    df.loc[row, "timestamp"] = bad
    root = tmp_path_factory.mktemp("ts")
    file = root / f"interactions.{fmt}"
    file.write_bytes(encode(df, fmt))
    result = ingest_checked(files_project(root, file), file, must_fail=True)
    assert "column 'timestamp'" in result.err and f"first at row {row}:" in result.err


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(df=interactions(), fraction=st.floats(0.01, 0.99))
def test_fractional_timestamps_are_rounded_with_a_warning(tmp_path_factory, df, fraction):
    df = df.astype({"timestamp": float})
    df.loc[len(df) - 1, "timestamp"] += fraction
    root = tmp_path_factory.mktemp("frac")
    file = root / "interactions.csv"
    file.write_bytes(encode(df, "csv"))
    result = ingest_checked(files_project(root, file), file, must_fail=False)
    assert result.code == 0
    assert "column 'timestamp': 1 timestamp(s) with fractions of a second rounded" in result.err
    stored = pd.read_parquet(root / "data" / "raw" / "interactions.parquet")["timestamp"]
    assert stored.iloc[-1] == round(df["timestamp"].iloc[-1])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    df=interactions(),
    spelling=st.sampled_from(["NA", "null", "N/A", "NaN", "None", "NULL", "nan", "<NA>"]),
    data=st.data(),
)
def test_ids_spelled_like_missing_values(tmp_path_factory, df, spelling, data):
    """By default an id spelled NA is missing (preprocess stops, saying how to keep it); with
    data.na_values=[""] it is an id like any other."""
    row = data.draw(st.integers(0, len(df) - 1))
    df = df.astype({"user_id": str})
    df.loc[row, "user_id"] = spelling
    root = tmp_path_factory.mktemp("na")
    file = root / "interactions.csv"
    file.write_bytes(encode(df, "csv"))
    assert ingest_checked(files_project(root, file), file, must_fail=False).code == 0
    before = outputs(root)
    result = cli(["preprocess"], root)
    assert_clean_failure(result, "column 'user_id'", "missing id", "data.na_values", f"first at row {row}:")
    assert outputs(root) == before

    assert ingest_checked(files_project(root, file, "data.na_values=['']"), file, must_fail=False).code == 0
    users = pd.read_parquet(root / "data" / "raw" / "interactions.parquet")["user_id"]
    assert users.iloc[row] == spelling and users.notna().all()
    assert cli(["preprocess"], root).code == 0


def test_user_and_item_mapped_to_one_column_are_refused(tmp_path):
    file = tmp_path / "interactions.csv"
    file.write_bytes(encode(pd.DataFrame({"user_id": [1], "item_id": [2], "rating": [3], "timestamp": [4]}), "csv"))
    cfg = yaml.safe_load(params_text(data=["data=files", f"data.interactions={file}"]))
    cfg["data"]["columns"]["item"] = "user_id"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))
    before = fake_outputs(tmp_path)
    result = cli(["ingest"], tmp_path)
    assert_clean_failure(result, "data.columns: user and item are both mapped to the column 'user_id'")
    assert outputs(tmp_path) == before


# --- integrity checks ---------------------------------------------------------------------------


@FAST
@given(digest=st.one_of(st.text(max_size=70), st.integers(), st.sampled_from(["0", "g" * 64, "a" * 63, "a" * 65])))
def test_malformed_sha256_is_refused(digest):
    cfg = yaml.safe_load(params_text(data=["data=grouplens"]))
    cfg["data"]["sha256"] = digest
    with pytest.raises(ConfigError, match=r"^data\.sha256: "):
        validate(cfg, source="params.yaml")


def test_sha256_with_a_folder_is_refused_and_a_wrong_one_with_a_zip(tmp_path):
    folder = tmp_path / "release" / "ml-100k"
    folder.mkdir(parents=True)
    for file, text in LAYOUTS["ml-100k"].items():
        (folder / file).write_bytes(text.encode(ENCODING.get(file, "utf-8")))
    result = ingest_checked(
        grouplens_project(tmp_path, "ml-100k", tmp_path / "release", "data.sha256=" + "a" * 64),
        tmp_path / "release",
        must_fail=True,
    )
    assert "data.sha256" in result.err and "is a folder" in result.err

    path = release_zip(tmp_path / "ml-100k.zip", "ml-100k", zipfile.ZIP_DEFLATED)
    result = ingest_checked(
        grouplens_project(tmp_path, "ml-100k", path, "data.sha256=" + "b" * 64), path, must_fail=True
    )
    assert "does not match" in result.err
    source = grouplens_project(tmp_path, "ml-100k", path)
    assert cli(["ingest"], source).code == 0
    assert json.loads((tmp_path / "data" / "raw" / "source.json").read_text())["sha256"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    df=interactions(),
    days=st.lists(st.integers(-200_000, 2_900_000), min_size=25, max_size=25),
    fmt=st.sampled_from(["csv", "parquet"]),
)
def test_dates_of_any_year_become_seconds(tmp_path_factory, df, days, fmt):
    """Date timestamps (text or a Parquet datetime column) from year 1400 to 9900: exact seconds."""
    dates = pd.Series(pd.to_datetime(days[: len(df)], unit="D").astype("datetime64[s]"))
    df = df.assign(timestamp=dates.dt.strftime("%Y-%m-%d") if fmt == "csv" else dates)
    root = tmp_path_factory.mktemp("dates")
    file = root / f"interactions.{fmt}"
    file.write_bytes(encode(df, fmt))
    assert ingest_checked(files_project(root, file), file, must_fail=False).code == 0
    stored = pd.read_parquet(root / "data" / "raw" / "interactions.parquet")["timestamp"]
    assert stored.tolist() == [d * 86400 for d in days[: len(df)]]


def test_nested_parquet_ids_are_refused(tmp_path):
    file = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": [[1], [2]], "item_id": [1, 2], "rating": [5, 4], "timestamp": [1, 2]}).to_parquet(file)
    result = ingest_checked(files_project(tmp_path, file), file, must_fail=True)
    assert "column 'user_id': list<" in result.err and "data.columns.user" in result.err


@pytest.mark.integration
def test_damaged_inputs_as_subprocesses(tmp_path):
    """The console script itself: an empty CSV and a zip with a damaged member, exit 2, no traceback."""
    file = tmp_path / "interactions.csv"
    file.write_bytes(b"")
    before = fake_outputs(files_project(tmp_path, file))
    result = run_recpipe(["ingest"], tmp_path)
    assert_clean_failure(result, "interactions.csv: cannot read the file: it is empty")
    path = release_zip(tmp_path / "ml-1m.zip", "ml-1m", zipfile.ZIP_DEFLATED)
    start, size = member_data(path, "ml-1m/ratings.dat")
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    result = run_recpipe(["ingest"], grouplens_project(tmp_path, "ml-1m", path))
    assert_clean_failure(result, "ml-1m.zip:ml-1m/ratings.dat: cannot read the file")
    assert outputs(tmp_path) == before


# (file, line replacing the 3rd data row (row 2), column named, problem): every one refused at ingest
BAD_RELEASE_ROWS = [
    ("ratings.csv", "2,10,four,881250951", "rating", "rating is not a number"),
    ("ratings.csv", "2,10", "rating", "missing value (an empty cell or a short row)"),
    ("ratings.csv", ",10,5,881250951", "userId", "missing value"),
    ("ratings.csv", "2, ,5,881250951", "movieId", "missing value"),
    ("ratings.csv", "2,10,7.5,881250951", "rating", "rating outside data.rating_scale [0.5, 5]"),
    ("ratings.csv", "2,10,-1,881250951", "rating", "rating outside data.rating_scale [0.5, 5]"),
    ("movies.csv", "10,Heat (1995),Thriller", "movieId", "repeated movie id"),
]


@pytest.mark.parametrize(("file", "line", "column", "problem"), BAD_RELEASE_ROWS)
def test_bad_release_values_are_refused_at_ingest(tmp_path, file, line, column, problem):
    """A GroupLens CSV release with one bad row: exit 2 naming the file, column and row; data/raw untouched."""
    folder = tmp_path / "release" / "ml-25m"
    folder.mkdir(parents=True)
    for name, text in LAYOUTS["ml-25m"].items():
        lines = text.splitlines()
        if name == file:
            lines[3] = line  # after the header: row 2
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = ingest_checked(grouplens_project(tmp_path, "ml-25m", tmp_path / "release"), folder / file, must_fail=True)
    assert f"column '{column}': {problem}" in result.err and "first at row 2" in result.err, result.err
    assert "data=files" not in result.err and "re-download" in result.err
    assert [line for line in result.err.splitlines() if "row 2" in line] == [result.err.strip().splitlines()[-1]]


def test_ingest_reports_progress_for_each_step(tmp_path):
    """Reading each file, checking the ratings and writing data/raw each get a line as they start."""
    path = release_zip(tmp_path / "ml-25m.zip", "ml-25m", zipfile.ZIP_DEFLATED)
    result = cli(["ingest"], grouplens_project(tmp_path, "ml-25m", path))
    assert result.code == 0, result.text
    steps = [line.split(" ", 2)[1] for line in result.err.splitlines() if line.startswith("ingest: ")]
    assert steps == ["reading", "reading", "reading", "checking", "read", "grouplens"], result.err
    assert "ml-25m.zip:ml-25m/ratings.csv" in result.err and "writing data/raw" in result.err
