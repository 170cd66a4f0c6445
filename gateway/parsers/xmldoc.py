"""XML documents (standard ``XML``, type = local name of the root element).

The canonical XML of an XML document is the document itself, parsed through
:mod:`gateway.xmlsafe`: entities are not expanded, no DTD is loaded and nothing is
fetched, so a billion-laughs or external-entity document stays small and local
(entity references remain unexpanded reference nodes in the tree).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator

from lxml import etree

from gateway import xmlsafe
from gateway.errors import ParseError, Position, TooLarge
from gateway.parsers.base import DocumentUnit

# after an optional BOM and whitespace: a declaration, doctype, comment, PI or tag
_XML_START = re.compile(rb"\A(?:<\?xml[\s?]|<!DOCTYPE\s|<!--|<\?[A-Za-z_]|<[A-Za-z_:][-\w.:]*[\s/>])")


def looks_like_xml(data: bytes) -> bool:
    head = data[:1024]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        head = head.decode("utf-16", "replace").encode("utf-8")
    head = head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n")
    return bool(_XML_START.match(head))


def has_xml_declaration(data: bytes) -> bool:
    """Stricter check used for attachments, where ``<`` alone could be HTML."""
    head = data[:256]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        head = head.decode("utf-16", "replace").encode("utf-8")
    return head.removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n").startswith(b"<?xml")


class XmlParser:
    standard: str = "XML"

    def sniff(self, data: bytes) -> bool:
        return looks_like_xml(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        if len(data) > xmlsafe.MAX_XML_BYTES:
            raise TooLarge(f"XML document of {len(data)} bytes exceeds {xmlsafe.MAX_XML_BYTES}")
        try:
            root = xmlsafe.parse_bytes(data).getroot()
        except etree.XMLSyntaxError as exc:
            line, column = exc.position
            raise ParseError(
                f"XML is not well-formed or was refused: {exc.msg}", Position(line=line, column=column)
            ) from exc
        yield DocumentUnit(standard=self.standard, doc_type=etree.QName(root).localname, tree=root)
