"""The shipped mappings over real corpus files, through the real parsers.

Expected values were written by hand from reading the corpus files.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from gateway.mapping import MappingRegistry, MappingResult
from gateway.parsers.base import DocumentUnit
from gateway.record import Kind, Line, Party

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def registry() -> MappingRegistry:
    reg = MappingRegistry(REPO / "mappings")
    assert reg.load() == []
    return reg


def _map(registry: MappingRegistry, units: list[DocumentUnit]) -> list[tuple[str, MappingResult]]:
    out = []
    for u in units:
        m = registry.select(u, channel="sftp", partner=None)
        out.append((m.name, m.apply(u)))
    return out


def x12(registry: MappingRegistry, corpus: Path, name: str) -> list[tuple[str, MappingResult]]:
    from gateway.parsers.x12 import X12Parser

    return _map(registry, list(X12Parser().parse((corpus / "x12" / name).read_bytes())))


def edifact(registry: MappingRegistry, corpus: Path, name: str) -> list[tuple[str, MappingResult]]:
    from gateway.parsers.edifact import EdifactParser

    # lenient: one sample lacks its UNZ trailer, which is not what is tested here
    parser = EdifactParser(strict=False, on_problem=lambda e: None)
    return _map(registry, list(parser.parse((corpus / "edifact" / name).read_bytes())))


def test_x12_810_and_850(registry: MappingRegistry, corpus: Path) -> None:
    results = x12(registry, corpus, "staedi_810_and_850_two_GS_groups.edi")
    assert [name for name, _ in results] == [
        "x12-810-invoice.xml",
        "x12-810-invoice.xml",
        "x12-850-order.xml",
    ]
    inv = results[0][1]
    assert inv.kind is Kind.INVOICE
    assert inv.references == {"invoice_number": "00001", "po_number": "A99999-01"}
    assert inv.occurred_at == datetime(1997, 12, 11, tzinfo=UTC)
    assert inv.total_amount == Decimal("2554.38")  # TDS01 255438, N2
    assert len(inv.lines) == 7
    assert inv.lines[0] == Line(
        None, "002840022222", "CRUNCHY CHIPS LSS", Decimal("16"), "CA", Decimal("12.34")
    )
    assert sum(ln.quantity or 0 for ln in inv.lines) == Decimal("207")
    assert inv.parties == (
        Party("ship_to", "BUYSNACKS PORT", "1223334445"),
        Party("bill_to", "BUYSNACKS", "1223334444"),
        Party("remit_to", "FOODSELLER", "12345QQQQ"),
    )
    assert inv.document.control_number == "000000001"
    assert len(results[1][1].lines) == 2
    assert results[1][1].references["po_number"] == "A99999-04"

    po = results[2][1]
    assert po.kind is Kind.ORDER
    assert po.references["po_number"] == "S115921858"
    assert po.occurred_at == datetime(2004, 3, 17, tzinfo=UTC)  # six-digit BEG05 (003010)
    assert po.document.version == "003010"
    assert [(ln.line_number, ln.product_id, ln.quantity, ln.unit) for ln in po.lines] == [
        ("1", "02006", Decimal("150"), "EA"),
        ("2", "02008", Decimal("50"), "EA"),
        ("3", "01019", Decimal("25"), "EA"),
        ("4", "01220", Decimal("25"), "EA"),
    ]
    assert po.parties == (
        Party("buyer", "SHIPPING GROUP, INC.", "999999999"),
        Party("ship_to", "CARGO LIMITED #112"),
    )


def test_x12_855(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = x12(registry, corpus, "nodex12_855_PO_ack.edi")
    assert name == "x12-855-order-response.xml"
    assert r.kind is Kind.ORDER_RESPONSE
    assert r.references["po_number"] == "POTEST1112"
    assert r.references["ack_type"] == "AD"
    assert r.currency == "USD"
    assert r.occurred_at == datetime(2020, 10, 15, tzinfo=UTC)
    assert [(ln.product_id, ln.quantity, ln.unit_price) for ln in r.lines] == [
        ("9780446360265", Decimal("3"), Decimal("4.5")),
        ("9780767928427", Decimal("2"), Decimal("15.99")),
        ("9780099599531", Decimal("1"), Decimal("0")),
        ("9780446360272", Decimal("2"), Decimal("4.5")),
    ]
    assert r.lines[1].description == "CLAPTON THE AUTOBIOGRAPHY"
    assert r.parties == (Party("ship_to", "EDI TEST ACCOUNT-SUFFIX", "123MILL 0001"),)


def test_x12_856(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = x12(registry, corpus, "edinet_856_crossdock_ASN.edi")
    assert name == "x12-856-ship-notice.xml"
    assert r.kind is Kind.SHIP_NOTICE
    assert r.references["shipment_id"] == "000009"
    assert r.references["po_number"] == "POREF00"
    assert r.references["po_numbers"] == "POREF00,POREF01"
    assert r.occurred_at == datetime(2009, 9, 21, 8, 1, tzinfo=UTC)
    assert [ln.product_id for ln in r.lines] == [
        "0000000000642", "0000000000831", "0000000000283", "0000000000203", "0000000000642",
    ]  # fmt: skip
    assert all(ln.quantity == Decimal("12") and ln.unit == "EA" for ln in r.lines)
    assert Party("ship_from", "SOME COMPANY", "000009") in r.parties
    assert Party("buyer", "SRTORE", "003") in r.parties


def test_x12_997(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = x12(registry, corpus, "staedi_997_5010.edi")
    assert name == "x12-997-acknowledgement.xml"
    assert r.kind is Kind.ACKNOWLEDGEMENT
    assert r.references["ack_group_control"] == "000001"
    assert r.references["ack_status"] == "R"
    assert r.references["ack_functional_id"] == "HC"
    assert r.occurred_at == datetime(2005, 8, 12, 19, 53, 35, tzinfo=UTC)


def test_x12_999(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = x12(registry, corpus, "staedi_999_5010.edi")
    assert name == "x12-999-acknowledgement.xml"
    assert r.references["ack_group_control"] == "17456"
    assert r.references["ack_status"] == "P"


def test_x12_without_own_mapping_falls_back(registry: MappingRegistry, corpus: Path) -> None:
    results = x12(registry, corpus, "edinet_940_multi_ISA_multi_GS.edi")
    assert results
    for name, r in results:
        assert name == "fallback-other.xml"
        assert r.kind is Kind.OTHER
        assert r.document.standard == "X12"
        assert r.document.type == "940"
        assert r.document.control_number


def test_edifact_orders_comma_decimal(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = edifact(registry, corpus, "pydifact_ORDERS_D96A_EAN008_UNA_comma_decimal.edi")
    assert name == "edifact-orders-order.xml"
    assert r.kind is Kind.ORDER
    assert r.references["po_number"] == "801715918011"
    assert r.occurred_at == datetime(2015, 8, 3, tzinfo=UTC)  # DTM 137, format 203
    assert r.document.version == "D:96A"
    assert [(ln.line_number, ln.product_id, ln.quantity) for ln in r.lines] == [
        ("1", "5020436373085", Decimal("8")),
        ("2", "5020436373108", Decimal("8")),
    ]
    assert r.parties == (
        Party("supplier", None, "5020436000004"),
        Party("buyer", None, "8711576000012"),
        Party("ship_to", None, "8711576100019"),
    )


def test_edifact_invoic(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = edifact(registry, corpus, "pydifact_INVOIC_D97A_UNOA1_no_UNA.edi")
    assert name == "edifact-invoic-invoice.xml"
    assert r.kind is Kind.INVOICE
    assert r.references["invoice_number"] == "1060113800026"
    assert r.references["document_name_code"] == "381"
    assert r.currency == "EUR"
    assert r.total_amount == Decimal("1960.29")
    # DTM+137:199910060000:102 - the value is longer than code 102 says; 203 reads it
    assert r.occurred_at == datetime(1999, 10, 6, tzinfo=UTC)
    # PRI+AAA:3630.1724::NTP:100 is a price per 100: 54 x 36.301724 = 1960.29
    assert r.lines == (Line(None, "090346642", None, Decimal("54"), "PCE", Decimal("36.301724")),)
    # NAD+ST sits in the line group: a line-level party, not a document party
    assert r.parties == (Party("bill_to", None, "VAUXHALL MOTORS LTD"), Party("supplier", None, "2002993"))


def test_edifact_desadv(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = edifact(registry, corpus, "phpedifact_DESADV_D96A_UNOC1.edi")
    assert name == "edifact-desadv-ship-notice.xml"
    assert r.kind is Kind.SHIP_NOTICE
    assert r.references["shipment_id"] == "Y02197250"
    assert r.references["po_number"] == "6877871"
    assert r.occurred_at == datetime(2016, 7, 26, tzinfo=UTC)
    assert [(ln.line_number, ln.product_id, ln.description, ln.quantity) for ln in r.lines] == [
        ("001", "9780738507330", "MUNCIE THE MIDDLE", Decimal("1")),
        ("002", "9781568361871", "ROADS TO SATA A 2", Decimal("1")),
    ]
    assert [(p.role, p.id) for p in r.parties] == [("supplier", "1694901"), ("buyer", "01131116")]


def test_edifact_ordrsp_latin1(registry: MappingRegistry, corpus: Path) -> None:
    [(name, r)] = edifact(registry, corpus, "edireader_ORDRSP_D01B_EAN008_UNOC_latin1.edi")
    assert name == "edifact-ordrsp-order-response.xml"
    assert r.kind is Kind.ORDER_RESPONSE
    assert r.references["response_number"] == "Lörém ïpsü"  # UNOC decoded as Latin-1
    assert r.references["response_type"] == "AB"
    assert r.document.version == "D:01B"
    assert len(r.lines) == 1
    assert r.lines[0].line_number == "Loremx"
    assert [p.role for p in r.parties] == ["BH"]  # unknown qualifiers are kept as sent


def _unit(xml: str, standard: str, doc_type: str) -> DocumentUnit:
    return DocumentUnit(standard=standard, doc_type=doc_type, tree=etree.fromstring(xml.encode()))


def test_email_fax_text_csv_xml(registry: MappingRegistry) -> None:
    email = _unit(
        """<Email><MessageId>&lt;a@b&gt;</MessageId><From address="Buyer@Example.test" name="Buyer"/>
<To address="orders@us.test"/><Subject>PO  123</Subject><Date>2024-01-01T10:00:00+01:00</Date>
<Body media_type="text/html">&lt;p&gt;hi&lt;/p&gt;</Body><Body media_type="text/plain">hi</Body></Email>""",
        "EMAIL",
        "message",
    )
    [(name, r)] = _map(registry, [email])
    assert (name, r.kind, r.subject, r.body) == ("email-message.xml", Kind.MESSAGE, "PO 123", "hi")
    assert r.references == {"message_id": "<a@b>"}
    assert r.occurred_at == datetime.fromisoformat("2024-01-01T10:00:00+01:00")
    assert r.parties == (
        Party("sender", "Buyer", "buyer@example.test"),
        Party("recipient", None, "orders@us.test"),
    )

    fax = _unit("<Fax><Caller>+15551234567</Caller><Pages>2</Pages><Text>ORDER</Text></Fax>", "FAX", "fax")
    [(name, r)] = _map(registry, [fax])
    assert (name, r.kind, r.subject, r.body) == ("fax.xml", Kind.FAX, "Fax from +15551234567", "ORDER")
    assert r.references == {"caller": "+15551234567", "pages": "2"}

    text = _unit(
        '<Document media_type="text/plain" size="3" sha256="x"><Text>abc</Text></Document>', "TEXT", "text"
    )
    [(name, r)] = _map(registry, [text])
    assert (name, r.kind, r.body) == ("fallback-other.xml", Kind.OTHER, "abc")

    csv = _unit(
        """<CSV delimiter=";" header="true"><Row line="2"><po>PO-9</po><sku>A</sku><qty>1,5</qty><price>2,25</price></Row>
<Row line="3"><po>PO-9</po><item>B</item><quantity>3</quantity><description>Bolt</description></Row></CSV>""",
        "CSV",
        "order",
    )
    [(name, r)] = _map(registry, [csv])
    assert (name, r.kind, r.references["po_number"]) == ("csv-order.xml", Kind.ORDER, "PO-9")
    assert r.lines == (
        Line("2", "A", None, Decimal("1.5"), None, Decimal("2.25")),
        Line("3", "B", "Bolt", Decimal("3"), None, None),
    )

    xml = _unit(
        """<PurchaseOrder xmlns="urn:x"><PONumber>X-1</PONumber><Items><Item><SKU>S1</SKU><Quantity>2</Quantity>
<UnitPrice>9.99</UnitPrice></Item></Items></PurchaseOrder>""",
        "XML",
        "PurchaseOrder",
    )
    [(name, r)] = _map(registry, [xml])
    assert (name, r.kind, r.references["po_number"]) == ("xml-order.xml", Kind.ORDER, "X-1")
    assert r.lines == (Line(None, "S1", None, Decimal("2"), None, Decimal("9.99")),)
    other = _unit("<Catalog><Name>x</Name></Catalog>", "XML", "Catalog")
    assert _map(registry, [other])[0][1].kind is Kind.OTHER
