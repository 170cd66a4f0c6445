"""The XML form of :class:`~gateway.record.InteractionRecord` and its validation.

``schemas/interaction.xsd`` is the contract. :func:`validate_record` is the last gate
before a record is stored: whatever a mapping (or an ``after`` XSLT) produced must
satisfy it. ``extra`` (channel-specific data) has no XML form and is not carried.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

from lxml import etree

from gateway import xmlsafe
from gateway.errors import RecordInvalid
from gateway.record import (
    NS,
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

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "interaction.xsd"

_Q = "{" + NS + "}"

# lxml XMLSchema objects must not validate from two threads at once; one lock is
# enough because validation is fast compared with everything around it.
_schema_lock = threading.Lock()
_schema: etree.XMLSchema | None = None


def _get_schema() -> etree.XMLSchema:
    global _schema
    if _schema is None:
        doc = xmlsafe.parse_bytes(SCHEMA_PATH.read_bytes(), base_url=str(SCHEMA_PATH))
        _schema = etree.XMLSchema(doc)
    return _schema


def _sub(parent: etree._Element, name: str, text: str | None = None, field: str = "") -> etree._Element:
    el = etree.SubElement(parent, _Q + name)
    if text is not None:
        try:
            el.text = text
        except ValueError as exc:
            # lxml refuses control characters XML 1.0 cannot carry
            raise RecordInvalid(f"{field or name}: value cannot be carried in XML ({exc})") from None
    return el


def _ts(v: datetime) -> str:
    return v.isoformat()


def _dec(v: Decimal) -> str:
    return format(v, "f")


def record_to_xml(rec: InteractionRecord) -> etree._Element:
    """The record as an ``{urn:b2b-gateway:interaction:1}interaction`` element."""
    root = etree.Element(_Q + "interaction", nsmap={None: NS})  # type: ignore[dict-item]
    _sub(root, "id", rec.id)
    _sub(root, "channel", rec.channel)
    _sub(root, "direction", Direction(rec.direction).value)
    _sub(root, "kind", Kind(rec.kind).value)
    if rec.partner is not None:
        p = _sub(root, "partner")
        _sub(p, "id", rec.partner.id, "partner.id")
        if rec.partner.name is not None:
            _sub(p, "name", rec.partner.name, "partner.name")
    if rec.sender:
        s = _sub(root, "sender")
        for kind, value in rec.sender.items():
            _sub(s, "identifier", value, f"sender.{kind}").set("kind", kind)
    if rec.occurred_at is not None:
        _sub(root, "occurred_at", _ts(rec.occurred_at))
    _sub(root, "received_at", _ts(rec.received_at))
    d = _sub(root, "document")
    for name in ("standard", "type", "version", "control_number"):
        value = getattr(rec.document, name)
        if value is not None:
            _sub(d, name, value, f"document.{name}")
    if rec.subject is not None:
        _sub(root, "subject", rec.subject)
    if rec.references:
        r = _sub(root, "references")
        for name, value in rec.references.items():
            _sub(r, "reference", value, f"references.{name}").set("name", name)
    if rec.currency is not None:
        _sub(root, "currency", rec.currency)
    if rec.total_amount is not None:
        _sub(root, "total_amount", _dec(rec.total_amount))
    if rec.lines:
        ls = _sub(root, "lines")
        for i, ln in enumerate(rec.lines, 1):
            le = _sub(ls, "line")
            for name in ("line_number", "product_id", "description", "quantity", "unit", "unit_price"):
                value = getattr(ln, name)
                if value is None:
                    continue
                text = _dec(value) if isinstance(value, Decimal) else value
                _sub(le, name, text, f"lines[{i}].{name}")
    if rec.parties:
        ps = _sub(root, "parties")
        for i, party in enumerate(rec.parties, 1):
            pe = _sub(ps, "party")
            _sub(pe, "role", party.role, f"parties[{i}].role")
            if party.name is not None:
                _sub(pe, "name", party.name, f"parties[{i}].name")
            if party.id is not None:
                _sub(pe, "id", party.id, f"parties[{i}].id")
    if rec.attachments:
        at = _sub(root, "attachments")
        for i, a in enumerate(rec.attachments, 1):
            ae = _sub(at, "attachment")
            if a.filename is not None:
                _sub(ae, "filename", a.filename, f"attachments[{i}].filename")
            _sub(ae, "media_type", a.media_type, f"attachments[{i}].media_type")
            _sub(ae, "size", str(a.size))
            _sub(ae, "sha256", a.sha256)
    _sub(root, "raw_sha256", rec.raw_sha256)
    if rec.mapping is not None:
        m = _sub(root, "mapping")
        _sub(m, "file", rec.mapping.file, "mapping.file")
        _sub(m, "sha256", rec.mapping.sha256, "mapping.sha256")
    _sub(root, "status", Status(rec.status).value)
    if rec.body is not None:
        _sub(root, "body", rec.body)
    return root


# --- reading ------------------------------------------------------------------------


def _child(el: etree._Element, name: str) -> etree._Element | None:
    return el.find(_Q + name)


def _text(el: etree._Element, name: str) -> str | None:
    c = el.find(_Q + name)
    if c is None:
        return None
    return c.text or ""


def _req(el: etree._Element, name: str, field: str) -> str:
    value = _text(el, name)
    if value is None:
        raise RecordInvalid(f"{field}: element is missing")
    return value


def _parse_dt(value: str, field: str) -> datetime:
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise RecordInvalid(f"{field}: {value!r} is not an ISO 8601 date/time") from None


def _parse_dec(value: str | None, field: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value.strip())
    except InvalidOperation:
        raise RecordInvalid(f"{field}: {value!r} is not a decimal number") from None


def record_from_xml(el: etree._Element) -> InteractionRecord:
    """Read a record back from its XML form. Raises :class:`RecordInvalid` when a
    value cannot be converted (it does not run the XSD; see :func:`validate_xml`)."""
    if el.tag != _Q + "interaction":
        raise RecordInvalid(f"record: root element is {el.tag!r}, expected {{{NS}}}interaction")
    try:
        direction = Direction(_req(el, "direction", "direction"))
        kind = Kind(_req(el, "kind", "kind"))
        status = Status(_req(el, "status", "status"))
    except ValueError as exc:
        raise RecordInvalid(f"record: {exc}") from None
    partner = None
    pe = _child(el, "partner")
    if pe is not None:
        partner = PartnerRef(id=_req(pe, "id", "partner.id"), name=_text(pe, "name"))
    sender: dict[str, str] = {}
    se = _child(el, "sender")
    if se is not None:
        for ident in se.iterfind(_Q + "identifier"):
            sender[ident.get("kind", "")] = ident.text or ""
    occurred = _text(el, "occurred_at")
    de = _child(el, "document")
    document = (
        DocumentInfo()
        if de is None
        else DocumentInfo(
            standard=_text(de, "standard"),
            type=_text(de, "type"),
            version=_text(de, "version"),
            control_number=_text(de, "control_number"),
        )
    )
    references: dict[str, str] = {}
    re_ = _child(el, "references")
    if re_ is not None:
        for ref in re_.iterfind(_Q + "reference"):
            references[ref.get("name", "")] = ref.text or ""
    lines: list[Line] = []
    ls = _child(el, "lines")
    if ls is not None:
        for i, le in enumerate(ls.iterfind(_Q + "line"), 1):
            lines.append(
                Line(
                    line_number=_text(le, "line_number"),
                    product_id=_text(le, "product_id"),
                    description=_text(le, "description"),
                    quantity=_parse_dec(_text(le, "quantity"), f"lines[{i}].quantity"),
                    unit=_text(le, "unit"),
                    unit_price=_parse_dec(_text(le, "unit_price"), f"lines[{i}].unit_price"),
                )
            )
    parties: list[Party] = []
    ps = _child(el, "parties")
    if ps is not None:
        for i, pe2 in enumerate(ps.iterfind(_Q + "party"), 1):
            parties.append(
                Party(
                    role=_req(pe2, "role", f"parties[{i}].role"),
                    name=_text(pe2, "name"),
                    id=_text(pe2, "id"),
                )
            )
    attachments: list[Attachment] = []
    at = _child(el, "attachments")
    if at is not None:
        for i, ae in enumerate(at.iterfind(_Q + "attachment"), 1):
            size_text = _req(ae, "size", f"attachments[{i}].size")
            try:
                size = int(size_text)
            except ValueError:
                raise RecordInvalid(f"attachments[{i}].size: {size_text!r} is not an integer") from None
            attachments.append(
                Attachment(
                    filename=_text(ae, "filename"),
                    media_type=_req(ae, "media_type", f"attachments[{i}].media_type"),
                    size=size,
                    sha256=_req(ae, "sha256", f"attachments[{i}].sha256"),
                )
            )
    mapping = None
    me = _child(el, "mapping")
    if me is not None:
        mapping = MappingRef(
            file=_req(me, "file", "mapping.file"), sha256=_req(me, "sha256", "mapping.sha256")
        )
    return InteractionRecord(
        id=_req(el, "id", "id"),
        channel=_req(el, "channel", "channel"),
        direction=direction,
        kind=kind,
        received_at=_parse_dt(_req(el, "received_at", "received_at"), "received_at"),
        raw_sha256=_req(el, "raw_sha256", "raw_sha256"),
        status=status,
        partner=partner,
        sender=sender,
        occurred_at=None if occurred is None else _parse_dt(occurred, "occurred_at"),
        document=document,
        subject=_text(el, "subject"),
        references=references,
        currency=_text(el, "currency"),
        total_amount=_parse_dec(_text(el, "total_amount"), "total_amount"),
        lines=tuple(lines),
        parties=tuple(parties),
        attachments=tuple(attachments),
        mapping=mapping,
        body=_text(el, "body"),
    )


# --- validation ---------------------------------------------------------------------

_NS_IN_MSG = re.compile(r"\{[^}]*\}")
_LISTS = {"line", "party", "attachment", "reference", "identifier"}


def _field_of(root: etree._Element, path: str | None) -> str:
    """The record field an XSD error points at: ``lines[2].quantity``."""
    if not path:
        return "record"
    try:
        found = root.getroottree().xpath(path)
    except etree.XPathError:
        return "record"
    if not isinstance(found, list) or not found or not isinstance(found[0], etree._Element):
        return "record"
    el: etree._Element | None = found[0]
    steps: list[str] = []
    while el is not None and el is not root:
        name = etree.QName(el).localname
        parent = el.getparent()
        if name in _LISTS and parent is not None:
            index = 1 + sum(1 for s in el.itersiblings(preceding=True) if s.tag == el.tag)
            steps.append(f"[{index}]")
        else:
            steps.append("." + name)
        el = parent
    # list items attach to their container: "lines" + "[2]" + ".quantity"
    return "".join(reversed(steps)).lstrip(".") or "record"


def validate_xml(el: etree._Element) -> None:
    """Validate a record element against interaction.xsd; raise :class:`RecordInvalid`
    naming the first offending field."""
    with _schema_lock:
        schema = _get_schema()
        ok = schema.validate(el)
        errors: list[Any] = list(cast(Iterable[Any], schema.error_log)) if not ok else []
    if ok:
        return
    first = errors[0]
    field = _field_of(el, first.path)
    reason = _NS_IN_MSG.sub("", first.message)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise RecordInvalid(f"{field}: {reason}{more}")


# --- fast validation ----------------------------------------------------------------
#
# Building the record with SubElement costs far more than the XSD check itself. The
# fast path writes the same XML as record_to_xml as one string and parses it. It only
# ever *accepts*: whenever it fails in any way (an invalid record, a value XML cannot
# carry, a field of an unexpected type) the record goes through record_to_xml and
# validate_xml, which raise exactly the error they always did.

_TEXT_SPECIAL = re.compile(r"[&<>\r]")
_ATTR_SPECIAL = re.compile(r'[&<>"\t\n\r]')
_OPEN = '<interaction xmlns="' + NS + '">'


def _esc(text: str) -> str:
    # raises TypeError for a non-string, which sends the record to the slow path
    if _TEXT_SPECIAL.search(text) is None:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _esc_attr(text: str) -> str:
    if _ATTR_SPECIAL.search(text) is None:
        return text
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
    )


def _record_xml_text(rec: InteractionRecord) -> str:
    """record_to_xml as a string (same elements, same order, same values)."""
    out = [
        _OPEN,
        "<id>",
        _esc(rec.id),
        "</id><channel>",
        _esc(rec.channel),
        "</channel><direction>",
        Direction(rec.direction).value,
        "</direction><kind>",
        Kind(rec.kind).value,
        "</kind>",
    ]
    add = out.append
    if rec.partner is not None:
        add("<partner><id>" + _esc(rec.partner.id) + "</id>")
        if rec.partner.name is not None:
            add("<name>" + _esc(rec.partner.name) + "</name>")
        add("</partner>")
    if rec.sender:
        add("<sender>")
        for kind, value in rec.sender.items():
            add('<identifier kind="' + _esc_attr(kind) + '">' + _esc(value) + "</identifier>")
        add("</sender>")
    if rec.occurred_at is not None:
        add("<occurred_at>" + _esc(_ts(rec.occurred_at)) + "</occurred_at>")
    add("<received_at>" + _esc(_ts(rec.received_at)) + "</received_at><document>")
    doc = rec.document
    parts: tuple[tuple[str, str | None], ...] = (
        ("standard", doc.standard),
        ("type", doc.type),
        ("version", doc.version),
        ("control_number", doc.control_number),
    )
    for name, part in parts:
        if part is not None:
            add("<" + name + ">" + _esc(part) + "</" + name + ">")
    add("</document>")
    if rec.subject is not None:
        add("<subject>" + _esc(rec.subject) + "</subject>")
    if rec.references:
        add("<references>")
        for name, value in rec.references.items():
            add('<reference name="' + _esc_attr(name) + '">' + _esc(value) + "</reference>")
        add("</references>")
    if rec.currency is not None:
        add("<currency>" + _esc(rec.currency) + "</currency>")
    if rec.total_amount is not None:
        add("<total_amount>" + _dec(rec.total_amount) + "</total_amount>")
    if rec.lines:
        add("<lines>")
        for ln in rec.lines:
            add("<line>")
            if ln.line_number is not None:
                add("<line_number>" + _esc(ln.line_number) + "</line_number>")
            if ln.product_id is not None:
                add("<product_id>" + _esc(ln.product_id) + "</product_id>")
            if ln.description is not None:
                add("<description>" + _esc(ln.description) + "</description>")
            q = ln.quantity
            if q is not None:
                add("<quantity>" + (_dec(q) if isinstance(q, Decimal) else _esc(q)) + "</quantity>")
            if ln.unit is not None:
                add("<unit>" + _esc(ln.unit) + "</unit>")
            p = ln.unit_price
            if p is not None:
                add("<unit_price>" + (_dec(p) if isinstance(p, Decimal) else _esc(p)) + "</unit_price>")
            add("</line>")
        add("</lines>")
    if rec.parties:
        add("<parties>")
        for party in rec.parties:
            add("<party><role>" + _esc(party.role) + "</role>")
            if party.name is not None:
                add("<name>" + _esc(party.name) + "</name>")
            if party.id is not None:
                add("<id>" + _esc(party.id) + "</id>")
            add("</party>")
        add("</parties>")
    if rec.attachments:
        add("<attachments>")
        for a in rec.attachments:
            add("<attachment>")
            if a.filename is not None:
                add("<filename>" + _esc(a.filename) + "</filename>")
            add("<media_type>" + _esc(a.media_type) + "</media_type>")
            add("<size>" + _esc(str(a.size)) + "</size><sha256>" + _esc(a.sha256) + "</sha256>")
            add("</attachment>")
        add("</attachments>")
    add("<raw_sha256>" + _esc(rec.raw_sha256) + "</raw_sha256>")
    if rec.mapping is not None:
        add("<mapping><file>" + _esc(rec.mapping.file) + "</file>")
        add("<sha256>" + _esc(rec.mapping.sha256) + "</sha256></mapping>")
    add("<status>" + Status(rec.status).value + "</status>")
    if rec.body is not None:
        add("<body>" + _esc(rec.body) + "</body>")
    add("</interaction>")
    return "".join(out)


_fast_parser = threading.local()


def _fast_valid(rec: InteractionRecord) -> bool:
    """True when ``rec`` certainly satisfies interaction.xsd; False means "not known",
    the caller then takes the slow path, which names the problem."""
    parser: etree.XMLParser | None = getattr(_fast_parser, "parser", None)
    if parser is None:
        # the records's XML is ours: no entities, no DTD, no network
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        _fast_parser.parser = parser
    try:
        el = etree.fromstring(_record_xml_text(rec).encode("utf-8"), parser)
    except Exception:  # noqa: BLE001 - anything odd: the slow path reports it
        return False
    with _schema_lock:
        return bool(_get_schema().validate(el))


def validate_record(rec: InteractionRecord) -> None:
    """Raise :class:`RecordInvalid` when ``rec`` does not satisfy interaction.xsd."""
    if _fast_valid(rec):
        return
    _validate_record_slow(rec)


def validate_records(records: Iterable[InteractionRecord]) -> None:
    """:func:`validate_record` for several records, e.g. all records of one message.
    Raises :class:`InvalidRecordInBatch` (a :class:`RecordInvalid` with the same
    message :func:`validate_record` gives) for the first record that is not valid;
    its ``index`` (0-based) and ``record`` say which one."""
    for i, rec in enumerate(records):
        if _fast_valid(rec):
            continue
        try:
            _validate_record_slow(rec)
        except RecordInvalid as exc:
            raise InvalidRecordInBatch(exc.message, index=i, record=rec) from None


class InvalidRecordInBatch(RecordInvalid):
    """:func:`validate_records`: which record of the batch is invalid."""

    def __init__(self, message: str, *, index: int, record: InteractionRecord) -> None:
        super().__init__(message)
        self.index = index
        self.record = record


def _validate_record_slow(rec: InteractionRecord) -> None:
    try:
        el = record_to_xml(rec)
    except ValueError as exc:
        if isinstance(exc, RecordInvalid):
            raise
        # an enum field holding something that is not a member
        raise RecordInvalid(f"record: {exc}") from None
    validate_xml(el)
