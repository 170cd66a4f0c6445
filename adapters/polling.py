"""What the scheduled pollers share: IMAP mailboxes and SFTP drops.

One poll at a time per source (a lock in this process, a store lease across nodes);
failures are recorded and backed off exponentially, so one broken source neither
crashes the schedule nor hammers the partner; a poll's counts and its last error are
kept in a :class:`PollStatus`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from adapters import Accept
from gateway.errors import StoreUnavailable
from gateway.store import Store

log = logging.getLogger(__name__)

_TIMES = ("last_run", "last_success", "next_attempt")
_COUNTS = ("failures", "polls", "taken", "recognised", "refused", "lease_busy")


@dataclass
class PollStatus:
    """Where one polled source stands (``gateway drops``, the IMAP adapter's status)."""

    name: str
    last_run: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    #: consecutive failed polls; the next one waits until ``next_attempt``
    failures: int = 0
    next_attempt: datetime | None = None
    polls: int = 0
    #: items handed to the inbox (and then flagged, moved or removed at the source)
    taken: int = 0
    #: items found already in the inbox (a crash before the flag/move/removal): only finished
    recognised: int = 0
    #: items over limits.max_message_bytes, left untouched at the source
    refused: int = 0
    #: polls skipped because another node held the lease
    lease_busy: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in _TIMES:
            value = getattr(self, key)
            data[key] = value.isoformat() if value is not None else None
        return data

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> PollStatus:
        st = cls(name)
        for key in _TIMES:
            value = data.get(key)
            setattr(st, key, datetime.fromisoformat(value) if isinstance(value, str) and value else None)
        st.last_error = data.get("last_error") or None
        for key in _COUNTS:
            value = data.get(key)
            setattr(st, key, value if isinstance(value, int) else 0)
        return st


@dataclass(frozen=True)
class PollResult:
    taken: int = 0
    recognised: int = 0
    refused: int = 0
    #: complete-looking items not taken yet (an SFTP file still settling)
    waiting: int = 0
    error: str | None = None
    skipped: str | None = None


@dataclass
class Tally:
    """Counts of one poll; ``add`` is safe from the threads of a parallel poll."""

    taken: int = 0
    recognised: int = 0
    refused: int = 0
    waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, what, getattr(self, what) + n)

    def result(self, error: str | None = None) -> PollResult:
        return PollResult(self.taken, self.recognised, self.refused, self.waiting, error=error)


class LeasedPoller:
    """Runs :meth:`_poll` under a lock and a store lease, with back-off on failure.

    Subclasses set ``kind`` (``imap``, ``sftp``: log and audit event prefix) and
    ``source`` (``mailbox``, ``drop``), and implement :meth:`_poll`,
    :meth:`_describe`, :meth:`_where` and :attr:`errors` (what a poll may raise that
    is the source's or the network's fault, not a bug).
    """

    kind = "poll"
    source = "source"
    errors: tuple[type[BaseException], ...] = (OSError, StoreUnavailable)

    def __init__(
        self,
        *,
        name: str,
        store: Store,
        holder: str,
        lease: str,
        lease_seconds: float,
        status: PollStatus,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        self.name = name
        self.store = store
        self.holder = holder
        self.lease = lease
        self.lease_seconds = lease_seconds
        self.status = status
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    # ---- what a subclass provides --------------------------------------------------------

    def _poll(self, accept: Accept, tally: Tally) -> None:
        raise NotImplementedError

    def _describe(self, exc: BaseException) -> str:
        return f"{type(exc).__name__}: {exc}"

    def _where(self) -> str:
        """``user@host:port`` for the log line of a failure (never a secret)."""
        return ""

    def _status_changed(self) -> None:
        """After every poll, successful or not (e.g. to persist the status)."""

    # ---- one poll ------------------------------------------------------------------------

    def poll(self, accept: Accept, *, force: bool = False) -> PollResult:
        """Poll once; ``force`` ignores the back-off. Never raises for the source's or the
        network's failures (:attr:`errors`): they are recorded and backed off."""
        with self._lock:
            now = datetime.now(UTC)
            st = self.status
            if not force and st.next_attempt is not None and now < st.next_attempt:
                return PollResult(skipped=f"backing off until {st.next_attempt:%H:%M:%S}")
            try:
                leased = self.store.try_lease(self.lease, self.holder, self.lease_seconds)
            except StoreUnavailable as exc:
                return self._failed(exc)
            if not leased:
                st.lease_busy += 1
                log.debug("%s %s: another node holds the lease", self.kind, self.name)
                return PollResult(skipped=f"another node is polling this {self.source}")
            st.last_run = now
            st.polls += 1
            tally = Tally()
            try:
                self._poll(accept, tally)
            except self.errors as exc:
                return self._failed(exc, tally)
            finally:
                with contextlib.suppress(StoreUnavailable):
                    self.store.release_lease(self.lease, self.holder)
            if st.failures:
                log.info("%s %s: polling works again after %d failure(s)", self.kind, self.name, st.failures)
                self._audit(f"{self.kind}_ok", f"works again after {st.failures} failed poll(s)")
            st.failures = 0
            st.next_attempt = None
            st.last_error = None
            st.last_success = datetime.now(UTC)
            st.taken += tally.taken
            st.recognised += tally.recognised
            st.refused += tally.refused
            self._status_changed()
            if tally.taken or tally.recognised or tally.refused:
                log.info(
                    "%s %s: %d taken, %d already in the inbox, %d refused",
                    self.kind,
                    self.name,
                    tally.taken,
                    tally.recognised,
                    tally.refused,
                )
            return tally.result()

    def _failed(self, exc: BaseException, tally: Tally | None = None) -> PollResult:
        st = self.status
        reason = self._describe(exc)
        st.failures += 1
        st.last_error = reason
        wait = min(self.backoff_base * 2 ** (st.failures - 1), self.backoff_max)
        st.next_attempt = datetime.now(UTC) + timedelta(seconds=wait)
        log.error("%s %s (%s): %s; next attempt in %.0fs", self.kind, self.name, self._where(), reason, wait)
        if tally is not None:
            st.taken += tally.taken
            st.recognised += tally.recognised
            st.refused += tally.refused
        with contextlib.suppress(StoreUnavailable):
            self._audit(f"{self.kind}_error", reason)
            self._status_changed()
        return (tally or Tally()).result(error=reason)

    def _audit(self, event: str, detail: str, subject: str | None = None) -> None:
        self.store.audit(event, subject or self.lease, detail)

    def run_scheduled(self, accept: Accept) -> None:
        """The scheduler's job: :meth:`poll`, with anything unexpected recorded too."""
        try:
            self.poll(accept)
        except Exception as exc:  # a bug must not stop the schedule; it is recorded
            log.exception("%s %s: poll failed unexpectedly", self.kind, self.name)
            with self._lock:
                self._failed(exc)
