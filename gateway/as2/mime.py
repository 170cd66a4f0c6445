"""Byte-exact MIME handling for AS2.

The standard library's ``email`` package re-serialises what it parses, which changes
the bytes a signature covers. AS2 needs the exact bytes of a signed part, so entities
are split here by hand and only header *values* go through ``email`` for parameter
parsing.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message

from gateway.as2.errors import UnexpectedProcessingError

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Entity:
    """One MIME entity: its headers (lower-case names, unfolded) and its body bytes."""

    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> tuple[str, dict[str, str]]:
        return parse_content_type(self.headers.get("content-type", "text/plain"))

    def decoded_body(self) -> bytes:
        return decode_transfer_encoding(self.body, self.headers.get("content-transfer-encoding", ""))

    @property
    def filename(self) -> str | None:
        disposition = self.headers.get("content-disposition")
        if not disposition:
            return None
        msg = Message()
        msg["content-disposition"] = disposition
        name = msg.get_param("filename", header="content-disposition")
        return name if isinstance(name, str) and name else None


def unfold(lines: Iterable[bytes]) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in lines:
        if not line.strip():
            continue
        text = line.decode("latin-1")
        if text[:1] in {" ", "\t"} and last is not None:
            headers[last] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep:
            raise UnexpectedProcessingError(f"malformed MIME header line {text[:60]!r}")
        last = name.strip().lower()
        # A repeated header keeps its first value: later ones cannot override what was signed.
        headers.setdefault(last, value.strip())
    return headers


def split_entity(data: bytes) -> Entity:
    """Headers and body of a MIME entity (CRLF or bare-LF line ends)."""
    if data.startswith((b"\r\n", b"\n")):
        return Entity({}, data[2:] if data.startswith(b"\r\n") else data[1:])
    match = _HEADER_END.search(data)
    if match is None:
        # Headers only, or a bare body: treat as headers when every line looks like one.
        head, body = data, b""
    else:
        head, body = data[: match.start()], data[match.end() :]
    return Entity(unfold(re.split(rb"\r?\n", head)), body)


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype`` (lower-case) and its parameters (names lower-case)."""
    value = value.strip()
    # ph-OpenAS2 4.4.4 sends the whole header value in double quotes (phase2 issue 97).
    if value.startswith('"') and value.endswith('"') and "/" in value.split(";", 1)[0]:
        value = value[1:-1].replace('\\"', '"')
    fast = _parse_simple_content_type(value)
    if fast is not None:
        return fast
    msg = Message()
    msg["content-type"] = value
    params: dict[str, str] = {}
    for name, param in (msg.get_params(header="content-type") or [])[1:]:
        if isinstance(param, str):
            params[name.lower()] = param
    return msg.get_content_type().lower(), params


_TOKEN = r"[A-Za-z0-9!#$%&'+.^_`|~-]+"
_SIMPLE_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}")
_SIMPLE_PARAM = re.compile(rf'\s*;\s*({_TOKEN})\s*=\s*(?:"([^"]+)"|({_TOKEN}))\s*')


def _parse_simple_content_type(value: str) -> tuple[str, dict[str, str]] | None:
    """The common case (``type/subtype; name=value; name="value"``) without the
    ``email`` package, which costs tens of microseconds per header; None for anything
    else (comments, escapes, RFC 2231 continuations ...), which ``email`` then parses."""
    if "\\" in value or "(" in value or "*" in value:
        return None
    head, sep, rest = value.partition(";")
    head = head.strip()
    if not _SIMPLE_TYPE.fullmatch(head):
        return None
    params: dict[str, str] = {}
    rest = (sep + rest).rstrip()
    if rest.endswith(";"):
        return None  # email reports an empty parameter there; keep its answer
    pos = 0
    while pos < len(rest):
        match = _SIMPLE_PARAM.match(rest, pos)
        if match is None:
            return None
        params[match.group(1).lower()] = match.group(2) if match.group(2) is not None else match.group(3)
        pos = match.end()
    return head.lower(), params


def decode_transfer_encoding(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "base64":
        try:
            # Non-strict decoding skips line breaks and other whitespace in C.
            return base64.b64decode(body, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise UnexpectedProcessingError(f"base64 body does not decode: {exc}") from exc
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    if encoding in {"", "7bit", "8bit", "binary"}:
        return body
    raise UnexpectedProcessingError(f"unknown Content-Transfer-Encoding {encoding!r}")


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, each exactly as it appears (headers and content).

    Per RFC 2046 the line break before a delimiter belongs to the delimiter, so it is
    not part of the preceding part: these are the bytes a detached signature covers.

    A delimiter is ``--boundary`` at the start of the body or of a line, optionally
    ``--`` (the close delimiter), optional spaces or tabs, then a line break or the
    end. Found with ``bytes.find`` (a regular expression scanning every position of a
    large body costs far more).
    """
    needle = b"--" + boundary.encode("latin-1")
    size = len(body)
    parts: list[bytes] = []
    start: int | None = None
    pos = 0
    while True:
        i = body.find(needle, pos)
        if i < 0:
            break
        if i == 0:
            begin = 0
        elif body[i - 1] == 0x0A:  # "\n": the line break belongs to the delimiter
            begin = i - 2 if i >= 2 and body[i - 2] == 0x0D else i - 1
        else:
            pos = i + 1
            continue
        end = i + len(needle)
        close = body.startswith(b"--", end)
        if close:
            end += 2
        while end < size and body[end] in b" \t":
            end += 1
        if end < size and not body.startswith((b"\r\n", b"\n"), end):
            pos = i + 1
            continue
        if start is not None:
            parts.append(body[start:begin])
        if close:
            return parts
        # skip the line break that ends the delimiter line
        if body.startswith(b"\r\n", end):
            end += 2
        elif body.startswith(b"\n", end):
            end += 1
        start = pos = end
    if start is None:
        raise UnexpectedProcessingError(f"multipart body has no boundary {boundary!r}")
    # A missing close delimiter (truncated message): the last part runs to the end.
    parts.append(body[start:])
    return parts


def signed_forms(part: bytes) -> Iterator[bytes]:
    """The spellings of a signed part a sender may have signed, most literal first.

    Exactly as received; headers CRLF-canonical with the body untouched (binary
    content is never canonicalised, but some transports turned the header line ends
    into LF); and everything CRLF-canonical (text content). Lazily, and without
    repeats: a verifier that matches the exact bytes never computes the others.
    """
    yield part
    if not has_bare_lf(part):
        return  # already canonical: the other spellings are the same bytes
    seen = [part]
    match = _HEADER_END.search(part)
    if match is not None:
        form = canonical(part[: match.start()]) + b"\r\n\r\n" + part[match.end() :]
        if form not in seen:
            seen.append(form)
            yield form
    form = canonical(part)
    if form not in seen:
        yield form


def canonical(data: bytes) -> bytes:
    """Bare LF line ends as CRLF: the canonical form S/MIME signs text in."""
    return _BARE_LF.sub(b"\r\n", data)


def has_bare_lf(data: bytes) -> bool:
    return _BARE_LF.search(data) is not None


def header_block(headers: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
