"""Sending over AS2 to real peers: pyas2lib as the receiving partner, and our own gateway.

pyas2lib runs behind a tiny real HTTP server in the test: every request goes through
``pyas2lib.Message().parse`` (decrypt, verify, MIC) and the answer is the MDN that
pyas2lib builds and signs with the demo partner's key. The round trip uses two
gateways on loopback: ours (AS2 id GATEWAY) and one configured as the demo partner
(AS2 id DEMOPARTNER, the partner's demo keys) running the real endpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from adapters.as2 import As2Adapter
from gateway import cli
from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.as2.outbound import OutboundSender, RetryPolicy, RetryScheduler
from gateway.as2.profiles import load_profiles
from gateway.config import Config, load_config
from gateway.pipeline import Pipeline
from gateway.record import Direction, Kind
from gateway.store import RawState
from tests.conftest import REPO, need_peer
from tests.helpers import copy_config, x12_850

DEMO = REPO / "config" / "demo"


def pyas2() -> Any:
    try:
        import pyas2lib
    except ImportError:
        need_peer("pyas2lib (scripts/setup --test installs it)")
    return pyas2lib


def demo_pem(name: str) -> bytes:
    return (DEMO / f"{name}.key").read_bytes() + (DEMO / f"{name}.crt").read_bytes()


# --- pyas2lib as the receiving partner ------------------------------------------------------


@dataclass
class Pyas2Peer:
    """A real HTTP server handing each request to pyas2lib and answering its MDN."""

    url: str
    server: ThreadingHTTPServer
    #: what to do with the next requests: "mdn" (the real one), "500", "negative",
    #: "permanent", "wrong-mic"; popped per request, the last one stays
    modes: list[str] = field(default_factory=lambda: ["mdn"])
    received: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_pyas2_peer() -> Pyas2Peer:
    lib = pyas2()
    org = lib.Organization(
        as2_name="DEMOPARTNER",
        sign_key=demo_pem("partner"),
        sign_key_pass="",
        decrypt_key=demo_pem("partner"),
        decrypt_key_pass="",
    )
    gateway = lib.Partner(
        as2_name="GATEWAY",
        verify_cert=(DEMO / "gateway.crt").read_bytes(),
        encrypt_cert=(DEMO / "gateway.crt").read_bytes(),
        validate_certs=False,
        sign=True,
        encrypt=True,
        mdn_mode="SYNC",
        mdn_digest_alg="sha256",
    )
    peer: Pyas2Peer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            del format, args

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            mode = peer.modes.pop(0) if len(peer.modes) > 1 else peer.modes[0]
            head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()).encode()
            msg = lib.Message()
            status, exc, mdn = msg.parse(
                head + b"\r\n" + body,
                find_org_cb=lambda as2_id: org if as2_id == "DEMOPARTNER" else None,
                find_partner_cb=lambda as2_id: gateway if as2_id == "GATEWAY" else None,
            )
            payload = msg.payload.get_payload(decode=True) if msg.payload is not None else None
            peer.received.append(
                {
                    "status": status,
                    "error": None if exc[0] is None else repr(exc[0]),
                    "mic": msg.mic.decode() if msg.mic else None,
                    "signed": msg.signed,
                    "encrypted": msg.encrypted,
                    "compressed": msg.compressed,
                    "digest_alg": msg.digest_alg,
                    "payload": payload,
                    "message_id": msg.message_id,
                    "filename": msg.payload.get_filename() if msg.payload is not None else None,
                }
            )
            if mode == "500":
                self.send_response(500)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"partner database is down")
                return
            if mode in {"negative", "permanent", "wrong-mic"}:
                if mode == "wrong-mic":
                    msg.mic = b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
                mdn = lib.Mdn(mdn_mode="SYNC", digest_alg="sha256")
                detail = {"negative": "unexpected-processing-error", "permanent": "authentication-failed"}
                mdn.build(
                    message=msg,
                    status="processed" if mode == "wrong-mic" else "processed/Error",
                    detailed_status=detail.get(mode),
                )
            self.send_response(200)
            for k, v in mdn.headers.items():
                self.send_header(k, v)
            content = mdn.content
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    peer = Pyas2Peer(f"http://127.0.0.1:{server.server_address[1]}/as2", server)
    return peer


@pytest.fixture
def peer() -> Iterator[Pyas2Peer]:
    p = start_pyas2_peer()
    try:
        yield p
    finally:
        p.close()


# --- our side ------------------------------------------------------------------------------


def our_config(tmp_path: Path, url: str, **profile: str) -> Path:
    """The shipped config (us: GATEWAY), the demo partner's AS2 URL set to ``url``."""
    cfg = copy_config(tmp_path / "ours")
    path = cfg / "partners" / "demo.toml"
    text = path.read_text().replace('# url = "https://as2.demo-partner.test/as2"', f'url = "{url}"')
    for key, value in profile.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        text = "\n".join(lines) + "\n"
        text = text.replace("[as2]\n", f"[as2]\n{key} = {value}\n", 1)
    path.write_text(text)
    return cfg


@dataclass
class Ours:
    config: Config
    config_dir: Path
    data: Path
    pipeline: Pipeline
    outbound: OutboundSender

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.pipeline.store)

    def close(self) -> None:
        self.outbound.close()
        self.pipeline.close()


FAST = RetryPolicy(first=0.2, maximum=0.5, expire_after=timedelta(minutes=5))


def open_ours(cfg: Path, data: Path, *, policy: RetryPolicy = FAST, mdn_url: str | None = None) -> Ours:
    config, _ = load_config(cfg)
    pipeline = Pipeline.open(config, data)
    outbound = OutboundSender(
        config,
        load_profiles(config),
        pipeline.store,
        pipeline.archive,
        pipeline.registry,
        policy=policy,
        timeout=15,
        mdn_url=mdn_url,
    )
    return Ours(config, cfg, data, pipeline, outbound)


def wait_for(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def make_due(ledger: Ledger) -> None:
    """Every pending send due now, as if its back-off had passed."""
    for entry in ledger.pending_outbound():
        ledger.outbound_result(
            entry.id,
            state="pending",
            status=entry.status,
            attempts=entry.async_attempts,
            next_at=datetime.now(UTC),
            error=entry.async_error,
        )


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(list(argv))
    return code, out.getvalue()


# --- pyas2lib receives what we send --------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expect"),
    [
        pytest.param({}, {"compressed": False, "digest_alg": "sha256"}, id="signed-encrypted"),
        pytest.param({"compress": "true"}, {"compressed": True, "digest_alg": "sha256"}, id="compressed"),
        pytest.param(
            {"sign_digest": '"sha384"', "cipher": '"aes128-cbc"', "mdn_digest": '"sha384"'},
            {"compressed": False, "digest_alg": "sha384"},
            id="sha384-aes128",
        ),
    ],
)
def test_pyas2lib_parses_and_verifies_what_we_send(
    tmp_path: Path, peer: Pyas2Peer, profile: dict[str, str], expect: dict[str, Any]
) -> None:
    ours = open_ours(our_config(tmp_path, peer.url, **profile), tmp_path / "data")
    try:
        payload = x12_850(icn=41, po="PO-OUT-1")
        result = ours.outbound.send_bytes("demo", payload, "po.edi")
        got = peer.received[0]
        # pyas2lib decrypted, verified our signature and found the document intact
        assert got["status"] == "processed", got["error"]
        assert got["signed"]
        assert got["encrypted"]
        assert got["compressed"] is expect["compressed"]
        assert got["digest_alg"] == expect["digest_alg"]
        assert got["payload"] == payload
        assert got["filename"] == "po.edi"
        assert got["message_id"] == result.message_id
        # ... computed the MIC we did; we verified its signed MDN and that MIC
        if expect["digest_alg"] == "sha256":
            assert got["mic"] == result.entry.mic
        entry = result.entry
        assert (entry.async_state, entry.status) == ("done", "processed"), entry.async_error
        assert result.outcome is not None
        assert result.outcome.mic_ok is True
        assert result.outcome.mdn is not None
        assert result.outcome.mdn.verified
        assert entry.mdn_body is not None
        # the outbound interaction, stored through the store's public API
        [record] = result.records
        stored = ours.pipeline.store.get_interaction(record.id)
        assert stored is not None
        assert stored.direction == Direction.OUTBOUND
        assert stored.channel == "as2"
        assert stored.kind == Kind.ORDER
        assert stored.partner is not None
        assert stored.partner.id == "demo"
        assert stored.references["as2_message_id"] == result.message_id
        raw = ours.pipeline.store.get_raw(result.raw_id)
        assert raw is not None
        assert raw.state == RawState.STORED
        assert ours.pipeline.archive.get(raw.sha256) == payload
    finally:
        ours.close()


def test_unknown_document_is_sent_and_recorded_as_other(tmp_path: Path, peer: Pyas2Peer) -> None:
    ours = open_ours(our_config(tmp_path, peer.url), tmp_path / "data")
    try:
        payload = b"\x00\x01binary\r\nnot a document\n\xff"
        result = ours.outbound.send_bytes("demo", payload, "blob.bin")
        assert peer.received[0]["payload"] == payload
        assert result.entry.status == "processed"
        [record] = result.records
        assert record.kind == Kind.OTHER
        assert record.direction == Direction.OUTBOUND
    finally:
        ours.close()


def test_http_500_is_retried_and_the_last_error_is_visible(tmp_path: Path, peer: Pyas2Peer) -> None:
    peer.modes = ["500", "500", "mdn"]
    cfg = our_config(tmp_path, peer.url)
    data = tmp_path / "data"
    edi = tmp_path / "po.edi"
    edi.write_bytes(x12_850(icn=42))
    # `gateway send` with the gateway not running: one attempt, the retry is left pending
    code, out = run_cli(
        "--config", str(cfg), "--data", str(data), "send", "--partner", "demo", str(edi), "--json"
    )
    assert code == 1
    line = json.loads(out)
    assert line["as2"]["state"] == "pending"
    assert line["as2"]["status"] == "http-500"
    assert "partner database is down" in line["as2"]["last_error"]
    interaction = line["interactions"][0]["id"]
    code, out = run_cli("--config", str(cfg), "--data", str(data), "send", "--status", "--json")
    status = json.loads(out)
    assert status["state"] == "pending"
    assert status["attempts"] == 1
    assert status["interactions"] == [interaction]
    code, out = run_cli("--config", str(cfg), "--data", str(data), "interactions", "show", interaction)
    assert code == 0
    assert "state: pending" in out
    assert "last_error: HTTP 500: partner database is down" in out
    # `gateway run` loads the pending send at start and retries it on the schedule
    ours = open_ours(cfg, data)
    make_due(ours.ledger)  # the CLI's first retry is a minute away; skip the wait
    scheduler = RetryScheduler(ours.outbound, sweep_seconds=0.2)
    scheduler.start()
    try:

        def done() -> bool:
            entries = ours.ledger.list_outbound()
            return bool(entries) and entries[0].async_state == "done"

        wait_for(done)
        [entry] = ours.ledger.list_outbound()
        assert entry.status == "processed"
        assert entry.async_attempts == 3
        assert entry.async_error is None
        assert len(peer.received) == 3
        assert len({r["message_id"] for r in peer.received}) == 1  # resent with the same Message-ID
    finally:
        scheduler.stop()
        ours.close()
    code, out = run_cli(
        "--config", str(cfg), "--data", str(data), "interactions", "show", interaction, "--json"
    )
    shown = json.loads(out)
    assert shown["direction"] == "outbound"
    assert shown["as2"]["status"] == "processed"
    assert "Received-content-MIC" in shown["as2"]["mdn"]


def test_temporary_negative_mdn_is_retried(tmp_path: Path, peer: Pyas2Peer) -> None:
    peer.modes = ["negative", "mdn"]
    ours = open_ours(our_config(tmp_path, peer.url), tmp_path / "data")
    try:
        result = ours.outbound.send_bytes("demo", x12_850(icn=43), "po.edi")
        entry = result.entry
        assert entry.async_state == "pending"
        assert entry.status == "unexpected-processing-error"
        assert entry.async_error is not None
        assert "negative MDN" in entry.async_error
        assert entry.mdn_body is not None  # the negative MDN is kept
        time.sleep(0.3)
        assert ours.outbound.retry_due() == 1
        [entry] = ours.ledger.list_outbound()
        assert (entry.async_state, entry.status, entry.async_attempts) == ("done", "processed", 2)
    finally:
        ours.close()


def test_permanent_negative_mdn_fails_without_retry(tmp_path: Path, peer: Pyas2Peer) -> None:
    peer.modes = ["permanent"]
    ours = open_ours(our_config(tmp_path, peer.url), tmp_path / "data")
    try:
        result = ours.outbound.send_bytes("demo", x12_850(icn=44), "po.edi")
        assert (result.entry.async_state, result.entry.status) == ("failed", "authentication-failed")
        time.sleep(0.3)
        assert ours.outbound.retry_due() == 0
    finally:
        ours.close()


def test_mdn_with_a_wrong_mic_is_recorded_as_failed(tmp_path: Path, peer: Pyas2Peer) -> None:
    peer.modes = ["wrong-mic"]
    ours = open_ours(our_config(tmp_path, peer.url), tmp_path / "data")
    try:
        result = ours.outbound.send_bytes("demo", x12_850(icn=45), "po.edi")
        entry = result.entry
        assert (entry.async_state, entry.status) == ("failed", "mic-mismatch")
        assert result.outcome is not None
        assert result.outcome.mic_ok is False
        assert result.outcome.mdn is not None
        assert result.outcome.mdn.verified  # the signature was fine; the MIC was not
        assert entry.async_error is not None
        assert "did not receive what we signed" in entry.async_error
        time.sleep(0.3)
        assert ours.outbound.retry_due() == 0
    finally:
        ours.close()


def test_connection_refused_is_pending_then_expires(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    policy = RetryPolicy(first=0.1, maximum=0.1, expire_after=timedelta(seconds=0.5))
    ours = open_ours(our_config(tmp_path, f"http://127.0.0.1:{port}/as2"), tmp_path / "data", policy=policy)
    try:
        result = ours.outbound.send_bytes("demo", x12_850(icn=46), "po.edi")
        assert (result.entry.async_state, result.entry.status) == ("pending", "connection-failed")
        assert result.entry.async_error is not None
        assert "ConnectError" in result.entry.async_error
        time.sleep(0.6)
        ours.outbound.retry_due(datetime.now(UTC))
        [entry] = ours.ledger.list_outbound()
        assert entry.async_state == "expired"
        assert entry.async_error is not None
        assert "given up after 2 attempt(s)" in entry.async_error
    finally:
        ours.close()


def test_unknown_partner_or_no_url_is_a_usage_error(tmp_path: Path) -> None:
    cfg = copy_config(tmp_path / "ours")
    edi = tmp_path / "po.edi"
    edi.write_bytes(x12_850())
    base = ("--config", str(cfg), "--data", str(tmp_path / "data"), "send")
    assert run_cli(*base, "--partner", "nobody", str(edi))[0] == 2
    assert run_cli(*base, "--partner", "demo", str(edi))[0] == 2  # the shipped profile has no url


# --- our gateway to our gateway (loopback, two configurations) -----------------------------


def partner_config(tmp_path: Path) -> Path:
    """A second gateway playing the demo partner: AS2 id DEMOPARTNER, the partner's keys,
    and one partner profile for us (AS2 id GATEWAY, our demo certificate)."""
    cfg = copy_config(tmp_path / "partner")
    toml = (cfg / "gateway.toml").read_text()
    toml = toml.replace('as2_id = "GATEWAY"', 'as2_id = "DEMOPARTNER"')
    toml = toml.replace('certificate = "demo/gateway.crt"', 'certificate = "demo/partner.crt"')
    toml = toml.replace('private_key = "demo/gateway.key"', 'private_key = "demo/partner.key"')
    (cfg / "gateway.toml").write_text(toml)
    (cfg / "partners" / "demo.toml").unlink()
    (cfg / "partners" / "gateway.toml").write_text(
        'id = "gw"\nname = "Demo Manufacturing Ltd"\n\n[identities]\nas2 = ["GATEWAY"]\n'
        'x12 = ["ZZ:GATEWAY"]\n\n[as2]\ncertificates = ["../demo/gateway.crt"]\n'
    )
    return cfg


@dataclass
class Running:
    config: Config
    pipeline: Pipeline
    adapter: As2Adapter

    def stop(self) -> None:
        self.adapter.stop()
        self.pipeline.close()


def run_gateway(cfg: Path, data: Path, **kw: Any) -> Running:
    config, _ = load_config(cfg)
    pipeline = Pipeline.open(config, data)
    adapter = As2Adapter(config, "127.0.0.1", 0, data_dir=data, **kw)
    adapter.start(pipeline.accept)
    return Running(config, pipeline, adapter)


@pytest.fixture
def partner_gateway(tmp_path: Path) -> Iterator[Running]:
    g = run_gateway(partner_config(tmp_path), tmp_path / "partner-data")
    try:
        yield g
    finally:
        g.stop()


def test_round_trip_to_our_own_gateway(tmp_path: Path, partner_gateway: Running) -> None:
    cfg = our_config(tmp_path, partner_gateway.adapter.url)
    data = tmp_path / "data"
    edi = tmp_path / "po.edi"
    payload = x12_850(icn=51, sender="GATEWAY", po="PO-RT-1")
    edi.write_bytes(payload)
    code, out = run_cli("--config", str(cfg), "--data", str(data), "send", "--partner", "demo", str(edi))
    assert code == 0, out
    assert "done (processed)" in out
    # the partner gateway stored the document as an inbound interaction from us
    results: list[Any] = []
    partner_gateway.pipeline.drain("test", on_result=results.append)
    [result] = results
    assert result.state == RawState.STORED
    assert result.raw.transport["as2_from"] == "GATEWAY"
    [inbound] = result.records
    assert inbound.direction == Direction.INBOUND
    assert inbound.partner is not None
    assert inbound.partner.id == "gw"
    assert inbound.references.get("po_number") == "PO-RT-1"
    # ... its MIC is ours, and our outbound record shows the MDN
    code, out = run_cli("--config", str(cfg), "--data", str(data), "send", "--status", "--json")
    status = json.loads(out)
    assert (status["state"], status["status"]) == ("done", "processed")
    assert status["mic"] == result.raw.transport["mic"]
    code, out = run_cli(
        "--config", str(cfg), "--data", str(data), "interactions", "show", status["interactions"][0]
    )
    assert "direction: outbound" in out
    assert "status: processed" in out
    assert "Disposition: automatic-action/MDN-sent-automatically; processed" in out


def test_async_mdn_round_trip(tmp_path: Path, partner_gateway: Running) -> None:
    cfg = our_config(tmp_path, partner_gateway.adapter.url, mdn_mode='"async"')
    data = tmp_path / "data"
    ours = run_gateway(cfg, data)  # our endpoint receives the asynchronous MDN
    outbound = OutboundSender(
        ours.config,
        load_profiles(ours.config),
        ours.pipeline.store,
        ours.pipeline.archive,
        ours.pipeline.registry,
        mdn_url=ours.adapter.url,
    )
    try:
        result = outbound.send_bytes("demo", x12_850(icn=52, sender="GATEWAY"), "po.edi")
        assert result.entry.async_state == "awaiting-mdn"
        ledger = Ledger(ours.pipeline.store)

        def arrived() -> bool:
            entry = ledger.get(result.entry.id)
            return entry is not None and entry.async_state != "awaiting-mdn"

        wait_for(arrived)
        entry = ledger.get(result.entry.id)
        assert entry is not None
        assert (entry.async_state, entry.status) == ("done", "processed"), entry.async_error
        assert entry.mdn_body is not None
        # the MDN was matched to the outbound message, not taken in as a message
        assert ours.pipeline.store.counts()["received"] == 0
        partner_entry = partner_wait_delivered(partner_gateway, result.message_id)
        assert partner_entry.async_state == "delivered"
    finally:
        outbound.close()
        ours.stop()


def partner_wait_delivered(g: Running, message_id: str) -> LedgerEntry:
    ledger = Ledger(g.pipeline.store)

    def delivered() -> bool:
        entry = ledger.find("in", "gw", message_id)
        return entry is not None and entry.async_state == "delivered"

    wait_for(delivered)
    entry = ledger.find("in", "gw", message_id)
    assert entry is not None
    return entry


def test_gateway_run_retries_pending_sends(tmp_path: Path, peer: Pyas2Peer) -> None:
    """The AS2 adapter (what `gateway run` starts) picks up sends left pending."""
    peer.modes = ["500", "mdn"]
    cfg = our_config(tmp_path, peer.url)
    data = tmp_path / "data"
    ours = open_ours(cfg, data, policy=RetryPolicy(first=3600))
    try:
        result = ours.outbound.send_bytes("demo", x12_850(icn=53), "po.edi")
        assert result.entry.async_state == "pending"
        make_due(ours.ledger)  # as if the hour had passed
    finally:
        ours.close()
    running = run_gateway(cfg, data, retry_policy=FAST, retry_sweep_seconds=0.2)
    try:
        ledger = Ledger(running.pipeline.store)

        def done() -> bool:
            entry = ledger.get(result.entry.id)
            return entry is not None and entry.async_state == "done"

        wait_for(done)
    finally:
        running.stop()
