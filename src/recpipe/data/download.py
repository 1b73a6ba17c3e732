"""Verified downloads into a cache directory: stream to a temporary file, check it, rename it in.

A download is checked against a configured sha256 or, when there is none, against the md5 that
GroupLens publishes beside each file (``<url>.md5``). After a verified download the file's sha256
is recorded beside it (``<name>.sha256``), so a cached file is checked offline and never fetched again.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from recpipe.data.raw import sha256_file
from recpipe.errors import RecpipeError
from recpipe.io import atomic_file

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without data before a download fails


def fetch(url: str, cache_dir: str | Path, *, sha256: str | None = None) -> Path:
    """The verified file for ``url`` in ``cache_dir``: the cached copy if it checks out, else a new download."""
    dest = Path(cache_dir) / Path(urlparse(url).path).name
    record = dest.with_name(dest.name + ".sha256")
    expected = sha256.lower() if sha256 else None
    known = expected or (record.read_text().strip() if record.exists() else None)
    if dest.exists() and known and sha256_file(dest) == known:
        return dest
    md5 = None if expected else published_md5(url)
    with atomic_file(dest) as tmp:
        got_sha256, got_md5 = download(url, tmp)
        if expected and got_sha256 != expected:
            raise RecpipeError(
                f"{url}: sha256 mismatch: got {got_sha256}, expected {expected} (data.sha256); "
                "the download was discarded"
            )
        if md5 and got_md5 != md5:
            raise RecpipeError(
                f"{url}: md5 mismatch: got {got_md5}, published {md5} ({url}.md5); the download was discarded"
            )
    with atomic_file(record) as tmp:
        tmp.write_text(got_sha256 + "\n")
    return dest


def download(url: str, dest: Path) -> tuple[str, str]:
    """Stream ``url`` into ``dest`` with a progress bar; returns its (sha256, md5) hex digests."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    name = Path(urlparse(url).path).name
    try:
        with _open(url) as resp, open(dest, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            with tqdm(
                total=total or None, unit="B", unit_scale=True, desc=name, disable=0 < total < 4 * CHUNK, leave=False
            ) as bar:
                while block := resp.read(CHUNK):
                    out.write(block)
                    sha.update(block)
                    md5.update(block)
                    bar.update(len(block))
    except (OSError, http.client.HTTPException) as e:
        raise RecpipeError(f"download of {url} failed: {e!r}") from None
    return sha.hexdigest(), md5.hexdigest()


def published_md5(url: str) -> str:
    """The md5 published at ``<url>.md5`` ("MD5 (x.zip) = <hex>" or "<hex>  x.zip")."""
    try:
        with _open(url + ".md5") as resp:
            text = resp.read(4096).decode("ascii", "replace")
    except RecpipeError as e:
        raise RecpipeError(
            f"{url}: no checksum to verify the download against ({e}); set data.sha256 to the file's sha256"
        ) from None
    found = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if found is None:
        raise RecpipeError(f"{url}.md5 holds no md5; set data.sha256 to the file's sha256")
    return found.group(0).lower()


def _open(url: str):
    try:
        return urllib.request.urlopen(url, timeout=TIMEOUT)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise RecpipeError(f"cannot download {url}: {reason}") from None
