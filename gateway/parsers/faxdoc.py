"""Faxes (standard ``FAX``, type ``fax``): a raw PDF or TIFF received on channel ``fax``.

Canonical shape (``docs/canonical-xml.md``, "Fax")::

    <Fax><Caller>+15551234567</Caller><Pages>2</Pages><Provider>..</Provider>
         <Document filename="fax.pdf" media_type="application/pdf" size=".." sha256=".."/>
         <Text>text layer, when there is one</Text></Fax>

Caller and provider are transport facts, not in the bytes: the parser takes them
as constructor argument ``facts`` (keys ``caller``/``fax_caller`` and
``provider``/``fax_provider``) so the parser protocol stays ``parse(data)``.
The page count of a TIFF is found by walking its IFD chain here (a few header
reads, bounded, loop-safe) rather than pulling in an imaging library.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

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


class FaxParser:
    standard: str = "FAX"

    def __init__(self, *, facts: Mapping[str, str] | None = None, filename: str | None = None) -> None:
        self.facts: Mapping[str, str] = dict(facts or {})
        self.filename = filename

    def sniff(self, data: bytes) -> bool:
        return is_pdf(data) or is_tiff(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        caller = _fact(self.facts, "caller", "fax_caller")
        provider = _fact(self.facts, "provider", "fax_provider")
        fax = etree.Element("Fax")
        if caller:
            etree.SubElement(fax, "Caller").text = xml_text(caller)
        pages = etree.SubElement(fax, "Pages")
        if provider:
            etree.SubElement(fax, "Provider").text = xml_text(provider)
        doc = etree.SubElement(fax, "Document")
        if self.filename:
            doc.set("filename", xml_text(self.filename))

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
        if page_count is None:
            fax.remove(pages)  # canonical XML omits what is unknown
        else:
            pages.text = str(page_count)
        if text is not None:
            fax.append(text)
        yield DocumentUnit(
            standard=self.standard,
            doc_type="fax",
            tree=fax,
            sender={"fax": caller} if caller else {},
        )
