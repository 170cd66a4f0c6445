"""Sending AS2 messages: the protocol logic, independent of the store.

:func:`build_message` wraps a payload as the partner profile says (compress, sign,
encrypt; RFC 4130 order: compress before sign, sign before encrypt) and computes the
MIC we expect back; :func:`interpret` turns the HTTP response (a synchronous MDN, or
the acknowledgement of an asynchronous one) into an :class:`Outcome`, and
:func:`check_mdn` does the same for an MDN however it arrived: its signature must
verify with the partner's certificate, it must name our Message-ID, and its MIC must
equal ours.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import formatdate

from gateway.as2 import mdn, mime, smime
from gateway.as2.errors import As2Error
from gateway.as2.profiles import PartnerAs2Runtime
from gateway.as2.smime import KeyPair

#: negative MDN dispositions that say the message itself is wrong: sending the same
#: bytes again cannot help, so these are not retried. Anything else negative (above
#: all ``unexpected-processing-error``, which receivers use for their own trouble) is
#: treated as temporary and retried.
PERMANENT_DISPOSITIONS = frozenset(
    {
        "authentication-failed",
        "decryption-failed",
        "integrity-check-failed",
        "insufficient-message-security",
        "decompression-failed",
        "unsupported-format",
        "unknown-trading-partner",
        "unknown-trading-relationship",
        "sender-equals-receiver",
    }
)

#: HTTP statuses that are worth trying again (besides every 5xx)
RETRY_HTTP = frozenset({408, 425, 429})

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


@dataclass(frozen=True)
class OutboundMessage:
    """One AS2 message ready to POST, and what its MDN must say."""

    message_id: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: the bytes the partner computes the MIC over (RFC 4130 7.3.1)
    mic_content: bytes
    #: base64 MIC over ``mic_content`` with ``mic_alg``, and the algorithm (hashlib name)
    mic: str
    mic_alg: str
    layers: tuple[str, ...]


def media_type_for(data: bytes, filename: str | None = None) -> str:
    """The Content-Type a payload goes out with: EDI by content, else by file name."""
    head = data.lstrip()[:3]
    if head == b"ISA":
        return "application/edi-x12"
    if head in {b"UNA", b"UNB"}:
        return "application/edifact"
    name = (filename or "").lower()
    if head[:1] == b"<" or name.endswith(".xml"):
        return "application/xml"
    if name.endswith((".csv", ".txt")):
        return "text/plain" if name.endswith(".txt") else "text/csv"
    return "application/octet-stream"


def new_message_id(our_id: str) -> str:
    """A fresh, globally unique Message-ID (without angle brackets)."""
    host = _SAFE_NAME.sub("", our_id).lower() or "gateway"
    return f"{uuid.uuid4().hex}@{host}.as2"


def _entity(headers: list[tuple[str, str]], body: bytes) -> bytes:
    return mime.header_block(headers) + b"\r\n" + body


def payload_entity(payload: bytes, filename: str | None, content_type: str) -> bytes:
    """The innermost MIME entity. Text is CRLF-canonical; anything else goes binary,
    untouched (a signature over binary content must cover the exact bytes)."""
    headers = [("Content-Type", content_type)]
    if content_type.startswith("text/"):
        payload = mime.canonical(payload)
        headers.append(("Content-Transfer-Encoding", "8bit"))
    else:
        headers.append(("Content-Transfer-Encoding", "binary"))
    if filename:
        safe = _SAFE_NAME.sub("_", filename)[:200] or "payload"
        headers.append(("Content-Disposition", f'attachment; filename="{safe}"'))
    return _entity(headers, payload)


def _compressed_entity(entity: bytes) -> bytes:
    return _entity(
        [
            ("Content-Type", "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z"),
            ("Content-Transfer-Encoding", "binary"),
            ("Content-Disposition", 'attachment; filename="smime.p7z"'),
        ],
        smime.compress(entity),
    )


def mic_content_for(
    payload: bytes, filename: str | None, content_type: str, partner: PartnerAs2Runtime
) -> bytes:
    """What the MIC is computed over, rebuilt deterministically from the payload (for
    an asynchronous MDN whose algorithm differs from the one we asked for)."""
    settings = partner.settings
    entity = payload_entity(payload, filename, content_type)
    if not (settings.sign or settings.encrypt):
        return mime.split_entity(entity).body
    if settings.compress:
        entity = _compressed_entity(entity)
    return entity if settings.sign else mime.canonical(entity)


def build_message(
    payload: bytes,
    *,
    our_id: str,
    partner: PartnerAs2Runtime,
    signer: KeyPair | None,
    filename: str | None = None,
    content_type: str | None = None,
    message_id: str | None = None,
    async_url: str | None = None,
    subject: str | None = None,
) -> OutboundMessage:
    """Wrap ``payload`` as ``partner``'s profile says. Raises :class:`ValueError` when
    the profile asks for something we cannot do (signing without our key ...)."""
    settings = partner.settings
    content_type = content_type or media_type_for(payload, filename)
    message_id = message_id or new_message_id(our_id)
    layers: list[str] = []
    entity = payload_entity(payload, filename, content_type)
    plain_body = mime.split_entity(entity).body
    if settings.compress:
        entity = _compressed_entity(entity)
        layers.append("compressed")
    mic_alg = smime.digest_name(settings.mdn_digest)
    if mic_alg not in mdn.MIC_ALGS:
        raise ValueError(f"as2.mdn_digest {settings.mdn_digest!r} is not supported")
    if settings.sign:
        if signer is None:
            raise ValueError("the partner profile says sign = true, but our AS2 key is not configured")
        mic_content = entity
        digest = smime.digest_name(settings.sign_digest)
        signature = smime.sign(entity, signer, digest)
        boundary = f"----=_AS2_{uuid.uuid4().hex}"
        body = (
            f"--{boundary}\r\n".encode()
            + entity
            + f"\r\n--{boundary}\r\n".encode()
            + b"Content-Type: application/pkcs7-signature; name=smime.p7s; smime-type=signed-data\r\n"
            + b"Content-Transfer-Encoding: base64\r\n"
            + b'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'
            + base64.encodebytes(signature).replace(b"\n", b"\r\n")
            + f"\r\n--{boundary}--\r\n".encode()
        )
        ctype = (
            f'multipart/signed; protocol="application/pkcs7-signature"; '
            f'micalg={mdn.MIC_ALGS.get(digest, digest)}; boundary="{boundary}"'
        )
        entity = _entity([("Content-Type", ctype)], body)
        layers.append("signed")
    elif settings.encrypt:
        mic_content = mime.canonical(entity)
    else:
        mic_content = plain_body
    if settings.encrypt:
        if not partner.encrypt_certs:
            raise ValueError("the partner profile says encrypt = true, but it names no certificate")
        der = smime.encrypt(entity, partner.encrypt_certs, settings.cipher, settings.key_transport)
        entity = _entity(
            [
                ("Content-Type", "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"),
                ("Content-Transfer-Encoding", "binary"),
                ("Content-Disposition", 'attachment; filename="smime.p7m"'),
            ],
            der,
        )
        layers.append("encrypted")
    top = mime.split_entity(entity)
    content_headers = [(name.title(), value) for name, value in top.headers.items()]
    headers: list[tuple[str, str]] = [
        ("AS2-Version", "1.2"),
        ("AS2-From", mdn.quote_as2_name(our_id)),
        ("AS2-To", mdn.quote_as2_name(partner.as2_ids[0])),
        ("Message-ID", f"<{message_id}>"),
        ("Date", formatdate(usegmt=True)),
        ("Subject", subject or f"AS2 message from {our_id}"),
        ("Mime-Version", "1.0"),
        *content_headers,
    ]
    if settings.mdn_mode != "none":
        headers.append(("Disposition-Notification-To", async_url or our_id))
        if settings.mdn_signed:
            headers.append(
                (
                    "Disposition-Notification-Options",
                    "signed-receipt-protocol=optional, pkcs7-signature; "
                    f"signed-receipt-micalg=optional, {mdn.MIC_ALGS[mic_alg]}",
                )
            )
        if settings.mdn_mode == "async":
            if not async_url:
                raise ValueError("mdn_mode = async needs the URL our endpoint is reached at")
            headers.append(("Receipt-Delivery-Option", async_url))
    return OutboundMessage(
        message_id=message_id,
        headers=tuple(headers),
        body=top.body,
        mic_content=mic_content,
        mic=mdn.compute_mic(mic_content, mic_alg),
        mic_alg=mic_alg,
        layers=tuple(layers),
    )


# --- outcomes --------------------------------------------------------------------------


#: what became of one attempt
PROCESSED = "processed"  # positive MDN, signature and MIC verified
SENT = "sent"  # accepted over HTTP, no MDN asked for
AWAITING_MDN = "awaiting-mdn"  # accepted over HTTP, the MDN comes asynchronously
RETRY = "retry"  # a temporary failure: try again later
FAILED = "failed"  # a permanent failure: retrying cannot help


@dataclass(frozen=True)
class Outcome:
    result: str  # PROCESSED, SENT, AWAITING_MDN, RETRY, FAILED
    #: ledger status: "processed", the MDN's disposition modifier, or our own reason
    #: code (``mic-mismatch``, ``mdn-authentication-failed``, ``http-503``, ``connection-failed`` ...)
    status: str
    reason: str | None = None
    disposition: str = ""
    mdn: mdn.ParsedMdn | None = None
    mdn_headers: tuple[tuple[str, str], ...] = ()
    mdn_body: bytes | None = None
    mdn_message_id: str | None = None
    #: True/False when a MIC was compared, None when there was none to compare
    mic_ok: bool | None = None

    @property
    def ok(self) -> bool:
        return self.result in {PROCESSED, SENT, AWAITING_MDN}


def is_mdn(headers: Mapping[str, str], body: bytes) -> bool:
    """Whether a request (lower-case header names) is an MDN rather than a message."""
    ctype, params = mime.parse_content_type(headers.get("content-type", ""))
    if ctype == "multipart/report":
        return True
    if ctype != "multipart/signed":
        return False
    try:
        parts = mime.split_multipart(body, params.get("boundary", ""))
        return bool(parts) and mime.split_entity(parts[0]).content_type[0] == "multipart/report"
    except As2Error:
        return False


def check_mdn(
    headers: Mapping[str, str],
    body: bytes,
    *,
    partner: PartnerAs2Runtime,
    message_id: str,
    mic: str | None,
    mic_alg: str | None,
    mic_content: bytes | None = None,
) -> Outcome:
    """Verify an MDN for the message ``message_id`` (headers with lower-case names).

    ``mic_content`` lets the MIC be recomputed when the partner answered with another
    algorithm than the one we asked for (allowed by RFC 4130 when it cannot do ours).
    """
    stored = tuple((k, v) for k, v in headers.items())
    mdn_id = headers.get("message-id", "").strip().strip("<>") or None
    settings = partner.settings

    def out(
        result: str,
        status: str,
        reason: str | None,
        parsed: mdn.ParsedMdn | None = None,
        mic_ok: bool | None = None,
    ) -> Outcome:
        return Outcome(
            result,
            status,
            reason,
            parsed.disposition if parsed is not None else "",
            parsed,
            stored,
            body,
            mdn_id,
            mic_ok,
        )

    try:
        parsed = mdn.parse(headers, body, trusted=partner.verify_certs, verify=True)
    except As2Error as exc:
        status = {
            "authentication-failed": "mdn-authentication-failed",
            "integrity-check-failed": "mdn-integrity-check-failed",
        }.get(exc.mdn_disposition, "mdn-unreadable")
        return out(FAILED, status, f"the MDN does not verify: {exc.message}")
    if settings.mdn_signed and not parsed.signed:
        return out(
            FAILED,
            "mdn-unsigned",
            "we asked for a signed MDN and the partner returned an unsigned one",
            parsed,
        )
    if parsed.original_message_id and parsed.original_message_id != message_id:
        reason = f"the MDN is for message <{parsed.original_message_id}>, not <{message_id}>"
        return out(FAILED, "mdn-wrong-message", reason, parsed)
    if not parsed.ok:
        temporary = parsed.status not in PERMANENT_DISPOSITIONS
        failure = parsed.fields.get("failure") or parsed.fields.get("error") or parsed.fields.get("warning")
        reason = f"negative MDN: {parsed.disposition}" + (f" ({failure})" if failure else "")
        return out(RETRY if temporary else FAILED, parsed.status, reason, parsed)
    mic_ok: bool | None = None
    if mic is not None:
        if parsed.mic is None:
            if settings.mdn_signed:
                return out(
                    FAILED, "mic-missing", "the positive MDN carries no Received-Content-MIC", parsed, False
                )
        else:
            expected = mic
            their_alg = smime.digest_name(parsed.mic_alg or mic_alg or "sha256")
            if mic_alg is not None and their_alg != smime.digest_name(mic_alg):
                if mic_content is None or their_alg not in mdn.MIC_ALGS:
                    expected = ""
                else:
                    expected = mdn.compute_mic(mic_content, their_alg)
            mic_ok = bool(expected) and parsed.mic == expected
            if not mic_ok:
                reason = (
                    f"the MDN's MIC {parsed.mic} ({parsed.mic_alg}) is not ours, {mic} ({mic_alg}):"
                    " the partner did not receive what we signed"
                )
                return out(FAILED, "mic-mismatch", reason, parsed, False)
    return out(PROCESSED, "processed", None, parsed, mic_ok)


def interpret(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    message: OutboundMessage,
    partner: PartnerAs2Runtime,
) -> Outcome:
    """The outcome of one POST (response headers with lower-case names)."""
    mode = partner.settings.mdn_mode
    if status_code >= 500 or status_code in RETRY_HTTP:
        return Outcome(RETRY, f"http-{status_code}", _http_reason(status_code, body))
    if status_code >= 300:
        return Outcome(FAILED, f"http-{status_code}", _http_reason(status_code, body))
    if mode == "async":
        return Outcome(AWAITING_MDN, AWAITING_MDN, None)
    if mode == "none":
        return Outcome(SENT, SENT, None)
    if not is_mdn(headers, body):
        return Outcome(
            RETRY,
            "no-mdn",
            f"HTTP {status_code} without a synchronous MDN ({headers.get('content-type', 'no Content-Type')})",
        )
    return check_mdn(
        headers,
        body,
        partner=partner,
        message_id=message.message_id,
        mic=message.mic,
        mic_alg=message.mic_alg,
        mic_content=message.mic_content,
    )


def _http_reason(status_code: int, body: bytes) -> str:
    text = re.sub(r"\s+", " ", body[:300].decode("utf-8", "replace")).strip()
    return f"HTTP {status_code}" + (f": {text}" if text else "")
