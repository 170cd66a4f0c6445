"""Engine construction: SQLite pragmas and transaction modes, PostgreSQL pooling."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url

#: execution option that asks for a write transaction (``BEGIN IMMEDIATE`` on SQLite)
WRITE = "gateway_write"

#: how long a SQLite writer waits for the lock before the operation fails (ms)
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _json_dumps(value: Any) -> str:
    # Readable non-ASCII in the database; the value round-trips either way.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def make_engine(url: str | URL) -> Engine:
    """An engine for ``url`` with the gateway's durability settings applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(parsed, json_serializer=_json_dumps)
        _configure_sqlite(engine)
        return engine
    # pre_ping: nodes outlive database restarts and failovers; a dead pooled
    # connection should cost a reconnect, not a failed message.
    return create_engine(parsed, json_serializer=_json_dumps, pool_pre_ping=True)


log = logging.getLogger(__name__)


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    # WAL is a property of the file, so only the first connection to a new database
    # switches it; that switch needs an exclusive lock and fails with "locked" at once
    # (busy_timeout does not apply), e.g. when two processes open a new file together.
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            mode = str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if mode != "wal":
            log.warning("SQLite refused WAL mode (journal_mode=%s); concurrency will suffer", mode)
        return


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below emit BEGIN itself; pysqlite's implicit
        # transactions would otherwise start deferred transactions behind our back.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA foreign_keys = ON")
            # FULL: a commit that returned survives power loss, which is what lets us
            # acknowledge the sender right after add_raw().
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY without honouring busy_timeout.
        if conn.get_execution_options().get(WRITE):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
