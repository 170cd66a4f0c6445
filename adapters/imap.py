"""Mailbox polling: take orders from existing IMAP mailboxes (``[[imap.mailbox]]``).

Each configured mailbox is one APScheduler job (``max_instances=1``, coalesced) that,
while holding the store lease ``imap:<name>`` (one gateway node at a time), logs in over
TLS (implicit, or STARTTLS; the server certificate is verified, against ``tls_ca`` for a
private CA) and for every polled folder:

1. reads ``UIDVALIDITY`` and the folder's state (``UIDVALIDITY`` and the last UID that is
   done) and searches for newer UIDs (only unseen messages unless ``include_seen``);
2. per message, in UID order: fetches the size and the Message-ID/From headers, then
   the whole message with ``BODY.PEEK[]`` (which does not set ``\\Seen``), and hands it
   to ``accept`` (durable: archive + inbox row) as an envelope whose id is derived from
   (host, user, folder, UIDVALIDITY, UID);
3. only once ``accept`` returned: sets ``\\Seen`` or moves the message to the processed
   folder (``UID MOVE``; ``COPY`` + ``\\Deleted`` + ``UID EXPUNGE`` without MOVE).

Exactly once, through crashes. The envelope id is a function of the message's IMAP
identity, so the inbox row that ``accept`` commits *is* the record that the message was
handed over: a crash after ``accept`` and before the flag/move leaves the message unseen,
the next poll finds the row (``store.get_raw``) and only finishes the flag/move, without
creating a second raw message. When ``UIDVALIDITY`` changes (a mailbox rebuilt or
restored: every UID is new) the folder is scanned again from the start, and messages
are recognised by their Message-ID and sender (or, without a Message-ID, their bytes)
already taken from this mailbox: an ``imap_taking`` audit event is written for that key
*before* ``accept`` and counts once the raw message it names exists.

State lives in the store (the audit table: ``imap_state`` events, one per folder and
poll that advanced, newest wins), not on one node's disk: it is shared by every node
that may take the lease over, backed up with the inbox, and needs no schema change.

A failed poll (connection, TLS, login, store) is logged, audited (``imap_error``) and
shown by :meth:`ImapAdapter.status`; the mailbox is then tried again after a back-off
that doubles from the interval up to ``backoff_max``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import imaplib
import json
import logging
import os
import re
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from adapters import Accept, Adapter, RunOptions
from adapters.polling import LeasedPoller, PollStatus, Tally
from gateway.config import Config, ImapMailbox
from gateway.envelope import Channel, Envelope
from gateway.errors import ConfigError, StoreUnavailable, TooLarge
from gateway.logs import for_message
from gateway.store import RawMessage, Store

log = logging.getLogger(__name__)

#: namespace of the envelope ids derived from a message's IMAP identity
_ID_NAMESPACE = uuid.UUID("5b0f8a52-6c1e-4d8e-9a43-1f3d2c7e9b10")
_STATE_EVENT = "imap_state"
_TAKING_EVENT = "imap_taking"


class ImapError(Exception):
    """The server refused a command, or answered something we cannot use."""


# --- small IMAP helpers ---------------------------------------------------------------


def encode_folder(name: str) -> str:
    """A folder name as an IMAP astring: modified UTF-7 (RFC 3501 5.1.3), quoted."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    text = "".join(out)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: Any) -> str:
    """The human part of an IMAP reply, for messages (never a payload)."""
    if isinstance(data, list | tuple):
        data = data[0] if data else b""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return str(data).strip()[:300]


def _ok(reply: tuple[str, Any], what: str) -> Any:
    typ, data = reply
    if typ != "OK":
        raise ImapError(f"{what}: {typ} {_text(data)}")
    return data


def _describe(exc: BaseException) -> str:
    """One line for the status, the log and the audit; never the password."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: server certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    if isinstance(exc, StoreUnavailable | ConfigError):
        return exc.message
    text = str(exc)
    match = re.fullmatch(r"b'(.*)'", text) or re.fullmatch(r'b"(.*)"', text)
    return (match.group(1) if match else text)[:300]


def _header_facts(header: bytes) -> tuple[str | None, str | None]:
    """(Message-ID, From address) from the header block, when present."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(header)
    message_id = " ".join(str(msg.get("Message-ID", "")).split()) or None
    sender = None
    for _, addr in getaddresses([str(v) for v in msg.get_all("From", [])]):
        if "@" in addr:
            sender = addr.strip().lower()
            break
    return message_id, sender


def _fetch_parts(data: Any) -> Iterator[tuple[bytes, bytes | None]]:
    """(response head, literal) pairs of a FETCH reply."""
    for item in data or []:
        if isinstance(item, tuple):
            yield item[0], item[1]
        elif isinstance(item, bytes) and item not in (b")",):
            yield item, None


class MailboxPoller(LeasedPoller):
    """Polls one mailbox. Thread-safe: one poll at a time (a lock, and the lease)."""

    kind = "imap"
    source = "mailbox"
    errors = (OSError, imaplib.IMAP4.error, ImapError, StoreUnavailable, ConfigError)

    def __init__(self, mailbox: ImapMailbox, store: Store, *, max_bytes: int, holder: str) -> None:
        super().__init__(
            name=mailbox.name,
            store=store,
            holder=holder,
            lease=f"imap:{mailbox.name}",
            lease_seconds=max(300.0, 4 * mailbox.timeout),
            status=PollStatus(mailbox.name),
            backoff_base=mailbox.interval,
            backoff_max=mailbox.backoff_max,
        )
        self.mailbox = mailbox
        self.max_bytes = max_bytes
        #: called right after ``accept`` returned, before the flag/move (tests: a crash)
        self.after_accept: Callable[[RawMessage], None] | None = None
        self._caps: set[str] = set()
        self._created: set[str] = set()

    def _describe(self, exc: BaseException) -> str:
        return _describe(exc)

    def _where(self) -> str:
        return f"{self.mailbox.user}@{self.mailbox.host}:{self.mailbox.port}"

    def _poll(self, accept: Accept, tally: Tally) -> None:
        conn = self._connect()
        try:
            for folder in self.mailbox.folders:
                if self.stop_event.is_set():
                    break
                self._poll_folder(conn, folder, accept, tally)
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()

    # ---- connection ------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        mb = self.mailbox
        ctx = ssl.create_default_context(cafile=str(mb.tls_ca) if mb.tls_ca else None)
        if not mb.tls_verify:
            log.warning("imap %s: tls_verify = false, the server is NOT authenticated", mb.name)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def _connect(self) -> imaplib.IMAP4:
        mb = self.mailbox
        password = mb.password.read()
        ctx = self.ssl_context()
        conn: imaplib.IMAP4
        if mb.tls == "implicit":
            conn = imaplib.IMAP4_SSL(mb.host, mb.port, ssl_context=ctx, timeout=mb.timeout)
        else:
            conn = imaplib.IMAP4(mb.host, mb.port, timeout=mb.timeout)
            try:
                # Raises when the server offers no STARTTLS: we never log in in clear.
                conn.starttls(ssl_context=ctx)
            except BaseException:
                with contextlib.suppress(OSError):
                    conn.shutdown()
                raise
        try:
            try:
                conn.login(mb.user, password)
            except imaplib.IMAP4.error as exc:
                raise ImapError(f"login as {mb.user} refused: {_describe(exc)}") from None
            caps = _ok(conn.capability(), "CAPABILITY")
            self._caps = {c.decode("ascii", "replace").upper() for c in caps[0].split()}
        except BaseException:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.shutdown()
            raise
        self._created = set()
        return conn

    # ---- a folder ----------------------------------------------------------------------

    def _state_subject(self, folder: str) -> str:
        key = folder if len(folder) <= 100 else hashlib.sha256(folder.encode()).hexdigest()
        return f"imap:{self.mailbox.name}:folder:{key}"

    def load_state(self, folder: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID done) of ``folder``, or None before its first poll."""
        for entry in self.store.list_audit(subject=self._state_subject(folder), limit=10):
            if entry.event == _STATE_EVENT:
                data = json.loads(entry.detail)
                return int(data["uidvalidity"]), int(data["last_uid"])
        return None

    def save_state(self, folder: str, uidvalidity: int, last_uid: int) -> None:
        detail = json.dumps({"uidvalidity": uidvalidity, "last_uid": last_uid, "folder": folder})
        self.store.audit(_STATE_EVENT, self._state_subject(folder), detail)

    def _poll_folder(self, conn: imaplib.IMAP4, folder: str, accept: Accept, tally: Tally) -> None:
        name = self.mailbox.name
        _ok(conn.select(encode_folder(folder)), f"SELECT {folder}")
        _, values = conn.response("UIDVALIDITY")
        if not values or not _text(values).isdigit():
            raise ImapError(f"SELECT {folder}: the server sent no UIDVALIDITY")
        uidvalidity = int(_text(values))
        state = self.load_state(folder)
        last_uid = 0
        if state is not None:
            if state[0] == uidvalidity:
                last_uid = state[1]
            else:
                log.warning(
                    "imap %s/%s: UIDVALIDITY changed (%d -> %d): scanning the folder again; "
                    "messages already taken are recognised by Message-ID",
                    name,
                    folder,
                    state[0],
                    uidvalidity,
                )
                self._audit("imap_uidvalidity", f"{folder}: {state[0]} -> {uidvalidity}")
        criteria = ["UID", f"{last_uid + 1}:*", "UNDELETED"]
        if not self.mailbox.include_seen:
            criteria.append("UNSEEN")
        found = _ok(conn.uid("SEARCH", *criteria), f"SEARCH {folder}")
        # "n:*" always matches the highest UID, even below n
        uids = sorted(u for u in (int(x) for x in _text(found).split()) if u > last_uid)
        done = last_uid
        try:
            for uid in uids:
                if self.stop_event.is_set():
                    break
                if not self.store.try_lease(self.lease, self.holder, self.lease_seconds):
                    log.warning("imap %s: lost the lease; stopping this poll", name)
                    break
                self._take(conn, folder, uidvalidity, uid, accept, tally)
                done = uid
        finally:
            if state is None or (uidvalidity, done) != state:
                with contextlib.suppress(StoreUnavailable):
                    self.save_state(folder, uidvalidity, done)

    # ---- a message -----------------------------------------------------------------------

    def envelope_id(self, folder: str, uidvalidity: int, uid: int) -> str:
        mb = self.mailbox
        ident = "\0".join((mb.host.lower(), str(mb.port), mb.user, folder, str(uidvalidity), str(uid)))
        return uuid.uuid5(_ID_NAMESPACE, ident).hex

    def _key(self, kind: str, value: str) -> str:
        return f"imap:{self.mailbox.name}:{kind}:{hashlib.sha256(value.encode('utf-8', 'surrogateescape')).hexdigest()[:40]}"

    def _known(self, key: str) -> str | None:
        """The raw message already taken from this mailbox under ``key``, if any."""
        for entry in self.store.list_audit(subject=key, limit=20):
            if entry.event == _TAKING_EVENT and self.store.get_raw(entry.detail) is not None:
                return entry.detail
        return None

    def _take(
        self, conn: imaplib.IMAP4, folder: str, uidvalidity: int, uid: int, accept: Accept, tally: Tally
    ) -> None:
        name = self.mailbox.name
        raw_id = self.envelope_id(folder, uidvalidity, uid)
        head = _ok(
            conn.uid("FETCH", str(uid), "(RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID FROM)])"),
            f"FETCH {uid}",
        )
        size, header = 0, b""
        for meta, literal in _fetch_parts(head):
            match = re.search(rb"RFC822\.SIZE (\d+)", meta)
            if match:
                size = int(match.group(1))
            if literal is not None:
                header = literal
        if not header and size == 0:
            return  # gone meanwhile (expunged by someone else)
        message_id, sender = _header_facts(header)
        mlog = for_message(log, raw_id, Channel.EMAIL.value)
        if self.store.get_raw(raw_id) is not None:
            mlog.info(
                "imap %s/%s uid %d: already in the inbox (an earlier poll stopped after accepting it)",
                name,
                folder,
                uid,
            )
            self._finish(conn, folder, uid)
            self._audit("imap_recovered", f"{folder} uid {uid}: already accepted, now finished", raw_id)
            tally.recognised += 1
            return
        key = self._key("mid", f"{message_id}\0{sender or ''}") if message_id else None
        known = self._known(key) if key else None
        if known is None and size > self.max_bytes:
            mlog.error(
                "imap %s/%s uid %d: %d bytes exceed limits.max_message_bytes (%d): left in the mailbox",
                name,
                folder,
                uid,
                size,
                self.max_bytes,
            )
            self._audit("imap_refused", f"{folder} uid {uid}: {size} bytes over the limit", raw_id)
            tally.refused += 1
            return
        raw = b""
        if known is None:
            raw = self._fetch_body(conn, uid)
            if key is None:
                key = self._key("sha", hashlib.sha256(raw).hexdigest())
                known = self._known(key)
        if known is not None:
            mlog.info(
                "imap %s/%s uid %d: the same message was taken before (raw %s)", name, folder, uid, known
            )
            self._finish(conn, folder, uid)
            self._audit("imap_recognised", f"{folder} uid {uid}: same as raw {known}", known)
            tally.recognised += 1
            return
        assert key is not None
        self.store.audit(_TAKING_EVENT, key, raw_id)
        transport = {
            "imap_mailbox": name,
            "imap_host": self.mailbox.host,
            "imap_user": self.mailbox.user,
            "imap_folder": folder,
            "imap_uid": str(uid),
            "imap_uidvalidity": str(uidvalidity),
        }
        if message_id:
            transport["message_id"] = message_id
        envelope = Envelope(
            raw=raw,
            channel=Channel.EMAIL,
            transport=transport,
            sender={"email": sender} if sender else {},
            id=raw_id,
        )
        try:
            accepted = accept(envelope)
        except TooLarge as exc:
            mlog.error("imap %s/%s uid %d: refused, left in the mailbox: %s", name, folder, uid, exc.message)
            self._audit("imap_refused", f"{folder} uid {uid}: {exc.message}", raw_id)
            tally.refused += 1
            return
        except ValueError:
            # An inbox row with this id and other bytes: the server reused a UID within
            # one UIDVALIDITY. Keep the message under an id of its own.
            mlog.warning("imap %s/%s uid %d: server reused the UID for other content", name, folder, uid)
            envelope = replace(envelope, id=uuid.uuid4().hex)
            self.store.audit(_TAKING_EVENT, key, envelope.id)
            accepted = accept(envelope)
        if self.after_accept is not None:
            self.after_accept(accepted)
        self._finish(conn, folder, uid)
        for_message(log, accepted.id, Channel.EMAIL.value).info(
            "imap %s/%s uid %d: %d bytes taken, %s",
            name,
            folder,
            uid,
            len(raw),
            "moved" if self.mailbox.move_to else "marked seen",
        )
        tally.taken += 1

    def _fetch_body(self, conn: imaplib.IMAP4, uid: int) -> bytes:
        data = _ok(conn.uid("FETCH", str(uid), "(BODY.PEEK[])"), f"FETCH {uid}")
        for meta, literal in _fetch_parts(data):
            if literal is not None and b"BODY[]" in meta:
                return literal
        raise ImapError(f"FETCH {uid}: the server sent no message body")

    def _finish(self, conn: imaplib.IMAP4, folder: str, uid: int) -> None:
        """The message is safely in the inbox: mark it seen, or move it."""
        target = self.mailbox.move_to
        if target is None:
            _ok(conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)"), f"STORE {uid} \\Seen")
            return
        self._ensure_folder(conn, target)
        self.move(conn, uid, target, use_move="MOVE" in self._caps)

    def move(self, conn: imaplib.IMAP4, uid: int, target: str, *, use_move: bool) -> None:
        """UID MOVE; without it COPY, \\Deleted and UID EXPUNGE (UIDPLUS) of this UID only."""
        folder = encode_folder(target)
        if use_move:
            _ok(conn.uid("MOVE", str(uid), folder), f"MOVE {uid}")
            return
        _ok(conn.uid("COPY", str(uid), folder), f"COPY {uid}")
        _ok(conn.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen \\Deleted)"), f"STORE {uid} \\Deleted")
        if "UIDPLUS" in self._caps:
            _ok(conn.uid("EXPUNGE", str(uid)), f"EXPUNGE {uid}")
        else:
            # A plain EXPUNGE would also remove what others marked \Deleted: leave it
            # flagged (it is not polled again: UNDELETED) for the mail client to expunge.
            log.warning(
                "imap %s: server has neither MOVE nor UIDPLUS; uid %d left \\Deleted", self.mailbox.name, uid
            )

    def _ensure_folder(self, conn: imaplib.IMAP4, folder: str) -> None:
        if folder in self._created:
            return
        encoded = encode_folder(folder)
        listed = _ok(conn.list('""', encoded), f"LIST {folder}")
        if not any(item for item in listed if item):
            typ, data = conn.create(encoded)
            if typ != "OK" and b"ALREADYEXISTS" not in (data[0] if data else b""):
                raise ImapError(f"CREATE {folder}: {typ} {_text(data)}")
            log.info("imap %s: created the processed folder %s", self.mailbox.name, folder)
            self._audit("imap_folder_created", folder)
        self._created.add(folder)


# --- the adapter ----------------------------------------------------------------------------


class ImapAdapter:
    """Polls the configured mailboxes on a schedule (APScheduler BackgroundScheduler)."""

    name = "imap"

    def __init__(
        self,
        config: Config,
        *,
        data_dir: Path | None = None,
        store: Store | None = None,
        holder: str | None = None,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.mailboxes = tuple(m for m in config.settings.imap.mailboxes if m.enabled)
        #: this node in the poll leases; a new one per process, so after a crash the
        #: lease of the dead process runs out (lease_seconds) before polling resumes
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self._own_store: Store | None = None
        self._scheduler: Any = None
        self._pollers: dict[str, MailboxPoller] = {}

    def describe(self) -> str:
        parts = [
            f"{m.name} ({m.user}@{m.host}:{m.port}, {', '.join(m.folders)}, "
            + (f"cron {m.cron!r}" if m.cron else f"every {m.interval:g}s")
            + ")"
            for m in self.mailboxes
        ]
        return "imap polling " + "; ".join(parts)

    def _store_for(self, accept: Accept | None) -> Store:
        if self._store is not None:
            return self._store
        # The pipeline's own store when ``accept`` is Pipeline.accept (one engine per
        # process); otherwise one opened from the configuration.
        owner: Any = getattr(accept, "__self__", None)
        store = getattr(owner, "store", None)
        if isinstance(store, Store):
            self._store = store
            return store
        url = self.config.settings.store_url
        if self.config.settings.store_url_secret is not None:
            url = self.config.settings.store_url_secret.read()
        self._own_store = Store(url) if url else Store.for_data_dir(self.data_dir or Path("data"))
        self._own_store.migrate()
        self._store = self._own_store
        return self._own_store

    def pollers(self, accept: Accept | None = None) -> dict[str, MailboxPoller]:
        if not self._pollers:
            store = self._store_for(accept)
            limit = self.config.settings.limits.max_message_bytes
            self._pollers = {
                m.name: MailboxPoller(m, store, max_bytes=limit, holder=self.holder) for m in self.mailboxes
            }
        return self._pollers

    def poll_once(self, accept: Accept, *, force: bool = False) -> int:
        """Poll every mailbox now (``gateway run --once``); the number of messages taken."""
        return sum(p.poll(accept, force=force).taken for p in self.pollers(accept).values())

    def start(self, accept: Accept) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        logging.getLogger("apscheduler").setLevel(
            max(logging.getLogger("apscheduler").level, logging.WARNING)
        )
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        now = datetime.now(UTC)
        for name, poller in self.pollers(accept).items():
            mb = poller.mailbox
            trigger = CronTrigger.from_crontab(mb.cron) if mb.cron else IntervalTrigger(seconds=mb.interval)
            self._scheduler.add_job(
                poller.run_scheduled,
                trigger,
                args=[accept],
                id=f"imap:{name}",
                name=f"imap poll {name}",
                next_run_time=now,
            )
        self._scheduler.start()
        log.info("IMAP polling started: %s", self.describe())

    def stop(self) -> None:
        for poller in self._pollers.values():
            poller.stop_event.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._own_store is not None:
            self._own_store.close()

    def status(self) -> dict[str, PollStatus]:
        """Per mailbox: last run, last success, last error, back-off and counts (copies)."""
        return {name: replace(p.status) for name, p in self._pollers.items()} or {
            m.name: PollStatus(m.name) for m in self.mailboxes
        }


def factory(config: Config, options: RunOptions) -> Adapter | None:
    if not any(m.enabled for m in config.settings.imap.mailboxes):
        return None
    return ImapAdapter(config, data_dir=Path(options.data_dir))
