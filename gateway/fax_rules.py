"""Fax-to-mail: which e-mails are fax notices, and what they say.

A fax service (eFax, RingCentral, InterFAX ...) or an office device (HylaFAX, a Ricoh
MFP ...) delivers a received fax as an e-mail: a notice in the subject and body, the
fax itself as a PDF or TIFF attachment. A **rule** (one file per provider in
``config/fax-providers/*.toml``, see ``docs/email.md``, "Fax-to-mail") says how to
recognise one provider's notices:

* ``senders``: the provider's addresses (``fax@host``) or domains (``efax.com``, which
  also covers its subdomains such as ``inbound.efax.com``). Required: a notice from
  any other sender is an ordinary e-mail, however fax-like it reads.
* ``subject`` and ``body``: regular expressions that must all be found (``re.search``)
  in the decoded subject and the plain-text body; ``extract``: further expressions
  that only fill in values when they are found. Named groups give the values:
  ``caller`` (the caller's fax number), ``caller_name``, ``pages``, ``time``.
* ``documents``: media types that carry the fax (default PDF and TIFF); without such
  an attachment the notice stays an ordinary e-mail.
* ``[example]``: a notice the rule matches (``from``, ``subject``, ``body``) and the
  values it yields (``[example.expect]``); the test suite checks every shipped rule
  against its example.

Rules are loaded with every problem collected (file, line, field, reason), so
``gateway config check`` reports them all at once. Callers' numbers are normalised to
E.164 with :func:`to_e164` (``phonenumbers``), national numbers read in the configured
default country (``[fax] default_country`` in ``gateway.toml``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from gateway.errors import Problem

#: the values a rule's named groups may capture
GROUPS = frozenset({"caller", "caller_name", "pages", "time"})
DEFAULT_DOCUMENTS = ("application/pdf", "image/tiff")
DEFAULT_COUNTRY = "US"
_RULE_KEYS = frozenset(
    {"name", "description", "senders", "subject", "body", "extract", "documents", "example", "enabled"}
)
_EXAMPLE_KEYS = frozenset({"from", "subject", "body", "attachment", "expect"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$|^[a-z0-9-]+(\.[a-z0-9-]+)+$")


@dataclass(frozen=True)
class FaxRule:
    """One provider's notice format (a file in ``config/fax-providers``)."""

    name: str
    source: Path
    senders: tuple[str, ...]
    subject: re.Pattern[str] | None = None
    body: tuple[re.Pattern[str], ...] = ()
    extract: tuple[re.Pattern[str], ...] = ()
    documents: tuple[str, ...] = DEFAULT_DOCUMENTS
    description: str = ""
    #: the example notice from the rule file: from, subject, body, attachment, expect
    example: Mapping[str, Any] = field(default_factory=dict)

    def sender_matches(self, address: str) -> bool:
        address = address.strip().lower()
        domain = address.rpartition("@")[2]
        for sender in self.senders:
            if "@" in sender:
                if address == sender:
                    return True
            elif domain == sender or domain.endswith("." + sender):
                return True
        return False

    def read(self, subject: str, body: str) -> dict[str, str] | None:
        """The values of a notice this rule's patterns match, or None.

        ``subject`` and every ``body`` pattern must be found; ``extract`` patterns fill
        what is still missing. The first value found for a group wins."""
        values: dict[str, str] = {}

        def take(match: re.Match[str]) -> None:
            for key, value in match.groupdict().items():
                if value is not None and value.strip() and key not in values:
                    values[key] = value.strip()

        if self.subject is not None:
            match = self.subject.search(subject)
            if match is None:
                return None
            take(match)
        for pattern in self.body:
            match = pattern.search(body)
            if match is None:
                return None
            take(match)
        for pattern in self.extract:
            match = pattern.search(subject) or pattern.search(body)
            if match is not None:
                take(match)
        return values


@dataclass(frozen=True)
class FaxDocument:
    filename: str
    media_type: str
    data: bytes


@dataclass(frozen=True)
class FaxMatch:
    rule: FaxRule
    values: Mapping[str, str]
    document: FaxDocument


def match_notice(
    rules: Sequence[FaxRule],
    *,
    sender: str,
    subject: str,
    body: str,
    documents: Sequence[FaxDocument],
) -> FaxMatch | None:
    """The first rule (in file-name order) that recognises this e-mail as a fax.

    Sender, patterns and an attached fax document must all fit; anything less is an
    ordinary e-mail."""
    for rule in rules:
        if not rule.sender_matches(sender):
            continue
        values = rule.read(subject, body)
        if values is None:
            continue
        doc = next((d for d in documents if d.media_type in rule.documents), None)
        if doc is None:
            continue
        return FaxMatch(rule, values, doc)
    return None


# --- E.164 ----------------------------------------------------------------------------


def _nanp_shaped(national: str) -> bool:
    """NANP numbers are NXX-NXX-XXXX: area code and exchange start with 2-9. (The
    fictional 555-01xx numbers used in examples and tests are accepted.)"""
    return bool(re.fullmatch(r"[2-9]\d\d[2-9]\d{6}", national))


def to_e164(number: str, default_country: str = DEFAULT_COUNTRY) -> str | None:
    """``number`` in E.164 (``+15555550100``), or None when it is not a phone number.

    International forms (``+49 40 5550199``, ``0049 ...`` from Europe, ``011 49 ...``
    from NANP) keep their country; national forms (``(555) 555-0100``,
    ``031-555-0142``) are read in ``default_country`` (ISO 3166 alpha-2). A number must
    be valid for its country per libphonenumber's metadata, or at least possible and,
    for NANP, shaped like one (so reserved example numbers still work)."""
    text = number.strip()
    if not re.search(r"\d", text) or re.search(r"[A-Za-z]{2,}", text):
        return None
    try:
        parsed = phonenumbers.parse(text, default_country.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        if not phonenumbers.is_possible_number(parsed):
            return None
        if parsed.country_code == 1 and not _nanp_shaped(str(parsed.national_number)):
            return None
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def valid_country(code: str) -> bool:
    return code.upper() in phonenumbers.SUPPORTED_REGIONS


# --- loading --------------------------------------------------------------------------


class _Lines:
    def __init__(self, path: Path, text: str, problems: list[Problem]) -> None:
        self.path = path
        self.text = text
        self.problems = problems

    def line_of(self, key: str) -> int | None:
        match = re.search(rf"^\s*{re.escape(key)}\s*=", self.text, re.MULTILINE)
        return None if match is None else self.text.count("\n", 0, match.start()) + 1

    def problem(self, key: str, reason: str, line: int | None = None) -> None:
        leaf = key.rsplit(".", 1)[-1].split("[", 1)[0]
        self.problems.append(
            Problem(str(self.path), line if line is not None else self.line_of(leaf), reason, field=key)
        )


def _compile(r: _Lines, key: str, source: object) -> re.Pattern[str] | None:
    if not isinstance(source, str) or not source:
        r.problem(key, "must be a non-empty regular expression (a string)")
        return None
    try:
        pattern = re.compile(source)
    except re.error as exc:
        r.problem(key, f"regular expression does not compile: {exc.msg} at position {exc.pos}")
        return None
    unknown = sorted(set(pattern.groupindex) - GROUPS)
    if unknown:
        r.problem(
            key,
            f"unknown group name(s) {', '.join(unknown)} (known: {', '.join(sorted(GROUPS))})",
        )
        return None
    return pattern


def _patterns(r: _Lines, data: Mapping[str, Any], key: str) -> tuple[re.Pattern[str], ...]:
    value = data.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        r.problem(key, "must be a regular expression or a list of them")
        return ()
    out = [_compile(r, f"{key}[{i}]" if len(value) > 1 else key, v) for i, v in enumerate(value)]
    return tuple(p for p in out if p is not None)


def load_rule(path: Path, problems: list[Problem]) -> FaxRule | None:
    """One rule file; its problems are appended to ``problems`` (None when unusable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), None, f"cannot read: {exc}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        problems.append(Problem(str(path), int(found.group(1)) if found else None, f"not valid TOML: {exc}"))
        return None
    r = _Lines(path, text, problems)
    before = len(problems)
    for key in data:
        if key not in _RULE_KEYS:
            r.problem(key, f"unknown setting (known: {', '.join(sorted(_RULE_KEYS))})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        r.problem("name", f"{name!r}: use lower-case letters, digits, '.', '_' or '-' (at most 64)")
        name = path.stem
    senders_raw = data.get("senders")
    senders: list[str] = []
    if isinstance(senders_raw, str):
        senders_raw = [senders_raw]
    if not isinstance(senders_raw, list) or not senders_raw:
        r.problem(
            "senders",
            "required: the provider's sender addresses or domains (a notice from anyone else is mail)",
        )
    else:
        for value in senders_raw:
            if not isinstance(value, str) or not _ADDRESS.match(value.strip().lower()):
                r.problem("senders", f"{value!r} is not an e-mail address or a domain")
                continue
            senders.append(value.strip().lower())
    subject = _compile(r, "subject", data["subject"]) if "subject" in data else None
    body = _patterns(r, data, "body")
    extract = _patterns(r, data, "extract")
    if "subject" not in data and "body" not in data:
        r.problem("subject", "a rule needs a subject or body pattern")
    documents_raw = data.get("documents", list(DEFAULT_DOCUMENTS))
    documents: tuple[str, ...] = DEFAULT_DOCUMENTS
    if not isinstance(documents_raw, list) or not all(isinstance(d, str) for d in documents_raw):
        r.problem("documents", "must be a list of media types")
    else:
        bad = [d for d in documents_raw if d.lower() not in DEFAULT_DOCUMENTS]
        if bad or not documents_raw:
            r.problem("documents", f"a fax is carried by {' or '.join(DEFAULT_DOCUMENTS)}, not {bad or '[]'}")
        documents = tuple(d.lower() for d in documents_raw if d.lower() in DEFAULT_DOCUMENTS) or documents
    example = data.get("example", {})
    if not isinstance(example, dict):
        r.problem("example", "must be a table")
        example = {}
    for key in example:
        if key not in _EXAMPLE_KEYS:
            r.problem(f"example.{key}", f"unknown setting (known: {', '.join(sorted(_EXAMPLE_KEYS))})")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        r.problem("enabled", "must be true or false")
    if len(problems) > before or enabled is False:
        return None
    return FaxRule(
        name=name,
        source=path,
        senders=tuple(senders),
        subject=subject,
        body=body,
        extract=extract,
        documents=documents,
        description=str(data.get("description", "")),
        example=example,
    )


def load_rules(directory: Path, problems: list[Problem]) -> tuple[FaxRule, ...]:
    """Every rule in ``directory/*.toml``, in file-name order (first match wins)."""
    if not directory.is_dir():
        return ()
    rules: list[FaxRule] = []
    names: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        rule = load_rule(path, problems)
        if rule is None:
            continue
        if rule.name in names:
            problems.append(
                Problem(
                    str(path), None, f"rule name {rule.name!r} is also used by {names[rule.name]}", "name"
                )
            )
            continue
        names[rule.name] = path
        rules.append(rule)
    return tuple(rules)
