"""Fallback parsers: plain text (standard ``TEXT``) and PDF (standard ``PDF``).

Neither is a business document the mappings understand, but the gateway still
records what arrived: a ``<Document>`` with media type, size, sha256, filename and
the text (see ``docs/canonical-xml.md``, "Plain text and PDF fallback").

This module also holds the small helpers the other non-EDI parsers share (text
sanitising for XML, bounded PDF text extraction), so the bounds live in one place.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from gateway.errors import ParseError, Position
from gateway.parsers.base import DocumentUnit

#: Bounds on PDF text extraction: pypdf's work grows with page count and content
#: stream size, and a hostile PDF can make it spin, so we stop early.
MAX_PDF_PAGES = 200
MAX_TEXT_CHARS = 1_000_000
MAX_PDF_SECONDS = 30.0

#: pypdf raises PyPdfError for what it recognises as broken, but malformed files
#: routinely leak plain Python errors out of its object parser and filters
#: (bad dictionary keys, short streams, wrong types, deflate errors, recursion in
#: cyclic object graphs). Each of those means "this PDF is broken", never a bug of
#: ours, so they are caught together -- but only around pypdf calls.
PYPDF_FAILURES: tuple[type[BaseException], ...] = (
    PyPdfError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    AssertionError,
    RecursionError,
    OverflowError,
    zlib.error,
    struct.error,
)

# XML 1.0 forbids most C0 controls, lone surrogates and U+FFFE/U+FFFF; lxml refuses
# them, so they are replaced rather than failing the whole document.
_NOT_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_SURROGATE_RUN = re.compile("[\udc80-\udcff]+")


def fix_surrogates(text: str) -> str:
    """Turn ``surrogateescape`` bytes (raw 8-bit bytes in headers) back into text.

    Raw bytes are tried as UTF-8 first (RFC 6532), else taken as Latin-1, which is
    what pre-MIME mailers wrote."""

    def repl(m: re.Match[str]) -> str:
        raw = bytes(ord(c) - 0xDC00 for c in m.group(0))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    return _SURROGATE_RUN.sub(repl, text)


def xml_text(text: str) -> str:
    """``text`` made safe for an lxml text node or attribute."""
    return _NOT_XML_CHAR.sub("\ufffd", fix_surrogates(text))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode_text(data: bytes, charset: str | None = None) -> str:
    """Decode bytes leniently; never raises.

    Order: BOM, then the declared charset (strict), then UTF-8 (strict), then the
    declared charset with replacement, then cp1252/Latin-1. UTF-8 before the
    replacement pass because mislabelled UTF-8 (declared GB2312, Latin-1 ...) is the
    most common lie in the wild."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", "replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", "replace")
    codec: str | None = None
    if charset:
        try:
            info = codecs.lookup(charset.strip().strip('"'))
        except (LookupError, ValueError):  # ValueError: a NUL inside the label
            info = None
        # a charset label can name a bytes-to-bytes codec (quopri, base64, zlib ...)
        # that str.decode refuses: those are unknown charsets as far as we are concerned
        if info is not None and getattr(info, "_is_text_encoding", True):
            codec = info.name
    if codec:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec:
        return data.decode(codec, "replace")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        # cp1252 leaves five bytes undefined; Latin-1 maps every byte
        return data.decode("latin-1")


def text_element(tag: str, text: str, limit: int = MAX_TEXT_CHARS) -> etree._Element:
    """A ``<tag>`` holding ``text`` cut to ``limit`` characters (``truncated="true"``)."""
    el = etree.Element(tag)
    if len(text) > limit:
        text = text[:limit]
        el.set("truncated", "true")
    el.text = xml_text(text)
    return el


@dataclass(frozen=True)
class PdfInfo:
    """What bounded extraction learnt about a PDF."""

    pages: int | None  # None when the page tree could not be read
    text: str
    truncated: bool = False
    note: str = ""  # why extraction failed or stopped, for the record


def pdf_info(
    data: bytes,
    *,
    max_pages: int = MAX_PDF_PAGES,
    max_chars: int = MAX_TEXT_CHARS,
    max_seconds: float = MAX_PDF_SECONDS,
) -> PdfInfo:
    """Page count and text layer of a PDF, bounded; never raises for a broken PDF."""
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            # most "encrypted" business PDFs only restrict printing/copying and open
            # with the empty user password; anything else stays text-less
            try:
                reader.decrypt("")
            except PYPDF_FAILURES as exc:  # includes pypdf's missing-crypto errors
                return PdfInfo(pages=None, text="", note=f"encrypted: {exc}")
        pages = len(reader.pages)
    except PYPDF_FAILURES as exc:
        return PdfInfo(pages=None, text="", note=f"unreadable PDF: {type(exc).__name__}: {exc}")

    chunks: list[str] = []
    size = 0
    truncated = False
    note = ""
    deadline = time.monotonic() + max_seconds
    for number in range(min(pages, max_pages)):
        if time.monotonic() > deadline:
            truncated, note = True, f"text extraction stopped after {max_seconds:.0f} s"
            break
        try:
            page_text = reader.pages[number].extract_text()
        except PYPDF_FAILURES as exc:
            note = f"page {number + 1}: {type(exc).__name__}: {exc}"
            continue
        if not page_text:
            continue
        chunks.append(page_text)
        size += len(page_text)
        if size >= max_chars:
            truncated = True
            break
    if pages > max_pages:
        truncated = True
    text = "\n".join(chunks)
    if len(text) > max_chars:
        text = text[:max_chars]
    return PdfInfo(pages=pages, text=text, truncated=truncated, note=note[:500])


def _document(data: bytes, media_type: str, filename: str | None) -> etree._Element:
    doc = etree.Element("Document")
    doc.set("media_type", media_type)
    doc.set("size", str(len(data)))
    doc.set("sha256", sha256_hex(data))
    if filename:
        doc.set("filename", xml_text(filename))
    return doc


def _is_mostly_text(text: str) -> bool:
    if not text:
        return True
    sample = text[:65536]
    bad = sum(1 for c in sample if (c < " " and c not in "\t\n\r\f") or c == "\ufffd")
    return bad <= len(sample) // 100


def looks_like_text(data: bytes) -> bool:
    """Whether ``data`` is plausibly human-readable text (detector's last resort)."""
    if not data:
        return False
    head = data[:65536]
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _is_mostly_text(head.decode("utf-16", "replace"))
    if b"\x00" in head:
        return False
    try:
        # a cut in the middle of a multi-byte character at the sample end is fine
        return _is_mostly_text(head.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        if len(data) > len(head) and exc.start >= len(head) - 3:
            return _is_mostly_text(head[: exc.start].decode("utf-8-sig"))
    return _is_mostly_text(head.decode("cp1252", "replace"))


class TextParser:
    """Plain text, recorded as a ``<Document media_type="text/plain">``."""

    standard: str = "TEXT"

    def __init__(self, *, filename: str | None = None, max_chars: int = MAX_TEXT_CHARS) -> None:
        self.filename = filename
        self.max_chars = max_chars

    def sniff(self, data: bytes) -> bool:
        return looks_like_text(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        if not data:
            raise ParseError("empty text document", Position(offset=0))
        doc = _document(data, "text/plain", self.filename)
        text = decode_text(data)
        if text:
            doc.append(text_element("Text", text, self.max_chars))
        yield DocumentUnit(standard=self.standard, doc_type="text", tree=doc)


class PdfParser:
    """A PDF that is not a fax: page count and (bounded) text layer."""

    standard: str = "PDF"

    def __init__(
        self, *, filename: str | None = None, max_pages: int = MAX_PDF_PAGES, max_chars: int = MAX_TEXT_CHARS
    ) -> None:
        self.filename = filename
        self.max_pages = max_pages
        self.max_chars = max_chars

    def sniff(self, data: bytes) -> bool:
        return is_pdf(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        doc = _document(data, "application/pdf", self.filename)
        info = pdf_info(data, max_pages=self.max_pages, max_chars=self.max_chars)
        add_pdf_info(doc, info)
        yield DocumentUnit(standard=self.standard, doc_type="pdf", tree=doc)


def add_pdf_info(el: etree._Element, info: PdfInfo) -> None:
    """Record ``info`` on ``el``: ``pages``/``note`` attributes and a ``<Text>`` child."""
    if info.pages is not None:
        el.set("pages", str(info.pages))
    if info.note:
        el.set("note", xml_text(info.note))
    if info.text.strip():
        text = text_element("Text", info.text, len(info.text))
        if info.truncated:
            text.set("truncated", "true")
        el.append(text)


def is_pdf(data: bytes) -> bool:
    # the PDF spec lets the header sit anywhere in the first 1024 bytes; real
    # senders only ever prepend whitespace or a stray BOM
    return data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"%PDF-")
