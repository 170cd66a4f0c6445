"""The OpenSSL command line as the AS2 partner (``openssl smime`` + ``curl``), and refusals.

Every message here is built by OpenSSL, an implementation independent of ours, and
posted by curl; each refusal must be recorded (quarantined with its reason, raw kept)
and create no interaction.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import RawState
from tests.conftest import REPO, need_peer
from tests.helpers import x12_850
from tests.test_as2_receive import As2Gateway, start_gateway

DEMO = REPO / "config" / "demo"

MDN_OPTIONS = "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha-256"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[As2Gateway]:
    for tool in ("openssl", "curl"):
        if shutil.which(tool) is None:
            need_peer(tool)
    g = start_gateway(tmp_path / "gw")
    try:
        yield g
    finally:
        g.adapter.stop()
        g.pipeline.close()


def run(*args: str | Path) -> bytes:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True).stdout


def entity(tmp: Path, payload: bytes) -> Path:
    """The MIME entity the partner signs: headers + payload, CRLF, exactly as signed."""
    path = tmp / "entity.mime"
    path.write_bytes(
        b"Content-Type: application/edi-x12\r\nContent-Disposition: attachment; filename=po.edi\r\n\r\n"
        + payload
    )
    return path


def sign(tmp: Path, src: Path, key: str = "partner", md: str = "sha256") -> Path:
    out = tmp / "signed.mime"
    run(
        "openssl", "smime", "-sign", "-binary", "-crlfeol", "-md", md, "-in", src,
        "-signer", DEMO / f"{key}.crt", "-inkey", DEMO / f"{key}.key", "-out", out,
    )  # fmt: skip
    return out


def encrypt(tmp: Path, src: Path, cert: Path | None = None, cipher: str = "-aes256") -> Path:
    out = tmp / "encrypted.der"
    run(
        "openssl", "smime", "-encrypt", "-binary", cipher, "-outform", "DER",
        "-in", src, "-out", out, cert or DEMO / "gateway.crt",
    )  # fmt: skip
    return out


def curl(
    gw: As2Gateway,
    tmp: Path,
    body: Path,
    content_type: str,
    *,
    as2_from: str = "DEMOPARTNER",
    as2_to: str = "GATEWAY",
    message_id: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers_file, body_file = tmp / "response.headers", tmp / "response.body"
    mid = message_id or f"<{uuid.uuid4().hex}@openssl.test>"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            str(body_file),
            "-D",
            str(headers_file),
            "-w",
            "%{http_code}",
            "-H",
            f"AS2-From: {as2_from}",
            "-H",
            f"AS2-To: {as2_to}",
            "-H",
            "AS2-Version: 1.2",
            "-H",
            f"Message-ID: {mid}",
            "-H",
            f"Content-Type: {content_type}",
            "-H",
            "Disposition-Notification-To: edi@demo-partner.test",
            "-H",
            f"Disposition-Notification-Options: {MDN_OPTIONS}",
            "--data-binary",
            f"@{body}",
            gw.url,
        ],
        check=True,
        capture_output=True,
    )
    headers: dict[str, str] = {}
    for line in headers_file.read_text("latin-1").splitlines()[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(result.stdout), headers, body_file.read_bytes()


ENVELOPED = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"


def verify_mdn(tmp: Path, headers: dict[str, str], body: bytes) -> bytes:
    """``openssl smime -verify`` of the MDN; returns the verified multipart/report."""
    mdn_file = tmp / "mdn.mime"
    mdn_file.write_bytes(f"Content-Type: {headers['content-type']}\r\n\r\n".encode() + body)
    return run(
        "openssl", "smime", "-verify", "-in", mdn_file, "-CAfile", DEMO / "gateway.crt", "-purpose", "any"
    )  # fmt: skip


def field(report: bytes, name: str) -> str:
    for line in report.replace(b"\r\n", b"\n").split(b"\n"):
        if line.lower().startswith(name.lower().encode() + b":"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(f"{name} not in MDN: {report!r}")


def test_openssl_signed_then_encrypted_is_accepted_and_mic_matches(gw: As2Gateway, tmp_path: Path) -> None:
    signed_part = entity(tmp_path, x12_850(icn=42))
    body = encrypt(tmp_path, sign(tmp_path, signed_part))
    status, headers, mdn = curl(gw, tmp_path, body, ENVELOPED)
    assert status == 200, mdn
    report = verify_mdn(tmp_path, headers, mdn)
    assert field(report, "Disposition").endswith("; processed")
    expected_mic = base64.b64encode(hashlib.sha256(signed_part.read_bytes()).digest()).decode()
    # the same figure the OpenSSL CLI gives for the part that was signed
    cli_mic = (
        subprocess.run(
            ["base64"],
            input=run("openssl", "dgst", "-sha256", "-binary", signed_part),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    assert cli_mic == expected_mic
    assert field(report, "Received-Content-MIC") == f"{expected_mic}, sha-256"
    results = gw.raw_messages()
    assert [r.state for r in results] == [RawState.STORED]
    assert results[0].records[0].partner is not None


def test_openssl_cms_oaep_and_aes128(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850(icn=43)), md="sha512")
    out = tmp_path / "oaep.der"
    run(
        "openssl", "cms", "-encrypt", "-binary", "-aes128", "-outform", "DER", "-in", signed, "-out", out,
        "-recip", DEMO / "gateway.crt", "-keyopt", "rsa_padding_mode:oaep",
    )  # fmt: skip
    status, headers, mdn = curl(gw, tmp_path, out, ENVELOPED)
    assert status == 200
    report = verify_mdn(tmp_path, headers, mdn)
    assert field(report, "Disposition").endswith("; processed")
    raw = gw.raw_messages()[0].raw
    assert (raw.transport["as2_key_transport"], raw.transport["as2_cipher"]) == ("rsa-oaep", "aes128-cbc")


def _refused(gw: As2Gateway, disposition: str) -> None:
    results = gw.raw_messages()
    assert [r.state for r in results] == [RawState.QUARANTINED]
    assert results[0].quarantine is not None
    assert disposition in results[0].quarantine.reason
    assert gw.pipeline.store.list_interactions() == []


def _negative(gw: As2Gateway, tmp: Path, body: Path, disposition: str, content_type: str = ENVELOPED) -> None:
    status, headers, mdn = curl(gw, tmp, body, content_type)
    assert status == 200  # a negative MDN is still a receipt
    report = verify_mdn(tmp, headers, mdn)
    assert field(report, "Disposition").endswith(f"processed/error: {disposition}")
    _refused(gw, disposition)


def test_tampered_signature_is_authentication_failed(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850()))
    text = signed.read_bytes()
    # The RSA signature value is the last thing in the PKCS#7 structure: change a
    # base64 character near the end of the signature part.
    end = text.rindex(b"------")  # the close delimiter
    pos = end - 40
    swapped = b"A" if text[pos : pos + 1] != b"A" else b"B"
    signed.write_bytes(text[:pos] + swapped + text[pos + 1 :])
    _negative(gw, tmp_path, encrypt(tmp_path, signed), "authentication-failed")


def test_altered_content_is_integrity_check_failed(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850(qty="3")))
    signed.write_bytes(signed.read_bytes().replace(b"PO1*1*3*EA", b"PO1*1*9*EA"))
    _negative(gw, tmp_path, encrypt(tmp_path, signed), "integrity-check-failed")


def test_signed_by_another_key_is_authentication_failed(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850()), key="gateway")
    _negative(gw, tmp_path, encrypt(tmp_path, signed), "authentication-failed")


def test_encrypted_to_another_certificate_is_decryption_failed(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850()))
    _negative(gw, tmp_path, encrypt(tmp_path, signed, cert=DEMO / "partner.crt"), "decryption-failed")


def test_unsigned_where_required_is_authentication_failed(gw: As2Gateway, tmp_path: Path) -> None:
    _negative(gw, tmp_path, encrypt(tmp_path, entity(tmp_path, x12_850())), "authentication-failed")


def test_unencrypted_where_required_is_insufficient_security(gw: As2Gateway, tmp_path: Path) -> None:
    signed = sign(tmp_path, entity(tmp_path, x12_850()))
    head, _, body = signed.read_bytes().partition(b"\r\n\r\n")
    ctype = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-type:")
    )
    signed.write_bytes(body)
    _negative(gw, tmp_path, signed, "insufficient-message-security", content_type=ctype)


def test_truncated_body_is_decryption_failed(gw: As2Gateway, tmp_path: Path) -> None:
    body = encrypt(tmp_path, sign(tmp_path, entity(tmp_path, x12_850())))
    body.write_bytes(body.read_bytes()[: body.stat().st_size // 2])
    _negative(gw, tmp_path, body, "decryption-failed")


@pytest.mark.parametrize(
    ("as2_from", "as2_to", "reason"),
    [("STRANGER", "GATEWAY", "unknown AS2-From"), ("DEMOPARTNER", "SOMEONE", "unknown AS2-To")],
)
def test_unknown_partner_is_refused_with_4xx(
    gw: As2Gateway, tmp_path: Path, as2_from: str, as2_to: str, reason: str
) -> None:
    body = encrypt(tmp_path, sign(tmp_path, entity(tmp_path, x12_850())))
    status, _headers, text = curl(gw, tmp_path, body, ENVELOPED, as2_from=as2_from, as2_to=as2_to)
    assert 400 <= status < 500
    assert reason.encode() in text
    assert text.count(b"\n") == 1
    _refused(gw, reason)


def test_oversized_is_413_before_read_whole(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        need_peer("curl")
    g = start_gateway(
        tmp_path / "gw", {"gateway.toml": [("max_message_bytes = 52428800", "max_message_bytes = 4096")]}
    )
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 100_000)
        status, _headers, body = curl(g, tmp_path, big, ENVELOPED)
        assert status == 413, body
        _refused(g, "exceeds the limit")
    finally:
        g.adapter.stop()
        g.pipeline.close()
