"""Typed configuration loaded from TOML files under ``config/``.

``gateway.toml`` holds the gateway's own settings; ``partners/*.toml`` one partner
profile each. Loading collects *every* problem before failing, so ``gateway config
check`` can report them all at once. Secrets are never stored inline: a setting that
holds one takes a reference ``env:NAME`` or ``file:PATH``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import ConfigError, Problem

T = TypeVar("T")

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


@dataclass(frozen=True)
class PartnerProfile:
    id: str
    name: str
    source: Path
    #: (kind, value) pairs, values normalised (see :func:`normalise_identity`)
    identities: tuple[tuple[str, str], ...]
    active: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    directory: Path
    settings: GatewaySettings
    partners: tuple[PartnerProfile, ...]

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
    "smtp": {"accept", "tls_certificate", "tls_key", "auth", "max_message_bytes"},
    "sftp": {"host_key", "root"},
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
        data, {"gateway", "store", "limits", "processing", "mappings", "as2", "smtp", "sftp", "certificates"}
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
    return PartnerProfile(
        id=partner_id,
        name=r.get(data, "name", str, partner_id, ""),
        source=path,
        identities=tuple(pairs),
        active=r.get(data, "active", bool, True, ""),
        extra=extra,
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
    config = Config(directory, settings, tuple(partners))
    if strict and problems:
        raise ConfigError(problems)
    return config, problems
