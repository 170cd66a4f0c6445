"""Mapping engine: transforms, groups, XSLT, specificity, record XML round-trip."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import MappingError, RecordInvalid
from gateway.mapping import CompiledMapping, MappingRegistry, check_mapping_files, compile_mapping, is_warning
from gateway.mapping import transforms as tf
from gateway.parsers.base import DocumentUnit
from gateway.record import (
    Attachment,
    Direction,
    DocumentInfo,
    InteractionRecord,
    Kind,
    Line,
    MappingRef,
    PartnerRef,
    Party,
    Status,
)
from gateway.record_xml import (
    InvalidRecordInBatch,
    record_from_xml,
    record_to_xml,
    validate_record,
    validate_records,
)

HEAD = '<?xml version="1.0"?>\n<mapping xmlns="urn:b2b-gateway:mapping:1" kind="{kind}">\n'

X12_850 = b"""<Interchange standard="X12"><ISA><ISA06>SENDER         </ISA06></ISA><Group>
<GS><GS04>20240102</GS04><GS05>1530</GS05><GS08>004010</GS08></GS>
<Transaction><ST><ST01>850</ST01><ST02>0001</ST02></ST>
<BEG><BEG01>00</BEG01><BEG02>SA</BEG02><BEG03> PO-1 </BEG03><BEG05>20240101</BEG05></BEG>
<CUR><CUR01>BY</CUR01><CUR02>usd</CUR02></CUR>
<N1Loop><N1><N101>BY</N101><N102>ACME  Corp</N102><N104>123</N104></N1></N1Loop>
<N1Loop><N1><N101>ST</N101><N102>Depot</N102></N1></N1Loop>
<N1Loop><N1><N101>ZZ</N101><N102>Other</N102></N1></N1Loop>
<PO1Loop><PO1><PO101>1</PO101><PO102>3</PO102><PO103>EA</PO103><PO104>1.25</PO104><PO107>SKU-1</PO107></PO1>
  <PID><PID05>Widget</PID05></PID></PO1Loop>
<PO1Loop><PO1><PO101>2</PO101><PO102>12</PO102><PO103>CA</PO103><PO104>10</PO104><PO109>SKU-2</PO109></PO1></PO1Loop>
<TDS><TDS01>255438</TDS01></TDS>
<SE><SE01>9</SE01><SE02>0001</SE02></SE></Transaction></Group></Interchange>"""


def unit(xml: bytes = X12_850, standard: str = "X12", doc_type: str = "850") -> DocumentUnit:
    return DocumentUnit(
        standard=standard,
        doc_type=doc_type,
        tree=etree.fromstring(xml),
        version="004010",
        control_number="0001",
    )


def make(tmp_path: Path, body: str, kind: str = "order", name: str = "m.xml") -> Path:
    path = tmp_path / name
    path.write_text(HEAD.format(kind=kind) + body + "\n</mapping>\n", encoding="utf-8")
    return path


def compiled(tmp_path: Path, body: str, kind: str = "order") -> CompiledMapping:
    m, problems = compile_mapping(make(tmp_path, body, kind))
    assert problems == []
    assert m is not None
    return m


def problems_of(tmp_path: Path, body: str) -> list[str]:
    _, problems = compile_mapping(make(tmp_path, body))
    return [str(p) for p in problems]


MATCH = '<match standard="X12" type="850"/>\n'


# --- basic fields -------------------------------------------------------------------


def test_header_fields_and_document_defaults(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="references.po_number" xpath="//BEG/BEG03"><trim/></field>
<field name="currency" xpath="//CUR/CUR02"><upper/></field>
<field name="occurred_at" xpath="//BEG/BEG05"><date format="CCYYMMDD"/></field>
<field name="subject" value="Order"/>""",
    )
    r = m.apply(unit())
    assert r.kind is Kind.ORDER
    assert r.references == {"po_number": "PO-1"}
    assert r.currency == "USD"
    assert r.occurred_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert r.subject == "Order"
    assert r.document == DocumentInfo("X12", "850", "004010", "0001")
    assert r.mapping.file == "m.xml"
    assert len(r.mapping.sha256) == 64


def test_text_transforms(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="references.a" xpath="//N1Loop[1]/N1/N102"><normalize-space/><lower/></field>
<field name="references.b" value="  x  "><trim/><upper/></field>
<field name="references.c" value="AB-12-CD"><replace pattern="-" with=""/></field>""",
    )
    assert m.apply(unit()).references == {"a": "acme corp", "b": "X", "c": "AB12CD"}


def test_default_required_and_empty(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="references.missing" xpath="//NOPE" default="n/a"/>
<field name="references.blank" value="   "><trim/></field>""",
    )
    assert m.apply(unit()).references == {"missing": "n/a"}
    m2 = compiled(tmp_path, MATCH + '<field name="references.po" xpath="//NOPE" required="true"/>')
    with pytest.raises(MappingError, match=r"m\.xml:\d+: references\.po: required value is missing"):
        m2.apply(unit())


def test_first_and_join(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="references.first"><xpath>//NOPE</xpath><xpath>//BEG/BEG02</xpath><xpath>//BEG/BEG01</xpath></field>
<field name="references.all" xpath="//N1/N101" combine="join" separator="+"/>
<field name="subject" combine="join"><value>PO</value><xpath>//BEG/BEG03</xpath><normalize-space/></field>""",
    )
    r = m.apply(unit())
    assert r.references == {"first": "SA", "all": "BY+ST+ZZ"}
    assert r.subject == "PO PO-1"


# --- numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("12.5", {}, Decimal("12.5")),
        ("12,5", {}, Decimal("12.5")),
        ("-3", {}, Decimal("-3")),
        ("3-", {}, Decimal("-3")),
        ("1.234,56", {"mark": ",", "thousands": "."}, Decimal("1234.56")),
        ("1,234.56", {"mark": ".", "thousands": ","}, Decimal("1234.56")),
        ("255438", {"implied_decimals": 2}, Decimal("2554.38")),
        ("-1", {"implied_decimals": 2}, Decimal("-0.01")),
        ("12.5", {"implied_decimals": 2}, Decimal("12.5")),
    ],
)
def test_parse_decimal(text: str, kwargs: dict[str, object], expected: Decimal) -> None:
    value = tf.parse_decimal(text, **kwargs)  # type: ignore[arg-type]
    assert value == expected
    assert isinstance(value, Decimal)


@pytest.mark.parametrize(("text", "mark"), [("1.234,5", "auto"), ("abc", "auto"), ("1,5", "."), ("", "auto")])
def test_parse_decimal_rejects(text: str, mark: str) -> None:
    with pytest.raises(tf.TransformFailed):
        tf.parse_decimal(text, mark=mark)


def test_decimal_and_integer_transforms(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="total_amount" xpath="//TDS/TDS01"><decimal implied-decimals="2"/></field>
<field name="references.count" value="007"><integer/></field>""",
    )
    r = m.apply(unit())
    assert r.total_amount == Decimal("2554.38")
    assert str(r.total_amount) == "2554.38"
    assert r.references["count"] == "7"


def test_bad_number_names_field_xpath_and_value(tmp_path: Path) -> None:
    m = compiled(tmp_path, MATCH + '<field name="total_amount" xpath="//BEG/BEG03"><decimal/></field>')
    with pytest.raises(MappingError) as exc:
        m.apply(unit())
    msg = str(exc.value)
    assert msg.startswith("m.xml:")
    assert "total_amount" in msg
    assert "//BEG/BEG03" in msg
    assert "' PO-1 '" in msg
    assert "not a number" in msg
    assert "\n" not in msg


def test_decimal_field_without_transform_accepts_plain_numbers(tmp_path: Path) -> None:
    m = compiled(tmp_path, MATCH + '<field name="total_amount" value="10.50"/>')
    assert m.apply(unit()).total_amount == Decimal("10.50")


def test_divide_by_price_basis(tmp_path: Path) -> None:
    xml = b"<M><PRI><PRI01><PRI01-1>AAA</PRI01-1><PRI01-2>3630.1724</PRI01-2><PRI01-5>100</PRI01-5></PRI01></PRI></M>"
    m = compiled(
        tmp_path,
        '<match standard="EDIFACT"/><field name="total_amount" xpath="//PRI01-2"><decimal/>'
        '<divide by-xpath="../PRI01-5"/></field>',
    )
    assert m.apply(unit(xml, "EDIFACT", "INVOIC")).total_amount == Decimal("36.301724")


# --- dates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("20240131", "CCYYMMDD", date(2024, 1, 31)),
        ("240131", "YYMMDD", date(2024, 1, 31)),
        ("991231", "YYMMDD", date(1999, 12, 31)),
        ("201015", "CCYYMMDD|YYMMDD", date(2020, 10, 15)),
        ("20240131", "%Y%m%d", date(2024, 1, 31)),
        ("31.01.2024", "%d.%m.%Y", date(2024, 1, 31)),
        ("20240131", "102", date(2024, 1, 31)),
        ("202401311530", "203", datetime(2024, 1, 31, 15, 30, tzinfo=UTC)),
        ("20240131153045", "204", datetime(2024, 1, 31, 15, 30, 45, tzinfo=UTC)),
        ("2024-01-31T10:00:00+02:00", "ISO", datetime.fromisoformat("2024-01-31T10:00:00+02:00")),
        ("2024-01-31T10:00:00", "ISO", datetime(2024, 1, 31, 10, tzinfo=UTC)),
    ],
)
def test_parse_date(text: str, fmt: str, expected: date) -> None:
    assert tf.parse_date(text, tf.compile_date_formats(fmt)) == expected


def test_bad_date_format_is_a_load_problem(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, MATCH + '<field name="occurred_at" xpath="//X"><date format="999"/></field>'
    )
    assert len(found) == 1
    assert "999" in found[0]
    assert "m.xml:4" in found[0]


def test_edifact_date_code_from_data_then_fallback(tmp_path: Path) -> None:
    xml = b"""<M><DTM><DTM01><DTM01-1>137</DTM01-1><DTM01-2>201508030915</DTM01-2><DTM01-3>203</DTM01-3></DTM01></DTM>
<DTM><DTM01><DTM01-1>2</DTM01-1><DTM01-2>199910060000</DTM01-2><DTM01-3>102</DTM01-3></DTM01></DTM></M>"""
    m = compiled(
        tmp_path,
        """<match standard="EDIFACT"/>
<field name="occurred_at" xpath="//DTM[DTM01/DTM01-1='137']/DTM01/DTM01-2"><date format-xpath="../DTM01-3"/></field>
<field name="references.delivery" xpath="//DTM[DTM01/DTM01-1='2']/DTM01/DTM01-2">
  <date format-xpath="../DTM01-3" format="102|203"/></field>""",
    )
    r = m.apply(unit(xml, "EDIFACT", "ORDERS"))
    assert r.occurred_at == datetime(2015, 8, 3, 9, 15, tzinfo=UTC)
    # the data says 102 but carries 12 digits: the declared fallback 203 reads it
    assert r.references["delivery"] == "1999-10-06T00:00:00+00:00"


def test_datetime_combines_date_and_time(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + '<field name="occurred_at" xpath="//GS/GS04"><datetime time-xpath="../GS05" format="CCYYMMDD"/></field>',
    )
    assert m.apply(unit()).occurred_at == datetime(2024, 1, 2, 15, 30, tzinfo=UTC)


def test_bad_date_value(tmp_path: Path) -> None:
    m = compiled(
        tmp_path, MATCH + '<field name="occurred_at" xpath="//BEG/BEG03"><date format="CCYYMMDD"/></field>'
    )
    with pytest.raises(MappingError, match=r"occurred_at: not a date in format CCYYMMDD"):
        m.apply(unit())


# --- lookups ------------------------------------------------------------------------


def test_lookup_inline_defaults_and_shared(tmp_path: Path) -> None:
    (tmp_path / "codelists").mkdir()
    (tmp_path / "codelists" / "roles.xml").write_text(
        '<codelist xmlns="urn:b2b-gateway:mapping:1" name="roles" default="party">'
        '<code value="BY">buyer</code></codelist>'
    )
    path = make(
        tmp_path,
        MATCH
        + """<codelist name="uom"><code value="EA">each</code></codelist>
<field name="references.u1" xpath="//PO1Loop[1]/PO1/PO103"><lookup codelist="uom"/></field>
<field name="references.u2" xpath="//PO1Loop[2]/PO1/PO103"><lookup codelist="uom" default="unknown"/></field>
<field name="references.u3" xpath="//PO1Loop[2]/PO1/PO103"><lookup codelist="uom"/></field>
<parties select="//N1Loop"><field name="role" xpath="N1/N101"><lookup codelist="roles"/></field></parties>""",
    )
    reg = MappingRegistry(tmp_path)
    assert reg.load() == []
    r = reg.mappings()[0].apply(unit())
    assert r.references == {"u1": "each", "u2": "unknown", "u3": "CA"}
    assert [p.role for p in r.parties] == ["buyer", "party", "party"]
    assert path.name == "m.xml"


def test_unknown_codelist_is_a_load_problem(tmp_path: Path) -> None:
    found = problems_of(tmp_path, MATCH + '<field name="subject" value="x"><lookup codelist="nope"/></field>')
    assert len(found) == 1
    assert "unknown code list 'nope'" in found[0]


# --- repeating groups ---------------------------------------------------------------


def test_lines_and_parties(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<codelist name="r"><code value="BY">buyer</code><code value="ST">ship_to</code></codelist>
<lines select="//PO1Loop">
  <field name="line_number" xpath="PO1/PO101"/>
  <field name="product_id"><xpath>PO1/PO107</xpath><xpath>PO1/PO109</xpath></field>
  <field name="description" xpath="PID/PID05"/>
  <field name="quantity" xpath="PO1/PO102"><decimal/></field>
  <field name="unit" xpath="PO1/PO103"/>
  <field name="unit_price" xpath="PO1/PO104"><decimal mark="."/></field>
</lines>
<parties select="//N1Loop">
  <field name="role" xpath="N1/N101"><lookup codelist="r"/></field>
  <field name="name" xpath="N1/N102"><normalize-space/></field>
  <field name="id" xpath="N1/N104"/>
</parties>""",
    )
    r = m.apply(unit())
    assert r.lines == (
        Line("1", "SKU-1", "Widget", Decimal("3"), "EA", Decimal("1.25")),
        Line("2", "SKU-2", None, Decimal("12"), "CA", Decimal("10")),
    )
    assert r.parties == (Party("buyer", "ACME Corp", "123"), Party("ship_to", "Depot"), Party("ZZ", "Other"))


def test_line_error_names_the_line(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + '<lines select="//PO1Loop"><field name="quantity" xpath="PO1/PO107"><decimal/></field></lines>',
    )
    with pytest.raises(MappingError, match=r"lines\[1\]\.quantity: not a number"):
        m.apply(unit())


def test_parties_need_a_role(tmp_path: Path) -> None:
    found = problems_of(
        tmp_path, MATCH + '<parties select="//N1Loop"><field name="name" xpath="N1/N102"/></parties>'
    )
    assert any("role" in p for p in found)


# --- XSLT ---------------------------------------------------------------------------

XSL = '<xslt phase="{phase}"><xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform" {ns}>{body}</xsl:stylesheet></xslt>'
IDENTITY = '<xsl:template match="@*|node()"><xsl:copy><xsl:apply-templates select="@*|node()"/></xsl:copy></xsl:template>'


def test_xslt_before(tmp_path: Path) -> None:
    body = IDENTITY + '<xsl:template match="BEG03"><BEG03>REWRITTEN</BEG03></xsl:template>'
    m = compiled(
        tmp_path,
        MATCH
        + XSL.format(phase="before", ns="", body=body)
        + '<field name="references.po" xpath="//BEG/BEG03"/>',
    )
    assert m.apply(unit()).references == {"po": "REWRITTEN"}


def test_xslt_after(tmp_path: Path) -> None:
    body = (
        IDENTITY
        + '<xsl:template match="i:subject"><i:subject>after: <xsl:value-of select="."/></i:subject></xsl:template>'
        + '<xsl:template match="i:kind"><i:kind>order_change</i:kind></xsl:template>'
    )
    m = compiled(
        tmp_path,
        MATCH
        + '<field name="subject" value="hello"/>'
        + XSL.format(phase="after", ns='xmlns:i="urn:b2b-gateway:interaction:1"', body=body),
    )
    r = m.apply(unit())
    assert r.subject == "after: hello"
    assert r.kind is Kind.ORDER_CHANGE
    assert r.mapping.file == "m.xml"


def test_xslt_terminate_is_a_mapping_error(tmp_path: Path) -> None:
    body = '<xsl:template match="/"><xsl:message terminate="yes">not for us</xsl:message></xsl:template>'
    m = compiled(tmp_path, MATCH + XSL.format(phase="before", ns="", body=body))
    with pytest.raises(MappingError, match="xslt"):
        m.apply(unit())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            '<xsl:template match="/"><xsl:copy-of select="document(\'/etc/passwd\')"/></xsl:template>',
            "document()",
        ),
        ('<xsl:include href="other.xsl"/>', "xsl:include"),
        ('<xsl:import href="other.xsl"/>', "xsl:import"),
        ('<xsl:template match="/"><out a="{document(\'x\')}"/></xsl:template>', "document()"),
    ],
)
def test_xslt_reaching_outside_is_refused(tmp_path: Path, body: str, reason: str) -> None:
    found = problems_of(tmp_path, MATCH + XSL.format(phase="before", ns="", body=body))
    assert found
    assert all("m.xml:" in p for p in found)
    assert any(reason in p for p in found)


def test_bad_xslt_is_reported(tmp_path: Path) -> None:
    found = problems_of(tmp_path, MATCH + XSL.format(phase="before", ns="", body="<xsl:nonsense/>"))
    assert found
    assert "xslt" in found[0]


# --- load-time problems -------------------------------------------------------------


def test_xsd_problem_has_line(tmp_path: Path) -> None:
    found = problems_of(tmp_path, MATCH + '<field name="nope" value="x"/>')
    assert found
    assert found[0].startswith(str(tmp_path / "m.xml") + ":4:")


def test_unknown_transform_is_reported(tmp_path: Path) -> None:
    found = problems_of(tmp_path, MATCH + '<field name="subject" value="x"><frobnicate/></field>')
    assert found
    assert "frobnicate" in found[0]
    assert ":4:" in found[0]


def test_bad_xpath_is_reported_with_line(tmp_path: Path) -> None:
    found = problems_of(tmp_path, MATCH + '\n\n<field name="subject" xpath="//BEG[["/>')
    assert len(found) == 1
    assert ":6:" in found[0]
    assert "bad XPath" in found[0]
    found = problems_of(tmp_path, MATCH + '<field name="subject" xpath="nofunc(.)"/>')
    assert len(found) == 1
    assert "bad XPath" in found[0]


def test_not_well_formed(tmp_path: Path) -> None:
    path = tmp_path / "m.xml"
    path.write_text("<mapping>\n<oops></mapping>")
    _, found = compile_mapping(path)
    assert found
    assert found[0].line == 2
    assert "well-formed" in found[0].reason


def test_kind_field_must_be_a_kind(tmp_path: Path) -> None:
    m = compiled(tmp_path, MATCH + '<field name="kind" value="banana"/>')
    with pytest.raises(MappingError, match="not a record kind"):
        m.apply(unit())


# --- specificity --------------------------------------------------------------------


def _write(tmp_path: Path, name: str, match: str, subject: str) -> None:
    make(tmp_path, f'{match}<field name="subject" value="{subject}"/>', name=name)


def test_specificity(tmp_path: Path) -> None:
    _write(tmp_path, "a.xml", '<match standard="X12"/>', "standard")
    _write(tmp_path, "b.xml", '<match standard="X12" type="850"/>', "type")
    _write(tmp_path, "c.xml", '<match standard="X12" type="850" channel="as2"/>', "channel")
    _write(tmp_path, "d.xml", '<match standard="X12" partner="acme"/>', "partner")
    reg = MappingRegistry(tmp_path)
    assert reg.load() == []
    u = unit()
    assert reg.select(u, channel="sftp", partner=None).apply(u).subject == "type"
    assert reg.select(u, channel="as2", partner=None).apply(u).subject == "channel"
    assert reg.select(u, channel="as2", partner="acme").apply(u).subject == "partner"
    u940 = unit(doc_type="940")
    assert reg.select(u940, channel="as2", partner="other").apply(u940).subject == "standard"
    with pytest.raises(MappingError, match="no mapping matches EDIFACT ORDERS"):
        reg.select(unit(standard="EDIFACT", doc_type="ORDERS"), channel="as2", partner=None)


def test_ties_resolved_by_file_name_and_reported(tmp_path: Path) -> None:
    _write(tmp_path, "b.xml", '<match standard="X12" type="850"/>', "b")
    _write(tmp_path, "a.xml", '<match standard="X12" type="850"/>', "a")
    reg = MappingRegistry(tmp_path)
    assert reg.load() == []
    u = unit()
    assert reg.select(u, channel="x", partner=None).name == "a.xml"
    found = check_mapping_files(sorted(tmp_path.glob("*.xml")))
    assert len(found) == 1
    assert is_warning(found[0])
    assert found[0].file.endswith("b.xml")
    assert "a.xml" in found[0].reason
    assert len(reg.warnings()) == 1


# --- thread safety ------------------------------------------------------------------


def test_apply_from_many_threads(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + '<field name="references.po" xpath="//BEG/BEG03"><trim/></field>'
        + XSL.format(phase="before", ns="", body=IDENTITY),
    )
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                assert m.apply(unit()).references["po"] == "PO-1"
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- record XML ---------------------------------------------------------------------


def full_record() -> InteractionRecord:
    return InteractionRecord(
        id="01HX",
        channel="as2",
        direction=Direction.INBOUND,
        kind=Kind.ORDER,
        received_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        raw_sha256="a" * 64,
        status=Status.UNRESOLVED,
        partner=PartnerRef("acme", "ACME"),
        sender={"x12": "ZZ:ACME"},
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        document=DocumentInfo("X12", "850", "004010", "0001"),
        subject="PO 1",
        references={"po_number": "PO-1"},
        currency="EUR",
        total_amount=Decimal("1234.50"),
        lines=(Line("1", "SKU", "Thing", Decimal("2.500"), "EA", Decimal("0.10")),),
        parties=(Party("buyer", "ACME", "1"), Party("ship_to")),
        attachments=(Attachment("po.pdf", "application/pdf", 10, "b" * 64),),
        mapping=MappingRef("x12-850-order.xml", "c" * 64),
        body="hello",
    )


def test_record_round_trip() -> None:
    rec = full_record()
    validate_record(rec)
    el = record_to_xml(rec)
    back = record_from_xml(etree.fromstring(etree.tostring(el)))
    assert back == rec
    assert back.total_amount == Decimal("1234.50")
    assert isinstance(back.lines[0].quantity, Decimal)
    minimal = InteractionRecord(
        id="x", channel="sftp", direction=Direction.INBOUND, kind=Kind.OTHER,
        received_at=datetime(2024, 1, 1, tzinfo=UTC), raw_sha256="0" * 64,
    )  # fmt: skip
    validate_record(minimal)
    assert record_from_xml(record_to_xml(minimal)) == minimal


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"currency": "eur"}, "currency"),
        ({"raw_sha256": "xyz"}, "raw_sha256"),
        ({"received_at": datetime(2024, 1, 1)}, "received_at"),
        ({"total_amount": Decimal("NaN")}, "total_amount"),
        ({"attachments": (Attachment("a", "text/plain", 1, "short"),)}, "attachments[1].sha256"),
        ({"lines": (Line(), Line(quantity=Decimal("Infinity")))}, "lines[2].quantity"),
        ({"body": "bad \x00 char"}, "body"),
    ],
)
def test_record_xsd_rejects(change: dict[str, object], field: str) -> None:
    import dataclasses

    rec = dataclasses.replace(full_record(), **change)  # type: ignore[arg-type]
    with pytest.raises(RecordInvalid) as exc:
        validate_record(rec)
    assert str(exc.value).startswith(field + ":")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "change",
    [
        {"subject": "a & b < c > d ]]> \r\n\t"},
        {"references": {'we"ird\tname\r': "x&y"}, "sender": {"k<&>\n": "v"}},
        {"body": "\u00e9\u20ac\U0001f600 \x85"},
    ],
)
def test_record_fast_validation_matches_xml(change: dict[str, object]) -> None:
    import dataclasses

    from gateway.record_xml import _record_xml_text

    rec = dataclasses.replace(full_record(), **change)  # type: ignore[arg-type]
    validate_record(rec)
    fast = etree.fromstring(_record_xml_text(rec).encode("utf-8"))
    assert etree.tostring(fast, method="c14n") == etree.tostring(record_to_xml(rec), method="c14n")


def test_validate_records_names_the_bad_record() -> None:
    import dataclasses

    good = full_record()
    bad = dataclasses.replace(good, currency="eur")
    validate_records([good, good])
    with pytest.raises(RecordInvalid) as single:
        validate_record(bad)
    with pytest.raises(InvalidRecordInBatch) as exc:
        validate_records([good, bad, good])
    assert exc.value.index == 1
    assert exc.value.record is bad
    assert exc.value.message == single.value.message


# --- anchored XPaths (//Name/rest evaluated at the document's only Name) -----------------


def test_anchored_xpaths_match_plain_xpath(tmp_path: Path) -> None:
    m = compiled(
        tmp_path,
        MATCH
        + """<field name="references.po_number" xpath="//Transaction/BEG/BEG03"><trim/></field>
<field name="references.both">
  <xpath>//Transaction/CUR/CUR02 | //Transaction/TDS/TDS01</xpath>
</field>
<field name="references.deep" xpath="//Transaction//N1/N102[../N101='ST']"/>
<field name="references.count" xpath="count(//Transaction/N1Loop)"/>
<lines select="//Transaction/PO1Loop">
  <field name="line_number" xpath="PO1/PO101"/>
</lines>""",
    )
    one = m.apply(unit())
    assert dict(one.references) == {"po_number": "PO-1", "both": "usd", "deep": "Depot", "count": "3"}
    assert [ln.line_number for ln in one.lines] == ["1", "2"]
    # two Transaction elements: the whole document is searched, as the XPath says
    two = X12_850.replace(
        b"</Transaction></Group>",
        b"</Transaction><Transaction><BEG><BEG03>PO-2</BEG03></BEG><N1Loop/></Transaction></Group>",
    )
    r = m.apply(unit(two))
    assert dict(r.references) == {"po_number": "PO-1", "both": "usd", "deep": "Depot", "count": "4"}
    # none at all, then one again: nothing is kept from an earlier document
    none = b"<Interchange><Other><BEG><BEG03>X</BEG03></BEG></Other></Interchange>"
    r = m.apply(unit(none))
    assert dict(r.references) == {"count": "0"}
    assert r.lines == ()
    assert m.apply(unit()) == one
