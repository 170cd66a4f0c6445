"""Receiving AS2 over real HTTP, with pyas2lib as the partner (an implementation not ours).

The endpoint is the real adapter (Starlette on uvicorn) on a free loopback port, with
the shipped configuration and demo keys, the real pipeline and store in a temp dir.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.as2 import As2Adapter
from gateway.as2.ledger import Ledger, mdn_for_raw
from gateway.config import Config, load_config
from gateway.pipeline import Pipeline
from gateway.store import RawState
from tests.conftest import REPO, need_peer
from tests.helpers import copy_config, x12_850

DEMO = REPO / "config" / "demo"


@dataclass
class As2Gateway:
    url: str
    config: Config
    config_dir: Path
    pipeline: Pipeline
    adapter: As2Adapter

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.pipeline.store)

    def raw_messages(self) -> list[Any]:
        # Every raw message, by draining the inbox: processing is what the tests assert on.
        results: list[Any] = []
        self.pipeline.drain("test", on_result=results.append)
        return results


def start_gateway(tmp_path: Path, edit: dict[str, list[tuple[str, str]]] | None = None) -> As2Gateway:
    """The gateway on a free port; ``edit`` replaces text in files of the copied config."""
    cfg = copy_config(tmp_path / "config")
    for name, replacements in (edit or {}).items():
        text = (cfg / name).read_text()
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new)
        (cfg / name).write_text(text)
    config, _ = load_config(cfg)
    pipeline = Pipeline.open(config, tmp_path / "data")
    adapter = As2Adapter(config, "127.0.0.1", 0, data_dir=tmp_path / "data")
    adapter.start(pipeline.accept)
    return As2Gateway(adapter.url, config, cfg, pipeline, adapter)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[As2Gateway]:
    g = start_gateway(tmp_path)
    try:
        yield g
    finally:
        g.adapter.stop()
        g.pipeline.close()


def pyas2() -> Any:
    try:
        import pyas2lib
    except ImportError:
        need_peer("pyas2lib (scripts/setup --test installs it)")
    return pyas2lib


def demo_pem(name: str) -> bytes:
    return (DEMO / f"{name}.key").read_bytes() + (DEMO / f"{name}.crt").read_bytes()


def pyas2_partner(lib: Any, **kw: Any) -> tuple[Any, Any]:
    """(our demo partner as pyas2lib's Organization, the gateway as its Partner)."""
    org = lib.Organization(as2_name="DEMOPARTNER", sign_key=demo_pem("partner"), sign_key_pass="")
    settings: dict[str, Any] = {
        "as2_name": "GATEWAY",
        "verify_cert": (DEMO / "gateway.crt").read_bytes(),
        "encrypt_cert": (DEMO / "gateway.crt").read_bytes(),
        "validate_certs": False,
        "sign": True,
        "encrypt": True,
        "enc_alg": "aes_256_cbc",
        "digest_alg": "sha256",
        "mdn_mode": "SYNC",
        "mdn_digest_alg": "sha256",
    }
    settings.update(kw)
    return org, lib.Partner(**settings)


def post(url: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    return httpx.post(url, content=body, headers=headers, timeout=30)


def raw_response(resp: httpx.Response) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()).encode()
    return head + b"\r\n" + resp.content


def send_pyas2(
    url: str, lib: Any, payload: bytes, message_id: str | None = None, **kw: Any
) -> tuple[Any, httpx.Response]:
    org, partner = pyas2_partner(lib, **kw)
    msg = lib.Message(sender=org, receiver=partner)
    msg.build(payload, filename="po.edi", content_type="application/edi-x12", message_id=message_id)
    return msg, post(url, {k: str(v) for k, v in msg.headers.items()}, msg.content)


def check_mdn(lib: Any, msg: Any, resp: httpx.Response) -> tuple[str, str | None]:
    mdn = lib.Mdn()
    status, detail = mdn.parse(raw_response(resp), find_message_cb=lambda _mid, _rcpt: msg)
    return str(status), None if detail is None else str(detail)


COMBOS = [
    pytest.param(sign, encrypt, compress, id=f"sign={sign}-encrypt={encrypt}-compress={compress}")
    for sign, encrypt, compress in itertools.product([True, False], repeat=3)
]


@pytest.mark.parametrize(("sign", "encrypt", "compress"), COMBOS)
def test_pyas2lib_every_combination(tmp_path: Path, sign: bool, encrypt: bool, compress: bool) -> None:
    lib = pyas2()
    # The shipped demo partner requires both; relax the profile to see each subset accepted.
    profile = [
        ("require_signature = true", f"require_signature = {str(sign).lower()}"),
        ("require_encryption = true", f"require_encryption = {str(encrypt).lower()}"),
    ]
    g = start_gateway(tmp_path, {"partners/demo.toml": profile})
    try:
        msg, resp = send_pyas2(g.url, lib, x12_850(), sign=sign, encrypt=encrypt, compress=compress)
        assert resp.status_code == 200, resp.text
        status, detail = check_mdn(lib, msg, resp)
        assert (status, detail) == ("processed", None)
        assert resp.headers["content-type"].startswith("multipart/signed")
        results = g.raw_messages()
        assert [r.state for r in results] == [RawState.STORED]
        record = results[0].records[0]
        assert record.references.get("po_number") == "PO-1" or record.document.control_number
        assert record.partner is not None
        assert record.partner.id == "demo"
        assert results[0].raw.transport["as2_message_id"] == msg.message_id
        entry = mdn_for_raw(g.pipeline.store, results[0].raw.id)
        assert entry is not None
        assert entry.ok
        assert entry.mic == results[0].raw.transport["mic"]
        if sign:
            assert entry.mic == msg.mic.decode()
    finally:
        g.adapter.stop()
        g.pipeline.close()


@pytest.mark.parametrize(
    ("enc_alg", "digest_alg", "key_enc_alg"),
    [
        ("aes_128_cbc", "sha256", "rsaes_pkcs1v15"),
        ("aes_192_cbc", "sha384", "rsaes_pkcs1v15"),
        ("aes_256_cbc", "sha512", "rsaes_oaep"),
    ],
)
def test_pyas2lib_algorithms(gw: As2Gateway, enc_alg: str, digest_alg: str, key_enc_alg: str) -> None:
    lib = pyas2()
    msg, resp = send_pyas2(
        gw.url,
        lib,
        x12_850(),
        enc_alg=enc_alg,
        digest_alg=digest_alg,
        key_enc_alg=key_enc_alg,
        mdn_digest_alg=digest_alg,
    )
    assert resp.status_code == 200, resp.text
    assert check_mdn(lib, msg, resp) == ("processed", None)
    raw = gw.raw_messages()[0].raw
    assert raw.transport["as2_digest"] == digest_alg
    assert raw.transport["as2_cipher"] == enc_alg.replace("_cbc", "-cbc").replace("aes_", "aes")


def test_3des_and_sha1_refused_unless_the_profile_allows(tmp_path: Path) -> None:
    lib = pyas2()
    g = start_gateway(tmp_path)
    try:
        msg, resp = send_pyas2(g.url, lib, x12_850(), enc_alg="tripledes_192_cbc")
        assert check_mdn(lib, msg, resp) == ("processed/error", "insufficient-message-security")
        msg, resp = send_pyas2(g.url, lib, x12_850(), digest_alg="sha1")
        assert check_mdn(lib, msg, resp) == ("processed/error", "insufficient-message-security")
    finally:
        g.adapter.stop()
        g.pipeline.close()
    profile = [
        ('digests = ["sha256"', 'digests = ["sha1", "sha256"'),
        ('ciphers = ["aes128-cbc"', 'ciphers = ["3des-cbc", "aes128-cbc"'),
    ]
    g = start_gateway(tmp_path / "allowed", {"partners/demo.toml": profile})
    try:
        msg, resp = send_pyas2(
            g.url, lib, x12_850(), enc_alg="tripledes_192_cbc", digest_alg="sha1", mdn_digest_alg="sha1"
        )
        assert check_mdn(lib, msg, resp) == ("processed", None)
    finally:
        g.adapter.stop()
        g.pipeline.close()


def test_resend_returns_the_same_mdn_and_one_interaction(gw: As2Gateway) -> None:
    lib = pyas2()
    org, partner = pyas2_partner(lib)
    msg = lib.Message(sender=org, receiver=partner)
    msg.build(x12_850(), filename="po.edi", content_type="application/edi-x12")
    headers = {k: str(v) for k, v in msg.headers.items()}
    first = post(gw.url, headers, msg.content)
    second = post(gw.url, headers, msg.content)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert first.headers["message-id"] == second.headers["message-id"]
    assert check_mdn(lib, msg, second) == ("processed", None)
    results = gw.raw_messages()
    assert len(results) == 1  # the resend was not accepted a second time
    assert len(gw.pipeline.store.list_interactions()) == 1


def test_unsigned_mdn_when_not_asked_for_a_signed_one(gw: As2Gateway) -> None:
    lib = pyas2()
    msg, resp = send_pyas2(gw.url, lib, x12_850(), mdn_digest_alg=None)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("multipart/report")
    assert check_mdn(lib, msg, resp) == ("processed", None)


def test_no_mdn_requested(gw: As2Gateway) -> None:
    lib = pyas2()
    _msg, resp = send_pyas2(gw.url, lib, x12_850(), mdn_mode=None, mdn_digest_alg=None)
    assert resp.status_code == 200
    assert resp.content == b""
    assert [r.state for r in gw.raw_messages()] == [RawState.STORED]
