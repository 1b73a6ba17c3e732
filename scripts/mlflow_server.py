"""Run a shared MLflow tracking server: runs in PostgreSQL, artifacts served through the server,
MLflow's built-in authentication (``make mlflow-server`` runs this script).

    export MLFLOW_AUTH_ADMIN_PASSWORD=...        # the admin user's password (first start)
    export MLFLOW_FLASK_SERVER_SECRET_KEY=...    # signs the server's sessions and CSRF tokens
    python scripts/mlflow_server.py [--state-dir .recpipe/mlflow-server] [--host 127.0.0.1] [--port 5000]
        [--backend-store-uri postgresql://user@db-host/mlflow --auth-database-uri postgresql://...]
        [--default-permission NO_PERMISSIONS] [--workers 2] [--allowed-hosts mlflow.example.com]

Without ``--backend-store-uri`` the script starts its own PostgreSQL (Debian's ``postgresql``) on a
free 127.0.0.1 port with its data in ``<state-dir>/postgres/`` (run as the ``postgres`` user when
started as root: PostgreSQL refuses to run as root) and a generated database password in
``<state-dir>/pg_password`` (mode 0600; passed to libpq as ``PGPASSWORD``, never on a command line).
The runs live in database ``mlflow``, the users and permissions in ``mlflow_auth``; artifacts in
``<state-dir>/artifacts/`` unless ``--artifacts-destination`` says otherwise (``s3://...``). The
auth config (``basic_auth.ini``, no secrets) is generated into the state directory at each start.
Ctrl-C stops the server, then PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mlflow_screenshot import free_port, serve, wait_or_kill  # noqa: E402  (a sibling script)

REPO = Path(__file__).resolve().parents[1]
PG_USER = "mlflow"  # the database superuser the local cluster is created with
DATABASES = ("mlflow", "mlflow_auth")  # runs; users and permissions
PERMISSIONS = ("NO_PERMISSIONS", "READ", "USE", "EDIT", "MANAGE")
SECRETS = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL: where to reach it and the password of ``PG_USER``."""

    host: str
    port: int
    password: str

    def uri(self, database: str) -> str:
        """SQLAlchemy URI of ``database`` (driver psycopg2), without the password (libpq reads ``PGPASSWORD``)."""
        return f"postgresql+psycopg2://{PG_USER}@{self.host}:{self.port}/{database}"


def pg_bindir() -> Path:
    """The directory of PostgreSQL's server programs (Debian keeps them off PATH)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        sys.exit("mlflow_server: PostgreSQL is not installed: apt-get install postgresql (make mlflow-server does)")
    return found[-1].parent


def as_postgres(cmd: list[str]) -> list[str]:
    """``cmd`` run as the ``postgres`` user when this process is root, else as this user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def owned_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) owned by the user PostgreSQL runs as; check that user can reach it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
        if subprocess.run(as_postgres(["test", "-w", str(path)])).returncode != 0:
            sys.exit(f"mlflow_server: the postgres user cannot reach {path}: make its parents searchable (chmod o+x)")
    return path


def db_password(state: Path) -> str:
    """The local cluster's password, generated once into ``<state>/pg_password`` (mode 0600)."""
    file = state / "pg_password"
    if not file.exists():
        file.touch(mode=0o600)
        file.write_text(secrets.token_urlsafe(24))
    return file.read_text().strip()


def init_cluster(data: Path, password: str) -> None:
    """``initdb`` a cluster in ``data`` (unless there is one): superuser ``PG_USER``, password auth."""
    if (data / "PG_VERSION").exists():
        return
    pwfile = data.parent / "pwfile"
    pwfile.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    try:
        cmd = [str(pg_bindir() / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}"]
        cmd += ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"]
        proc = subprocess.run(as_postgres(cmd), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    finally:
        pwfile.unlink()


def connect(pg: Postgres, database: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=pg.host, port=pg.port, user=PG_USER, password=pg.password, dbname=database, connect_timeout=3
    )


def create_databases(pg: Postgres) -> None:
    """Create the ``DATABASES`` that do not exist yet."""
    conn = connect(pg)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for name in DATABASES:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def _wait_ready(pg: Postgres, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        try:
            connect(pg).close()
            return
        except psycopg2.OperationalError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"PostgreSQL did not start ({e}):\n{tail}") from None
            time.sleep(0.3)


def _stop_postgres(data: Path, proc: subprocess.Popen) -> None:
    """Fast shutdown of the postmaster (its PID from ``postmaster.pid``), then wait for ``proc``."""
    try:
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGINT)
    except (OSError, ValueError, IndexError):  # gone already
        proc.terminate()
    wait_or_kill(proc, timeout=30)


@contextmanager
def postgres(state: Path, port: int | None = None) -> Iterator[Postgres]:
    """PostgreSQL with its cluster in ``<state>/postgres/data`` on 127.0.0.1:``port`` (default: a
    free port), the ``DATABASES`` created; stopped (by PID) when the context ends."""
    pg = Postgres("127.0.0.1", port or free_port(), db_password(state))
    home = owned_dir(state / "postgres")
    data, sockets = home / "data", owned_dir(home / "sockets")
    init_cluster(data, pg.password)
    log = home / "postgres.log"
    cmd = [str(pg_bindir() / "postgres"), "-D", str(data), "-p", str(pg.port)]
    cmd += ["-c", f"listen_addresses={pg.host}", "-c", f"unix_socket_directories={sockets}"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(as_postgres(cmd), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(pg, proc, log)
        create_databases(pg)
        yield pg
    finally:
        _stop_postgres(data, proc)


def auth_config(state: Path, database_uri: str, default_permission: str) -> Path:
    """Write MLflow's basic-auth config (no secrets: the admin password comes from the environment)."""
    ini = state / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {database_uri}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # a checked password is remembered for a minute per worker: the check (a slow hash) would
        # otherwise run for every request; a changed password reaches other workers within that minute
        "auth_cache_ttl_seconds = 60\n"
    )
    return ini


def missing_secrets() -> list[str]:
    return [name for name in SECRETS if not os.environ.get(name)]


@contextmanager
def tracking_server(
    state: Path,
    backend_store_uri: str,
    auth_database_uri: str,
    host: str = "127.0.0.1",
    port: int | None = None,
    artifacts: str | None = None,
    default_permission: str = "NO_PERMISSIONS",
    workers: int = 2,
    db_password: str | None = None,
    allowed_hosts: str | None = None,
) -> Iterator[str]:
    """``mlflow server`` with basic auth on ``backend_store_uri``, artifacts proxied to ``artifacts``
    (default ``<state>/artifacts``); yields its URL once it answers, stops it (by PID) at the end."""
    if missing := missing_secrets():
        raise RuntimeError(f"set {' and '.join(missing)} in the environment (see scripts/mlflow_server.py)")
    port = port or free_port()
    artifacts = artifacts or str((state / "artifacts").resolve())
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config(state, auth_database_uri, default_permission)),
        # no server-side job runners (GenAI scorers and their periodic tasks): recpipe has none
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    if db_password is not None:
        env["PGPASSWORD"] = db_password
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow), "server", "--app-name", "basic-auth", "--backend-store-uri", backend_store_uri]
    cmd += ["--serve-artifacts", "--artifacts-destination", artifacts]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if allowed_hosts:  # added to MLflow's defaults (localhost, private IPs), which the option replaces
        from mlflow.server.security_utils import get_default_allowed_hosts

        cmd += ["--allowed-hosts", ",".join([allowed_hosts, *get_default_allowed_hosts()])]
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    with serve(cmd, f"{url}/health", "mlflow server", timeout=180, env=env):
        yield url


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--state-dir", type=Path, default=REPO / ".recpipe" / "mlflow-server")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--pg-port", type=int, default=None, help="the local PostgreSQL's port (default: a free one)")
    p.add_argument("--backend-store-uri", help="an existing database (default: start a local PostgreSQL)")
    p.add_argument("--auth-database-uri", help="users and permissions database (with --backend-store-uri)")
    p.add_argument("--artifacts-destination", help="where artifacts go (default: <state-dir>/artifacts; s3://...)")
    p.add_argument("--default-permission", choices=PERMISSIONS, default="NO_PERMISSIONS")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--allowed-hosts", help="Host headers to accept besides localhost and private IPs (a DNS name)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing := missing_secrets():
        print(f"mlflow_server: set {' and '.join(missing)} in the environment first", file=sys.stderr)
        return 2
    if args.backend_store_uri and not args.auth_database_uri:
        print("mlflow_server: --backend-store-uri needs --auth-database-uri too", file=sys.stderr)
        return 2
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True, mode=0o711)
    options = {"host": args.host, "port": args.port, "artifacts": args.artifacts_destination}
    options |= {"default_permission": args.default_permission, "workers": args.workers}
    options["allowed_hosts"] = args.allowed_hosts
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # like Ctrl-C: stop what has started
    with ExitStack() as stack:
        if args.backend_store_uri:
            uris = (args.backend_store_uri, args.auth_database_uri)
        else:
            pg = stack.enter_context(postgres(state, args.pg_port))
            uris, options["db_password"] = (pg.uri(DATABASES[0]), pg.uri(DATABASES[1])), pg.password
        url = stack.enter_context(tracking_server(state, *uris, **options))
        print(f"MLflow tracking server at {url} (runs: {uris[0]}); Ctrl-C stops it", flush=True)
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # after the servers started: they keep theirs
        signal.sigwait(signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
