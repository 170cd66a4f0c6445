"""XML parsing with every door closed: no entities, no DTD loading, no network.

All XML the gateway reads from outside (documents, mapping files, XSLT) goes
through these helpers so the secure settings live in one place.
"""

from __future__ import annotations

from lxml import etree

MAX_XML_BYTES = 50 * 1024 * 1024


def parser(*, remove_blank_text: bool = False) -> etree.XMLParser:
    """A fresh parser (lxml parsers are not thread-safe to share)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=remove_blank_text,
        remove_comments=False,
    )


def parse_bytes(data: bytes, *, base_url: str | None = None) -> etree._ElementTree:
    """Parse untrusted XML. Raises etree.XMLSyntaxError on bad input."""
    root = etree.fromstring(data, parser(), base_url=base_url or "")
    return etree.ElementTree(root)


def xslt_access_control() -> etree.XSLTAccessControl:
    """XSLT may not read or write files or reach the network."""
    # lxml-stubs predates these keywords; lxml itself has had them since 2.x.
    return etree.XSLTAccessControl(  # type: ignore[call-arg]
        read_file=False, write_file=False, create_dir=False, read_network=False, write_network=False
    )


def compile_xslt(doc: etree._ElementTree | etree._Element) -> etree.XSLT:
    return etree.XSLT(doc, access_control=xslt_access_control())
