"""The CRM store: inbox (raw messages), interactions, partners, quarantine, audit, leases.

Every public method is one short transaction. Database failures of any kind surface
as :class:`~gateway.errors.StoreUnavailable` (a RETRY error), so adapters can answer
the sender with a temporary failure and workers can leave the message in the inbox.
Misuse by the caller (an unknown raw id, a naive datetime) raises ``KeyError`` /
``ValueError`` instead, because retrying would not help.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from sqlalchemy import URL, Engine, and_, delete, func, insert, make_url, or_, select, text, update
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
from gateway.store.engine import WRITE, make_engine
from gateway.store.models import (
    AttachmentRow,
    AuditEvent,
    Interaction,
    InteractionLine,
    InteractionParty,
    Lease,
    Partner,
    PartnerIdentity,
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


class Store:
    """The gateway's database. Thread-safe; one instance per process is enough."""

    def __init__(self, url: str | URL) -> None:
        backend = make_url(url).get_backend_name()
        if backend not in _SUPPORTED_BACKENDS:
            raise ValueError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")
        self.backend = backend
        self._engine: Engine = make_engine(url)
        self._writer = self._engine.execution_options(**{WRITE: True})

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> Store:
        """The embedded SQLite store, ``data_dir/gateway.db``."""
        data_dir.mkdir(parents=True, exist_ok=True)
        return cls(URL.create("sqlite", database=str((data_dir / "gateway.db").resolve())))

    @property
    def url(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------

    @contextmanager
    def _tx(self, op: str, *, write: bool = True) -> Iterator[Session]:
        try:
            with (
                Session(self._writer if write else self._engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"store: {op} failed: {_describe(exc)}") from exc

    def _insert(self, table: Any) -> Any:
        # Both dialects spell ON CONFLICT the same way; the generic insert() has none.
        if self.backend == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

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
                    before = MigrationContext.configure(conn).get_current_revision()
                    command.upgrade(cfg, "head")
                    after = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"store: migrate failed: {_describe(exc)}") from exc
        if before != after:
            log.info("store schema migrated from %s to %s (%s)", before or "empty", after, self.url)

    # --- inbox ----------------------------------------------------------------------

    def add_raw(self, envelope: Envelope, sha256: str) -> RawMessage:
        """Record a received message durably (committed when this returns).

        Adding the same envelope twice (a retry after a lost reply) returns the row.
        """
        now = _now()
        with self._tx("add_raw") as s:
            existing = s.get(RawMessageRow, envelope.id)
            if existing is not None:
                if existing.sha256 != sha256:
                    raise ValueError(f"raw message {envelope.id} already exists with other content")
                return _raw(existing)
            row = RawMessageRow(
                id=envelope.id,
                sha256=sha256,
                channel=str(envelope.channel),
                received_at=envelope.received_at,
                size=envelope.size,
                filename=envelope.filename,
                transport=dict(envelope.transport),
                sender=dict(envelope.sender),
                state=RawState.RECEIVED,
                attempts=0,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            result = _raw(row)
        return result

    def claim(self, worker: str, limit: int = 1) -> list[RawMessage]:
        """Take up to ``limit`` received messages, oldest first, for ``worker``."""
        if limit < 1:
            return []
        now = _now()
        with self._tx("claim") as s:
            # PostgreSQL: SKIP LOCKED lets concurrent claimers pass each other's rows.
            # SQLite ignores FOR UPDATE; BEGIN IMMEDIATE already made us the only writer.
            rows = s.scalars(
                select(RawMessageRow)
                .where(RawMessageRow.state == RawState.RECEIVED)
                .order_by(RawMessageRow.received_at, RawMessageRow.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                row.state = RawState.PROCESSING
                row.attempts += 1
                row.claimed_by = worker
                row.claimed_at = now
                row.updated_at = now
            s.flush()
            return [_raw(row) for row in rows]

    def claim_id(self, raw_id: str, worker: str) -> RawMessage | None:
        """Claim one specific message (ingest, replay); None unless it is RECEIVED."""
        now = _now()
        with self._tx("claim_id") as s:
            row = s.get(RawMessageRow, raw_id, with_for_update=True)
            if row is None or row.state != RawState.RECEIVED:
                return None
            row.state = RawState.PROCESSING
            row.attempts += 1
            row.claimed_by = worker
            row.claimed_at = now
            row.updated_at = now
            s.flush()
            return _raw(row)

    def recover(self, older_than: timedelta | None = None) -> int:
        """Put claimed messages back in the inbox; with ``older_than`` only stale claims."""
        now = _now()
        stmt = update(RawMessageRow).where(RawMessageRow.state == RawState.PROCESSING)
        if older_than is not None:
            cutoff = now - older_than
            stmt = stmt.where(or_(RawMessageRow.claimed_at.is_(None), RawMessageRow.claimed_at < cutoff))
        stmt = stmt.values(state=RawState.RECEIVED, claimed_by=None, claimed_at=None, updated_at=now)
        with self._tx("recover") as s:
            count = s.connection().execute(stmt).rowcount
            if count:
                _audit(s, "recovered", "inbox", f"{count} claimed message(s) returned to the inbox")
        return count

    def get_raw(self, raw_id: str) -> RawMessage | None:
        with self._tx("get_raw", write=False) as s:
            row = s.get(RawMessageRow, raw_id)
            return None if row is None else _raw(row)

    def pending_count(self) -> int:
        with self._tx("pending_count", write=False) as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(RawMessageRow)
                    .where(RawMessageRow.state == RawState.RECEIVED)
                )
                or 0
            )

    def first_raw_with_sha(self, sha256: str, exclude: str) -> RawMessage | None:
        """The earliest stored raw message with these exact bytes, other than ``exclude``."""
        with self._tx("first_raw_with_sha", write=False) as s:
            row = s.scalars(
                select(RawMessageRow)
                .where(
                    RawMessageRow.sha256 == sha256,
                    RawMessageRow.state == RawState.STORED,
                    RawMessageRow.id != exclude,
                )
                .order_by(RawMessageRow.received_at, RawMessageRow.id)
                .limit(1)
            ).first()
            return None if row is None else _raw(row)

    # --- outcomes -------------------------------------------------------------------

    def store_interactions(
        self, raw_id: str, records: Sequence[tuple[InteractionRecord, str]]
    ) -> StoreOutcome:
        """Store the records of one raw message, skipping known dedup keys, in one transaction.

        The raw message becomes STORED when at least one record is new (or when there
        are no records, or when every duplicate belongs to this same raw message, i.e.
        a replay of an already stored message), otherwise DUPLICATE.
        """
        now = _now()
        with self._tx("store_interactions") as s:
            raw = _lock_raw(s, raw_id)
            stored: list[StoredRecord] = []
            any_new = False
            duplicate_of_raw: str | None = None
            for record, dedup_key in records:
                if record.partner is not None:
                    self._ensure_partner(s, record.partner, now)
                # ON CONFLICT on the dedup key alone: a concurrent insert of the same
                # document (another node) waits for that transaction and then yields.
                inserted = (
                    s.connection()
                    .execute(
                        self._insert(Interaction.__table__)
                        .values(_interaction_values(record, dedup_key, raw_id, now))
                        .on_conflict_do_nothing(index_elements=["dedup_key"])
                        .returning(Interaction.__table__.c.id)
                    )
                    .first()
                )
                if inserted is not None:
                    any_new = True
                    _insert_children(s, record)
                    stored.append(StoredRecord(record.id, None))
                    continue
                existing = s.execute(
                    select(Interaction.id, Interaction.raw_id).where(Interaction.dedup_key == dedup_key)
                ).one()
                stored.append(StoredRecord(record.id, existing.id))
                if existing.raw_id != raw_id and duplicate_of_raw is None:
                    duplicate_of_raw = existing.raw_id
            if any_new or duplicate_of_raw is None:
                raw.state = RawState.STORED
                raw.duplicate_of = None
                duplicate_of_raw = None
            else:
                raw.state = RawState.DUPLICATE
                raw.duplicate_of = duplicate_of_raw
            raw.error = None
            raw.updated_at = now
            _resolve_quarantine(s, raw_id, now)
            new = sum(1 for r in stored if r.duplicate_of is None)
            _audit(
                s,
                raw.state.value,
                raw_id,
                f"{new} new, {len(stored) - new} duplicate interaction(s)"
                + (f"; duplicate of raw {duplicate_of_raw}" if duplicate_of_raw else ""),
            )
        return StoreOutcome(raw_id, raw.state, tuple(stored), duplicate_of_raw)

    def _ensure_partner(self, s: Session, ref: PartnerRef, now: datetime) -> None:
        # Partners come from config via sync_partners(); a record naming one that was
        # never synced must not fail on the foreign key and retry forever, so a
        # placeholder (inactive until the configuration lists it) is created.
        s.connection().execute(
            self._insert(Partner.__table__)
            .values(id=ref.id, name=ref.name or ref.id, active=False, updated_at=now)
            .on_conflict_do_nothing(index_elements=["id"])
        )

    def mark_duplicate(self, raw_id: str, duplicate_of_raw: str) -> None:
        """The same raw bytes were stored before (the pipeline compares sha256)."""
        now = _now()
        with self._tx("mark_duplicate") as s:
            raw = _lock_raw(s, raw_id)
            if s.get(RawMessageRow, duplicate_of_raw) is None:
                raise KeyError(duplicate_of_raw)
            raw.state = RawState.DUPLICATE
            raw.duplicate_of = duplicate_of_raw
            raw.error = None
            raw.updated_at = now
            _resolve_quarantine(s, raw_id, now)
            _audit(s, "duplicate", raw_id, f"same bytes as raw {duplicate_of_raw}")

    def quarantine(self, raw_id: str, stage: str | Stage, reason: str) -> QuarantineEntry:
        """Park a raw message; repeated failures update its one open entry (replays+1)."""
        stage_name = stage.value if isinstance(stage, enum.Enum) else stage
        now = _now()
        with self._tx("quarantine") as s:
            raw = _lock_raw(s, raw_id)
            raw.state = RawState.QUARANTINED
            raw.error = reason
            raw.updated_at = now
            entry = s.scalars(
                select(QuarantineRow).where(
                    QuarantineRow.raw_id == raw_id, QuarantineRow.resolved_at.is_(None)
                )
            ).first()
            if entry is None:
                entry = QuarantineRow(
                    id=uuid.uuid4().hex,
                    raw_id=raw_id,
                    stage=stage_name,
                    reason=reason,
                    created_at=now,
                    updated_at=now,
                    replays=0,
                )
                s.add(entry)
            else:
                entry.stage = stage_name
                entry.reason = reason
                entry.updated_at = now
                entry.replays += 1
            s.flush()
            _audit(s, "quarantined", raw_id, f"{stage_name}: {reason}")
            return _quarantine(entry, raw)

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
        now = _now()
        with self._tx("requeue") as s:
            raw = _lock_raw(s, raw_id)
            if raw.state == RawState.PROCESSING:
                raise ValueError(f"raw message {raw_id} is being processed by {raw.claimed_by}")
            raw.state = RawState.RECEIVED
            raw.claimed_by = None
            raw.claimed_at = None
            raw.updated_at = now
            _audit(s, "requeued", raw_id)

    # --- partners -------------------------------------------------------------------

    def sync_partners(self, partners: Sequence[PartnerRow]) -> None:
        """Mirror the configured partners: upsert, replace identities, deactivate the rest."""
        now = _now()
        ids = [p.id for p in partners]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate partner ids in sync_partners()")
        with self._tx("sync_partners") as s:
            conn = s.connection()
            table = Partner.__table__
            for p in partners:
                stmt = self._insert(table).values(id=p.id, name=p.name, active=True, updated_at=now)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["id"],
                        set_={"name": p.name, "active": True, "updated_at": now},
                    )
                )
            if ids:
                conn.execute(delete(PartnerIdentity).where(PartnerIdentity.partner_id.in_(ids)))
            identity_rows = [
                {"partner_id": p.id, "position": i, "kind": kind, "value": value}
                for p in partners
                for i, (kind, value) in enumerate(dict.fromkeys(p.identities))
            ]
            if identity_rows:
                conn.execute(insert(PartnerIdentity), identity_rows)
            conn.execute(
                update(Partner)
                .where(Partner.id.not_in(ids), Partner.active.is_(True))
                .values(active=False, updated_at=now)
            )
            _audit(s, "partners_synced", "partners", f"{len(partners)} active")

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
        with self._tx("audit") as s:
            _audit(s, event, subject, detail)

    def list_audit(self, subject: str | None = None, limit: int | None = 100) -> list[AuditEntry]:
        """Audit events, newest first."""
        stmt = select(AuditEvent).order_by(AuditEvent.id.desc())
        if subject is not None:
            stmt = stmt.where(AuditEvent.subject == subject)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._tx("list_audit", write=False) as s:
            return [AuditEntry(e.id, e.at, e.event, e.subject, e.detail) for e in s.scalars(stmt)]

    # --- leases ---------------------------------------------------------------------

    def try_lease(self, name: str, holder: str, seconds: float) -> bool:
        """Take or renew lease ``name`` for ``seconds``; False while another holder has it.

        Expiry uses the nodes' clocks, so leases should be much longer than clock skew.
        """
        now = _now()
        expires = now + timedelta(seconds=seconds)
        table = Lease.__table__
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
        with self._tx("try_lease") as s:
            return s.connection().execute(stmt).first() is not None

    def release_lease(self, name: str, holder: str) -> None:
        with self._tx("release_lease") as s:
            s.connection().execute(delete(Lease).where(and_(Lease.name == name, Lease.holder == holder)))


# --- helpers --------------------------------------------------------------------------


def _lock_raw(s: Session, raw_id: str) -> RawMessageRow:
    # FOR UPDATE serialises concurrent outcome writes for one raw message on PostgreSQL.
    raw = s.get(RawMessageRow, raw_id, with_for_update=True)
    if raw is None:
        raise KeyError(raw_id)
    return raw


def _resolve_quarantine(s: Session, raw_id: str, now: datetime) -> None:
    s.execute(
        update(QuarantineRow)
        .where(QuarantineRow.raw_id == raw_id, QuarantineRow.resolved_at.is_(None))
        .values(resolved_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def _audit(s: Session, event: str, subject: str, detail: str = "") -> None:
    s.add(AuditEvent(at=_now(), event=event, subject=subject, detail=detail))


def _raw(row: RawMessageRow) -> RawMessage:
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
    return {
        "id": record.id,
        "dedup_key": dedup_key,
        "raw_id": raw_id,
        "partner_id": None if record.partner is None else record.partner.id,
        "partner_name": None if record.partner is None else record.partner.name,
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
        "mapping_file": None if record.mapping is None else record.mapping.file,
        "mapping_sha256": None if record.mapping is None else record.mapping.sha256,
        "body": record.body,
        "extra": dict(record.extra),
        "stored_at": now,
    }


def _insert_children(s: Session, record: InteractionRecord) -> None:
    conn = s.connection()
    if record.lines:
        conn.execute(
            insert(InteractionLine),
            [
                {
                    "interaction_id": record.id,
                    "position": i,
                    "line_number": ln.line_number,
                    "product_id": ln.product_id,
                    "description": ln.description,
                    "quantity": ln.quantity,
                    "unit": ln.unit,
                    "unit_price": ln.unit_price,
                }
                for i, ln in enumerate(record.lines)
            ],
        )
    if record.parties:
        conn.execute(
            insert(InteractionParty),
            [
                {"interaction_id": record.id, "position": i, "role": p.role, "name": p.name, "party_id": p.id}
                for i, p in enumerate(record.parties)
            ],
        )
    if record.attachments:
        conn.execute(
            insert(AttachmentRow),
            [
                {
                    "interaction_id": record.id,
                    "position": i,
                    "filename": a.filename,
                    "media_type": a.media_type,
                    "size": a.size,
                    "sha256": a.sha256,
                }
                for i, a in enumerate(record.attachments)
            ],
        )


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
