"""The AS2 endpoint: an ASGI app (Starlette) served by uvicorn in a thread.

HTTP only: it reads the request within the size limit and hands headers and body to
:class:`gateway.as2.receiver.Receiver`, which does everything AS2. The (CPU- and
database-bound) receiver runs in the thread pool so the event loop keeps accepting.
HTTPS when ``as2.tls_certificate`` and ``as2.tls_key`` are configured.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from adapters import Accept, Adapter, RunOptions
from gateway.archive import Archive
from gateway.as2.async_mdn import AsyncMdnSender
from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.as2.outbound import OutboundSender, RetryPolicy, RetryScheduler
from gateway.as2.profiles import As2Profiles, load_profiles
from gateway.as2.receiver import Receiver
from gateway.config import Config, parse_address
from gateway.store import Store

log = logging.getLogger(__name__)


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (before reading it whole) anything over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"Content-Length {declared} exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_head(request: Request) -> bytes:
    """The request line and headers as received, for the archive."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    version = request.scope.get("http_version", "1.1")
    lines = [f"{request.method} {target} HTTP/{version}".encode("latin-1")]
    lines += [name + b": " + value for name, value in request.scope["headers"]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def build_app(receiver: Receiver, path: str, max_bytes: int) -> Starlette:
    async def as2(request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        head = _request_head(request)
        try:
            body = await _read_body(request, max_bytes)
        except _TooLarge as exc:
            result = await run_in_threadpool(receiver.refuse, headers, head, 413, str(exc))
            return Response(result.body, status_code=result.status, headers=dict(result.headers))
        result = await run_in_threadpool(receiver.handle, headers, body, head + body)
        return Response(result.body, status_code=result.status, headers=dict(result.headers))

    async def info(request: Request) -> Response:
        del request
        return PlainTextResponse(f"AS2 endpoint: POST AS2 messages to {path}\n")

    return Starlette(routes=[Route(path, as2, methods=["POST"]), Route(path, info, methods=["GET"])])


class As2Adapter:
    name = "as2"

    def __init__(
        self,
        config: Config,
        host: str,
        port: int,
        *,
        data_dir: Path | None = None,
        retry_policy: RetryPolicy | None = None,
        retry_sweep_seconds: float = 30.0,
    ) -> None:
        self.config = config
        self.retry_policy = retry_policy
        self.retry_sweep_seconds = retry_sweep_seconds
        self.outbound: OutboundSender | None = None
        self.retries: RetryScheduler | None = None
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.profiles: As2Profiles = load_profiles(config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._own_store: Store | None = None
        self.async_sender: AsyncMdnSender | None = None
        self.receiver: Receiver | None = None

    @property
    def tls(self) -> bool:
        s = self.config.settings.as2_settings
        return s.tls_certificate is not None and s.tls_key is not None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.config.settings.as2_settings.path}"

    def describe(self) -> str:
        return f"as2 on {self.url} (AS2 id {self.profiles.as2_id}, {len(set(p.id for p in self.profiles.partners.values()))} partner(s))"

    def _store_for(self, accept: Accept) -> Store:
        # The pipeline's own store when ``accept`` is Pipeline.accept (one engine per
        # process); otherwise one opened from the configuration.
        owner: Any = getattr(accept, "__self__", None)
        store = getattr(owner, "store", None)
        if isinstance(store, Store):
            return store
        url = self.config.settings.store_url
        if self.config.settings.store_url_secret is not None:
            url = self.config.settings.store_url_secret.read()
        self._own_store = Store(url) if url else Store.for_data_dir(self.data_dir or Path("data"))
        self._own_store.migrate()
        return self._own_store

    def _archive_for(self, accept: Accept) -> Archive:
        archive = getattr(getattr(accept, "__self__", None), "archive", None)
        if isinstance(archive, Archive):
            return archive
        return Archive((self.data_dir or Path("data")) / "archive")

    def start(self, accept: Accept) -> None:
        store = self._store_for(accept)
        ledger = Ledger(store)
        self.async_sender = AsyncMdnSender(ledger)
        # Sending: asynchronous MDNs for our messages arrive here, and the sends that
        # failed (here or in `gateway send`) are retried on the scheduler.
        self.outbound = OutboundSender(
            self.config, self.profiles, store, self._archive_for(accept), policy=self.retry_policy
        )

        def on_async(entry: LedgerEntry) -> None:
            assert self.async_sender is not None
            self.async_sender.schedule(entry)

        self.receiver = Receiver(
            self.config, self.profiles, accept, ledger, on_async=on_async, on_mdn=self.outbound.receive_mdn
        )
        app = build_app(
            self.receiver,
            self.config.settings.as2_settings.path,
            self.config.settings.limits.max_message_bytes,
        )
        s = self.config.settings.as2_settings
        uconfig = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            ssl_certfile=str(s.tls_certificate) if self.tls else None,
            ssl_keyfile=str(s.tls_key) if self.tls else None,
            # Not the default 1 MB h11 limit: this is for headers only; bodies are streamed.
            h11_max_incomplete_event_size=256 * 1024,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(uconfig)
        self._thread = threading.Thread(target=self._serve, name="as2-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"AS2 endpoint could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        if self.port == 0:
            # Ephemeral port (tests): learn what the OS gave us.
            for server in self._server.servers:
                for sock in server.sockets:
                    self.port = int(sock.getsockname()[1])
                    break
        self.async_sender.start()
        self.outbound.mdn_url = self.url
        self.retries = RetryScheduler(self.outbound, sweep_seconds=self.retry_sweep_seconds)
        self.retries.start()
        log.info("AS2 endpoint listening on %s", self.url)

    def _serve(self) -> None:
        assert self._server is not None
        asyncio.run(self._server.serve())

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.async_sender is not None:
            self.async_sender.stop()
        if self.retries is not None:
            self.retries.stop()
        if self.outbound is not None:
            self.outbound.close()
        if self._own_store is not None:
            self._own_store.close()


def factory(config: Config, options: RunOptions) -> Adapter | None:
    listener = config.settings.as2
    if options.no_as2 or (not listener.enabled and not options.as2):
        return None
    host, port = listener.host, listener.port
    if options.as2:
        host, port = parse_address(options.as2, listener.port)
    if config.settings.as2_settings.certificate is None:
        log.warning("AS2: no certificate configured (as2.certificate): encrypted messages cannot be received")
    return As2Adapter(config, host, port, data_dir=Path(options.data_dir))
