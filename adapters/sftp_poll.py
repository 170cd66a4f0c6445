"""SFTP polling: take partners' files from their servers (``[[sftp.drop]]``), and deliver
ours to their inbox folders (``[sftp.deliver]``).

Each drop is one APScheduler job (``max_instances=1``, coalesced) run on a bounded
thread pool (:data:`MAX_PARALLEL_DROPS` threads), so a slow or failing drop holds one
thread and never the others. A poll, while holding the store lease ``sftp:<partner>:<drop>``
(one gateway node at a time), logs in with the drop's pinned host key (any other key is
refused, with both fingerprints) and:

1. lists the folder; a file matching the patterns is *complete* when its size and mtime
   did not change across ``settle`` seconds (two listings at least that far apart), or,
   with ``marker = ".ok"``, when ``NAME.ok`` exists beside it;
2. downloads each complete file, streamed to a temporary file under the data directory,
   and hands it to ``accept`` (durable: archive + inbox row) as an envelope whose id is
   derived from (host, port, path, size, mtime); a file over ``limits.max_message_bytes``
   is refused, left in place and recorded (audit ``sftp_refused``);
3. only once ``accept`` returned: deletes the file, or renames it into the ``move:DIR``
   folder (created when missing), and removes its marker.

Exactly once, through crashes: the inbox row that ``accept`` commits carries the id
derived from the remote file, so after a crash between ``accept`` and the removal the
next poll finds the row (``store.get_raw``) and only finishes the removal.

A failed poll (connection, host key, login, store) is logged, audited (``sftp_error``)
and retried after a back-off that doubles from the interval up to ``backoff_max``. After
every poll the drop's status (last run, last success, last error, counts) is written as an
``sftp_drop_status`` audit event: ``gateway drops`` reads it without a running gateway.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paramiko

from adapters import Accept, Adapter, RunOptions
from adapters.polling import LeasedPoller, PollStatus, Tally
from gateway.archive import write_atomically
from gateway.config import Config, SftpDeliver, SftpDrop
from gateway.envelope import Channel, Envelope
from gateway.errors import ConfigError, GatewayError, StoreUnavailable, TooLarge
from gateway.logs import for_message
from gateway.sftp.client import Session, describe_error, open_session
from gateway.sftp.hostkeys import HostKeyRefused
from gateway.store import RawMessage, Store

log = logging.getLogger(__name__)

#: drops polled at the same time (threads of the scheduler's pool)
MAX_PARALLEL_DROPS = 4
#: a settle time up to this is waited for within one poll; longer ones span polls
INLINE_SETTLE_MAX = 120.0
_ID_NAMESPACE = uuid.UUID("0d6f5c8e-2b7a-4c3e-9f41-6a8e2d1b7c55")
_STATUS_EVENT = "sftp_drop_status"
_CHUNK = 256 * 1024
#: errors of one poll that are recorded and retried with back-off
POLL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,
    paramiko.SSHException,
    HostKeyRefused,
    StoreUnavailable,
    ConfigError,
)


#: errors of one delivery attempt
RETRY_ERRORS: tuple[type[BaseException], ...] = ()


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _parse_iso(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


# --- status ---------------------------------------------------------------------------------


def status_subject(drop: SftpDrop | str) -> str:
    return f"sftp:{drop.key if isinstance(drop, SftpDrop) else drop}"


def load_status(store: Store, drop: SftpDrop) -> PollStatus:
    """The drop's last recorded status (an ``sftp_drop_status`` audit event), or a blank one."""
    for entry in store.list_audit(subject=status_subject(drop), limit=20):
        if entry.event == _STATUS_EVENT:
            try:
                return PollStatus.from_json(drop.key, json.loads(entry.detail))
            except (ValueError, TypeError):
                break
    return PollStatus(drop.key)


@dataclass(frozen=True)
class RemoteFile:
    name: str
    path: str
    size: int
    mtime: int


# --- one drop ------------------------------------------------------------------------------


class DropPoller(LeasedPoller):
    """Polls one drop. Thread-safe: one poll at a time (a lock, and the store lease)."""

    kind = "sftp"
    source = "drop"
    errors = POLL_ERRORS

    def __init__(
        self,
        drop: SftpDrop,
        store: Store,
        *,
        data_dir: Path,
        max_bytes: int,
        holder: str,
        sessions: int = 1,
        record_status: bool = True,
    ) -> None:
        status = load_status(store, drop) if record_status else PollStatus(drop.key)
        status.next_attempt = None  # a new process may try at once
        super().__init__(
            name=drop.key,
            store=store,
            holder=holder,
            lease=f"sftp:{drop.key}",
            lease_seconds=max(300.0, 4 * drop.connection.timeout),
            status=status,
            backoff_base=drop.interval if drop.cron is None else 60.0,
            backoff_max=drop.backoff_max,
        )
        self.drop = drop
        self.data_dir = data_dir
        self.max_bytes = max_bytes
        #: SFTP sessions that download one poll's files in parallel
        self.sessions = max(1, sessions)
        self.record_status = record_status
        #: called right after ``accept`` returned, before the removal (tests: a crash)
        self.after_accept: Callable[[RawMessage], None] | None = None
        #: called once a file is in the inbox and removed or moved remotely
        self.on_done: Callable[[RawMessage, RemoteFile], None] | None = None
        #: name -> ((size, mtime), monotonic time first seen so)
        self._seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._refused_logged: set[str] = set()
        self._made_dirs: set[str] = set()

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc)

    def _where(self) -> str:
        c = self.drop.connection
        return f"{c.user}@{c.host}:{c.port}"

    def _status_changed(self) -> None:
        if self.record_status:
            self.store.audit(_STATUS_EVENT, status_subject(self.drop), json.dumps(self.status.to_json()))

    def _poll(self, accept: Accept, tally: Tally) -> None:
        first = open_session(self.drop.connection)
        extra: list[Session] = []
        try:
            ready = self._ready(first, tally)
            if not ready or self.stop_event.is_set():
                return
            if self.sessions == 1 or len(ready) < 2 * self.sessions:
                for item in ready:
                    if self.stop_event.is_set() or not self._renew():
                        break
                    self._take(first, item, accept, tally)
                return
            # several sessions: each takes every n-th file
            for _ in range(self.sessions - 1):
                extra.append(open_session(self.drop.connection))
            sessions = [first, *extra]
            errors: list[BaseException] = []
            renew_lock = threading.Lock()

            def work(index: int) -> None:
                try:
                    for n, item in enumerate(ready[index :: len(sessions)]):
                        if self.stop_event.is_set():
                            return
                        if n % 50 == 0:
                            with renew_lock:
                                if not self._renew():
                                    return
                        self._take(sessions[index], item, accept, tally)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the polling thread
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(sessions))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
        finally:
            for s in extra:
                s.close()
            first.close()

    def _renew(self) -> bool:
        if self.store.try_lease(self.lease, self.holder, self.lease_seconds):
            return True
        log.warning("sftp %s: lost the lease; stopping this poll", self.drop.key)
        return False

    # ---- which files are complete ------------------------------------------------------

    def _list(self, session: Session) -> tuple[dict[str, RemoteFile], set[str]]:
        """Files matching the patterns, and the names of every entry in the folder."""
        folder = self.drop.folder
        out: dict[str, RemoteFile] = {}
        names: set[str] = set()
        marker = self.drop.marker
        for attr in session.sftp.listdir_attr(folder):
            name = attr.filename
            names.add(name)
            if attr.st_mode is None or not stat.S_ISREG(attr.st_mode):
                continue
            if name.startswith(".") or (marker is not None and name.endswith(marker)):
                continue  # hidden or temporary files, and markers, are never documents
            if not any(fnmatch.fnmatchcase(name, p) for p in self.drop.patterns):
                continue
            out[name] = RemoteFile(
                name, posixpath.join(folder, name), int(attr.st_size or 0), int(attr.st_mtime or 0)
            )
        return out, names

    def _ready(self, session: Session, tally: Tally) -> list[RemoteFile]:
        files, names = self._list(session)
        if self.drop.marker is not None:
            marker = self.drop.marker
            ready = [f for f in files.values() if f.name + marker in names]
            tally.waiting += len(files) - len(ready)
            return sorted(ready, key=lambda f: (f.mtime, f.name))
        settle = self.drop.settle
        if settle <= 0:
            return sorted(files.values(), key=lambda f: (f.mtime, f.name))
        now = time.monotonic()
        self._observe(files, now)
        pending = [now - self._seen[n][1] for n in files if now - self._seen[n][1] < settle]
        if pending and settle <= INLINE_SETTLE_MAX and not self.stop_event.is_set():
            # wait until the newest observation has settled, then list again
            self.stop_event.wait(settle - min(pending) + 0.05)
            files, _ = self._list(session)
            now = time.monotonic()
            self._observe(files, now)
        ready = [f for f in files.values() if now - self._seen[f.name][1] >= settle]
        tally.waiting += len(files) - len(ready)
        return sorted(ready, key=lambda f: (f.mtime, f.name))

    def _observe(self, files: dict[str, RemoteFile], now: float) -> None:
        for name, f in files.items():
            seen = self._seen.get(name)
            if seen is None or seen[0] != (f.size, f.mtime):
                self._seen[name] = ((f.size, f.mtime), now)
        for name in list(self._seen):
            if name not in files:
                del self._seen[name]

    # ---- a file --------------------------------------------------------------------------

    def envelope_id(self, f: RemoteFile, sha256: str | None = None) -> str:
        """The inbox id of a remote file: (host, port, path, size, mtime), and the bytes'
        sha256 when another file had those same facts."""
        c = self.drop.connection
        parts = [c.host.lower(), str(c.port), f.path, str(f.size), str(f.mtime)]
        if sha256 is not None:
            parts.append(sha256)
        return uuid.uuid5(_ID_NAMESPACE, "\0".join(parts)).hex

    def _take(self, session: Session, f: RemoteFile, accept: Accept, tally: Tally) -> None:
        key = self.drop.key
        raw_id = self.envelope_id(f)
        mlog = for_message(log, raw_id, Channel.SFTP.value, self.drop.partner)
        if f.size > self.max_bytes:
            self._refuse(
                f, raw_id, f"{f.size} bytes exceed limits.max_message_bytes ({self.max_bytes})", tally
            )
            return
        try:
            downloaded = self._download(session, f)
        except FileNotFoundError:
            return  # gone meanwhile (taken by someone else)
        if downloaded is None:
            mlog.info("sftp %s: %s changed while downloading; taken once it settles", key, f.name)
            tally.add("waiting")
            return
        local, sha = downloaded
        try:
            self._take_downloaded(session, f, accept, tally, raw_id, local, sha)
        finally:
            local.unlink(missing_ok=True)

    def _take_downloaded(
        self,
        session: Session,
        f: RemoteFile,
        accept: Accept,
        tally: Tally,
        raw_id: str,
        local: Path,
        sha: str,
    ) -> None:
        key = self.drop.key
        mlog = for_message(log, raw_id, Channel.SFTP.value, self.drop.partner)
        existing = self.store.get_raw(raw_id)
        if existing is not None and existing.sha256 != sha:
            # Another file with the same path, size and mtime (second resolution) was
            # taken before: this one is new. Its id includes its bytes, so a crash
            # after accepting it is recognised just the same.
            raw_id = self.envelope_id(f, sha)
            mlog = for_message(log, raw_id, Channel.SFTP.value, self.drop.partner)
            existing = self.store.get_raw(raw_id)
        if existing is not None:
            mlog.info(
                "sftp %s: %s already in the inbox (an earlier poll stopped before removing it)", key, f.name
            )
            self._finish(session, f, raw_id)
            self._audit("sftp_recovered", f"{f.path}: already accepted, now removed", raw_id)
            tally.add("recognised")
            if self.on_done is not None:
                self.on_done(existing, f)
            return
        c = self.drop.connection
        envelope = Envelope(
            raw=b"",
            source=local,
            channel=Channel.SFTP,
            transport={
                "sftp_host": c.host,
                "sftp_port": str(c.port),
                "sftp_user": c.user,
                "sftp_path": f.path,
                "sftp_drop": key,
                "size": str(f.size),
                "mtime": _utc(f.mtime),
            },
            sender={"sftp": self.drop.name} if self.drop.partner else {},
            filename=f.name,
            id=raw_id,
        )
        try:
            accepted = accept(envelope)
        except TooLarge as exc:
            self._refuse(f, raw_id, exc.message, tally)
            return
        except ValueError:
            # a row with this id and other bytes appeared meanwhile (another node)
            mlog.warning(
                "sftp %s: %s has the id of another file's bytes; kept under an id of its own", key, f.name
            )
            accepted = accept(replace(envelope, id=uuid.uuid4().hex))
        if self.after_accept is not None:
            self.after_accept(accepted)
        self._finish(session, f, accepted.id)
        for_message(log, accepted.id, Channel.SFTP.value, self.drop.partner).info(
            "sftp %s: %s (%d bytes) taken, %s",
            key,
            f.name,
            f.size,
            "moved" if self.drop.move_to else "deleted",
        )
        tally.add("taken")
        if self.on_done is not None:
            self.on_done(accepted, f)

    def _refuse(self, f: RemoteFile, raw_id: str, reason: str, tally: Tally) -> None:
        tally.add("refused")
        if raw_id in self._refused_logged:
            return
        self._refused_logged.add(raw_id)
        for_message(log, raw_id, Channel.SFTP.value, self.drop.partner).error(
            "sftp %s: %s refused, left in place: %s", self.drop.key, f.name, reason
        )
        self._audit("sftp_refused", f"{f.path}: {reason}", raw_id)

    def _download(self, session: Session, f: RemoteFile) -> tuple[Path, str] | None:
        """The file streamed into a local temporary file: ``(its path, sha256)``, or None
        if it changed meanwhile. The caller removes the file."""
        tmp_dir = self.data_dir / "tmp" / "sftp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="download-")
        local = Path(name)
        digest = hashlib.sha256()
        ok = False
        try:
            with os.fdopen(fd, "wb") as out:
                size = 0
                with session.sftp.open(f.path, "rb") as remote:
                    if f.size > _CHUNK:
                        remote.prefetch(f.size)  # pipelined reads (a thread): worth it for large files only
                    while chunk := remote.read(_CHUNK):
                        size += len(chunk)
                        if size > f.size or size > self.max_bytes:
                            return None
                        digest.update(chunk)
                        out.write(chunk)
            if size != f.size:
                return None
            after = session.sftp.stat(f.path)
            if int(after.st_size or 0) != f.size or int(after.st_mtime or 0) != f.mtime:
                return None
            ok = True
            return local, digest.hexdigest()
        finally:
            if not ok:
                local.unlink(missing_ok=True)

    def _finish(self, session: Session, f: RemoteFile, raw_id: str) -> None:
        """The file is safely in the inbox: delete it, or move it to the archive folder."""
        sftp = session.sftp
        target_dir = self.drop.move_to
        try:
            if target_dir is None:
                sftp.remove(f.path)
            else:
                target_dir = (
                    target_dir if target_dir.startswith("/") else posixpath.join(self.drop.folder, target_dir)
                )
                self._ensure_dir(sftp, target_dir)
                target = posixpath.join(target_dir, f.name)
                try:
                    sftp.rename(f.path, target)
                except OSError:
                    if not _exists(sftp, f.path):
                        raise FileNotFoundError(f.path) from None
                    # the archive already holds a file of that name: keep both
                    sftp.rename(f.path, f"{target}.{raw_id[:12]}")
        except FileNotFoundError:
            log.info("sftp %s: %s was already gone", self.drop.key, f.path)
        if self.drop.marker is not None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(f.path + self.drop.marker)

    def _ensure_dir(self, sftp: paramiko.SFTPClient, path: str) -> None:
        if path in self._made_dirs:
            return
        parts = [p for p in path.split("/") if p]
        current = "/" if path.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part) if current else part
            if not _exists(sftp, current):
                with contextlib.suppress(OSError):
                    sftp.mkdir(current)
                if not _exists(sftp, current):
                    raise OSError(f"cannot create the archive folder {current}")
                self._audit("sftp_folder_created", current)
        self._made_dirs.add(path)


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


# --- delivering to partners ------------------------------------------------------------------


class DeliveryError(GatewayError):
    """A partner has no ``[sftp.deliver]``, or a delivery was refused for good."""


RETRY_ERRORS = (*POLL_ERRORS, DeliveryError)


@dataclass(frozen=True)
class Delivery:
    id: str
    partner: str
    name: str
    state: str  # "delivered", "pending", "failed"
    attempts: int
    error: str | None = None
    next_at: datetime | None = None
    path: str | None = None


def upload_atomically(session: Session, folder: str, name: str, data: bytes) -> str:
    """Upload ``data`` as ``folder/.name.part`` and rename it to ``folder/name``; the path.

    The final name appears only once every byte is written: a partner polling its inbox
    never sees a partial file under it.
    """
    if "/" in name or name in {"", ".", ".."}:
        raise DeliveryError(f"{name!r} is not a file name")
    sftp = session.sftp
    final = posixpath.join(folder, name)
    tmp = posixpath.join(folder, f".{name}.part")
    import io

    sftp.putfo(io.BytesIO(data), tmp, file_size=len(data), confirm=True)
    try:
        sftp.posix_rename(tmp, final)  # replaces an older file of that name atomically
    except OSError:
        # no posix-rename@openssh.com: a plain rename, which refuses an existing target
        sftp.rename(tmp, final)
    return final


class SftpDeliverer:
    """``deliver(partner, name, data)``: upload now, or keep it and retry on a schedule.

    Pending deliveries are files under ``<data>/sftp-outbox/``: the bytes (``ID.data``)
    and their state (``ID.json``, written atomically), so they survive a restart.
    """

    def __init__(self, config: Config, store: Store, data_dir: Path) -> None:
        self.config = config
        self.store = store
        self.outbox = data_dir / "sftp-outbox"
        self._lock = threading.Lock()

    def target(self, partner_id: str) -> SftpDeliver:
        profile = self.config.partner(partner_id)
        if profile is None:
            raise DeliveryError(f"no partner {partner_id!r}")
        if profile.sftp_deliver is None:
            raise DeliveryError(f"partner {partner_id!r} has no [sftp.deliver] in its profile")
        return profile.sftp_deliver

    def deliver(self, partner_id: str, name: str, data: bytes) -> Delivery:
        """Upload to the partner's inbox folder; on a failure keep it for a retry."""
        target = self.target(partner_id)
        delivery_id = uuid.uuid4().hex
        try:
            path = self._upload(target, name, data)
        except POLL_ERRORS as exc:
            reason = describe_error(exc)
            self.outbox.mkdir(parents=True, exist_ok=True)
            write_atomically(self.outbox / f"{delivery_id}.data", data)
            state = {
                "id": delivery_id,
                "partner": partner_id,
                "name": name,
                "created": datetime.now(UTC).isoformat(),
                "attempts": 1,
                "error": reason,
                "next_at": (datetime.now(UTC) + timedelta(seconds=60)).isoformat(),
            }
            write_atomically(self.outbox / f"{delivery_id}.json", json.dumps(state).encode())
            log.warning("sftp deliver %s to %s: %s; retried in 60s", name, partner_id, reason)
            self.store.audit(
                "sftp_deliver_pending", f"sftp-deliver:{partner_id}", f"{delivery_id} {name}: {reason}"
            )
            return Delivery(delivery_id, partner_id, name, "pending", 1, reason, _parse_iso(state["next_at"]))
        self.store.audit(
            "sftp_delivered", f"sftp-deliver:{partner_id}", f"{delivery_id} {path} {len(data)} bytes"
        )
        log.info("sftp deliver: %s to %s (%d bytes)", path, partner_id, len(data))
        return Delivery(delivery_id, partner_id, name, "delivered", 1, path=path)

    def _upload(self, target: SftpDeliver, name: str, data: bytes) -> str:
        sess = open_session(target.connection)
        try:
            return upload_atomically(sess, target.folder, name, data)
        finally:
            sess.close()

    def pending(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.outbox.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(path.read_text()))
        return out

    def retry_due(self, now: datetime | None = None) -> list[Delivery]:
        """Retry every pending delivery that is due (the scheduler calls this)."""
        now = now or datetime.now(UTC)
        done: list[Delivery] = []
        with self._lock:
            for state in self.pending():
                if state.get("failed") or (_parse_iso(state.get("next_at")) or now) > now:
                    continue
                done.append(self._retry(state, now))
        return done

    def _retry(self, state: dict[str, Any], now: datetime) -> Delivery:
        did, partner, name = state["id"], state["partner"], state["name"]
        meta, blob = self.outbox / f"{did}.json", self.outbox / f"{did}.data"
        attempts = int(state.get("attempts", 0)) + 1
        try:
            target = self.target(partner)
            path = self._upload(target, name, blob.read_bytes())
        except RETRY_ERRORS as exc:
            reason = describe_error(exc)
            created = _parse_iso(state.get("created")) or now
            retry_max = 3600.0
            give_up = 86400.0
            with contextlib.suppress(DeliveryError):
                t = self.target(partner)
                retry_max, give_up = t.retry_max_seconds, t.give_up_after
            wait = min(60.0 * 2 ** (attempts - 1), retry_max)
            failed = isinstance(exc, DeliveryError) or (now - created).total_seconds() > give_up
            state.update(attempts=attempts, error=reason, next_at=(now + timedelta(seconds=wait)).isoformat())
            if failed:
                state["failed"] = True
                self.store.audit("sftp_deliver_failed", f"sftp-deliver:{partner}", f"{did} {name}: {reason}")
                log.error("sftp deliver %s to %s: given up: %s", name, partner, reason)
            write_atomically(meta, json.dumps(state).encode())
            return Delivery(
                did,
                partner,
                name,
                "failed" if failed else "pending",
                attempts,
                reason,
                None if failed else now + timedelta(seconds=wait),
            )
        self.store.audit(
            "sftp_delivered", f"sftp-deliver:{partner}", f"{did} {path} after {attempts} attempt(s)"
        )
        meta.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        return Delivery(did, partner, name, "delivered", attempts, path=path)


# --- the adapter ------------------------------------------------------------------------------


def configured_drops(config: Config) -> list[SftpDrop]:
    return [d for p in config.partners if p.active for d in p.sftp_drops if d.enabled]


class SftpPollAdapter:
    """Polls every configured drop on its schedule and retries pending deliveries."""

    name = "sftp-poll"

    def __init__(
        self,
        config: Config,
        *,
        data_dir: Path,
        store: Store | None = None,
        holder: str | None = None,
        max_parallel: int = MAX_PARALLEL_DROPS,
    ) -> None:
        self.config = config
        self.data_dir = data_dir
        self.drops = configured_drops(config)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.max_parallel = max_parallel
        self._store = store
        self._own_store: Store | None = None
        self._scheduler: Any = None
        self._pollers: dict[str, DropPoller] = {}
        self.deliverer: SftpDeliverer | None = None

    def describe(self) -> str:
        parts = [
            f"{d.key} ({d.connection.user}@{d.connection.host}:{d.connection.port}:{d.folder}, "
            + (f"cron {d.cron!r}" if d.cron else f"every {d.interval:g}s")
            + ")"
            for d in self.drops
        ]
        return "sftp polling " + ("; ".join(parts) or "(no drops; deliveries only)")

    def _store_for(self, accept: Accept | None) -> Store:
        if self._store is not None:
            return self._store
        owner: Any = getattr(accept, "__self__", None)
        store = getattr(owner, "store", None)
        if isinstance(store, Store):
            self._store = store
            return store
        url = self.config.settings.store_url
        if self.config.settings.store_url_secret is not None:
            url = self.config.settings.store_url_secret.read()
        self._own_store = Store(url) if url else Store.for_data_dir(self.data_dir)
        self._own_store.migrate()
        self._store = self._own_store
        return self._own_store

    def pollers(self, accept: Accept | None = None) -> dict[str, DropPoller]:
        if not self._pollers:
            store = self._store_for(accept)
            limit = self.config.settings.limits.max_message_bytes
            self._pollers = {
                d.key: DropPoller(d, store, data_dir=self.data_dir, max_bytes=limit, holder=self.holder)
                for d in self.drops
            }
        return self._pollers

    def poll_once(self, accept: Accept, *, force: bool = False) -> int:
        """Poll every drop now (``gateway run --once``); the number of files taken."""
        return sum(p.poll(accept, force=force).taken for p in self.pollers(accept).values())

    def start(self, accept: Accept) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        logging.getLogger("apscheduler").setLevel(
            max(logging.getLogger("apscheduler").level, logging.WARNING)
        )
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(self.max_parallel)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        now = datetime.now(UTC)
        for key, poller in self.pollers(accept).items():
            d = poller.drop
            trigger = CronTrigger.from_crontab(d.cron) if d.cron else IntervalTrigger(seconds=d.interval)
            self._scheduler.add_job(
                poller.run_scheduled,
                trigger,
                args=[accept],
                id=f"sftp:{key}",
                name=f"sftp poll {key}",
                next_run_time=now,
            )
        self.deliverer = SftpDeliverer(self.config, self._store_for(accept), self.data_dir)
        self._scheduler.add_job(
            self._retry_deliveries,
            IntervalTrigger(seconds=30),
            id="sftp:deliver",
            name="sftp delivery retries",
        )
        self._scheduler.start()
        log.info("SFTP polling started: %s", self.describe())

    def _retry_deliveries(self) -> None:
        if self.deliverer is None:
            return
        try:
            self.deliverer.retry_due()
        except Exception:  # recorded; the schedule goes on
            log.exception("sftp delivery retries failed unexpectedly")

    def stop(self) -> None:
        for poller in self._pollers.values():
            poller.stop_event.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=True)
        if self._own_store is not None:
            self._own_store.close()

    def status(self) -> dict[str, PollStatus]:
        return {k: replace(p.status) for k, p in self._pollers.items()} or {
            d.key: PollStatus(d.key) for d in self.drops
        }


def factory(config: Config, options: RunOptions) -> Adapter | None:
    has_deliver = any(p.sftp_deliver is not None for p in config.partners)
    if not configured_drops(config) and not has_deliver:
        return None
    return SftpPollAdapter(config, data_dir=Path(options.data_dir))
