"""Typed AS2 settings of our side and of each partner, with their key material loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.as2.smime import KeyPair
from gateway.config import As2Settings, Config, PartnerAs2, load_certificates
from gateway.errors import ConfigError, Problem


@dataclass(frozen=True)
class PartnerAs2Runtime:
    """A partner as the AS2 channel sees it: profile settings plus loaded certificates."""

    id: str
    name: str
    as2_ids: tuple[str, ...]
    settings: PartnerAs2
    verify_certs: tuple[x509.Certificate, ...] = ()
    encrypt_certs: tuple[x509.Certificate, ...] = ()


@dataclass(frozen=True)
class As2Profiles:
    as2_id: str
    #: our key pairs; the first signs, all of them decrypt (rollover)
    keys: tuple[KeyPair, ...]
    settings: As2Settings
    partners: dict[str, PartnerAs2Runtime] = field(default_factory=dict)  # by AS2 id

    @property
    def signing_key(self) -> KeyPair | None:
        return self.keys[0] if self.keys else None

    def partner_by_as2(self, as2_id: str) -> PartnerAs2Runtime | None:
        return self.partners.get(as2_id)

    def partner_by_id(self, partner_id: str) -> PartnerAs2Runtime | None:
        return next((p for p in self.partners.values() if p.id == partner_id), None)


def load_key_pair(certificate: Path, private_key: Path | None, password: bytes | None) -> KeyPair:
    """A PEM/DER certificate plus key, or a PKCS#12 file holding both."""
    data = certificate.read_bytes()
    if private_key is None:
        key, cert, _ = pkcs12.load_key_and_certificates(data, password)
        if key is None or cert is None:
            raise ValueError(f"{certificate}: PKCS#12 file without key and certificate")
    else:
        cert = load_certificates(certificate)[0]
        kdata = private_key.read_bytes()
        key = (
            serialization.load_pem_private_key(kdata, password)
            if b"-----BEGIN" in kdata
            else serialization.load_der_private_key(kdata, password)
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("only RSA keys are supported for AS2")
    return KeyPair(key, cert)


def load_profiles(config: Config) -> As2Profiles:
    """Load our keys and every active partner's AS2 certificates. Raises ConfigError."""
    ours = config.settings.as2_settings
    keys: tuple[KeyPair, ...] = ()
    if ours.certificate is not None:
        password = ours.key_password.read().encode() if ours.key_password else None
        try:
            keys = (load_key_pair(ours.certificate, ours.private_key, password),)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                Problem(
                    str(config.directory / "gateway.toml"), None, f"our AS2 key: {exc}", "as2.certificate"
                )
            ) from exc
    partners: dict[str, PartnerAs2Runtime] = {}
    for profile in config.partners:
        if not profile.active:
            continue
        as2_ids = tuple(v for kind, v in profile.identities if kind == "as2")
        if not as2_ids:
            continue
        settings = profile.as2 or PartnerAs2()
        try:
            verify = tuple(c for p in settings.certificates for c in load_certificates(p))
            encrypt = tuple(load_certificates(p)[0] for p in settings.encryption_certificates)
        except (OSError, ValueError, IndexError) as exc:
            raise ConfigError(Problem(str(profile.source), None, f"AS2 certificate: {exc}", "as2")) from exc
        runtime = PartnerAs2Runtime(profile.id, profile.name, as2_ids, settings, verify, encrypt)
        for as2_id in as2_ids:
            partners[as2_id] = runtime
    return As2Profiles(config.settings.as2_id, keys, ours, partners)
