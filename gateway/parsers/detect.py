"""Format detection: which parser reads these bytes.

Rules, first match wins (content is always checked; names and channels only steer
between formats the content allows):

1. channel ``fax`` and the bytes are a PDF or TIFF: :class:`FaxParser` (with the
   transport ``facts``: caller, provider).
2. X12: ``ISA`` after an optional BOM and whitespace: ``X12Parser``.
3. EDIFACT: ``UNA`` + six service characters, or ``UNB`` + a non-alphanumeric
   separator, after optional BOM/whitespace: ``EdifactParser``.
4. EDI file names: a file named ``*.edi``, ``*.x12`` or ``*.edifact`` (last
   extension, case-insensitive) that is not EDI by rules 2-3 raises
   :class:`UnknownFormat` ("file X.edi is not EDI: ..."), so it is quarantined and an
   administrator sees it -- a partner dropped something odd into an EDI inbox.
   Not applied on channel ``email``, where the bytes are the message itself.
5. E-mail: channel ``email``, a ``.eml`` file name, or an RFC 5322 header block at
   the start (header lines incl. one e-mail-only name such as ``From``,
   ``Received``, ``Return-Path``, ``MIME-Version``, ``Message-ID``, then a blank
   line): :class:`EmailParser`, with the fax provider rules of ``ParseOptions`` (a
   recognised fax-to-mail notice comes out as a ``FAX`` unit).
6. XML: ``<?xml``, a doctype/comment/PI or ``<`` + a name, after BOM/whitespace:
   :class:`XmlParser`.
7. PDF: ``%PDF-``: :class:`PdfParser`.
8. CSV: a ``.csv``/``.tsv`` file name, or content where at least two records split
   into the same number (2+) of fields with one of ``,`` ``;`` tab ``|`` and most
   fields do not start with a blank (which is prose: "Hello, we need ..."):
   :class:`CsvParser`.
9. Text: decodes as UTF-8 (or UTF-16 with BOM, or cp1252) with under 1 % control
   characters: :class:`TextParser` (recorded, not quarantined).
10. Otherwise (empty input, binary data) :class:`UnknownFormat`.

So ``x12/INVALID_edinet_not_edi.edi`` (27 bytes of base64-looking text) is
quarantined when it arrives with its name (rule 4) and recorded as ``TEXT`` when it
arrives nameless (rule 9).

X12 and EDIFACT parsers are imported lazily, so this module works (and reports
those formats as unsupported) before they are installed.

Attachments of e-mails go through :func:`detect_attachment`, which only picks
business documents (X12, EDIFACT, XML, CSV) and returns ``None`` for the rest.
"""

from __future__ import annotations

import codecs
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import cast

from gateway.errors import EnvelopeError, UnknownFormat
from gateway.fax_rules import DEFAULT_COUNTRY, FaxRule
from gateway.parsers.base import DocumentUnit, Parser
from gateway.parsers.csvdoc import CsvParser, looks_delimited
from gateway.parsers.emaildoc import MAX_PARTS, EmailParser, looks_like_email
from gateway.parsers.faxdoc import FaxParser, is_tiff
from gateway.parsers.textdoc import PdfParser, TextParser, is_pdf, looks_like_text
from gateway.parsers.xmldoc import XmlParser, has_xml_declaration, looks_like_xml

EDI_EXTENSIONS = frozenset({".edi", ".x12", ".edifact"})
CSV_EXTENSIONS = frozenset({".csv", ".tsv"})
CSV_MEDIA_TYPES = frozenset(
    {"text/csv", "text/comma-separated-values", "application/csv", "text/tab-separated-values", "text/x-csv"}
)
XML_MEDIA_TYPES = frozenset({"text/xml", "application/xml"})
EDI_MEDIA_TYPES = frozenset({"application/edi-x12", "application/edifact", "application/edi-consent"})
#: media types whose content may be an untyped document worth sniffing for XML
_GENERIC_MEDIA_TYPES = frozenset({"application/octet-stream", "text/plain", ""})


def _start(data: bytes) -> bytes:
    return data[:512].removeprefix(codecs.BOM_UTF8).lstrip(b" \t\r\n\x00")


def is_x12(data: bytes) -> bool:
    return _start(data).startswith(b"ISA")


def is_edifact(data: bytes) -> bool:
    head = _start(data)
    if head.startswith(b"UNA"):
        return len(head) >= 9
    return head.startswith(b"UNB") and len(head) > 3 and not chr(head[3]).isalnum()


def _load(module: str, name: str, what: str) -> Parser:
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UnknownFormat(f"{what} is recognised but the {what} parser is not installed") from exc
    return cast(Parser, cls())


def _x12() -> Parser:
    return _load("gateway.parsers.x12", "X12Parser", "X12")


def _edifact(options: ParseOptions | None = None) -> Parser:
    try:
        from gateway.parsers.edifact import EdifactParser
    except ImportError as exc:
        raise UnknownFormat("EDIFACT is recognised but the EDIFACT parser is not installed") from exc
    opts = options or ParseOptions()
    return EdifactParser(strict=opts.strict_edifact_envelopes, on_problem=opts.on_problem)


@dataclass(frozen=True)
class ParseOptions:
    """Choices the pipeline makes for the parsers.

    ``strict_edifact_envelopes`` off: UNT/UNE/UNZ count and reference mismatches
    (common in real partners' files) are reported to ``on_problem`` and the messages
    are kept; structural faults are always errors. ``fax_rules`` (from
    ``config/fax-providers``) let the e-mail parser recognise fax-to-mail notices;
    callers' numbers are read in ``fax_default_country``. ``max_mime_parts`` bounds
    the parts of one e-mail (``limits.max_mime_parts``).
    """

    strict_edifact_envelopes: bool = False
    on_problem: Callable[[EnvelopeError], None] | None = None
    fax_rules: tuple[FaxRule, ...] = ()
    fax_default_country: str = DEFAULT_COUNTRY
    max_mime_parts: int = MAX_PARTS


def _email(options: ParseOptions | None) -> EmailParser:
    opts = options or ParseOptions()
    return EmailParser(
        max_parts=opts.max_mime_parts,
        fax_rules=opts.fax_rules,
        fax_default_country=opts.fax_default_country,
    )


def _extension(filename: str | None) -> str:
    return os.path.splitext(filename or "")[1].lower()


def _preview(data: bytes) -> str:
    return repr(data[:16])


def detect(
    data: bytes,
    *,
    channel: str,
    filename: str | None = None,
    facts: Mapping[str, str] | None = None,
    options: ParseOptions | None = None,
) -> Parser:
    """The parser for ``data`` (rules in the module docstring). Raises UnknownFormat."""
    channel = str(channel).lower()
    extension = _extension(filename)
    if not data.strip():
        raise UnknownFormat("empty document: nothing to parse")
    if channel == "fax" and (is_pdf(data) or is_tiff(data)):
        return FaxParser(facts=facts, filename=filename)
    if is_x12(data):
        return _x12()
    if is_edifact(data):
        return _edifact(options)
    if extension in EDI_EXTENSIONS and channel != "email":
        raise UnknownFormat(f"file {filename} is not EDI: it starts with {_preview(data)}")
    if channel == "email" or extension == ".eml" or looks_like_email(data):
        return _email(options)
    if looks_like_xml(data):
        return XmlParser()
    if is_pdf(data):
        return PdfParser(filename=filename)
    if extension in CSV_EXTENSIONS or looks_delimited(data):
        return CsvParser(delimiter="\t" if extension == ".tsv" else None)
    if looks_like_text(data):
        return TextParser(filename=filename)
    raise UnknownFormat(f"not a document the gateway understands: first bytes {_preview(data)}")


def parse_document(
    data: bytes,
    *,
    channel: str,
    filename: str | None = None,
    facts: Mapping[str, str] | None = None,
    options: ParseOptions | None = None,
) -> Iterator[DocumentUnit]:
    """Detect and parse; yields units (consume them all before trusting them)."""
    yield from detect(data, channel=channel, filename=filename, facts=facts, options=options).parse(data)


def detect_attachment(data: bytes, *, filename: str | None, media_type: str) -> Parser | None:
    """The parser for an e-mail attachment that is a business document, else None.

    X12 and EDIFACT are found by content whatever the attachment is called. A file
    named or typed as EDI that is not EDI raises UnknownFormat (recorded on the
    attachment). XML needs an XML media type or ``.xml`` name, or an ``<?xml``
    declaration in an untyped part (``<`` alone would take every HTML part). CSV
    needs a CSV media type or ``.csv``/``.tsv`` name: prose attachments must not
    become orders."""
    media_type = media_type.lower()
    extension = _extension(filename)
    if is_x12(data):
        return _x12()
    if is_edifact(data):
        return _edifact()
    if extension in EDI_EXTENSIONS or media_type in EDI_MEDIA_TYPES:
        raise UnknownFormat(
            f"attachment {filename or media_type} is not EDI: it starts with {_preview(data)}"
        )
    if media_type.startswith(("image/", "audio/", "video/")) or media_type == "text/html":
        return None
    if (
        media_type in XML_MEDIA_TYPES
        or extension == ".xml"
        or (media_type in _GENERIC_MEDIA_TYPES and has_xml_declaration(data))
    ):
        return XmlParser()
    if media_type in CSV_MEDIA_TYPES or extension in CSV_EXTENSIONS:
        return CsvParser(delimiter="\t" if extension == ".tsv" or "tab-separated" in media_type else None)
    return None
