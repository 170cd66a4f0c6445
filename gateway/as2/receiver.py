"""Receiving AS2 messages: the protocol logic, independent of HTTP.

``Receiver.handle`` takes the request headers and body and returns the HTTP response
to send. The order is what makes a positive MDN a promise: unwrap and check the
message, hand it to ``accept`` (archive + inbox commit), record the outcome in the
ledger, and only then return the MDN. A refusal is recorded too (the raw request is
accepted with ``Envelope.REJECTED`` so it is quarantined and kept), and a message
whose Message-ID from that partner was already acknowledged gets the same MDN again.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.as2 import mdn, mime, sender, smime
from gateway.as2.errors import (
    As2Error,
    AuthenticationFailed,
    DecompressionFailed,
    DecryptionFailed,
    InsufficientSecurity,
    IntegrityCheckFailed,
    UnexpectedProcessingError,
)
from gateway.as2.ledger import Ledger, LedgerEntry
from gateway.as2.profiles import As2Profiles, PartnerAs2Runtime
from gateway.config import Config
from gateway.envelope import Channel, Envelope
from gateway.errors import StoreUnavailable, TooLarge
from gateway.logs import for_message
from gateway.store import RawMessage

log = logging.getLogger(__name__)

Accept = Callable[[Envelope], RawMessage]

_PKCS7_MIME = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
_MAX_LAYERS = 8


@dataclass(frozen=True)
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass
class Unwrapped:
    """What was inside the S/MIME layers, and how it was protected."""

    payload: bytes = b""
    content_type: str = ""
    filename: str | None = None
    layers: list[str] = field(default_factory=list)
    encrypted: bool = False
    cipher: str | None = None
    key_transport: str | None = None
    signed: bool = False
    digest: str | None = None
    signer: str | None = None
    compressed: bool = False
    #: the bytes the MIC is computed over (RFC 4130 7.3.1)
    mic_content: bytes = b""


def _entity(data: bytes) -> mime.Entity:
    """A decrypted/decompressed/signed content as a MIME entity.

    Some senders (``openssl cms -encrypt`` of a bare file) wrap the document with no
    MIME headers at all: without a Content-Type header the whole thing is the body.
    """
    try:
        entity = mime.split_entity(data)
    except UnexpectedProcessingError:
        return mime.Entity({"content-type": "application/octet-stream"}, data)
    if "content-type" not in entity.headers:
        return mime.Entity({"content-type": "application/octet-stream"}, data)
    return entity


def unwrap(
    headers: Mapping[str, str],
    body: bytes,
    profiles: As2Profiles,
    partner: PartnerAs2Runtime,
    *,
    max_decompressed: int,
) -> Unwrapped:
    """Decrypt, verify and decompress in whatever order the sender applied them."""
    policy = partner.settings
    out = Unwrapped()
    entity = mime.Entity(
        {
            k: headers[k]
            for k in ("content-type", "content-transfer-encoding", "content-disposition")
            if k in headers
        },
        body,
    )
    decrypted_entity: bytes | None = None
    for _ in range(_MAX_LAYERS):
        ctype, params = entity.content_type
        if ctype == "multipart/signed":
            boundary = params.get("boundary")
            if not boundary:
                raise UnexpectedProcessingError("multipart/signed without a boundary")
            parts = mime.split_multipart(entity.body, boundary)
            if len(parts) < 2:
                raise IntegrityCheckFailed("multipart/signed with fewer than two parts (truncated?)")
            signature = mime.split_entity(parts[1]).decoded_body()
            verified = smime.verify(
                signature, mime.signed_forms(parts[0]), partner.verify_certs, digests=policy.digests
            )
            _signed(out, verified)
            out.layers.append("signed")
            entity = mime.split_entity(parts[0])
            continue
        if ctype not in _PKCS7_MIME:
            break
        info = smime.load(entity.decoded_body())  # parsed once, handed on below
        cms_type = smime.content_type_of(info)
        declared = params.get("smime-type", "").lower()
        if cms_type == "enveloped_data":
            assert info is not None
            decrypted = smime.decrypt(
                info, profiles.keys, ciphers=policy.ciphers, key_transports=policy.key_transports
            )
            out.encrypted, out.cipher, out.key_transport = True, decrypted.cipher, decrypted.key_transport
            if decrypted_entity is None:
                decrypted_entity = decrypted.content
            out.layers.append("encrypted")
            entity = _entity(decrypted.content)
        elif cms_type == "signed_data":
            assert info is not None
            verified = smime.verify(info, (), partner.verify_certs, digests=policy.digests)
            _signed(out, verified)
            out.layers.append("signed")
            entity = _entity(verified.content)
        elif cms_type == "compressed_data":
            if not policy.allow_compression:
                raise InsufficientSecurity("compressed messages are not accepted from this partner")
            out.compressed = True
            out.layers.append("compressed")
            assert info is not None
            entity = _entity(smime.decompress(info, max_decompressed))
        elif declared == "enveloped-data" or (not declared and not out.encrypted):
            raise DecryptionFailed("the encrypted body is not a complete CMS structure (truncated?)")
        elif declared == "compressed-data":
            raise DecompressionFailed("the compressed body is not a complete CMS structure (truncated?)")
        else:
            raise IntegrityCheckFailed(
                f"the {declared or ctype} body is not a complete CMS structure (truncated?)"
            )
    else:
        raise UnexpectedProcessingError(f"more than {_MAX_LAYERS} S/MIME layers")
    out.content_type = entity.content_type[0]
    out.filename = entity.filename
    out.payload = entity.decoded_body()
    if not out.signed:
        # RFC 4130 7.3.1: encrypted+unsigned -> the decrypted MIME entity, canonical;
        # neither -> the content without its MIME headers.
        out.mic_content = mime.canonical(decrypted_entity) if decrypted_entity is not None else out.payload
    if policy.require_signature and not out.signed:
        raise AuthenticationFailed("this partner's messages must be signed, and this one is not")
    if policy.require_encryption and not out.encrypted:
        raise InsufficientSecurity("this partner's messages must be encrypted, and this one is not")
    if not out.payload:
        raise UnexpectedProcessingError("the message holds no payload")
    return out


def _signed(out: Unwrapped, verified: smime.Verified) -> None:
    # The MIC is over the outermost signed content: what the sender signed last.
    if not out.signed:
        out.mic_content = verified.content
        out.digest = verified.digest
        out.signer = verified.signer.subject.rfc4514_string()
    out.signed = True


#: handles an MDN posted to the endpoint: (partner, headers, body) -> response
OnMdn = Callable[[PartnerAs2Runtime, Mapping[str, str], bytes], "Response"]


def _message_id(value: str) -> str:
    return value.strip().removeprefix("<").removesuffix(">").strip()


def _text(status: int, reason: str) -> Response:
    return Response(status, (("Content-Type", "text/plain; charset=utf-8"),), (reason + "\n").encode())


class Receiver:
    def __init__(
        self,
        config: Config,
        profiles: As2Profiles,
        accept: Accept,
        ledger: Ledger,
        *,
        on_async: Callable[[LedgerEntry], None] | None = None,
        on_mdn: OnMdn | None = None,
    ) -> None:
        self.config = config
        self.profiles = profiles
        self.accept = accept
        self.ledger = ledger
        self.on_async = on_async
        #: asynchronous MDNs for messages we sent (gateway.as2.outbound)
        self.on_mdn = on_mdn
        # Serialises the ledger check and the accept of one Message-ID so a resend that
        # arrives while the first copy is in flight waits and then gets the same MDN.
        self._inflight: dict[tuple[str, str], threading.Lock] = {}
        self._inflight_lock = threading.Lock()

    # ---- entry points ----------------------------------------------------------------

    def refuse(self, headers: Mapping[str, str], raw_request: bytes, status: int, reason: str) -> Response:
        """Record a request refused at the HTTP level (unknown partner, too large ...)."""
        facts = self._facts(headers)
        envelope = Envelope(
            raw=raw_request,
            channel=Channel.AS2,
            transport={**facts, Envelope.REJECTED: f"AS2 HTTP {status}: {reason}"},
            sender={"as2": facts["as2_from"]} if facts.get("as2_from") else {},
        )
        mlog = for_message(log, envelope.id, Channel.AS2.value, facts.get("as2_from"))
        try:
            self.accept(envelope)
        except (StoreUnavailable, TooLarge) as exc:
            mlog.error("refused (%s) and could not record it: %s", reason, exc.message)
            if isinstance(exc, StoreUnavailable):
                return _text(503, "temporarily unable to record the message; try again later")
        mlog.warning("refused with HTTP %d: %s", status, reason)
        return _text(status, reason)

    def handle(self, headers: Mapping[str, str], body: bytes, raw_request: bytes) -> Response:
        """One AS2 request (``headers`` with lower-case names) to the response to send."""
        facts = self._facts(headers)
        as2_from, as2_to, message_id = facts["as2_from"], facts["as2_to"], facts["as2_message_id"]
        missing = [
            n for n, v in (("AS2-From", as2_from), ("AS2-To", as2_to), ("Message-ID", message_id)) if not v
        ]
        if missing:
            return self.refuse(headers, raw_request, 400, f"missing header(s): {', '.join(missing)}")
        if as2_to != self.profiles.as2_id:
            return self.refuse(
                headers,
                raw_request,
                403,
                f"unknown AS2-To {as2_to!r}: this gateway is {self.profiles.as2_id!r}",
            )
        partner = self.profiles.partner_by_as2(as2_from)
        if partner is None:
            return self.refuse(
                headers, raw_request, 403, f"unknown AS2-From {as2_from!r}: no partner profile"
            )
        if self.on_mdn is not None and sender.is_mdn(headers, body):
            return self.on_mdn(partner, headers, body)
        key = (partner.id, message_id)
        with self._inflight_lock:
            lock = self._inflight.setdefault(key, threading.Lock())
        with lock:
            try:
                return self._handle(headers, body, raw_request, facts, partner)
            finally:
                with self._inflight_lock:
                    self._inflight.pop(key, None)

    # ---- the work ----------------------------------------------------------------------

    def _facts(self, headers: Mapping[str, str]) -> dict[str, str]:
        facts = {
            "as2_from": mdn.unquote_as2_name(headers.get("as2-from", "")),
            "as2_to": mdn.unquote_as2_name(headers.get("as2-to", "")),
            "as2_message_id": _message_id(headers.get("message-id", "")),
        }
        for name in ("subject", "as2-version", "content-type", "disposition-notification-to"):
            if headers.get(name):
                facts[name.replace("-", "_")] = re.sub(r"\s+", " ", headers[name])[:500]
        if headers.get("receipt-delivery-option"):
            facts["mdn_url"] = headers["receipt-delivery-option"].strip()[:2000]
        return facts

    def _handle(
        self,
        headers: Mapping[str, str],
        body: bytes,
        raw_request: bytes,
        facts: dict[str, str],
        partner: PartnerAs2Runtime,
    ) -> Response:
        message_id = facts["as2_message_id"]
        request = mdn.MdnRequest.from_headers(headers)
        previous = self.ledger.find("in", partner.id, message_id)
        if previous is not None and previous.ok:
            for_message(log, previous.raw_id or "-", Channel.AS2.value, partner.id).info(
                "resend of AS2 message %s: returning the MDN already sent", message_id
            )
            return self._respond(previous, request)
        error: As2Error | None = None
        unwrapped: Unwrapped | None = None
        try:
            unwrapped = unwrap(
                headers,
                body,
                self.profiles,
                partner,
                max_decompressed=self.config.settings.limits.max_decompressed_bytes,
            )
        except As2Error as exc:
            error = exc
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            # Malformed input deep inside a CMS structure; never an unacknowledged crash.
            error = UnexpectedProcessingError(f"malformed message: {type(exc).__name__}: {exc}")
        mic: tuple[str, str] | None = None
        if unwrapped is not None:
            fallback = unwrapped.digest or "sha256"
            alg, spelling = request.mic_alg(fallback)
            mic = (mdn.compute_mic(unwrapped.mic_content, alg), spelling)
            transport = {
                **facts,
                "mic": mic[0],
                "mic_alg": spelling,
                "as2_layers": ",".join(unwrapped.layers) or "plain",
                "as2_payload_type": unwrapped.content_type,
                "mdn_mode": "async" if request.async_url else ("sync" if request.wanted else "none"),
            }
            for name in ("cipher", "key_transport", "digest", "signer"):
                value = getattr(unwrapped, name)
                if value:
                    transport[f"as2_{name}"] = value
            envelope = Envelope(
                raw=unwrapped.payload,
                original=raw_request,
                channel=Channel.AS2,
                filename=unwrapped.filename,
                transport=transport,
                sender={"as2": facts["as2_from"]},
            )
        else:
            assert error is not None
            envelope = Envelope(
                raw=raw_request,
                channel=Channel.AS2,
                transport={**facts, Envelope.REJECTED: f"AS2 {error.mdn_disposition}: {error.message}"},
                sender={"as2": facts["as2_from"]},
            )
        mlog = for_message(log, envelope.id, Channel.AS2.value, partner.id)
        try:
            raw = self.accept(envelope)
        except StoreUnavailable as exc:
            # Not durable, so no MDN at all: the partner resends later.
            mlog.error("could not store AS2 message %s: %s", message_id, exc.message)
            return _text(503, "temporarily unable to store the message; send it again later")
        except TooLarge as exc:
            return _text(413, exc.message)
        built = mdn.build(
            our_id=self.profiles.as2_id,
            partner_id=facts["as2_from"],
            original_message_id=message_id,
            error=error,
            mic=mic,
            request=request,
            signer=self.profiles.signing_key,
        )
        try:
            entry, created = self.ledger.record(
                direction="in",
                partner_id=partner.id,
                message_id=message_id,
                as2_from=facts["as2_from"],
                as2_to=facts["as2_to"],
                raw_id=raw.id,
                status="processed" if error is None else error.mdn_disposition,
                disposition=built.disposition,
                mic=mic[0] if mic else None,
                mic_alg=mic[1] if mic else None,
                reason=None if error is None else error.message,
                mdn_headers=built.headers if request.wanted else (),
                mdn_body=built.body if request.wanted else None,
                mdn_message_id=built.message_id if request.wanted else None,
                async_url=request.async_url,
            )
        except StoreUnavailable as exc:
            # The payload is in the inbox but the MDN is not on file. Answer 503: the
            # resend is stored again, and the pipeline records those same bytes as a
            # duplicate, so there is still one interaction.
            mlog.error("AS2 message %s stored but its ledger entry failed: %s", message_id, exc.message)
            return _text(503, "temporarily unable to record the receipt; send the message again later")
        if error is None:
            mlog.info(
                "AS2 message %s accepted (%s), MIC %s %s",
                message_id,
                ",".join(unwrapped.layers) if unwrapped else "",
                mic[1] if mic else "-",
                mic[0] if mic else "-",
            )
        else:
            mlog.warning("AS2 message %s refused: %s: %s", message_id, error.mdn_disposition, error.message)
        if not created:
            mlog.info("AS2 message %s was acknowledged concurrently; returning that MDN", message_id)
        if not request.wanted and error is not None:
            return _text(400, f"{error.mdn_disposition}: {error.message}")
        return self._respond(entry, request)

    def _respond(self, entry: LedgerEntry, request: mdn.MdnRequest) -> Response:
        if entry.mdn_body is None:
            return Response(200)
        if request.async_url or entry.async_url:
            if self.on_async is not None:
                self.on_async(entry)
            return _text(200, "message received; the MDN follows asynchronously")
        return Response(200, entry.mdn_headers, entry.mdn_body)
