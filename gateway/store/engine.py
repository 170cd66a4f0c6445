"""Engine construction: SQLite pragmas and transaction modes, PostgreSQL pooling."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

#: execution option that asks for a write transaction (``BEGIN IMMEDIATE`` on SQLite)
WRITE = "gateway_write"

#: execution option, with WRITE: the transaction only records processing results, which
#: the pipeline can re-derive from the inbox, so on SQLite it may commit with
#: ``synchronous=NORMAL`` (see :func:`_on_begin` and docs/store.md, "Durability")
RELAXED = "gateway_relaxed_durability"

#: SQLite ``PRAGMA synchronous`` levels
SYNC_NORMAL = 1
SYNC_FULL = 2

#: key in the pool record's ``info``: the level the DBAPI connection is currently set to
_SYNC_INFO = "gateway_synchronous"

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
            _record.info[_SYNC_INFO] = SYNC_FULL
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        options = conn.get_execution_options()
        if not options.get(WRITE):
            _execute(conn, "BEGIN")
            return
        # Durability per transaction. ``PRAGMA synchronous`` is a property of the
        # connection and cannot change inside a transaction, so it is set here, on the
        # checked-out connection, before BEGIN: FULL for every write transaction unless
        # it asked for RELAXED (processing results only), then NORMAL. The level the
        # connection is at is remembered in its pool record, so the PRAGMA only runs
        # when it changes; a write that did not ask for RELAXED always runs at FULL,
        # whatever the connection did before. Reads commit nothing and leave it as is.
        level = SYNC_NORMAL if options.get(RELAXED) else SYNC_FULL
        info = conn.connection.info
        if info.get(_SYNC_INFO) != level:
            info.pop(_SYNC_INFO, None)  # unknown until the PRAGMA has run
            _execute(conn, f"PRAGMA synchronous = {level}")
            info[_SYNC_INFO] = level
        # Writers take the lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY without honouring busy_timeout.
        _execute(conn, "BEGIN IMMEDIATE")


def _execute(conn: Any, statement: str) -> None:
    """Run ``statement`` on the DBAPI connection under ``conn``, errors as SQLAlchemy's.

    These run once or twice per transaction; the driver directly costs a few
    microseconds where ``exec_driver_sql`` costs tens. SQLAlchemy does not wrap errors
    raised in a "begin" listener, so a failure (SQLITE_BUSY after busy_timeout, I/O
    error) is wrapped here, like ``exec_driver_sql`` would, and callers see the usual
    ``sqlalchemy.exc.OperationalError`` & co.
    """
    try:
        conn.connection.dbapi_connection.execute(statement).close()
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc
