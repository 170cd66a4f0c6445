"""A local drop folder: files placed in ``<data>/incoming`` are taken in as channel ``file``.

A file is taken only once its size and mtime have not changed for ``settle`` seconds
(writers that copy slowly are not read half-written), and it is removed only after
:func:`accept` returned, i.e. after it is archived and in the inbox.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from adapters import Accept, Adapter, RunOptions
from gateway.config import Config
from gateway.envelope import Channel, Envelope
from gateway.errors import GatewayError

log = logging.getLogger(__name__)


class FileDrop:
    name = "filedrop"

    def __init__(self, folder: Path, *, interval: float = 1.0, settle: float = 1.0) -> None:
        self.folder = folder
        self.interval = interval
        self.settle = settle
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[Path, tuple[int, int, int]] = {}

    def describe(self) -> str:
        return f"file drop folder {self.folder}"

    def start(self, accept: Accept) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, args=(accept,), name="filedrop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def poll_once(self, accept: Accept, *, force: bool = False) -> int:
        """Take every settled file; ``force`` takes every file now (``gateway run --once``)."""
        taken = 0
        ticks = int(self.settle / self.interval) if self.interval else 1
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(path)
            if force:
                prev = (*key, ticks)
            if prev is None or prev[:2] != key:
                self._seen[path] = (*key, 0)
                continue
            if prev[2] < ticks:
                self._seen[path] = (*key, prev[2] + 1)
                continue
            try:
                accept(
                    Envelope(
                        raw=path.read_bytes(),
                        channel=Channel.FILE,
                        filename=path.name,
                        transport={"path": str(path)},
                    )
                )
            except GatewayError as exc:
                log.error("could not take %s (left in place): %s", path.name, exc.message)
                continue
            path.unlink()
            self._seen.pop(path, None)
            taken += 1
        return taken

    def _loop(self, accept: Accept) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(accept)
            except OSError as exc:
                log.error("drop folder %s: %s", self.folder, exc)
            self._stop.wait(self.interval)


def factory(config: Config, options: RunOptions) -> Adapter | None:
    del config
    return FileDrop(Path(options.data_dir) / "incoming")
