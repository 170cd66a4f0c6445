"""UN/EDIFACT parser: interchanges (UNA/UNB..UNZ) to canonical XML, one unit per message.

Reading order, and why:

1. The syntax identifier (UNB 0001, ``UNOC``...) is read from the raw bytes, since
   it says how to decode them (``CHARSETS``). The whole input is then decoded once.
2. The service characters come from UNA, or are the ISO 9735 defaults (level A
   ``:+.? '``; level B, recognised by IS3 after ``UNB``, the information separators).
   The repetition separator exists only from syntax version 4 on.
3. Segments are cut with ``str.split`` on the terminator; a piece whose end is an
   odd run of release characters continues into the next one. CR and LF are never
   data (ISO 9735 has no line structure), so they are dropped wherever they occur:
   that handles terminators followed by line breaks, and files hard-wrapped at a
   fixed width, in one rule. Within a segment, released characters are swapped for
   private-use placeholders so that elements, repetitions and components can again
   be cut with ``str.split`` (a per-character scan is the fallback when the text
   itself holds those placeholders).
4. A message's tree is built while its segments arrive and yielded at its UNT.
   The interchange (and group) trailers are located ahead of time (a cheap scan of
   the pieces), so each unit carries UNE/UNZ as the contract wants and a truncated
   interchange is refused before anything is yielded; their counts are checked when
   they are reached, i.e. after the units before them were yielded.

Segment groups (``SGn``) follow ``gateway.parsers.edifact_groups``.
Shape of the XML: ``docs/canonical-xml.md`` (section EDIFACT, and its notes).
"""

from __future__ import annotations

import codecs
import logging
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

from lxml import etree

from gateway.errors import EnvelopeError, ParseError, Position
from gateway.parsers.base import DocumentUnit
from gateway.parsers.edifact_groups import GroupState, start_state, structure_for

__all__ = ["CHARSETS", "EdifactParser", "ServiceChars", "codec_for"]

log = logging.getLogger(__name__)

#: Syntax identifier (UNB 0001) -> Python codec. ISO 9735 defines the repertoires;
#: these are the encodings they name. Notes on the less obvious ones:
#: UNOA/UNOB are ISO 646 subsets: decoded as ASCII, and as Latin-1 when a byte
#: above 0x7F shows up (senders often put 8-bit text in "UNOA" files; refusing them
#: would help nobody). UNOW is UTF-8 by definition. UNOY is "ISO 10646-1 octet
#: without code extension technique": in practice (and in every implementation we
#: know) UTF-8, the only octet form of ISO 10646 without code extension. UNOX is
#: "ISO 2022 code extension with ISO 2375 escapes", in use for Japanese: ISO-2022-JP-2
#: is the widest ISO 2022 codec Python has (JIS X 0208/0212, KS C 5601, GB 2312,
#: Latin-1 and Greek through escapes). KECA (Korean) is a registered non-UN id.
CHARSETS: dict[str, str] = {
    "UNOA": "ascii",
    "UNOB": "ascii",
    "UNOC": "latin-1",
    "UNOD": "iso8859-2",
    "UNOE": "iso8859-5",
    "UNOF": "iso8859-7",
    "UNOG": "iso8859-3",
    "UNOH": "iso8859-4",
    "UNOI": "iso8859-6",
    "UNOJ": "iso8859-8",
    "UNOK": "iso8859-9",
    "UNOW": "utf-8",
    "UNOX": "iso2022_jp_2",
    "UNOY": "utf-8",
    "KECA": "cp949",
}
#: Syntax ids whose codec is a strict subset in theory but not in practice: Latin-1 fallback.
_LENIENT = frozenset({"UNOA", "UNOB"})

_BOM = codecs.BOM_UTF8
_NL = "\r\n"
# Only these are layout; str.strip() would also eat the information separators
# \x1c-\x1f that level B uses as delimiters.
_WS = " \t\r\n"
# Padding that transfers leave behind the last segment (CP/M EOF, NUL fill, blanks).
_TRAILING_JUNK = " \t\r\n\x00\x1a"
_TAG = re.compile(r"[A-Z][A-Z0-9]{2}")
_ENVELOPE = frozenset({"UNA", "UNB", "UNG", "UNE", "UNZ"})
# Segments a message body's fast path leaves to the general one.
_NOT_BODY = _ENVELOPE | {"UNH", "UNT"}
_XML_CACHE_SIZE = 4096
# Placeholders for released element/component/repetition/terminator characters.
_PLACEHOLDERS = "\ue000\ue001\ue002\ue003"
_HAS_PLACEHOLDER = re.compile(f"[{_PLACEHOLDERS}]")
# Characters XML 1.0 cannot hold (TAB/LF/CR can; LF/CR never reach the XML anyway).
_XML_ILLEGAL = "".join(chr(c) for c in range(0x20) if c not in (9, 10, 13)) + "\ufffe\uffff"


@dataclass(frozen=True)
class ServiceChars:
    """The service characters of an interchange (UNA or the ISO 9735 defaults)."""

    component: str = ":"
    element: str = "+"
    decimal: str = "."
    release: str | None = "?"
    repetition: str | None = None  # syntax version 4 on; UNA position 5 (space = none)
    terminator: str = "'"

    def separators(self) -> str:
        return self.component + self.element + self.terminator + (self.repetition or "")


_LEVEL_A = ServiceChars()
# ISO 9735 level B defaults: IS1 component, IS3 element, IS4 terminator, no release.
_LEVEL_B = ServiceChars(component="\x1f", element="\x1d", release=None, terminator="\x1c")


def codec_for(syntax_id: str) -> str:
    """The codec for a syntax identifier; unknown ids get ASCII with Latin-1 fallback."""
    return CHARSETS.get(syntax_id, "ascii")


def _show(value: str, limit: int = 24) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _skip(text: str, pos: int, chars: str = " \t\r\n") -> int:
    n = len(text)
    while pos < n and text[pos] in chars:
        pos += 1
    return pos


def _read_una(text: str, pos: int) -> tuple[str, int]:
    """The six UNA characters at ``pos`` (just after "UNA") and the position after them.

    Line breaks inside the first five are wrapping, not characters (the fixed-width
    sample wraps right after UNA); the sixth, the terminator, is taken as it is, so a
    newline terminator stays possible.
    """
    chars: list[str] = []
    n = len(text)
    while pos < n and len(chars) < 6:
        c = text[pos]
        pos += 1
        if c in _NL and len(chars) < 5:
            continue
        chars.append(c)
    return "".join(chars), pos


def _service_chars(una: str | None, syntax_version: str, unb_separator: str) -> ServiceChars:
    if una is None:
        base = _LEVEL_B if unb_separator == "\x1d" else _LEVEL_A
        # Syntax 4 default repetition separator is '*' (level A); level B has none.
        rep = "*" if syntax_version >= "4" and base is _LEVEL_A else None
        return ServiceChars(base.component, base.element, base.decimal, base.release, rep, base.terminator)
    rel, rep = una[3], una[4]
    return ServiceChars(
        component=una[0],
        element=una[1],
        decimal=una[2],
        release=None if rel == " " else rel,
        # Syntax 3 reserves UNA position 5 (a space); only syntax 4 gives it a meaning.
        repetition=rep if rep != " " and syntax_version >= "4" else None,
        terminator=una[5],
    )


@dataclass(frozen=True)
class _Head:
    """What the first bytes say: syntax id/version, and the character set to decode with."""

    syntax_id: str
    syntax_version: str


def _read_head(data: bytes) -> _Head:
    """Read UNB 0001/0002 from the raw bytes (before decoding: they pick the codec)."""
    # Latin-1 maps bytes 1:1, so positions and ASCII separators survive unchanged.
    head = data[:2048].decode("latin-1")
    pos = _skip(head, 0, _TRAILING_JUNK)
    una: str | None = None
    if head.startswith("UNA", pos):
        una, pos = _read_una(head, pos + 3)
        if len(una) < 6:
            raise EnvelopeError(
                "not EDIFACT: UNA is cut short (it needs six service characters)",
                Position(offset=pos, line=_line_of(head, pos), segment_tag="UNA"),
            )
        pos = _skip(head, pos)
    body = head[pos : pos + 200].replace("\r", "").replace("\n", "")
    if not body.startswith("UNB") or len(body) < 5:
        raise EnvelopeError(
            f"not EDIFACT: expected UNA or UNB at the start, found {_show(body[:12])}",
            Position(offset=pos, line=_line_of(head, pos)),
        )
    elem = body[3]
    comp = una[0] if una is not None else ("\x1f" if elem == "\x1d" else ":")
    if una is not None and elem != una[1]:
        raise EnvelopeError(
            f"UNB does not use the data element separator declared in UNA: expected {una[1]!r}, found {elem!r}",
            Position(offset=pos, line=_line_of(head, pos), segment=1, segment_tag="UNB", element=1),
        )
    s001 = body[4:].split(elem, 1)[0].split(comp)
    syntax_id = s001[0]
    version = s001[1] if len(s001) > 1 else ""
    if not re.fullmatch(r"[A-Z0-9]{4}", syntax_id):
        raise EnvelopeError(
            f"UNB syntax identifier (0001) must be four letters/digits like UNOC, found {_show(syntax_id)}",
            Position(
                offset=pos, line=_line_of(head, pos), segment=1, segment_tag="UNB", element=1, component=1
            ),
        )
    return _Head(syntax_id, version)


def _decode(data: bytes, syntax_id: str) -> str:
    codec = codec_for(syntax_id)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        if syntax_id in _LENIENT or syntax_id not in CHARSETS:
            return data.decode("latin-1")
        line = data.count(b"\n", 0, exc.start) + 1
        raise ParseError(
            f"byte {data[exc.start : exc.start + 1]!r} is not valid in the declared character set "
            f"{syntax_id} ({codec})",
            Position(offset=exc.start, line=line),
        ) from None


def _split(body: str, chars: ServiceChars) -> list[list[list[str]]]:
    comp, rep = chars.component, chars.repetition
    out: list[list[list[str]]] = []
    for el in body.split(chars.element):
        if rep is not None and rep in el:
            out.append([r.split(comp) for r in el.split(rep)])
        else:
            out.append([el.split(comp)])
    return out


class _Segment:
    """One segment: tag, elements (each a list of repetitions, each a list of components)."""

    __slots__ = ("_elements", "chars", "line", "offset", "ordinal", "plain", "raw", "tag")

    def __init__(
        self,
        tag: str,
        elements: list[list[list[str]]] | None,
        ordinal: int,
        line: int,
        offset: int,
        plain: bool = True,
        raw: str | None = None,
        chars: ServiceChars = _LEVEL_A,
    ) -> None:
        self.plain = plain  # no character that XML text must escape
        self.tag = tag
        self._elements = elements
        #: the segment text when it holds no release character: then ``elements`` is
        #: only cut when asked for, and the XML is written straight from this text
        self.raw = raw
        self.chars = chars
        self.ordinal = ordinal
        self.line = line
        self.offset = offset

    @property
    def elements(self) -> list[list[list[str]]]:
        if self._elements is None:
            assert self.raw is not None
            self._elements = _split(self.raw, self.chars)[1:]
        return self._elements

    def value(self, element: int, component: int = 1) -> str:
        """First repetition's component, 1-based; "" when absent."""
        if element > len(self.elements):
            return ""
        comps = self.elements[element - 1][0]
        return comps[component - 1] if component <= len(comps) else ""

    def position(self, element: int | None = None, component: int | None = None) -> Position:
        return Position(
            offset=self.offset,
            line=self.line,
            segment=self.ordinal,
            segment_tag=self.tag,
            element=element,
            component=component,
        )


class _Tokens:
    """Cuts decoded text into segments with one set of service characters."""

    def __init__(self, text: str, start: int, chars: ServiceChars, line: int) -> None:
        self.text = text
        self.chars = chars
        self.pieces = text[start:].split(chars.terminator)
        self.index = 0
        self.offset = start  # of pieces[index] in text
        self.line = line  # at the start of pieces[index]
        self.ordinal = 0  # segments read in the current interchange
        # Line breaks that are not service characters are wrapping: dropped everywhere.
        self.drop = "".join(c for c in _NL if c not in chars.separators())
        rel = chars.release
        self.release = rel
        self.release_re = re.compile(re.escape(rel) + "(.)", re.DOTALL) if rel else None
        placeholder = dict(zip(chars.separators(), _PLACEHOLDERS, strict=False))
        self.escape = {c: placeholder.get(c, c) for c in set(chars.separators()) | ({rel} if rel else set())}
        self.restore = {ord(p): c for c, p in placeholder.items()}
        self.fast = _HAS_PLACEHOLDER.search(text, start) is None
        illegal = "".join(c for c in _XML_ILLEGAL if c not in chars.separators())
        self.illegal = re.compile(f"[{re.escape(illegal)}]")
        self.check_illegal = self.illegal.search(text, start) is not None
        #: body segments may be written straight from their pieces (``_Run._message``):
        #: no control character to refuse, and no separator that could pass for a tag
        self.plain_ok = not self.check_illegal and not any(c.isalnum() for c in chars.separators())
        #: piece -> its XML, for the pieces the fast path wrote (segments repeat a lot)
        self.xml_cache: dict[str, str] = {}

    # -- reading -------------------------------------------------------------------

    def _raw(self, index: int) -> tuple[str, int]:
        """The segment text starting at piece ``index`` (released terminators joined),
        and the index of the piece after it."""
        pieces, rel = self.pieces, self.release
        piece = pieces[index]
        index += 1
        if rel is not None:
            while index < len(pieces):
                stem = piece.rstrip(_NL) if self.drop else piece
                run = len(stem) - len(stem.rstrip(rel))
                if not run % 2:
                    break
                piece = piece + self.chars.terminator + pieces[index]
                index += 1
        return piece, index

    def next(self) -> _Segment | None:
        """The next segment, or None at the end of the text."""
        pieces = self.pieces
        rel, drop = self.release, self.drop
        while self.index < len(pieces):
            start_offset = self.offset
            raw = pieces[self.index]
            if (rel is not None and raw.endswith(rel)) or (drop and raw.endswith(("\r", "\n"))):
                raw, after = self._raw(self.index)  # maybe a released terminator
            else:
                after = self.index + 1
            self.offset += len(raw) + 1
            self.index = after
            body = raw.lstrip(_WS)
            lead = len(raw) - len(body)
            line = self.line + (raw.count("\n", 0, lead) if lead else 0)
            self.line += raw.count("\n")
            if not body or (after >= len(pieces) and not body.strip(_TRAILING_JUNK)):
                continue
            if self.drop and ("\n" in body or "\r" in body):
                for c in self.drop:
                    body = body.replace(c, "")
            self.ordinal += 1
            return self._segment(body, self.ordinal, line, start_offset + lead)
        return None

    def _segment(self, body: str, ordinal: int, line: int, offset: int) -> _Segment:
        if body.startswith("UNA"):
            # Service string advice of a following interchange: the caller re-reads it.
            return _Segment("UNA", [], ordinal, line, offset)
        if self.check_illegal:
            bad = self.illegal.search(body)
            if bad:
                raise ParseError(
                    f"control character U+{ord(bad.group()):04X} cannot be carried as data",
                    Position(offset=offset + bad.start(), line=line, segment=ordinal),
                )
        rel = self.release
        if rel is not None and rel in body:
            if self.fast:
                assert self.release_re is not None
                escape = self.escape
                body = self.release_re.sub(lambda m: escape.get(m.group(1), m.group(1)), body)
                elements = self._split(body)
                if _HAS_PLACEHOLDER.search(body):
                    restore = self.restore
                    elements = [[[c.translate(restore) for c in rep] for rep in el] for el in elements]
            else:
                elements = self._split_slow(body)
        else:
            # No release character: cut the tag alone; the rest when needed.
            chars = self.chars
            first = body.split(chars.element, 1)[0]
            if chars.repetition is not None and chars.repetition in first:
                first = first.split(chars.repetition, 1)[0]
            tag = first.split(chars.component, 1)[0]
            if not _TAG.fullmatch(tag):
                raise ParseError(
                    f"segment tag must be three upper-case letters/digits, found {_show(tag)}",
                    Position(offset=offset, line=line, segment=ordinal),
                )
            plain = "&" not in body and "<" not in body and ">" not in body
            return _Segment(tag, None, ordinal, line, offset, plain, body, chars)
        tag_el = elements[0][0]
        tag = tag_el[0]
        if not _TAG.fullmatch(tag):
            raise ParseError(
                f"segment tag must be three upper-case letters/digits, found {_show(tag)}",
                Position(offset=offset, line=line, segment=ordinal),
            )
        # Tag components after the first are syntax 1-3 nesting indicators: not data.
        del elements[0]
        plain = "&" not in body and "<" not in body and ">" not in body
        return _Segment(tag, elements, ordinal, line, offset, plain)

    def _split(self, body: str) -> list[list[list[str]]]:
        return _split(body, self.chars)

    def _split_slow(self, body: str) -> list[list[list[str]]]:
        """Per-character split; only used when the text holds our placeholder characters."""
        chars = self.chars
        out: list[list[list[str]]] = []
        reps: list[list[str]] = []
        comps: list[str] = []
        cur: list[str] = []
        i, n = 0, len(body)
        while i < n:
            c = body[i]
            i += 1
            if c == chars.release:
                if i < n:
                    cur.append(body[i])
                    i += 1
                else:
                    cur.append(c)
            elif c == chars.component:
                comps.append("".join(cur))
                cur = []
            elif c == chars.repetition:
                comps.append("".join(cur))
                reps.append(comps)
                comps, cur = [], []
            elif c == chars.element:
                comps.append("".join(cur))
                reps.append(comps)
                out.append(reps)
                reps, comps, cur = [], [], []
            else:
                cur.append(c)
        comps.append("".join(cur))
        reps.append(comps)
        out.append(reps)
        return out

    # -- looking ahead ---------------------------------------------------------------

    def find_ahead(self, tag: str, stop: frozenset[str]) -> _Segment | None:
        """The next segment ``tag`` before any ``stop`` segment (ordinal/line unknown: 0).

        Used for trailers (UNE, UNZ): a quick look at each piece's start, and the
        full rules (joined released terminators) only for candidates.
        """
        pieces, elem, rel = self.pieces, self.chars.element, self.release
        wanted = (tag, *stop)
        for k in range(self.index, len(pieces)):
            head = pieces[k][:16].lstrip(_WS)
            if self.drop:
                for c in self.drop:
                    head = head.replace(c, "")
            found = head[:3]
            if found not in wanted or (len(head) > 3 and head[3] not in (elem, self.chars.component)):
                continue
            if rel is not None and k > 0:
                prev = pieces[k - 1].rstrip(_NL)
                if (len(prev) - len(prev.rstrip(rel))) % 2:
                    continue  # released terminator: this piece is data
            if found != tag:
                return None
            raw, _ = self._raw(k)
            body = raw.strip(_WS)
            for c in self.drop:
                body = body.replace(c, "")
            try:
                return self._segment(body, 0, 0, 0)
            except ParseError:
                return None
        return None


class _Run:
    """One call of ``parse``."""

    def __init__(self, data: bytes, strict: bool, on_problem: Callable[[EnvelopeError], None] | None) -> None:
        self.strict = strict
        self.on_problem = on_problem
        data = data.removeprefix(_BOM)
        head = _read_head(data)
        self.first_syntax = head.syntax_id
        self.text = _decode(data, head.syntax_id)
        self.units = 0
        # Only our own text is parsed with it; entities off all the same.
        self.xml_parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)

    # -- policy ------------------------------------------------------------------------

    def problem(self, error: EnvelopeError) -> None:
        """A count/reference mismatch or missing trailer: fatal when strict."""
        if self.strict:
            raise error
        if self.on_problem is not None:
            self.on_problem(error)
        else:
            log.warning("EDIFACT envelope problem (lenient mode): %s", error)

    # -- driver ------------------------------------------------------------------------

    def run(self) -> Iterator[DocumentUnit]:
        text = self.text
        pos = _skip(text, 0, _TRAILING_JUNK)
        chars, start, line = self._chars_at(pos, _line_of(text, pos))
        tokens = _Tokens(text, start, chars, line)
        pending: _Segment | None = None
        while True:
            seg = pending or tokens.next()
            pending = None
            if seg is None:
                if self.units == 0 and tokens.ordinal == 0:
                    raise EnvelopeError("not EDIFACT: no UNB segment", Position(offset=pos, line=1))
                return
            if seg.tag == "UNA":
                chars, start, line = self._chars_at(seg.offset, seg.line)
                if chars != tokens.chars:  # else: same characters, keep cutting as before
                    tokens = _Tokens(text, start, chars, line)
                continue
            if seg.tag != "UNB":
                what = "not EDIFACT: expected UNA or UNB" if self.units == 0 else "expected UNB after UNZ"
                raise EnvelopeError(f"{what}, found segment {seg.tag}", seg.position())
            pending = yield from self._interchange(tokens, seg)

    def _chars_at(self, pos: int, line: int) -> tuple[ServiceChars, int, int]:
        """Service characters of the interchange at ``pos``, where its segments start, and that line."""
        text = self.text
        una: str | None = None
        if text.startswith("UNA", pos):
            una, pos = _read_una(text, pos + 3)
            if len(una) < 6:
                raise EnvelopeError(
                    "UNA is cut short (it needs six service characters)",
                    Position(offset=pos, line=_line_of(text, pos), segment_tag="UNA"),
                )
            line = _line_of(text, pos)
        start = _skip(text, pos)
        body = text[start : start + 200].replace("\r", "").replace("\n", "")
        unb_sep = body[3] if body.startswith("UNB") and len(body) > 3 else "+"
        comp = una[0] if una else ("\x1f" if unb_sep == "\x1d" else ":")
        s001 = body[4:].split(unb_sep, 1)[0].split(comp)
        version = s001[1][:1] if len(s001) > 1 else ""
        chars = _service_chars(una, version, unb_sep)
        used = chars.separators() + (chars.release or "")
        if len(set(used)) < len(used):
            raise EnvelopeError(
                f"UNA declares one character for two roles (separators, release): {una!r}",
                Position(offset=pos, line=line, segment_tag="UNA"),
            )
        return chars, pos, line

    # -- one interchange -------------------------------------------------------------

    def _interchange(self, tokens: _Tokens, unb: _Segment) -> Generator[DocumentUnit, None, _Segment | None]:
        """Yield the units of the interchange starting at ``unb``; return a segment
        that was read past its end (a following UNB/UNA in lenient mode) or None."""
        tokens.ordinal = 1
        unb.ordinal = 1
        syntax_id = unb.value(1, 1)
        syntax_version = unb.value(1, 2)
        reference = unb.value(5)
        attrib = {"standard": "EDIFACT", "syntax": syntax_id, "syntax_version": syntax_version}
        sender_id, sender_q = unb.value(2, 1), unb.value(2, 2)
        receiver_id, receiver_q = unb.value(3, 1), unb.value(3, 2)
        sender = {"edifact": f"{sender_id}:{sender_q}" if sender_q else sender_id}
        receiver = {"edifact": f"{receiver_id}:{receiver_q}" if receiver_q else receiver_id}
        unb_xml = self._xml(unb)
        unz = tokens.find_ahead("UNZ", frozenset({"UNB", "UNA"}))
        if unz is None:
            self.problem(
                EnvelopeError(
                    f"interchange {reference!r} is not terminated (truncated?): expected UNZ, found "
                    "the end of the data or the next UNB",
                    unb.position(),
                )
            )
        unz_xml = self._xml(unz) if unz is not None else ""

        groups = 0
        loose = 0  # messages outside groups
        group: _Segment | None = None
        group_xml: str | None = None
        une_xml = ""
        in_group = 0
        while True:
            seg = tokens.next()
            if seg is None:
                if group is not None:
                    self.problem(self._missing("UNE", group, "the end of the data"))
                if unz is not None:  # seen ahead but not reached: a joined (released) terminator
                    self.problem(self._missing("UNZ", unb, "the end of the data"))
                return None
            tag = seg.tag
            if tag == "UNH":
                self.units += 1
                unit_tree, message = self._message(tokens, seg, attrib, unb_xml, group_xml, une_xml, unz_xml)
                if group is not None:
                    in_group += 1
                else:
                    loose += 1
                yield DocumentUnit(
                    standard="EDIFACT",
                    doc_type=message["type"],
                    tree=unit_tree,
                    version=f"{message['version']}:{message['release']}",
                    control_number=message["reference"],
                    interchange_control_number=reference,
                    group_control_number=group.value(5) if group is not None else "",
                    sender=sender,
                    receiver=receiver,
                    index=self.units,
                )
            elif tag == "UNG":
                if group is not None:
                    self.problem(self._missing("UNE", group, "UNG"))
                group = seg
                groups += 1
                in_group = 0
                group_xml = self._xml(seg)
                une = tokens.find_ahead("UNE", frozenset({"UNG", "UNZ", "UNB", "UNA"}))
                if une is None:
                    self.problem(self._missing("UNE", seg, "UNZ or the end of the data"))
                une_xml = self._xml(une) if une is not None else ""
            elif tag == "UNE":
                if group is None:
                    raise EnvelopeError("UNE without a preceding UNG", seg.position())
                self._check_count(seg, in_group, "number of messages in the group")
                self._check_reference(seg, group.value(5), "UNG 0048")
                group = group_xml = None
                une_xml = ""
            elif tag == "UNZ":
                if group is not None:
                    self.problem(self._missing("UNE", group, "UNZ"))
                expected = groups + loose  # groups, or messages when there are none
                what = "number of groups" if groups else "number of messages"
                self._check_count(seg, expected, what)
                self._check_reference(seg, reference, "UNB 0020")
                return None
            elif tag in ("UNB", "UNA"):
                self.problem(self._missing("UNZ", unb, tag))
                return seg
            elif tag == "UNT":
                raise EnvelopeError("UNT without a preceding UNH", seg.position())
            else:
                raise EnvelopeError(f"segment {tag} outside a message (no UNH before it)", seg.position())

    def _missing(self, trailer: str, header: _Segment, found: str) -> EnvelopeError:
        ref = header.value(5) if header.tag in ("UNB", "UNG") else header.value(1)
        return EnvelopeError(
            f"{header.tag} {ref!r} is not closed: expected {trailer}, found {found}",
            header.position(),
        )

    def _check_count(self, seg: _Segment, expected: int, what: str) -> None:
        found = seg.value(1)
        if not found.isdigit():
            self.problem(
                EnvelopeError(
                    f"{seg.tag}01 ({what}) must be a number: expected {expected}, found {_show(found)}",
                    seg.position(1),
                )
            )
        elif int(found) != expected:
            self.problem(
                EnvelopeError(
                    f"{seg.tag}01 ({what}): expected {expected}, found {int(found)}", seg.position(1)
                )
            )

    def _check_reference(self, seg: _Segment, expected: str, source: str) -> None:
        found = seg.value(2)
        if found != expected:
            self.problem(
                EnvelopeError(
                    f"{seg.tag}02 control reference must equal {source}: expected {expected!r}, found {found!r}",
                    seg.position(2),
                )
            )

    # -- one message -------------------------------------------------------------------

    def _message(
        self,
        tokens: _Tokens,
        unh: _Segment,
        attrib: dict[str, str],
        unb_xml: str,
        group_xml: str | None,
        une_xml: str,
        unz_xml: str,
    ) -> tuple[etree._Element, dict[str, str]]:
        info = {
            "reference": unh.value(1),
            "type": unh.value(2, 1),
            "version": unh.value(2, 2),
            "release": unh.value(2, 3),
            "agency": unh.value(2, 4),
            "association": unh.value(2, 5),
        }
        # The unit is written as XML text and parsed once: libxml2 builds a tree from
        # text several times faster than one etree.SubElement call per node.
        out: list[str] = [_start_tag("Interchange", attrib), unb_xml]
        if group_xml is not None:
            out += ("<Group>", group_xml)
        message_attrib = {
            k: info[k] for k in ("type", "version", "release", "agency", "association") if info[k]
        }
        out.append(_start_tag("Message", message_attrib))
        out.append(self._xml(unh))
        structure = structure_for(info["type"], info["version"], info["release"])
        state: GroupState | None = start_state(structure) if structure is not None else None
        count = 1
        xml = self._xml
        pieces = tokens.pieces
        last = len(pieces) - 1
        fast = tokens.plain_ok
        rel = tokens.release
        elem = tokens.chars.element
        cached = tokens.xml_cache
        while True:
            if fast:
                # The usual body segment, cut and written straight from its piece: what
                # tokens.next() + _segment + _xml would give, without a _Segment object.
                # Anything unusual (release or layout characters, a tag with components,
                # the last piece, envelope/UNH/UNT segments) takes the general path below.
                index = tokens.index
                while index < last:
                    piece = pieces[index]
                    text = cached.get(piece)
                    if text is None:
                        if (
                            len(piece) < 3
                            or (len(piece) > 3 and piece[3] != elem)
                            or piece[0] in _WS
                            or (rel is not None and rel in piece)
                            or "\n" in piece
                            or "\r" in piece
                            or "&" in piece
                            or "<" in piece
                            or ">" in piece
                        ):
                            break
                        tag = piece[:3]
                        if tag in _NOT_BODY or not _TAG.fullmatch(tag):
                            break
                        text = _xml_raw(tag, piece, tokens.chars)
                        if len(cached) >= _XML_CACHE_SIZE:
                            cached.clear()
                        cached[piece] = text
                    else:
                        tag = piece[:3]
                    index += 1
                    tokens.offset += len(piece) + 1
                    count += 1
                    if state is not None:
                        moved = state.moves.get(tag) or state.move(tag)
                        if moved[0]:
                            out.append(moved[0])
                        state = moved[1]
                    out.append(text)
                tokens.ordinal += index - tokens.index
                tokens.index = index
            seg = tokens.next()
            if seg is None:
                raise EnvelopeError(
                    f"message {info['reference']!r} is not terminated (truncated?): expected UNT, "
                    "found the end of the data",
                    unh.position(),
                )
            tag = seg.tag
            if tag in _ENVELOPE or tag == "UNH":
                raise EnvelopeError(
                    f"message {info['reference']!r} is not terminated: expected UNT, found {tag}",
                    seg.position(),
                )
            count += 1
            if tag == "UNT":
                if state is not None:
                    out.append(state.close_all)
                out.append(xml(seg))
                self._check_count(seg, count, "number of segments UNH..UNT")
                self._check_reference(seg, info["reference"], "UNH 0062")
                break
            if state is not None:
                moved = state.moves.get(tag) or state.move(tag)
                if moved[0]:
                    out.append(moved[0])
                state = moved[1]
            out.append(xml(seg))
        out.append("</Message>")
        if group_xml is not None:
            out += (une_xml, "</Group>")
        out += (unz_xml, "</Interchange>")
        return etree.fromstring("".join(out), self.xml_parser), info

    # -- XML ---------------------------------------------------------------------------

    def _xml(self, seg: _Segment) -> str:
        """The segment as canonical XML text (empty elements and components left out)."""
        tag = seg.tag
        if seg.raw is not None and seg.plain:
            return _xml_raw(tag, seg.raw, seg.chars)
        elements = seg.elements
        table = _TAG_XML.get(tag)
        if table is None or len(table[2]) < len(elements):
            table = _tag_xml(tag, len(elements))
        start, end, element_tags = table
        out = [start]
        escape = not seg.plain
        for entry, reps in zip(element_tags, elements, strict=False):
            for comps in reps:
                if len(comps) == 1:
                    value = comps[0]
                    if value:  # a simple data element: the usual case
                        out += (entry.single_open, _escape(value) if escape else value, entry.single_close)
                    continue
                if not any(comps):
                    continue
                comp_tags = entry.comp_tags
                if len(comp_tags) < len(comps):
                    entry.extend(len(comps))
                out.append(entry.open)
                for (o, c), value in zip(comp_tags, comps, strict=False):
                    if value:
                        out += (o, _escape(value) if escape else value, c)
                out.append(entry.close)
        out.append(end)
        return "".join(out)


def _xml_raw(tag: str, raw: str, chars: ServiceChars) -> str:
    """``_xml`` for a segment without release and XML-special characters, cut from its text."""
    parts = raw.split(chars.element)
    count = len(parts) - 1
    table = _TAG_XML.get(tag)
    if table is None or len(table[2]) < count:
        table = _tag_xml(tag, count)
    start, end, element_tags = table
    comp, rep = chars.component, chars.repetition
    out = [start]
    i = 0
    for el in parts:
        if i:
            entry = element_tags[i - 1]
            for value in el.split(rep) if rep is not None and rep in el else (el,):
                if comp not in value:
                    if value:
                        out += (entry.single_open, value, entry.single_close)
                    continue
                comps = value.split(comp)
                if not any(comps):
                    continue
                comp_tags = entry.comp_tags
                if len(comp_tags) < len(comps):
                    entry.extend(len(comps))
                out.append(entry.open)
                for (o, c), v in zip(comp_tags, comps, strict=False):
                    if v:
                        out += (o, v, c)
                out.append(entry.close)
        i += 1
    out.append(end)
    return "".join(out)


class _ElementXml:
    """Tags of one data element (``BGM01``) and its components, written once."""

    __slots__ = ("close", "comp_tags", "name", "open", "single_close", "single_open")

    def __init__(self, name: str) -> None:
        self.name = name
        self.open = f"<{name}>"
        self.close = f"</{name}>"
        self.comp_tags: list[tuple[str, str]] = []
        self.extend(1)
        self.single_open = self.open + self.comp_tags[0][0]
        self.single_close = self.comp_tags[0][1] + self.close

    def extend(self, count: int) -> None:
        tags = self.comp_tags
        while len(tags) < count:
            n = f"{self.name}-{len(tags) + 1}"
            tags.append((f"<{n}>", f"</{n}>"))


#: segment tag -> its start/end tag and its data elements' tags (shared by all parses;
#: tags are checked against ``_TAG`` before they get here, so this stays bounded)
_TAG_XML: dict[str, tuple[str, str, list[_ElementXml]]] = {}


def _tag_xml(tag: str, count: int) -> tuple[str, str, list[_ElementXml]]:
    table = _TAG_XML.get(tag)
    if table is None:
        table = _TAG_XML[tag] = (f"<{tag}>", f"</{tag}>", [])
    elements = table[2]
    while len(elements) < count:
        elements.append(_ElementXml(f"{tag}{len(elements) + 1:02d}"))
    return table


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _start_tag(name: str, attrib: dict[str, str]) -> str:
    attrs = "".join(f' {k}="{_escape(v).replace(chr(34), "&quot;")}"' for k, v in attrib.items())
    return f"<{name}{attrs}>"


class EdifactParser:
    """UN/EDIFACT interchanges to canonical XML; one unit per message (UNH..UNT).

    ``strict`` (the default) makes every envelope mismatch an :class:`EnvelopeError`.
    With ``strict=False``, count and control-reference mismatches and missing
    UNE/UNZ trailers are handed to ``on_problem`` (default: a logged warning) and the
    units are still produced; structural errors (no UNB, missing UNT, a segment
    outside a message, undecodable bytes) are raised either way.
    """

    standard = "EDIFACT"

    def __init__(
        self, *, strict: bool = True, on_problem: Callable[[EnvelopeError], None] | None = None
    ) -> None:
        self.strict = strict
        self.on_problem = on_problem

    def sniff(self, data: bytes) -> bool:
        head = data[:512].removeprefix(_BOM).lstrip(b" \t\r\n\x00")
        if head.startswith(b"UNA"):
            return len(head) >= 9
        return head.startswith(b"UNB") and len(head) > 3 and not chr(head[3]).isalnum()

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        """Yield each message as its UNT is reached (see ``Parser.parse``).

        Raises :class:`ParseError`, or :class:`EnvelopeError` for envelope checks.
        """
        if not data.strip():
            raise EnvelopeError("not EDIFACT: empty input", Position(offset=0, line=1))
        run = _Run(data, self.strict, self.on_problem)
        try:
            yield from run.run()
        except ParseError:
            raise
        except (ValueError, IndexError, LookupError) as exc:  # pragma: no cover - a bug, but never a crash
            raise ParseError(f"internal error while parsing EDIFACT: {exc!r}", Position()) from exc
