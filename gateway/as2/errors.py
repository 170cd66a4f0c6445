"""AS2 failures. Each carries the disposition modifier of the negative MDN it causes."""

from __future__ import annotations

from gateway.errors import InputError, Stage


class As2Error(InputError):
    """A message we refuse; the partner gets a negative MDN with :attr:`mdn_disposition`."""

    stage = Stage.RECEIVE
    mdn_disposition = "unexpected-processing-error"


class DecryptionFailed(As2Error):
    """Not encrypted to our certificate, or the ciphertext/padding is broken."""

    mdn_disposition = "decryption-failed"


class AuthenticationFailed(As2Error):
    """A signature that does not verify with the partner's certificates, or none where required."""

    mdn_disposition = "authentication-failed"


class IntegrityCheckFailed(As2Error):
    """The content does not match the digest the sender signed (altered or truncated)."""

    mdn_disposition = "integrity-check-failed"


class DecompressionFailed(As2Error):
    """RFC 5402: compressed data that does not inflate, or inflates past the limit."""

    mdn_disposition = "decompression-failed"


class InsufficientSecurity(As2Error):
    """Unencrypted where encryption is required, or an algorithm the profile does not allow."""

    mdn_disposition = "insufficient-message-security"


class UnexpectedProcessingError(As2Error):
    """The message is malformed in a way none of the specific dispositions describes."""

    mdn_disposition = "unexpected-processing-error"
