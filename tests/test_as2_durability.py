"""Durable before acknowledged (503 when the store fails) and asynchronous MDNs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.envelope import Envelope
from gateway.errors import StoreUnavailable
from gateway.store import RawMessage, RawState
from tests.helpers import x12_850
from tests.test_as2_receive import (
    As2Gateway,
    check_mdn,
    post,
    pyas2,
    pyas2_partner,
    start_gateway,
)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[As2Gateway]:
    g = start_gateway(tmp_path)
    try:
        yield g
    finally:
        g.adapter.stop()
        g.pipeline.close()


def test_store_failure_gives_503_and_no_mdn_then_resend_succeeds(gw: As2Gateway) -> None:
    lib = pyas2()
    receiver = gw.adapter.receiver
    assert receiver is not None
    real = receiver.accept
    calls = {"n": 0}

    def failing_once(envelope: Envelope) -> RawMessage:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreUnavailable("store: add_raw failed: disk full")
        return real(envelope)

    receiver.accept = failing_once
    org, partner = pyas2_partner(lib)
    msg = lib.Message(sender=org, receiver=partner)
    msg.build(x12_850(), filename="po.edi", content_type="application/edi-x12")
    headers = {k: str(v) for k, v in msg.headers.items()}
    first = post(gw.url, headers, msg.content)
    assert first.status_code == 503
    assert b"disposition" not in first.content.lower()
    assert gw.ledger.find("in", "demo", msg.message_id) is None
    second = post(gw.url, headers, msg.content)
    assert second.status_code == 200
    assert check_mdn(lib, msg, second) == ("processed", None)
    assert [r.state for r in gw.raw_messages()] == [RawState.STORED]


class _Collector(BaseHTTPRequestHandler):
    received: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
        self.server.received.append(head + b"\r\n" + body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_async_mdn_is_posted_to_the_partner(gw: As2Gateway) -> None:
    lib = pyas2()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/mdn"
        org, partner = pyas2_partner(lib, mdn_mode="ASYNC")
        org.mdn_url = url
        msg = lib.Message(sender=org, receiver=partner)
        msg.build(x12_850(), filename="po.edi", content_type="application/edi-x12")
        resp = post(gw.url, {k: str(v) for k, v in msg.headers.items()}, msg.content)
        assert resp.status_code == 200
        assert b"asynchronously" in resp.content
        deadline = time.monotonic() + 15
        while not server.received and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        received: list[bytes] = server.received  # type: ignore[attr-defined]
        assert received, "no async MDN arrived"
        status, detail = lib.Mdn().parse(received[0], find_message_cb=lambda _m, _r: msg)
        assert (status, detail) == ("processed", None)
        entry = gw.ledger.find("in", "demo", msg.message_id)
        deadline = time.monotonic() + 5
        while entry is not None and entry.async_state != "delivered" and time.monotonic() < deadline:
            time.sleep(0.05)
            entry = gw.ledger.find("in", "demo", msg.message_id)
        assert entry is not None
        assert entry.async_state == "delivered"
    finally:
        server.shutdown()
        server.server_close()
