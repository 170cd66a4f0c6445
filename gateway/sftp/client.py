"""Connections to partners' SSH servers: the pinned host key, the credentials, SFTP."""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import paramiko

from gateway.config import SecretRef, SftpConnection
from gateway.errors import ConfigError, Problem
from gateway.sftp.hostkeys import HostKeyRefused, PinnedKeyPolicy, fingerprint, known_name, parse_host_key

_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey)


def load_private_key(key: Path | SecretRef, password: SecretRef | None = None) -> paramiko.PKey:
    """The private key of a connection: a file, or the text held by a secret reference."""
    passphrase = password.read() if password is not None else None
    if isinstance(key, Path):
        try:
            return paramiko.PKey.from_path(key, password=passphrase)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise ConfigError(Problem(str(key), None, f"cannot read the SSH private key: {exc}")) from exc
    text = key.read()
    for cls in _KEY_CLASSES:
        try:
            return cls.from_private_key(io.StringIO(text + "\n"), password=passphrase)
        except (paramiko.SSHException, ValueError):
            continue
    raise ConfigError(Problem(str(key), None, "the secret holds no SSH private key this gateway can read"))


def describe_error(exc: BaseException) -> str:
    """One line for logs, audit and ``gateway drops``; never a secret."""
    if isinstance(exc, HostKeyRefused):
        return exc.message
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key refused: expected {fingerprint(exc.expected_key)}, found {fingerprint(exc.key)}"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed: {exc}"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, paramiko.SSHException):
        return f"SSH: {exc}"
    if isinstance(exc, OSError):
        return f"connection failed: {exc.strerror or exc}"
    message = getattr(exc, "message", None)
    return str(message or exc)[:300]


class Session:
    """An open SSH connection and its SFTP channel."""

    def __init__(self, client: paramiko.SSHClient, sftp: paramiko.SFTPClient) -> None:
        self.client = client
        self.sftp = sftp

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.close()
        with contextlib.suppress(Exception):
            self.client.close()


def open_session(conn: SftpConnection, *, pkey: paramiko.PKey | None = None) -> Session:
    """Log in to ``conn`` with its pinned host key; raises HostKeyRefused for any other key."""
    expected = parse_host_key(conn.host_key)
    client = paramiko.SSHClient()
    # exactly the configured key: nothing from ~/.ssh, no agent, no other key file
    client.get_host_keys().add(known_name(conn.host, conn.port), expected.get_name(), expected)
    client.set_missing_host_key_policy(PinnedKeyPolicy(conn.host, conn.port, expected))
    if pkey is None and conn.key is not None:
        pkey = load_private_key(conn.key, conn.key_password)
    try:
        client.connect(
            conn.host,
            port=conn.port,
            username=conn.user,
            pkey=pkey,
            password=conn.password.read() if conn.password is not None and pkey is None else None,
            timeout=conn.timeout,
            banner_timeout=conn.timeout,
            auth_timeout=conn.timeout,
            channel_timeout=conn.timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyRefused(
            conn.host,
            conn.port,
            f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}",
            f"{exc.key.get_name()} {fingerprint(exc.key)}",
        ) from None
    except BaseException:
        client.close()
        raise
    try:
        sftp = client.open_sftp()
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(conn.timeout)
    except BaseException:
        client.close()
        raise
    return Session(client, sftp)


@contextlib.contextmanager
def session(conn: SftpConnection) -> Iterator[Session]:
    s = open_session(conn)
    try:
        yield s
    finally:
        s.close()
