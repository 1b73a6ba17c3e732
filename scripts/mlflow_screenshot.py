"""Render MLflow's run-comparison page for a sweep in headless Chromium and save it as a PNG.

Starts ``mlflow server`` on a free local port against the tracking database, opens the comparison
of a sweep's child runs (default: the latest sweep, i.e. the latest run tagged
``recpipe.sweep_dir``) through chromedriver's WebDriver HTTP API, waits until the page shows every
run's name, shows what differs between them, and saves a screenshot (README shows docs/mlflow_compare.png).

Needs Debian's chromium and chromium-driver:

    python scripts/mlflow_screenshot.py [--backend-store-uri sqlite:///mlflow.db | --server URL] \\
        [--sweep PARENT_RUN_ID] [--output docs/mlflow_compare.png]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import quote

import requests

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready, what: str, timeout: float, proc: subprocess.Popen | None = None):
    """Poll ``ready()`` until it returns a truthy value; fail after ``timeout`` s or if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            value = ready()
        except requests.RequestException:
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


@contextmanager
def serve(
    cmd: Sequence[str], url: str, what: str, timeout: float = 90, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run server ``cmd`` (with ``env`` added to the environment) until the context ends; yields
    ``url`` once a GET of it answers 200."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", **(env or {})}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_until(lambda: requests.get(url, timeout=5).ok, what, timeout, proc)
            except (RuntimeError, TimeoutError) as e:
                log.seek(0)
                raise RuntimeError(f"{e}\n{log.read().decode(errors='replace')[-3000:]}") from None
            yield url
        finally:
            proc.terminate()
            wait_or_kill(proc, timeout=20)


def wait_or_kill(proc: subprocess.Popen, timeout: float) -> None:
    """Wait up to ``timeout`` s for ``proc``, already asked to stop, to end; then kill it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def mlflow_server(backend_store_uri: str) -> Iterator[str]:
    """``mlflow server`` on a free 127.0.0.1 port; yields its base URL."""
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow),
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with serve(cmd, f"http://127.0.0.1:{port}/health", "mlflow server"):
        yield f"http://127.0.0.1:{port}"


def api(base: str, method: str, endpoint: str, **body) -> dict:
    """Call MLflow's REST API (``/api/2.0/mlflow/<endpoint>``) and return the JSON answer."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    r = requests.get(url, params=body, timeout=30) if method == "GET" else requests.post(url, json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def sweep_runs(base: str, experiment: str, sweep: str | None) -> tuple[str, list[dict]]:
    """The experiment id and the child runs of sweep ``sweep`` (default: the latest sweep)."""
    exp = api(base, "GET", "experiments/get-by-name", experiment_name=experiment)["experiment"]
    ids = [exp["experiment_id"]]
    if sweep is None:
        parents = api(
            base,
            "POST",
            "runs/search",
            experiment_ids=ids,
            max_results=1,
            filter="tags.`recpipe.sweep_dir` != ''",
            order_by=["attributes.start_time DESC"],
        )
        if not parents.get("runs"):
            raise SystemExit(f"no sweep in experiment {experiment!r}; run `recpipe run -m ...` first")
        sweep = parents["runs"][0]["info"]["run_id"]
    children = api(
        base,
        "POST",
        "runs/search",
        experiment_ids=ids,
        max_results=50,
        filter=f"tags.`mlflow.parentRunId` = '{sweep}'",
        order_by=["attributes.start_time ASC"],
    )
    runs = children.get("runs", [])
    if not runs:
        raise SystemExit(f"sweep {sweep} has no child runs")
    return exp["experiment_id"], runs


@contextmanager
def chromium(width: int, height: int, chromium_bin: str, chromedriver_bin: str) -> Iterator[str]:
    """A headless Chromium WebDriver session through chromedriver; yields its session URL."""
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile,
        serve([chromedriver_bin, f"--port={port}"], f"http://127.0.0.1:{port}/status", "chromedriver"),
    ):
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "goog:chromeOptions": {
                        "binary": chromium_bin,
                        "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"],
                    }
                }
            }
        }
        r = requests.post(f"http://127.0.0.1:{port}/session", json=caps, timeout=60)
        r.raise_for_status()
        session = f"http://127.0.0.1:{port}/session/{r.json()['value']['sessionId']}"
        viewport = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        requests.post(
            f"{session}/goog/cdp/execute",
            timeout=30,
            json={"cmd": "Emulation.setDeviceMetricsOverride", "params": viewport},
        ).raise_for_status()
        try:
            yield session
        finally:
            requests.delete(session, timeout=30)


# Browser storage set before the page loads: keep MLflow's assistant side panel closed.
UI_STORAGE = {
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.assistant.panelOpen_v1": "false",
}


# Show what differs between the runs: collapse the plots (their default axes are arbitrary), the
# artifacts and the tags, and hide the parameters and metrics every run shares (data, baselines).
TIDY_PAGE = """
const byText = t => Array.from(document.querySelectorAll('button, [role=button], span, h2, h3'))
  .find(e => e.innerText && e.innerText.trim() === t);
for (const section of ['Visualizations', 'Artifacts', 'Tags']) byText(section)?.click();
for (const section of ['Parameters', 'Metrics'])
  document.querySelector(`[aria-label="${section} - Show diff only"]`)?.click();
"""


def screenshot(session: str, url: str, expect: Sequence[str], output: Path, timeout: float = 60) -> None:
    """Open ``url``, wait until the page text contains every string in ``expect``, tidy the page
    (``TIDY_PAGE``) and save a PNG."""
    origin = url.split("/#", 1)[0]
    requests.post(f"{session}/url", json={"url": f"{origin}/health"}, timeout=60).raise_for_status()
    requests.post(
        f"{session}/execute/sync",
        timeout=30,
        json={
            "script": "for (const [k, v] of Object.entries(arguments[0])) localStorage.setItem(k, v)",
            "args": [UI_STORAGE],
        },
    ).raise_for_status()
    requests.post(f"{session}/url", json={"url": url}, timeout=60).raise_for_status()

    def shown() -> bool:
        text = requests.post(
            f"{session}/execute/sync", timeout=30, json={"script": "return document.body.innerText", "args": []}
        ).json()["value"]
        return all(s in (text or "") for s in expect)

    wait_until(shown, f"page {url} showing {', '.join(expect)}", timeout)
    requests.post(f"{session}/execute/sync", json={"script": TIDY_PAGE, "args": []}, timeout=30).raise_for_status()
    time.sleep(2)  # let the page re-render
    png = base64.b64decode(requests.get(f"{session}/screenshot", timeout=60).json()["value"])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(png)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend-store-uri", default=f"sqlite:///{Path('mlflow.db').resolve()}")
    parser.add_argument("--server", metavar="URL", help="a running MLflow server to use instead")
    parser.add_argument("--experiment", default="recpipe")
    parser.add_argument("--sweep", metavar="PARENT_RUN_ID", help="default: the latest sweep")
    parser.add_argument("--output", type=Path, default=Path("docs/mlflow_compare.png"))
    parser.add_argument("--size", default="1400x1500", help="page WIDTHxHEIGHT in pixels")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--chromedriver", default=shutil.which("chromedriver") or "chromedriver")
    args = parser.parse_args(argv)
    for tool in (args.chromium, args.chromedriver):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} not found: apt-get install chromium chromium-driver")
    width, height = (int(v) for v in args.size.split("x"))
    with nullcontext(args.server) if args.server else mlflow_server(args.backend_store_uri) as base:
        experiment_id, runs = sweep_runs(base, args.experiment, args.sweep)
        ids = [r["info"]["run_id"] for r in runs]
        names = [r["info"]["run_name"] for r in runs]
        url = f"{base}/#/compare-runs?runs={quote(json.dumps(ids))}&experiments={quote(json.dumps([experiment_id]))}"
        with chromium(width, height, args.chromium, args.chromedriver) as session:
            screenshot(session, url, names, args.output)
    print(f"wrote {args.output}: {len(ids)} runs ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
