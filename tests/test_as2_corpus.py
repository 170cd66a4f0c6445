"""Captured real-world AS2 messages and MDNs (Mendelson, IBM Sterling, ph-OpenAS2, OpenAS2)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.as2 import mdn, mime
from gateway.as2.errors import As2Error, AuthenticationFailed
from gateway.as2.profiles import As2Profiles, PartnerAs2Runtime
from gateway.as2.receiver import unwrap
from gateway.as2.smime import KeyPair
from gateway.config import As2Settings, PartnerAs2


def split_http(data: bytes) -> tuple[dict[str, str], bytes]:
    """A captured request/response: header lines, blank line, body (any line ends)."""
    match = re.search(rb"\r?\n\r?\n", data)
    assert match is not None
    lines = re.split(rb"\r?\n", data[: match.start()])
    if b":" not in lines[0] or lines[0].startswith(b"HTTP"):
        lines = lines[1:]  # a request line ("HTTP 1.1 POST /any")
    return mime.unfold(lines), data[match.end() :]


def mecas2_profiles(corpus: Path, verify: list[x509.Certificate]) -> tuple[As2Profiles, PartnerAs2Runtime]:
    key, cert, _ = pkcs12.load_key_and_certificates(
        (corpus / "as2/pyas2lib/cert_test.p12").read_bytes(), b"test"
    )
    assert key is not None
    assert cert is not None
    settings = PartnerAs2(
        require_signature=False,
        require_encryption=False,
        digests=("sha1", "sha256", "sha384", "sha512"),
        ciphers=("aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"),
    )
    partner = PartnerAs2Runtime("mecas2", "Mendelson", ("mecas2",), settings, tuple(verify))
    return As2Profiles("pyas2lib", (KeyPair(key, cert),), As2Settings(), {"mecas2": partner}), partner  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "layers"),
    [
        ("mecas2_signed.as2", ["signed"]),
        ("mecas2_encrypted.as2", ["encrypted"]),
        ("mecas2_signed_encrypted.as2", ["encrypted", "signed"]),
        ("mecas2_compressed_signed_encrypted.as2", ["encrypted", "signed", "compressed"]),
    ],
)
def test_mendelson_messages_decrypt_and_verify(corpus: Path, name: str, layers: list[str]) -> None:
    mendelson = x509.load_pem_x509_certificate((corpus / "as2/pyas2lib/cert_mecas2_public.pem").read_bytes())
    profiles, partner = mecas2_profiles(corpus, [mendelson])
    headers, body = split_http((corpus / "as2/pyas2lib" / name).read_bytes())
    assert headers["as2-from"] == "mecas2"
    out = unwrap(headers, body, profiles, partner, max_decompressed=10_000_000)
    assert out.layers == layers
    expected = (corpus / "as2/pyas2lib/payload_edifact_orders.txt").read_bytes()
    assert mime.canonical(out.payload).rstrip() == mime.canonical(expected).rstrip()
    if out.signed:
        assert out.digest == "sha256"
        assert "mendelson" in (out.signer or "")


def test_mendelson_signature_with_another_certificate_is_refused(corpus: Path) -> None:
    other = x509.load_pem_x509_certificate((corpus / "as2/pyas2lib/cert_test_public.pem").read_bytes())
    profiles, partner = mecas2_profiles(corpus, [other])
    headers, body = split_http((corpus / "as2/pyas2lib/mecas2_signed.as2").read_bytes())
    with pytest.raises(AuthenticationFailed):
        unwrap(headers, body, profiles, partner, max_decompressed=10_000_000)


def _embedded_signer(p7s: bytes) -> x509.Certificate:
    sd = cms.ContentInfo.load(p7s)["content"]
    return x509.load_der_x509_certificate(sd["certificates"][0].chosen.dump())


def test_openas2_signed_x12_request_verifies(corpus: Path) -> None:
    headers, body = split_http((corpus / "as2/phase2/issue12_signed_x12_850_http_request.txt").read_bytes())
    _ctype, params = mime.parse_content_type(headers["content-type"])
    parts = mime.split_multipart(body, params["boundary"])
    signer = _embedded_signer(mime.split_entity(parts[1]).decoded_body())
    profiles, partner = mecas2_profiles(corpus, [signer])
    out = unwrap(headers, body, profiles, partner, max_decompressed=10_000_000)
    assert out.signed
    assert out.digest == "sha1"
    assert out.payload.startswith(b"ISA*00*")
    assert out.filename == "test_data_2.edi"
    request = mdn.MdnRequest.from_headers(headers)
    assert request.signed
    assert request.micalgs == ("sha1",)
    assert request.mic_alg() == ("sha1", "sha1")


def test_mendelson_signed_mdn(corpus: Path) -> None:
    headers, body = split_http((corpus / "as2/pyas2lib/mecas2_signed.mdn").read_bytes())
    # Signed in 2016 by an older "mecas2" key (CN=mecas2), not "mendelson test key 3":
    # that certificate is refused, the one it was signed with verifies.
    key3 = x509.load_pem_x509_certificate((corpus / "as2/pyas2lib/cert_mecas2_public.pem").read_bytes())
    with pytest.raises(AuthenticationFailed):
        mdn.parse(headers, body, trusted=[key3])
    _, params = mime.parse_content_type(headers["content-type"])
    parts = mime.split_multipart(body, params["boundary"])
    signer = _embedded_signer(mime.split_entity(parts[1]).decoded_body())
    assert signer.subject.rfc4514_string().startswith("1.2.840.113549.1.9.1=webmaster") or "CN=mecas2" in (
        signer.subject.rfc4514_string()
    )
    parsed = mdn.parse(headers, body, trusted=[signer])
    assert parsed.signed
    assert parsed.verified
    assert parsed.ok
    assert parsed.mic_alg == "sha-256"
    assert parsed.mic == "O4bvrm5t2YunRfwvZicNdEUmPaPZ9vUslX8loVLDck0="
    assert parsed.original_message_id == "20161230102456.10748.40759@imac.local"


def test_mendelson_unsigned_negative_mdn(corpus: Path) -> None:
    headers, body = split_http((corpus / "as2/pyas2lib/mecas2_unsigned.mdn").read_bytes())
    parsed = mdn.parse(headers, body)
    assert not parsed.signed
    assert not parsed.ok
    assert parsed.status == "authentication-failed"


def test_sterling_b2bi_signed_mdn(corpus: Path) -> None:
    headers, body = split_http((corpus / "as2/pyas2lib/sb2bi_signed.mdn").read_bytes())
    cert = x509.load_pem_x509_certificate((corpus / "as2/pyas2lib/cert_sb2bi_public.pem").read_bytes())
    parsed = mdn.parse(headers, body, trusted=[cert])
    assert parsed.verified
    assert parsed.ok
    assert parsed.mic_alg == "sha1"


def test_sterling_peppol_mdn_compact_headers(corpus: Path) -> None:
    headers = mime.unfold((corpus / "as2/phase2/mdn_sterling_peppol.header").read_bytes().splitlines())
    body = (corpus / "as2/phase2/mdn_sterling_peppol.payload").read_bytes()
    cert = x509.load_pem_x509_certificate((corpus / "as2/phase2/mdn_sterling_peppol_signer.pem").read_bytes())
    # The capture's binary signature went through a UTF-8 decode upstream (bytes became
    # U+FFFD), so it cannot verify: that must be a refusal, never a crash or a pass.
    with pytest.raises(AuthenticationFailed):
        mdn.parse(headers, body, trusted=[cert])
    parsed = mdn.parse(headers, body, verify=False)
    assert parsed.signed
    assert not parsed.verified
    assert parsed.ok
    assert (parsed.mic, parsed.mic_alg) == ("BNIQV5N+hShfIa+06dXMM4fkS8A=", "sha1")
    assert parsed.original_message_id == "4af6f84c-d882-4466-8e0c-305a7fbe37b3@QVALIA-PSE000094"


def test_ph_openas2_quoted_header_values_mdn(corpus: Path) -> None:
    # ph-OpenAS2 4.4.4 wraps every header value in double quotes (phase2 issue 97).
    headers = mime.unfold((corpus / "as2/phase2/mdn_issue97.header").read_bytes().splitlines())
    body = (corpus / "as2/phase2/mdn_issue97.payload").read_bytes()
    ctype, params = mime.parse_content_type(headers["content-type"])
    assert ctype == "multipart/signed"
    # The capture's line ends were converted to LF upstream, so the signed bytes are
    # gone: the signature is refused (integrity), and the report itself still parses.
    with pytest.raises(As2Error):
        mdn.parse(headers, body, trusted=[cert_of(body, params["boundary"])])
    parsed = mdn.parse(headers, body, verify=False)
    assert parsed.signed
    assert parsed.ok
    assert (parsed.mic, parsed.mic_alg) == ("WX3WE/vT631XugOIxrcgSd1YPVo=", "sha-1")


def cert_of(body: bytes, boundary: str) -> x509.Certificate:
    parts = mime.split_multipart(body, boundary)
    return _embedded_signer(mime.split_entity(parts[1]).decoded_body())
