"""A real PostgreSQL server for the tests.

``postgres_url`` (session scope) starts a throw-away cluster from the newest
``/usr/lib/postgresql/*/bin`` with ``initdb`` + ``pg_ctl`` on a free loopback port
(trust auth, unix socket inside the cluster's temp dir) and removes it at the end.
Set ``GATEWAY_TEST_POSTGRES_URL`` to use an existing server instead (its user must
be allowed to CREATE DATABASE). ``postgres_db_url`` gives each test its own database.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.conftest import need_peer

_PG_ROOT = Path("/usr/lib/postgresql")
_SUPERUSER = "postgres"


def _newest_bindir() -> Path | None:
    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.name)) or (0,)

    candidates = [p / "bin" for p in _PG_ROOT.glob("*") if (p / "bin" / "pg_ctl").is_file()]
    if not candidates:
        on_path = shutil.which("pg_ctl")
        return Path(on_path).parent if on_path else None
    return max(candidates, key=lambda b: version(b.parent))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_server_user() -> tuple[list[str], str | None]:
    """Command prefix to run the server tools, and the OS user to chown files to."""
    if os.geteuid() != 0:
        return [], None
    # PostgreSQL refuses to run as root.
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        need_peer("an OS user 'postgres' to run PostgreSQL as (tests run as root)")
    runuser = shutil.which("runuser")
    if runuser is None:
        need_peer("runuser, to start PostgreSQL as the 'postgres' user (tests run as root)")
    return [str(runuser), "-u", "postgres", "--"], "postgres"


def _run(prefix: list[str], args: list[str], log: Path | None = None) -> None:
    proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{tail}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL (``postgresql+psycopg://``) of a superuser on a running PostgreSQL."""
    external = os.environ.get("GATEWAY_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    bindir = _newest_bindir()
    if bindir is None or not (bindir / "initdb").is_file():
        need_peer("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        return
    prefix, owner = _as_server_user()
    base = Path(tempfile.mkdtemp(prefix="gw-pg-"))
    data, log = base / "data", base / "server.log"
    if owner:
        shutil.chown(base, owner, owner)
    port = free_port()
    started = False
    try:
        _run(
            prefix,
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                _SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        options = " ".join(
            [
                f"-p {port}",
                f"-k {base}",
                "-c listen_addresses=127.0.0.1",
                # A scratch cluster: durability is the store's concern, not the fixture's.
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=200",
            ]
        )
        _run(
            prefix,
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"],
            log,
        )
        started = True
        yield f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(prefix, [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(base, ignore_errors=True)


def _admin_conninfo(url: str) -> str:
    u = make_url(url)
    parts = {
        "host": u.host or "127.0.0.1",
        "port": str(u.port or 5432),
        "user": u.username or _SUPERUSER,
        "dbname": u.database or "postgres",
    }
    if u.password:
        parts["password"] = u.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """CREATE DATABASE for one test; dropped afterwards even if connections linger."""
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    conninfo = _admin_conninfo(server_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_db_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the test server, for this test only."""
    with fresh_database(postgres_url) as url:
        yield url
