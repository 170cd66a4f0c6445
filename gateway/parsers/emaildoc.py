"""E-mail messages (standard ``EMAIL``, type ``message``).

Named ``emaildoc`` so it does not shadow the standard library's ``email``.

Canonical shape (``docs/canonical-xml.md``, "E-mail")::

    <Email>
      <Header name="Subject">...</Header> ...        every header, decoded
      <MessageId>..</MessageId><From address="a@b.test" name="A"/><To address=".."/>
      <Cc address=".."/><Subject>..</Subject><Date>2024-01-01T10:00:00+00:00</Date>
      <InReplyTo>..</InReplyTo><References>..</References><Conversation>..</Conversation>
      <Body media_type="text/plain">...</Body>
      <Attachment filename="po.csv" media_type="text/csv" size="123" sha256="..."/>
    </Email>

Decisions:

* Parsing uses the stdlib (``BytesParser``, ``policy.default``). Everything read from
  it is defensive: malformed headers fall back to a plain RFC 2047 decode, raw 8-bit
  header bytes are read as UTF-8 (RFC 6532) or else Latin-1, unknown body charsets
  fall back to UTF-8/Latin-1 with replacement. A message never fails for its
  encodings, only for its size or shape (``max_parts``, ``max_depth``,
  ``max_attachment_bytes``).
* ``MessageId`` and ``InReplyTo`` hold the bare id (no angle brackets);
  ``References`` is the header as received; ``Conversation`` is the thread's root
  id: the first of ``References``, else ``In-Reply-To``, else the own Message-ID. A ``Date`` without zone (``-0000``) is
  taken as UTC.
* Body: the ``text/plain`` body part, else text extracted from the HTML body
  (``Body media_type="text/html"``). No body part (e.g. TNEF only): no ``Body``.
* Attachments: every leaf part that is not the body and that has a filename, an
  ``attachment`` disposition or a non-text media type, in document order, flattened
  across forwarded messages. Extra attributes: ``disposition``,
  ``transfer_encoding`` (only for uuencode, which the stdlib decodes transparently,
  so the record shows the bytes were uudecoded), ``tnef="true"`` for winmail.dat,
  ``forwarded="true"`` for ``message/rfc822`` parts (sha256 of their re-serialised
  bytes: the stdlib keeps no offsets into the original), ``pages`` and ``<Text>``
  for PDFs (bounded text layer), ``pages`` for TIFFs, ``note`` when a PDF/TIFF is
  unreadable, ``standard`` and ``units`` when it was parsed as a business document,
  ``error`` when it looked like one but did not parse. Filenames are reduced to
  their last path component, since they end up in storage paths.
* Business documents among the attachments (X12, EDIFACT, XML, CSV: see
  :func:`gateway.parsers.detect.detect_attachment`) are parsed and returned as the
  e-mail unit's ``children``, numbered on from the e-mail (index 2, 3, ...). A
  broken one does not fail the e-mail: its ``<Attachment>`` carries ``error``
  (the pipeline puts it on the record and in the audit log: :func:`attachment_errors`).
* Fax-to-mail: with fax provider rules (:mod:`gateway.fax_rules`), a message from a
  provider's sender whose subject/body fit its patterns and which carries a PDF or
  TIFF is a fax: the unit is standard ``FAX`` (see ``faxdoc``), the e-mail's
  canonical tree inside it as ``<Fax><Email>``, its sender the caller's fax number
  (E.164) next to the e-mail addresses. Anything less stays an e-mail.
"""

from __future__ import annotations

import dataclasses
import email.errors
import email.header
import email.message
import email.policy
import email.utils
import re
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any

import lxml.html
from lxml import etree

from gateway.errors import InputError, ParseError, Position, Stage, TooLarge
from gateway.fax_rules import DEFAULT_COUNTRY, FaxDocument, FaxMatch, FaxRule, match_notice, to_e164
from gateway.parsers.base import DocumentUnit
from gateway.parsers.faxdoc import FaxFacts, build_fax, fax_json, is_tiff, tiff_page_count
from gateway.parsers.textdoc import (
    MAX_TEXT_CHARS,
    add_pdf_info,
    decode_text,
    fix_surrogates,
    is_pdf,
    pdf_info,
    sha256_hex,
    text_element,
    xml_text,
)

MAX_PARTS = 500
MAX_DEPTH = 10
MAX_ATTACHMENT_BYTES = 50 * 1024 * 1024
#: PDF attachments are secondary: smaller text bounds than a PDF received alone
ATTACHMENT_PDF_PAGES = 50
ATTACHMENT_PDF_CHARS = 200_000

# The stdlib header parser has a history of leaking these on malformed input
# (CPython issues around _header_value_parser); each means "header is malformed",
# and we fall back to a plainer decode instead of failing the message.
_HEADER_FAILURES: tuple[type[Exception], ...] = (
    email.errors.MessageError,
    ValueError,
    IndexError,
    TypeError,
    AttributeError,
    LookupError,
)

_SERIALISE_FAILURES: tuple[type[Exception], ...] = (*_HEADER_FAILURES, UnicodeError)

_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")
#: header names that make a text block an e-mail when they open it
_MAIL_HEADERS = frozenset(
    {
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"received",
        b"return-path",
        b"mime-version",
        b"message-id",
        b"delivered-to",
        b"reply-to",
        b"sender",
        b"x-mailer",
        b"x-original-to",
        b"dkim-signature",
        b"authentication-results",
        b"arc-seal",
        b"content-type",
    }
)
_TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"
_UUENCODE = frozenset({"x-uuencode", "uuencode", "x-uue", "uue"})


def looks_like_email(data: bytes) -> bool:
    """An RFC 5322 header block at the very start: header (or folded) lines up to a
    blank line, with at least one header name that only e-mail uses."""
    head = data[:16384].removeprefix(b"\xef\xbb\xbf")
    if head.startswith(b"From "):  # mbox separator line
        head = head.partition(b"\n")[2]
    lines = head.splitlines()
    if not lines or not _HEADER_LINE.match(lines[0]):
        return False
    known = False
    complete = False
    for line in lines:
        if not line.strip():
            complete = True
            break
        if line[:1] in (b" ", b"\t"):
            continue
        if not _HEADER_LINE.match(line):
            return False
        known = known or line.split(b":", 1)[0].strip().lower() in _MAIL_HEADERS
    # a message may be all headers; a sample cut mid-header cannot be judged
    return known and (complete or len(data) <= len(head))


def _decode_words(raw: str) -> str:
    """RFC 2047 decode without the modern header parser (the fallback)."""
    try:
        pieces = email.header.decode_header(raw)
    except _HEADER_FAILURES:
        return raw
    out: list[str] = []
    for chunk, charset in pieces:
        out.append(decode_text(chunk, charset) if isinstance(chunk, bytes) else chunk)
    return "".join(out)


def decode_header(name: str, raw: str) -> str:
    try:
        value = str(email.policy.default.header_fetch_parse(name, raw))
    except _HEADER_FAILURES:
        value = _decode_words(re.sub(r"\r?\n(?=[ \t])", "", raw))
    return fix_surrogates(value)


def _raw_headers(part: email.message.Message, name: str) -> list[str]:
    return [str(v) for k, v in part.raw_items() if k.lower() == name.lower()]


def _raw_param(part: email.message.Message, header: str, param: str) -> str | None:
    """A parameter read with the legacy parser, which keeps non-standard values
    (unquoted encoded words such as ``filename==?utf-8?B?...?=``) that the modern
    one drops as invalid."""
    for raw in _raw_headers(part, header):
        legacy = email.message.Message()
        # surrogates first: the legacy policy would turn raw 8-bit bytes into U+FFFD
        legacy[header] = fix_surrogates(raw)
        value = legacy.get_param(param, header=header)
        if isinstance(value, tuple):
            return str(email.utils.collapse_rfc2231_value(value))
        if value:
            return str(value)
    return None


def _filename(part: email.message.Message) -> str:
    # The legacy parameter parser goes first: it keeps raw 8-bit bytes (recoverable,
    # where the modern parser substitutes U+FFFD), Windows paths' backslashes and
    # unquoted encoded words; it still decodes RFC 2231.
    name = _raw_param(part, "content-disposition", "filename") or _raw_param(part, "content-type", "name")
    if not name:
        try:
            name = part.get_filename()
        except _HEADER_FAILURES:
            name = None
    if not name:
        return ""
    if "=?" in name:  # RFC 2047 inside a parameter: wrong, but what Outlook & co. send
        name = _decode_words(name)
    name = fix_surrogates(name).strip().strip('"')
    return re.split(r"[/\\]", name)[-1]


def _addresses(msg: email.message.Message, name: str) -> list[tuple[str, str]]:
    """(display name, address) pairs of an address header."""
    pairs: list[tuple[str, str]] = []
    try:
        for header in msg.get_all(name) or []:
            for address in getattr(header, "addresses", ()):
                pairs.append((str(address.display_name), str(address.addr_spec)))
    except _HEADER_FAILURES:
        decoded = [decode_header(name, raw) for raw in _raw_headers(msg, name)]
        pairs = email.utils.getaddresses(decoded)
    return [(fix_surrogates(n), fix_surrogates(a)) for n, a in pairs if n or a]


def _date(msg: email.message.Message) -> datetime | None:
    value: datetime | None = None
    try:
        header = msg.get("Date")
        value = getattr(header, "datetime", None)
    except _HEADER_FAILURES:
        value = None
    if value is None:
        for raw in _raw_headers(msg, "Date"):
            try:
                value = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                continue
            break
    if value is not None and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _msgid(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and ">" in value:
        return value[1 : value.index(">")].strip()
    return value


def reference_ids(references: str) -> list[str]:
    """The message ids of a ``References`` header, oldest first, without brackets."""
    ids = re.findall(r"<([^<>\s]+)>", references)
    return ids or references.split()


def conversation_root(message_id: str, in_reply_to: str, references: str) -> str:
    """The thread's root Message-ID: the first of References, else In-Reply-To, else
    the message's own id (RFC 5322 3.6.4: References lists the thread from its root)."""
    ids = reference_ids(references)
    return ids[0] if ids else (in_reply_to or message_id)


def _fax_extra(tree: etree._Element) -> dict[str, Any]:
    fax = fax_json(tree)
    return {} if fax is None else {"fax": fax}


def attachment_errors(tree: etree._Element) -> list[tuple[str, str]]:
    """(filename or media type, reason) of every attachment that looked like a business
    document but did not parse."""
    return [
        (el.get("filename") or el.get("media_type") or "attachment", el.get("error") or "")
        for el in tree.iter("Attachment")
        if el.get("error")
    ]


def html_to_text(html: bytes) -> str:
    """Visible text of an HTML body. lxml's HTML parser does not load anything."""
    parser = lxml.html.HTMLParser(encoding="utf-8", no_network=True, remove_comments=True, remove_pis=True)
    try:
        doc = lxml.html.document_fromstring(html, parser=parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return ""
    for hidden in list(doc.iter("script", "style", "head")):
        if isinstance(hidden, lxml.html.HtmlElement):
            hidden.drop_tree()  # keeps the tail text, unlike remove()
    # block boundaries become line breaks, otherwise cells and paragraphs run together
    for el in doc.iter("br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table"):
        # libxml2's HTML parser lets control characters through that lxml then refuses
        el.tail = "\n" + xml_text(el.tail or "")
    text = "".join(str(t) for t in doc.itertext())
    lines = [re.sub(r"[ \t\xa0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _children(part: email.message.Message) -> Sequence[email.message.Message]:
    payload = part.get_payload() if part.is_multipart() else None
    return [p for p in payload if isinstance(p, email.message.Message)] if isinstance(payload, list) else []


def _serialise(parts: Sequence[email.message.Message]) -> bytes:
    out: list[bytes] = []
    for part in parts:
        try:
            # compat32 writes headers back as stored, which is closest to the original
            out.append(part.as_bytes(policy=email.policy.compat32))
        except _SERIALISE_FAILURES:
            out.append(str(part).encode("utf-8", "surrogateescape"))
    return b"\n".join(out)


class EmailParser:
    standard: str = "EMAIL"

    def __init__(
        self,
        *,
        max_parts: int = MAX_PARTS,
        max_depth: int = MAX_DEPTH,
        max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
        max_body_chars: int = MAX_TEXT_CHARS,
        parse_attachments: bool = True,
        fax_rules: Sequence[FaxRule] = (),
        fax_default_country: str = DEFAULT_COUNTRY,
    ) -> None:
        self.max_parts = max_parts
        self.max_depth = max_depth
        self.max_attachment_bytes = max_attachment_bytes
        self.max_body_chars = max_body_chars
        self.parse_attachments = parse_attachments
        self.fax_rules = tuple(fax_rules)
        self.fax_default_country = fax_default_country

    def sniff(self, data: bytes) -> bool:
        return looks_like_email(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        try:
            msg = BytesParser(policy=email.policy.default).parsebytes(data)
        except RecursionError as exc:
            raise ParseError("MIME structure is nested too deeply to parse", Position()) from exc
        self._check_shape(msg)

        root = etree.Element("Email")
        for name, raw in msg.raw_items():
            header = etree.SubElement(root, "Header")
            header.set("name", xml_text(name))
            value = decode_header(name, str(raw))
            if value:
                header.text = xml_text(value)

        message_id = _msgid(" ".join(decode_header("Message-ID", r) for r in _raw_headers(msg, "Message-ID")))
        if message_id:
            etree.SubElement(root, "MessageId").text = xml_text(message_id)
        senders = _addresses(msg, "From")
        recipients = _addresses(msg, "To")
        for tag, pairs in (("From", senders), ("To", recipients), ("Cc", _addresses(msg, "Cc"))):
            for display, address in pairs:
                el = etree.SubElement(root, tag)
                if address:
                    el.set("address", xml_text(address))
                if display:
                    el.set("name", xml_text(display))
        subject = " ".join(decode_header("Subject", r) for r in _raw_headers(msg, "Subject"))
        if subject:
            etree.SubElement(root, "Subject").text = xml_text(subject)
        sent = _date(msg)
        if sent is not None:
            etree.SubElement(root, "Date").text = sent.isoformat()
        reply_to = _msgid(" ".join(decode_header("In-Reply-To", r) for r in _raw_headers(msg, "In-Reply-To")))
        if reply_to:
            etree.SubElement(root, "InReplyTo").text = xml_text(reply_to)
        references = " ".join(decode_header("References", r) for r in _raw_headers(msg, "References")).strip()
        if references:
            etree.SubElement(root, "References").text = xml_text(references)
        conversation = conversation_root(message_id, reply_to, references)
        if conversation:
            etree.SubElement(root, "Conversation").text = xml_text(conversation)

        walk = _Walk(self)
        body = walk.message(msg)
        if body is not None:
            root.append(body)
        for element in walk.elements:
            root.append(element)

        children = tuple(dataclasses.replace(u, index=i) for i, u in enumerate(walk.units, start=2))
        sender: dict[str, str] = {}
        if senders and senders[0][1]:
            address = senders[0][1].lower()
            sender["email"] = address
            if "@" in address:
                sender["email_domain"] = address.rsplit("@", 1)[1]
        receiver = {"email": recipients[0][1].lower()} if recipients and recipients[0][1] else {}
        fax = self._fax(sender.get("email", ""), subject, body, walk.documents)
        if fax is not None:
            yield self._fax_unit(fax, root, message_id, sender, receiver, children, walk)
            return
        yield DocumentUnit(
            standard=self.standard,
            doc_type="message",
            tree=root,
            control_number=message_id,
            sender=sender,
            receiver=receiver,
            index=1,
            children=children,
            attachments=tuple(walk.attachments),
            problems=tuple(attachment_errors(root)),
        )

    def _fax(
        self, address: str, subject: str, body: etree._Element | None, documents: Sequence[FaxDocument]
    ) -> FaxMatch | None:
        if not self.fax_rules or not address or not documents:
            return None
        text = (body.text or "") if body is not None else ""
        return match_notice(self.fax_rules, sender=address, subject=subject, body=text, documents=documents)

    def _fax_unit(
        self,
        fax: FaxMatch,
        email_tree: etree._Element,
        message_id: str,
        sender: dict[str, str],
        receiver: dict[str, str],
        children: tuple[DocumentUnit, ...],
        walk: _Walk,
    ) -> DocumentUnit:
        """A recognised fax notice: a FAX unit holding the notice e-mail, whose sender
        is the caller's fax number as well as the e-mail addresses."""
        raw_caller = fax.values.get("caller", "")
        caller = to_e164(raw_caller, self.fax_default_country) if raw_caller else None
        facts = FaxFacts(
            caller=caller or "",
            caller_as_received=raw_caller,
            caller_name=fax.values.get("caller_name", ""),
            pages=fax.values.get("pages", ""),
            provider=fax.rule.name,
            time=fax.values.get("time", ""),
        )
        tree = build_fax(fax.document.data, facts, filename=fax.document.filename or None)
        tree.append(email_tree)
        fax_sender = dict(sender)
        if caller:
            fax_sender["fax"] = caller
        elif raw_caller:
            fax_sender["fax"] = re.sub(r"[^\d+]", "", raw_caller)  # as received: still searchable
        return DocumentUnit(
            standard="FAX",
            doc_type="fax",
            tree=tree,
            control_number=message_id,
            sender=fax_sender,
            receiver=receiver,
            index=1,
            children=children,
            attachments=tuple(walk.attachments),
            problems=tuple(attachment_errors(tree)),
            extra=_fax_extra(tree),
        )

    def _check_shape(self, msg: email.message.Message) -> None:
        """Bound the work before anything recursive walks the tree."""
        count = 0
        stack: list[tuple[email.message.Message, int]] = [(msg, 0)]
        while stack:
            part, depth = stack.pop()
            count += 1
            if count > self.max_parts:
                raise ParseError(f"message has more than {self.max_parts} MIME parts", Position())
            if depth > self.max_depth:
                raise ParseError(f"MIME parts nested deeper than {self.max_depth} levels", Position())
            # a forwarded message sits at the depth of its message/rfc822 wrapper, so
            # a forward costs two levels (wrapper, its multipart), not three
            step = 0 if part.get_content_type() in ("message/rfc822", "message/global") else 1
            stack.extend((child, depth + step) for child in _children(part))


class _Walk:
    """Collects body, attachments and child units of one message (and those it forwards)."""

    def __init__(self, parser: EmailParser) -> None:
        self.parser = parser
        self.elements: list[etree._Element] = []
        self.attachments: list[dict[str, str | int]] = []
        self.units: list[DocumentUnit] = []
        #: PDF and TIFF attachments of the outermost message: fax document candidates
        self.documents: list[FaxDocument] = []
        self._forwarded = 0

    def message(self, msg: email.message.Message) -> etree._Element | None:
        """Walk ``msg``; returns its ``<Body>`` element."""
        body_part: email.message.Message | None = None
        if isinstance(msg, email.message.EmailMessage):
            try:
                body_part = msg.get_body(preferencelist=("plain", "html"))
            except _HEADER_FAILURES:
                body_part = None
        self._walk(msg, body_part)
        if body_part is None:
            return None
        payload = body_part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        text = decode_text(raw, body_part.get_content_charset())
        media_type = xml_text(body_part.get_content_type())
        if media_type == "text/html":
            text = html_to_text(text.encode("utf-8", "surrogatepass"))
        else:  # the record's text has one line ending, whatever the wire had
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        body = text_element("Body", text, self.parser.max_body_chars)
        body.set("media_type", media_type)
        return body

    def _walk(self, part: email.message.Message, body_part: email.message.Message | None) -> None:
        media_type = part.get_content_type()
        if media_type in ("message/rfc822", "message/global"):
            inner = _children(part)
            self._record(part, _serialise(inner), forwarded=True)
            self._forwarded += 1
            for message in inner:
                self.message(message)  # its body belongs to it; only its attachments count
            self._forwarded -= 1
            return
        if part.is_multipart() and part.get_content_maintype() == "multipart":
            for child in _children(part):
                self._walk(child, body_part)
            return
        if part is body_part:
            return
        if part.is_multipart():  # message/delivery-status & co.: header blocks
            self._record(part, _serialise(_children(part)))
            return
        filename = _filename(part)
        disposition = part.get_content_disposition()
        if filename or disposition == "attachment" or part.get_content_maintype() != "text":
            payload = part.get_payload(decode=True)
            self._record(part, payload if isinstance(payload, bytes) else b"", filename=filename)

    def _record(
        self,
        part: email.message.Message,
        data: bytes,
        *,
        filename: str | None = None,
        forwarded: bool = False,
    ) -> None:
        limit = self.parser.max_attachment_bytes
        if len(data) > limit:
            raise TooLarge(f"attachment of {len(data)} bytes exceeds the limit of {limit}", stage=Stage.PARSE)
        if filename is None:
            filename = _filename(part)
        media_type = xml_text(part.get_content_type())  # a mangled header may carry controls
        info: dict[str, str | int] = {
            "filename": filename,
            "media_type": media_type,
            "size": len(data),
            "sha256": sha256_hex(data),
        }
        self.attachments.append(info)
        el = etree.Element("Attachment")
        if filename:
            el.set("filename", xml_text(filename))
        el.set("media_type", media_type)
        el.set("size", str(len(data)))
        el.set("sha256", str(info["sha256"]))
        disposition = part.get_content_disposition()
        if disposition:
            el.set("disposition", xml_text(disposition))
        encoding = part.get("Content-Transfer-Encoding")
        if encoding is not None and str(encoding).strip().lower() in _UUENCODE:
            el.set("transfer_encoding", str(encoding).strip().lower())
        if forwarded:
            el.set("forwarded", "true")
        self.elements.append(el)
        if forwarded:
            return

        lowered = filename.lower()
        if (
            media_type in ("application/ms-tnef", "application/vnd.ms-tnef")
            or lowered == "winmail.dat"
            or data.startswith(_TNEF_SIGNATURE)
        ):
            el.set("tnef", "true")
        elif is_pdf(data):
            add_pdf_info(el, pdf_info(data, max_pages=ATTACHMENT_PDF_PAGES, max_chars=ATTACHMENT_PDF_CHARS))
            if not self._forwarded:
                self.documents.append(FaxDocument(filename, "application/pdf", data))
        elif is_tiff(data):
            try:
                el.set("pages", str(tiff_page_count(data)))
            except ValueError as exc:
                el.set("note", xml_text(f"unreadable TIFF: {exc}"))
            if not self._forwarded:
                self.documents.append(FaxDocument(filename, "image/tiff", data))
        elif self.parser.parse_attachments:
            self._parse_document(el, data, filename, media_type)

    def _parse_document(self, el: etree._Element, data: bytes, filename: str, media_type: str) -> None:
        # imported here: detect imports this module
        from gateway.parsers.detect import detect_attachment

        try:
            parser = detect_attachment(data, filename=filename or None, media_type=media_type)
            if parser is None:
                return
            el.set("standard", parser.standard)
            units = list(parser.parse(data))  # whole iterator: trailer checks come last
        except InputError as exc:
            el.set("error", xml_text(exc.message[:1000]))
            return
        el.set("units", str(len(units)))
        self.units.extend(units)
