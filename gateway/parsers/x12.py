"""ASC X12 parser: interchanges (ISA..IEA) to canonical XML, one unit per transaction set.

The separators come from each ISA (a file may hold several interchanges with
different separators). Segments are cut with ``str.find`` on the segment
terminator; the tree of a set is built with ``etree.SubElement`` and yielded as
soon as its SE has been checked, so memory stays bounded by the largest set, not
by the interchange. GE and IEA are checked when they arrive, i.e. after the units
of their group/interchange were yielded (see ``Parser.parse``); a truncated
interchange (no IEA at the end of the data) is refused before the first unit.

Shape of the XML: ``docs/canonical-xml.md`` (section X12 and its X12 notes).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import cache

from lxml import etree

from gateway.errors import EnvelopeError, ParseError, Position
from gateway.parsers.base import DocumentUnit
from gateway.parsers.x12_loops import SETS, Loop, SetSpec

__all__ = ["X12Header", "X12Parser", "read_header"]

#: fixed widths of ISA01..ISA16
ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
#: characters of the ISA up to and including ISA16 (the terminator follows)
ISA_LENGTH = 3 + sum(ISA_WIDTHS) + len(ISA_WIDTHS)  # 105
_ISA_HEADER = "ISA"
# Only these count as indentation/line structure; str.strip() would also eat the
# information separators \x1c-\x1f, which some senders use as delimiters.
_WS = " \t\r\n"
_NL = "\r\n"
# Padding that file transfers leave after the last interchange (CP/M EOF, NUL fill).
_TRAILING_JUNK = _WS + "\x00\x1a"
_ENVELOPE = frozenset({"ISA", "IEA", "GS", "GE", "ST", "SE", "TA1", "ISB", "ISE"})
# Characters lxml refuses in text and attributes (XML 1.0 has no place for them).
_XML_ILLEGAL = "".join(chr(c) for c in range(0x20) if c not in (9, 10, 13)) + "\ufffe\uffff"
# Characters that XML text written by hand must escape (CR: libxml2 would turn it into LF).
_XML_SPECIAL = "&<>\r"
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)


@dataclass(frozen=True)
class X12Header:
    """An interchange header (ISA) and the delimiters it declares."""

    elements: tuple[str, ...]  # ISA01..ISA16, padding kept
    element_separator: str
    component_separator: str
    repetition_separator: str | None  # None before 00402 (ISA11 is then a standards id)
    segment_terminator: str
    offset: int  # where "ISA" starts in the decoded text
    end: int  # just after the terminator

    @property
    def control_number(self) -> str:
        return self.elements[12]

    @property
    def sender(self) -> str:
        return f"{self.elements[4].strip()}:{self.elements[5].strip()}"

    @property
    def receiver(self) -> str:
        return f"{self.elements[6].strip()}:{self.elements[7].strip()}"

    @property
    def version(self) -> str:
        return self.elements[11]

    @property
    def ack_requested(self) -> bool:
        return self.elements[13] == "1"

    @property
    def usage(self) -> str:
        """ISA15: P (production) or T (test)."""
        return self.elements[14]


def decode(data: bytes) -> str:
    """X12 basic/extended character sets: UTF-8 when valid, else Latin-1 (never fails)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass  # not really UTF-16: treat as single-byte text below
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _position(text: str, offset: int, **kw: int | str | None) -> Position:
    line = text.count("\n", 0, offset) + 1
    column = offset - text.rfind("\n", 0, offset)
    return Position(offset=offset, line=line, column=column, **kw)  # type: ignore[arg-type]


def _skip_ws(text: str, pos: int, chars: str = _WS) -> int:
    n = len(text)
    while pos < n and text[pos] in chars:
        pos += 1
    return pos


def _show(s: str, limit: int = 20) -> str:
    return repr(s if len(s) <= limit else s[:limit] + "...")


def _read_isa(text: str, start: int) -> X12Header:
    """Read the fixed-width ISA at ``start``; line breaks inside it are wrapping, not data."""
    pos, n = start, len(text)
    isa = text[start : start + ISA_LENGTH]
    if len(isa) == ISA_LENGTH and "\n" not in isa and "\r" not in isa:
        chars = [isa]  # not wrapped: the usual case
        pos += ISA_LENGTH
    else:
        chars = []
        while len(chars) < ISA_LENGTH and pos < n:
            ch = text[pos]
            if ch not in _NL:
                chars.append(ch)
            pos += 1
    if len("".join(chars)) < ISA_LENGTH or pos >= n:
        raise EnvelopeError(
            f"ISA must be 106 characters (fixed width, terminator included), "
            f"found {len(''.join(chars)) + (pos < n)} before the end of the data",
            _position(text, start, segment=1, segment_tag="ISA"),
        )
    isa = "".join(chars)
    terminator = text[pos]
    sep = isa[3]
    if isa[:3] != _ISA_HEADER:
        raise ParseError(f"expected ISA, found {_show(isa[:3])}", _position(text, start))
    if sep.isalnum() or sep in _WS:
        raise ParseError(
            f"ISA element separator must be a special character, found {sep!r}",
            _position(text, start + 3, segment=1, segment_tag="ISA"),
        )
    fields = isa.split(sep)[1:]
    for i, width in enumerate(ISA_WIDTHS):
        if i >= len(fields) or len(fields[i]) != width:
            found = f"{len(fields[i])}" if i < len(fields) else "none"
            raise EnvelopeError(
                f"ISA{i + 1:02d} must be {width} characters wide (ISA is fixed width), found {found}",
                _position(text, start, segment=1, segment_tag="ISA", element=i + 1),
            )
    if len(fields) != len(ISA_WIDTHS):  # pragma: no cover - widths above make this unreachable
        raise EnvelopeError(f"ISA must have 16 elements, found {len(fields)}", _position(text, start))
    component = fields[15]
    isa11 = fields[10]
    version = fields[11]
    repetition: str | None = isa11
    if not (version.isdigit() and version >= "00402") or isa11.isalnum():
        # Before 00402 ISA11 is the standards id ("U"); senders that keep "U" in later
        # versions mean "no repetition separator" too.
        repetition = None
    problems = [
        ("component separator ISA16", component),
        ("segment terminator", terminator),
    ] + ([("repetition separator ISA11", repetition)] if repetition else [])
    for label, ch in problems:
        if ch.isalnum() or ch in " \t" or (ch in _NL and label != "segment terminator"):
            raise ParseError(
                f"{label} must be a special character, found {ch!r}",
                _position(text, start, segment=1, segment_tag="ISA"),
            )
    used = [sep, component, terminator] + ([repetition] if repetition else [])
    if len(set(used)) != len(used):
        raise ParseError(
            "ISA declares the same character for two delimiters "
            f"(element {sep!r}, component {component!r}, repetition {repetition!r}, "
            f"terminator {terminator!r})",
            _position(text, start, segment=1, segment_tag="ISA"),
        )
    return X12Header(tuple(fields), sep, component, repetition, terminator, start, pos + 1)


def _start(text: str) -> int:
    pos = _skip_ws(text, 0, _WS + "\ufeff")
    if not text.startswith(_ISA_HEADER, pos):
        raise ParseError(
            f"not EDI: no X12 interchange (expected ISA, found {_show(text[pos : pos + 3]) if pos < len(text) else 'no data'})",
            _position(text, pos),
        )
    return pos


def read_header(data: bytes) -> X12Header:
    """The first ISA of ``data`` with its delimiters (raises ParseError)."""
    text = decode(data)
    return _read_isa(text, _start(text))


class _Node:
    """A loop (or the set body) compiled for lookups."""

    __slots__ = ("children", "members", "name", "order")

    def __init__(self, name: str, body: tuple[str | Loop, ...]) -> None:
        self.name = name
        self.members: dict[str, int] = {}
        self.children: dict[str, _Node] = {}
        self.order: dict[str, int] = {}  # child loop start -> position in body
        for i, item in enumerate(body, start=1):
            if isinstance(item, Loop):
                self.children.setdefault(item.start, _Node(item.name, item.body))
                self.order.setdefault(item.start, i)
            else:
                self.members.setdefault(item, i)


class _Compiled:
    __slots__ = ("hierarchical", "root", "start", "strict")

    def __init__(self, spec: SetSpec) -> None:
        self.root = _Node("Transaction", spec.body)
        self.hierarchical = spec.hierarchical
        self.strict = spec.strict
        self.start = _State(self.root, None)


class _Frame:
    __slots__ = ("el", "hl_id", "last", "node")

    def __init__(self, node: _Node, el: etree._Element, hl_id: str | None = None) -> None:
        self.node = node
        self.el = el
        self.hl_id = hl_id
        self.last = 0  # position in node's body of the last thing placed (strict order)


class _LoopBuilder:
    """Places the segments of one transaction set into its loops."""

    __slots__ = ("hl", "set_id", "spec", "stack")

    def __init__(self, spec: _Compiled, set_id: str, transaction: etree._Element) -> None:
        self.spec = spec
        self.set_id = set_id
        self.stack = [_Frame(spec.root, transaction)]
        self.hl: dict[str, list[_Frame]] = {}

    def parent_for(self, tag: str, els: list[str]) -> etree._Element | str:
        """The element the segment goes into, or an error message (str)."""
        stack = self.stack
        strict = self.spec.strict
        top = stack[-1]
        if not strict and tag in top.node.members:
            return top.el
        if tag == "HL" and self.spec.hierarchical:
            return self._hl(els)
        for depth in range(len(stack) - 1, -1, -1):
            frame = stack[depth]
            node = frame.node
            child = node.children.get(tag)
            index = node.order.get(tag) if child is not None else node.members.get(tag)
            if index is None:
                continue
            if strict and index < frame.last:
                return f"segment {tag} is out of order in {node.name} of transaction set {self.set_id}"
            frame.last = index
            del stack[depth + 1 :]
            if child is None:
                return frame.el
            el = etree.SubElement(frame.el, child.name)
            new = _Frame(child, el)
            new.last = 0
            stack.append(new)
            return el
        if strict:
            where = " or ".join(f.node.name for f in reversed(stack))
            return f"segment {tag} is not allowed here in transaction set {self.set_id} (in {where})"
        # Not in the table (implementation-guide extras): keep it where it occurs.
        return top.el

    def _hl(self, els: list[str]) -> etree._Element | str:
        hl_id = els[1] if len(els) > 1 else ""
        parent = els[2] if len(els) > 2 else ""
        level = els[3] if len(els) > 3 else ""
        root = self.stack[0]
        node = root.node.children.get("HL")
        if node is None:  # pragma: no cover - hierarchical specs always define HL
            return root.el
        if parent:
            chain = None
            for depth in range(len(self.stack) - 1, 0, -1):
                if self.stack[depth].hl_id == parent:
                    chain = self.stack[: depth + 1]
                    break
            if chain is None:
                chain = self.hl.get(parent)
            if chain is None:
                return f"HL02 refers to parent HL {parent!r}, which does not precede it"
            self.stack = list(chain)
        else:
            del self.stack[1:]
        attrib: dict[str, str] = {}
        if hl_id:
            attrib["id"] = hl_id
        if parent:
            attrib["parent"] = parent
        if level:
            attrib["level"] = level
        el = etree.SubElement(self.stack[-1].el, node.name, attrib)
        self.stack.append(_Frame(node, el, hl_id))
        if hl_id:
            self.hl[hl_id] = list(self.stack)
        return el


# Shared by all parses (tags are checked before they get here, so these stay small):
# segment id -> element names; -> XML tags of the segment and its elements;
# element start tag -> XML tags of its components.
_NAMES: dict[str, list[str]] = {}
_TAGS: dict[str, tuple[str, str, list[str], list[str]]] = {}
_COMP_TAGS: dict[str, tuple[list[str], list[str]]] = {}


class _Fallback(Exception):
    """The set cannot be written as text in document order: build it with lxml calls."""


@cache
def _char_class(chars: str) -> re.Pattern[str]:
    return re.compile(f"[{re.escape(chars)}]")


class _State:
    """A path of open loops (root first) in a set that is neither strict nor hierarchical.

    ``step`` caches, per segment id, the end/start tags to write and the state after
    it: after the first few sets of a kind, placing a segment is one dict lookup.
    """

    __slots__ = ("children", "close_all", "node", "parent", "step")

    def __init__(self, node: _Node, parent: _State | None) -> None:
        self.node = node
        self.parent = parent
        self.children: dict[str, _State] = {}
        self.step: dict[str, tuple[str, _State]] = {}
        # end tags of every loop open in this state, innermost first
        self.close_all: str = "" if parent is None else f"</{node.name}>{parent.close_all}"

    def move(self, tag: str) -> tuple[str, _State]:
        """What ``_LoopBuilder.parent_for`` does (non-strict, not HL), as text."""
        got = self.step.get(tag)
        if got is not None:
            return got
        if tag in self.node.members:
            got = ("", self)
        else:
            got = ("", self)
            closes = ""
            state: _State | None = self
            while state is not None:
                node = state.node
                child = node.children.get(tag)
                index = node.order.get(tag) if child is not None else node.members.get(tag)
                if index is not None:
                    if child is None:
                        got = (closes, state)
                    else:
                        new = state.children.get(tag)
                        if new is None:
                            new = state.children[tag] = _State(child, state)
                        got = (f"{closes}<{child.name}>", new)
                    break
                closes += f"</{node.name}>"
                state = state.parent
        if len(self.step) < 1024:  # tags outside the table are never cached beyond this
            self.step[tag] = got
        return got


class _StrFrame:
    __slots__ = ("close", "hl_id", "last", "node")

    def __init__(self, node: _Node, hl_id: str | None = None) -> None:
        self.node = node
        self.close = f"</{node.name}>"
        self.hl_id = hl_id
        self.last = 0


class _StrLoops:
    """``_LoopBuilder`` for strict and hierarchical sets, writing tags as text."""

    __slots__ = ("hl", "ill", "set_id", "spec", "stack")

    def __init__(self, spec: _Compiled, set_id: str, ill: re.Pattern[str] | None) -> None:
        self.spec = spec
        self.set_id = set_id
        self.stack = [_StrFrame(spec.root)]
        self.hl: set[str] = set()
        self.ill = ill

    def place(self, tag: str, els: list[str], out: list[str]) -> str | None:
        """Write the tags that move to the segment's place; an error message, or None."""
        stack = self.stack
        strict = self.spec.strict
        top = stack[-1]
        if not strict and tag in top.node.members:
            return None
        if tag == "HL" and self.spec.hierarchical:
            return self._hl(els, out)
        for depth in range(len(stack) - 1, -1, -1):
            frame = stack[depth]
            node = frame.node
            child = node.children.get(tag)
            index = node.order.get(tag) if child is not None else node.members.get(tag)
            if index is None:
                continue
            if strict and index < frame.last:
                return f"segment {tag} is out of order in {node.name} of transaction set {self.set_id}"
            frame.last = index
            self._pop(depth, out)
            if child is not None:
                out.append(f"<{child.name}>")
                stack.append(_StrFrame(child))
            return None
        if strict:
            where = " or ".join(f.node.name for f in reversed(stack))
            return f"segment {tag} is not allowed here in transaction set {self.set_id} (in {where})"
        return None

    def _pop(self, depth: int, out: list[str]) -> None:
        stack = self.stack
        for k in range(len(stack) - 1, depth, -1):
            out.append(stack[k].close)
        del stack[depth + 1 :]

    def close_all(self, out: list[str]) -> None:
        self._pop(0, out)

    def _hl(self, els: list[str], out: list[str]) -> str | None:
        hl_id = els[1] if len(els) > 1 else ""
        parent = els[2] if len(els) > 2 else ""
        level = els[3] if len(els) > 3 else ""
        stack = self.stack
        node = stack[0].node.children.get("HL")
        if node is None:  # pragma: no cover - hierarchical specs always define HL
            raise _Fallback
        if parent:
            for depth in range(len(stack) - 1, 0, -1):
                if stack[depth].hl_id == parent:
                    break
            else:
                if parent in self.hl:
                    raise _Fallback  # its loop is closed: the new one goes back inside it
                return f"HL02 refers to parent HL {parent!r}, which does not precede it"
        else:
            depth = 0
        attrs = ""
        for name, v in (("id", hl_id), ("parent", parent), ("level", level)):
            if v:
                if self.ill is not None and self.ill.search(v):
                    raise ValueError("attribute")  # as etree.SubElement would
                attrs += f' {name}="{v.translate(_ATTR_ESCAPES)}"'
        self._pop(depth, out)
        out.append(f"<{node.name}{attrs}>")
        stack.append(_StrFrame(node, hl_id))
        if hl_id:
            self.hl.add(hl_id)
        return None


_COMPILED: dict[str, _Compiled] = {k: _Compiled(v) for k, v in SETS.items()}


class _Run:
    """One call of ``parse``: walks the interchanges of a decoded text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.units = 0
        # Which characters that need care in XML occur at all (one fast scan each):
        # usually none but the delimiters, and then no segment needs checking.
        self.present = "".join(c for c in _XML_ILLEGAL + _XML_SPECIAL if c in text)
        # Units are written as XML text and parsed once (several times faster than
        # one etree.SubElement per node); only our own text goes through it.
        self.xml_parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            collect_ids=False,
        )

    def err(
        self,
        cls: type[ParseError],
        message: str,
        offset: int,
        ordinal: int | None,
        tag: str | None,
        el: int | None = None,
    ) -> ParseError:
        offset = _skip_ws(self.text, offset)
        return cls(message, _position(self.text, offset, segment=ordinal, segment_tag=tag, element=el))

    def run(self) -> Iterator[DocumentUnit]:
        text = self.text
        pos = _start(text)
        header = _read_isa(text, pos)
        self._check_trailer(header)
        while True:
            pos = yield from self._interchange(header)
            pos = _skip_ws(text, pos, _TRAILING_JUNK)
            if pos >= len(text):
                return
            if not text.startswith(_ISA_HEADER, pos):
                raise self.err(
                    ParseError,
                    f"data after IEA: expected ISA or end of data, found {_show(text[pos : pos + 20])}",
                    pos,
                    None,
                    None,
                )
            header = _read_isa(text, pos)

    def _check_trailer(self, header: X12Header) -> None:
        """Refuse a truncated interchange before yielding anything from it."""
        text = self.text
        t, e = header.segment_terminator, header.element_separator
        end = len(text)
        while end > 0 and text[end - 1] in _TRAILING_JUNK:
            end -= 1
        if end > 0 and text[end - 1] == t:
            end -= 1
        begin = text.rfind(t, 0, end) + 1
        last = text[begin:end]
        if t not in _NL:
            last = last.replace("\r", "").replace("\n", "")
        last = last.strip(_WS)
        if last.startswith("IEA" + e) or last == "IEA":
            return
        if _ISA_HEADER in last:
            return  # a later interchange with other delimiters: checked when reached
        tag = last.split(e, 1)[0][:10]
        raise self.err(
            EnvelopeError,
            f"interchange not terminated (truncated?): expected IEA at the end of the data, found {tag!r}",
            begin,
            None,
            tag or None,
        )

    def _interchange(self, h: X12Header) -> Generator[DocumentUnit, None, int]:
        """Parse one interchange; yields its units, returns the position after IEA."""
        text = self.text
        n = len(text)
        sep, comp, rep, term = (
            h.element_separator,
            h.component_separator,
            h.repetition_separator,
            h.segment_terminator,
        )
        unwrap = term not in _NL
        strip_cr = term == "\n"
        isa = h.elements
        sender = {"x12": h.sender}
        receiver = {"x12": h.receiver}
        isa13 = isa[12]

        names: dict[str, list[str]] = {}
        comp_names: dict[str, list[str]] = {}

        def element_names(tag: str, count: int) -> list[str]:
            got = names.get(tag)
            if got is None:
                got = _NAMES.get(tag)
                if got is not None:
                    names[tag] = got
            if got is None:
                if not (
                    2 <= len(tag) <= 3
                    and tag.isascii()
                    and tag.isalnum()
                    and tag[0].isalpha()
                    and tag.isupper()
                ):
                    raise ValueError("tag")
                got = names[tag] = _NAMES[tag] = [tag]
            while len(got) < count:
                got.append(f"{tag}{len(got):02d}")
            return got

        sub = etree.SubElement
        # Without a repetition separator test for the element separator instead: it
        # cannot occur in a value, so the hot loop needs no None check.
        rep_test = rep if rep is not None else sep

        def build(parent: etree._Element, tag: str, els: list[str]) -> etree._Element:
            seg = sub(parent, tag)
            nm = names.get(tag)
            if nm is None or len(nm) < len(els):
                nm = element_names(tag, len(els))
            for i, v in enumerate(els):
                if i and v:
                    if rep_test in v:
                        for r in v.split(rep_test):
                            if r:
                                value(seg, nm[i], r)
                    elif comp in v:
                        value(seg, nm[i], v)
                    else:
                        sub(seg, nm[i]).text = v
            return seg

        def value(seg: etree._Element, name: str, v: str) -> None:
            el = etree.SubElement(seg, name)
            if comp not in v:
                el.text = v
                return
            parts = v.split(comp)
            cn = comp_names.get(name)
            if cn is None:
                cn = comp_names[name] = [name]
            while len(cn) < len(parts) + 1:
                cn.append(f"{name}-{len(cn)}")
            for k, p in enumerate(parts, start=1):
                if p:
                    etree.SubElement(el, cn[k]).text = p

        # --- the same, as XML text ---------------------------------------------------------
        delimiters = sep + comp + (rep or "")
        present = "".join(c for c in self.present if c not in delimiters)
        ill_chars = "".join(c for c in present if c in _XML_ILLEGAL)
        special_chars = "".join(c for c in present if c in _XML_SPECIAL)
        ill = _char_class(ill_chars) if ill_chars else None
        special = _char_class(special_chars) if special_chars else None
        # tag -> (start tag, end tag, element start tags, element end tags)
        tags: dict[str, tuple[str, str, list[str], list[str]]] = {}
        comp_tags = _COMP_TAGS

        def segment_tags(tag: str, count: int) -> tuple[str, str, list[str], list[str]]:
            nm = element_names(tag, count)  # checks the tag, once per interchange
            got = _TAGS.get(tag)
            if got is None or len(got[2]) < len(nm):
                got = _TAGS[tag] = (f"<{tag}>", f"</{tag}>", [f"<{x}>" for x in nm], [f"</{x}>" for x in nm])
            tags[tag] = got
            return got

        def write(out: list[str], tag: str, els: list[str], raw: str) -> None:
            """``build`` as text: same names, same checks (ValueError), same omissions."""
            got = tags.get(tag)
            if got is None or len(got[2]) < len(els):
                got = segment_tags(tag, len(els))
            if ill is not None and ill.search(raw):
                raise ValueError("character")
            start, end, opens, closes = got
            out.append(start)
            if (
                comp in raw
                or (rep is not None and rep in raw)
                or (special is not None and special.search(raw))
            ):
                for i, v in enumerate(els):
                    if i and v:
                        if rep_test in v:
                            for r in v.split(rep_test):
                                if r:
                                    write_value(out, opens[i], closes[i], r)
                        else:
                            write_value(out, opens[i], closes[i], v)
            else:
                for i, v in enumerate(els):
                    if i and v:
                        out += (opens[i], v, closes[i])
            out.append(end)

        def write_value(out: list[str], open_tag: str, close_tag: str, v: str) -> None:
            if comp not in v:
                out += (open_tag, v.translate(_TEXT_ESCAPES) if special is not None else v, close_tag)
                return
            parts = v.split(comp)
            ct = comp_tags.get(open_tag)
            if ct is None or len(ct[0]) <= len(parts):
                if len(comp_tags) > 100_000:  # pragma: no cover - bounded by the tags, really
                    comp_tags.clear()
                name = open_tag[1:-1]
                cn = [name, *(f"{name}-{k}" for k in range(1, len(parts) + 1))]
                ct = comp_tags[open_tag] = ([f"<{x}>" for x in cn], [f"</{x}>" for x in cn])
            copens, ccloses = ct
            out.append(open_tag)
            for k, p in enumerate(parts, start=1):
                if p:
                    out += (copens[k], p.translate(_TEXT_ESCAPES) if special is not None else p, ccloses[k])
            out.append(close_tag)

        def bad_segment(exc: ValueError, tag: str, els: list[str], offset: int, ordinal: int) -> ParseError:
            if str(exc) == "tag" or tag not in names:
                return self.err(ParseError, f"invalid segment id {_show(tag)}", offset, ordinal, None)
            for i, v in enumerate(els[1:], start=1):
                try:
                    etree.Element("x").text = v
                except ValueError:
                    return self.err(
                        ParseError,
                        f"element contains a character not allowed in XML text: {_show(v)}",
                        offset,
                        ordinal,
                        tag,
                        i,
                    )
            return self.err(ParseError, f"cannot represent segment: {exc}", offset, ordinal, tag)

        # --- the ISA itself -----------------------------------------------------------
        interchange = etree.Element("Interchange", standard="X12")
        isa_el = etree.SubElement(interchange, "ISA")
        try:
            for i, v in enumerate(isa, start=1):
                if i in (11, 16) and len(v) == 1 and ord(v) < 0x20:
                    # XML 1.0 cannot carry C0 controls, which are legitimate delimiters
                    # (\x1c-\x1f); write their Unicode control picture (U+241D for \x1d).
                    v = chr(0x2400 + ord(v))
                etree.SubElement(isa_el, f"ISA{i:02d}").text = v
        except ValueError as exc:
            raise self.err(
                ParseError, f"ISA contains a character not allowed in XML text: {exc}", h.offset, 1, "ISA"
            ) from None

        ordinal = 1  # segments in this interchange, ISA included
        groups = 0
        ta1_count = 0
        group_template: etree._Element | None = None
        gs: list[str] = []
        sets_in_group = 0
        # current set
        trans: etree._Element | None = None
        unit_root: etree._Element | None = None
        st: list[str] = []
        st_ordinal = 0
        loops: _LoopBuilder | None = None
        # current set written as text (the usual way; ``trans`` is then None): the
        # end tags to write, loop state, and the segments so far for a fallback
        out: list[str] | None = None
        spec: _Compiled | None = None
        state: _State | None = None
        sloops: _StrLoops | None = None
        seglog: list[tuple[str, list[str], int, int]] = []
        envelope: tuple[str, str] | None = None  # the group template around <Transaction/>
        pos = h.end
        find = text.find

        def to_etree() -> tuple[etree._Element, etree._Element, _LoopBuilder | None]:
            """Rebuild the current set with lxml calls (a set text cannot express)."""
            assert group_template is not None
            root = copy.deepcopy(group_template)
            el = etree.SubElement(root[-1], "Transaction")
            build(el, "ST", st)
            lb = _LoopBuilder(spec, st[1], el) if spec is not None else None
            for t, e, off, o in seglog:
                try:
                    if lb is None:
                        build(el, t, e)
                    else:
                        parent = lb.parent_for(t, e)
                        if isinstance(parent, str):  # pragma: no cover - the text pass checked it
                            raise self.err(ParseError, parent, off, o, t)
                        build(parent, t, e)
                except ValueError as exc:  # pragma: no cover - the text pass checked it
                    raise bad_segment(exc, t, e, off, o) from None
            return el, root, lb

        while True:
            if pos >= n:
                end = -1
                raw = ""
            else:
                end = find(term, pos)
                raw = text[pos:] if end < 0 else text[pos:end]
            seg_start = pos
            pos = n if end < 0 else end + 1
            if unwrap:
                if "\n" in raw or "\r" in raw:
                    raw = raw.replace("\r", "").replace("\n", "")
            elif strip_cr and raw.endswith("\r"):
                raw = raw[:-1]
            if raw and raw[0] in _WS:
                raw = raw.lstrip(_WS)
            if not raw:
                if end < 0:
                    if trans is not None or out is not None:
                        raise self.err(
                            EnvelopeError,
                            f"transaction set {st[2] if len(st) > 2 else ''} not terminated: "
                            "expected SE, found end of data",
                            n,
                            ordinal,
                            None,
                        )
                    missing = "GE" if group_template is not None else "IEA"
                    raise self.err(
                        EnvelopeError,
                        f"{'group' if missing == 'GE' else 'interchange'} not terminated: "
                        f"expected {missing}, found end of data",
                        n,
                        ordinal,
                        None,
                    )
                continue
            ordinal += 1
            els = raw.split(sep)
            tag = els[0]

            if out is not None and tag not in _ENVELOPE:
                # body segment of a transaction set: the hot path
                try:
                    if state is not None:
                        moved = state.step.get(tag) or state.move(tag)
                        if moved[0]:
                            out.append(moved[0])
                        state = moved[1]
                    elif sloops is not None:
                        problem = sloops.place(tag, els, out)
                        if problem is not None:
                            raise self.err(ParseError, problem, seg_start, ordinal, tag)
                    write(out, tag, els, raw)
                    seglog.append((tag, els, seg_start, ordinal))
                    continue
                except _Fallback:
                    trans, unit_root, loops = to_etree()
                    out = None
                except ParseError:
                    raise
                except ValueError as exc:
                    raise bad_segment(exc, tag, els, seg_start, ordinal) from None

            if trans is not None and tag not in _ENVELOPE:
                # body segment of a set that had to be built with lxml calls
                try:
                    if loops is None:
                        build(trans, tag, els)
                    else:
                        parent = loops.parent_for(tag, els)
                        if isinstance(parent, str):
                            raise self.err(ParseError, parent, seg_start, ordinal, tag)
                        build(parent, tag, els)
                except ParseError:
                    raise
                except ValueError as exc:
                    raise bad_segment(exc, tag, els, seg_start, ordinal) from None
                continue

            try:
                if tag == "SE":
                    if out is not None:
                        if state is not None:
                            out.append(state.close_all)
                        elif sloops is not None:
                            sloops.close_all(out)
                        write(out, tag, els, raw)
                    elif trans is None or unit_root is None:
                        raise self.err(
                            ParseError,
                            "SE outside a transaction set (no ST before it)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    else:
                        build(trans, tag, els)
                    expected = ordinal - st_ordinal + 1
                    self._check_count(
                        els, 1, expected, "number of included segments ST..SE", seg_start, ordinal, tag
                    )
                    self._check_same(els, 2, st[2], "ST02", seg_start, ordinal, tag)
                    if out is not None:
                        assert envelope is not None
                        out += ("</Transaction>", envelope[1])
                        try:
                            unit_root = etree.fromstring("".join(out), self.xml_parser)
                        except etree.XMLSyntaxError:
                            # beyond libxml2's limits without huge_tree (nesting deeper
                            # than 256, text over 10 MB): the same tree, built by calls
                            trans, unit_root, loops = to_etree()
                            build(trans, tag, els)
                        out = None
                        seglog = []
                    assert unit_root is not None
                    self.units += 1
                    sets_in_group += 1
                    yield DocumentUnit(
                        standard="X12",
                        doc_type=st[1],
                        tree=unit_root,
                        version=gs[8] if len(gs) > 8 else "",
                        control_number=st[2],
                        interchange_control_number=isa13,
                        group_control_number=gs[6] if len(gs) > 6 else "",
                        sender=sender,
                        receiver=receiver,
                        index=self.units,
                    )
                    trans = unit_root = loops = None
                    state = sloops = None
                elif trans is not None or out is not None:
                    raise self.err(
                        EnvelopeError,
                        f"transaction set {st[2]} not terminated: expected SE, found {tag}",
                        seg_start,
                        ordinal,
                        tag,
                    )
                elif tag == "ST":
                    if group_template is None:
                        raise self.err(
                            ParseError,
                            "ST outside a functional group (expected GS first)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    if len(els) < 3 or not els[1] or not els[2]:
                        raise self.err(
                            ParseError,
                            "ST must have ST01 (set id) and ST02 (control number)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    st = els
                    st_ordinal = ordinal
                    if envelope is None:
                        marker = etree.SubElement(group_template[-1], "Transaction")
                        xml = etree.tostring(group_template, encoding="unicode")
                        group_template[-1].remove(marker)
                        cut = xml.rindex("<Transaction/>")
                        envelope = (xml[:cut], xml[cut + len("<Transaction/>") :])
                    out = [envelope[0], "<Transaction>"]
                    seglog = []
                    write(out, tag, els, raw)
                    spec = _COMPILED.get(els[1])
                    state = sloops = None
                    if spec is not None:
                        if spec.strict or spec.hierarchical:
                            sloops = _StrLoops(spec, els[1], ill)
                        else:
                            state = spec.start
                elif tag == "GS":
                    if group_template is not None:
                        raise self.err(
                            EnvelopeError,
                            f"group {gs[6] if len(gs) > 6 else ''} not terminated: expected GE, found GS",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    if len(els) < 9 or not els[6] or not els[8]:
                        raise self.err(
                            ParseError,
                            "GS must have 8 elements with GS06 (control number) and GS08 (version)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    gs = els
                    sets_in_group = 0
                    envelope = None
                    group_template = copy.deepcopy(interchange)
                    build(etree.SubElement(group_template, "Group"), tag, els)
                elif tag == "GE":
                    if group_template is None:
                        raise self.err(
                            ParseError,
                            "GE outside a functional group (no GS before it)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    self._check_count(
                        els,
                        1,
                        sets_in_group,
                        "number of transaction sets in the group",
                        seg_start,
                        ordinal,
                        tag,
                    )
                    self._check_same(els, 2, gs[6], "GS06", seg_start, ordinal, tag)
                    groups += 1
                    group_template = None
                elif tag == "IEA":
                    if group_template is not None:
                        raise self.err(
                            EnvelopeError,
                            f"group {gs[6]} not terminated: expected GE, found IEA",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    if groups == 0 and ta1_count and len(els) > 1 and els[1] == str(ta1_count):
                        pass  # TA1-only interchange counting its TA1 segments: common, accepted
                    else:
                        self._check_count(
                            els, 1, groups, "number of functional groups", seg_start, ordinal, tag
                        )
                    self._check_same(els, 2, isa13, "ISA13", seg_start, ordinal, tag)
                    return pos
                elif tag == "TA1":
                    if group_template is not None:
                        raise self.err(
                            ParseError,
                            "TA1 inside a functional group (expected before GS or after GE)",
                            seg_start,
                            ordinal,
                            tag,
                        )
                    ta1_count += 1
                    root = copy.deepcopy(interchange)
                    build(root, tag, els)
                    self.units += 1
                    yield DocumentUnit(
                        standard="X12",
                        doc_type="TA1",
                        tree=root,
                        version=isa[11],
                        control_number=els[1] if len(els) > 1 else "",
                        interchange_control_number=isa13,
                        sender=sender,
                        receiver=receiver,
                        index=self.units,
                    )
                elif tag in ("ISB", "ISE"):
                    if group_template is not None:
                        envelope = None
                        build(group_template, tag, els)
                    else:
                        build(interchange, tag, els)
                elif tag == "ISA":
                    raise self.err(
                        EnvelopeError,
                        f"interchange {isa13} not terminated: expected IEA, found ISA",
                        seg_start,
                        ordinal,
                        tag,
                    )
                else:
                    where = (
                        "functional group (expected ST or GE)"
                        if group_template is not None
                        else "interchange (expected GS, TA1 or IEA)"
                    )
                    raise self.err(
                        ParseError,
                        f"segment {_show(tag)} outside a transaction set, in the {where}",
                        seg_start,
                        ordinal,
                        tag or None,
                    )
            except ParseError:
                raise
            except ValueError as exc:
                raise bad_segment(exc, tag, els, seg_start, ordinal) from None

    def _check_count(
        self, els: list[str], index: int, expected: int, what: str, offset: int, ordinal: int, tag: str
    ) -> None:
        found = els[index] if len(els) > index else ""
        if not found.isdigit():
            raise self.err(
                EnvelopeError,
                f"{tag}{index:02d} ({what}) must be a number, found {_show(found)}; expected {expected}",
                offset,
                ordinal,
                tag,
                index,
            )
        if int(found) != expected:
            raise self.err(
                EnvelopeError,
                f"{tag}{index:02d} ({what}) is {int(found)}, expected {expected}",
                offset,
                ordinal,
                tag,
                index,
            )

    def _check_same(
        self, els: list[str], index: int, expected: str, source: str, offset: int, ordinal: int, tag: str
    ) -> None:
        found = els[index] if len(els) > index else ""
        # Trailers that drop the zero padding of a numeric control number are common
        # (and accepted by the major translators): compare numbers as numbers.
        same = found == expected or (
            found.isdigit() and expected.isdigit() and len(found) < 20 and int(found) == int(expected)
        )
        if not same:
            raise self.err(
                EnvelopeError,
                f"{tag}{index:02d} control number {found!r} does not match {source}: expected {expected!r}",
                offset,
                ordinal,
                tag,
                index,
            )


class X12Parser:
    """ASC X12 interchanges to canonical XML; one unit per transaction set (and per TA1)."""

    standard = "X12"

    def sniff(self, data: bytes) -> bool:
        head = data[:200].lstrip(b" \t\r\n")
        if head.startswith(b"\xef\xbb\xbf"):
            head = head[3:].lstrip(b" \t\r\n")
        return len(head) > 3 and head.startswith(b"ISA") and not chr(head[3]).isalnum() and head[3] > 0x20

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        """Yield each transaction set as its SE is reached (see ``Parser.parse``).

        Raises :class:`ParseError` (or :class:`EnvelopeError` for envelope checks).
        """
        if not data:
            raise ParseError("empty input: no X12 interchange", Position(offset=0, line=1))
        yield from _Run(decode(data)).run()
