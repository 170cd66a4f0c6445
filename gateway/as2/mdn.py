"""Message Disposition Notifications (RFC 3798 as profiled by RFC 4130): build and parse."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate

from cryptography import x509

from gateway.as2 import mime, smime
from gateway.as2.errors import As2Error, UnexpectedProcessingError
from gateway.as2.smime import KeyPair

#: MIC algorithms we compute, in the spelling RFC 5751 uses for micalg
MIC_ALGS = {
    "sha1": "sha-1",
    "sha224": "sha-224",
    "sha256": "sha-256",
    "sha384": "sha-384",
    "sha512": "sha-512",
}

USER_AGENT = "b2b-channel-gateway"


@dataclass(frozen=True)
class MdnRequest:
    """What the sender asked for in its Disposition-Notification-* headers."""

    wanted: bool = False
    signed: bool = False
    #: requested MIC algorithms as the sender spelled them, preference order
    micalgs: tuple[str, ...] = ()
    async_url: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> MdnRequest:
        wanted = bool(headers.get("disposition-notification-to", "").strip())
        options = parse_options(headers.get("disposition-notification-options", ""))
        protocol = options.get("signed-receipt-protocol", ())
        micalgs = tuple(a for a in options.get("signed-receipt-micalg", ()) if a)
        url = headers.get("receipt-delivery-option", "").strip() or None
        return cls(
            wanted=wanted or url is not None,
            signed=any(p.lower() in {"pkcs7-signature", "application/pkcs7-signature"} for p in protocol),
            micalgs=micalgs,
            async_url=url,
        )

    def mic_alg(self, fallback: str = "sha256") -> tuple[str, str]:
        """(hashlib name, spelling to echo) of the first requested algorithm we support."""
        for name in self.micalgs:
            digest = smime.digest_name(name)
            if digest in MIC_ALGS:
                return digest, name.strip()
        digest = smime.digest_name(fallback)
        return digest, MIC_ALGS.get(digest, "sha-256")


def parse_options(value: str) -> dict[str, tuple[str, ...]]:
    """``a=importance, v1, v2; b=...`` -> {a: (v1, v2)} (the importance is dropped)."""
    out: dict[str, tuple[str, ...]] = {}
    for clause in value.split(";"):
        name, sep, rest = clause.partition("=")
        if not sep:
            continue
        items = [i.strip().strip('"') for i in rest.split(",")]
        if items and items[0].lower() in {"required", "optional"}:
            items = items[1:]
        out[name.strip().lower()] = tuple(items)
    return out


def compute_mic(content: bytes, digest: str) -> str:
    return base64.b64encode(hashlib.new(smime.digest_name(digest), content).digest()).decode()


@dataclass(frozen=True)
class Mdn:
    """A built MDN: HTTP headers and body, ready to send or store."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    disposition: str
    message_id: str

    @property
    def content_type(self) -> str:
        return next(v for k, v in self.headers if k.lower() == "content-type")

    def as_bytes(self) -> bytes:
        """Headers and body, as pyas2lib's ``Mdn.parse`` and the ledger take them."""
        return mime.header_block(self.headers) + b"\r\n" + self.body


def disposition_line(error: As2Error | None) -> str:
    mode = "automatic-action/MDN-sent-automatically"
    if error is None:
        return f"{mode}; processed"
    return f"{mode}; processed/error: {error.mdn_disposition}"


def _boundary() -> str:
    return f"----=_MDN_{uuid.uuid4().hex}"


def build(
    *,
    our_id: str,
    partner_id: str,
    original_message_id: str,
    error: As2Error | None,
    mic: tuple[str, str] | None,
    request: MdnRequest,
    signer: KeyPair | None,
    domain: str = "gateway.local",
) -> Mdn:
    """The MDN for a message: multipart/report, signed when asked and we have a key.

    ``mic`` is (base64 value, algorithm spelling); ``error`` None means processed.
    """
    disposition = disposition_line(error)
    if error is None:
        text = (
            f"The AS2 message <{original_message_id}> was received and stored safely by {our_id}.\r\n"
            "Its contents will be processed; this receipt does not say they are valid business documents.\r\n"
        )
    else:
        text = (
            f"The AS2 message <{original_message_id}> was NOT accepted by {our_id}: "
            f"{error.mdn_disposition}.\r\nReason: {_one_line(error.message)}\r\n"
        )
    fields = [
        ("Reporting-UA", USER_AGENT),
        ("Original-Recipient", f"rfc822; {our_id}"),
        ("Final-Recipient", f"rfc822; {our_id}"),
        ("Original-Message-ID", f"<{original_message_id}>"),
    ]
    if mic is not None:
        fields.append(("Received-Content-MIC", f"{mic[0]}, {mic[1]}"))
    fields.append(("Disposition", disposition))
    if error is not None:
        fields.append(("Failure", _one_line(error.message)[:500]))
    report_boundary = _boundary()
    report_type = f'multipart/report; report-type=disposition-notification; boundary="{report_boundary}"'
    report_body = (
        f"--{report_boundary}\r\n".encode()
        + b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + text.encode("ascii", "replace")
        + f"\r\n--{report_boundary}\r\n".encode()
        + b"Content-Type: message/disposition-notification\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
        + mime.header_block(fields)
        + f"\r\n--{report_boundary}--\r\n".encode()
    )
    message_id = f"{uuid.uuid4().hex}@{domain}"
    common = [
        ("AS2-Version", "1.2"),
        ("AS2-From", quote_as2_name(our_id)),
        ("AS2-To", quote_as2_name(partner_id)),
        ("Message-ID", f"<{message_id}>"),
        ("Date", formatdate(usegmt=True)),
        ("Subject", "AS2 MDN"),
        ("Mime-Version", "1.0"),
    ]
    if not (request.signed and signer is not None):
        return Mdn((*common, ("Content-Type", report_type)), report_body, disposition, message_id)
    # What is signed is the report entity with its Content-Type, CRLF-canonical.
    entity = f"Content-Type: {report_type}\r\n\r\n".encode() + report_body
    sig_alg, spelling = request.mic_alg()
    signature = smime.sign(entity, signer, sig_alg)
    sig_b64 = base64.encodebytes(signature).replace(b"\n", b"\r\n")
    outer = _boundary()
    body = (
        f"--{outer}\r\n".encode()
        + entity
        + f"\r\n--{outer}\r\n".encode()
        + b"Content-Type: application/pkcs7-signature; name=smime.p7s; smime-type=signed-data\r\n"
        + b"Content-Transfer-Encoding: base64\r\n"
        + b"Content-Disposition: attachment; filename=smime.p7s\r\n\r\n"
        + sig_b64
        + f"\r\n--{outer}--\r\n".encode()
    )
    ctype = f'multipart/signed; protocol="application/pkcs7-signature"; micalg={spelling}; boundary="{outer}"'
    return Mdn((*common, ("Content-Type", ctype)), body, disposition, message_id)


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def quote_as2_name(name: str) -> str:
    """RFC 4130 6.2: an AS2 name with spaces or specials goes in double quotes."""
    if re.fullmatch(r"[!#-'*+\-.0-9=?A-Z^-~]+", name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unquote_as2_name(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


# --- parsing MDNs we receive (sending, and captured ones) ---------------------------------


@dataclass(frozen=True)
class ParsedMdn:
    original_message_id: str
    disposition: str
    #: "processed", or the error/failure modifier ("authentication-failed", ...)
    status: str
    mic: str | None
    mic_alg: str | None
    signed: bool
    verified: bool
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "processed"


def parse(
    headers: Mapping[str, str],
    body: bytes,
    *,
    trusted: Sequence[x509.Certificate] = (),
    verify: bool = True,
    digests: Sequence[str] = ("sha1", "sha256", "sha384", "sha512"),
) -> ParsedMdn:
    """Parse an MDN (HTTP headers with lower-case names, and body); verify its signature.

    With ``verify`` and a signed MDN, a signature that does not verify with ``trusted``
    raises :class:`~gateway.as2.errors.AuthenticationFailed`.
    """
    entity = mime.Entity({k.lower(): v for k, v in headers.items()}, body)
    ctype, params = entity.content_type
    signed = verified = False
    if ctype == "multipart/signed":
        signed = True
        parts = mime.split_multipart(entity.body, params.get("boundary", ""))
        if len(parts) < 2:
            raise UnexpectedProcessingError("signed MDN without a signature part")
        if verify:
            sig = mime.split_entity(parts[1]).decoded_body()
            smime.verify(sig, mime.signed_forms(parts[0]), trusted, digests=digests)
            verified = True
        entity = mime.split_entity(parts[0])
        ctype, params = entity.content_type
    if ctype != "multipart/report":
        raise UnexpectedProcessingError(f"not an MDN: {ctype}")
    report: dict[str, str] | None = None
    for part in mime.split_multipart(entity.body, params.get("boundary", "")):
        sub = mime.split_entity(part)
        if sub.content_type[0] == "message/disposition-notification":
            report = mime.unfold(re.split(rb"\r?\n", sub.decoded_body()))
    if report is None:
        raise UnexpectedProcessingError("MDN without a message/disposition-notification part")
    disposition = report.get("disposition", "")
    status_text = disposition.rpartition(";")[2].strip()
    kind, _, modifier = status_text.partition("/")
    status = "processed"
    if modifier or kind.strip().lower() != "processed":
        status = (modifier.partition(":")[2] or modifier or kind).strip().lower()
    mic = mic_alg = None
    if "received-content-mic" in report:
        value, _, alg = report["received-content-mic"].partition(",")
        mic, mic_alg = value.strip(), alg.strip() or None
    return ParsedMdn(
        original_message_id=report.get("original-message-id", "").strip().strip("<>"),
        disposition=disposition,
        status=status,
        mic=mic,
        mic_alg=mic_alg,
        signed=signed,
        verified=verified,
        fields=report,
    )
