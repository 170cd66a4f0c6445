"""Sending files to partners over AS2: record, send, verify the MDN, retry.

:class:`OutboundSender` does one send: the file is archived and recorded as an
OUTBOUND interaction (kind from the same parse + mapping as inbound documents, or
``other`` with the document facts when no mapping matches), the message is built as
the partner profile says and posted, and the outcome (MDN disposition, MIC check,
last error) goes to the AS2 ledger's "out" row. A temporary failure (connection
refused, timeout, HTTP 5xx, a negative MDN that is not about the message itself)
leaves the row ``pending`` with its next time; :class:`RetryScheduler` (APScheduler)
tries it again with exponential back-off until it succeeds or expires.

Why the retry state lives in the ledger and APScheduler only keeps time: APScheduler
3.x job stores must not be shared by several schedulers (two ``gateway run`` nodes
on one PostgreSQL store would both run every job), its SQLAlchemy job store pickles
jobs into a table outside the store's migrations, and the state must be readable by
``gateway send --status`` and ``gateway interactions show`` anyway. So each pending
send is one ledger row (attempts, next time, last error); the scheduler holds a
date job per pending row in memory, rebuilt from the ledger at start and by a
periodic sweep (which also picks up sends that ``gateway send`` left from another
process), and an attempt first claims its row with one conditional UPDATE, so a row
is attempted by one process at a time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from gateway.archive import Archive
from gateway.as2 import mdn, sender
from gateway.as2.errors import As2Error
from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.as2.profiles import As2Profiles, PartnerAs2Runtime
from gateway.as2.receiver import Response
from gateway.config import Config
from gateway.envelope import Channel, Envelope
from gateway.errors import GatewayError, InputError, StoreUnavailable, TooLarge
from gateway.mapping import MappingRegistry
from gateway.outbound import outbound_records
from gateway.parsers.base import DocumentUnit
from gateway.record import Direction, InteractionRecord, PartnerRef
from gateway.store import RawMessage, Store

log = logging.getLogger(__name__)


class SendError(InputError):
    """A send that cannot start: unknown partner, no URL, a file too large ..."""


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off between attempts: ``first`` seconds, doubling, at most ``maximum``;
    after ``expire_after`` since the first attempt the send is given up (``expired``)."""

    first: float = 60.0
    maximum: float = 3600.0
    expire_after: timedelta = timedelta(hours=24)

    def delay(self, attempts: int) -> float:
        return float(min(self.first * 2 ** max(attempts - 1, 0), self.maximum))


@dataclass(frozen=True)
class SendResult:
    partner_id: str
    message_id: str
    raw_id: str
    entry: LedgerEntry
    outcome: sender.Outcome | None
    records: tuple[InteractionRecord, ...] = ()
    file: str | None = None

    @property
    def ok(self) -> bool:
        return self.entry.async_state in {"done", "awaiting-mdn"}


def entry_json(entry: LedgerEntry) -> dict[str, Any]:
    """The AS2 facts of a ledger entry, for ``--json`` output."""
    return {
        "direction": entry.direction,
        "message_id": entry.message_id,
        "partner": entry.partner_id,
        "as2_from": entry.as2_from,
        "as2_to": entry.as2_to,
        "raw_id": entry.raw_id,
        "at": entry.at.isoformat(),
        "status": entry.status,
        "disposition": entry.disposition or None,
        "mic": entry.mic,
        "mic_alg": entry.mic_alg,
        "state": entry.async_state,
        "attempts": entry.async_attempts,
        "next_attempt_at": entry.async_next_at.isoformat() if entry.async_next_at else None,
        "last_error": entry.async_error if entry.direction == "out" else entry.reason,
        "mdn_url": entry.async_url,
        "mdn_message_id": entry.mdn_message_id,
        "mdn": entry.mdn_body is not None,
    }


def _flatten(units: Iterator[DocumentUnit]) -> Iterator[DocumentUnit]:
    for unit in units:
        yield unit
        stack = list(reversed(unit.children))
        while stack:
            child = stack.pop()
            yield child
            stack.extend(reversed(child.children))


class OutboundSender:
    def __init__(
        self,
        config: Config,
        profiles: As2Profiles,
        store: Store,
        archive: Archive,
        registry: MappingRegistry | None = None,
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 120.0,
        mdn_url: str | None = None,
        verify_tls: bool = True,
    ) -> None:
        self.config = config
        self.profiles = profiles
        self.store = store
        self.archive = archive
        self.registry = registry
        self.ledger = Ledger(store)
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.mdn_url = mdn_url
        self._client = httpx.Client(timeout=timeout, verify=verify_tls, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    # ---- one send ----------------------------------------------------------------------

    def partner(self, partner_id: str) -> PartnerAs2Runtime:
        partner = self.profiles.partner_by_id(partner_id)
        if partner is None:
            raise SendError(f"no active partner {partner_id!r} with an AS2 id (identities.as2)")
        if not partner.settings.url:
            raise SendError(f"partner {partner_id!r} has no AS2 URL (as2.url in its profile)")
        return partner

    def send_file(self, partner_id: str, path: Path) -> SendResult:
        limit = self.config.settings.limits.max_message_bytes
        size = path.stat().st_size
        if size > limit:
            raise TooLarge(f"{path}: {size} bytes exceeds limits.max_message_bytes ({limit})")
        result = self.send_bytes(partner_id, path.read_bytes(), path.name)
        return SendResult(
            result.partner_id,
            result.message_id,
            result.raw_id,
            result.entry,
            result.outcome,
            result.records,
            str(path),
        )

    def send_bytes(self, partner_id: str, data: bytes, filename: str | None) -> SendResult:
        """Record ``data`` as an outbound interaction and make the first attempt."""
        partner = self.partner(partner_id)
        limit = self.config.settings.limits.max_message_bytes
        if len(data) > limit:
            raise TooLarge(f"{len(data)} bytes exceeds limits.max_message_bytes ({limit})")
        settings = partner.settings
        async_url = self.mdn_url if settings.mdn_mode == "async" else None
        try:
            # Built before anything is stored: a profile we cannot honour stores nothing.
            message = sender.build_message(
                data,
                our_id=self.profiles.as2_id,
                partner=partner,
                signer=self.profiles.signing_key,
                filename=filename,
                async_url=async_url,
            )
        except ValueError as exc:
            raise SendError(f"partner {partner_id!r}: {exc}") from exc
        content_type = sender.media_type_for(data, filename)
        envelope = Envelope(
            raw=data,
            channel=Channel.AS2,
            filename=filename,
            transport={
                "direction": Direction.OUTBOUND.value,
                "as2_message_id": message.message_id,
                "as2_from": self.profiles.as2_id,
                "as2_to": partner.as2_ids[0],
                "as2_url": settings.url or "",
                "as2_content_type": content_type,
                "as2_layers": ",".join(message.layers) or "plain",
                "mic": message.mic,
                "mic_alg": mdn.MIC_ALGS[message.mic_alg],
            },
            sender={"as2": self.profiles.as2_id},
        )
        sha = self.archive.put(data)
        raw = self.store.add_raw(envelope, sha)
        claimed = self.store.claim_id(raw.id, "as2-send")
        records = self._records(raw, data, partner, message.message_id)
        if claimed is not None:
            self.store.store_interactions(
                raw.id,
                [(r, self._dedup_key(r, partner, message.message_id, i)) for i, r in enumerate(records)],
            )
        else:  # pragma: no cover - a worker took the row between add_raw and claim_id
            log.warning("outbound raw message %s was claimed by another worker", raw.id)
        now = datetime.now(UTC)
        entry = self.ledger.record_outbound(
            partner_id=partner.id,
            message_id=message.message_id,
            as2_from=self.profiles.as2_id,
            as2_to=partner.as2_ids[0],
            raw_id=raw.id,
            mic=message.mic,
            mic_alg=mdn.MIC_ALGS[message.mic_alg],
            async_url=async_url,
            hold_until=now + timedelta(seconds=self.timeout + 60),
        )
        outcome = self._post(message, partner)
        entry = self._apply(entry, outcome, entry.async_attempts + 1)
        return SendResult(partner.id, message.message_id, raw.id, entry, outcome, tuple(records))

    @staticmethod
    def _dedup_key(record: InteractionRecord, partner: PartnerAs2Runtime, message_id: str, index: int) -> str:
        # Every send is its own interaction; attempts of one send share the record.
        return f"OUT|as2|{partner.id}|{message_id}|{index}"

    def _records(
        self, raw: RawMessage, data: bytes, partner: PartnerAs2Runtime, message_id: str
    ) -> list[InteractionRecord]:
        """The outbound interaction(s): parsed and mapped like the pipeline does; a
        document no mapping takes (or that does not parse) becomes kind ``other``."""
        return outbound_records(
            raw,
            data,
            channel=Channel.AS2.value,
            partner=PartnerRef(partner.id, partner.name),
            our_ids={"as2": self.profiles.as2_id},
            references={"as2_message_id": message_id},
            registry=self.registry,
        )

    # ---- attempts -------------------------------------------------------------------------

    def _post(self, message: sender.OutboundMessage, partner: PartnerAs2Runtime) -> sender.Outcome:
        url = partner.settings.url or ""
        try:
            response = self._client.post(url, content=message.body, headers=dict(message.headers))
        except httpx.TimeoutException as exc:
            return sender.Outcome(
                sender.RETRY,
                "timeout",
                f"no answer from {url} within {self.timeout:.0f}s ({type(exc).__name__})",
            )
        except httpx.HTTPError as exc:
            return sender.Outcome(sender.RETRY, "connection-failed", f"{url}: {type(exc).__name__}: {exc}")
        headers = {k.lower(): v for k, v in response.headers.items()}
        return sender.interpret(
            response.status_code, headers, response.content, message=message, partner=partner
        )

    def _apply(self, entry: LedgerEntry, outcome: sender.Outcome, attempts: int) -> LedgerEntry:
        """Record one outcome; decide between done, waiting, another try and giving up."""
        now = datetime.now(UTC)
        next_at: datetime | None = None
        error = outcome.reason
        if outcome.result in {sender.PROCESSED, sender.SENT}:
            state = "done"
        elif outcome.result == sender.AWAITING_MDN:
            state = "awaiting-mdn"
        elif outcome.result == sender.RETRY:
            if now - entry.at >= self.policy.expire_after:
                state = "expired"
                error = f"{outcome.reason} (given up after {attempts} attempt(s))"
            else:
                state = "pending"
                next_at = now + timedelta(seconds=self.policy.delay(attempts))
        else:
            state = "failed"
        self.ledger.outbound_result(
            entry.id,
            state=state,
            status=outcome.status,
            attempts=attempts,
            next_at=next_at,
            error=error,
            disposition=outcome.disposition,
            mdn_headers=outcome.mdn_headers,
            mdn_body=outcome.mdn_body,
            mdn_message_id=outcome.mdn_message_id,
        )
        mlog = f"AS2 send {entry.message_id} to {entry.partner_id}"
        if state == "done":
            log.info("%s: %s", mlog, outcome.status)
        elif state == "awaiting-mdn":
            log.info("%s: accepted, MDN to follow asynchronously", mlog)
        elif state == "pending":
            assert next_at is not None
            log.warning("%s: %s; attempt %d failed, next at %s", mlog, error, attempts, next_at.isoformat())
        else:
            log.error("%s: %s: %s", mlog, state, error)
        updated = self.ledger.get(entry.id)
        assert updated is not None
        return updated

    def _payload(self, entry: LedgerEntry) -> tuple[bytes, RawMessage]:
        raw = self.store.get_raw(entry.raw_id or "")
        if raw is None:
            raise SendError(f"raw message {entry.raw_id} of AS2 send {entry.message_id} is gone")
        try:
            return self.archive.get(raw.sha256), raw
        except OSError as exc:
            raise SendError(f"raw message {raw.id} is missing from the archive: {exc.strerror}") from exc

    def attempt(self, entry: LedgerEntry) -> LedgerEntry:
        """Send an already recorded message again (same Message-ID); the caller has
        claimed the row (:meth:`Ledger.claim_outbound`)."""
        attempts = entry.async_attempts + 1
        try:
            partner = self.partner(entry.partner_id)
            data, raw = self._payload(entry)
            message = sender.build_message(
                data,
                our_id=self.profiles.as2_id,
                partner=partner,
                signer=self.profiles.signing_key,
                filename=raw.filename,
                content_type=raw.transport.get("as2_content_type"),
                message_id=entry.message_id,
                async_url=entry.async_url,
            )
        except (SendError, ValueError) as exc:
            text = exc.message if isinstance(exc, GatewayError) else str(exc)
            return self._apply(entry, sender.Outcome(sender.FAILED, "cannot-send", text), attempts)
        if message.mic != entry.mic:
            self.ledger.outbound_result(
                entry.id,
                state="pending",
                status=entry.status,
                attempts=entry.async_attempts,
                next_at=entry.async_next_at,
                error=entry.async_error,
                mic=message.mic,
                mic_alg=mdn.MIC_ALGS[message.mic_alg],
            )
        return self._apply(entry, self._post(message, partner), attempts)

    def retry_due(self, now: datetime | None = None) -> int:
        """Attempt every pending send that is due; returns how many were attempted."""
        now = now or datetime.now(UTC)
        done = 0
        for entry in self.ledger.pending_outbound():
            if entry.async_next_at is not None and entry.async_next_at > now:
                continue
            if self.retry(entry.id, now) is not None:
                done += 1
        return done

    def retry(self, entry_id: str, now: datetime | None = None) -> LedgerEntry | None:
        now = now or datetime.now(UTC)
        claimed = self.ledger.claim_outbound(entry_id, now, now + timedelta(seconds=self.timeout + 60))
        return None if claimed is None else self.attempt(claimed)

    # ---- asynchronous MDNs -------------------------------------------------------------

    def receive_mdn(self, partner: PartnerAs2Runtime, headers: Mapping[str, str], body: bytes) -> Response:
        """An MDN posted to our endpoint: match it to the message we sent, verify it."""
        try:
            unverified = mdn.parse(headers, body, verify=False)
        except As2Error as exc:
            return _text(400, f"not a readable MDN: {exc.message}")
        entry = self.ledger.find("out", partner.id, unverified.original_message_id)
        if entry is None:
            log.warning(
                "async MDN from %s for unknown message <%s>", partner.id, unverified.original_message_id
            )
            return _text(
                400, f"no message <{unverified.original_message_id}> was sent to {partner.as2_ids[0]}"
            )
        if entry.async_state == "done":
            return _text(200, "MDN already received")
        mic_content: bytes | None = None
        try:
            data, raw = self._payload(entry)
            mic_content = sender.mic_content_for(
                data,
                raw.filename,
                raw.transport.get("as2_content_type") or "application/octet-stream",
                partner,
            )
        except SendError:
            mic_content = None
        outcome = sender.check_mdn(
            headers,
            body,
            partner=partner,
            message_id=entry.message_id,
            mic=entry.mic,
            mic_alg=entry.mic_alg,
            mic_content=mic_content,
        )
        self._apply(entry, outcome, max(entry.async_attempts, 1))
        return _text(200, "MDN received")


def _text(status: int, text: str) -> Response:
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),), (text + "\n").encode())


class RetryScheduler:
    """APScheduler (3.x, BackgroundScheduler, in-memory jobs) driving the retries.

    One date job per pending send at its next time; a sweep every ``sweep_seconds``
    (and once at start) reads the pending sends from the ledger and (re)schedules them.
    """

    def __init__(self, outbound: OutboundSender, *, sweep_seconds: float = 30.0) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.outbound = outbound
        self.sweep_seconds = sweep_seconds
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        self._lock = threading.Lock()
        logging.getLogger("apscheduler").setLevel(
            max(logging.getLogger("apscheduler").level, logging.WARNING)
        )

    def start(self) -> None:
        self._scheduler.start()
        self._scheduler.add_job(
            self.sweep,
            "interval",
            seconds=self.sweep_seconds,
            id="as2-outbound-sweep",
            next_run_time=datetime.now(UTC),
        )

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def sweep(self) -> int:
        try:
            pending = self.outbound.ledger.pending_outbound()
        except StoreUnavailable as exc:
            log.error("AS2 retries: %s", exc.message)
            return 0
        for entry in pending:
            self.schedule(entry)
        return len(pending)

    def schedule(self, entry: LedgerEntry) -> None:
        now = datetime.now(UTC)
        when = max(entry.async_next_at or now, now)
        with self._lock:
            self._scheduler.add_job(
                self._run,
                "date",
                run_date=when,
                args=[entry.id],
                id=f"as2-send-{entry.id}",
                replace_existing=True,
            )

    def _run(self, entry_id: str) -> None:
        try:
            updated = self.outbound.retry(entry_id)
        except StoreUnavailable as exc:
            log.error("AS2 retry of %s: %s", entry_id, exc.message)
            return
        except Exception:  # a retry job must never kill the scheduler thread (logged)
            log.exception("AS2 retry of %s failed unexpectedly", entry_id)
            return
        if updated is not None and updated.async_state == "pending":
            self.schedule(updated)
