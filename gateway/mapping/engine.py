"""Compiling mapping files and applying them to document units.

A mapping file (``docs/mapping-files.md``) is validated against
``schemas/mapping.xsd``, then compiled: every XPath, date format, regular
expression, code list reference and XSLT stylesheet is checked once, so that
applying a mapping can only fail on the *document* (reported as
:class:`~gateway.errors.MappingError`), never on the mapping itself.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from lxml import etree

from gateway import xmlsafe
from gateway.errors import MappingError, Problem, RecordInvalid
from gateway.mapping import transforms as tf
from gateway.mapping.transforms import Candidate, CodeList, TransformFailed, Value, XPathExpr
from gateway.parsers.base import DocumentUnit
from gateway.record import (
    Attachment,
    Direction,
    DocumentInfo,
    InteractionRecord,
    Kind,
    Line,
    MappingRef,
    PartnerRef,
    Party,
    Status,
)

MNS = "urn:b2b-gateway:mapping:1"
_M = "{" + MNS + "}"
XSL_NS = "http://www.w3.org/1999/XSL/Transform"
SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "schemas" / "mapping.xsd"

#: prefix of Problem.reason for findings that do not stop a mapping from loading
WARNING = "warning: "


_ELEMENT = etree._Element


def _line(el: etree._Element) -> int | None:
    # lxml-stubs types sourceline oddly; it is an int, or None for built trees
    line: object = getattr(el, "sourceline", None)
    return line if isinstance(line, int) else None


def _errors(log: object) -> list[Any]:
    return list(cast(Iterable[Any], log))


def _is_data_element(el: etree._Element) -> bool:
    tag: object = el.tag
    return isinstance(tag, str)


def is_warning(problem: Problem) -> bool:
    return problem.reason.startswith(WARNING)


# --- result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MappingResult:
    """What a mapping contributes to an interaction record."""

    kind: Kind
    occurred_at: datetime | None
    document: DocumentInfo
    subject: str | None
    references: Mapping[str, str]
    currency: str | None
    total_amount: Decimal | None
    lines: tuple[Line, ...]
    parties: tuple[Party, ...]
    body: str | None
    mapping: MappingRef

    def __post_init__(self) -> None:
        object.__setattr__(self, "references", MappingProxyType(dict(self.references)))

    def to_record(
        self,
        *,
        id: str,
        channel: str,
        received_at: datetime,
        raw_sha256: str,
        direction: Direction = Direction.INBOUND,
        status: Status = Status.RECEIVED,
        partner: PartnerRef | None = None,
        sender: Mapping[str, str] | None = None,
        references: Mapping[str, str] | None = None,
        attachments: tuple[Attachment, ...] = (),
    ) -> InteractionRecord:
        """The interaction record this mapping result makes, with the facts that do not
        come from the document (``references`` replaces the mapped ones when given)."""
        return InteractionRecord(
            id=id,
            channel=channel,
            direction=direction,
            kind=self.kind,
            received_at=received_at,
            raw_sha256=raw_sha256,
            status=status,
            partner=partner,
            sender=sender or {},
            occurred_at=self.occurred_at,
            document=self.document,
            subject=self.subject,
            references=self.references if references is None else references,
            currency=self.currency,
            total_amount=self.total_amount,
            lines=self.lines,
            parties=self.parties,
            attachments=attachments,
            mapping=self.mapping,
            body=self.body,
        )


# --- schema ---------------------------------------------------------------------------

_schema_lock = threading.Lock()
_schema: etree.XMLSchema | None = None


def _validate(doc: etree._ElementTree, file: str) -> list[Problem]:
    global _schema
    with _schema_lock:
        if _schema is None:
            sdoc = xmlsafe.parse_bytes(SCHEMA_PATH.read_bytes(), base_url=str(SCHEMA_PATH))
            _schema = etree.XMLSchema(sdoc)
        if _schema.validate(doc):
            return []
        entries = _errors(_schema.error_log)
    return [Problem(file, e.line or None, _clean_xsd_message(e.message)) for e in entries]


_NS_IN_MSG = re.compile(r"\{" + re.escape(MNS) + r"\}")


def _clean_xsd_message(msg: str) -> str:
    return _NS_IN_MSG.sub("", msg).replace("{http://www.w3.org/1999/XSL/Transform}", "xsl:")


# --- rules ----------------------------------------------------------------------------

FieldType = Literal["str", "decimal", "datetime", "kind"]

_HEADER_TYPES: Mapping[str, FieldType] = {
    "kind": "kind",
    "occurred_at": "datetime",
    "total_amount": "decimal",
}
_LINE_TYPES: Mapping[str, FieldType] = {"quantity": "decimal", "unit_price": "decimal"}


class _Ctx:
    """Where a rule is evaluated, for error messages."""

    __slots__ = ("file", "node")

    def __init__(self, file: str, node: etree._Element) -> None:
        self.file = file
        self.node = node


#: a transform bound to the calling thread: (value, node it came from, rule context)
_Apply = Callable[[Value, etree._Element | None, etree._Element], Value | None]
#: a rule bound to the calling thread: context -> value; raises :class:`_RuleFailed`
_Eval = Callable[[etree._Element], Value | None]


class _Anchors:
    """The one element of each name that anchored XPaths (``//Message/...``) start
    from, for the document being mapped (None: not exactly one, use the full XPath)."""

    __slots__ = ("ctx", "found", "root")

    def __init__(self) -> None:
        self.ctx: etree._Element | None = None
        self.root: etree._Element | None = None
        self.found: dict[str, etree._Element | None] = {}

    def clear(self) -> None:
        self.ctx = self.root = None
        self.found = {}

    def get(self, ctx: etree._Element, name: str) -> etree._Element | None:
        if ctx is not self.ctx:
            root = ctx.getroottree().getroot()
            if root is not self.root:
                self.root = root
                self.found = {}
            self.ctx = ctx
        found = self.found
        if name in found:
            return found[name]
        assert self.root is not None
        it = self.root.iter(name)
        first = next(it, None)
        if first is not None and next(it, None) is not None:
            first = None
        found[name] = first
        return first


_XPathFn = Callable[[etree._Element], Any]


def _xpath_fn(expr: XPathExpr, anchors: _Anchors | None) -> _XPathFn:
    """``expr`` as a function of the calling thread; an anchored one evaluates its
    rest at the anchor element when the document has exactly one."""
    full = expr.compiled()
    rest = expr.anchored() if anchors is not None else None
    if rest is None or anchors is None or expr.anchor is None:
        return full
    name = expr.anchor[0]
    get = anchors.get

    def anchored(ctx: etree._Element) -> Any:
        el = get(ctx, name)
        return full(ctx) if el is None else rest(el)

    return anchored


class _Transform:
    line: int | None = None

    def bind(self) -> _Apply:
        """This transform as a function for the calling thread (XPaths compiled)."""
        raise NotImplementedError

    def apply(self, value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
        return self.bind()(value, node, ctx)


def _start(xp: etree.XPath, node: etree._Element | None, ctx: etree._Element) -> str | None:
    """The first non-empty value of a relative XPath (format-xpath, by-xpath ...),
    evaluated at the node the value came from, else at the rule's context."""
    found = tf.first_value(xp(node if node is not None else ctx))
    return None if found is None else found[0]


class _TextTransform(_Transform):
    def __init__(self, op: str) -> None:
        self.op = op

    def bind(self) -> _Apply:
        as_text = tf.as_text
        if self.op == "trim":

            def trim(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
                return (value if isinstance(value, str) else as_text(value)).strip()

            return trim
        if self.op == "upper":

            def upper(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
                return (value if isinstance(value, str) else as_text(value)).upper()

            return upper
        if self.op == "lower":

            def lower(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
                return (value if isinstance(value, str) else as_text(value)).lower()

            return lower

        def normalize_space(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            return " ".join((value if isinstance(value, str) else as_text(value)).split())

        return normalize_space


class _Replace(_Transform):
    def __init__(self, pattern: re.Pattern[str], repl: str) -> None:
        self.pattern = pattern
        self.repl = repl

    def bind(self) -> _Apply:
        sub, repl, as_text = self.pattern.sub, self.repl, tf.as_text

        def replace(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            return sub(repl, as_text(value))

        return replace


class _DecimalT(_Transform):
    def __init__(self, mark: str, thousands: str | None, implied: int) -> None:
        self.mark = mark
        self.thousands = thousands
        self.implied = implied

    def bind(self) -> _Apply:
        mark, thousands, implied = self.mark, self.thousands, self.implied
        parse, as_text = tf.parse_decimal, tf.as_text

        def decimal(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            if isinstance(value, Decimal):
                return value
            return parse(as_text(value), mark=mark, thousands=thousands, implied_decimals=implied)

        return decimal


class _IntegerT(_Transform):
    def bind(self) -> _Apply:
        return self._integer

    @staticmethod
    def _integer(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise TransformFailed("not an integer")
            return Decimal(int(value))
        return tf.parse_integer(tf.as_text(value))


class _Divide(_Transform):
    def __init__(self, by: Decimal | None, by_xpath: XPathExpr | None) -> None:
        self.by = by
        self.by_xpath = by_xpath

    def bind(self) -> _Apply:
        by = self.by
        xp = None if self.by_xpath is None else self.by_xpath.compiled()
        parse, as_text = tf.parse_decimal, tf.as_text

        def divide(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            divisor = by
            if xp is not None:
                text = _start(xp, node, ctx)
                if text is None:
                    return value  # no basis given: the value already is per unit
                divisor = parse(text)
            if divisor is None:
                return value
            if divisor == 0:
                raise TransformFailed("division by zero")
            number = value if isinstance(value, Decimal) else parse(as_text(value))
            return (number / divisor).normalize() if number else number

        return divide


class _DateT(_Transform):
    def __init__(self, formats: tuple[tf.DateFormat, ...], format_xpath: XPathExpr | None) -> None:
        self.formats = formats
        self.format_xpath = format_xpath

    def bind(self) -> _Apply:
        declared = self.formats
        xp = None if self.format_xpath is None else self.format_xpath.compiled()
        parse_date, as_text, cached = tf.parse_date, tf.as_text, tf.cached_date_format
        fallback = declared or (tf.compile_date_format("ISO"),)

        def date_(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            if isinstance(value, date):
                return value
            formats = fallback
            if xp is not None:
                code = _start(xp, node, ctx)
                if code is not None:
                    try:
                        formats = (cached(code.strip()), *declared)
                    except TransformFailed:
                        if not declared:
                            raise
                        # fall back to the declared formats
            return parse_date(as_text(value), formats)

        return date_


class _DateTimeT(_Transform):
    def __init__(
        self,
        time_xpath: XPathExpr,
        formats: tuple[tf.DateFormat, ...],
        time_formats: tuple[tf.DateFormat, ...],
    ) -> None:
        self.time_xpath = time_xpath
        self.formats = formats
        self.time_formats = time_formats

    def bind(self) -> _Apply:
        xp = self.time_xpath.compiled()
        formats = self.formats or (tf.compile_date_format("ISO"),)
        time_formats = self.time_formats

        def datetime_(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            day: Value = value
            if isinstance(value, str):
                day = tf.parse_date(value, formats)
            time_text = _start(xp, node, ctx)
            if time_text is None:
                return tf.to_datetime(day)
            return tf.combine_date_time(day, time_text.strip(), time_formats)

        return datetime_


class _Lookup(_Transform):
    def __init__(self, codelist: CodeList, default: str | None) -> None:
        self.codelist = codelist
        self.default = default

    def bind(self) -> _Apply:
        lookup, default, as_text = self.codelist.lookup, self.default, tf.as_text

        def lookup_(value: Value, node: etree._Element | None, ctx: etree._Element) -> Value | None:
            return lookup(value if isinstance(value, str) else as_text(value), default)

        return lookup_


@dataclass(frozen=True)
class _Source:
    xpath: XPathExpr | None
    constant: str | None

    def candidates(self, ctx: etree._Element) -> list[Candidate]:
        if self.xpath is not None:
            return self.xpath.candidates(ctx)
        return [Candidate(self.constant or "", None)]

    def describe(self) -> str:
        return f"xpath {self.xpath.expr!r}" if self.xpath else f"value {self.constant!r}"


class _RuleFailed(Exception):
    """A bound rule could not produce its value; the caller names the field."""

    def __init__(self, value: Value | None, reason: str, line: int | None) -> None:
        super().__init__(reason)
        self.value = value
        self.reason = reason
        self.line = line


@dataclass
class Rule:
    """One ``<field>``: where a value comes from and how it is converted."""

    name: str
    type: FieldType
    line: int | None
    sources: list[_Source] = field(default_factory=list)
    transforms: list[_Transform] = field(default_factory=list)
    combine: str = "first"
    separator: str = " "
    default: str | None = None
    required: bool = False

    def evaluate(self, ctx: etree._Element, file: str, label: str) -> Value | None:
        try:
            return self.bind()(ctx)
        except _RuleFailed as exc:
            raise self.failure(file, label, exc) from None

    def failure(self, file: str, label: str, exc: _RuleFailed) -> MappingError:
        return self._error(file, label, exc.value, exc.reason, exc.line)

    def bind(self, anchors: _Anchors | None = None) -> _Eval:
        """This rule as one function for the calling thread: XPaths compiled, the
        transform chain resolved, nothing looked up per call. ``anchors`` is shared by
        the rules of one plan and cleared for every document."""
        xpaths: list[_XPathFn | None] = []
        constants: list[str] = []
        for src in self.sources:
            xpaths.append(None if src.xpath is None else _xpath_fn(src.xpath, anchors))
            constants.append(src.constant or "")
        sources = tuple(zip(xpaths, constants, strict=True))
        chain = tuple((t.bind(), t.line) for t in self.transforms)
        join = self.combine == "join"
        separator, default, required, type_ = self.separator, self.default, self.required, self.type
        first_value, all_values = tf.first_value, tf.all_values
        convert = _CONVERTERS[type_]

        str_type = type_ == "str"

        def pick(ctx: etree._Element) -> tuple[Value | None, etree._Element | None]:
            """The chosen value and the node it came from (None: no node)."""
            if join:
                texts: list[str] = []
                for xp, constant in sources:
                    if xp is None:
                        if constant.strip():
                            texts.append(constant)
                    else:
                        all_values(xp(ctx), texts)
                return (separator.join(texts) if texts else None), None
            # "first": later sources are only read when the earlier ones gave nothing
            for xp, constant in sources:
                if xp is None:
                    if constant.strip():
                        return constant, None
                else:
                    found = first_value(xp(ctx))
                    if found is not None:
                        return found
            return None, None

        xpath_only = None if join else tuple(x for x in xpaths if x is not None)
        if xpath_only is not None and len(xpath_only) != len(xpaths):
            xpath_only = None

        def evaluate(ctx: etree._Element) -> Value | None:
            value: Value | None = None
            node: etree._Element | None = None
            if xpath_only is not None:
                # the usual rule: XPath sources, first value wins; the common result
                # (a leaf element with text) is read inline, anything else by first_value
                for xp in xpath_only:
                    result = xp(ctx)
                    if result.__class__ is list:
                        if not result:
                            continue
                        item = result[0]
                        if item.__class__ is _ELEMENT and not len(item):
                            text = item.text
                            if text is not None and text.strip():
                                value = text
                                node = item
                                break
                    found = first_value(result)
                    if found is not None:
                        value, node = found
                        break
            else:
                value, node = pick(ctx)
            raw = value
            if value is not None:
                for apply, line in chain:
                    try:
                        value = apply(value, node, ctx)
                    except TransformFailed as exc:
                        raise _RuleFailed(raw, exc.reason, line) from None
                    if value is None:
                        break
                    if isinstance(value, str) and not value.strip():
                        value = None
                        break
            if value is None:
                if default is None:
                    if required:
                        raise _RuleFailed(None, "required value is missing", None)
                    return None
                value = default
            if str_type and value.__class__ is str:
                return value
            try:
                return convert(value)
            except TransformFailed as exc:
                raise _RuleFailed(raw if raw is not None else value, exc.reason, None) from None

        return evaluate

    def _error(
        self, file: str, label: str, value: Value | None, reason: str, line: int | None
    ) -> MappingError:
        where = file + (f":{line or self.line}" if (line or self.line) else "")
        sources = ", ".join(s.describe() for s in self.sources) or "no source"
        shown = "" if value is None else f", value {tf.as_text(value)!r}"
        return MappingError(f"{where}: {label}: {reason} ({sources}{shown})")


def _convert(value: Value, type_: FieldType) -> Value:
    if type_ == "str":
        return tf.as_text(value)
    if type_ == "decimal":
        if isinstance(value, Decimal):
            return value
        if isinstance(value, str):
            try:
                return tf.parse_decimal(value, mark=".")
            except TransformFailed:
                raise TransformFailed("not a number (add a <decimal> transform)") from None
        raise TransformFailed("a date is not a number")
    if type_ == "datetime":
        return tf.to_datetime(value)
    text = tf.as_text(value).strip()
    try:
        return Kind(text).value
    except ValueError:
        raise TransformFailed(f"{text!r} is not a record kind ({', '.join(k.value for k in Kind)})") from None


def _convert_str(value: Value) -> Value:
    return value if isinstance(value, str) else tf.as_text(value)


def _convert_decimal(value: Value) -> Value:
    return _convert(value, "decimal")


def _convert_datetime(value: Value) -> Value:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return tf.to_datetime(value)


def _convert_kind(value: Value) -> Value:
    return _convert(value, "kind")


_CONVERTERS: Mapping[FieldType, Callable[[Value], Value]] = {
    "str": _convert_str,
    "decimal": _convert_decimal,
    "datetime": _convert_datetime,
    "kind": _convert_kind,
}


@dataclass
class _Group:
    """``<lines>`` or ``<parties>``: rules applied to every node ``select`` finds."""

    select: XPathExpr
    rules: list[Rule]
    line: int | None
    skip_empty: bool = True

    def bind(self, anchors: _Anchors | None = None) -> _BoundGroup:
        return _BoundGroup(
            _xpath_fn(self.select, anchors),
            tuple((r.name, r.bind(anchors), r) for r in self.rules),
            self.skip_empty,
        )


@dataclass(frozen=True)
class _BoundGroup:
    select: _XPathFn
    rules: tuple[tuple[str, _Eval, Rule], ...]
    skip_empty: bool


@dataclass(frozen=True)
class _Plan:
    """A mapping's rules bound to one thread (lxml XPath objects are per thread)."""

    header: tuple[tuple[str, _Eval, Rule], ...]
    lines: tuple[_BoundGroup, ...]
    parties: tuple[_BoundGroup, ...]
    anchors: _Anchors


@dataclass
class _Xslt:
    phase: str
    source: bytes
    line: int | None
    _local: threading.local = field(default_factory=threading.local)

    def transform(self, tree: etree._ElementTree) -> etree._ElementTree:
        xslt: etree.XSLT | None = getattr(self._local, "xslt", None)
        if xslt is None:
            xslt = xmlsafe.compile_xslt(xmlsafe.parse_bytes(self.source))
            self._local.xslt = xslt
        return xslt(tree)


# --- compiled mapping -----------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    standard: str
    type: str | None
    channel: str | None
    partner: str | None
    line: int | None

    def score(self, unit: DocumentUnit, channel: str, partner: str | None) -> int | None:
        """Specificity when this match applies, else None. Weights make one partner
        condition outrank any combination of the weaker ones."""
        if self.standard.upper() != unit.standard.upper() and self.standard != "*":
            return None
        score = 1 if self.standard != "*" else 0
        if self.type is not None:
            if self.type != unit.doc_type:
                return None
            score += 2
        if self.channel is not None:
            if self.channel != channel:
                return None
            score += 4
        if self.partner is not None:
            if partner is None or self.partner != partner:
                return None
            score += 8
        return score

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.standard.upper(), self.type or "*", self.channel or "", self.partner or "")

    def __str__(self) -> str:
        parts = [f"standard={self.standard}", f"type={self.type or '*'}"]
        if self.channel:
            parts.append(f"channel={self.channel}")
        if self.partner:
            parts.append(f"partner={self.partner}")
        return " ".join(parts)


class CompiledMapping:
    """A validated, compiled mapping file. Safe to apply from several threads."""

    def __init__(
        self,
        *,
        name: str,
        path: Path,
        sha256: str,
        kind: Kind,
        matches: tuple[Match, ...],
        rules: list[Rule],
        lines: list[_Group],
        parties: list[_Group],
        xslt_before: list[_Xslt],
        xslt_after: list[_Xslt],
    ) -> None:
        self.name = name
        self.path = path
        self.sha256 = sha256
        self.kind = kind
        self.matches = matches
        self._rules = rules
        self._lines = lines
        self._parties = parties
        self._before = xslt_before
        self._after = xslt_after
        self._ref = MappingRef(file=name, sha256=sha256)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"CompiledMapping({self.name!r}, kind={self.kind.value})"

    @property
    def ref(self) -> MappingRef:
        return MappingRef(file=self.name, sha256=self.sha256)

    def score(self, unit: DocumentUnit, channel: str, partner: str | None) -> int | None:
        scores = [s for m in self.matches if (s := m.score(unit, channel, partner)) is not None]
        return max(scores) if scores else None

    def _plan(self) -> _Plan:
        plan: _Plan | None = getattr(self._local, "plan", None)
        if plan is None:
            anchors = _Anchors()
            plan = _Plan(
                tuple((r.name, r.bind(anchors), r) for r in self._rules),
                tuple(g.bind(anchors) for g in self._lines),
                tuple(g.bind(anchors) for g in self._parties),
                anchors,
            )
            self._local.plan = plan
        return plan

    def apply(self, unit: DocumentUnit) -> MappingResult:
        """Map one unit. Raises :class:`MappingError` naming file, line, field,
        XPath, value and reason."""
        plan = self._plan()
        root: etree._Element = unit.tree
        for x in self._before:
            root = self._run_xslt(x, etree.ElementTree(root)).getroot()
        plan.anchors.clear()
        header: dict[str, Value] = {}
        references: dict[str, str] = {}
        as_text = tf.as_text
        for name, evaluate, rule in plan.header:
            try:
                value = evaluate(root)
            except _RuleFailed as exc:
                raise rule.failure(self.name, name, exc) from None
            if value is None:
                continue
            if name.startswith("references."):
                references[name[11:]] = as_text(value)
            else:
                header[name] = value
        lines = tuple(
            Line(**values)  # type: ignore[arg-type]
            for values in self._apply_groups(plan.lines, root, "lines")
        )
        parties: list[Party] = []
        for i, values in enumerate(self._apply_groups(plan.parties, root, "parties"), 1):
            role = values.pop("role", None)
            if role is None:
                raise MappingError(f"{self.name}: parties[{i}].role: required value is missing")
            parties.append(Party(role=str(role), **values))  # type: ignore[arg-type]

        def s(name: str, fallback: str | None = None) -> str | None:
            v = header.get(name)
            if v is None:
                return fallback or None
            return str(v)

        occurred = header.get("occurred_at")
        total = header.get("total_amount")
        result = MappingResult(
            kind=Kind(str(header.get("kind", self.kind.value))),
            occurred_at=occurred if isinstance(occurred, datetime) else None,
            document=DocumentInfo(
                standard=s("document.standard", unit.standard),
                type=s("document.type", unit.doc_type),
                version=s("document.version", unit.version),
                control_number=s("document.control_number", unit.control_number),
            ),
            subject=s("subject"),
            references=references,
            currency=s("currency"),
            total_amount=total if isinstance(total, Decimal) else None,
            lines=lines,
            parties=tuple(parties),
            body=s("body"),
            mapping=self._ref,
        )
        for x in self._after:
            result = self._apply_after(x, result)
        return result

    def _apply_groups(
        self, groups: tuple[_BoundGroup, ...], root: etree._Element, label: str
    ) -> list[dict[str, Value | None]]:
        out: list[dict[str, Value | None]] = []
        nodes_of = tf.result_nodes
        for g in groups:
            rules = g.rules
            skip_empty = g.skip_empty
            for node in nodes_of(g.select(root)):
                values: dict[str, Value | None] = {}
                for name, evaluate, rule in rules:
                    try:
                        values[name] = evaluate(node)
                    except _RuleFailed as exc:
                        raise rule.failure(self.name, f"{label}[{len(out) + 1}].{name}", exc) from None
                if skip_empty and all(v is None for v in values.values()):
                    continue
                out.append(values)
        return out

    def _run_xslt(self, x: _Xslt, tree: etree._ElementTree) -> etree._ElementTree:
        try:
            result = x.transform(tree)
        except etree.XSLTApplyError as exc:
            raise MappingError(f"{self.name}:{x.line}: xslt ({x.phase}): {exc}") from None
        if result.getroot() is None:
            raise MappingError(f"{self.name}:{x.line}: xslt ({x.phase}): the stylesheet produced no element")
        return result

    def _apply_after(self, x: _Xslt, result: MappingResult) -> MappingResult:
        # the stylesheet sees a whole record; fields the mapping does not own are
        # placeholders and whatever the stylesheet does to them is ignored
        from gateway.record_xml import record_from_xml, record_to_xml

        placeholder = result.to_record(
            id="mapping", channel="mapping", received_at=datetime(1970, 1, 1, tzinfo=UTC), raw_sha256="0" * 64
        )
        out = self._run_xslt(x, etree.ElementTree(record_to_xml(placeholder))).getroot()
        try:
            rec = record_from_xml(out)
        except RecordInvalid as exc:
            raise MappingError(f"{self.name}:{x.line}: xslt (after): {exc.message}") from None
        return MappingResult(
            kind=rec.kind,
            occurred_at=rec.occurred_at,
            document=rec.document,
            subject=rec.subject,
            references=rec.references,
            currency=rec.currency,
            total_amount=rec.total_amount,
            lines=rec.lines,
            parties=rec.parties,
            body=rec.body,
            mapping=result.mapping,
        )


# --- compiling ------------------------------------------------------------------------


_DOCUMENT_CALL = re.compile(r"\bdocument\s*\(")


def _check_stylesheet(xsl: etree._Element, file: str) -> list[Problem]:
    """Refuse what could reach outside the document, even though the XSLT access
    control would stop it at run time: administrators should learn it at load."""
    problems: list[Problem] = []
    if xsl.tag not in (f"{{{XSL_NS}}}stylesheet", f"{{{XSL_NS}}}transform"):
        problems.append(Problem(file, _line(xsl), "xslt: the element must be xsl:stylesheet"))
    for el in xsl.iter():
        if not _is_data_element(el):
            continue
        qn = etree.QName(el)
        if qn.namespace == XSL_NS and qn.localname in ("include", "import"):
            problems.append(
                Problem(file, _line(el), f"xslt: xsl:{qn.localname} is not allowed (embed the templates)")
            )
        if qn.namespace not in (XSL_NS, None) and el is not xsl and _is_extension(el):
            problems.append(Problem(file, _line(el), f"xslt: extension element {el.tag} is not allowed"))
        for attr, value in el.attrib.items():
            a = str(attr)
            if a in ("extension-element-prefixes", f"{{{XSL_NS}}}extension-element-prefixes"):
                problems.append(Problem(file, _line(el), "xslt: extension elements are not allowed"))
            if _DOCUMENT_CALL.search(str(value)):
                problems.append(Problem(file, _line(el), "xslt: document() is not allowed"))
    return problems


def _is_extension(el: etree._Element) -> bool:
    ns = etree.QName(el).namespace or ""
    return ns.startswith(("http://exslt.org/", "http://icl.com/saxon", "http://xml.apache.org/xalan"))


class _Compiler:
    def __init__(self, file: str, codelists: Mapping[str, CodeList]) -> None:
        self.file = file
        self.shared = codelists
        self.inline: dict[str, CodeList] = {}
        self.problems: list[Problem] = []

    def problem(self, el: etree._Element | None, reason: str, field: str | None = None) -> None:
        self.problems.append(Problem(self.file, None if el is None else _line(el), reason, field))

    def xpath(self, expr: str, el: etree._Element, field: str | None) -> XPathExpr | None:
        try:
            xp = XPathExpr(expr.strip())
            xp.check()
        except etree.XPathError as exc:
            self.problem(el, f"bad XPath {expr!r}: {exc}", field)
            return None
        return xp

    def codelist(self, name: str, el: etree._Element, field: str | None) -> CodeList | None:
        cl = self.inline.get(name) or self.shared.get(name)
        if cl is None:
            self.problem(el, f"unknown code list {name!r} (not inline, not in codelists/{name}.xml)", field)
        return cl

    def compile_rule(self, el: etree._Element, types: Mapping[str, FieldType]) -> Rule:
        name = el.get("name", "")
        rule = Rule(
            name=name,
            type=types.get(name, "str"),
            line=_line(el),
            combine=el.get("combine", "first"),
            separator=el.get("separator", " "),
            default=el.get("default"),
            required=el.get("required", "false") in ("true", "1"),
        )
        if el.get("xpath") is not None:
            rule.sources.append(_Source(self.xpath(el.get("xpath", ""), el, name), None))
        if el.get("value") is not None:
            rule.sources.append(_Source(None, el.get("value")))
        for child in el:
            if not _is_data_element(child):
                continue
            tag = etree.QName(child).localname
            if tag == "xpath":
                rule.sources.append(_Source(self.xpath(child.text or "", child, name), None))
            elif tag == "value":
                rule.sources.append(_Source(None, child.text or ""))
            else:
                t = self.compile_transform(tag, child, name)
                if t is not None:
                    t.line = _line(child)
                    rule.transforms.append(t)
        if not rule.sources and rule.default is None:
            self.problem(el, "field has no xpath, value or default", name)
        return rule

    def compile_transform(self, tag: str, el: etree._Element, field: str) -> _Transform | None:
        try:
            if tag in ("trim", "upper", "lower", "normalize-space"):
                return _TextTransform(tag)
            if tag == "integer":
                return _IntegerT()
            if tag == "decimal":
                return _DecimalT(
                    el.get("mark", "auto"), el.get("thousands") or None, int(el.get("implied-decimals", "0"))
                )
            if tag == "divide":
                by = el.get("by")
                by_xp = el.get("by-xpath")
                if by is None and by_xp is None:
                    self.problem(el, "divide needs by or by-xpath", field)
                    return None
                return _Divide(
                    None if by is None else Decimal(by),
                    None if by_xp is None else self.xpath(by_xp, el, field),
                )
            if tag == "date":
                fx = el.get("format-xpath")
                if el.get("format") is None and fx is None:
                    self.problem(el, "date needs format or format-xpath", field)
                    return None
                return _DateT(
                    tf.compile_date_formats(el.get("format")),
                    None if fx is None else self.xpath(fx, el, field),
                )
            if tag == "datetime":
                txp = self.xpath(el.get("time-xpath", ""), el, field)
                if txp is None:
                    return None
                return _DateTimeT(
                    txp,
                    tf.compile_date_formats(el.get("format")),
                    tf.compile_date_formats(el.get("time-format") or "HHMMSS|HHMM|HHMMSSD|HHMMSSDD"),
                )
            if tag == "lookup":
                cl = self.codelist(el.get("codelist", ""), el, field)
                return None if cl is None else _Lookup(cl, el.get("default"))
            if tag == "replace":
                return _Replace(re.compile(el.get("pattern", "")), el.get("with", ""))
        except TransformFailed as exc:
            self.problem(el, exc.reason, field)
            return None
        except (re.error, InvalidOperation, ValueError) as exc:
            self.problem(el, f"{tag}: {exc}", field)
            return None
        self.problem(el, f"unknown transform <{tag}>", field)
        return None

    def compile_group(self, el: etree._Element, types: Mapping[str, FieldType]) -> _Group | None:
        select = self.xpath(el.get("select", ""), el, etree.QName(el).localname)
        rules = [self.compile_rule(f, types) for f in el.iterfind(_M + "field")]
        if select is None:
            return None
        return _Group(select, rules, _line(el), el.get("skip-empty", "true") in ("true", "1"))

    def compile_xslt(self, el: etree._Element) -> _Xslt | None:
        children = [c for c in el if _is_data_element(c)]
        if len(children) != 1:
            self.problem(el, "xslt must hold exactly one xsl:stylesheet")
            return None
        xsl = children[0]
        bad = _check_stylesheet(xsl, self.file)
        if bad:
            self.problems.extend(bad)
            return None
        copy = deepcopy(xsl)
        # Literal result elements written inside a mapping file inherit its default
        # namespace; neither canonical XML nor the record uses it, so an admin's
        # <BEG03> must come out as plain BEG03, not {mapping-ns}BEG03.
        for node in copy.iter():
            if _is_data_element(node) and etree.QName(node).namespace == MNS:
                node.tag = etree.QName(node).localname
        etree.cleanup_namespaces(copy)
        try:
            xmlsafe.compile_xslt(etree.ElementTree(copy))
        except etree.XSLTParseError as exc:
            entries = [e for e in _errors(exc.error_log) if e.message]
            if not entries:
                self.problem(el, f"xslt: {exc}")
            for e in entries:
                self.problem(el, f"xslt: {e.message}")
            return None
        return _Xslt(el.get("phase", "before"), etree.tostring(copy), _line(el))


def compile_mapping(
    path: Path,
    *,
    name: str | None = None,
    codelists: Mapping[str, CodeList] | None = None,
    data: bytes | None = None,
) -> tuple[CompiledMapping | None, list[Problem]]:
    """Validate and compile one mapping file. Returns the mapping (None when it has
    errors) and every problem found, warnings included."""
    file = str(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return None, [Problem(file, None, f"cannot read: {exc.strerror or exc}")]
    try:
        doc = xmlsafe.parse_bytes(data, base_url=file)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        return None, [Problem(file, line, f"not well-formed XML: {exc.msg}")]
    root = doc.getroot()
    if root.tag != _M + "mapping":
        return None, [
            Problem(file, _line(root), f'root element must be <mapping xmlns="{MNS}">, not {root.tag}')
        ]
    problems = _validate(doc, file)
    if problems:
        return None, problems
    c = _Compiler(file, codelists or {})
    for cl_el in root.iterfind(_M + "codelist"):
        cl = codelist_from_element(cl_el, file)
        if cl.name in c.inline:
            c.problem(cl_el, f"code list {cl.name!r} is defined twice")
        c.inline[cl.name] = cl
    matches = tuple(
        Match(
            standard=m.get("standard", ""),
            type=None if m.get("type") in (None, "", "*") else m.get("type"),
            channel=m.get("channel") or None,
            partner=m.get("partner") or None,
            line=_line(m),
        )
        for m in root.iterfind(_M + "match")
    )
    rules: list[Rule] = []
    seen: dict[str, int | None] = {}
    for f in root.iterfind(_M + "field"):
        rule = c.compile_rule(f, _HEADER_TYPES)
        if rule.name in seen:
            c.problem(f, f"field is already set at line {seen[rule.name]}", rule.name)
        seen[rule.name] = rule.line
        rules.append(rule)
    line_groups = [g for e in root.iterfind(_M + "lines") if (g := c.compile_group(e, _LINE_TYPES))]
    party_groups = [g for e in root.iterfind(_M + "parties") if (g := c.compile_group(e, {}))]
    for e in root.iterfind(_M + "parties"):
        if not any(f.get("name") == "role" for f in e.iterfind(_M + "field")):
            c.problem(e, "parties needs a field named role")
    before: list[_Xslt] = []
    after: list[_Xslt] = []
    for e in root.iterfind(_M + "xslt"):
        x = c.compile_xslt(e)
        if x is not None:
            (before if x.phase == "before" else after).append(x)
    if c.problems:
        return None, c.problems
    compiled = CompiledMapping(
        name=name or path.name,
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        kind=Kind(root.get("kind", "other")),
        matches=matches,
        rules=rules,
        lines=line_groups,
        parties=party_groups,
        xslt_before=before,
        xslt_after=after,
    )
    return compiled, []


def codelist_from_element(el: etree._Element, source: str) -> CodeList:
    codes: dict[str, str] = {}
    for code in el.iterfind(_M + "code"):
        codes[code.get("value", "")] = code.text or ""
    return CodeList(name=el.get("name", ""), codes=codes, default=el.get("default"), source=source)


def load_codelist_file(path: Path) -> tuple[CodeList | None, list[Problem]]:
    """A shared code list file: ``<codelist name="...">`` named like the file."""
    file = str(path)
    try:
        doc = xmlsafe.parse_bytes(path.read_bytes(), base_url=file)
    except OSError as exc:
        return None, [Problem(file, None, f"cannot read: {exc.strerror or exc}")]
    except etree.XMLSyntaxError as exc:
        return None, [Problem(file, exc.lineno or None, f"not well-formed XML: {exc.msg}")]
    root = doc.getroot()
    if root.tag != _M + "codelist":
        return None, [Problem(file, _line(root), f'root element must be <codelist xmlns="{MNS}">')]
    problems = _validate(doc, file)
    if problems:
        return None, problems
    cl = codelist_from_element(root, file)
    if cl.name != path.stem:
        return None, [Problem(file, _line(root), f"code list name {cl.name!r} must match the file name")]
    return cl, []


def apply_all(mapping: CompiledMapping, units: Sequence[DocumentUnit]) -> list[MappingResult]:
    return [mapping.apply(u) for u in units]
