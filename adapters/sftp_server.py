"""The embedded SFTP server: a drop for partners who push files to us.

paramiko's server side. Public-key authentication only, per partner login
(``[[sftp.users]]`` in its profile: each user belongs to exactly one partner); the
``sftp`` subsystem only (no shell, exec, forwarding). Each user sees one flat folder,
``ROOT/USER``, as ``/``: every path is resolved against it, a path that leaves it
(``..`` above it), names a sub-folder, or meets a symbolic link gets "permission
denied"; no link is ever followed or created, no folder made.

An upload is written to a temporary file outside the partner's folder while it is
open. When the partner closes the handle the upload is complete: its bytes are
handed to ``accept`` (archive fsync + inbox commit) with sender ``{"sftp":
"server:USER"}`` (an identity the partner's profile carries automatically), and
only when that returned is the temporary file removed and the close answered OK.
If ``accept`` fails (the store is unavailable) the close answers a failure and the
file stays, under its name, in the partner's folder: the partner sees it pending,
may upload it again, and the server retries it every ``retry_interval`` seconds.
An upload over ``limits.max_message_bytes`` fails at the write that crosses the limit
and is discarded. Partners may list and read their pending files, remove and rename
them. See docs/sftp.md, "Hosting a drop".
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.common import (
    AUTH_FAILED,
    AUTH_SUCCESSFUL,
    OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED,
    OPEN_SUCCEEDED,
)
from paramiko.message import Message
from paramiko.sftp import (
    CMD_CLOSE,
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)

from adapters import Accept, Adapter, RunOptions
from gateway.config import Config, parse_address
from gateway.envelope import Channel, Envelope
from gateway.errors import GatewayError, TooLarge
from gateway.logs import for_message
from gateway.store import Store

if TYPE_CHECKING:
    from typing_extensions import Buffer

log = logging.getLogger(__name__)

#: failed authentications after which a connection is closed (OpenSSH MaxAuthTries)
MAX_AUTH_TRIES = 6
#: seconds a connection may take to authenticate (OpenSSH LoginGraceTime)
LOGIN_GRACE = 60.0

Audit = Callable[[str, str, str], None]


class Refused(Exception):
    """An SFTP request refused with ``code`` and a reason for the client."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _oserror(exc: OSError) -> Refused:
    if exc.errno == errno.ELOOP:
        return Refused(SFTP_PERMISSION_DENIED, "symbolic links are not followed")
    if exc.errno in {errno.ENOENT, errno.ENOTDIR}:
        return Refused(SFTP_NO_SUCH_FILE, "no such file")
    if exc.errno in {errno.EACCES, errno.EPERM}:
        return Refused(SFTP_PERMISSION_DENIED, "permission denied")
    return Refused(SFTP_FAILURE, exc.strerror or "failure")


def file_name(path: str) -> str:
    """The file a client path names in the user's folder ("" for the folder itself).

    Paths are resolved against the folder as ``/``; leaving it (``..`` above it) or
    naming anything below it (there are no sub-folders) is refused.
    """
    if "\0" in path:
        raise Refused(SFTP_PERMISSION_DENIED, "bad path")
    parts: list[str] = []
    for part in path.split("/"):
        if part in {"", "."}:
            continue
        if part == "..":
            if not parts:
                raise Refused(SFTP_PERMISSION_DENIED, "outside your folder")
            parts.pop()
            continue
        parts.append(part)
    if len(parts) > 1:
        raise Refused(SFTP_PERMISSION_DENIED, "only files directly in your folder")
    name = parts[0] if parts else ""
    if len(name.encode("utf-8", "surrogateescape")) > 255:
        raise Refused(SFTP_FAILURE, "file name too long")
    return name


def fingerprint(key: paramiko.PKey) -> str:
    """``TYPE SHA256:...`` as ``ssh-keygen -l`` prints it: for logs, never the key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"{key.get_name()} SHA256:{digest}"


def _printable(text: str, limit: int = 64) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:limit]


@dataclass(frozen=True)
class Login:
    """A user of the server: the partner it belongs to and the keys that log it in."""

    user: str
    partner: str
    keys: frozenset[bytes]  # SSH wire-format public key blobs


def logins(config: Config) -> dict[str, Login]:
    """``[[sftp.users]]`` of the active partner profiles, by user name."""
    found: dict[str, Login] = {}
    for profile in config.partners:
        if not profile.active:
            continue
        for user in profile.sftp_users:
            blobs = frozenset(base64.b64decode(k.split()[1]) for k in user.keys)
            found.setdefault(user.name, Login(user.name, profile.id, blobs))
    return found


class DropFolders:
    """The partners' folders (``ROOT/USER``) and what becomes of a complete upload."""

    def __init__(self, root: Path, logins: dict[str, Login], *, max_bytes: int) -> None:
        self.root = root
        self.logins = logins
        self.max_bytes = max_bytes
        self._locks: dict[str, threading.Lock] = {user: threading.Lock() for user in logins}
        self._oversize_logged: set[tuple[str, str, int]] = set()

    def folder(self, user: str) -> Path:
        return self.root / user

    def work(self, user: str) -> Path:
        """Where uploads are written while open: outside every partner's folder."""
        return self.root / ".uploads" / user

    def lock(self, user: str) -> threading.Lock:
        return self._locks[user]

    def prepare(self) -> None:
        for user in self.logins:
            for folder in (self.folder(user), self.work(user)):
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                if folder.is_symlink() or not folder.is_dir():
                    raise RuntimeError(f"SFTP folder {folder} is not a directory")
            # uploads that were open when the gateway stopped were never complete
            for leftover in self.work(user).iterdir():
                leftover.unlink(missing_ok=True)

    def envelope(self, user: str, name: str, data: bytes, peer: str) -> Envelope:
        transport = {"sftp_server": "embedded", "sftp_user": user, "sftp_path": "/" + name}
        if peer:
            transport["peer"] = peer
        return Envelope(
            raw=data,
            channel=Channel.SFTP,
            filename=name,
            transport=transport,
            sender={"sftp": f"server:{user}"},
        )

    def finish_upload(self, accept: Accept, user: str, name: str, temp: Path, peer: str) -> tuple[int, str]:
        """The partner closed an upload: accept it, then answer the close."""
        login = self.logins[user]
        envelope = self.envelope(user, name, temp.read_bytes(), peer)
        mlog = for_message(log, envelope.id, Channel.SFTP.value, login.partner)
        with self.lock(user):
            try:
                accept(envelope)
            except TooLarge as exc:
                temp.unlink(missing_ok=True)
                mlog.warning("upload by %s refused: %s", user, exc.message)
                return SFTP_FAILURE, f"refused: {exc.message}"
            except Exception as exc:  # noqa: BLE001 - not accepted, whatever the reason: keep it
                reason = (
                    exc.message if isinstance(exc, GatewayError) else f"internal error: {type(exc).__name__}"
                )
                if not isinstance(exc, GatewayError):
                    mlog.exception("upload by %s not accepted", user)
                try:
                    os.replace(temp, self.folder(user) / name)
                except OSError as move:
                    mlog.error("upload by %s not accepted and not kept (%s): %s", user, move.strerror, reason)
                    temp.unlink(missing_ok=True)
                    return SFTP_FAILURE, "not stored, please upload again later"
                mlog.error("upload by %s not accepted, kept for a retry: %s", user, reason)
                return SFTP_FAILURE, "not stored yet, please try again later (the file is kept for a retry)"
            temp.unlink(missing_ok=True)
            # an upload replaces a pending file of the same name (put overwrites)
            try:
                os.unlink(self.folder(user) / name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                mlog.warning("could not remove the earlier pending %s: %s", name, exc.strerror)
        mlog.info("upload by %s accepted, %d bytes", user, envelope.size)
        return SFTP_OK, "accepted"

    def sweep(self, accept: Accept) -> int:
        """Accept the files that wait in the partners' folders (the store failed when
        they were uploaded); each is removed once accepted. The number taken."""
        taken = 0
        for user in self.logins:
            folder = self.folder(user)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            for entry in entries:
                if not entry.is_file(follow_symlinks=False):
                    continue
                with self.lock(user):
                    if self._take_pending(accept, user, Path(entry.path)):
                        taken += 1
        return taken

    def _take_pending(self, accept: Accept, user: str, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False  # gone meanwhile, or a link
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return False
            if before.st_size > self.max_bytes:
                key = (user, path.name, before.st_size)
                if key not in self._oversize_logged:
                    self._oversize_logged.add(key)
                    log.error("SFTP %s: %s is over limits.max_message_bytes, left in place", user, path.name)
                return False
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        finally:
            os.close(fd)
        envelope = self.envelope(user, path.name, data, "")
        mlog = for_message(log, envelope.id, Channel.SFTP.value, self.logins[user].partner)
        try:
            accept(envelope)
        except GatewayError as exc:
            mlog.error("pending file of %s still not accepted, kept: %s", user, exc.message)
            return False
        try:
            now = os.lstat(path)
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (
                before.st_ino,
                before.st_size,
                before.st_mtime_ns,
            ):
                os.unlink(path)
        except OSError:
            pass
        mlog.info("pending file of %s accepted on retry, %d bytes", user, envelope.size)
        return True


# ---- the SSH side -------------------------------------------------------------------------


class _Server(paramiko.ServerInterface):
    """One connection: public-key authentication, one sftp session, nothing else."""

    def __init__(self, adapter: SftpServerAdapter, peer: str) -> None:
        self.adapter = adapter
        self.peer = peer
        self.user: str | None = None
        self.failures = 0
        self._audited: set[tuple[str, str]] = set()

    def get_allowed_auths(self, username: str) -> str:
        del username
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        del username
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        del password
        self._failed(username, "password authentication is not offered")
        return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        login = self.adapter.drops.logins.get(username)
        if login is not None and key.asbytes() in login.keys:
            return AUTH_SUCCESSFUL
        reason = "unknown user" if login is None else "key not listed for this user"
        self._failed(username, f"{reason} ({fingerprint(key)})")
        return AUTH_FAILED

    def _failed(self, username: str, reason: str) -> None:
        self.failures += 1
        user = _printable(username)
        if (user, reason) in self._audited:
            return
        self._audited.add((user, reason))
        log.warning("SFTP authentication failed from %s for user %r: %s", self.peer, user, reason)
        self.adapter.audit("sftp_auth_failed", f"sftp:{user}", f"from {self.peer}: {reason}")

    def check_channel_request(self, kind: str, chanid: int) -> int:
        del chanid
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if name != "sftp" or self.user is not None:
            return False  # one sftp session per connection
        user = channel.get_transport().get_username()
        if user is None or user not in self.adapter.drops.logins:
            return False
        self.user = user
        return super().check_channel_subsystem_request(channel, name)


class _Upload(paramiko.SFTPHandle):
    """A file being uploaded: written to a temporary file until the client closes it."""

    def __init__(self, fs: _DropFS, name: str, temp: Path, fd: int, flags: int) -> None:
        super().__init__(flags)
        self.fs = fs
        self.name = name
        self.temp = temp
        self.fd: int | None = fd
        self.too_large = False

    def write(self, offset: int, data: Buffer) -> int:
        if self.fd is None:
            return SFTP_FAILURE
        size = memoryview(data).nbytes
        if self.too_large or offset + size > self.fs.drops.max_bytes:
            self.too_large = True
            return SFTP_FAILURE
        try:
            os.pwrite(self.fd, data, offset)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno or 0)
        return SFTP_OK

    def read(self, offset: int, length: int) -> int:
        del offset, length
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes | int:
        if self.fd is None:
            return SFTP_FAILURE
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.fd), self.name)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        del attr
        return SFTP_OK  # times and modes of an upload are not kept

    def finish(self) -> tuple[int, str]:
        """The client closed the handle: the upload is complete."""
        self._close_fd()
        if self.too_large:
            self.temp.unlink(missing_ok=True)
            limit = self.fs.drops.max_bytes
            log.warning("SFTP upload by %s refused: over the limit of %d bytes", self.fs.user, limit)
            return SFTP_FAILURE, f"refused: the file exceeds the limit of {limit} bytes"
        return self.fs.drops.finish_upload(self.fs.accept, self.fs.user, self.name, self.temp, self.fs.peer)

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """The session ended with the file still open: an incomplete upload, dropped."""
        if self.fd is not None:
            self._close_fd()
            self.temp.unlink(missing_ok=True)
            log.warning("SFTP upload by %s of %s abandoned before it was closed", self.fs.user, self.name)


class _Download(paramiko.SFTPHandle):
    """A pending file the partner reads back."""

    def __init__(self, name: str, fd: int, flags: int) -> None:
        super().__init__(flags)
        self.name = name
        self.fd: int | None = fd

    def read(self, offset: int, length: int) -> bytes | int:
        if self.fd is None:
            return SFTP_FAILURE
        return os.pread(self.fd, length, offset)

    def write(self, offset: int, data: Buffer) -> int:
        del offset, data
        return SFTP_PERMISSION_DENIED

    def stat(self) -> paramiko.SFTPAttributes | int:
        if self.fd is None:
            return SFTP_FAILURE
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.fd), self.name)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        del attr
        return SFTP_PERMISSION_DENIED

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _DropFS(paramiko.SFTPServerInterface):
    """The user's folder as the whole file system; see :func:`file_name`."""

    def __init__(self, server: _Server, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        assert server.user is not None
        self.server = server
        self.user: str = server.user
        self.peer = server.peer
        self.drops = server.adapter.drops
        self.accept = server.adapter.accept_fn
        self.folder = self.drops.folder(self.user)

    def _lstat(self, name: str) -> os.stat_result:
        try:
            st = os.lstat(self.folder / name)
        except OSError as exc:
            raise _oserror(exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise Refused(SFTP_PERMISSION_DENIED, "symbolic links are not followed")
        if not stat.S_ISREG(st.st_mode):
            raise Refused(SFTP_NO_SUCH_FILE, "no such file")
        return st

    def _file(self, path: str) -> str:
        name = file_name(path)
        if not name:
            raise Refused(SFTP_PERMISSION_DENIED, "that is your folder, not a file")
        return name

    def canonicalize(self, path: str) -> str:
        return "/" + file_name(path)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        name = file_name(path)
        if name:
            self._lstat(name)
            raise Refused(SFTP_NO_SUCH_FILE, "not a folder")
        out: list[paramiko.SFTPAttributes] = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    out.append(
                        paramiko.SFTPAttributes.from_stat(entry.stat(follow_symlinks=False), entry.name)
                    )
        return out

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        name = file_name(path)
        if not name:
            return paramiko.SFTPAttributes.from_stat(os.stat(self.folder), "/")
        return paramiko.SFTPAttributes.from_stat(self._lstat(name), name)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        return self.stat(path)

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> paramiko.SFTPHandle | int:
        del attr
        name = self._file(path)
        mode = flags & (os.O_WRONLY | os.O_RDWR)
        if mode == os.O_RDWR:
            raise Refused(SFTP_OP_UNSUPPORTED, "open a file for reading or for writing, not both")
        if mode == os.O_WRONLY:
            if os.path.lexists(self.folder / name):
                self._lstat(name)  # a link or a folder there is refused
                if flags & os.O_EXCL:
                    raise Refused(SFTP_FAILURE, "the file exists")
            temp = self.drops.work(self.user) / f"{secrets.token_hex(8)}.upload"
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except OSError as exc:
                log.error("SFTP %s: cannot create an upload file: %s", self.user, exc.strerror)
                raise Refused(SFTP_FAILURE, "cannot store uploads right now") from exc
            return _Upload(self, name, temp, fd, flags)
        try:
            fd = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise _oserror(exc) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(SFTP_NO_SUCH_FILE, "no such file")
        return _Download(name, fd, flags)

    def remove(self, path: str) -> int:
        name = self._file(path)
        with self.drops.lock(self.user):
            self._lstat(name)
            try:
                os.unlink(self.folder / name)
            except OSError as exc:
                raise _oserror(exc) from exc
        return SFTP_OK

    def _rename(self, oldpath: str, newpath: str, *, replace: bool) -> int:
        old, new = self._file(oldpath), self._file(newpath)
        with self.drops.lock(self.user):
            self._lstat(old)
            target = self.folder / new
            if os.path.lexists(target):
                if not replace:
                    raise Refused(SFTP_FAILURE, "the target exists")
                self._lstat(new)
            try:
                os.replace(self.folder / old, target)
            except OSError as exc:
                raise _oserror(exc) from exc
        return SFTP_OK

    def rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self._rename(oldpath, newpath, replace=True)

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        del attr
        name = self._file(path)
        self._lstat(name)
        return SFTP_OK  # times and modes are not kept

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        del path, attr
        raise Refused(SFTP_PERMISSION_DENIED, "no sub-folders")

    def rmdir(self, path: str) -> int:
        del path
        raise Refused(SFTP_PERMISSION_DENIED, "no sub-folders")

    def symlink(self, target_path: str, path: str) -> int:
        del target_path, path
        raise Refused(SFTP_PERMISSION_DENIED, "no symbolic links")

    def readlink(self, path: str) -> str | int:
        del path
        raise Refused(SFTP_PERMISSION_DENIED, "no symbolic links")


class _SftpServer(paramiko.SFTPServer):
    """paramiko's SFTP server, with refusals answered with their reason, and the close
    of an upload answered only once the upload is accepted (or with why it was not)."""

    def _status(self, request_number: int, code: int, text: str) -> None:
        send: Callable[[int, int, str], None] = self._send_status  # type: ignore[attr-defined]
        send(request_number, code, text)

    def _process(self, t: int, request_number: int, msg: Message) -> None:
        try:
            if t == CMD_CLOSE:
                handle = msg.get_binary()
                upload = self.file_table.get(handle)
                if isinstance(upload, _Upload):
                    del self.file_table[handle]
                    code, text = upload.finish()
                    self._status(request_number, code, text)
                    return
                msg.rewind()
                msg.get_int()  # the request number, read again
            super()._process(t, request_number, msg)  # type: ignore[misc]
        except Refused as exc:
            self._status(request_number, exc.code, exc.reason)
        except OSError as exc:
            refused = _oserror(exc)
            self._status(request_number, refused.code, refused.reason)


# ---- the adapter ----------------------------------------------------------------------------


class SftpServerAdapter:
    name = "sftp"

    def __init__(self, config: Config, host: str, port: int, *, data_dir: Path) -> None:
        settings = config.settings.sftp_server
        self.config = config
        self.settings = settings
        self.host = host
        self.port = port
        root = settings.root if settings.root.is_absolute() else data_dir / settings.root
        self.drops = DropFolders(
            root.resolve(), logins(config), max_bytes=config.settings.limits.max_message_bytes
        )
        self.accept_fn: Accept = _not_started
        self._store: Store | None = None
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._slots = threading.BoundedSemaphore(settings.max_sessions)
        self._transports: set[paramiko.Transport] = set()
        self._lock = threading.Lock()
        self._host_key: paramiko.PKey | None = None

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"sftp on {host}:{self.port} for {len(self.drops.logins)} partner login(s), "
            f"folders under {self.drops.root}"
        )

    def audit(self, event: str, subject: str, detail: str) -> None:
        if self._store is None:
            return
        try:
            self._store.audit(event, subject, detail)
        except Exception as exc:  # noqa: BLE001 - the audit must not break the session
            log.error("SFTP: audit event %s not written: %s", event, exc)

    def poll_once(self, accept: Accept, *, force: bool = False) -> int:
        """Retry the files left in partners' folders (``gateway run --once``)."""
        del force
        self.drops.prepare()
        return self.drops.sweep(accept)

    def start(self, accept: Accept) -> None:
        if self.settings.host_key is None:
            raise RuntimeError("SFTP server: no host key configured (sftp.host_key)")
        logging.getLogger("paramiko").setLevel(max(logging.WARNING, logging.getLogger().level))
        self._host_key = paramiko.PKey.from_path(self.settings.host_key)
        owner: Any = getattr(accept, "__self__", None)
        store = getattr(owner, "store", None)
        self._store = store if isinstance(store, Store) else None
        self.accept_fn = accept
        self.drops.prepare()
        self.drops.sweep(accept)  # files left by an earlier run, before anyone logs in
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            self._sock = socket.create_server((self.host, self.port), family=family, backlog=64)
        except OSError as exc:
            raise RuntimeError(f"SFTP server could not listen on {self.host}:{self.port}: {exc}") from exc
        self._sock.settimeout(0.5)
        if self.port == 0:
            self.port = int(self._sock.getsockname()[1])
        self._stop.clear()
        for target, name in ((self._listen, "sftp-listen"), (self._retry, "sftp-retry")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("SFTP server listening: %s", self.describe())

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads = []
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            transports = list(self._transports)
        for transport in transports:
            transport.close()

    def _retry(self) -> None:
        while not self._stop.wait(self.settings.retry_interval):
            try:
                self.drops.sweep(self.accept_fn)
            except Exception:  # keep retrying on the next round
                log.exception("SFTP: retrying pending files failed")

    def _listen(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, address = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("SFTP: accept failed: %s", exc)
                    self._stop.wait(0.5)
                continue
            peer = str(address[0])
            if not self._slots.acquire(blocking=False):
                log.warning(
                    "SFTP: connection from %s refused: %d sessions already (sftp.max_sessions)",
                    peer,
                    self.settings.max_sessions,
                )
                conn.close()
                continue
            threading.Thread(target=self._serve, args=(conn, peer), name=f"sftp-{peer}", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: str) -> None:
        assert self._host_key is not None
        transport: paramiko.Transport | None = None
        try:
            conn.settimeout(None)
            transport = paramiko.Transport(conn)
            with self._lock:
                self._transports.add(transport)
            transport.add_server_key(self._host_key)
            transport.set_subsystem_handler("sftp", _SftpServer, _DropFS)
            server = _Server(self, peer)
            transport.start_server(server=server)
            waited = 0.0
            while transport.is_active() and not self._stop.is_set():
                if not transport.is_authenticated() and (
                    server.failures >= MAX_AUTH_TRIES or waited >= LOGIN_GRACE
                ):
                    log.warning("SFTP: connection from %s closed: not authenticated", peer)
                    break
                transport.join(0.5)
                waited += 0.5
            if server.user is not None:
                log.info("SFTP session of %s from %s ended", server.user, peer)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.info("SFTP: connection from %s failed: %s", peer, exc or type(exc).__name__)
        except Exception:  # one bad connection must not stop the server
            log.exception("SFTP: connection from %s failed", peer)
        finally:
            if transport is not None:
                transport.close()
                with self._lock:
                    self._transports.discard(transport)
            else:
                conn.close()
            self._slots.release()


def _not_started(envelope: Envelope) -> Any:
    del envelope
    raise RuntimeError("the SFTP server is not started")


def factory(config: Config, options: RunOptions) -> Adapter | None:
    listener = config.settings.sftp
    if options.no_sftp or (not listener.enabled and not options.sftp):
        return None
    if config.settings.sftp_server.host_key is None:
        log.warning("SFTP: no host key configured (sftp.host_key): the SFTP server is not started")
        return None
    if not logins(config):
        log.warning("SFTP: no partner has [[sftp.users]]: the SFTP server is not started")
        return None
    host, port = listener.host, listener.port
    if options.sftp:
        host, port = parse_address(options.sftp, listener.port)
    return SftpServerAdapter(config, host, port, data_dir=Path(options.data_dir))


__all__ = ["DropFolders", "Refused", "SftpServerAdapter", "factory", "file_name", "logins"]
