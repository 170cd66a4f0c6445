"""Value conversions used by mapping rules: dates, decimals, code lists, XPath helpers.

Everything here is pure and thread-safe except :class:`XPathExpr`, which keeps one
compiled XPath per thread because lxml XPath objects must not be shared.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from lxml import etree

#: what flows through a rule's transform chain
Value = str | Decimal | date | datetime


class TransformFailed(ValueError):
    """A value could not be converted; ``reason`` is shown to the administrator."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- XPath ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One value an XPath produced, and the node it came from (for relative look-ups)."""

    text: str
    node: etree._Element | None


def _number_text(value: float) -> str:
    # XPath numbers are doubles; an integral count should read "3", not "3.0"
    if value == int(value):
        return str(int(value))
    return repr(value)


#: ``//Name/rest``: a path that starts at every ``Name`` element of the document
_ANCHORED = re.compile(r"//([A-Za-z_][A-Za-z0-9_.\-]*)(/.*)\Z", re.DOTALL)


class XPathExpr:
    """An XPath 1.0 expression, compiled lazily once per thread."""

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self._local = threading.local()
        # compile now so syntax errors surface at load time
        self._compiled()
        #: for ``//Name/rest``: Name and ``./rest``, which gives the same result when
        #: evaluated at the document's only ``Name`` element (a descendant search of
        #: the whole document for every rule costs more than the rest of the path)
        self.anchor: tuple[str, str] | None = None
        m = _ANCHORED.match(expr)
        if m is not None:
            try:
                etree.XPath("." + m.group(2))
            except etree.XPathError:
                pass
            else:
                self.anchor = (m.group(1), "." + m.group(2))

    def anchored(self) -> etree.XPath | None:
        """The calling thread's compiled ``./rest`` of an anchored expression."""
        if self.anchor is None:
            return None
        xp: etree.XPath | None = getattr(self._local, "rest", None)
        if xp is None:
            xp = etree.XPath(self.anchor[1], smart_strings=True)
            self._local.rest = xp
        return xp

    def _compiled(self) -> etree.XPath:
        xp: etree.XPath | None = getattr(self._local, "xp", None)
        if xp is None:
            # smart strings: a text()/attribute result knows its parent element, the
            # node that relative look-ups (format-xpath ...) start from
            xp = etree.XPath(self.expr, smart_strings=True)
            self._local.xp = xp
        return xp

    def compiled(self) -> etree.XPath:
        """The compiled XPath of the calling thread. Callers that evaluate often keep
        it (per thread) instead of looking it up on every call."""
        return self._compiled()

    def check(self) -> None:
        """Evaluate once against an empty document: catches unknown functions and
        variables, which libxml2 only reports at evaluation time."""
        self._compiled()(etree.Element("probe"))

    def evaluate(self, context: etree._Element) -> Any:
        return self._compiled()(context)

    def candidates(self, context: etree._Element) -> list[Candidate]:
        return result_candidates(self.evaluate(context))

    def first_text(self, context: etree._Element) -> str | None:
        found = first_value(self.evaluate(context))
        return None if found is None else found[0]


def result_candidates(result: Any) -> list[Candidate]:
    """Every value of an XPath result, in document order (empty ones included)."""
    if isinstance(result, bool):
        return [Candidate("true" if result else "false", None)]
    if isinstance(result, float):
        return [Candidate(_number_text(result), None)]
    if isinstance(result, str):
        return [Candidate(str(result), _parent_of(result))]
    out: list[Candidate] = []
    for item in result:
        if isinstance(item, etree._Element):
            tag: object = item.tag
            if not isinstance(tag, str):
                continue  # comments and processing instructions carry no data
            out.append(Candidate("".join(str(t) for t in item.itertext()), item))
        elif isinstance(item, str):
            out.append(Candidate(str(item), _parent_of(item)))
        elif isinstance(item, tuple):  # namespace nodes
            continue
    return out


def _element_text(el: etree._Element) -> str:
    # the string-value of an element; a leaf (the usual case) is just its text
    if len(el):
        return "".join(cast(Iterator[str], el.itertext()))
    text = el.text
    return "" if text is None else text


def first_value(result: Any) -> tuple[str, etree._Element | None] | None:
    """The first non-empty value of an XPath result and the node it came from: what
    ``result_candidates`` would give first after dropping blank values, without
    building the others."""
    if isinstance(result, list):
        for item in result:
            if isinstance(item, etree._Element):
                tag: object = item.tag
                if not isinstance(tag, str):
                    continue  # comments and processing instructions carry no data
                text = _element_text(item)
                if text.strip():
                    return text, item
            elif isinstance(item, str) and item.strip():
                return str(item), _parent_of(item)
        return None
    if isinstance(result, bool):
        return ("true" if result else "false"), None
    if isinstance(result, float):
        return _number_text(result), None
    if isinstance(result, str):
        return (str(result), _parent_of(result)) if result.strip() else None
    return None


def all_values(result: Any, out: list[str]) -> None:
    """Append every non-empty value of an XPath result to ``out`` (for ``join``)."""
    if isinstance(result, list):
        for item in result:
            if isinstance(item, etree._Element):
                tag: object = item.tag
                if isinstance(tag, str):
                    text = _element_text(item)
                    if text.strip():
                        out.append(text)
            elif isinstance(item, str) and item.strip():
                out.append(str(item))
        return
    found = first_value(result)
    if found is not None:
        out.append(found[0])


def result_nodes(result: Any) -> list[etree._Element]:
    """The nodes of an XPath result as a ``select`` uses them: elements themselves,
    text and attribute values their parent element; numbers and booleans none."""
    if isinstance(result, list):
        out: list[etree._Element] = []
        for item in result:
            if isinstance(item, etree._Element):
                tag: object = item.tag
                if isinstance(tag, str):
                    out.append(item)
            elif isinstance(item, str):
                parent = _parent_of(item)
                if parent is not None:
                    out.append(parent)
        return out
    if isinstance(result, str):
        parent = _parent_of(result)
        return [] if parent is None else [parent]
    return []


def _parent_of(result: Any) -> etree._Element | None:
    getparent = getattr(result, "getparent", None)
    if getparent is None:
        return None
    parent = getparent()
    return parent if isinstance(parent, etree._Element) else None


# --- text -----------------------------------------------------------------------------


def as_text(value: Value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    return value.isoformat()


# --- decimals -------------------------------------------------------------------------

_DIGITS = re.compile(r"^[+-]?\d*(\.\d*)?$")
#: the common case, ``12`` or ``12.50``: nothing to strip, replace or reject
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_decimal(
    text: str, *, mark: str = "auto", thousands: str | None = None, implied_decimals: int = 0
) -> Decimal:
    """Parse a number exactly.

    ``mark="auto"`` accepts either ``.`` or ``,`` as the decimal mark (EDIFACT lets
    the sender choose) but then no thousands separators. ``implied_decimals`` is for
    X12 ``N2``-style values that carry no mark at all (``12345`` -> ``123.45``).
    """
    if not thousands and mark != "," and _PLAIN_NUMBER.fullmatch(text):
        value = Decimal(text)
        if implied_decimals and "." not in text:
            value = value.scaleb(-implied_decimals)
        return value
    s = text.strip().replace(" ", "")
    if not s:
        raise TransformFailed("empty value is not a number")
    if thousands:
        s = s.replace(thousands, "")
    if mark == "auto":
        if "." in s and "," in s:
            raise TransformFailed("both '.' and ',' in a number (set mark and thousands)")
        s = s.replace(",", ".")
    elif mark == ",":
        if "." in s:
            raise TransformFailed("'.' in a number whose decimal mark is ','")
        s = s.replace(",", ".")
    elif "," in s:
        raise TransformFailed("',' in a number whose decimal mark is '.'")
    # X12 and EDIFACT allow a trailing minus in some implementations; normalise it
    if s.endswith("-") and not s.startswith(("-", "+")):
        s = "-" + s[:-1]
    if s.count(".") > 1 or not _DIGITS.match(s) or not any(ch.isdigit() for ch in s):
        raise TransformFailed("not a number")
    try:
        value = Decimal(s)
    except InvalidOperation:
        raise TransformFailed("not a number") from None
    if implied_decimals and "." not in s:
        value = value.scaleb(-implied_decimals)
    return value


def parse_integer(text: str) -> Decimal:
    s = text.strip()
    if not re.fullmatch(r"[+-]?\d+", s):
        raise TransformFailed("not an integer")
    return Decimal(int(s))


# --- dates ----------------------------------------------------------------------------

#: EDIFACT 2379 date/time format codes -> our pattern syntax
EDIFACT_FORMATS: Mapping[str, str] = {
    "101": "YYMMDD",
    "102": "CCYYMMDD",
    "201": "YYMMDDHHMM",
    "202": "YYMMDDHHMMSS",
    "203": "CCYYMMDDHHMM",
    "204": "CCYYMMDDHHMMSS",
    "401": "HHMM",
    "402": "HHMMSS",
}

_TOKENS = ("CCYY", "YYYY", "YY", "MM", "DD", "HH", "SS", "D")


@dataclass(frozen=True)
class DateFormat:
    """One accepted input format: a pattern (``CCYYMMDD``), an EDIFACT code, a
    ``strftime`` format (contains ``%``) or ``ISO``."""

    source: str
    regex: re.Pattern[str] | None
    strptime: str | None
    iso: bool
    has_date: bool
    has_time: bool

    def parse(self, text: str) -> date | datetime | None:
        """The parsed value, or None when ``text`` does not have this format."""
        if self.iso:
            return _parse_iso(text)
        if self.strptime is not None:
            try:
                dt = datetime.strptime(text, self.strptime)
            except ValueError:
                return None
            has_time = any(d in self.strptime for d in ("%H", "%M", "%S", "%I", "%z"))
            if not has_time:
                return dt.date()
            return dt if dt.tzinfo else dt.replace(tzinfo=UTC)
        assert self.regex is not None
        m = self.regex.fullmatch(text)
        if m is None:
            return None
        g = m.groupdict()
        try:
            if "Y" in g:
                year = int(g["Y"])
            elif "y" in g:
                yy = int(g["y"])
                # the POSIX/Python %y pivot: 69-99 -> 19xx, 00-68 -> 20xx
                year = 1900 + yy if yy >= 69 else 2000 + yy
            else:
                year = 1970
            month = int(g.get("m", 1))
            day = int(g.get("d", 1))
            hour = int(g.get("H", 0))
            minute = int(g.get("M", 0))
            second = int(g.get("S", 0))
            frac = g.get("f")
            micro = int((frac + "000000")[:6]) if frac else 0
            if hour == 24 and minute == 0 and second == 0:
                hour = 0  # X12 allows 2400 as end of day; keep it on the same date
            if not self.has_time:
                return date(year, month, day)
            return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
        except ValueError:
            return None


def _parse_iso(text: str) -> date | datetime | None:
    s = text.strip()
    try:
        if len(s) == 10:
            return date.fromisoformat(s)
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def compile_date_format(fmt: str) -> DateFormat:
    """Compile one format; raises :class:`TransformFailed` for a format we cannot read."""
    fmt = fmt.strip()
    if not fmt:
        raise TransformFailed("empty date format")
    if fmt.upper() == "ISO":
        return DateFormat(fmt, None, None, True, True, True)
    if "%" in fmt:
        try:
            datetime.now().strftime(fmt)
        except ValueError as exc:
            raise TransformFailed(f"bad strftime format {fmt!r}: {exc}") from None
        return DateFormat(fmt, None, fmt, False, True, True)
    pattern = EDIFACT_FORMATS.get(fmt, fmt)
    if fmt.isdigit() and fmt not in EDIFACT_FORMATS:
        raise TransformFailed(f"EDIFACT date format code {fmt} is not supported")
    regex = ""
    i = 0
    seen_hour = seen_second = False
    has_date = has_time = False
    groups: set[str] = set()
    while i < len(pattern):
        for tok in _TOKENS:
            if pattern.startswith(tok, i):
                break
        else:
            tok = ""
        if tok in ("CCYY", "YYYY"):
            name, width = "Y", 4
        elif tok == "YY":
            name, width = "y", 2
        elif tok == "MM":
            name, width = ("M", 2) if seen_hour else ("m", 2)
        elif tok == "DD":
            name, width = ("f", 2) if seen_second else ("d", 2)
        elif tok == "D" and seen_second:
            name, width = "f", 1
        elif tok == "HH":
            name, width = "H", 2
            seen_hour = True
        elif tok == "SS":
            name, width = "S", 2
            seen_second = True
        else:
            regex += re.escape(pattern[i])
            i += 1
            continue
        if name in groups:
            raise TransformFailed(f"date format {fmt!r} repeats {tok}")
        groups.add(name)
        if name in "Yymd":
            has_date = True
        else:
            has_time = True
        regex += f"(?P<{name}>\\d{{{width}}})"
        i += len(tok)
    if not groups:
        raise TransformFailed(f"date format {fmt!r} has no date or time fields")
    return DateFormat(fmt, re.compile(regex), None, False, has_date, has_time)


@functools.lru_cache(maxsize=256)
def cached_date_format(fmt: str) -> DateFormat:
    """:func:`compile_date_format` for formats read from documents (EDIFACT
    ``DTM01-3``), compiled once. Failures are not cached; they raise every time."""
    return compile_date_format(fmt)


def compile_date_formats(spec: str | None) -> tuple[DateFormat, ...]:
    """``"CCYYMMDD|YYMMDD"`` -> formats tried in order."""
    if not spec:
        return ()
    return tuple(compile_date_format(part) for part in spec.split("|"))


def parse_date(text: str, formats: Sequence[DateFormat]) -> date | datetime:
    s = text.strip()
    for f in formats:
        value = f.parse(s)
        if value is not None:
            return value
    names = " or ".join(f.source for f in formats) or "(no format)"
    raise TransformFailed(f"not a date in format {names}")


def to_datetime(value: Value) -> datetime:
    """A date/time value as an aware datetime. A date alone is midnight UTC, and a
    date/time without a zone is taken as UTC (documented for administrators)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        parsed = _parse_iso(value)
        if parsed is None:
            raise TransformFailed("not an ISO 8601 date/time (add a <date format=...> transform)")
        return to_datetime(parsed)
    raise TransformFailed("a number is not a date")


def combine_date_time(day: Value, time_text: str, formats: Sequence[DateFormat]) -> datetime:
    d = day if isinstance(day, date) else None
    if d is None:
        raise TransformFailed("datetime needs a date (put a <date> transform before it)")
    t = parse_date(time_text, formats)
    if not isinstance(t, datetime):
        raise TransformFailed("time format has no time fields")
    base = d.date() if isinstance(d, datetime) else d
    return datetime(base.year, base.month, base.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)


# --- code lists -----------------------------------------------------------------------


@dataclass(frozen=True)
class CodeList:
    name: str
    codes: Mapping[str, str]
    default: str | None = None
    #: where it was defined, for messages
    source: str = ""

    def lookup(self, code: str, default: str | None = None) -> str:
        """The mapped value; unknown codes give the lookup's default, else the list's
        default, else the code itself (so no information is lost)."""
        if code in self.codes:
            return self.codes[code]
        if default is not None:
            return default
        if self.default is not None:
            return self.default
        return code
