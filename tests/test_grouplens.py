"""GroupLens releases (data=grouplens): the three file layouts, local zips and folders, verified downloads.

The releases are tiny zips built here in each GroupLens layout; downloads go to an HTTP server on
127.0.0.1 that the tests start.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from recpipe.data.movielens import load_grouplens
from recpipe.data.raw import write_raw
from recpipe.errors import RecpipeError

from .helpers import LAYOUTS, make_zip


def grouplens_cfg(name: str, **kw) -> OmegaConf:
    base = {"source": "grouplens", "name": name, "path": None, "url": None, "sha256": None, "cache_dir": None}
    return OmegaConf.create({**base, **kw})


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_local_zip_in_each_layout(tmp_path, name):
    raw = load_grouplens(grouplens_cfg(name, path=str(make_zip(tmp_path / f"{name}.zip", name))))
    inter = raw.interactions
    assert inter["user_id"].tolist() == ["1", "1", "2", "3"]
    assert inter["item_id"].tolist() == ["10", "20", "10", "30"]
    assert inter["rating"].tolist() == [4.0, 3.0, 5.0, 1.0]
    assert inter["timestamp"].tolist() == [881250949, 881250950, 881250951, 881250952]
    items = raw.items.set_index("item_id")
    assert items.loc["10", "title"] in ("Café Society", "Café Society, The")  # decoded, year split off
    assert items.loc["10", "year"] == 1995
    assert list(items.loc["10", "genres"]) == ["Action", "Adventure"]
    assert list(items.loc["30", "genres"]) == []  # "unknown" / "(no genres listed)" / nothing
    assert items["year"].isna().tolist() == [False, False, True]
    assert raw.source["name"] == name and raw.source["path"].endswith(f"{name}.zip")
    assert raw.source["sha256"] == {f"{name}.zip": sha256(tmp_path / f"{name}.zip")}
    if name.startswith("ml-latest") or name in ("ml-25m", "ml-32m"):
        assert raw.users is None
    else:
        assert raw.users["user_id"].tolist() == ["1", "2", "3"]
        assert raw.users["zip"].tolist() == ["85711", "94043", "32067"]
    if name == "ml-1m":
        assert raw.users["occupation"].tolist() == ["technician/engineer", "other", "writer"]
        assert raw.users["age"].tolist() == [25, 50, 18]


def test_extracted_folder_reads_like_the_zip_and_records_file_checksums(tmp_path):
    with zipfile.ZipFile(make_zip(tmp_path / "ml-1m.zip", "ml-1m")) as z:
        z.extractall(tmp_path / "extracted")
    from_zip = load_grouplens(grouplens_cfg("ml-1m", path=str(tmp_path / "ml-1m.zip")))
    from_dir = load_grouplens(grouplens_cfg("ml-1m", path=str(tmp_path / "extracted")))
    assert from_dir.interactions.equals(from_zip.interactions)
    assert from_dir.items.equals(from_zip.items)
    assert sorted(from_dir.source["sha256"]) == ["ml-1m/movies.dat", "ml-1m/ratings.dat", "ml-1m/users.dat"]


def test_local_zip_checked_against_configured_sha256(tmp_path):
    path = make_zip(tmp_path / "ml-100k.zip", "ml-100k")
    load_grouplens(grouplens_cfg("ml-100k", path=str(path), sha256=sha256(path).upper()))
    with pytest.raises(RecpipeError, match="does not match"):
        load_grouplens(grouplens_cfg("ml-100k", path=str(path), sha256="0" * 64))


def test_wrong_release_name_or_layout_is_explained(tmp_path):
    path = make_zip(tmp_path / "ml-100k.zip", "ml-100k")
    with pytest.raises(RecpipeError, match="ml-1m, ml-latest-small"):
        load_grouplens(grouplens_cfg("ml-5m", path=str(path)))
    with pytest.raises(RecpipeError, match=r"no ratings\.dat .*data\.name"):
        load_grouplens(grouplens_cfg("ml-1m", path=str(path)))
    with pytest.raises(RecpipeError, match="not found"):
        load_grouplens(grouplens_cfg("ml-1m", path=str(tmp_path / "nope.zip")))


# --- downloads ------------------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[SimpleNamespace]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www, recording the paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_port}", root=root, requested=requested)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def publish(server: SimpleNamespace, name: str, md5: str | None = None) -> Path:
    """Put release ``name`` on the server, with a GroupLens-style .md5 beside it when ``md5`` is given."""
    path = make_zip(server.root / f"{name}.zip", name)
    if md5 is not None:
        (server.root / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {md5}\n")
    return path


def test_download_with_sha256_is_cached_and_not_fetched_again(tmp_path, server):
    zip_path = publish(server, "ml-latest-small")
    cache = tmp_path / "cache"
    cfg = grouplens_cfg(
        "ml-latest-small", url=f"{server.url}/ml-latest-small.zip", sha256=sha256(zip_path), cache_dir=str(cache)
    )
    raw = load_grouplens(cfg)
    assert len(raw.interactions) == 4
    assert raw.source["url"] == cfg.url
    assert (cache / "ml-latest-small.zip").read_bytes() == zip_path.read_bytes()
    assert server.requested == ["/ml-latest-small.zip"]
    load_grouplens(cfg)
    assert server.requested == ["/ml-latest-small.zip"]  # the verified cached copy was used


def test_download_with_bad_sha256_fails_and_leaves_no_file(tmp_path, server):
    publish(server, "ml-1m")
    cache = tmp_path / "cache"
    cfg = grouplens_cfg("ml-1m", url=f"{server.url}/ml-1m.zip", sha256="ab" * 32, cache_dir=str(cache))
    with pytest.raises(RecpipeError, match=r"sha256 mismatch: got [0-9a-f]{64}, expected (ab){32}.*discarded"):
        load_grouplens(cfg)
    assert list(cache.iterdir()) == []


def test_download_verified_by_published_md5(tmp_path, server):
    zip_path = make_zip(tmp_path / "ml-100k.zip", "ml-100k")
    publish(server, "ml-100k", md5=hashlib.md5(zip_path.read_bytes()).hexdigest())
    cache = tmp_path / "cache"
    cfg = grouplens_cfg("ml-100k", url=f"{server.url}/ml-100k.zip", cache_dir=str(cache))
    raw = load_grouplens(cfg)
    assert raw.users is not None and len(raw.items) == 3
    assert server.requested == ["/ml-100k.zip.md5", "/ml-100k.zip"]
    assert (cache / "ml-100k.zip.sha256").read_text().strip() == sha256(zip_path)
    write_raw(raw, tmp_path / "raw")
    load_grouplens(cfg)  # offline from here on: the recorded sha256 checks the cached zip
    assert server.requested == ["/ml-100k.zip.md5", "/ml-100k.zip"]


def test_download_with_wrong_published_md5_fails_and_leaves_no_file(tmp_path, server):
    publish(server, "ml-100k", md5="0" * 32)
    cache = tmp_path / "cache"
    with pytest.raises(RecpipeError, match="md5 mismatch"):
        load_grouplens(grouplens_cfg("ml-100k", url=f"{server.url}/ml-100k.zip", cache_dir=str(cache)))
    assert list(cache.iterdir()) == []


def test_download_without_any_checksum_says_to_set_sha256(tmp_path, server):
    publish(server, "ml-100k")
    cache = tmp_path / "cache"
    with pytest.raises(RecpipeError, match=r"set data\.sha256"):
        load_grouplens(grouplens_cfg("ml-100k", url=f"{server.url}/ml-100k.zip", cache_dir=str(cache)))
    assert server.requested == ["/ml-100k.zip.md5"]  # the zip itself was never fetched
    assert not cache.exists() or list(cache.iterdir()) == []
