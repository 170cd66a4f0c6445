"""Pinned SSH host keys: "TYPE BASE64" text, SHA256 fingerprints, a refusing policy.

There is no "accept any key": a connection is made only when the server shows exactly
the configured key. An unknown or changed key is refused with both fingerprints, in
the ``SHA256:...`` form ``ssh-keygen -lf`` prints, so an administrator can compare.
"""

from __future__ import annotations

import base64
import hashlib
from typing import NoReturn

import paramiko

from gateway.config import check_host_key
from gateway.errors import GatewayError


class HostKeyRefused(GatewayError):
    """The server's host key is not the pinned one. Never retried silently."""

    def __init__(self, host: str, port: int, expected: str, found: str) -> None:
        self.host = host
        self.port = port
        self.expected = expected
        self.found = found
        super().__init__(
            f"host key of {host}:{port} refused: expected {expected}, found {found} "
            "(a changed key: check with the partner before changing host_key)"
        )


def fingerprint_blob(blob: bytes) -> str:
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` of a key, as ``ssh-keygen -lf`` prints it."""
    return fingerprint_blob(key.asbytes())


def parse_host_key(text: str) -> paramiko.PKey:
    """A "TYPE BASE64" public key (a known_hosts or .pub line without the host) as a PKey."""
    reason = check_host_key(text)
    if reason is not None:
        raise ValueError(f"host key {text[:40]!r}...: {reason}")
    kind, data = text.split()[:2]
    return paramiko.PKey.from_type_string(kind, base64.b64decode(data))


def known_name(host: str, port: int) -> str:
    """The host's name in a known_hosts table: ``[host]:port`` unless the port is 22."""
    return host if port == 22 else f"[{host}]:{port}"


class PinnedKeyPolicy(paramiko.RejectPolicy):
    """Refuses every key not in the client's host keys, saying which key was shown."""

    def __init__(self, host: str, port: int, expected: paramiko.PKey) -> None:
        self.host = host
        self.port = port
        self.expected = expected

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        raise HostKeyRefused(
            self.host,
            self.port,
            f"{self.expected.get_name()} {fingerprint(self.expected)}",
            f"{key.get_name()} {fingerprint(key)}",
        )
