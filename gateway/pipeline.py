"""The way a message goes: accept durably, then detect, parse, map, validate, store.

:meth:`Pipeline.accept` is what adapters call before they acknowledge anything: when
it returns, the raw bytes are in the archive and the inbox row is committed.
:meth:`Pipeline.process` takes one inbox row through every stage; whatever fails is
quarantined with its stage and reason, so nothing accepted is lost.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from gateway.archive import Archive
from gateway.config import Config
from gateway.envelope import Envelope
from gateway.errors import EnvelopeError, GatewayError, InputError, Stage, StoreUnavailable, TooLarge
from gateway.logs import for_message
from gateway.mapping import MappingRegistry, MappingResult
from gateway.parsers.base import DocumentUnit
from gateway.parsers.detect import ParseOptions, parse_document
from gateway.partners import PartnerDirectory
from gateway.record import (
    Attachment,
    InteractionRecord,
    PartnerRef,
    Status,
)
from gateway.record_xml import validate_record
from gateway.store import (
    Outcome,
    PartnerRow,
    Quarantine,
    QuarantineEntry,
    RawMessage,
    RawState,
    SameBytes,
    Store,
    StoreOutcome,
    StoreRecords,
)

log = logging.getLogger(__name__)


@dataclass
class StageTimes:
    """Seconds spent per stage, for ``bench/`` and ``gateway run --stats``."""

    seconds: dict[str, float] = field(default_factory=dict)
    units: int = 0

    def add(self, stage: Stage, seconds: float) -> None:
        self.seconds[stage.value] = self.seconds.get(stage.value, 0.0) + seconds


@dataclass(frozen=True)
class ProcessResult:
    raw: RawMessage
    state: RawState
    #: the interactions stored now; empty for a large interchange that was spooled
    #: (see ``stored_count``), whose records are read back from the store instead
    records: tuple[InteractionRecord, ...] = ()
    duplicate_records: tuple[str, ...] = ()
    duplicate_of_raw: str | None = None
    quarantine: QuarantineEntry | None = None
    stored_count: int = 0
    duplicate_count: int = 0


#: more records than this from one raw message are spooled to disk before storing
SPOOL_AFTER = 2_000
_SPOOL_BATCH = 1_000

#: at most this many raw messages' outcomes per transaction (drain claims 16)
_RUN_LIMIT = 256

#: at most this many concurrent accepts share one group commit
ACCEPT_BATCH = 128


@dataclass(eq=False)
class _Accepting:
    """One caller of :meth:`Pipeline.accept` waiting for the group commit."""

    envelope: Envelope
    sha256: str
    #: archive directories its files were renamed into, not yet fsynced
    dirs: tuple[Path, ...]
    done: threading.Event = field(default_factory=threading.Event)
    #: set with ``done`` when this caller is to commit the next batch
    lead: bool = False
    raw: RawMessage | None = None
    error: BaseException | None = None

    def outcome(self) -> RawMessage:
        if self.error is not None:
            raise self.error
        assert self.raw is not None
        return self.raw


def _per_caller(exc: BaseException) -> BaseException:
    """An exception of its own for each caller of a failed batch (one exception object
    raised in several threads would collect all their tracebacks); StoreUnavailable
    (retry later) for whatever failed, with the original as its cause."""
    message = (
        exc.message if isinstance(exc, StoreUnavailable) else f"accept failed: {type(exc).__name__}: {exc}"
    )
    own = StoreUnavailable(message)
    own.__cause__ = exc
    return own


class _GroupCommit:
    """Group commit of concurrent accepts, leader/follower.

    Each caller has written (and fsynced, and renamed) its own archive file in its own
    thread, so those fsyncs run in parallel and a failed write fails only its caller.
    It then queues itself. The first caller to find no batch in progress becomes the
    leader: it takes everything queued (at most :data:`ACCEPT_BATCH`), fsyncs each
    directory renamed into once for the batch, adds all inbox rows in one transaction
    (:meth:`Store.add_raws`: one commit, one WAL fsync), wakes every caller of the batch
    with its RawMessage or its exception, and hands the leadership to the first caller
    queued meanwhile, if any. Nobody waits for a batch to fill up: a lone caller commits
    at once, exactly as a plain archive put + add_raw would.
    """

    def __init__(self, archive: Archive, store: Store, limit: int = ACCEPT_BATCH) -> None:
        self.archive = archive
        self.store = store
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: list[_Accepting] = []
        self._busy = False
        #: batches committed and accepts in them (for tests and ``bench/``)
        self.batches = 0
        self.accepted = 0

    def submit(self, me: _Accepting) -> RawMessage:
        with self._lock:
            self._queue.append(me)
            lead = not self._busy
            self._busy = True
        if not lead:
            me.done.wait()
            if not me.lead:
                return me.outcome()
        # Leader: our own entry is first in the queue (we found it empty or were
        # handed the leadership as its first entry), so this batch includes it.
        with self._lock:
            batch = self._queue[: self.limit]
            del self._queue[: self.limit]
        try:
            self._commit(batch)
        except BaseException as exc:  # a bug or an interrupt: nobody of the batch is accepted
            for item in batch:
                if item.raw is None and item.error is None:
                    item.error = exc if item is me else _per_caller(exc)
            raise
        finally:
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False
            for item in batch:
                if item is not me:
                    item.done.set()
        return me.outcome()

    def _count(self, accepted: int) -> None:
        with self._lock:
            self.batches += 1
            self.accepted += accepted

    def _commit(self, batch: list[_Accepting]) -> None:
        by_dir: dict[Path, list[_Accepting]] = {}
        for item in batch:
            for directory in item.dirs:
                by_dir.setdefault(directory, []).append(item)
        for directory, items in by_dir.items():
            try:
                self.archive.sync_dir(directory)
            except StoreUnavailable as exc:
                for item in items:
                    item.error = _per_caller(exc)
        ready = [item for item in batch if item.error is None]
        if len(ready) > 1:
            try:
                raws = self.store.add_raws([(item.envelope, item.sha256) for item in ready])
            except ValueError:
                pass  # an envelope id already on file with other content: each on its own, below
            except StoreUnavailable as exc:
                for item in ready:
                    item.error = _per_caller(exc)
                return
            else:
                for item, raw in zip(ready, raws, strict=True):
                    item.raw = raw
                self._count(len(ready))
                return
        for item in ready:  # a lone caller, or the batch that could not be added at once
            try:
                item.raw = self.store.add_raw(item.envelope, item.sha256)
            except (StoreUnavailable, ValueError) as exc:
                item.error = exc
            else:
                self._count(1)


class _Spool:
    """Records of one raw message in a private temporary file, in pickled batches.

    Only the gateway's own objects, written and read back by this process, go through
    pickle here; nothing received from outside is ever unpickled.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="gateway-spool-")  # noqa: SIM115 - closed by close()
        self._pending: list[tuple[InteractionRecord, str]] = []

    def add(self, item: tuple[InteractionRecord, str]) -> None:
        self._pending.append(item)
        if len(self._pending) >= _SPOOL_BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            pickle.dump(self._pending, self._file, protocol=pickle.HIGHEST_PROTOCOL)
            self._pending = []

    def batches(self) -> Iterator[list[tuple[InteractionRecord, str]]]:
        self._flush()
        self._file.seek(0)
        while True:
            try:
                batch: list[tuple[InteractionRecord, str]] = pickle.load(self._file)
            except EOFError:
                return
            yield batch

    def close(self) -> None:
        self._file.close()


class _Clock:
    def __init__(self, times: StageTimes) -> None:
        self.times = times

    def timed(self, stage: Stage, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.times.add(stage, time.perf_counter() - start)


@dataclass(frozen=True)
class _Prepared:
    """A claimed raw message taken through every stage but the store."""

    raw: RawMessage
    outcome: Outcome


@dataclass(frozen=True)
class _Spooled:
    """A large interchange whose records wait on disk; stored on its own."""

    raw: RawMessage
    spool: _Spool


def _result(prepared: _Prepared, stored: StoreOutcome | QuarantineEntry) -> ProcessResult:
    raw, outcome = prepared.raw, prepared.outcome
    mlog = for_message(log, raw.id, raw.channel)
    if isinstance(stored, QuarantineEntry):
        if raw.transport.get(Envelope.REJECTED):
            mlog.warning("refused on receipt: %s", stored.reason)
        else:
            mlog.warning("quarantined at %s: %s", stored.stage, stored.reason)
        return ProcessResult(raw, RawState.QUARANTINED, quarantine=stored)
    if isinstance(outcome, SameBytes):
        mlog.info("same bytes as %s: recorded as duplicate", outcome.duplicate_of)
        return ProcessResult(raw, RawState.DUPLICATE, duplicate_of_raw=outcome.duplicate_of)
    assert isinstance(outcome, StoreRecords)
    new_ids = {r.record_id for r in stored.records if r.duplicate_of is None}
    dup_ids = tuple(r.duplicate_of for r in stored.records if r.duplicate_of is not None)
    mlog.info("stored %d interaction(s), %d already on file", len(new_ids), len(dup_ids))
    return ProcessResult(
        raw,
        stored.state,
        records=tuple(rec for rec, _ in outcome.records if rec.id in new_ids),
        duplicate_records=dup_ids,
        duplicate_of_raw=stored.duplicate_of_raw,
        stored_count=len(new_ids),
        duplicate_count=len(dup_ids),
    )


class QuarantineSignal(Exception):  # a control-flow signal inside the pipeline, never seen by callers
    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason


def dedup_key(unit: DocumentUnit, partner: PartnerRef | None, raw_sha256: str) -> str:
    """What makes a document "the same document" when it is sent again.

    EDI: the same sender's interchange, group and set control numbers, and the same
    content: a resend carries the same numbers and the same segments, however it is
    wrapped, encoded or separated; a partner that reuses control numbers for a new
    document (after a translator reset, say) must not have it dropped as a duplicate.
    E-mail: the Message-ID from the same sender. Anything else: the raw bytes and the
    unit's position.
    """
    who = partner.id if partner is not None else _first_identity(unit.sender) or "unknown"
    if unit.standard in {"X12", "EDIFACT"} and unit.interchange_control_number:
        return "|".join(
            (
                unit.standard,
                who,
                unit.interchange_control_number,
                unit.group_control_number,
                unit.control_number,
                unit.doc_type,
                _content_fingerprint(unit),
            )
        )
    if unit.standard in {"EMAIL", "FAX"} and unit.control_number:
        return f"{unit.standard}|{who}|{unit.control_number}"
    return f"RAW|{raw_sha256}|{unit.index}"


def _content_fingerprint(unit: DocumentUnit) -> str:
    """sha256 (shortened) of the set or message itself, in canonical XML: independent
    of separators, line breaks and character set, blind to the envelope's dates."""
    body = unit.tree.find(".//Transaction") if unit.standard == "X12" else unit.tree.find(".//Message")
    data = etree.tostring(body if body is not None else unit.tree, method="c14n")
    return hashlib.sha256(data).hexdigest()[:32]


def _first_identity(ids: Mapping[str, str]) -> str:
    return next((f"{k}:{v}" for k, v in sorted(ids.items()) if v), "")


def _flatten(units: Iterator[DocumentUnit]) -> Iterator[tuple[DocumentUnit, DocumentUnit | None]]:
    """Each unit, then the documents found inside it (e-mail attachments), with their parent."""
    for unit in units:
        yield unit, None
        stack = [(child, unit) for child in reversed(unit.children)]
        while stack:
            child, parent = stack.pop()
            yield child, parent
            stack.extend((grand, child) for grand in reversed(child.children))


class Pipeline:
    def __init__(
        self,
        config: Config,
        store: Store,
        archive: Archive,
        registry: MappingRegistry,
    ) -> None:
        self.config = config
        self.store = store
        self.archive = archive
        self.registry = registry
        self.partners = PartnerDirectory(config.partners)
        self.times = StageTimes()
        self._reload_lock = threading.Lock()
        self._next_reload = 0.0
        self._group = _GroupCommit(archive, store)

    # ---- set-up ---------------------------------------------------------------------

    @classmethod
    def open(cls, config: Config, data_dir: Path) -> Pipeline:
        """Open the store (migrating it), the archive and the mappings for ``config``."""
        url = config.settings.store_url
        if config.settings.store_url_secret is not None:
            url = config.settings.store_url_secret.read()
        data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(url) if url else Store.for_data_dir(data_dir)
        store.migrate()
        store.sync_partners([PartnerRow(p.id, p.name, p.identities) for p in config.partners if p.active])
        registry = MappingRegistry(config.settings.mappings_dir)
        for problem in registry.load():
            log.warning("mapping file problem: %s", problem)
        return cls(config, store, Archive(data_dir / "archive"), registry)

    def close(self) -> None:
        self.store.close()

    # ---- durable acceptance ---------------------------------------------------------

    def accept(self, envelope: Envelope) -> RawMessage:
        """Archive the raw bytes and commit the inbox row. Only then may the sender be told.

        Raises :class:`TooLarge` (refuse permanently) or :class:`StoreUnavailable`
        (tell the sender to retry); anything else is a bug and also means "not accepted".

        Thread-safe; concurrent calls are group-committed: each writes and fsyncs its
        own archive file, then one of them fsyncs the directories and commits the inbox
        rows of all that are waiting in one transaction (see :class:`_GroupCommit`).
        """
        limit = self.config.settings.limits.max_message_bytes
        if envelope.size > limit:
            raise TooLarge(f"message of {envelope.size} bytes exceeds the limit of {limit} bytes")
        start = time.perf_counter()
        dirs: list[Path] = []
        if envelope.original is not None:
            original_sha, original_dir = self.archive.write(envelope.original)
            dirs.append(original_dir)
            envelope = replace(envelope, transport={**envelope.transport, "original_sha256": original_sha})
        if envelope.source is not None:
            sha, _size, directory = self.archive.write_file(envelope.source)
        else:
            sha, directory = self.archive.write(envelope.raw)
        if directory not in dirs:
            dirs.append(directory)
        self.times.add(Stage.ARCHIVE, time.perf_counter() - start)
        start = time.perf_counter()
        try:
            # The directory fsyncs and the inbox row: committed together with whatever
            # other threads accept meanwhile (see _GroupCommit).
            raw = self._group.submit(_Accepting(envelope, sha, tuple(dirs)))
        finally:
            self.times.add(Stage.RECEIVE, time.perf_counter() - start)
        for_message(log, envelope.id, envelope.channel.value).info(
            "accepted %d bytes sha256=%s", envelope.size, sha
        )
        return raw

    # ---- processing -----------------------------------------------------------------

    def maybe_reload_mappings(self) -> None:
        now = time.monotonic()
        if now < self._next_reload:
            return
        with self._reload_lock:
            if now < self._next_reload:
                return
            self._next_reload = now + self.config.settings.processing.mapping_reload_seconds
            for problem in self.registry.reload_if_changed():
                log.error("mapping file rejected, last good version stays active: %s", problem)

    def process(self, raw: RawMessage) -> ProcessResult:
        """Take one claimed inbox row through every stage. Never raises for bad input."""
        return self.process_batch([raw])[0]

    def process_batch(self, raws: Sequence[RawMessage]) -> list[ProcessResult]:
        """:meth:`process` for several claimed inbox rows, with the same results as one
        after the other in the given order, but their outcomes committed together.

        The raw-bytes duplicate check is one query for the whole run, and the outcomes
        of the run are one transaction. A run ends early (and the next one starts after
        its commit) at a raw whose bytes equal those of an earlier raw of the run, since
        whether it is a duplicate depends on what became of that one; a large spooled
        interchange is stored on its own, after the outcomes before it.
        """
        results: list[ProcessResult] = []
        start = 0
        while start < len(raws):
            start = self._process_run(raws, start, results)
        return results

    def _process_run(self, raws: Sequence[RawMessage], start: int, results: list[ProcessResult]) -> int:
        """Process ``raws[start:]`` up to the next same-bytes pair; return where it stopped."""
        todo = raws[start : start + _RUN_LIMIT]
        checked = [raw.sha256 for raw in todo if not raw.transport.get(Envelope.REJECTED)]
        # Claimed rows are never STORED, so excluding the run changes nothing for them;
        # it keeps a message from being called a duplicate of itself (CLI re-ingest).
        on_file = self.store.first_raws_with_sha(checked, exclude=[raw.id for raw in todo]) if checked else {}
        pending: list[_Prepared] = []
        undecided: set[str] = set()
        end = start
        for raw in todo:
            if not raw.transport.get(Envelope.REJECTED) and raw.sha256 not in on_file:
                if raw.sha256 in undecided:
                    break
                undecided.add(raw.sha256)
            end += 1
            prepared = self._prepare(raw, on_file.get(raw.sha256))
            if isinstance(prepared, _Spooled):
                results.extend(self._commit(pending))
                pending = []
                results.append(self._store_spooled(prepared))
            else:
                pending.append(prepared)
        results.extend(self._commit(pending))
        return end

    def _prepare(self, raw: RawMessage, same_bytes: RawMessage | None) -> _Prepared | _Spooled:
        """Every stage but the store: what the store is to record for ``raw``."""
        rejected = raw.transport.get(Envelope.REJECTED)
        if rejected:
            # Refused on the wire (the sender was told); kept so an administrator sees it.
            return _Prepared(raw, Quarantine(raw.id, Stage.RECEIVE.value, rejected))
        self.maybe_reload_mappings()
        if same_bytes is not None:
            return _Prepared(raw, SameBytes(raw.id, same_bytes.id))
        records: list[tuple[InteractionRecord, str]] = []
        spool: _Spool | None = None
        try:
            for item in self._iter_records(raw):
                if spool is not None:
                    spool.add(item)
                    continue
                records.append(item)
                if len(records) >= SPOOL_AFTER:
                    # A large interchange: keep the records on disk until the store takes
                    # them, so memory stays flat however many sets it holds.
                    spool = _Spool()
                    for kept in records:
                        spool.add(kept)
                    records = []
        except QuarantineSignal as signal:
            if spool is not None:
                spool.close()
            return _Prepared(raw, Quarantine(raw.id, signal.stage.value, signal.reason))
        if spool is not None:
            return _Spooled(raw, spool)
        return _Prepared(raw, StoreRecords(raw.id, records))

    def _commit(self, prepared: Sequence[_Prepared]) -> list[ProcessResult]:
        """Record the outcomes of ``prepared`` in one transaction."""
        if not prepared:
            return []
        start = time.perf_counter()
        try:
            outcomes = self.store.store_outcomes([p.outcome for p in prepared])
        except StoreUnavailable:
            raise
        except GatewayError as exc:
            if len(prepared) > 1:
                # One of them cannot be stored: each on its own, so that only that one
                # is quarantined, as one after the other would have done.
                return [result for p in prepared for result in self._commit([p])]
            (only,) = prepared
            if not isinstance(only.outcome, StoreRecords):
                raise
            entry = self.store.quarantine(only.raw.id, Stage.STORE.value, exc.message)
            return [ProcessResult(only.raw, RawState.QUARANTINED, quarantine=entry)]
        finally:
            self.times.add(Stage.STORE, time.perf_counter() - start)
        return [_result(p, outcome) for p, outcome in zip(prepared, outcomes, strict=True)]

    def _store_spooled(self, spooled: _Spooled) -> ProcessResult:
        raw, spool = spooled.raw, spooled.spool
        start = time.perf_counter()
        try:
            outcome = self.store.store_interaction_batches(raw.id, spool.batches())
        except StoreUnavailable:
            raise
        except GatewayError as exc:
            entry = self.store.quarantine(raw.id, Stage.STORE.value, exc.message)
            return ProcessResult(raw, RawState.QUARANTINED, quarantine=entry)
        finally:
            self.times.add(Stage.STORE, time.perf_counter() - start)
            spool.close()
        new_count = sum(1 for r in outcome.records if r.duplicate_of is None)
        dup_count = len(outcome.records) - new_count
        for_message(log, raw.id, raw.channel).info(
            "stored %d interaction(s), %d already on file", new_count, dup_count
        )
        return ProcessResult(
            raw,
            outcome.state,
            duplicate_of_raw=outcome.duplicate_of_raw,
            stored_count=new_count,
            duplicate_count=dup_count,
        )

    def _iter_records(self, raw: RawMessage) -> Iterator[tuple[InteractionRecord, str]]:
        """Parse and map lazily. Raises QuarantineSignal, possibly after yielding records
        (an envelope trailer is checked after the sets it closes): consume it all."""
        times = self.times
        try:
            data = self.archive.get(raw.sha256)
        except OSError as exc:
            raise QuarantineSignal(
                Stage.ARCHIVE, f"raw message missing from the archive: {exc.strerror}"
            ) from exc
        facts = dict(raw.transport)
        stage = Stage.DETECT
        produced = 0
        ids_by_unit: dict[int, str] = {}
        warnings: list[EnvelopeError] = []
        options = ParseOptions(
            strict_edifact_envelopes=self.config.settings.processing.strict_edifact_envelopes,
            on_problem=warnings.append,
            fax_rules=self.config.fax_rules,
            fax_default_country=self.config.settings.fax_default_country,
            max_mime_parts=self.config.settings.limits.max_mime_parts,
        )
        broken_attachments: list[str] = []
        try:
            units = _flatten(
                parse_document(data, channel=raw.channel, filename=raw.filename, facts=facts, options=options)
            )
            stage = Stage.PARSE
            while True:
                t0 = time.perf_counter()
                try:
                    unit, parent = next(units)
                except StopIteration:
                    times.add(Stage.PARSE, time.perf_counter() - t0)
                    break
                times.add(Stage.PARSE, time.perf_counter() - t0)
                if parent is None:
                    ids_by_unit.clear()  # only the current top-level unit's family is linked
                stage = Stage.MAP
                item = self._record_for(raw, unit, parent, ids_by_unit)
                broken_attachments.extend(f"{n}: {r}" for n, r in unit.problems)
                times.units += 1
                produced += 1
                stage = Stage.PARSE
                yield item
        except InputError as exc:
            raise QuarantineSignal(exc.stage or stage, exc.message) from exc
        except GatewayError as exc:
            raise QuarantineSignal(exc.stage or stage, exc.message) from exc
        except (ValueError, LookupError, TypeError, RecursionError) as exc:
            # A parser or mapping bug must not lose the message: keep it, say what happened.
            log.exception("unexpected failure at %s for %s", stage.value, raw.id)
            raise QuarantineSignal(
                stage, f"internal error at {stage.value}: {type(exc).__name__}: {exc}"
            ) from exc
        if not produced:
            raise QuarantineSignal(Stage.PARSE, "the message holds no business document")
        for warning in warnings:
            for_message(log, raw.id, raw.channel).warning(
                "envelope accepted with a fault: %s", warning.message
            )
            self.store.audit("envelope_warning", raw.id, warning.message)
        for problem in broken_attachments:
            # The e-mail is stored; the attachment that looked like an order but did not
            # parse must still reach an administrator (record field + audit + log).
            for_message(log, raw.id, raw.channel).warning("attachment not parsed: %s", problem)
            self.store.audit("attachment_error", raw.id, problem)

    def _record_for(
        self,
        raw: RawMessage,
        unit: DocumentUnit,
        parent: DocumentUnit | None,
        ids_by_unit: dict[int, str],
    ) -> tuple[InteractionRecord, str]:
        # A document attached to an e-mail is from whoever sent the e-mail unless its
        # own identifiers (ISA, UNB) say otherwise: those take precedence by kind.
        partner = self.partners.resolve(unit.sender, raw.sender, parent.sender if parent is not None else {})
        t0 = time.perf_counter()
        mapping = self.registry.select(unit, channel=raw.channel, partner=partner.id if partner else None)
        result: MappingResult = mapping.apply(unit)
        self.times.add(Stage.MAP, time.perf_counter() - t0)
        sender = dict(raw.sender)
        sender.update({k: v for k, v in unit.sender.items() if v})
        references = dict(result.references)
        if parent is not None and id(parent) in ids_by_unit:
            references.setdefault("in_message", ids_by_unit[id(parent)])
        if unit.problems:
            references["attachment_errors"] = "; ".join(f"{n}: {r}" for n, r in unit.problems)[:2000]
        record = result.to_record(
            id=uuid.uuid4().hex,
            channel=raw.channel,
            received_at=raw.received_at,
            raw_sha256=raw.sha256,
            status=Status.RECEIVED if partner is not None else Status.UNRESOLVED,
            partner=partner,
            sender=sender,
            references=references,
            attachments=tuple(
                Attachment(
                    filename=str(a["filename"]) if a.get("filename") else None,
                    media_type=str(a.get("media_type") or "application/octet-stream"),
                    size=int(a.get("size") or 0),
                    sha256=str(a["sha256"]),
                )
                for a in unit.attachments
            ),
        )
        if unit.extra:
            record = replace(record, extra={**record.extra, **unit.extra})
        ids_by_unit[id(unit)] = record.id
        t0 = time.perf_counter()
        validate_record(record)
        self.times.add(Stage.VALIDATE, time.perf_counter() - t0)
        return record, dedup_key(unit, partner, raw.sha256)

    # ---- the inbox worker -----------------------------------------------------------

    def recover(self) -> int:
        """At start: claims left by a crashed process go back to the queue."""
        count = self.store.recover()
        if count:
            log.warning("recovered %d message(s) left in processing by an earlier run", count)
        return count

    def drain(self, worker: str = "cli", on_result: Callable[[ProcessResult], None] | None = None) -> int:
        """Process every pending inbox row; return how many were processed."""
        done = 0
        while True:
            batch = self.store.claim(worker, limit=16)
            if not batch:
                return done
            for result in self.process_batch(batch):
                done += 1
                if on_result is not None:
                    on_result(result)

    def run_worker(self, stop: threading.Event, worker: str | None = None) -> None:
        """Claim and process inbox rows until ``stop`` is set."""
        name = worker or f"worker-{uuid.uuid4().hex[:8]}"
        interval = self.config.settings.processing.poll_interval
        stale = self.config.settings.processing.stale_claim_seconds
        next_stale_check = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_stale_check:
                    from datetime import timedelta

                    self.store.recover(older_than=timedelta(seconds=stale))
                    next_stale_check = time.monotonic() + stale / 2
                if self.drain(name) == 0:
                    stop.wait(interval)
            except StoreUnavailable as exc:
                log.error("store unavailable, retrying in %.0fs: %s", interval * 10, exc.message)
                stop.wait(interval * 10)

    def replay(self, raw_id: str) -> ProcessResult:
        """Run a quarantined message again with today's mappings and profiles."""
        if self.store.get_raw(raw_id) is None:
            raise InputError(f"no raw message {raw_id}")
        self.store.requeue(raw_id)
        raw = self.store.claim_id(raw_id, f"replay-{raw_id[:8]}")
        if raw is None:
            raise InputError(f"raw message {raw_id} is being processed by another worker")
        return self.process(raw)


def now_utc() -> datetime:
    return datetime.now(UTC)
