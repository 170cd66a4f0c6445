"""The AS2 endpoint: an ASGI app (Starlette) served by uvicorn in a thread.

HTTP only: it reads the request within the size limit and hands headers and body to
:class:`gateway.as2.receiver.Receiver`, which does everything AS2. The (CPU- and
database-bound) receiver runs in the thread pool so the event loop keeps accepting.
HTTPS when ``as2.tls_certificate`` and ``as2.tls_key`` are configured.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from adapters import Accept, Adapter, RunOptions
from gateway.archive import Archive
from gateway.as2.async_mdn import AsyncMdnSender
from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.as2.outbound import OutboundSender, RetryPolicy, RetryScheduler
from gateway.as2.profiles import As2Profiles, load_profiles
from gateway.as2.receiver import Receiver
from gateway.as2.receiver import Response as As2Response
from gateway.config import Config, parse_address
from gateway.store import Store

log = logging.getLogger(__name__)

_HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
_HAVE_HTTPTOOLS = importlib.util.find_spec("httptools") is not None


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


#: a scope's headers: (lower-case name, value) byte pairs
_RawHeaders = list[tuple[bytes, bytes]]


def _headers(raw: _RawHeaders) -> dict[str, str]:
    """Header names (lower-case in ASGI) and values as text; the last of a repeated one."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


def _request_head(scope: Scope) -> bytes:
    """The request line and headers as received, for the archive."""
    query = scope.get("query_string", b"")
    target = scope["path"].encode("latin-1", "replace") + (b"?" + query if query else b"")
    version = scope.get("http_version", "1.1").encode("latin-1")
    lines = [scope["method"].encode("latin-1") + b" " + target + b" HTTP/" + version]
    lines += [name + b": " + value for name, value in scope["headers"]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The body, refusing (before reading it whole) anything over ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"Content-Length {declared} exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def default_workers() -> int:
    """Receive threads: one per core (the CPU-heavy parts, RSA, AES, hashing and
    SQLite, release the GIL), plus one so a core is not idle while a thread waits
    for an fsync."""
    return (os.cpu_count() or 1) + 1


class As2Endpoint:
    """The ASGI app: POSTs to the AS2 path go straight to the receiver; everything else
    (the GET info page, other paths, lifespan) is Starlette's.

    The POST path is plain ASGI, with no Request/Response objects or routing per
    message. The receiver (CPU- and database-bound) runs in a thread pool sized to
    the cores, so concurrent clients use them all while the event loop keeps
    accepting connections.
    """

    def __init__(
        self, receiver: Receiver, path: str, max_bytes: int, executor: ThreadPoolExecutor | None = None
    ) -> None:
        self.receiver = receiver
        self.path = path
        self.max_bytes = max_bytes
        self.executor = executor
        self.other = _info_app(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.other(scope, receive, send)
            return
        headers = _headers(scope["headers"])
        head = _request_head(scope)
        loop = asyncio.get_running_loop()
        try:
            body = await _read_body(receive, headers.get("content-length"), self.max_bytes)
        except _Disconnected:
            return
        except _TooLarge as exc:
            refused = await loop.run_in_executor(
                self.executor, self.receiver.refuse, headers, head, 413, str(exc)
            )
            await _respond(send, refused)
            return
        result = await loop.run_in_executor(self.executor, self.receiver.handle, headers, body, head + body)
        await _respond(send, result)


async def _respond(send: Send, result: As2Response) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in result.headers]
    headers.append((b"content-length", str(len(result.body)).encode()))
    await send({"type": "http.response.start", "status": result.status, "headers": headers})
    await send({"type": "http.response.body", "body": result.body})


def _info_app(path: str) -> Starlette:
    async def info(request: Request) -> Response:
        del request
        return PlainTextResponse(f"AS2 endpoint: POST AS2 messages to {path}\n")

    async def post(request: Request) -> Response:
        del request  # only reached by a POST the endpoint did not take (never, in practice)
        return PlainTextResponse("not found\n", status_code=404)

    return Starlette(routes=[Route(path, info, methods=["GET"]), Route(path, post, methods=["POST"])])


def build_app(
    receiver: Receiver, path: str, max_bytes: int, executor: ThreadPoolExecutor | None = None
) -> As2Endpoint:
    return As2Endpoint(receiver, path, max_bytes, executor)


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
        workers: int | None = None,
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
        #: threads that run the receiver (see :func:`default_workers`)
        self.workers = workers or default_workers()
        self._executor: ThreadPoolExecutor | None = None

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
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="as2-receive")
        app = build_app(
            self.receiver,
            self.config.settings.as2_settings.path,
            self.config.settings.limits.max_message_bytes,
            self._executor,
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
            # uvloop and httptools (C event loop and HTTP parser) when installed; the
            # pure-Python asyncio loop and h11 otherwise.
            loop="uvloop" if _HAVE_UVLOOP else "asyncio",
            http="httptools" if _HAVE_HTTPTOOLS else "h11",
            # Not the default 1 MB h11 limit: this is for headers only; bodies are streamed.
            h11_max_incomplete_event_size=256 * 1024,
            timeout_keep_alive=30,
            lifespan="off",
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
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        if _HAVE_UVLOOP:
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(self._server.serve())

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
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
