"""CMS / S/MIME primitives on ``cryptography`` (keys, ciphers, digests) and asn1crypto (CMS structures).

Signing (MDNs, outbound messages) is ``cryptography``'s ``PKCS7SignatureBuilder``.
``cryptography`` has no API for verifying CMS signatures, for RSA-OAEP or 3DES
EnvelopedData, or for RFC 3274 CompressedData, so those structures are read and
written with asn1crypto and every cryptographic operation goes through
``cryptography``. A received structure is parsed once (:func:`load`) and the parsed
form handed to :func:`decrypt`, :func:`verify` or :func:`decompress`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import itertools
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.as2.errors import (
    AuthenticationFailed,
    DecompressionFailed,
    DecryptionFailed,
    InsufficientSecurity,
    IntegrityCheckFailed,
    UnexpectedProcessingError,
)

#: profile spelling -> (asn1crypto name, key bytes)
CIPHERS: dict[str, tuple[str, int]] = {
    "aes128-cbc": ("aes128_cbc", 16),
    "aes192-cbc": ("aes192_cbc", 24),
    "aes256-cbc": ("aes256_cbc", 32),
    "3des-cbc": ("tripledes_3key", 24),
}
_CIPHER_BY_ASN1 = {v[0]: k for k, v in CIPHERS.items()}

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def digest_name(name: str) -> str:
    """``SHA-256``, ``sha256``, ``rsa-sha256`` ... -> ``sha256`` (hashlib spelling)."""
    return name.strip().lower().replace("-", "").replace("rsa", "").strip()


def hash_for(name: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[digest_name(name)]()
    except KeyError:
        raise InsufficientSecurity(f"digest {name!r} is not supported") from None


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate (ours, or a test peer's)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def cert_asn1(self) -> asn1_x509.Certificate:
        return _asn1_cert(self.cert)


@functools.lru_cache(maxsize=256)
def _asn1_cert(cert: x509.Certificate) -> asn1_x509.Certificate:
    """The asn1crypto view of a certificate, parsed once (certificates are immutable)."""
    return asn1_x509.Certificate.load(cert.public_bytes(Encoding.DER))


# --- decryption ------------------------------------------------------------------------


def _matches(rid: Any, cert: asn1_x509.Certificate) -> bool:
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        # DER equality first: asn1crypto's Name == runs LDAP string preparation on
        # every attribute (milliseconds per message); senders copy the issuer from
        # the certificate, so the encodings match and the slow path is rarely taken.
        if ias["serial_number"].native != cert.serial_number:
            return False
        return bool(ias["issuer"].dump() == cert.issuer.dump() or ias["issuer"] == cert.issuer)
    if rid.name == "subject_key_identifier":
        return bool(cert.key_identifier is not None and rid.chosen.native == cert.key_identifier)
    return False


def _oaep(params: Any) -> asym_padding.OAEP:
    # RFC 4055 defaults are SHA-1 for both the hash and MGF1.
    hash_name = "sha1"
    mgf_hash = "sha1"
    if params is not None and params.native is not None:
        hash_name = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        if mgf["parameters"].native is not None:
            mgf_hash = mgf["parameters"]["algorithm"].native
    return asym_padding.OAEP(
        mgf=asym_padding.MGF1(hash_for(mgf_hash)), algorithm=hash_for(hash_name), label=None
    )


@dataclass(frozen=True)
class Decrypted:
    content: bytes
    cipher: str  # profile spelling, e.g. "aes256-cbc"
    key_transport: str  # "rsa-pkcs1v15" or "rsa-oaep"


def decrypt(
    der: bytes | cms.ContentInfo,
    ours: Sequence[KeyPair],
    *,
    ciphers: Sequence[str],
    key_transports: Sequence[str],
) -> Decrypted:
    """Decrypt CMS EnvelopedData addressed to one of ``ours`` (several during a rollover)."""
    try:
        info = _info(der)
        if info["content_type"].native != "enveloped_data":
            raise DecryptionFailed(f"expected enveloped-data, got {info['content_type'].native}")
        env = info["content"]
        eci = env["encrypted_content_info"]
        calg = eci["content_encryption_algorithm"]
        alg_name = calg["algorithm"].native
        ciphertext = eci["encrypted_content"].native
        recipients = list(env["recipient_infos"])
    except (ValueError, TypeError, KeyError) as exc:
        raise DecryptionFailed(f"not a readable CMS enveloped-data structure: {exc}") from exc
    cipher = _CIPHER_BY_ASN1.get(alg_name)
    if cipher is None:
        raise DecryptionFailed(f"content cipher {alg_name} is not supported")
    if cipher not in ciphers:
        raise InsufficientSecurity(f"content cipher {cipher} is not allowed for this partner")
    if ciphertext is None:
        raise DecryptionFailed("enveloped-data without content")
    for recipient in recipients:
        if recipient.name != "ktri":
            continue
        ktri = recipient.chosen
        pair = next((p for p in ours if _matches(ktri["rid"], p.cert_asn1)), None)
        if pair is None:
            continue
        kalg = ktri["key_encryption_algorithm"]
        transport = {"rsaes_pkcs1v15": "rsa-pkcs1v15", "rsaes_oaep": "rsa-oaep"}.get(kalg["algorithm"].native)
        if transport is None:
            raise DecryptionFailed(f"key transport {kalg['algorithm'].native} is not supported")
        if transport not in key_transports:
            raise InsufficientSecurity(f"key transport {transport} is not allowed for this partner")
        try:
            if transport == "rsa-oaep":
                key = pair.key.decrypt(ktri["encrypted_key"].native, _oaep(kalg["parameters"]))
            else:
                key = pair.key.decrypt(ktri["encrypted_key"].native, asym_padding.PKCS1v15())
        except ValueError as exc:
            raise DecryptionFailed("the content key does not decrypt with our private key") from exc
        return Decrypted(_decrypt_content(cipher, key, calg, ciphertext), cipher, transport)
    names = ", ".join(_describe_rid(r.chosen["rid"]) for r in recipients if r.name == "ktri") or "none"
    raise DecryptionFailed(f"not encrypted to our certificate (recipients: {names})")


def _describe_rid(rid: Any) -> str:
    if rid.name == "issuer_and_serial_number":
        ias = rid.chosen
        return f"{ias['issuer'].human_friendly} serial {ias['serial_number'].native:x}"
    return f"key id {rid.chosen.native.hex()}"


def _decrypt_content(cipher: str, key: bytes, calg: Any, ciphertext: bytes) -> bytes:
    _, size = CIPHERS[cipher]
    if len(key) != size:
        raise DecryptionFailed(f"content key has {len(key)} bytes, {cipher} needs {size}")
    iv = calg.encryption_iv
    block: algorithms.AES | TripleDES = TripleDES(key) if cipher == "3des-cbc" else algorithms.AES(key)
    if len(ciphertext) % (block.block_size // 8):
        raise DecryptionFailed("ciphertext is not a whole number of blocks (truncated?)")
    decryptor = Cipher(block, modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(block.block_size).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise DecryptionFailed("wrong key or damaged ciphertext (bad padding)") from exc


# --- signatures ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    content: bytes  # the bytes the signature covers (for opaque signed-data: the content)
    digest: str  # hashlib spelling of the signer's digest
    signer: x509.Certificate


def _signed_attr(signer: Any, name: str) -> Any:
    for attr in signer["signed_attrs"]:
        if attr["type"].native == name:
            return attr["values"][0]
    return None


def _unique(items: Iterable[bytes]) -> Iterator[bytes]:
    seen: list[bytes] = []
    for item in items:
        if item not in seen:
            seen.append(item)
            yield item


def verify(
    der: bytes | cms.ContentInfo,
    candidates: Iterable[bytes],
    trusted: Sequence[x509.Certificate],
    *,
    digests: Sequence[str],
) -> Verified:
    """Verify CMS SignedData with one of the ``trusted`` certificates.

    ``candidates`` are the spellings of the detached content to try in order (exact
    bytes first, then the CRLF-canonical form some senders sign); empty for opaque
    signed-data, whose content is inside. Certificates embedded in the signature are
    never trusted on their own: only the partner profile's certificates verify.
    """
    try:
        info = _info(der)
        if info["content_type"].native != "signed_data":
            raise AuthenticationFailed(f"expected signed-data, got {info['content_type'].native}")
        sd = info["content"]
        signers = list(sd["signer_infos"])
        inner = sd["encap_content_info"]["content"]
        opaque = inner.native if inner is not None and inner.native is not None else None
    except (ValueError, TypeError, KeyError) as exc:
        raise AuthenticationFailed(f"signature is not a readable CMS signed-data structure: {exc}") from exc
    if not signers:
        raise AuthenticationFailed("signed-data without a signer")
    # The candidate spellings are produced lazily: most senders sign the exact bytes,
    # so the canonicalised alternatives are rarely computed at all.
    contents = _unique((bytes(opaque),) if opaque is not None else candidates)
    first = next(contents, None)
    if first is None:
        raise AuthenticationFailed("detached signature without content")
    contents = itertools.chain((first,), contents)
    signer = signers[0]
    digest = digest_name(signer["digest_algorithm"]["algorithm"].native)
    if digest not in _HASHES:
        raise InsufficientSecurity(f"signature digest {digest} is not supported")
    if digest not in digests:
        raise InsufficientSecurity(f"signature digest {digest} is not allowed for this partner")
    # len(), not .native: converting every attribute to Python values costs more than
    # the RSA verification (an absent field is a Void of length 0).
    has_attrs = len(signer["signed_attrs"]) > 0
    content: bytes | None = None
    if has_attrs:
        expected = _signed_attr(signer, "message_digest")
        if expected is None:
            raise AuthenticationFailed("signed attributes without a message digest")
        for candidate in contents:
            if hmac.compare_digest(hashlib.new(digest, candidate).digest(), expected.native):
                content = candidate
                break
        if content is None:
            raise IntegrityCheckFailed(
                f"the content does not match the signed {digest} digest (altered or truncated in transit)"
            )
        # The signature covers the DER SET OF the attributes, not their [0] IMPLICIT form.
        to_verify = [b"\x31" + signer["signed_attrs"].dump()[1:]]
    else:
        to_verify = list(contents)
    sig_alg = signer["signature_algorithm"]
    try:
        scheme = sig_alg.signature_algo
    except ValueError:
        scheme = "rsassa_pkcs1v15"
    signature = signer["signature"].native
    sid = signer["sid"]
    ordered = sorted(
        trusted,
        key=lambda c: not _matches(sid, _asn1_cert(c)),
    )
    for cert in ordered:
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            continue
        pad: asym_padding.AsymmetricPadding
        if scheme == "rsassa_pss":
            params = sig_alg["parameters"]
            pad = asym_padding.PSS(
                mgf=asym_padding.MGF1(
                    hash_for(params["mask_gen_algorithm"]["parameters"]["algorithm"].native)
                ),
                salt_length=params["salt_length"].native,
            )
        else:
            pad = asym_padding.PKCS1v15()
        for data in to_verify:
            try:
                public.verify(signature, data, pad, hash_for(digest))
            except InvalidSignature:
                continue
            return Verified(content if content is not None else data, digest, cert)
    if not trusted:
        raise AuthenticationFailed("no certificate is configured to verify this partner's signatures")
    raise AuthenticationFailed("the signature does not verify with the partner's certificate(s)")


#: PKCS7SignatureBuilder digests by hashlib name (it refuses SHA-1: see _sign_asn1)
_SIGN_HASHES: dict[str, type[hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

_DETACHED = (pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.DetachedSignature)
_OPAQUE = (pkcs7.PKCS7Options.Binary,)


@functools.lru_cache(maxsize=64)
def _signer(pair: KeyPair, digest: str) -> pkcs7.PKCS7SignatureBuilder:
    """A builder with the signer set, made once per key and digest (builders are immutable)."""
    try:
        algorithm = _SIGN_HASHES[digest]()
    except KeyError:
        raise InsufficientSecurity(f"digest {digest!r} is not supported for signing") from None
    return pkcs7.PKCS7SignatureBuilder().add_signer(
        pair.cert, pair.key, algorithm, rsa_padding=asym_padding.PKCS1v15()
    )


def sign(data: bytes, pair: KeyPair, digest: str = "sha256", *, detached: bool = True) -> bytes:
    """CMS SignedData over ``data`` (DER), signed by ``pair`` with RSA PKCS#1 v1.5.

    ``cryptography``'s builder: signed attributes contentType, signingTime,
    sMIMECapabilities and messageDigest, the signer's certificate included, and (with
    ``Binary``) the data signed exactly as given. Callers pass the MIME entity already
    in the form it is sent (CRLF line ends), which is what the MIC and the receiver's
    digest are computed over.
    """
    digest = digest_name(digest)
    if digest == "sha1":
        # Legacy partners that ask for SHA-1 MICs (where their profile allows it).
        return _sign_asn1(data, pair, digest, detached=detached)
    builder = _signer(pair, digest).set_data(data)
    return builder.sign(Encoding.DER, _DETACHED if detached else _OPAQUE)


def _sign_asn1(data: bytes, pair: KeyPair, digest: str, *, detached: bool) -> bytes:
    """SignedData built with asn1crypto: only for SHA-1, which the builder refuses."""
    hash_alg = hash_for(digest)
    attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["data"]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time({"utc_time": datetime.now(UTC)})]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hashlib.new(digest, data).digest()]}),
        ]
    )
    signature = pair.key.sign(attrs.dump(), asym_padding.PKCS1v15(), hash_alg)
    cert = pair.cert_asn1
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": cms.IssuerAndSerialNumber(
                        {"issuer": cert.issuer, "serial_number": cert.serial_number}
                    )
                }
            ),
            "digest_algorithm": algos.DigestAlgorithm({"algorithm": digest}),
            "signed_attrs": attrs,
            "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
            "signature": signature,
        }
    )
    encap: dict[str, Any] = {"content_type": "data"}
    if not detached:
        encap["content"] = data
    signed = cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [algos.DigestAlgorithm({"algorithm": digest})],
            "encap_content_info": encap,
            "certificates": [cert],
            "signer_infos": [signer],
        }
    )
    return bytes(cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


# --- encryption --------------------------------------------------------------------------


def encrypt(
    data: bytes,
    certs: Sequence[x509.Certificate],
    cipher: str = "aes256-cbc",
    key_transport: str = "rsa-pkcs1v15",
) -> bytes:
    """CMS EnvelopedData of ``data`` for every certificate in ``certs`` (DER)."""
    asn1_name, size = CIPHERS[cipher]
    key = os.urandom(size)
    block: algorithms.AES | TripleDES = TripleDES(key) if cipher == "3des-cbc" else algorithms.AES(key)
    iv = os.urandom(block.block_size // 8)
    padder = padding.PKCS7(block.block_size).padder()
    padded = padder.update(data) + padder.finalize()
    encryptor = Cipher(block, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    recipients = []
    for cert in certs:
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise UnexpectedProcessingError("only RSA certificates can be encrypted to")
        if key_transport == "rsa-oaep":
            encrypted_key = public.encrypt(
                key,
                asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None),
            )
            kalg = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep"})
        else:
            encrypted_key = public.encrypt(key, asym_padding.PKCS1v15())
            kalg = cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15"})
        acert = _asn1_cert(cert)
        recipients.append(
            cms.RecipientInfo(
                name="ktri",
                value=cms.KeyTransRecipientInfo(
                    {
                        "version": "v0",
                        "rid": cms.RecipientIdentifier(
                            name="issuer_and_serial_number",
                            value=cms.IssuerAndSerialNumber(
                                {"issuer": acert.issuer, "serial_number": acert.serial_number}
                            ),
                        ),
                        "key_encryption_algorithm": kalg,
                        "encrypted_key": encrypted_key,
                    }
                ),
            )
        )
    env = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": recipients,
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": asn1_name, "parameters": core.OctetString(iv)},
                "encrypted_content": ciphertext,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": env}).dump())


# --- compression (RFC 3274) ---------------------------------------------------------------


def decompress(der: bytes | cms.ContentInfo, limit: int) -> bytes:
    """Inflate CMS CompressedData, refusing to produce more than ``limit`` bytes."""
    try:
        info = _info(der)
        if info["content_type"].native != "compressed_data":
            raise DecompressionFailed(f"expected compressed-data, got {info['content_type'].native}")
        cd = info["content"]
        alg = cd["compression_algorithm"]["algorithm"].native
        data = cd["encap_content_info"]["content"].native
    except (ValueError, TypeError, KeyError) as exc:
        raise DecompressionFailed(f"not a readable CMS compressed-data structure: {exc}") from exc
    if alg != "zlib":
        raise DecompressionFailed(f"compression algorithm {alg} is not supported")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(bytes(data or b""), limit + 1)
    except zlib.error as exc:
        raise DecompressionFailed(f"compressed data does not inflate: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise DecompressionFailed(f"compressed content inflates past the limit of {limit} bytes")
    if not inflater.eof:
        raise DecompressionFailed("compressed data is truncated")
    return out


def compress(data: bytes) -> bytes:
    cd = cms.CompressedData(
        {
            "version": "v0",
            "compression_algorithm": {"algorithm": "zlib"},
            "encap_content_info": {"content_type": "data", "content": zlib.compress(data)},
        }
    )
    return bytes(cms.ContentInfo({"content_type": "compressed_data", "content": cd}).dump())


def load(der: bytes) -> cms.ContentInfo | None:
    """The CMS ContentInfo of ``der`` (parsed lazily, once), or None when it is not CMS.

    Pass the result on to :func:`decrypt`, :func:`verify` or :func:`decompress`
    instead of the bytes so the structure is not parsed a second time.
    """
    try:
        info = cms.ContentInfo.load(der)
        info["content_type"].native  # noqa: B018 - parses the outer SEQUENCE now
    except (ValueError, TypeError, KeyError):
        return None
    return info


def content_type_of(der: bytes | cms.ContentInfo | None) -> str | None:
    """``enveloped_data``, ``signed_data``, ``compressed_data`` ... or None when not CMS."""
    info = load(der) if isinstance(der, bytes) else der
    if info is None:
        return None
    try:
        return str(info["content_type"].native)
    except (ValueError, TypeError, KeyError):
        return None


def _info(der: bytes | cms.ContentInfo) -> cms.ContentInfo:
    return cms.ContentInfo.load(der) if isinstance(der, bytes) else der
