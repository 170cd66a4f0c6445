"""Content-addressed archive of raw messages.

Raw bytes are stored once per sha256 under ``<root>/ab/<sha256>``: 256 directories,
which all exist soon, so a new message rarely creates (and fsyncs) a directory. A write goes
to a temporary file in the same directory, is fsynced, renamed into place and the
directory fsynced, so after :meth:`Archive.put` returns the bytes survive a crash.

:meth:`Archive.write` and :meth:`Archive.sync_dir` are the two halves of ``put`` for a
group commit: many writers each write, fsync and rename their own file, and the
directories they renamed into are fsynced once for all of them.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from gateway.errors import StoreUnavailable

_CHUNK = 1024 * 1024


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file,
    never a torn one, and the new one survives (file and directory fsynced).
    Raises OSError."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class Archive:
    def __init__(self, root: Path) -> None:
        self.root = root
        # Directories known to exist (and whose creation was made durable): creating
        # and checking them again costs a syscall or two on every message.
        self._dirs: set[Path] = set()

    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._dirs:
            return
        if not directory.is_dir():
            created = [d for d in (directory, *directory.parents) if not d.exists()]
            directory.mkdir(parents=True, exist_ok=True)
            # each new directory's own entry must survive a crash too
            for new in reversed(created):
                _fsync_dir(new.parent)
        self._dirs.add(directory)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; return its sha256. Idempotent."""
        digest, directory = self.write(data)
        self.sync_dir(directory)
        return digest

    def write(self, data: bytes) -> tuple[str, Path]:
        """Write ``data`` to its file, fsynced and renamed into place, but without the
        fsync of the directory it was renamed into: ``(sha256, that directory)``.

        The bytes are durable only after :meth:`sync_dir` of that directory (which a
        group commit does once for many files). The directory is returned even when
        the file was already there, since whoever wrote it may not have synced it yet.
        """
        digest = sha256_hex(data)
        target = self.path_for(digest)
        try:
            if target.stat().st_size == len(data):
                return digest, target.parent
        except OSError:
            pass  # not there (yet); writing it will say what is wrong, if anything
        try:
            self._ensure_dir(target.parent)
            try:
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            except FileNotFoundError:
                # someone removed a directory we had seen: forget what we knew, once
                self._dirs.clear()
                self._ensure_dir(target.parent)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the archive at {self.root}: {exc.strerror}") from exc
        return digest, target.parent

    def sync_dir(self, directory: Path) -> None:
        """fsync ``directory`` (from :meth:`write`): the renames into it survive a crash."""
        try:
            _fsync_dir(directory)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the archive at {self.root}: {exc.strerror}") from exc

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store a file by streaming it (large files are never held whole); durable."""
        digest, size, directory = self.write_file(source)
        self.sync_dir(directory)
        return digest, size

    def write_file(self, source: Path) -> tuple[str, int, Path]:
        """:meth:`write` for a file, streamed: ``(sha256, size, directory to sync)``."""
        digest = hashlib.sha256()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
            size = 0
            try:
                with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                target = self.path_for(digest.hexdigest())
                self._ensure_dir(target.parent)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreUnavailable(f"cannot write to the archive at {self.root}: {exc.strerror}") from exc
        return digest.hexdigest(), size, target.parent

    def get(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()
