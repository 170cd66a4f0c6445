"""Typed configuration loaded from TOML files under ``config/``.

``gateway.toml`` holds the gateway's own settings; ``partners/*.toml`` one partner
profile each. Loading collects *every* problem before failing, so ``gateway config
check`` can report them all at once. Secrets are never stored inline: a setting that
holds one takes a reference ``env:NAME`` or ``file:PATH``.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, Problem
from gateway.fax_rules import FaxRule, valid_country
from gateway.fax_rules import load_rules as load_fax_rules

T = TypeVar("T")

log = logging.getLogger(__name__)

IDENTITY_KINDS = ("as2", "x12", "edifact", "email", "email_domain", "fax", "sftp")
_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SecretRef:
    """Where a secret lives. The value is read only when it is needed."""

    source: str  # "env" or "file"
    name: str

    def read(self) -> str:
        if self.source == "env":
            value = os.environ.get(self.name)
            if value is None:
                raise ConfigError(Problem("environment", None, f"variable {self.name} is not set"))
            return value
        try:
            return Path(self.name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(Problem(self.name, None, f"cannot read secret file: {exc.strerror}")) from exc

    def __str__(self) -> str:
        return f"{self.source}:{self.name}"


@dataclass(frozen=True)
class Listener:
    enabled: bool
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 50 * 1024 * 1024
    max_decompressed_bytes: int = 200 * 1024 * 1024
    max_mime_parts: int = 500


@dataclass(frozen=True)
class Processing:
    workers: int = 1
    poll_interval: float = 0.5
    #: a claim older than this is considered abandoned by a crashed node
    stale_claim_seconds: float = 300.0
    #: how often mapping files are checked for changes on disk
    mapping_reload_seconds: float = 1.0
    #: refuse EDIFACT interchanges whose UNT/UNE/UNZ counts or references are wrong
    #: (off: keep the messages and record a warning, as partners' files often have them)
    strict_edifact_envelopes: bool = False


#: digests and content ciphers the AS2 channel knows (profile spellings)
AS2_DIGESTS = ("sha1", "sha256", "sha384", "sha512")
AS2_CIPHERS = ("aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc")
AS2_KEY_TRANSPORTS = ("rsa-pkcs1v15", "rsa-oaep")
AS2_MDN_MODES = ("sync", "async", "none")


@dataclass(frozen=True)
class As2Settings:
    """Our side of AS2 (``[as2]`` in gateway.toml); paths are absolute once loaded."""

    path: str = "/as2"
    #: our certificate (PEM/DER), or a PKCS#12 file holding key and certificate
    certificate: Path | None = None
    #: our private key (PEM/DER); not needed when ``certificate`` is PKCS#12
    private_key: Path | None = None
    key_password: SecretRef | None = None
    tls_certificate: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True)
class SmtpAuth:
    """SMTP AUTH on the listener (``[smtp] auth``): PLAIN and LOGIN, over TLS only."""

    #: user name -> where its password lives (never inline)
    users: Mapping[str, SecretRef] = field(default_factory=dict)
    #: refuse MAIL (530 5.7.0) from a client that has not authenticated
    required: bool = True


@dataclass(frozen=True)
class SmtpSettings:
    """Our SMTP server (``[smtp]`` in gateway.toml); paths are absolute once loaded."""

    #: recipients we take mail for: addresses, or "@domain" for a whole domain (lower-case)
    accept: tuple[str, ...] = ()
    #: name in the greeting and the Received: header (default: this machine's host name)
    hostname: str | None = None
    #: advertised with SIZE; None: limits.max_message_bytes (never more than that)
    max_message_bytes: int | None = None
    max_recipients: int = 100
    #: seconds a client may stay silent before the connection is closed
    timeout: float = 300.0
    #: check the sender's domain in DNS (email-validator deliverability); off: syntax only
    check_dns: bool = False
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    #: refuse everything but EHLO/STARTTLS/QUIT/NOOP/RSET before STARTTLS
    require_starttls: bool = False
    auth: SmtpAuth | None = None


@dataclass(frozen=True)
class PartnerEmail:
    """A partner's ``[email]`` table: sender rules for mail that claims to be from it."""

    #: when set, only these addresses (or "@domain" entries) may send as this partner
    senders: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartnerAs2:
    """A partner's AS2 settings (``[as2]`` in its profile).

    Receiving: what the partner's messages must carry and which algorithms we take
    from it. Sending: how we wrap what we send and which MDN we ask for.
    """

    #: certificates that verify the partner's signatures (several during a rollover)
    certificates: tuple[Path, ...] = ()
    #: certificates we encrypt to (default: the first of ``certificates``)
    encryption_certificates: tuple[Path, ...] = ()
    require_signature: bool = True
    require_encryption: bool = True
    allow_compression: bool = True
    #: accepted signature digests; "sha1" only when listed
    digests: tuple[str, ...] = ("sha256", "sha384", "sha512")
    #: accepted content ciphers; "3des-cbc" only when listed
    ciphers: tuple[str, ...] = ("aes128-cbc", "aes192-cbc", "aes256-cbc")
    key_transports: tuple[str, ...] = AS2_KEY_TRANSPORTS
    #: the partner's AS2 endpoint (sending)
    url: str | None = None
    sign: bool = True
    encrypt: bool = True
    compress: bool = False
    sign_digest: str = "sha256"
    cipher: str = "aes256-cbc"
    key_transport: str = "rsa-pkcs1v15"
    #: the MDN we ask for when sending
    mdn_mode: str = "sync"
    mdn_signed: bool = True
    mdn_digest: str = "sha256"


# --- IMAP polling (the dataclasses; the reader is at the end of this file) --------------------------------------------------------------------

IMAP_TLS_MODES = ("implicit", "starttls")
_IMAP_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_IMAP_MAILBOX_KEYS = {
    "name",
    "enabled",
    "host",
    "port",
    "tls",
    "tls_ca",
    "tls_verify",
    "user",
    "password",
    "folders",
    "after",
    "include_seen",
    "interval",
    "cron",
    "timeout",
    "backoff_max",
}


@dataclass(frozen=True)
class ImapMailbox:
    """One polled mailbox (``[[imap.mailbox]]`` in gateway.toml)."""

    name: str
    host: str
    user: str
    password: SecretRef
    port: int = 993
    #: "implicit" (TLS from the first byte, port 993) or "starttls" (port 143)
    tls: str = "implicit"
    #: CA certificates that verify the server (a private CA); default: the system's
    tls_ca: Path | None = None
    #: off only for a test server; never for a real mailbox
    tls_verify: bool = True
    folders: tuple[str, ...] = ("INBOX",)
    #: what happens to a message once it is safely in the inbox: "seen" or "move:FOLDER"
    after: str = "seen"
    #: also take messages someone already read in the mail client
    include_seen: bool = False
    #: seconds between polls; ignored when ``cron`` is set
    interval: float = 60.0
    #: a crontab line (minute hour day month weekday), in the machine's time zone
    cron: str | None = None
    #: socket timeout of the IMAP connection
    timeout: float = 60.0
    #: longest wait between attempts after repeated failures (doubling from ``interval``)
    backoff_max: float = 3600.0
    enabled: bool = True

    @property
    def move_to(self) -> str | None:
        """The processed folder when ``after`` is ``move:FOLDER``."""
        return self.after[5:] if self.after.startswith("move:") else None


@dataclass(frozen=True)
class ImapSettings:
    mailboxes: tuple[ImapMailbox, ...] = ()


# --- SFTP polling and delivery (partner profiles: [[sftp.drop]], [sftp.deliver]) -----------

_SFTP_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_SFTP_CONNECTION_KEYS = {"host", "port", "user", "key", "key_password", "password", "host_key", "timeout"}
_SFTP_DROP_KEYS = _SFTP_CONNECTION_KEYS | {
    "name",
    "enabled",
    "folder",
    "patterns",
    "interval",
    "cron",
    "after",
    "settle",
    "marker",
    "backoff_max",
}
_SFTP_DELIVER_KEYS = _SFTP_CONNECTION_KEYS | {"folder", "retry_max_seconds", "give_up_after"}


@dataclass(frozen=True)
class SftpConnection:
    """How we log in to a partner's SSH server: address, user, credentials, pinned key."""

    host: str
    user: str
    #: the server's host key, "TYPE BASE64" (as in known_hosts, without the host name)
    host_key: str
    port: int = 22
    #: a private key file (OpenSSH or PEM), or a secret reference holding the key text
    key: Path | SecretRef | None = None
    key_password: SecretRef | None = None
    password: SecretRef | None = None
    timeout: float = 30.0


@dataclass(frozen=True)
class SftpDrop:
    """One remote folder we poll (``[[sftp.drop]]`` in a partner profile)."""

    partner: str
    name: str
    connection: SftpConnection
    folder: str = "."
    patterns: tuple[str, ...] = ("*",)
    interval: float = 60.0
    cron: str | None = None
    #: "delete", or "move:DIR" (a remote folder, created when missing)
    after: str = "delete"
    #: a file is complete when its size and mtime did not change for this many seconds
    settle: float = 10.0
    #: or, when set, when a marker file NAME+marker (e.g. ".ok") exists beside it
    marker: str | None = None
    backoff_max: float = 3600.0
    enabled: bool = True

    @property
    def key(self) -> str:
        """``partner:name``: the drop in leases, audit events and ``gateway drops``."""
        return f"{self.partner}:{self.name}" if self.partner else self.name

    @property
    def move_to(self) -> str | None:
        return self.after[5:] if self.after.startswith("move:") else None


@dataclass(frozen=True)
class SftpDeliver:
    """Where documents for a partner are uploaded (``[sftp.deliver]`` in its profile)."""

    partner: str
    connection: SftpConnection
    folder: str = "."
    #: failed uploads are retried with back-off doubling from 60 s up to this
    retry_max_seconds: float = 3600.0
    #: and given up after this many seconds (then failed, kept for an administrator)
    give_up_after: float = 86400.0


# --- the embedded SFTP server (hosting a drop: [sftp] in gateway.toml, [[sftp.users]] in profiles)

_SFTP_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SFTP_USER_KEYS = {"name", "keys", "authorized_keys"}


@dataclass(frozen=True)
class SftpServerSettings:
    """Our SFTP server (``[sftp]`` in gateway.toml); ``host_key`` is absolute once loaded."""

    #: our SSH host key (OpenSSH private key file); without one the server is not started
    host_key: Path | None = None
    #: the partners' folders (``ROOT/USER``); relative: to the data directory
    root: Path = Path("sftp")
    #: connections served at once; more are closed at once
    max_sessions: int = 10
    #: seconds between retries of files left in a folder because the store failed
    retry_interval: float = 60.0


@dataclass(frozen=True)
class SftpUser:
    """A login on our SFTP server (``[[sftp.users]]`` in a partner profile)."""

    name: str
    #: public keys that may log in, "TYPE BASE64" (comments dropped)
    keys: tuple[str, ...]

    @property
    def identity(self) -> str:
        """The partner's ``sftp`` identity that files uploaded by this user carry."""
        return f"server:{self.name}"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything in ``gateway.toml``, checked."""

    name: str
    as2_id: str
    store_url: str | None
    store_url_secret: SecretRef | None
    mappings_dir: Path
    limits: Limits
    processing: Processing
    as2: Listener
    smtp: Listener
    sftp: Listener
    cert_expiry_warning_days: int = 30
    as2_settings: As2Settings = field(default_factory=As2Settings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    smtp_settings: SmtpSettings = field(default_factory=SmtpSettings)
    sftp_server: SftpServerSettings = field(default_factory=SftpServerSettings)
    #: ``[fax] default_country``: national fax numbers are read in this country (E.164)
    fax_default_country: str = "US"


@dataclass(frozen=True)
class PartnerProfile:
    id: str
    name: str
    source: Path
    #: (kind, value) pairs, values normalised (see :func:`normalise_identity`)
    identities: tuple[tuple[str, str], ...]
    active: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: typed ``[as2]`` table; None when the profile has none (no AS2 with this partner)
    as2: PartnerAs2 | None = None
    #: typed ``[email]`` table; None when the profile has none
    email: PartnerEmail | None = None
    #: ``[[sftp.drop]]`` tables: remote folders polled for this partner's files
    sftp_drops: tuple[SftpDrop, ...] = ()
    #: ``[sftp.deliver]``: the partner's inbox folder for what we send it
    sftp_deliver: SftpDeliver | None = None
    #: ``[[sftp.users]]``: logins on our SFTP server (hosting a drop) for this partner
    sftp_users: tuple[SftpUser, ...] = ()


@dataclass(frozen=True)
class Config:
    directory: Path
    settings: GatewaySettings
    partners: tuple[PartnerProfile, ...]
    #: fax-to-mail provider rules, ``fax-providers/*.toml`` (see gateway.fax_rules)
    fax_rules: tuple[FaxRule, ...] = ()

    def partner(self, partner_id: str) -> PartnerProfile | None:
        return next((p for p in self.partners if p.id == partner_id), None)


def normalise_identity(kind: str, value: str) -> str:
    """One spelling per identity so lookups are exact-match."""
    value = value.strip()
    if kind in {"email", "email_domain"}:
        return value.lower()
    if kind == "x12":
        qual, _, ident = value.partition(":")
        return f"{qual.strip().upper()}:{ident.strip().upper()}" if ident else value.upper()
    if kind == "edifact":
        ident, _, qual = value.partition(":")
        return f"{ident.strip().upper()}:{qual.strip().upper()}" if qual else ident.strip().upper()
    if kind == "fax":
        return re.sub(r"[^\d+]", "", value)
    return value


class _Reader:
    """Reads typed values out of a TOML table, recording problems instead of raising."""

    def __init__(self, path: Path, text: str, problems: list[Problem]) -> None:
        self.path = path
        self.text = text
        self.problems = problems

    def line_of(self, key: str) -> int | None:
        leaf = key.rsplit(".", 1)[-1]
        pattern = re.compile(rf"^\s*{re.escape(leaf)}\s*=", re.MULTILINE)
        match = pattern.search(self.text)
        return None if match is None else self.text.count("\n", 0, match.start()) + 1

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(Problem(str(self.path), self.line_of(key), reason, field=key))

    def get(self, table: Mapping[str, Any], key: str, kind: type[T], default: T, prefix: str = "") -> T:
        full = f"{prefix}{key}"
        if key not in table:
            return default
        value = table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(full, f"must be {kind.__name__}, got {type(value).__name__} {value!r}")
            return default
        return value

    def positive(self, table: Mapping[str, Any], key: str, kind: type[T], default: T, prefix: str = "") -> T:
        value = self.get(table, key, kind, default, prefix)
        if isinstance(value, int | float) and value <= 0:
            self.problem(f"{prefix}{key}", f"must be greater than 0, got {value}")
            return default
        return value

    def table(self, data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, "must be a table")
            return {}
        return value

    def unknown(self, table: Mapping[str, Any], allowed: set[str], prefix: str = "") -> None:
        for key in table:
            if key not in allowed:
                self.problem(f"{prefix}{key}", f"unknown setting (known: {', '.join(sorted(allowed))})")

    def cron(self, table: Mapping[str, Any], prefix: str) -> str | None:
        """A schedule's ``cron`` line, checked; ``interval`` and ``cron`` exclude each other."""
        cron = self.get(table, "cron", str, "", prefix) or None
        if cron is None:
            return None
        if "interval" in table:
            self.problem(prefix + "cron", "set interval or cron, not both")
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(cron)
        except ValueError as exc:
            self.problem(
                prefix + "cron", f"{cron!r} is not a crontab line (minute hour day month weekday): {exc}"
            )
            return None
        return cron

    def secret(self, table: Mapping[str, Any], key: str, prefix: str = "") -> SecretRef | None:
        raw = self.get(table, key, str, "", prefix)
        if not raw:
            return None
        source, sep, name = raw.partition(":")
        if not sep or source not in {"env", "file"} or not name:
            self.problem(
                f"{prefix}{key}",
                "secrets are never stored inline: write env:VARIABLE or file:PATH",
            )
            return None
        if source == "file" and not Path(name).is_absolute():
            name = str((self.path.parent / name).resolve())
        return SecretRef(source, name)


def _listener(r: _Reader, data: Mapping[str, Any], name: str, default_port: int) -> Listener:
    table = r.table(data, name)
    prefix = f"{name}."
    r.unknown(table, {"enabled", "listen"} | _CHANNEL_KEYS.get(name, set()), prefix)
    enabled = r.get(table, "enabled", bool, True, prefix)
    listen = r.get(table, "listen", str, f"127.0.0.1:{default_port}", prefix)
    host, port = parse_address(listen, default_port, lambda reason: r.problem(prefix + "listen", reason))
    return Listener(enabled, host, port)


# Settings the channel issues add; accepted now so a newer config does not break this version.
_CHANNEL_KEYS: dict[str, set[str]] = {
    "as2": {"path", "certificate", "private_key", "key_password", "tls_certificate", "tls_key"},
    "smtp": {
        "accept",
        "tls_certificate",
        "tls_key",
        "auth",
        "max_message_bytes",
        "hostname",
        "max_recipients",
        "timeout",
        "check_dns",
        "require_starttls",
    },
    "sftp": {"host_key", "root", "max_sessions", "retry_interval"},
}


def parse_address(
    text: str, default_port: int, report: Callable[[str], None] | None = None
) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) into a pair; reports and defaults on error."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(default_port)
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError(port_text)
    except ValueError:
        if report is not None:
            report(f"{text!r} is not HOST:PORT")
        return host, default_port
    return host, port


def _load_settings(directory: Path, problems: list[Problem]) -> GatewaySettings:
    path = directory / "gateway.toml"
    text, data = _read_toml(path, problems)
    r = _Reader(path, text, problems)
    r.unknown(
        data,
        {
            "gateway",
            "store",
            "limits",
            "processing",
            "mappings",
            "as2",
            "smtp",
            "sftp",
            "certificates",
            "imap",
            "fax",
        },
    )
    gw = r.table(data, "gateway")
    r.unknown(gw, {"name", "as2_id"}, "gateway.")
    store = r.table(data, "store")
    r.unknown(store, {"url", "url_secret"}, "store.")
    url = r.get(store, "url", str, "", "store.") or None
    if url and re.search(r"://[^/@]*:[^/@]*@", url):
        r.problem("store.url", 'the URL holds a password: use store.url_secret = "env:NAME" instead')
    lim = r.table(data, "limits")
    r.unknown(lim, {"max_message_bytes", "max_decompressed_bytes", "max_mime_parts"}, "limits.")
    proc = r.table(data, "processing")
    r.unknown(
        proc,
        {
            "workers",
            "poll_interval",
            "stale_claim_seconds",
            "mapping_reload_seconds",
            "strict_edifact_envelopes",
        },
        "processing.",
    )
    maps = r.table(data, "mappings")
    r.unknown(maps, {"directory"}, "mappings.")
    certs = r.table(data, "certificates")
    r.unknown(certs, {"expiry_warning_days"}, "certificates.")
    mappings_dir = Path(r.get(maps, "directory", str, "../mappings", "mappings."))
    if not mappings_dir.is_absolute():
        mappings_dir = (directory / mappings_dir).resolve()
    if not mappings_dir.is_dir():
        r.problem("mappings.directory", f"{mappings_dir} is not a directory")
    as2_id = r.get(gw, "as2_id", str, "GATEWAY", "gateway.")
    if not 1 <= len(as2_id) <= 128 or any(c in as2_id for c in '"\\') or not as2_id.isprintable():
        r.problem(
            "gateway.as2_id", "an AS2 id is 1 to 128 printable characters without quotes or backslashes"
        )
    return GatewaySettings(
        name=r.get(gw, "name", str, "B2B gateway", "gateway."),
        as2_id=as2_id,
        store_url=url,
        store_url_secret=r.secret(store, "url_secret", "store."),
        mappings_dir=mappings_dir,
        limits=Limits(
            max_message_bytes=r.positive(lim, "max_message_bytes", int, Limits.max_message_bytes, "limits."),
            max_decompressed_bytes=r.positive(
                lim, "max_decompressed_bytes", int, Limits.max_decompressed_bytes, "limits."
            ),
            max_mime_parts=r.positive(lim, "max_mime_parts", int, Limits.max_mime_parts, "limits."),
        ),
        processing=Processing(
            workers=r.positive(proc, "workers", int, Processing.workers, "processing."),
            poll_interval=r.positive(proc, "poll_interval", float, Processing.poll_interval, "processing."),
            stale_claim_seconds=r.positive(
                proc, "stale_claim_seconds", float, Processing.stale_claim_seconds, "processing."
            ),
            mapping_reload_seconds=r.positive(
                proc, "mapping_reload_seconds", float, Processing.mapping_reload_seconds, "processing."
            ),
            strict_edifact_envelopes=r.get(proc, "strict_edifact_envelopes", bool, False, "processing."),
        ),
        as2=_listener(r, data, "as2", 4080),
        smtp=_listener(r, data, "smtp", 2525),
        sftp=_listener(r, data, "sftp", 2222),
        cert_expiry_warning_days=r.positive(certs, "expiry_warning_days", int, 30, "certificates."),
        as2_settings=_as2_settings(r, r.table(data, "as2")),
        imap=_imap_settings(r, data),
        smtp_settings=_smtp_settings(r, r.table(data, "smtp")),
        sftp_server=_sftp_server_settings(r, r.table(data, "sftp")),
        fax_default_country=_fax_default_country(r, data),
    )


def _read_toml(path: Path, problems: list[Problem]) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(Problem(str(path), None, "file is missing"))
        return "", {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), None, f"cannot read: {exc}"))
        return "", {}
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        problems.append(Problem(str(path), int(match.group(1)) if match else None, f"not valid TOML: {exc}"))
        return text, {}


_PARTNER_KEYS = {"id", "name", "active", "identities", "as2", "sftp", "email", "fax", "x12", "edifact", "mdn"}


def _load_partner(path: Path, problems: list[Problem]) -> PartnerProfile | None:
    text, data = _read_toml(path, problems)
    if not data:
        return None
    r = _Reader(path, text, problems)
    r.unknown(data, _PARTNER_KEYS)
    partner_id = r.get(data, "id", str, "", "")
    if not partner_id:
        r.problem("id", "every partner profile needs an id")
        return None
    if not _PARTNER_ID.match(partner_id):
        r.problem("id", f"{partner_id!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
    idents = r.table(data, "identities")
    r.unknown(idents, set(IDENTITY_KINDS), "identities.")
    pairs: list[tuple[str, str]] = []
    for kind in IDENTITY_KINDS:
        values = idents.get(kind, [])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
            r.problem(f"identities.{kind}", "must be a list of non-empty strings")
            continue
        for value in values:
            if kind == "x12" and ":" not in value:
                r.problem(
                    f"identities.{kind}", f"{value!r}: write QUALIFIER:ID as in ISA05:ISA06, e.g. ZZ:ACME"
                )
                continue
            if kind == "fax" and not re.fullmatch(r"\+?[\d\s().-]{5,}", value):
                r.problem(f"identities.{kind}", f"{value!r} is not a phone number")
                continue
            if kind == "email" and "@" not in value:
                r.problem(f"identities.{kind}", f"{value!r} is not an e-mail address")
                continue
            pairs.append((kind, normalise_identity(kind, value)))
    extra = {k: v for k, v in data.items() if k not in {"id", "name", "active", "identities"}}
    as2 = _partner_as2(r, r.table(data, "as2")) if "as2" in data else None
    email = _partner_email(r, r.table(data, "email"), pairs) if "email" in data else None
    drops, deliver = _partner_sftp(r, r.table(data, "sftp"), partner_id) if "sftp" in data else ((), None)
    for drop in drops:
        # a file from a drop is the partner's: the drop's name is an sftp identity of it
        if ("sftp", drop.name) not in pairs:
            pairs.append(("sftp", drop.name))
    sftp_users = _partner_sftp_users(r, r.table(data, "sftp")) if "sftp" in data else ()
    for user in sftp_users:
        # a file uploaded by this user to our server is the partner's: "server:USER"
        if ("sftp", user.identity) not in pairs:
            pairs.append(("sftp", user.identity))
    return PartnerProfile(
        id=partner_id,
        name=r.get(data, "name", str, partner_id, ""),
        source=path,
        identities=tuple(pairs),
        active=r.get(data, "active", bool, True, ""),
        extra=extra,
        as2=as2,
        email=email,
        sftp_drops=drops,
        sftp_deliver=deliver,
        sftp_users=sftp_users,
    )


def load_config(directory: Path, *, strict: bool = True) -> tuple[Config, list[Problem]]:
    """Load ``directory``. With ``strict`` any problem raises ConfigError listing all."""
    problems: list[Problem] = []
    directory = directory.resolve()
    if not directory.is_dir():
        raise ConfigError(Problem(str(directory), None, "configuration directory does not exist"))
    settings = _load_settings(directory, problems)
    partners: list[PartnerProfile] = []
    seen_ids: dict[str, Path] = {}
    owners: dict[tuple[str, str], str] = {}
    for path in sorted((directory / "partners").glob("*.toml")):
        profile = _load_partner(path, problems)
        if profile is None:
            continue
        if profile.id in seen_ids:
            problems.append(
                Problem(str(path), None, f"partner id {profile.id!r} is also used by {seen_ids[profile.id]}")
            )
            continue
        seen_ids[profile.id] = path
        for ident in profile.identities:
            other = owners.setdefault(ident, profile.id)
            if other != profile.id:
                problems.append(
                    Problem(
                        str(path), None, f"identity {ident[0]} {ident[1]!r} also belongs to partner {other!r}"
                    )
                )
        partners.append(profile)
    fax_rules = load_fax_rules(directory / "fax-providers", problems)
    config = Config(directory, settings, tuple(partners), fax_rules)
    expiring = _certificate_expiry(config)
    if strict:
        # At start an expiring certificate is logged, not fatal: the gateway keeps
        # working for every other partner; `gateway config check` reports it as a problem.
        for problem in expiring:
            log.warning("certificate: %s", problem)
    else:
        problems.extend(expiring)
    if strict and problems:
        raise ConfigError(problems)
    return config, problems


# --- AS2 settings --------------------------------------------------------------------

_AS2_PARTNER_KEYS = {f.name for f in PartnerAs2.__dataclass_fields__.values()}


def load_certificates(path: Path) -> list[Any]:
    """Every X.509 certificate in a PEM or DER file (``cryptography`` objects)."""
    from cryptography import x509

    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def _file_setting(r: _Reader, table: Mapping[str, Any], key: str, prefix: str) -> Path | None:
    value = r.get(table, key, str, "", prefix)
    if not value:
        return None
    path = Path(value)
    if not path.is_absolute():
        path = (r.path.parent / path).resolve()
    if not path.is_file():
        r.problem(prefix + key, f"{path} does not exist")
        return None
    return path


def _check_certificates(r: _Reader, key: str, path: Path) -> None:
    try:
        certs = load_certificates(path)
    except (OSError, ValueError) as exc:
        r.problem(key, f"{path} holds no readable certificate: {exc}")
        return
    if not certs:
        r.problem(key, f"{path} holds no certificate")


def _as2_settings(r: _Reader, table: Mapping[str, Any]) -> As2Settings:
    prefix = "as2."
    path = r.get(table, "path", str, "/as2", prefix)
    if not path.startswith("/") or any(c.isspace() for c in path):
        r.problem(prefix + "path", f"{path!r}: the endpoint path starts with / and has no spaces")
        path = "/as2"
    settings = As2Settings(
        path=path,
        certificate=_file_setting(r, table, "certificate", prefix),
        private_key=_file_setting(r, table, "private_key", prefix),
        key_password=r.secret(table, "key_password", prefix),
        tls_certificate=_file_setting(r, table, "tls_certificate", prefix),
        tls_key=_file_setting(r, table, "tls_key", prefix),
    )
    if ("tls_certificate" in table) != ("tls_key" in table):
        r.problem(prefix + "tls_certificate", "HTTPS needs both tls_certificate and tls_key")
    if settings.certificate is not None:
        problem = _check_own_key(settings)
        if problem:
            r.problem(prefix + "certificate", problem)
    return settings


def _check_own_key(settings: As2Settings) -> str | None:
    """Whether our key loads and belongs to our certificate; a reason when it does not."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    assert settings.certificate is not None
    try:
        password = settings.key_password.read().encode() if settings.key_password else None
    except ConfigError as exc:
        return f"key_password: {exc.message}"
    try:
        data = settings.certificate.read_bytes()
        if settings.private_key is None:
            key, cert, _ = pkcs12.load_key_and_certificates(data, password)
            if key is None or cert is None:
                return f"{settings.certificate}: PKCS#12 without key and certificate (or set private_key)"
        else:
            cert = load_certificates(settings.certificate)[0]
            kdata = settings.private_key.read_bytes()
            key = (
                serialization.load_pem_private_key(kdata, password)
                if b"-----BEGIN" in kdata
                else serialization.load_der_private_key(kdata, password)
            )
    except (OSError, ValueError, TypeError, IndexError) as exc:
        return f"cannot load our AS2 key/certificate: {exc}"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        return "the private key does not belong to the certificate"
    return None


def _names(
    r: _Reader, table: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: tuple[str, ...]
) -> tuple[str, ...]:
    values = table.get(key, list(default))
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        r.problem("as2." + key, "must be a list of strings")
        return default
    out = tuple(v.lower() for v in values)
    bad = [v for v in out if v not in allowed]
    if bad:
        r.problem("as2." + key, f"unknown {', '.join(bad)} (known: {', '.join(allowed)})")
        return tuple(v for v in out if v in allowed) or default
    return out


def _choice(r: _Reader, table: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = r.get(table, key, str, default, "as2.").lower()
    if value not in allowed:
        r.problem("as2." + key, f"{value!r}: use one of {', '.join(allowed)}")
        return default
    return value


def _partner_as2(r: _Reader, table: Mapping[str, Any]) -> PartnerAs2:
    prefix = "as2."
    r.unknown(table, _AS2_PARTNER_KEYS, prefix)
    d = PartnerAs2()

    def paths(key: str) -> tuple[Path, ...]:
        values = table.get(key, [])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            r.problem(prefix + key, "must be a list of file names")
            return ()
        found: list[Path] = []
        for value in values:
            path = Path(value) if Path(value).is_absolute() else (r.path.parent / value).resolve()
            if not path.is_file():
                r.problem(prefix + key, f"{path} does not exist")
                continue
            _check_certificates(r, prefix + key, path)
            found.append(path)
        return tuple(found)

    certificates = paths("certificates")
    encryption_certificates = paths("encryption_certificates") or certificates[:1]
    url = r.get(table, "url", str, "", prefix) or None
    if url is not None and not re.match(r"^https?://[^\s]+$", url):
        r.problem(prefix + "url", f"{url!r} is not an http(s) URL")
        url = None
    as2 = PartnerAs2(
        certificates=certificates,
        encryption_certificates=encryption_certificates,
        require_signature=r.get(table, "require_signature", bool, d.require_signature, prefix),
        require_encryption=r.get(table, "require_encryption", bool, d.require_encryption, prefix),
        allow_compression=r.get(table, "allow_compression", bool, d.allow_compression, prefix),
        digests=_names(r, table, "digests", AS2_DIGESTS, d.digests),
        ciphers=_names(r, table, "ciphers", AS2_CIPHERS, d.ciphers),
        key_transports=_names(r, table, "key_transports", AS2_KEY_TRANSPORTS, d.key_transports),
        url=url,
        sign=r.get(table, "sign", bool, d.sign, prefix),
        encrypt=r.get(table, "encrypt", bool, d.encrypt, prefix),
        compress=r.get(table, "compress", bool, d.compress, prefix),
        sign_digest=_choice(r, table, "sign_digest", AS2_DIGESTS, d.sign_digest),
        cipher=_choice(r, table, "cipher", AS2_CIPHERS, d.cipher),
        key_transport=_choice(r, table, "key_transport", AS2_KEY_TRANSPORTS, d.key_transport),
        mdn_mode=_choice(r, table, "mdn_mode", AS2_MDN_MODES, d.mdn_mode),
        mdn_signed=r.get(table, "mdn_signed", bool, d.mdn_signed, prefix),
        mdn_digest=_choice(r, table, "mdn_digest", AS2_DIGESTS, d.mdn_digest),
    )
    if as2.require_signature and not certificates:
        r.problem(prefix + "certificates", "a signature is required but no certificate verifies it")
    if (as2.encrypt or as2.url) and as2.encrypt and not encryption_certificates:
        r.problem(prefix + "encryption_certificates", "encrypt = true needs a certificate to encrypt to")
    return as2


def _pkcs12_certificates(path: Path, password: SecretRef | None) -> list[Any]:
    """The certificate in a PKCS#12 file (then its chain), opened with its password."""
    from cryptography.hazmat.primitives.serialization import pkcs12

    secret = password.read().encode() if password is not None else None
    _key, cert, chain = pkcs12.load_key_and_certificates(path.read_bytes(), secret)
    return ([cert] if cert is not None else []) + list(chain)


def _certificate_expiry(config: Config) -> list[Problem]:
    """Certificates (ours and the partners') that expire within the warning window."""
    window = timedelta(days=config.settings.cert_expiry_warning_days)
    now = datetime.now(UTC)
    named: list[tuple[str, str, Path]] = []
    ours = config.settings.as2_settings
    gw_file = str(config.directory / "gateway.toml")
    for key in ("certificate", "tls_certificate"):
        path = getattr(ours, key)
        if path is not None:
            named.append((gw_file, f"as2.{key}", path))
    for partner in config.partners:
        if partner.as2 is not None:
            for path in dict.fromkeys(partner.as2.certificates + partner.as2.encryption_certificates):
                named.append((str(partner.source), "as2.certificates", path))
    problems: list[Problem] = []
    for file, key, path in named:
        try:
            if path.suffix.lower() in {".p12", ".pfx"}:
                certs = _pkcs12_certificates(path, ours.key_password if key == "as2.certificate" else None)
            else:
                certs = load_certificates(path)
        except (OSError, ValueError, ConfigError):
            continue  # reported where the setting is read
        for cert in certs[:1]:
            until = cert.not_valid_after_utc
            if until <= now:
                problems.append(Problem(file, None, f"{path.name} expired on {until:%Y-%m-%d}", field=key))
            elif until - now <= window:
                problems.append(
                    Problem(
                        file,
                        None,
                        f"{path.name} expires on {until:%Y-%m-%d}, within "
                        f"{config.settings.cert_expiry_warning_days} days",
                        field=key,
                    )
                )
    return problems


# --- SMTP settings -------------------------------------------------------------------


def email_syntax_error(address: str, *, check_dns: bool = False) -> str | None:
    """Why ``address`` is not a usable mailbox (email-validator), or None when it is.

    Syntax only unless ``check_dns``; the RFC 2606 ``.test`` domain counts as valid then
    (the demo uses it), other special-use names (``.local``, ``.invalid``...) do not.
    """
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(
            address,
            check_deliverability=check_dns,
            test_environment=not check_dns,
            allow_smtputf8=True,
        )
    except EmailNotValidError as exc:
        return str(exc)
    return None


def address_matches(address: str, rules: tuple[str, ...]) -> bool:
    """Whether ``address`` is one of ``rules`` (addresses, or "@domain" for a domain)."""
    address = address.lower()
    domain = "@" + address.rpartition("@")[2]
    return any(rule in (address, domain) for rule in rules)


def _address_rules(r: _Reader, table: Mapping[str, Any], key: str, prefix: str) -> tuple[str, ...]:
    """A list of addresses and "@domain" entries, checked and lower-cased."""
    values = table.get(key, [])
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        r.problem(prefix + key, 'must be a list of addresses or "@domain" entries')
        return ()
    out: list[str] = []
    for value in values:
        rule = value.strip().lower()
        reason = email_syntax_error("x" + rule if rule.startswith("@") else rule)
        if reason is not None:
            r.problem(prefix + key, f'{value!r} is not an address or "@domain": {reason}')
            continue
        out.append(rule)
    return tuple(dict.fromkeys(out))


def _smtp_settings(r: _Reader, table: Mapping[str, Any]) -> SmtpSettings:
    prefix = "smtp."
    d = SmtpSettings()
    max_bytes = (
        r.positive(table, "max_message_bytes", int, 1, prefix) if "max_message_bytes" in table else None
    )
    hostname = r.get(table, "hostname", str, "", prefix) or None
    if hostname is not None and not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", hostname):
        r.problem(prefix + "hostname", f"{hostname!r} is not a host name")
        hostname = None
    settings = SmtpSettings(
        accept=_address_rules(r, table, "accept", prefix),
        hostname=hostname,
        max_message_bytes=max_bytes,
        max_recipients=r.positive(table, "max_recipients", int, d.max_recipients, prefix),
        timeout=r.positive(table, "timeout", float, d.timeout, prefix),
        check_dns=r.get(table, "check_dns", bool, d.check_dns, prefix),
        tls_certificate=_file_setting(r, table, "tls_certificate", prefix),
        tls_key=_file_setting(r, table, "tls_key", prefix),
        require_starttls=r.get(table, "require_starttls", bool, d.require_starttls, prefix),
        auth=_smtp_auth(r, table) if "auth" in table else None,
    )
    tls = "tls_certificate" in table and "tls_key" in table
    if ("tls_certificate" in table) != ("tls_key" in table):
        r.problem(prefix + "tls_certificate", "STARTTLS needs both tls_certificate and tls_key")
    if settings.require_starttls and not tls:
        r.problem(prefix + "require_starttls", "needs tls_certificate and tls_key")
    if settings.auth is not None and not tls:
        r.problem(prefix + "auth", "AUTH is offered over TLS only: set tls_certificate and tls_key")
    if settings.tls_certificate is not None:
        _check_certificates(r, prefix + "tls_certificate", settings.tls_certificate)
    return settings


def _smtp_auth(r: _Reader, table: Mapping[str, Any]) -> SmtpAuth | None:
    prefix = "smtp.auth."
    auth = table["auth"]
    if not isinstance(auth, dict):
        r.problem("smtp.auth", 'must be a table: auth = { users = { name = "env:VARIABLE" } }')
        return None
    r.unknown(auth, {"users", "required"}, prefix)
    users_table = auth.get("users", {})
    if not isinstance(users_table, dict) or not users_table:
        r.problem(prefix + "users", 'must name at least one user: users = { name = "env:VARIABLE" }')
        return None
    users: dict[str, SecretRef] = {}
    for name in users_table:
        if not name or not name.isprintable() or any(c.isspace() for c in name):
            r.problem(prefix + "users", f"{name!r} is not a user name (printable, no spaces)")
            continue
        ref = r.secret(users_table, name, prefix + "users.")
        if ref is not None:
            users[name] = ref
    return SmtpAuth(users=users, required=r.get(auth, "required", bool, True, prefix))


def _partner_email(r: _Reader, table: Mapping[str, Any], identities: list[tuple[str, str]]) -> PartnerEmail:
    """``[email] senders``: each must be one of the partner's e-mail identities (an
    address listed in ``email``, or within a domain listed in ``email_domain``), so the
    rule narrows who counts as the partner and never adds anyone."""
    prefix = "email."
    r.unknown(table, {"senders"}, prefix)
    senders = _address_rules(r, table, "senders", prefix)
    addresses = {v for k, v in identities if k == "email"}
    domains = {v for k, v in identities if k == "email_domain"}
    for rule in senders:
        domain = rule.rpartition("@")[2]
        if rule not in addresses and domain not in domains:
            r.problem(
                prefix + "senders",
                f"{rule!r} is not among this partner's e-mail identities "
                "([identities] email / email_domain): a sender rule only narrows them",
            )
    return PartnerEmail(senders=senders)


# --- IMAP settings -------------------------------------------------------------------


def _imap_settings(r: _Reader, data: Mapping[str, Any]) -> ImapSettings:
    table = r.table(data, "imap")
    r.unknown(table, {"mailbox"}, "imap.")
    entries = table.get("mailbox", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        r.problem("imap.mailbox", "write each mailbox as a [[imap.mailbox]] table")
        return ImapSettings()
    mailboxes: list[ImapMailbox] = []
    names: set[str] = set()
    for entry in entries:
        mailbox = _imap_mailbox(r, entry)
        if mailbox is None:
            continue
        if mailbox.name in names:
            r.problem("imap.mailbox.name", f"{mailbox.name!r} names two mailboxes")
            continue
        names.add(mailbox.name)
        mailboxes.append(mailbox)
    return ImapSettings(tuple(mailboxes))


def _imap_mailbox(r: _Reader, table: Mapping[str, Any]) -> ImapMailbox | None:
    prefix = "imap.mailbox."
    r.unknown(table, _IMAP_MAILBOX_KEYS, prefix)
    ok = True
    name = r.get(table, "name", str, "", prefix)
    if not _IMAP_NAME.match(name):
        r.problem(prefix + "name", f"{name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
        ok = False
    host = r.get(table, "host", str, "", prefix)
    user = r.get(table, "user", str, "", prefix)
    for key, value in (("host", host), ("user", user)):
        if not value.strip():
            r.problem(prefix + key, f"mailbox {name!r} needs a {key}")
            ok = False
    password = r.secret(table, "password", prefix)
    if password is None and "password" not in table:
        r.problem(prefix + "password", 'needs password = "env:VARIABLE" or "file:PATH"')
    tls = r.get(table, "tls", str, "implicit", prefix).lower()
    if tls not in IMAP_TLS_MODES:
        r.problem(prefix + "tls", f"{tls!r}: use one of {', '.join(IMAP_TLS_MODES)} (plain IMAP is refused)")
        tls = "implicit"
    port = r.get(table, "port", int, 993 if tls == "implicit" else 143, prefix)
    if not 1 <= port <= 65535:
        r.problem(prefix + "port", f"{port} is not a TCP port")
    folders_value = table.get("folders", ["INBOX"])
    if isinstance(folders_value, str):
        folders_value = [folders_value]
    if (
        not isinstance(folders_value, list)
        or not folders_value
        or not all(isinstance(f, str) and f.strip() for f in folders_value)
    ):
        r.problem(prefix + "folders", 'must be a non-empty list of folder names, e.g. ["INBOX"]')
        folders_value = ["INBOX"]
    after = r.get(table, "after", str, "seen", prefix)
    if after != "seen" and not (after.startswith("move:") and after[5:].strip()):
        r.problem(prefix + "after", f'{after!r}: use "seen" or "move:FOLDER"')
        after = "seen"
    elif after.startswith("move:") and after[5:] in folders_value:
        r.problem(prefix + "after", f"{after!r}: the processed folder cannot be one of the polled folders")
    cron = r.cron(table, prefix)
    if not ok or password is None:
        return None
    return ImapMailbox(
        name=name,
        host=host.strip(),
        user=user,
        password=password,
        port=port,
        tls=tls,
        tls_ca=_file_setting(r, table, "tls_ca", prefix),
        tls_verify=r.get(table, "tls_verify", bool, True, prefix),
        folders=tuple(dict.fromkeys(folders_value)),
        after=after,
        include_seen=r.get(table, "include_seen", bool, False, prefix),
        interval=r.positive(table, "interval", float, 60.0, prefix),
        cron=cron,
        timeout=r.positive(table, "timeout", float, 60.0, prefix),
        backoff_max=r.positive(table, "backoff_max", float, 3600.0, prefix),
        enabled=r.get(table, "enabled", bool, True, prefix),
    )


# --- SFTP polling and delivery ---------------------------------------------------------


def check_host_key(text: str) -> str | None:
    """Why ``text`` is not a pinned host key "TYPE BASE64", or None when it is one."""
    import base64
    import binascii

    parts = text.split()
    if len(parts) < 2:
        return 'write the server\'s key as "TYPE BASE64", e.g. "ssh-ed25519 AAAAC3Nz..." (ssh-keyscan)'
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "the key is not base64"
    if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")] != parts[0].encode():
        return f"the key data is not a {parts[0]} key"
    return None


def _sftp_connection(r: _Reader, table: Mapping[str, Any], prefix: str, what: str) -> SftpConnection | None:
    ok = True
    host = r.get(table, "host", str, "", prefix).strip()
    user = r.get(table, "user", str, "", prefix)
    for setting, value in (("host", host), ("user", user)):
        if not value.strip():
            r.problem(prefix + setting, f"{what} needs a {setting}")
            ok = False
    port = r.get(table, "port", int, 22, prefix)
    if not 1 <= port <= 65535:
        r.problem(prefix + "port", f"{port} is not a TCP port")
        ok = False
    host_key = r.get(table, "host_key", str, "", prefix).strip()
    if not host_key:
        r.problem(
            prefix + "host_key",
            f'{what} needs the server\'s host key, host_key = "TYPE BASE64" (ssh-keyscan -p PORT HOST); '
            "there is no accepting an unknown key",
        )
        ok = False
    else:
        reason = check_host_key(host_key)
        if reason is not None:
            r.problem(prefix + "host_key", reason)
            ok = False
        host_key = " ".join(host_key.split()[:2])
    key: Path | SecretRef | None = None
    key_text = r.get(table, "key", str, "", prefix)
    if key_text.startswith(("env:", "file:")):
        key = r.secret(table, "key", prefix)
    elif key_text:
        path = Path(key_text)
        path = path if path.is_absolute() else (r.path.parent / path).resolve()
        key = path
        if not path.is_file():
            r.problem(prefix + "key", f"{path} does not exist")
            ok = False
    password = r.secret(table, "password", prefix)
    if key is None and password is None:
        r.problem(prefix + "key", f'{what} needs key = "PATH" (or "env:NAME") or password = "env:NAME"')
        ok = False
    if not ok:
        return None
    return SftpConnection(
        host=host,
        user=user,
        host_key=host_key,
        port=port,
        key=key,
        key_password=r.secret(table, "key_password", prefix),
        password=password,
        timeout=r.positive(table, "timeout", float, 30.0, prefix),
    )


def _partner_sftp(
    r: _Reader, table: Mapping[str, Any], partner_id: str
) -> tuple[tuple[SftpDrop, ...], SftpDeliver | None]:
    entries = table.get("drop", [])
    if isinstance(entries, dict):
        entries = [entries]
    drops: list[SftpDrop] = []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        r.problem("sftp.drop", "write each drop as a [[sftp.drop]] table")
        entries = []
    names: set[str] = set()
    for entry in entries:
        drop = _sftp_drop(r, entry, partner_id)
        if drop is None:
            continue
        if drop.name in names:
            r.problem("sftp.drop.name", f"{drop.name!r} names two drops")
            continue
        names.add(drop.name)
        drops.append(drop)
    deliver = None
    if "deliver" in table:
        prefix = "sftp.deliver."
        dtable = r.table(table, "deliver")
        r.unknown(dtable, _SFTP_DELIVER_KEYS, prefix)
        conn = _sftp_connection(r, dtable, prefix, "[sftp.deliver]")
        if conn is not None:
            deliver = SftpDeliver(
                partner=partner_id,
                connection=conn,
                folder=r.get(dtable, "folder", str, ".", prefix) or ".",
                retry_max_seconds=r.positive(dtable, "retry_max_seconds", float, 3600.0, prefix),
                give_up_after=r.positive(dtable, "give_up_after", float, 86400.0, prefix),
            )
    return tuple(drops), deliver


def _sftp_drop(r: _Reader, table: Mapping[str, Any], partner_id: str) -> SftpDrop | None:
    prefix = "sftp.drop."
    r.unknown(table, _SFTP_DROP_KEYS, prefix)
    name = r.get(table, "name", str, "", prefix)
    ok = True
    if not _SFTP_NAME.match(name):
        r.problem(prefix + "name", f"{name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
        ok = False
    conn = _sftp_connection(r, table, prefix, f"drop {name!r}")
    patterns = table.get("patterns", ["*"])
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        r.problem(prefix + "patterns", 'must be a non-empty list of file name patterns, e.g. ["*.edi"]')
        patterns = ["*"]
    folder = r.get(table, "folder", str, ".", prefix) or "."
    after = r.get(table, "after", str, "delete", prefix)
    if after != "delete" and not (after.startswith("move:") and after[5:].strip()):
        r.problem(prefix + "after", f'{after!r}: use "delete" or "move:DIR"')
        after = "delete"
    elif after.startswith("move:") and after[5:].strip("/") in {folder.strip("/"), "", "."}:
        r.problem(prefix + "after", f"{after!r}: the archive folder cannot be the polled folder")
    settle = r.get(table, "settle", float, 10.0, prefix)
    if settle < 0:
        r.problem(prefix + "settle", f"must be 0 or more seconds, got {settle}")
        settle = 10.0
    marker = r.get(table, "marker", str, "", prefix) or None
    if marker is not None and not marker.startswith("."):
        r.problem(prefix + "marker", f'{marker!r}: a suffix such as ".ok" or ".done"')
        marker = None
    cron = r.cron(table, prefix)
    if not ok or conn is None:
        return None
    return SftpDrop(
        partner=partner_id,
        name=name,
        connection=conn,
        folder=folder,
        patterns=tuple(dict.fromkeys(patterns)),
        interval=r.positive(table, "interval", float, 60.0, prefix),
        cron=cron,
        after=after,
        settle=settle,
        marker=marker,
        backoff_max=r.positive(table, "backoff_max", float, 3600.0, prefix),
        enabled=r.get(table, "enabled", bool, True, prefix),
    )


# --- the embedded SFTP server ----------------------------------------------------------


def _sftp_server_settings(r: _Reader, table: Mapping[str, Any]) -> SftpServerSettings:
    prefix = "sftp."
    d = SftpServerSettings()
    host_key = _file_setting(r, table, "host_key", prefix)
    if host_key is not None:
        reason = ssh_private_key_problem(host_key)
        if reason is not None:
            r.problem(prefix + "host_key", reason)
            host_key = None
    root = Path(r.get(table, "root", str, str(d.root), prefix) or str(d.root))
    return SftpServerSettings(
        host_key=host_key,
        root=root,
        max_sessions=r.positive(table, "max_sessions", int, d.max_sessions, prefix),
        retry_interval=r.positive(table, "retry_interval", float, d.retry_interval, prefix),
    )


def ssh_private_key_problem(path: Path) -> str | None:
    """Why ``path`` is not an unencrypted SSH private key paramiko can serve with, or None."""
    import paramiko

    try:
        paramiko.PKey.from_path(path)
    except (OSError, ValueError, paramiko.SSHException) as exc:
        return f"{path} is not an unencrypted SSH private key (ssh-keygen -t ed25519 -N ''): {exc}"
    return None


def ssh_public_key_problem(line: str) -> str | None:
    """Why ``line`` is not an OpenSSH public key "TYPE BASE64 [comment]", or None."""
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    parts = line.split()
    if len(parts) < 2:
        return 'write a public key as "TYPE BASE64 [comment]", e.g. the line of an id_ed25519.pub file'
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        return f"not an OpenSSH public key ({parts[0]}): {exc}"
    except Exception as exc:  # noqa: BLE001 - cryptography raises UnsupportedAlgorithm for odd types
        return f"unsupported key type {parts[0]!r}: {exc}"
    return None


def _partner_sftp_users(r: _Reader, table: Mapping[str, Any]) -> tuple[SftpUser, ...]:
    """``[[sftp.users]]`` of a partner profile: ``name`` and its public keys, inline
    (``keys = ["ssh-ed25519 AAAA... comment"]``) and/or in an OpenSSH authorized_keys
    file (``authorized_keys = "PATH"``, relative to the profile; no key options)."""
    prefix = "sftp.users."
    entries = table.get("users", [])
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        r.problem("sftp.users", 'write each user as a [[sftp.users]] table (name = "...", keys = [...])')
        return ()
    users: list[SftpUser] = []
    for entry in entries:
        r.unknown(entry, _SFTP_USER_KEYS, prefix)
        name = r.get(entry, "name", str, "", prefix)
        if not _SFTP_USER.match(name):
            r.problem(prefix + "name", f"{name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
            continue
        if any(u.name == name for u in users):
            r.problem(prefix + "name", f"{name!r} names two users")
            continue
        lines: list[str] = []
        inline = entry.get("keys", [])
        if isinstance(inline, str):
            inline = [inline]
        if not isinstance(inline, list) or not all(isinstance(k, str) for k in inline):
            r.problem(prefix + "keys", 'must be a list of public keys, e.g. ["ssh-ed25519 AAAA... comment"]')
            inline = []
        lines.extend(inline)
        keyfile = _file_setting(r, entry, "authorized_keys", prefix)
        if keyfile is not None:
            try:
                text = keyfile.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                r.problem(prefix + "authorized_keys", f"cannot read {keyfile}: {exc}")
                text = ""
            lines.extend(
                ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
            )
        keys: list[str] = []
        for line in lines:
            reason = ssh_public_key_problem(line)
            if reason is not None:
                r.problem(
                    prefix + ("authorized_keys" if keyfile is not None and line not in inline else "keys"),
                    f"user {name!r}: {reason}",
                )
                continue
            keys.append(" ".join(line.split()[:2]))
        if not keys:
            r.problem(
                prefix + "keys",
                f"user {name!r} has no public key: it could never log in (keys or authorized_keys)",
            )
            continue
        users.append(SftpUser(name=name, keys=tuple(dict.fromkeys(keys))))
    return tuple(users)


# --- fax -----------------------------------------------------------------------------


def _fax_default_country(r: _Reader, data: Mapping[str, Any]) -> str:
    """``[fax] default_country``: ISO 3166 alpha-2 code for callers' national numbers."""
    table = r.table(data, "fax")
    r.unknown(table, {"default_country"}, "fax.")
    country = r.get(table, "default_country", str, "US", "fax.").upper()
    if not valid_country(country):
        r.problem("fax.default_country", f"{country!r} is not a country code (ISO 3166 alpha-2, e.g. US, DE)")
        return "US"
    return country
