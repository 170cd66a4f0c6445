"""Format detection over the real corpus (rules: gateway/parsers/detect.py docstring)."""

from __future__ import annotations

import email
import importlib.util
from pathlib import Path

import pytest
from lxml import etree

from gateway.envelope import Channel
from gateway.errors import UnknownFormat
from gateway.parsers.detect import detect, detect_attachment, is_edifact, is_x12, parse_document
from tests.conftest import corpus_files, need_peer

X12_FILES = [p for p in corpus_files("x12/*.edi") if p.name != "INVALID_edinet_not_edi.edi"]
EDIFACT_FILES = corpus_files("edifact/*.edi")
EMAIL_FILES = corpus_files("email/*.eml", "fax/*.eml")


def find(node: etree._Element, path: str) -> etree._Element:
    """``node.find(path)``, which must exist."""
    found = node.find(path)
    assert found is not None, path
    return found


def need_parser(module: str) -> None:
    if importlib.util.find_spec(f"gateway.parsers.{module}") is None:
        need_peer(f"gateway.parsers.{module}")


def attachment(corpus: Path, folder: str, name: str, filename: str) -> bytes:
    for part in email.message_from_bytes((corpus / folder / name).read_bytes()).walk():
        if part.get_filename() == filename:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload
    raise AssertionError(filename)


@pytest.mark.parametrize("path", X12_FILES, ids=[p.name for p in X12_FILES])
def test_x12_corpus(corpus: Path, path: Path) -> None:
    data = path.read_bytes()
    assert is_x12(data)
    need_parser("x12")
    for channel in ("sftp", "as2", "file"):
        assert detect(data, channel=channel, filename=path.name).standard == "X12"


@pytest.mark.parametrize("path", EDIFACT_FILES, ids=[p.name for p in EDIFACT_FILES])
def test_edifact_corpus(corpus: Path, path: Path) -> None:
    data = path.read_bytes()
    assert is_edifact(data)
    assert not is_x12(data)
    need_parser("edifact")
    assert detect(data, channel="sftp", filename=path.name).standard == "EDIFACT"


def test_edifact_payload_without_edi_name(corpus: Path) -> None:
    data = (corpus / "as2" / "pyas2lib" / "payload_edifact_orders.txt").read_bytes()
    assert is_edifact(data)


@pytest.mark.parametrize("path", EMAIL_FILES, ids=[p.name for p in EMAIL_FILES])
def test_email_corpus(corpus: Path, path: Path) -> None:
    data = path.read_bytes()
    # by channel, by file name, and by the header block alone
    assert detect(data, channel=Channel.EMAIL).standard == "EMAIL"
    assert detect(data, channel="file", filename=path.name).standard == "EMAIL"
    assert detect(data, channel="sftp", filename="inbound.dat").standard == "EMAIL"
    assert detect(data, channel="sftp").standard == "EMAIL"


def test_not_edi_in_an_edi_inbox_is_quarantined(corpus: Path) -> None:
    data = (corpus / "x12" / "INVALID_edinet_not_edi.edi").read_bytes()
    with pytest.raises(UnknownFormat, match=r"file INVALID_edinet_not_edi\.edi is not EDI"):
        detect(data, channel="sftp", filename="INVALID_edinet_not_edi.edi")
    with pytest.raises(UnknownFormat, match="is not EDI"):
        detect(data, channel="as2", filename="ORDERS.X12")
    # without a telling name it is just a short text, recorded as such
    assert detect(data, channel="sftp").standard == "TEXT"
    (unit,) = parse_document(data, channel="sftp")
    assert unit.tree.findtext("Text") == data.decode()


def test_fax_channel(corpus: Path) -> None:
    pdf = attachment(corpus, "fax", "efax_pdf_two_pages.eml", "FAX_20261127_1764204067_42.pdf")
    tif = attachment(corpus, "fax", "hylafax_tiff_one_page.eml", "fax000417.tif")
    facts = {"caller": "+82315550142", "provider": "efax"}
    (unit,) = parse_document(pdf, channel=Channel.FAX, filename="fax.pdf", facts=facts)
    assert unit.standard == "FAX"
    assert unit.tree.findtext("Caller") == "+82315550142"
    assert unit.tree.findtext("Pages") == "2"
    assert find(unit.tree, "Document").get("filename") == "fax.pdf"
    assert detect(tif, channel="fax").standard == "FAX"
    # the same bytes on other channels
    assert detect(pdf, channel="sftp").standard == "PDF"
    with pytest.raises(UnknownFormat, match="not a document"):
        detect(tif, channel="sftp")
    # a fax-to-email notification arriving on the fax channel is still an e-mail
    eml = (corpus / "fax" / "efax_pdf_two_pages.eml").read_bytes()
    assert detect(eml, channel="fax").standard == "EMAIL"


@pytest.mark.parametrize(
    ("data", "filename", "standard"),
    [
        (b'<?xml version="1.0"?><Order/>', None, "XML"),
        (b"\xef\xbb\xbf\n  <Order><Id>1</Id></Order>", "order.dat", "XML"),
        ('<?xml version="1.0" encoding="UTF-16"?><a/>'.encode("utf-16"), None, "XML"),
        (b"sku,qty\nA,1\nB,2\n", None, "CSV"),
        (b"sku;qty\nA;1\n", "po.csv", "CSV"),
        (b"one line only\n", "po.csv", "CSV"),
        (b"sku\tqty\nA\t1\nB\t2\n", None, "CSV"),
        (b"%PDF-1.4\n%...", None, "PDF"),
        (b"Hello, we need 3 widgets.\nThanks, Bob\n", None, "TEXT"),
        ("Grüße, bitte 3 Stück liefern".encode("cp1252"), "note.txt", "TEXT"),
        (b"Subject: hi\nFrom: a@b.test\n\nbody\n", None, "EMAIL"),
    ],
)
def test_detection_table(data: bytes, filename: str | None, standard: str) -> None:
    assert detect(data, channel="sftp", filename=filename).standard == standard


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"  \r\n",
        bytes(range(256)) * 4,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"PK\x03\x04\x14\x00\x00\x00",
    ],
)
def test_unknown_formats(data: bytes) -> None:
    with pytest.raises(UnknownFormat):
        detect(data, channel="sftp")


def test_edi_lookalikes_are_not_edi() -> None:
    assert not is_edifact(b"UNBELIEVABLE prices\n")
    assert is_edifact(b"\xef\xbb\xbf\r\nUNB+UNOC:3+X+Y+240101:1200+1'")
    assert is_x12(b"\n  ISA*00*")
    assert detect(b"UNBELIEVABLE prices\n", channel="sftp").standard == "TEXT"


def test_attachment_detection(corpus: Path) -> None:
    csv_bytes = attachment(corpus, "email", "order_csv_attachment.eml", "PO-DW-2231.csv")
    parser = detect_attachment(csv_bytes, filename="PO-DW-2231.csv", media_type="text/csv")
    assert parser is not None
    assert parser.standard == "CSV"
    # prose is never taken for CSV without a CSV name or type
    assert detect_attachment(csv_bytes, filename="notes.txt", media_type="text/plain") is None
    assert detect_attachment(b"<html><p>x</p></html>", filename="a.htm", media_type="text/html") is None
    assert detect_attachment(b"\x89PNG....", filename="logo.png", media_type="image/png") is None
    xml = detect_attachment(
        b'<?xml version="1.0"?><Invoice/>', filename=None, media_type="application/octet-stream"
    )
    assert xml is not None
    assert xml.standard == "XML"
    with pytest.raises(UnknownFormat, match="not EDI"):
        detect_attachment(b"hello", filename="po.edi", media_type="application/octet-stream")
    with pytest.raises(UnknownFormat, match="not EDI"):
        detect_attachment(b"hello", filename=None, media_type="application/edi-x12")
    x12 = attachment(corpus, "email", "order_x12_attachment.eml", "PO-DW-2232.x12")
    need_parser("x12")
    found = detect_attachment(x12, filename="whatever.txt", media_type="text/plain")
    assert found is not None
    assert found.standard == "X12"
