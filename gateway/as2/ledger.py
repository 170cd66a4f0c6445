"""The AS2 message ledger: Message-ID + partner -> raw message, MDN, disposition, MIC.

It is what makes a resend exactly-once: a message whose Message-ID from that partner
was already acknowledged positively gets the very same MDN again and is not accepted
a second time. It also keeps every MDN we sent (and, for async MDNs, their delivery
state) so they can be shown with the interaction.

The table lives on the store's declarative Base (migration ``0003``) and is reached
through the store's public engines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from gateway.errors import StoreUnavailable
from gateway.store import Store
from gateway.store.engine import RELAXED
from gateway.store.models import Base


class As2MessageRow(Base):
    __tablename__ = "as2_messages"
    __table_args__ = (
        UniqueConstraint("direction", "partner_id", "message_id"),
        Index("ix_as2_messages_raw_id", "raw_id"),
        Index("ix_as2_messages_async_state", "async_state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: "in" (received) or "out" (sent)
    direction: Mapped[str] = mapped_column(String(8))
    partner_id: Mapped[str] = mapped_column(String(200))
    #: the AS2 Message-ID without angle brackets
    message_id: Mapped[str] = mapped_column(String(1000))
    as2_from: Mapped[str] = mapped_column(String(200))
    as2_to: Mapped[str] = mapped_column(String(200))
    raw_id: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime]
    #: "processed" or the error modifier ("authentication-failed", ...)
    status: Mapped[str] = mapped_column(String(64))
    disposition: Mapped[str] = mapped_column(String(500))
    mic: Mapped[str | None] = mapped_column(String(200))
    mic_alg: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    #: MDN as sent (received, for outbound): JSON list of [name, value] and the body
    mdn_headers: Mapped[str | None] = mapped_column(Text)
    mdn_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    mdn_message_id: Mapped[str | None] = mapped_column(String(1000))
    #: async MDN delivery: URL, "pending" / "delivered" / "expired", attempts, last error
    async_url: Mapped[str | None] = mapped_column(String(2000))
    async_state: Mapped[str | None] = mapped_column(String(16))
    async_attempts: Mapped[int] = mapped_column(Integer, default=0)
    async_next_at: Mapped[datetime | None]
    async_error: Mapped[str | None] = mapped_column(Text)


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    direction: str
    partner_id: str
    message_id: str
    as2_from: str
    as2_to: str
    raw_id: str | None
    at: datetime
    status: str
    disposition: str
    mic: str | None
    mic_alg: str | None
    reason: str | None
    mdn_headers: tuple[tuple[str, str], ...]
    mdn_body: bytes | None
    mdn_message_id: str | None
    async_url: str | None
    async_state: str | None
    async_attempts: int
    async_next_at: datetime | None
    async_error: str | None

    @property
    def ok(self) -> bool:
        return self.status == "processed"

    def mdn_bytes(self) -> bytes | None:
        if self.mdn_body is None:
            return None
        head = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self.mdn_headers)
        return head + b"\r\n" + self.mdn_body


def _entry(row: As2MessageRow | _Row) -> LedgerEntry:
    headers = tuple((str(k), str(v)) for k, v in json.loads(row.mdn_headers or "[]"))
    return LedgerEntry(
        id=row.id,
        direction=row.direction,
        partner_id=row.partner_id,
        message_id=row.message_id,
        as2_from=row.as2_from,
        as2_to=row.as2_to,
        raw_id=row.raw_id,
        at=row.at,
        status=row.status,
        disposition=row.disposition,
        mic=row.mic,
        mic_alg=row.mic_alg,
        reason=row.reason,
        mdn_headers=headers,
        mdn_body=row.mdn_body,
        mdn_message_id=row.mdn_message_id,
        async_url=row.async_url,
        async_state=row.async_state,
        async_attempts=row.async_attempts,
        async_next_at=row.async_next_at,
        async_error=row.async_error,
    )


class _Row:
    """A Core result row read by attribute, like an ORM row (for :func:`_entry`)."""

    __slots__ = ("_m",)

    def __init__(self, mapping: Mapping[Any, Any]) -> None:
        self._m = mapping

    def __getattr__(self, name: str) -> Any:
        return self._m[name]


# The receive path's statements, built once: SQLAlchemy Core on a connection, no ORM
# session, identity map or unit of work per message; compiled forms come from the
# engine's cache.
_T = cast(Table, As2MessageRow.__table__)
_BY_KEY = select(_T).where(
    _T.c.direction == bindparam("k_direction"),
    _T.c.partner_id == bindparam("k_partner_id"),
    _T.c.message_id == bindparam("k_message_id"),
)
_INSERT = insert(_T)
_REPLACE = update(_T).where(_T.c.id == bindparam("k_id"))


class Ledger:
    def __init__(self, store: Store) -> None:
        self._engine: Engine = store.engine
        self._writer = store.write_engine
        # The received-message ledger commits with relaxed durability (SQLite:
        # synchronous=NORMAL in WAL mode; PostgreSQL is unaffected). What a positive MDN
        # promises is already durable before the ledger is written: the raw request in
        # the archive (fsynced) and the inbox row (committed at synchronous=FULL). The
        # ledger row only lets a resend get the same MDN back. A NORMAL commit survives
        # a crash of the process; only a power or OS failure can lose it, and only
        # until the next FULL commit (the next message's inbox row) syncs the WAL
        # behind it. Should one be lost, the partner's resend is accepted again and
        # answered with a fresh positive MDN of the same MIC, and the pipeline's
        # deduplication (the same payload bytes, the same interchange control numbers)
        # still records no second interaction. So a lost ledger row costs one
        # duplicate raw message, never a lost or a doubled interaction; FULL would cost
        # an fsync per message on the hot path for that.
        self._relaxed_writer = store.write_engine.execution_options(**{RELAXED: True})

    def _session(self, write: bool) -> Session:
        return Session(self._writer if write else self._engine, expire_on_commit=False)

    def find(self, direction: str, partner_id: str, message_id: str) -> LedgerEntry | None:
        key = {"k_direction": direction, "k_partner_id": partner_id, "k_message_id": message_id}
        try:
            with self._engine.connect() as conn:
                row = conn.execute(_BY_KEY, key).mappings().first()
                return None if row is None else _entry(_Row(row))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: lookup failed: {exc}") from exc

    def record(
        self,
        *,
        direction: str,
        partner_id: str,
        message_id: str,
        as2_from: str,
        as2_to: str,
        raw_id: str | None,
        status: str,
        disposition: str,
        mic: str | None = None,
        mic_alg: str | None = None,
        reason: str | None = None,
        mdn_headers: tuple[tuple[str, str], ...] = (),
        mdn_body: bytes | None = None,
        mdn_message_id: str | None = None,
        async_url: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Record a message's outcome. Returns (entry, created).

        A positive entry already on file wins (a concurrent resend): it is returned with
        ``created`` False and nothing is changed. A negative one is replaced, because a
        resend after a refusal is processed again.
        """
        now = datetime.now(UTC)
        values: Mapping[str, object] = {
            "as2_from": as2_from,
            "as2_to": as2_to,
            "raw_id": raw_id,
            "at": now,
            "status": status,
            "disposition": disposition,
            "mic": mic,
            "mic_alg": mic_alg,
            "reason": reason,
            "mdn_headers": json.dumps([list(h) for h in mdn_headers]),
            "mdn_body": mdn_body,
            "mdn_message_id": mdn_message_id,
            "async_url": async_url,
            "async_state": "pending" if async_url else None,
            "async_attempts": 0,
            "async_next_at": now if async_url else None,
            "async_error": None,
        }
        key = {"k_direction": direction, "k_partner_id": partner_id, "k_message_id": message_id}
        engine = self._relaxed_writer if direction == "in" else self._writer
        try:
            with engine.begin() as conn:
                row = conn.execute(_BY_KEY, key).mappings().first()
                if row is not None:
                    if row["status"] == "processed":
                        return _entry(_Row(row)), False
                    conn.execute(_REPLACE, {"k_id": row["id"], **values})
                    return _entry(_Row({**row, **values})), True
                full = {
                    "id": uuid.uuid4().hex,
                    "direction": direction,
                    "partner_id": partner_id,
                    "message_id": message_id,
                    **values,
                }
                conn.execute(_INSERT, full)
                return _entry(_Row(full)), True
        except IntegrityError:
            # Lost a race with a concurrent resend on PostgreSQL: theirs is the answer.
            found = self.find(direction, partner_id, message_id)
            if found is None:
                raise StoreUnavailable("AS2 ledger: insert conflicted but no row found") from None
            return found, False
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: record failed: {exc}") from exc

    def due_async(self, now: datetime | None = None, limit: int = 50) -> list[LedgerEntry]:
        now = now or datetime.now(UTC)
        try:
            with self._session(False) as s, s.begin():
                rows = s.scalars(
                    select(As2MessageRow)
                    .where(
                        As2MessageRow.direction == "in",
                        As2MessageRow.async_state == "pending",
                        As2MessageRow.async_next_at <= now,
                    )
                    .order_by(As2MessageRow.async_next_at)
                    .limit(limit)
                ).all()
                return [_entry(r) for r in rows]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: async lookup failed: {exc}") from exc

    def async_result(
        self, entry_id: str, *, state: str, attempts: int, next_at: datetime | None, error: str | None
    ) -> None:
        try:
            with self._session(True) as s, s.begin():
                s.execute(
                    update(As2MessageRow)
                    .where(As2MessageRow.id == entry_id)
                    .values(
                        async_state=state, async_attempts=attempts, async_next_at=next_at, async_error=error
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: async update failed: {exc}") from exc

    def for_raw(self, raw_id: str) -> LedgerEntry | None:
        try:
            with self._session(False) as s, s.begin():
                row = s.scalars(select(As2MessageRow).where(As2MessageRow.raw_id == raw_id)).first()
                return None if row is None else _entry(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: lookup failed: {exc}") from exc

    # --- outbound messages ("out" rows) ---------------------------------------------------
    #
    # For a message we send, the async_* columns hold the send's own state:
    # async_state is one of OUT_STATES, async_attempts the attempts made so far,
    # async_next_at when the next one is due, async_error the last error; async_url is
    # the Receipt-Delivery-Option we gave (asynchronous MDN). ``status`` is
    # "processed" once a verified positive MDN with our MIC came back, otherwise the
    # last outcome ("pending", "awaiting-mdn", "sent", a disposition modifier or one of
    # our reason codes such as "mic-mismatch" or "http-503").

    def get(self, entry_id: str) -> LedgerEntry | None:
        try:
            with self._session(False) as s, s.begin():
                row = s.get(As2MessageRow, entry_id)
                return None if row is None else _entry(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: lookup failed: {exc}") from exc

    def record_outbound(
        self,
        *,
        partner_id: str,
        message_id: str,
        as2_from: str,
        as2_to: str,
        raw_id: str,
        mic: str | None,
        mic_alg: str | None,
        async_url: str | None,
        hold_until: datetime,
    ) -> LedgerEntry:
        """A new outbound message, claimed by its sender until ``hold_until``."""
        row = As2MessageRow(
            id=uuid.uuid4().hex,
            direction="out",
            partner_id=partner_id,
            message_id=message_id,
            as2_from=as2_from,
            as2_to=as2_to,
            raw_id=raw_id,
            at=datetime.now(UTC),
            status="pending",
            disposition="",
            mic=mic,
            mic_alg=mic_alg,
            reason=None,
            mdn_headers="[]",
            mdn_body=None,
            mdn_message_id=None,
            async_url=async_url,
            async_state="pending",
            async_attempts=0,
            async_next_at=hold_until,
            async_error=None,
        )
        try:
            with self._session(True) as s, s.begin():
                s.add(row)
                s.flush()
                return _entry(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: record failed: {exc}") from exc

    def claim_outbound(self, entry_id: str, now: datetime, hold_until: datetime) -> LedgerEntry | None:
        """Take a due pending send for one attempt (one node, one process at a time):
        its next time moves to ``hold_until`` so nobody else takes it meanwhile."""
        try:
            with self._session(True) as s, s.begin():
                result = s.execute(
                    update(As2MessageRow)
                    .where(
                        As2MessageRow.id == entry_id,
                        As2MessageRow.direction == "out",
                        As2MessageRow.async_state == "pending",
                        As2MessageRow.async_next_at <= now,
                    )
                    .values(async_next_at=hold_until)
                )
                if getattr(result, "rowcount", 0) != 1:
                    return None
                row = s.get(As2MessageRow, entry_id)
                return None if row is None else _entry(row)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: claim failed: {exc}") from exc

    def outbound_result(
        self,
        entry_id: str,
        *,
        state: str,
        status: str,
        attempts: int,
        next_at: datetime | None,
        error: str | None,
        disposition: str = "",
        mic: str | None = None,
        mic_alg: str | None = None,
        mdn_headers: tuple[tuple[str, str], ...] = (),
        mdn_body: bytes | None = None,
        mdn_message_id: str | None = None,
    ) -> None:
        values: dict[str, object] = {
            "async_state": state,
            "status": status,
            "async_attempts": attempts,
            "async_next_at": next_at,
            "async_error": error,
            "reason": error,
            "disposition": disposition[:500],
        }
        if mic is not None:
            values.update(mic=mic, mic_alg=mic_alg)
        if mdn_body is not None:
            values.update(
                mdn_headers=json.dumps([list(h) for h in mdn_headers]),
                mdn_body=mdn_body,
                mdn_message_id=mdn_message_id,
            )
        try:
            with self._session(True) as s, s.begin():
                s.execute(update(As2MessageRow).where(As2MessageRow.id == entry_id).values(**values))
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: outbound update failed: {exc}") from exc

    def pending_outbound(self, limit: int = 1000) -> list[LedgerEntry]:
        """Sends waiting for a retry, soonest first."""
        try:
            with self._session(False) as s, s.begin():
                rows = s.scalars(
                    select(As2MessageRow)
                    .where(As2MessageRow.direction == "out", As2MessageRow.async_state == "pending")
                    .order_by(As2MessageRow.async_next_at)
                    .limit(limit)
                ).all()
                return [_entry(r) for r in rows]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: outbound lookup failed: {exc}") from exc

    def list_outbound(
        self, *, partner_id: str | None = None, states: tuple[str, ...] = (), limit: int | None = None
    ) -> list[LedgerEntry]:
        """Outbound messages, newest first."""
        stmt = select(As2MessageRow).where(As2MessageRow.direction == "out")
        if partner_id:
            stmt = stmt.where(As2MessageRow.partner_id == partner_id)
        if states:
            stmt = stmt.where(As2MessageRow.async_state.in_(states))
        stmt = stmt.order_by(As2MessageRow.at.desc(), As2MessageRow.id)
        if limit is not None:
            stmt = stmt.limit(limit)
        try:
            with self._session(False) as s, s.begin():
                return [_entry(r) for r in s.scalars(stmt).all()]
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"AS2 ledger: outbound lookup failed: {exc}") from exc


#: states of an outbound message (``async_state`` of an "out" row)
OUT_STATES = ("pending", "awaiting-mdn", "done", "failed", "expired")


def raw_id_for_interaction(store: Store, interaction_id: str) -> str | None:
    """The raw message an interaction was stored from (read-only look-up)."""
    from gateway.store.models import Interaction

    try:
        with Session(store.engine) as s, s.begin():
            value = s.scalar(select(Interaction.raw_id).where(Interaction.id == interaction_id))
            return None if value is None else str(value)
    except SQLAlchemyError as exc:
        raise StoreUnavailable(f"AS2 ledger: interaction lookup failed: {exc}") from exc


def mdn_for_raw(store: Store, raw_id: str) -> LedgerEntry | None:
    """The AS2 facts of a raw message: Message-ID, disposition, MIC and the MDN we returned.

    For ``gateway interactions show``: the interaction's raw message id in, the ledger
    entry (``mdn_bytes()`` is the MDN as sent) out; None for a message not from AS2.
    """
    return Ledger(store).for_raw(raw_id)
