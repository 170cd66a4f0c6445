"""Faxes (standard ``FAX``, type ``fax``): a PDF or TIFF received on channel ``fax``,
or a fax-to-mail notice recognised by a fax provider rule (:mod:`gateway.fax_rules`).

Canonical shape (``docs/canonical-xml.md``, "Fax")::

    <Fax><Caller>+15551234567</Caller><CallerAsReceived>(555) 555-0100</CallerAsReceived>
         <CallerName>..</CallerName><Pages announced="2">2</Pages><Provider>..</Provider>
         <Time>as the provider wrote it</Time>
         <Document filename="fax.pdf" media_type="application/pdf" size=".." sha256=".." pages="2"/>
         <Text>text layer, when there is one</Text>
         <Email>..the notice e-mail, as in "E-mail", when the fax came by e-mail..</Email></Fax>

Caller and provider are transport facts, not in the bytes: the parser takes them
as constructor argument ``facts`` (keys ``caller``/``fax_caller`` and
``provider``/``fax_provider``) so the parser protocol stays ``parse(data)``.
``Pages`` is the document's own page count when it can be read (the provider's
announced count is kept in ``announced``), else the announced one.
The page count of a TIFF is found by walking its IFD chain here (a few header
reads, bounded, loop-safe) rather than pulling in an imaging library.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lxml import etree

from gateway.errors import ParseError, Position
from gateway.parsers.base import DocumentUnit
from gateway.parsers.textdoc import add_pdf_info, is_pdf, pdf_info, sha256_hex, xml_text

MAX_TIFF_PAGES = 10_000


def is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def tiff_page_count(data: bytes, *, max_pages: int = MAX_TIFF_PAGES) -> int:
    """Number of IFDs (pages) in a TIFF or BigTIFF. Raises ValueError when broken.

    Every IFD offset is checked against the file size and against the offsets
    already seen, so a corrupt or hostile chain cannot loop or read out of range."""
    if not is_tiff(data):
        raise ValueError("not a TIFF file")
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        # BigTIFF: 2-byte offset size (8), 2 reserved, then an 8-byte first offset
        if len(data) < 16:
            raise ValueError("truncated BigTIFF header")
        (offset,) = struct.unpack_from(order + "Q", data, 8)
        count_fmt, count_size, entry_size, next_fmt = "Q", 8, 20, "Q"
    else:
        if len(data) < 8:
            raise ValueError("truncated TIFF header")
        (offset,) = struct.unpack_from(order + "I", data, 4)
        count_fmt, count_size, entry_size, next_fmt = "H", 2, 12, "I"
    next_size = struct.calcsize(next_fmt)
    seen: set[int] = set()
    while offset:
        if offset in seen:
            raise ValueError(f"IFD chain loops back to offset {offset}")
        if len(seen) >= max_pages:
            raise ValueError(f"more than {max_pages} pages")
        if offset + count_size > len(data):
            raise ValueError(f"IFD offset {offset} is outside the file")
        seen.add(offset)
        (entries,) = struct.unpack_from(order + count_fmt, data, offset)
        next_at = offset + count_size + entries * entry_size
        if next_at + next_size > len(data):
            raise ValueError(f"IFD at offset {offset} runs past the end of the file")
        (offset,) = struct.unpack_from(order + next_fmt, data, next_at)
    if not seen:
        raise ValueError("TIFF has no image directory")
    return len(seen)


def _fact(facts: Mapping[str, str], *keys: str) -> str:
    for key in keys:
        value = facts.get(key)
        if value:
            return value
    return ""


@dataclass(frozen=True)
class FaxFacts:
    """What the transport (or the fax notice e-mail) says about a fax."""

    #: the caller's number in E.164; "" when unknown or not a valid number
    caller: str = ""
    #: the caller's number as the provider wrote it (kept when it differs)
    caller_as_received: str = ""
    caller_name: str = ""
    #: page count the provider announced (the document's own count wins)
    pages: str = ""
    #: the rule (provider) that recognised the fax
    provider: str = ""
    #: the reception time as the provider wrote it
    time: str = ""


def build_fax(data: bytes, facts: FaxFacts, *, filename: str | None) -> etree._Element:
    """Canonical ``<Fax>`` for a PDF or TIFF fax document. Raises ParseError otherwise."""
    fax = etree.Element("Fax")
    if facts.caller:
        etree.SubElement(fax, "Caller").text = xml_text(facts.caller)
    if facts.caller_as_received and facts.caller_as_received != facts.caller:
        etree.SubElement(fax, "CallerAsReceived").text = xml_text(facts.caller_as_received)
    if facts.caller_name:
        etree.SubElement(fax, "CallerName").text = xml_text(facts.caller_name)
    pages = etree.SubElement(fax, "Pages")
    if facts.provider:
        etree.SubElement(fax, "Provider").text = xml_text(facts.provider)
    if facts.time:
        etree.SubElement(fax, "Time").text = xml_text(facts.time)
    doc = etree.SubElement(fax, "Document")
    if filename:
        doc.set("filename", xml_text(filename))

    text: etree._Element | None
    if is_pdf(data):
        doc.set("media_type", "application/pdf")
        info = pdf_info(data)
        # Pages/Text are children of <Fax>, not of <Document>: reuse the helper on
        # a scratch element and move the pieces
        scratch = etree.Element("scratch")
        add_pdf_info(scratch, info)
        page_count = info.pages
        note = info.note
        text = scratch.find("Text")
    elif is_tiff(data):
        doc.set("media_type", "image/tiff")
        text = None
        try:
            page_count, note = tiff_page_count(data), ""
        except ValueError as exc:
            page_count, note = None, f"unreadable TIFF: {exc}"
    else:
        raise ParseError("a fax must be a PDF or TIFF file", Position(offset=0))

    doc.set("size", str(len(data)))
    doc.set("sha256", sha256_hex(data))
    if note:
        doc.set("note", xml_text(note))
    if page_count is not None:
        doc.set("pages", str(page_count))
        pages.text = str(page_count)  # the document's own count is the truth
    elif facts.pages.strip().isdigit():
        pages.text = str(int(facts.pages))
    else:
        fax.remove(pages)  # canonical XML omits what is unknown
    if facts.pages.strip().isdigit():
        pages.set("announced", str(int(facts.pages)))
    if text is not None:
        fax.append(text)
    return fax


def fax_json(tree: etree._Element) -> dict[str, Any] | None:
    """The ``fax`` object of a record's JSON form, read from a ``<Fax>`` unit."""
    if tree.tag != "Fax":
        return None

    def text(path: str) -> str | None:
        value = tree.findtext(path)
        return value.strip() if value and value.strip() else None

    pages = text("Pages")
    out: dict[str, Any] = {
        "caller": text("Caller"),
        "pages": int(pages) if pages and pages.isdigit() else None,
        "provider": text("Provider"),
    }
    for key, path in (
        ("caller_as_received", "CallerAsReceived"),
        ("caller_name", "CallerName"),
        ("time", "Time"),
    ):
        value = text(path)
        if value is not None:
            out[key] = value
    doc = tree.find("Document")
    if doc is not None:
        out["document"] = {
            k: (int(v) if k in {"size", "pages"} and v.isdigit() else v)
            for k in ("filename", "media_type", "size", "sha256", "pages", "note")
            if (v := doc.get(k)) is not None
        }
    out["text_layer"] = tree.find("Text") is not None
    return out


class FaxParser:
    standard: str = "FAX"

    def __init__(self, *, facts: Mapping[str, str] | None = None, filename: str | None = None) -> None:
        self.facts: Mapping[str, str] = dict(facts or {})
        self.filename = filename

    def sniff(self, data: bytes) -> bool:
        return is_pdf(data) or is_tiff(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        caller = _fact(self.facts, "caller", "fax_caller")
        facts = FaxFacts(
            caller=caller,
            pages=_fact(self.facts, "pages", "fax_pages"),
            provider=_fact(self.facts, "provider", "fax_provider"),
        )
        fax = build_fax(data, facts, filename=self.filename)
        fax_object = fax_json(fax)
        yield DocumentUnit(
            standard=self.standard,
            doc_type="fax",
            tree=fax,
            sender={"fax": caller} if caller else {},
            extra={} if fax_object is None else {"fax": fax_object},
        )
