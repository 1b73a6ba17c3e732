"""A remote MLflow tracking server (``MLFLOW_TRACKING_URI=http(s)://...``): one quick request before
a command logs, so that a server that does not answer, refuses the credentials or the experiment
ends in one clear error (exit 2) instead of a traceback after minutes of MLflow's retries.

Credentials are MLflow's own: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (basic
auth), ``MLFLOW_TRACKING_TOKEN``, ``~/.mlflow/credentials``; TLS options likewise.
"""

from __future__ import annotations

import json
from typing import Any

from recpipe.errors import RecpipeError

CHECK_TIMEOUT_S = 30  # one request, no retries
CREDENTIALS = "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _error_code(body: str) -> str | None:
    """The ``error_code`` of an MLflow JSON error body (None for anything else)."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return None
    return answer.get("error_code") if isinstance(answer, dict) else None


def check_server(uri: str, experiment: str) -> None:
    """Raise a RecpipeError unless the MLflow server at ``uri`` answers, accepts this user's
    credentials and lets them read ``experiment`` (one that does not exist yet is fine: it is
    created). Does nothing for other stores (sqlite, databases, files)."""
    if not is_http(uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(uri)
    who = f"user {creds.username!r}" if creds.username else "no user (MLFLOW_TRACKING_USERNAME is not set)"
    endpoint = "/api/2.0/mlflow/experiments/get-by-name"
    try:
        response = http_request(
            creds,
            endpoint,
            "GET",
            max_retries=0,
            timeout=CHECK_TIMEOUT_S,
            raise_on_status=False,
            params={"experiment_name": experiment},
        )
    except MlflowException as e:  # MLflow wraps the connection error or timeout
        cause = e.__cause__ or e.__context__
        raise RecpipeError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server does not answer "
            f"({type(cause).__name__ if cause else e.message}). "
            "Start it (make mlflow-server, see docs/scale-out.md) or fix MLFLOW_TRACKING_URI"
        ) from None
    status = response.status_code
    if status == 401:
        raise RecpipeError(
            f"MLFLOW_TRACKING_URI={uri}: the MLflow server refused the credentials of {who} (HTTP 401). "
            f"Set {CREDENTIALS} to an account of that server"
        )
    if status == 403:
        raise RecpipeError(
            f"MLFLOW_TRACKING_URI={uri}: {who} has no permission on the MLflow experiment {experiment!r} "
            "(HTTP 403). Ask the server's admin for one, or log to an experiment of your own: "
            "recpipe compose mlflow.experiment=<name>"
        )
    if status == 200 or (status == 404 and _error_code(response.text) == "RESOURCE_DOES_NOT_EXIST"):
        return
    raise RecpipeError(
        f"MLFLOW_TRACKING_URI={uri}: not an MLflow tracking server, or one that fails: {endpoint} answered "
        f"HTTP {status} {response.text[:200]!r}"
    )
