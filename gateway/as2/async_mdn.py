"""Delivery of asynchronous MDNs: posted to the partner's Receipt-Delivery-Option URL.

Pending deliveries live in the ledger (``async_state = 'pending'``), so they survive a
restart. A small thread posts what is due and reschedules failures with exponential
back-off until the MDN is delivered or its time is up.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta

from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)


class AsyncMdnSender:
    def __init__(
        self,
        ledger: Ledger,
        *,
        first_retry: float = 5.0,
        max_retry: float = 3600.0,
        expire_after: timedelta = timedelta(hours=24),
        timeout: float = 30.0,
    ) -> None:
        self.ledger = ledger
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.expire_after = expire_after
        self.timeout = timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="as2-async-mdn", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def schedule(self, entry: LedgerEntry) -> None:
        """A new (or resent) MDN to deliver: make it due now and wake the thread."""
        if entry.async_state != "pending":
            self.ledger.async_result(
                entry.id,
                state="pending",
                attempts=entry.async_attempts,
                next_at=datetime.now(UTC),
                error=None,
            )
        self._wake.set()

    def run_once(self, now: datetime | None = None) -> int:
        """Post every due MDN once; returns how many were delivered."""
        delivered = 0
        for entry in self.ledger.due_async(now):
            if self.deliver(entry, now or datetime.now(UTC)):
                delivered += 1
        return delivered

    def deliver(self, entry: LedgerEntry, now: datetime) -> bool:
        url = entry.async_url or ""
        error = self._post(url, entry)
        attempts = entry.async_attempts + 1
        if error is None:
            self.ledger.async_result(entry.id, state="delivered", attempts=attempts, next_at=None, error=None)
            log.info("async MDN for %s delivered to %s", entry.message_id, _host(url))
            return True
        if now - entry.at >= self.expire_after or error.startswith("unsupported"):
            self.ledger.async_result(entry.id, state="expired", attempts=attempts, next_at=None, error=error)
            log.error("async MDN for %s given up after %d attempt(s): %s", entry.message_id, attempts, error)
            return False
        delay = min(self.first_retry * 2 ** (attempts - 1), self.max_retry)
        self.ledger.async_result(
            entry.id, state="pending", attempts=attempts, next_at=now + timedelta(seconds=delay), error=error
        )
        log.warning("async MDN for %s not delivered (%s); retry in %.0fs", entry.message_id, error, delay)
        return False

    def _post(self, url: str, entry: LedgerEntry) -> str | None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in {"http", "https"} or not parsed.netloc:
            # mailto: MDNs (AS1-style) and anything else are not something we send.
            return f"unsupported Receipt-Delivery-Option {url[:100]!r}"
        headers = {k: v for k, v in entry.mdn_headers}
        request = urllib.request.Request(url, data=entry.mdn_body or b"", headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except StoreUnavailable as exc:
                log.error("async MDN delivery: %s", exc.message)
            self._wake.wait(1.0)
            self._wake.clear()


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc
