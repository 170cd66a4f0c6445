"""The CRM store: inbox (raw messages), interactions, partners, quarantine, audit, leases.

Every public method is one short transaction. Database failures of any kind surface
as :class:`~gateway.errors.StoreUnavailable` (a RETRY error), so adapters can answer
the sender with a temporary failure and workers can leave the message in the inbox.
Misuse by the caller (an unknown raw id, a naive datetime) raises ``KeyError`` /
``ValueError`` instead, because retrying would not help.

The inbox and outcome paths (``add_raw``, ``claim``, ``claim_id``,
``first_raw(s)_with_sha``, ``store_outcomes`` and the single-raw ``store_interactions``,
``mark_duplicate``, ``quarantine`` built on it) run once or more per received file or
claimed batch, so they use SQLAlchemy Core with statements
built once per store (compiled forms come from the engine's cache), executemany
for the rows of a whole call, and no ORM session. The ORM models stay the schema's
source of truth and serve the listing queries.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Integer,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    make_url,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload

from gateway.envelope import Envelope
from gateway.errors import Stage, StoreUnavailable
from gateway.record import (
    Attachment,
    Direction,
    DocumentInfo,
    InteractionRecord,
    Kind,
    Line,
    MappingRef,
    PartnerRef,
    Party,
    Status,
)
from gateway.store.engine import RELAXED, WRITE, make_engine
from gateway.store.models import (
    Base,
    Interaction,
    Partner,
    QuarantineRow,
    RawMessageRow,
    RawState,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

log = logging.getLogger(__name__)

#: pg_advisory_xact_lock key that serialises migrations across nodes ("gwmigrat")
_MIGRATION_LOCK_KEY = 0x67776D6967726174

_SUPPORTED_BACKENDS = {"sqlite", "postgresql"}


# --- values handed to and returned by the store -------------------------------------


@dataclass(frozen=True)
class RawMessage:
    id: str
    sha256: str
    channel: str
    received_at: datetime
    size: int
    filename: str | None
    transport: Mapping[str, str]
    sender: Mapping[str, str]
    state: RawState
    attempts: int
    duplicate_of: str | None
    error: str | None
    claimed_by: str | None = None
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class QuarantineEntry:
    id: str
    raw_id: str
    stage: str
    reason: str
    created_at: datetime
    raw_sha256: str
    channel: str
    filename: str | None
    resolved_at: datetime | None
    replays: int


@dataclass(frozen=True)
class PartnerRow:
    id: str
    name: str
    #: (kind, value), e.g. ("as2", "DEMOPARTNER"), ("x12", "ZZ:SENDERISA"), ("email_domain", "b.test")
    identities: tuple[tuple[str, str], ...]
    #: False for partners that were removed from the configuration (kept for history)
    active: bool = True


@dataclass(frozen=True)
class StoredRecord:
    record_id: str
    #: id of the interaction that already had this dedup key; None when newly stored
    duplicate_of: str | None


@dataclass(frozen=True)
class StoreOutcome:
    raw_id: str
    state: RawState
    records: tuple[StoredRecord, ...]
    duplicate_of_raw: str | None


# --- outcomes of processing, for store_outcomes() ---------------------------------------


@dataclass(frozen=True)
class StoreRecords:
    """Store these (record, dedup key) pairs of ``raw_id``: :meth:`Store.store_interactions`."""

    raw_id: str
    records: Sequence[tuple[InteractionRecord, str]]


@dataclass(frozen=True)
class Quarantine:
    """Park ``raw_id`` at ``stage`` for ``reason``: :meth:`Store.quarantine`."""

    raw_id: str
    stage: str | Stage
    reason: str


@dataclass(frozen=True)
class SameBytes:
    """``raw_id`` has the same bytes as the stored ``duplicate_of``: :meth:`Store.mark_duplicate`."""

    raw_id: str
    duplicate_of: str


#: what processing one claimed raw message came to
Outcome = StoreRecords | Quarantine | SameBytes


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    event: str
    subject: str
    detail: str


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    # Alembic narrates every start at INFO ("setup plugin", "will assume ...") into the
    # gateway's own log; one line of ours when something changed is enough.
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _now() -> datetime:
    return datetime.now(UTC)


def _frozen(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


def _describe(exc: SQLAlchemyError) -> str:
    # The driver's message is what an operator needs; SQLAlchemy's adds the full SQL.
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {str(exc.orig).strip()}"
    return f"{type(exc).__name__}: {exc}"


# --- statements of the hot paths --------------------------------------------------------

_TABLES = Base.metadata.tables
_RAW: Table = _TABLES["raw_messages"]
_INTERACTIONS: Table = _TABLES["interactions"]
_LINES: Table = _TABLES["interaction_lines"]
_PARTIES: Table = _TABLES["interaction_parties"]
_ATTACHMENTS: Table = _TABLES["attachments"]
_PARTNERS: Table = _TABLES["partners"]
_IDENTITIES: Table = _TABLES["partner_identities"]
_QUARANTINE: Table = _TABLES["quarantine"]
_AUDIT: Table = _TABLES["audit_events"]
_LEASES: Table = _TABLES["leases"]

#: dedup keys per ``IN (...)`` when the owners of conflicting keys are looked up; below
#: SQLite's historical limit of 999 host parameters
_IN_CHUNK = 900


class _Sql:
    """The hot-path statements, built once per store.

    Executing a prebuilt statement with plain parameter dicts costs a cache-key walk
    and a lookup in the engine's compiled cache, instead of building and compiling
    the statement again on every call.
    """

    def __init__(self, backend: str) -> None:
        ins = postgresql.insert if backend == "postgresql" else sqlite.insert
        raw = _RAW.c
        p_id = bindparam("p_id", type_=raw.id.type)
        p_now = bindparam("p_now", type_=raw.updated_at.type)

        self.add_raw = ins(_RAW).on_conflict_do_nothing(index_elements=["id"])
        self.add_raws = ins(_RAW).on_conflict_do_nothing(index_elements=["id"]).returning(raw.id)
        self.get_raw = select(_RAW).where(raw.id == p_id)
        self.raw_exists = select(raw.id).where(raw.id == p_id)

        # The row lock taken by every outcome write (FOR UPDATE serialises concurrent
        # outcome writes for one raw message on PostgreSQL; SQLite's BEGIN IMMEDIATE
        # already did), together with what the outcome needs: the open quarantine
        # entry, if any (at most one: partial unique index; only written under this
        # same lock, so the answer stays true until commit).
        open_entry = (
            select(_QUARANTINE.c.id)
            .where(_QUARANTINE.c.raw_id == raw.id, _QUARANTINE.c.resolved_at.is_(None))
            .scalar_subquery()
        )
        self.lock_raw = (
            select(
                raw.id,
                raw.state,
                raw.claimed_by,
                raw.sha256,
                raw.channel,
                raw.filename,
                open_entry.label("open_quarantine"),
            )
            .where(raw.id == p_id)
            .with_for_update(of=_RAW)
        )

        claimed = {
            "state": RawState.PROCESSING,
            "attempts": raw.attempts + 1,
            "claimed_by": bindparam("p_worker", type_=raw.claimed_by.type),
            "claimed_at": p_now,
            "updated_at": p_now,
        }
        self.claim_id = (
            update(_RAW)
            .where(raw.id == p_id, raw.state == RawState.RECEIVED)
            .values(claimed)
            .returning(*_RAW.c)
        )
        # One statement: pick the oldest received rows (PostgreSQL: SKIP LOCKED passes
        # rows another node is claiming; SQLite renders no FOR UPDATE) and claim them.
        oldest = (
            select(raw.id)
            .where(raw.state == RawState.RECEIVED)
            .order_by(raw.received_at, raw.id)
            .limit(bindparam("p_limit", type_=Integer()))
            .with_for_update(skip_locked=True)
        )
        self.claim = update(_RAW).where(raw.id.in_(oldest)).values(claimed).returning(*_RAW.c)
        # The same for a whole claimed batch (the caller picks the earliest per sha;
        # more than one STORED raw per sha is rare: same bytes become DUPLICATE).
        self.first_raws_with_sha = select(_RAW).where(
            raw.sha256.in_(bindparam("p_shas", expanding=True)),
            raw.state == RawState.STORED,
            raw.id.not_in(bindparam("p_ids", expanding=True)),
        )
        # lock_raw for several raws at once; in id order, so that two transactions
        # locking overlapping sets on PostgreSQL cannot deadlock
        self.lock_raws = (
            select(
                raw.id,
                raw.state,
                raw.claimed_by,
                raw.sha256,
                raw.channel,
                raw.filename,
                open_entry.label("open_quarantine"),
            )
            .where(raw.id.in_(bindparam("p_ids", expanding=True)))
            .order_by(raw.id)
            .with_for_update(of=_RAW)
        )
        self.raws_exist = select(raw.id).where(raw.id.in_(bindparam("p_ids", expanding=True)))
        self.first_raw_with_sha = (
            select(_RAW)
            .where(
                raw.sha256 == bindparam("p_sha", type_=raw.sha256.type),
                raw.state == RawState.STORED,
                raw.id != p_id,
            )
            .order_by(raw.received_at, raw.id)
            .limit(1)
        )

        self.ensure_partners = ins(_PARTNERS).on_conflict_do_nothing(index_elements=["id"])
        # ON CONFLICT on the dedup key alone: a concurrent insert of the same document
        # (another node) waits for that transaction and then yields.
        self.insert_interactions = ins(_INTERACTIONS).on_conflict_do_nothing(index_elements=["dedup_key"])
        self.key_owners = select(_INTERACTIONS.c.dedup_key, _INTERACTIONS.c.id, _INTERACTIONS.c.raw_id).where(
            _INTERACTIONS.c.dedup_key.in_(bindparam("p_keys", expanding=True))
        )
        self.insert_lines = insert(_LINES)
        self.insert_parties = insert(_PARTIES)
        self.insert_attachments = insert(_ATTACHMENTS)

        self.set_outcome = (
            update(_RAW)
            .where(raw.id == p_id)
            .values(
                state=bindparam("p_state", type_=raw.state.type),
                duplicate_of=bindparam("p_duplicate_of", type_=raw.duplicate_of.type),
                error=None,
                updated_at=p_now,
            )
        )
        self.set_quarantined = (
            update(_RAW)
            .where(raw.id == p_id)
            .values(
                state=RawState.QUARANTINED,
                error=bindparam("p_error", type_=raw.error.type),
                updated_at=p_now,
            )
        )
        self.requeue = (
            update(_RAW)
            .where(raw.id == p_id)
            .values(state=RawState.RECEIVED, claimed_by=None, claimed_at=None, updated_at=p_now)
        )

        q = _QUARANTINE.c
        p_entry = bindparam("p_entry", type_=q.id.type)
        self.resolve_quarantine = (
            update(_QUARANTINE).where(q.id == p_entry).values(resolved_at=p_now, updated_at=p_now)
        )
        self.open_quarantine = insert(_QUARANTINE)
        self.bump_quarantine = (
            update(_QUARANTINE)
            .where(q.id == p_entry)
            .values(
                stage=bindparam("p_stage", type_=q.stage.type),
                reason=bindparam("p_reason", type_=q.reason.type),
                updated_at=p_now,
                replays=q.replays + 1,
            )
            .returning(q.created_at, q.replays)
        )
        self.audit = insert(_AUDIT)


class Store:
    """The gateway's database. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str | URL) -> None:
        backend = make_url(url).get_backend_name()
        if backend not in _SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")
        self.backend = backend
        self._engine: Engine = make_engine(url)
        # Durable writes (synchronous=FULL on SQLite): the inbox, requeue, partners...
        self._writer = self._engine.execution_options(**{WRITE: True})
        # Processing results (synchronous=NORMAL on SQLite; see docs/store.md,
        # "Durability"): a power cut may lose the latest of them, never the inbox row,
        # and the pipeline derives them again from the inbox after recover().
        self._relaxed = self._engine.execution_options(**{WRITE: True, RELAXED: True})
        self._sql = _Sql(backend)
        #: partner ids known to exist (synced, or created as a placeholder by a
        #: committed store_interactions): no placeholder insert needed for them.
        #: Partners are never deleted by the store; should one vanish behind our back,
        #: the failed store_interactions clears this, and its retry creates it again.
        self._known_partners: set[str] = set()

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Store:
        """The embedded SQLite store, ``data_dir/gateway.db``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str((data_dir / "gateway.db").resolve())))

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        """For channel modules that keep tables of their own on the store's schema
        (the AS2 ledger). Write transactions must use :attr:`write_engine`."""
        return self._engine

    @property
    def write_engine(self) -> Engine:
        """The engine whose transactions take the SQLite write lock up front and
        commit durably (``synchronous=FULL``)."""
        return self._writer

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------

    @contextmanager
    def _tx(self, op: str, *, write: bool = True) -> Iterator[Session]:
        """An ORM session in one transaction (the listing queries)."""
        try:
            with (
                Session(self._writer if write else self._engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"store: {op} failed: {_describe(exc)}") from exc

    @contextmanager
    def _conn(self, op: str, *, write: bool = True, relaxed: bool = False) -> Iterator[Connection]:
        """A Core connection in one transaction; ``relaxed``: processing results only."""
        engine = self._relaxed if relaxed else self._writer if write else self._engine
        try:
            with engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"store: {op} failed: {_describe(exc)}") from exc

    def _insert(self, table: Any) -> Any:
        # Both dialects spell ON CONFLICT the same way; the generic insert() has none.
        if self.backend == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _audit(self, conn: Connection, event: str, subject: str, detail: str = "") -> None:
        conn.execute(self._sql.audit, {"at": _now(), "event": event, "subject": subject, "detail": detail})

    def _lock_raw(self, conn: Connection, raw_id: str) -> Any:
        """Lock the raw row (KeyError if unknown): a row of ``_Sql.lock_raw``."""
        row = conn.execute(self._sql.lock_raw, {"p_id": raw_id}).first()
        if row is None:
            raise KeyError(raw_id)
        return row

    def migrate(self) -> None:
        """Bring the schema to the newest revision. Idempotent; safe to race on PostgreSQL."""
        with _quiet("alembic"):
            # Imported here: importing alembic.command logs its plugin set-up at INFO.
            from alembic import command
            from alembic.config import Config
            from alembic.migration import MigrationContext

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            # One transaction for the lock and all DDL: on SQLite BEGIN IMMEDIATE is the
            # lock, on PostgreSQL a transaction-scoped advisory lock that a second node
            # waits on, after which it finds the schema at head and does nothing.
            with self._writer.begin() as conn:
                if self.backend == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                cfg.attributes["connection"] = conn
                with _quiet("alembic"):
                    before = ",".join(sorted(MigrationContext.configure(conn).get_current_heads()))
                    # "heads": revisions written in parallel branches (e.g. two
                    # features each adding a table) all get applied.
                    command.upgrade(cfg, "heads")
                    after = ",".join(sorted(MigrationContext.configure(conn).get_current_heads()))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"store: migrate failed: {_describe(exc)}") from exc
        if before != after:
            log.info("store schema migrated from %s to %s (%s)", before or "empty", after, self.url)

    # --- inbox ----------------------------------------------------------------------

    def add_raw(self, envelope: Envelope, sha256: str, *, claimed_by: str | None = None) -> RawMessage:
        """Record a received message durably (committed when this returns).

        Adding the same envelope twice (a retry after a lost reply) returns the row.
        With ``claimed_by`` the row is born claimed (PROCESSING) by that worker, so no
        inbox worker can take it: for messages the caller processes itself, such as
        documents we send (an outbound file must never be read as an inbound one).
        """
        values = _raw_values(envelope, sha256, claimed_by, _now())
        # The accept path: a durable transaction (synchronous=FULL on SQLite), since the
        # sender is acknowledged as soon as this returns.
        with self._conn("add_raw") as conn:
            if conn.execute(self._sql.add_raw, values).rowcount == 1:
                return _new_raw(values)
            existing = conn.execute(self._sql.get_raw, {"p_id": envelope.id}).one()
        if existing.sha256 != sha256:
            raise ValueError(f"raw message {envelope.id} already exists with other content")
        return _raw(existing)

    def add_raws(
        self, pairs: Iterable[tuple[Envelope, str]], *, claimed_by: str | None = None
    ) -> list[RawMessage]:
        """:meth:`add_raw` for several ``(envelope, sha256)`` pairs in ONE durable
        transaction (one commit, one WAL fsync on SQLite): the group commit of
        concurrent accepts. Results in the order of ``pairs``.

        Same semantics per pair: an envelope id already on file (or earlier in
        ``pairs``) with the same sha256 gives that row; with ``claimed_by`` every new
        row is born claimed. All or nothing: a database failure raises
        :class:`StoreUnavailable`, an id already on file with other content raises
        ``ValueError``, and then none of the pairs was added.
        """
        now = _now()
        rows = [_raw_values(envelope, sha256, claimed_by, now) for envelope, sha256 in pairs]
        if not rows:
            return []
        out: list[RawMessage | None] = [None] * len(rows)
        with self._conn("add_raws") as conn:
            # INSERT .. ON CONFLICT DO NOTHING RETURNING id, as few multi-row
            # statements (insertmanyvalues): the ids returned are the rows added now.
            added = set(conn.execute(self._sql.add_raws, rows).scalars())
            seen: set[str] = set()
            others: list[int] = []
            for i, values in enumerate(rows):
                if values["id"] in added and values["id"] not in seen:
                    out[i] = _new_raw(values)
                    seen.add(values["id"])
                else:
                    others.append(i)
            if others:
                wanted = sorted({rows[i]["id"] for i in others})
                existing: dict[str, Any] = {}
                for at in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[at : at + _IN_CHUNK]
                    for row in conn.execute(select(_RAW).where(_RAW.c.id.in_(chunk))):
                        existing[row.id] = row
                clash = sorted(
                    {rows[i]["id"] for i in others if existing[rows[i]["id"]].sha256 != rows[i]["sha256"]}
                )
                if clash:
                    # raised inside the transaction: rolled back, none of the pairs added
                    raise ValueError(f"raw message(s) {', '.join(clash)} already exist with other content")
                for i in others:
                    out[i] = _raw(existing[rows[i]["id"]])
        return [raw for raw in out if raw is not None]

    def claim(self, worker: str, limit: int = 1) -> list[RawMessage]:
        """Take up to ``limit`` received messages, oldest first, for ``worker``."""
        if limit < 1:
            return []
        params = {"p_worker": worker, "p_now": _now(), "p_limit": limit}
        with self._conn("claim", relaxed=True) as conn:
            rows = conn.execute(self._sql.claim, params).all()
        # RETURNING has no order of its own.
        return sorted((_raw(row) for row in rows), key=lambda m: (m.received_at, m.id))

    def claim_id(self, raw_id: str, worker: str) -> RawMessage | None:
        """Claim one specific message (ingest, replay); None unless it is RECEIVED."""
        params = {"p_id": raw_id, "p_worker": worker, "p_now": _now()}
        with self._conn("claim_id", relaxed=True) as conn:
            row = conn.execute(self._sql.claim_id, params).first()
        return None if row is None else _raw(row)

    def recover(self, older_than: timedelta | None = None) -> int:
        """Put claimed messages back in the inbox; with ``older_than`` only stale claims."""
        now = _now()
        stmt = update(RawMessageRow).where(RawMessageRow.state == RawState.PROCESSING)
        if older_than is not None:
            cutoff = now - older_than
            stmt = stmt.where(or_(RawMessageRow.claimed_at.is_(None), RawMessageRow.claimed_at < cutoff))
        stmt = stmt.values(state=RawState.RECEIVED, claimed_by=None, claimed_at=None, updated_at=now)
        with self._conn("recover") as conn:
            count = conn.execute(stmt).rowcount
            if count:
                self._audit(conn, "recovered", "inbox", f"{count} claimed message(s) returned to the inbox")
        return count

    def get_raw(self, raw_id: str) -> RawMessage | None:
        with self._conn("get_raw", write=False) as conn:
            row = conn.execute(self._sql.get_raw, {"p_id": raw_id}).first()
        return None if row is None else _raw(row)

    def pending_count(self) -> int:
        with self._conn("pending_count", write=False) as conn:
            return (
                conn.scalar(
                    select(func.count())
                    .select_from(RawMessageRow)
                    .where(RawMessageRow.state == RawState.RECEIVED)
                )
                or 0
            )

    def first_raw_with_sha(self, sha256: str, exclude: str) -> RawMessage | None:
        """The earliest stored raw message with these exact bytes, other than ``exclude``."""
        with self._conn("first_raw_with_sha", write=False) as conn:
            row = conn.execute(self._sql.first_raw_with_sha, {"p_sha": sha256, "p_id": exclude}).first()
        return None if row is None else _raw(row)

    def first_raws_with_sha(self, shas: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, RawMessage]:
        """:meth:`first_raw_with_sha` for many shas in one query: sha -> earliest stored
        raw message with those bytes whose id is not in ``exclude`` (shas without one
        are left out)."""
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        ids = sorted(set(exclude))
        if len(ids) > _IN_CHUNK:
            raise ValueError(f"first_raws_with_sha() excludes at most {_IN_CHUNK} ids")
        first: dict[str, RawMessage] = {}
        with self._conn("first_raws_with_sha", write=False) as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                params = {"p_shas": wanted[start : start + _IN_CHUNK], "p_ids": ids}
                for row in conn.execute(self._sql.first_raws_with_sha, params):
                    known = first.get(row.sha256)
                    if known is None or (row.received_at, row.id) < (known.received_at, known.id):
                        first[row.sha256] = _raw(row)
        return first

    # --- outcomes -------------------------------------------------------------------
    #
    # All of these commit with relaxed durability on SQLite (synchronous=NORMAL): if a
    # power cut loses one, the raw message is still in the inbox (RECEIVED or
    # PROCESSING, which recover() turns back into RECEIVED) and is processed again;
    # dedup keys keep that from storing anything twice.

    def store_interactions(
        self, raw_id: str, records: Sequence[tuple[InteractionRecord, str]]
    ) -> StoreOutcome:
        """Store the records of one raw message, skipping known dedup keys, in one transaction.

        The raw message becomes STORED when at least one record is new (or when there
        are no records, or when every duplicate belongs to this same raw message, i.e.
        a replay of an already stored message), otherwise DUPLICATE.
        """
        result = self.store_outcomes([StoreRecords(raw_id, records)])[0]
        assert isinstance(result, StoreOutcome)
        return result

    def store_interaction_batches(
        self, raw_id: str, batches: Iterable[Sequence[tuple[InteractionRecord, str]]]
    ) -> StoreOutcome:
        """:meth:`store_interactions` for more records than fit in memory.

        Every batch goes into the same transaction, so a raw message is stored whole
        or not at all; if iterating ``batches`` raises, nothing is stored and the
        exception propagates. A dedup key seen in an earlier batch of the same call
        makes the later record a duplicate of the earlier one.
        """
        now = _now()
        added_partners: dict[str, dict[str, Any]] = {}
        try:
            with self._conn("store_interactions", relaxed=True) as conn:
                lock = self._lock_raw(conn, raw_id)
                tally = _Tally(raw_id)
                seen: dict[str, tuple[str, str]] = {}
                for records in batches:
                    rows = [(tally, record, key) for record, key in records]
                    self._insert_records(conn, rows, seen, added_partners, now)
                writes = _OutcomeWrites(now)
                outcome = writes.stored(tally, lock)
                writes.flush(conn, self._sql)
        except BaseException:
            self._known_partners.clear()
            raise
        self._known_partners.update(added_partners)
        return outcome

    def mark_duplicate(self, raw_id: str, duplicate_of_raw: str) -> None:
        """The same raw bytes were stored before (the pipeline compares sha256)."""
        self.store_outcomes([SameBytes(raw_id, duplicate_of_raw)])

    def quarantine(self, raw_id: str, stage: str | Stage, reason: str) -> QuarantineEntry:
        """Park a raw message; repeated failures update its one open entry (replays+1)."""
        result = self.store_outcomes([Quarantine(raw_id, stage, reason)])[0]
        assert isinstance(result, QuarantineEntry)
        return result

    def store_outcomes(self, outcomes: Sequence[Outcome]) -> list[StoreOutcome | QuarantineEntry]:
        """The outcomes of several raw messages in ONE transaction; results in the same order.

        Each outcome means exactly what the method of one raw message does, applied in
        the given order: :class:`StoreRecords` is :meth:`store_interactions` (a
        :class:`StoreOutcome`; a dedup key stored by an earlier outcome of the same
        call makes the later record its duplicate, and the later raw a duplicate of the
        earlier raw, as if the earlier call had committed first), :class:`Quarantine`
        is :meth:`quarantine` (a :class:`QuarantineEntry`), :class:`SameBytes` is
        :meth:`mark_duplicate` (a :class:`StoreOutcome` in state DUPLICATE, no records).
        All or nothing: if anything fails, no outcome is recorded and every raw stays
        as it was (PROCESSING for claimed ones, which recover() requeues). A raw id may
        appear only once (ValueError); unknown raw ids raise KeyError.
        """
        if not outcomes:
            return []
        ids = [o.raw_id for o in outcomes]
        if len(set(ids)) != len(ids):
            raise ValueError("store_outcomes(): a raw message may have only one outcome per call")
        if len(ids) > _IN_CHUNK:
            raise ValueError(f"store_outcomes(): at most {_IN_CHUNK} outcomes per call")
        now = _now()
        added_partners: dict[str, dict[str, Any]] = {}
        try:
            with self._conn("store_outcomes", relaxed=True) as conn:
                results = self._store_outcomes(conn, outcomes, ids, added_partners, now)
        except BaseException:
            self._known_partners.clear()
            raise
        self._known_partners.update(added_partners)
        return results

    def _store_outcomes(
        self,
        conn: Connection,
        outcomes: Sequence[Outcome],
        ids: list[str],
        added_partners: dict[str, dict[str, Any]],
        now: datetime,
    ) -> list[StoreOutcome | QuarantineEntry]:
        sql = self._sql
        locks = {row.id: row for row in conn.execute(sql.lock_raws, {"p_ids": ids})}
        for raw_id in ids:
            if raw_id not in locks:
                raise KeyError(raw_id)
        targets = {o.duplicate_of for o in outcomes if isinstance(o, SameBytes)} - locks.keys()
        if targets:
            found = set(conn.scalars(sql.raws_exist, {"p_ids": sorted(targets)}))
            for o in outcomes:
                if isinstance(o, SameBytes) and o.duplicate_of not in locks and o.duplicate_of not in found:
                    raise KeyError(o.duplicate_of)
        tallies: dict[str, _Tally] = {}
        rows: list[tuple[_Tally, InteractionRecord, str]] = []
        for o in outcomes:
            if isinstance(o, StoreRecords):
                tally = tallies[o.raw_id] = _Tally(o.raw_id)
                rows.extend((tally, record, key) for record, key in o.records)
        if rows:
            self._insert_records(conn, rows, {}, added_partners, now)
        writes = _OutcomeWrites(now)
        results: list[StoreOutcome | QuarantineEntry] = []
        for o in outcomes:
            lock = locks[o.raw_id]
            if isinstance(o, StoreRecords):
                results.append(writes.stored(tallies[o.raw_id], lock))
            elif isinstance(o, SameBytes):
                results.append(writes.same_bytes(o, lock))
            else:
                results.append(writes.quarantined(conn, sql, o, lock))
        writes.flush(conn, sql)
        return results

    def _insert_records(
        self,
        conn: Connection,
        rows: Sequence[tuple[_Tally, InteractionRecord, str]],
        seen: dict[str, tuple[str, str]],
        added_partners: dict[str, dict[str, Any]],
        now: datetime,
    ) -> None:
        """Insert one chunk of (raw's tally, record, dedup key), noting each record's fate
        in its tally. ``seen``: dedup key -> (interaction id, raw id) of its owner, for
        the keys of earlier chunks of the same transaction; updated."""
        sql = self._sql
        # the first record of each key not seen before in this transaction: the only
        # candidate for inserting; later ones are its duplicates
        first: dict[str, tuple[_Tally, InteractionRecord]] = {}
        partners: dict[str, dict[str, Any]] = {}
        for tally, record, dedup_key in rows:
            if dedup_key not in seen and dedup_key not in first:
                first[dedup_key] = (tally, record)
            ref = record.partner
            if (
                ref is not None
                and ref.id not in partners
                and ref.id not in added_partners
                and ref.id not in self._known_partners
            ):
                # A record naming a partner that was never synced must not fail on
                # the foreign key and retry forever: an inactive placeholder.
                partners[ref.id] = {
                    "id": ref.id,
                    "name": ref.name or ref.id,
                    "active": False,
                    "updated_at": now,
                }
        if partners:
            conn.execute(sql.ensure_partners, list(partners.values()))
            added_partners.update(partners)
        # Every candidate in one executemany, ON CONFLICT (dedup_key) DO NOTHING. In
        # the usual case every row goes in (rowcount says so) and nothing else is
        # asked. Otherwise the owners of the candidate keys are read back: a key whose
        # owner is not our record belongs to an earlier interaction, or to one a
        # concurrent transaction (another node) committed first, which PostgreSQL made
        # our insert wait for and then skip.
        owners: dict[str, tuple[str, str]] = {}
        if first:
            inserted = conn.execute(
                sql.insert_interactions,
                [_interaction_values(rec, key, t.raw_id, now) for key, (t, rec) in first.items()],
            ).rowcount
            if inserted != len(first):
                owners = {
                    key: owner
                    for key, owner in self._key_owners(conn, list(first)).items()
                    if owner != (first[key][1].id, first[key][0].raw_id)
                }
        new: list[InteractionRecord] = []
        for tally, record, dedup_key in rows:
            owner = owners.get(dedup_key) or seen.get(dedup_key)
            if owner is None:
                first_tally, first_record = first[dedup_key]
                if first_record is record:
                    tally.stored.append(StoredRecord(record.id, None))
                    tally.new_count += 1
                    new.append(record)
                    continue
                owner = (first_record.id, first_tally.raw_id)
            tally.stored.append(StoredRecord(record.id, owner[0]))
            if owner[1] != tally.raw_id and tally.duplicate_of_raw is None:
                tally.duplicate_of_raw = owner[1]
        for key, (t, rec) in first.items():
            seen[key] = owners.get(key, (rec.id, t.raw_id))
        if new:
            _insert_children(conn, sql, new)

    def _key_owners(self, conn: Connection, keys: list[str]) -> dict[str, tuple[str, str]]:
        """dedup key -> (interaction id, raw id) for the keys that exist."""
        owners: dict[str, tuple[str, str]] = {}
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            for key, interaction_id, owner_raw in conn.execute(self._sql.key_owners, {"p_keys": chunk}):
                owners[key] = (interaction_id, owner_raw)
        return owners

    def list_quarantine(self, include_resolved: bool = False) -> list[QuarantineEntry]:
        stmt = select(QuarantineRow, RawMessageRow).join(
            RawMessageRow, QuarantineRow.raw_id == RawMessageRow.id
        )
        if not include_resolved:
            stmt = stmt.where(QuarantineRow.resolved_at.is_(None))
        stmt = stmt.order_by(QuarantineRow.created_at, QuarantineRow.id)
        with self._tx("list_quarantine", write=False) as s:
            return [_quarantine(q, r) for q, r in s.execute(stmt)]

    def get_quarantine(self, entry_id: str) -> QuarantineEntry | None:
        with self._tx("get_quarantine", write=False) as s:
            entry = s.get(QuarantineRow, entry_id)
            return None if entry is None else _quarantine(entry, entry.raw)

    def requeue(self, raw_id: str) -> None:
        """Replay: back to RECEIVED. The quarantine entry stays open until the raw is stored."""
        with self._conn("requeue") as conn:
            lock = self._lock_raw(conn, raw_id)
            if lock.state == RawState.PROCESSING:
                raise ValueError(f"raw message {raw_id} is being processed by {lock.claimed_by}")
            conn.execute(self._sql.requeue, {"p_id": raw_id, "p_now": _now()})
            self._audit(conn, "requeued", raw_id)

    # --- partners -------------------------------------------------------------------

    def sync_partners(self, partners: Sequence[PartnerRow]) -> None:
        """Mirror the configured partners: upsert, replace identities, deactivate the rest."""
        now = _now()
        ids = [p.id for p in partners]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate partner ids in sync_partners()")
        with self._conn("sync_partners") as conn:
            for p in partners:
                stmt = self._insert(_PARTNERS).values(id=p.id, name=p.name, active=True, updated_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["id"],
                        set_={"name": p.name, "active": True, "updated_at": now},
                    )
                )
            if ids:
                conn.execute(delete(_IDENTITIES).where(_IDENTITIES.c.partner_id.in_(ids)))
            identity_rows = [
                {"partner_id": p.id, "position": i, "kind": kind, "value": value}
                for p in partners
                for i, (kind, value) in enumerate(dict.fromkeys(p.identities))
            ]
            if identity_rows:
                conn.execute(insert(_IDENTITIES), identity_rows)
            conn.execute(
                update(_PARTNERS)
                .where(_PARTNERS.c.id.not_in(ids), _PARTNERS.c.active.is_(True))
                .values(active=False, updated_at=now)
            )
            self._audit(conn, "partners_synced", "partners", f"{len(partners)} active")
        self._known_partners.update(ids)

    def list_partners(self, include_inactive: bool = False) -> list[PartnerRow]:
        stmt = select(Partner).options(selectinload(Partner.identities)).order_by(Partner.id)
        if not include_inactive:
            stmt = stmt.where(Partner.active.is_(True))
        with self._tx("list_partners", write=False) as s:
            return [
                PartnerRow(
                    id=p.id,
                    name=p.name,
                    identities=tuple((i.kind, i.value) for i in p.identities),
                    active=p.active,
                )
                for p in s.scalars(stmt)
            ]

    # --- queries --------------------------------------------------------------------

    def list_interactions(
        self,
        *,
        partner: str | None = None,
        channel: str | None = None,
        kind: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[InteractionRecord]:
        """Interactions, newest first by ``received_at``; ``partner`` is a partner id."""
        stmt = select(Interaction).options(*_full_record())
        if partner is not None:
            stmt = stmt.where(Interaction.partner_id == partner)
        if channel is not None:
            stmt = stmt.where(Interaction.channel == str(channel))
        if kind is not None:
            stmt = stmt.where(Interaction.kind == str(kind))
        if since is not None:
            stmt = stmt.where(Interaction.received_at >= since)
        stmt = stmt.order_by(Interaction.received_at.desc(), Interaction.id.desc())
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._tx("list_interactions", write=False) as s:
            return [_record(row) for row in s.scalars(stmt)]

    def get_interaction(self, record_id: str) -> InteractionRecord | None:
        with self._tx("get_interaction", write=False) as s:
            row = s.scalars(
                select(Interaction).options(*_full_record()).where(Interaction.id == record_id)
            ).first()
            return None if row is None else _record(row)

    def interactions_for_raw(self, raw_id: str) -> list[str]:
        """Ids of the interactions stored from one raw message."""
        with self._tx("interactions_for_raw", write=False) as s:
            return list(
                s.scalars(select(Interaction.id).where(Interaction.raw_id == raw_id).order_by(Interaction.id))
            )

    def counts(self) -> dict[str, int]:
        """Raw messages per state (every state, zeros included), ``interactions``, ``quarantine_open``."""
        with self._tx("counts", write=False) as s:
            out = {state.value: 0 for state in RawState}
            for state, n in s.execute(
                select(RawMessageRow.state, func.count()).group_by(RawMessageRow.state)
            ):
                out[RawState(state).value] = n
            out["interactions"] = s.scalar(select(func.count()).select_from(Interaction)) or 0
            out["quarantine_open"] = (
                s.scalar(
                    select(func.count()).select_from(QuarantineRow).where(QuarantineRow.resolved_at.is_(None))
                )
                or 0
            )
            return out

    def audit(self, event: str, subject: str, detail: str = "") -> None:
        with self._conn("audit") as conn:
            self._audit(conn, event, subject, detail)

    def list_audit(self, subject: str | None = None, limit: int | None = 100) -> list[AuditEntry]:
        """Audit events, newest first."""
        a = _AUDIT.c
        stmt = select(a.id, a.at, a.event, a.subject, a.detail).order_by(a.id.desc())
        if subject is not None:
            stmt = stmt.where(a.subject == subject)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._conn("list_audit", write=False) as conn:
            return [AuditEntry(*row) for row in conn.execute(stmt)]

    # --- leases ---------------------------------------------------------------------

    def try_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew lease ``name`` for ``seconds``; False while another holder has it.

        Expiry uses the nodes' clocks, so leases should be much longer than clock skew.
        """
        now = _now()
        expires = now + timedelta(seconds=seconds)
        table = _LEASES
        stmt = (
            self._insert(table)
            .values(name=name, holder=holder, expires_at=expires)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"holder": holder, "expires_at": expires},
                where=or_(table.c.holder == holder, table.c.expires_at <= now),
            )
            .returning(table.c.name)
        )
        with self._conn("try_lease") as conn:
            return conn.execute(stmt).first() is not None

    def release_lease(self, name: str, holder: str) -> None:
        with self._conn("release_lease") as conn:
            conn.execute(delete(_LEASES).where(and_(_LEASES.c.name == name, _LEASES.c.holder == holder)))


# --- helpers --------------------------------------------------------------------------


@dataclass
class _Tally:
    """What happened to the records of one raw message so far in a transaction."""

    raw_id: str
    stored: list[StoredRecord] = field(default_factory=list)
    new_count: int = 0
    #: the raw behind the first record that duplicates another raw's interaction
    duplicate_of_raw: str | None = None


class _OutcomeWrites:
    """The raw-row updates, quarantine resolutions and audit events of a transaction's
    outcomes, collected and then written with one executemany per statement."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.outcomes: list[dict[str, Any]] = []
        self.parked: list[dict[str, Any]] = []
        self.opened: list[dict[str, Any]] = []
        self.resolved: list[dict[str, Any]] = []
        self.audits: list[dict[str, Any]] = []

    def _audit(self, event: str, subject: str, detail: str) -> None:
        self.audits.append({"at": self.now, "event": event, "subject": subject, "detail": detail})

    def _settle(self, raw_id: str, state: RawState, duplicate_of: str | None, lock: Any) -> None:
        self.outcomes.append(
            {"p_id": raw_id, "p_state": state, "p_duplicate_of": duplicate_of, "p_now": self.now}
        )
        # Only when the raw has an open entry (the lock query told us): no statement
        # at all for the usual first-time success.
        if lock.open_quarantine is not None:
            self.resolved.append({"p_entry": lock.open_quarantine, "p_now": self.now})

    def stored(self, tally: _Tally, lock: Any) -> StoreOutcome:
        duplicate_of_raw = tally.duplicate_of_raw
        if tally.new_count or duplicate_of_raw is None:
            state = RawState.STORED
            duplicate_of_raw = None
        else:
            state = RawState.DUPLICATE
        self._settle(tally.raw_id, state, duplicate_of_raw, lock)
        self._audit(
            state.value,
            tally.raw_id,
            f"{tally.new_count} new, {len(tally.stored) - tally.new_count} duplicate interaction(s)"
            + (f"; duplicate of raw {duplicate_of_raw}" if duplicate_of_raw else ""),
        )
        return StoreOutcome(tally.raw_id, state, tuple(tally.stored), duplicate_of_raw)

    def same_bytes(self, outcome: SameBytes, lock: Any) -> StoreOutcome:
        self._settle(outcome.raw_id, RawState.DUPLICATE, outcome.duplicate_of, lock)
        self._audit("duplicate", outcome.raw_id, f"same bytes as raw {outcome.duplicate_of}")
        return StoreOutcome(outcome.raw_id, RawState.DUPLICATE, (), outcome.duplicate_of)

    def quarantined(self, conn: Connection, sql: _Sql, outcome: Quarantine, lock: Any) -> QuarantineEntry:
        raw_id, reason, now = outcome.raw_id, outcome.reason, self.now
        stage = outcome.stage.value if isinstance(outcome.stage, enum.Enum) else outcome.stage
        self.parked.append({"p_id": raw_id, "p_error": reason, "p_now": now})
        if lock.open_quarantine is None:
            entry_id = uuid.uuid4().hex
            created_at, replays = now, 0
            self.opened.append(
                {
                    "id": entry_id,
                    "raw_id": raw_id,
                    "stage": stage,
                    "reason": reason,
                    "created_at": now,
                    "updated_at": now,
                    "resolved_at": None,
                    "replays": 0,
                }
            )
        else:
            # a replay failing again (rare): one UPDATE ... RETURNING each
            entry_id = lock.open_quarantine
            created_at, replays = conn.execute(
                sql.bump_quarantine,
                {"p_entry": entry_id, "p_stage": stage, "p_reason": reason, "p_now": now},
            ).one()
        self._audit("quarantined", raw_id, f"{stage}: {reason}")
        return QuarantineEntry(
            id=entry_id,
            raw_id=raw_id,
            stage=stage,
            reason=reason,
            created_at=created_at,
            raw_sha256=lock.sha256,
            channel=lock.channel,
            filename=lock.filename,
            resolved_at=None,
            replays=replays,
        )

    def flush(self, conn: Connection, sql: _Sql) -> None:
        for stmt, params in (
            (sql.set_outcome, self.outcomes),
            (sql.set_quarantined, self.parked),
            (sql.open_quarantine, self.opened),
            (sql.resolve_quarantine, self.resolved),
            (sql.audit, self.audits),
        ):
            if params:
                conn.execute(stmt, params)


def _raw_values(envelope: Envelope, sha256: str, claimed_by: str | None, now: datetime) -> dict[str, Any]:
    """The raw_messages row of a newly received ``envelope`` (add_raw, add_raws)."""
    return {
        "id": envelope.id,
        "sha256": sha256,
        "channel": str(envelope.channel),
        "received_at": envelope.received_at,
        "size": envelope.size,
        "filename": envelope.filename,
        "transport": dict(envelope.transport),
        "sender": dict(envelope.sender),
        "state": RawState.RECEIVED if claimed_by is None else RawState.PROCESSING,
        "attempts": 0 if claimed_by is None else 1,
        "claimed_by": claimed_by,
        "claimed_at": None if claimed_by is None else now,
        "updated_at": now,
    }


def _new_raw(values: Mapping[str, Any]) -> RawMessage:
    """The RawMessage of a row just inserted with ``values`` (see :func:`_raw_values`)."""
    return RawMessage(
        id=values["id"],
        sha256=values["sha256"],
        channel=values["channel"],
        received_at=values["received_at"],
        size=values["size"],
        filename=values["filename"],
        transport=_frozen(values["transport"]),
        sender=_frozen(values["sender"]),
        state=values["state"],
        attempts=values["attempts"],
        duplicate_of=None,
        error=None,
        claimed_by=values["claimed_by"],
        claimed_at=values["claimed_at"],
    )


def _raw(row: Any) -> RawMessage:
    """A RawMessage from an ORM row or a Core row of raw_messages."""
    return RawMessage(
        id=row.id,
        sha256=row.sha256,
        channel=row.channel,
        received_at=row.received_at,
        size=row.size,
        filename=row.filename,
        transport=_frozen(row.transport),
        sender=_frozen(row.sender),
        state=RawState(row.state),
        attempts=row.attempts,
        duplicate_of=row.duplicate_of,
        error=row.error,
        claimed_by=row.claimed_by,
        claimed_at=row.claimed_at,
    )


def _quarantine(entry: QuarantineRow, raw: RawMessageRow) -> QuarantineEntry:
    return QuarantineEntry(
        id=entry.id,
        raw_id=entry.raw_id,
        stage=entry.stage,
        reason=entry.reason,
        created_at=entry.created_at,
        raw_sha256=raw.sha256,
        channel=raw.channel,
        filename=raw.filename,
        resolved_at=entry.resolved_at,
        replays=entry.replays,
    )


def _interaction_values(
    record: InteractionRecord, dedup_key: str, raw_id: str, now: datetime
) -> dict[str, Any]:
    doc = record.document
    partner = record.partner
    mapping = record.mapping
    return {
        "id": record.id,
        "dedup_key": dedup_key,
        "raw_id": raw_id,
        "partner_id": None if partner is None else partner.id,
        "partner_name": None if partner is None else partner.name,
        "channel": str(record.channel),
        "direction": Direction(record.direction).value,
        "kind": Kind(record.kind).value,
        "status": Status(record.status).value,
        "received_at": record.received_at,
        "occurred_at": record.occurred_at,
        "raw_sha256": record.raw_sha256,
        "sender": dict(record.sender),
        "doc_standard": doc.standard,
        "doc_type": doc.type,
        "doc_version": doc.version,
        "doc_control_number": doc.control_number,
        "subject": record.subject,
        "references": dict(record.references),
        "currency": record.currency,
        "total_amount": record.total_amount,
        "mapping_file": None if mapping is None else mapping.file,
        "mapping_sha256": None if mapping is None else mapping.sha256,
        "body": record.body,
        "extra": dict(record.extra),
        "stored_at": now,
    }


def _insert_children(conn: Connection, sql: _Sql, records: Sequence[InteractionRecord]) -> None:
    """Lines, parties and attachments of ``records``: one executemany per table."""
    lines = [
        {
            "interaction_id": rec.id,
            "position": i,
            "line_number": ln.line_number,
            "product_id": ln.product_id,
            "description": ln.description,
            "quantity": ln.quantity,
            "unit": ln.unit,
            "unit_price": ln.unit_price,
        }
        for rec in records
        for i, ln in enumerate(rec.lines)
    ]
    if lines:
        conn.execute(sql.insert_lines, lines)
    parties = [
        {"interaction_id": rec.id, "position": i, "role": p.role, "name": p.name, "party_id": p.id}
        for rec in records
        for i, p in enumerate(rec.parties)
    ]
    if parties:
        conn.execute(sql.insert_parties, parties)
    attachments = [
        {
            "interaction_id": rec.id,
            "position": i,
            "filename": a.filename,
            "media_type": a.media_type,
            "size": a.size,
            "sha256": a.sha256,
        }
        for rec in records
        for i, a in enumerate(rec.attachments)
    ]
    if attachments:
        conn.execute(sql.insert_attachments, attachments)


def _full_record() -> tuple[Any, ...]:
    return (
        selectinload(Interaction.lines),
        selectinload(Interaction.parties),
        selectinload(Interaction.attachments),
        selectinload(Interaction.partner),
    )


def _record(row: Interaction) -> InteractionRecord:
    partner: PartnerRef | None = None
    if row.partner_id is not None:
        name = row.partner_name
        if name is None and row.partner is not None:
            name = row.partner.name
        partner = PartnerRef(row.partner_id, name)
    return InteractionRecord(
        id=row.id,
        channel=row.channel,
        direction=Direction(row.direction),
        kind=Kind(row.kind),
        received_at=row.received_at,
        raw_sha256=row.raw_sha256,
        status=Status(row.status),
        partner=partner,
        sender=row.sender,
        occurred_at=row.occurred_at,
        document=DocumentInfo(
            standard=row.doc_standard,
            type=row.doc_type,
            version=row.doc_version,
            control_number=row.doc_control_number,
        ),
        subject=row.subject,
        references=row.references,
        currency=row.currency,
        total_amount=row.total_amount,
        lines=tuple(
            Line(
                line_number=ln.line_number,
                product_id=ln.product_id,
                description=ln.description,
                quantity=ln.quantity,
                unit=ln.unit,
                unit_price=ln.unit_price,
            )
            for ln in row.lines
        ),
        parties=tuple(Party(role=p.role, name=p.name, id=p.party_id) for p in row.parties),
        attachments=tuple(
            Attachment(filename=a.filename, media_type=a.media_type, size=a.size, sha256=a.sha256)
            for a in row.attachments
        ),
        mapping=None
        if row.mapping_file is None or row.mapping_sha256 is None
        else MappingRef(row.mapping_file, row.mapping_sha256),
        body=row.body,
        extra=row.extra,
    )
