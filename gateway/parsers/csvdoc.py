"""CSV orders (standard ``CSV``, type ``order``): one file is one unit.

Canonical shape (``docs/canonical-xml.md``, "CSV")::

    <CSV delimiter="," header="true">
      <Columns><Column index="1" name="PO Number">po_number</Column> ...</Columns>
      <Row line="2"><po_number>PO-1</po_number> ...</Row>
    </CSV>

Decisions:

* Encoding: a BOM wins (UTF-8, UTF-16 as written by Excel's "Unicode text"), else
  strict UTF-8, else cp1252 (what Excel writes on Western Windows), else Latin-1.
* Delimiter: our own heuristic instead of ``csv.Sniffer``. Sniffer guesses from
  character frequencies, picks letters or quotes as delimiters on small samples and
  raises on single-column files. We instead split a sample of records with each
  candidate (``,`` ``;`` tab ``|``) using the real quote-aware reader and take the
  candidate whose most common field count is most consistent across records, then
  the one giving more fields (so ``;`` beats ``,`` in ``1;2,50;3`` with decimal
  commas), then the listed order.
* Header: the first record is a header when every cell is non-empty, short, unique
  and neither number- nor date-like. Exported order files almost always carry a
  header, so an all-text first row is taken as one; callers that know better pass
  ``header=True/False``.
* Field element names: header folded to lower case, runs of characters other than
  letters, digits and ``_`` replaced by ``_``, a leading digit prefixed with
  ``c_``; surrounding blanks of the header cell are dropped first so ``" Qty "``
  becomes ``qty``. Without a header, or for fields beyond the header, ``colN``.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator

from lxml import etree

from gateway.errors import ParseError, Position
from gateway.parsers.base import DocumentUnit
from gateway.parsers.textdoc import decode_text, xml_text

DELIMITERS = (",", ";", "\t", "|")
_SAMPLE_CHARS = 65536
_SAMPLE_RECORDS = 50
_MAX_HEADER_CELL = 100

_NUMBER = re.compile(r"^\s*[-+]?[$€£¥]?\s*[-+]?(\d[\d.,' ]*)?\d([.,]\d*)?\s*%?\s*$")
_DATE = re.compile(r"^\s*\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]\d{1,2}:\d{2}(:\d{2})?)?\s*$")
_NOT_NAME = re.compile(r"[^\w]+")
_NOT_ASCII_NAME = re.compile(r"[^A-Za-z0-9_]+")


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the 1-based line each starts on. Raises csv.Error."""
    # newline="" keeps line breaks inside quoted fields as they were received
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', strict=False)
    line = 1
    for record in reader:
        if record and any(cell.strip() for cell in record):
            yield line, record
        line = reader.line_num + 1


def _score(sample: str, delimiter: str, cut: bool) -> tuple[float, int, int]:
    """(consistency, fields per record, records) of ``sample`` split by ``delimiter``."""
    counts: list[int] = []
    try:
        for _, record in _records(sample, delimiter):
            counts.append(len(record))
            if len(counts) > _SAMPLE_RECORDS:
                break
    except csv.Error:
        return 0.0, 0, 0
    if cut and len(counts) > 1 and len(counts) <= _SAMPLE_RECORDS:
        counts.pop()  # the sample ended inside the last record
    if not counts:
        return 0.0, 0, 0
    width, hits = Counter(counts).most_common(1)[0]
    return hits / len(counts), width, len(counts)


def choose_delimiter(text: str) -> tuple[str, float, int]:
    """The best delimiter for ``text`` with its consistency and field count."""
    sample = text[:_SAMPLE_CHARS]
    cut = len(text) > len(sample)
    best = (",", 0.0, 1)
    best_key = (-1.0, 0)
    for delimiter in DELIMITERS:
        consistency, width, _ = _score(sample, delimiter, cut)
        if width < 2:
            continue
        key = (consistency, width)
        if key > best_key:
            best, best_key = (delimiter, consistency, width), key
    return best


def looks_delimited(data: bytes) -> bool:
    """Content check for CSV without a telling filename: at least two records that
    all split into the same number (2+) of fields. Strict on purpose: prose with
    commas must stay text."""
    text = decode_text(data[:_SAMPLE_CHARS])
    sample_cut = len(data) > _SAMPLE_CHARS
    delimiter, consistency, width = choose_delimiter(text)
    if width < 2:
        return False
    _, _, records = _score(text, delimiter, sample_cut)
    if records < 2 or consistency != 1.0:
        return False
    # prose ("Hello, we need 3 widgets.") splits consistently too, but its "fields"
    # start with the blank that follows a comma in writing; data fields rarely do
    try:
        later = [cell for _, record in _records(text, delimiter) for cell in record[1:]]
    except csv.Error:
        return False
    return sum(1 for cell in later if cell[:1] == " ") * 2 <= len(later)


def _value_like(cell: str) -> bool:
    return bool(_NUMBER.match(cell) or _DATE.match(cell))


def has_header(first: list[str]) -> bool:
    cells = [c.strip() for c in first]
    if not cells or any(not c or len(c) > _MAX_HEADER_CELL or _value_like(c) for c in cells):
        return False
    return len({c.casefold() for c in cells}) == len(cells)


def field_name(header: str, index: int) -> str:
    """Element name for a header cell (see module docstring)."""
    for pattern in (_NOT_NAME, _NOT_ASCII_NAME):
        name = pattern.sub("_", header.strip().lower())
        if not name.strip("_"):
            return f"col{index}"
        if name[0].isdigit():
            name = "c_" + name
        try:
            etree.Element(name)
        except ValueError:
            # a Unicode "letter or digit" that XML names do not allow: fall back to ASCII
            continue
        return name
    return f"col{index}"


class CsvParser:
    """CSV order files."""

    standard: str = "CSV"

    def __init__(self, *, delimiter: str | None = None, header: bool | None = None) -> None:
        if delimiter is not None and len(delimiter) != 1:
            raise ValueError("delimiter must be one character")
        self.delimiter = delimiter
        self.header = header

    def sniff(self, data: bytes) -> bool:
        return looks_delimited(data)

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        text = decode_text(data)
        delimiter = self.delimiter or choose_delimiter(text)[0]
        records: list[tuple[int, list[str]]] = []
        last_line = 1
        try:
            for line, record in _records(text, delimiter):
                records.append((line, record))
                last_line = line
        except csv.Error as exc:
            raise ParseError(f"CSV is not readable: {exc}", Position(line=last_line + 1)) from exc
        if not records:
            raise ParseError("CSV file has no rows", Position(line=1, offset=0))

        header = self.header if self.header is not None else has_header(records[0][1])
        names: list[str] = []
        labels: list[str] = []
        if header:
            labels = records[0][1]
            names = [field_name(label, i) for i, label in enumerate(labels, 1)]
            records = records[1:]
            if not records:
                raise ParseError("CSV file has a header but no data rows", Position(line=last_line + 1))

        root = etree.Element("CSV")
        root.set("delimiter", delimiter)
        root.set("header", "true" if header else "false")
        columns = etree.SubElement(root, "Columns")
        width = max(len(r) for _, r in records)
        while len(names) < width:
            names.append(f"col{len(names) + 1}")
        for index, name in enumerate(names, 1):
            column = etree.SubElement(columns, "Column")
            column.set("index", str(index))
            if index <= len(labels):
                column.set("name", xml_text(labels[index - 1]))
            column.text = name

        for line, record in records:
            row = etree.SubElement(root, "Row")
            row.set("line", str(line))
            for name, value in zip(names, record, strict=False):
                if value:  # canonical XML omits empty elements
                    etree.SubElement(row, name).text = xml_text(value)
        yield DocumentUnit(standard=self.standard, doc_type="order", tree=root)
