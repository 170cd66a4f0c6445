"""The X12 parser against the real corpus files (expected values read off the files by hand)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import EnvelopeError, ParseError
from gateway.parsers.base import DocumentUnit
from gateway.parsers.x12 import X12Parser, read_header

PARSER = X12Parser()

VALID = [
    "edinet_850_newline_terminator.edi",
    "edinet_856_crossdock_ASN.edi",
    "edinet_940_multi_ISA_multi_GS.edi",
    "nodex12_850_two_interchanges.edi",
    "nodex12_855_PO_ack.edi",
    "nodex12_856_v4060_dash_repetition.edi",
    "pyx12_278_two_ISA_multi_GS.edi",
    "pyx12_834_5010_multiple_ST.edi",
    "pyx12_835_5010_multiple_loops.edi",
    "staedi_210_wrapped_80_columns.edi",
    "staedi_214_unicode_ellipsis_terminator.edi",
    "staedi_810_and_850_two_GS_groups.edi",
    "staedi_810_invoice_4010.edi",
    "staedi_837P_newline_terminator_indented.edi",
    "staedi_855_two_ST_sets.edi",
    "staedi_997_5010.edi",
    "staedi_997_repetition_and_composites.edi",
    "staedi_997_with_ISB_ISE.edi",
    "staedi_999_5010.edi",
    "staedi_TA1_interchange_ack.edi",
    # only code-list errors, which a syntax parser does not check
    "INVALID_staedi_997_bad_codes.edi",
]

# file -> [(doc_type, ST02, GS06, ISA13, GS08)]
EXPECTED_UNITS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "edinet_850_newline_terminator.edi": [("850", "000000010", "1421", "000003438", "004010")],
    "edinet_940_multi_ISA_multi_GS.edi": [
        ("940", "0001", "3313", "000003438", "004010"),
        ("940", "0002", "3313", "000003438", "004010"),
        ("940", "0001", "3314", "000003438", "004010"),
        ("940", "0001", "3315", "000003439", "004010"),
        ("940", "0002", "3315", "000003439", "004010"),
        ("940", "0001", "3316", "000003439", "004010"),
    ],
    "nodex12_850_two_interchanges.edi": [("850", "000000010", "1421", "000003438", "004010VICS")] * 2,
    "staedi_810_and_850_two_GS_groups.edi": [
        ("810", "000000001", "1", "000000020", "004010"),
        ("810", "000000002", "1", "000000020", "004010"),
        ("850", "000191240", "165", "000000020", "003010"),
    ],
    "pyx12_834_5010_multiple_ST.edi": [
        ("834", f"000{i}", "13360001", "000701336", "005010X220A1") for i in range(1, 5)
    ],
    "staedi_855_two_ST_sets.edi": [
        ("855", "0001", "0001", "000001337", "004010"),
        ("855", "0002", "0001", "000001337", "004010"),
    ],
    "staedi_214_unicode_ellipsis_terminator.edi": [("214", "757760001", "75776", "000075776", "004010")],
    "staedi_210_wrapped_80_columns.edi": [("210", "1305", "2619", "000026003", "004010")],
    "staedi_837P_newline_terminator_indented.edi": [("837", "0001", "1377", "000003438", "005010X222")],
    "staedi_999_5010.edi": [("999", "2870001", "287", "000000286", "005010X231")],
    "staedi_TA1_interchange_ack.edi": [("TA1", "000000050", "", "000000001", "00501")],
}


def units(corpus: Path, name: str) -> list[DocumentUnit]:
    return list(PARSER.parse((corpus / "x12" / name).read_bytes()))


def fail(corpus: Path, name: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        units(corpus, name)
    return info.value


def texts(tree: etree._Element, xpath: str) -> list[str]:
    return [str(v) for v in tree.xpath(xpath)]


# --- corpus: every valid file --------------------------------------------------------


@pytest.mark.parametrize("name", VALID)
def test_valid_corpus_file_parses(corpus: Path, name: str) -> None:
    data = (corpus / "x12" / name).read_bytes()
    assert PARSER.sniff(data)
    got = list(PARSER.parse(data))
    assert got
    for i, u in enumerate(got, start=1):
        assert u.standard == "X12"
        assert u.index == i
        assert u.tree.tag == "Interchange"
        if u.doc_type != "TA1":
            (trans,) = u.tree.xpath("/Interchange/Group/Transaction")
            assert trans[0].tag == "ST"
            assert trans[-1].tag == "SE"
            assert texts(u.tree, "//Transaction/ST/ST02/text()") == [u.control_number]


def test_corpus_has_no_unlisted_x12_file(corpus: Path) -> None:
    listed = set(VALID) | {
        "INVALID_edinet_control_numbers_mismatch.edi",
        "INVALID_edinet_not_edi.edi",
        "INVALID_edinet_wrong_group_and_set_counts.edi",
        "INVALID_pyx12_837_missing_IEA.edi",
        "INVALID_staedi_999_bad_structure.edi",
    }
    assert {p.name for p in (corpus / "x12").glob("*.edi")} == listed


@pytest.mark.parametrize("name", sorted(EXPECTED_UNITS))
def test_units_and_control_numbers(corpus: Path, name: str) -> None:
    got = [
        (u.doc_type, u.control_number, u.group_control_number, u.interchange_control_number, u.version)
        for u in units(corpus, name)
    ]
    assert got == EXPECTED_UNITS[name]


def test_pyx12_278_two_interchanges_twelve_sets(corpus: Path) -> None:
    got = units(corpus, "pyx12_278_two_ISA_multi_GS.edi")
    assert [u.doc_type for u in got] == ["278"] * 3 + ["837", "835", "835", "835"] + ["278"] * 3 + [
        "837",
        "835",
    ]
    assert [u.interchange_control_number for u in got] == ["000010125"] * 7 + ["000010121"] * 5
    assert [u.group_control_number for u in got][3:7] == ["18", "383880001", "2", "3"]
    assert [u.index for u in got] == list(range(1, 13))


def test_sender_receiver_and_envelope_kept(corpus: Path) -> None:
    (u,) = units(corpus, "edinet_850_newline_terminator.edi")
    assert u.sender == {"x12": "ZZ:ABCDEFGHIJKLMNO"}
    assert u.receiver == {"x12": "ZZ:123456789012345"}
    t = u.tree
    assert texts(t, "/Interchange/@standard") == ["X12"]
    assert texts(t, "/Interchange/ISA/ISA06/text()") == ["ABCDEFGHIJKLMNO"]
    assert texts(t, "/Interchange/ISA/ISA16/text()") == [">"]
    assert texts(t, "/Interchange/Group/GS/GS08/text()") == ["004010"]
    assert texts(t, "//Transaction/BEG/BEG03/text()") == ["08292233294"]
    # empty elements are omitted: BEG*00*SA*08292233294**20101127
    assert t.xpath("//BEG/BEG04") == []
    assert texts(t, "//BEG/BEG05/text()") == ["20101127"]


def test_isa_padding_kept_and_sender_stripped(corpus: Path) -> None:
    (u, _) = units(corpus, "nodex12_850_two_interchanges.edi")
    assert texts(u.tree, "/Interchange/ISA/ISA04/text()") == ["ABCCO     "]
    assert texts(u.tree, "/Interchange/ISA/ISA06/text()") == ["4405197800     "]
    assert u.sender == {"x12": "12:4405197800"}
    assert u.receiver == {"x12": "01:999999999"}


def test_ta1_unit(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_TA1_interchange_ack.edi")
    assert u.doc_type == "TA1"
    assert u.control_number == "000000050"
    assert texts(u.tree, "/Interchange/TA1/TA104/text()") == ["A"]
    assert u.tree.xpath("/Interchange/Group") == []


def test_isb_ise_kept_in_interchange(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_997_with_ISB_ISE.edi")
    assert [e.tag for e in u.tree] == ["ISA", "ISB", "ISE", "Group"]
    assert texts(u.tree, "/Interchange/ISE/ISE03/text()") == ["04"]


# --- separators, wrapping, charsets --------------------------------------------------------


def test_wrapped_80_columns(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_210_wrapped_80_columns.edi")
    t = u.tree
    # the ISA itself is wrapped between ISA10 "022" and "4"
    assert texts(t, "/Interchange/ISA/ISA10/text()") == ["0224"]
    assert texts(t, "//ST/ST02/text()") == ["1305"]
    # wrap inside a value: "N9*PO*72" + "1295"
    assert texts(t, "//N9/N902/text()") == ["721295", "721295", "109483"]
    # a wrap right before a data space keeps the space: "L5*3*FSC" + " FUEL SURCHARGE"
    assert texts(t, "//L5[L501='3']/L502/text()") == ["FSC FUEL SURCHARGE 10.50%"]
    assert texts(t, "//SE/SE01/text()") == ["31"]


def test_unicode_ellipsis_terminator(corpus: Path) -> None:
    data = (corpus / "x12" / "staedi_214_unicode_ellipsis_terminator.edi").read_bytes()
    assert read_header(data).segment_terminator == "\u2026"
    (u,) = PARSER.parse(data)
    assert texts(u.tree, "//N1/N102/text()") == ["HEATCO INC", "ADDISON HVAC LLC", "TRANSAVER FREIGHT SE"]
    assert texts(u.tree, "//AT8/AT804/text()") == ["5"]


def test_newline_terminator_with_indentation(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_837P_newline_terminator_indented.edi")
    t = u.tree
    assert texts(t, "//BHT/BHT03/text()") == ["565743"]
    # ISA11 "`" with 00402 is the repetition separator; ISA16 ">" splits composites
    h = read_header((corpus / "x12" / "staedi_837P_newline_terminator_indented.edi").read_bytes())
    assert (h.element_separator, h.repetition_separator, h.component_separator, h.segment_terminator) == (
        "*",
        "`",
        ">",
        "\n",
    )
    assert texts(t, "//SV1/SV101/SV101-1/text()") == ["HC"]
    assert texts(t, "//SV1/SV101/SV101-2/text()") == ["J2941"]
    assert texts(t, "//CLM/CLM05/*/text()") == ["12", "B", "1"]
    assert texts(t, "//N3[N301='123 MAIN ST']/N302/text()") == ["APT B"]


def test_00401_isa11_is_not_a_repetition_separator(corpus: Path) -> None:
    data = (corpus / "x12" / "edinet_856_crossdock_ASN.edi").read_bytes()
    assert read_header(data).repetition_separator is None


def test_repetitions_and_composites(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_997_repetition_and_composites.edi")
    ak3 = u.tree.xpath("//AK3")[0]
    assert [c.tag for c in ak3] == ["AK301", "AK302", "AK302", "AK302", "AK304", "AK304", "AK304"]
    assert texts(ak3, "AK302/text()") == ["AK302-R1", "AK302-R2"]
    assert texts(ak3, "AK302[3]/AK302-1/text()") == ["AK302-R3-COMP1"]
    assert texts(ak3, "AK302[3]/AK302-2/text()") == ["AK302-R3-COMP2"]
    assert texts(ak3, "AK304/text()") == ["AK304-R1", "AK304-R2", "AK304-R3"]
    ak404 = u.tree.xpath("//AK4/AK404")
    assert [[c.text for c in e] for e in ak404] == [
        ["AK404-R1-COMP1", "AK404-R1-COMP2", "AK404-R1-COMP3"],
        ["AK404-R2-COMP1", "AK404-R2-COMP2"],
    ]


def test_dash_repetition_separator_in_00406(corpus: Path) -> None:
    data = (corpus / "x12" / "nodex12_856_v4060_dash_repetition.edi").read_bytes()
    assert read_header(data).repetition_separator == "-"
    (u,) = PARSER.parse(data)
    # under 00406 "-" is the repetition separator, so "999999-001" is two repetitions
    assert texts(u.tree, "//REF[REF01='BM']/REF02/text()") == ["999999", "001"]
    assert texts(u.tree, "//N4[N401='ATLANTA']/N403/text()") == ["31139", "0020"]
    assert [h.get("level") for h in u.tree.xpath("//HLLoop")] == ["S", "O", "I", "I"]


def test_latin1_fallback_and_bom() -> None:
    data = _x12(["ST*850*0001", "BEG*00*SA*PO-1**20240101", "N1*ST*M\xdcLLER", "SE*4*0001"])
    latin = data.replace(b"M\xc3\x9cLLER", "MÜLLER".encode("latin-1"))
    assert latin != data
    for raw in (data, latin, b"\xef\xbb\xbf\r\n  " + data):
        (u,) = PARSER.parse(raw)
        assert texts(u.tree, "//N1/N102/text()") == ["MÜLLER"]


@pytest.mark.parametrize(
    ("sep", "rep", "comp", "term"),
    [
        ("*", "^", ":", "~"),
        ("|", "^", "\\", "\n"),
        ("^", "`", ">", "~\r\n"),
        ("\x1d", "\x1f", "\x1e", "\x1c"),
    ],
)
def test_unusual_separators(sep: str, rep: str, comp: str, term: str) -> None:
    segs = ["ST*850*0001", "BEG*00*SA*PO-9**20240101", "SV1*HC:A1:B2*1", "EB*1*X^Y", "SE*5*0001"]
    data = _x12(segs, version="00501", rep="^")
    table = str.maketrans({"*": sep, "^": rep, ":": comp, "~": "\0"})
    text = data.decode().translate(table).replace("\0", term)
    (u,) = PARSER.parse(text.encode())
    assert texts(u.tree, "//BEG/BEG03/text()") == ["PO-9"]
    assert texts(u.tree, "//SV1/SV101/*/text()") == ["HC", "A1", "B2"]
    assert texts(u.tree, "//EB/EB02/text()") == ["X", "Y"]
    pictures = {c: chr(0x2400 + ord(c)) if ord(c) < 0x20 else c for c in (rep, comp)}
    assert texts(u.tree, "//ISA/ISA11/text()") == [pictures[rep]]
    assert texts(u.tree, "//ISA/ISA16/text()") == [pictures[comp]]


# --- loops -----------------------------------------------------------------------


def test_850_loops(corpus: Path) -> None:
    (u,) = units(corpus, "edinet_850_newline_terminator.edi")
    t = u.tree.xpath("//Transaction")[0]
    assert [c.tag for c in t] == [
        "ST", "BEG", "REF", "REF", "ITD", "DTM", "PKG", "PKG", "TD5", "N1Loop",
        *["PO1Loop"] * 6, "CTT", "AMT", "SE",
    ]  # fmt: skip
    assert texts(t, "N1Loop/N4/N401/text()") == ["SOLON"]
    assert texts(t, "PO1Loop[3]/PID/PID05/text()") == ["LARGE WIDGET"]
    assert [[c.tag for c in loop] for loop in t.xpath("PO1Loop")] == [["PO1", "PID", "PO4"]] * 6


def test_855_loops(corpus: Path) -> None:
    (u,) = units(corpus, "nodex12_855_PO_ack.edi")
    t = u.tree
    assert texts(t, "//Transaction/N1Loop/N3/N301/text()") == [
        "REGULAR EDI ACCOUNT",
        "7615 DISALLE BOULEVARD",
    ]
    assert len(t.xpath("//Transaction/PO1Loop")) == 4
    assert texts(t, "//PO1Loop[PO1/PO101='2']/ACK/ACK29/text()") == ["CW"]
    assert texts(t, "//PO1Loop[PO1/PO101='3']/SCHLoop/SCH/SCH06/text()") == ["20041231"]
    assert t.xpath("//PO1Loop[PO1/PO101='3']/PID") == []


def test_810_loops(corpus: Path) -> None:
    first, second = units(corpus, "staedi_810_invoice_4010.edi")
    t = first.tree
    assert texts(t, "//Transaction/N1Loop/N1/N101/text()") == ["ST", "BT", "RE"]
    assert len(t.xpath("//Transaction/IT1Loop")) == 7
    assert texts(t, "//IT1Loop[7]/PID/PID05/text()") == ["MINI CHIPS LSS"]
    assert [c.tag for c in t.xpath("//Transaction/*")][-5:] == ["TDS", "CAD", "ISSLoop", "CTT", "SE"]
    assert len(second.tree.xpath("//IT1Loop")) == 2


def test_856_hl_nesting(corpus: Path) -> None:
    (u,) = units(corpus, "edinet_856_crossdock_ASN.edi")
    t = u.tree
    (shipment,) = t.xpath("/Interchange/Group/Transaction/HLLoop")
    assert (shipment.get("id"), shipment.get("parent"), shipment.get("level")) == ("1", None, "S")
    assert texts(shipment, "N1Loop/N1/N101/text()") == ["SF", "ST"]
    orders = shipment.xpath("HLLoop")
    assert [(o.get("id"), o.get("parent"), o.get("level")) for o in orders] == [
        ("2", "1", "O"),
        ("11", "1", "O"),
    ]
    assert texts(orders[0], "HLLoop/@id") == ["3", "5", "7", "9"]
    assert texts(orders[0], "HLLoop[@id='5']/HLLoop/@id") == ["6"]
    assert texts(t, "//HLLoop[@id='6']/LIN/LIN03/text()") == ["0000000000831"]
    assert texts(t, "//HLLoop[@level='I']/@parent") == ["3", "5", "7", "9", "12"]
    assert texts(t, "//HLLoop[@id='13']/ancestor::HLLoop/@id") == ["1", "11", "12"]
    assert texts(t, "/Interchange/Group/Transaction/CTT/CTT01/text()") == ["13"]


def test_997_loops(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_997_5010.edi")
    t = u.tree
    assert texts(t, "//Transaction/AK2Loop/AK2/AK202/text()") == ["0021"]
    assert texts(t, "//AK2Loop/AK3Loop/AK3/AK301/text()") == ["NM1"]
    assert texts(t, "//AK2Loop/AK3Loop/AK4/AK402/text()") == ["66"]
    assert texts(t, "//AK2Loop/AK5/AK501/text()") == ["R"]
    assert texts(t, "//Transaction/AK9/AK901/text()") == ["R"]


def test_999_loops(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_999_5010.edi")
    t = u.tree
    loops = t.xpath("//Transaction/AK2Loop")
    assert texts(t, "//Transaction/AK2Loop/IK5/IK501/text()") == ["A", "R", "R"]
    assert texts(loops[1], "IK3Loop/IK3/IK301/text()") == ["CLM"]
    assert texts(loops[1], "IK3Loop/CTX/CTX01/CTX01-1/text()") == ["CLM01"]
    assert texts(loops[1], "IK3Loop/IK4Loop/IK4/IK403/text()") == ["1"]
    assert len(loops[2].xpath("IK3Loop/CTX")) == 2
    # CTX01 repeats: a plain first repetition, then two composites
    assert texts(loops[2], "IK3Loop/CTX[1]/CTX01[1]/text()") == ["SITUATIONAL TRIGGER"]
    assert texts(loops[2], "IK3Loop/CTX[1]/CTX01/CTX01-2/text()") == ["2", "3"]


def test_flat_fallback_for_unknown_sets(corpus: Path) -> None:
    (u,) = units(corpus, "staedi_214_unicode_ellipsis_terminator.edi")
    assert not any(e.tag.endswith("Loop") for e in u.tree.iter())


def test_unknown_segment_stays_inside_its_loop() -> None:
    segs = ["ST*850*0001", "BEG*00*SA*P", "PO1*1*1*EA", "ZZZ*X", "PID*F****A", "CTT*1", "SE*7*0001"]
    (u,) = PARSER.parse(_x12(segs))
    assert [c.tag for c in u.tree.xpath("//PO1Loop/*")] == ["PO1", "ZZZ", "PID"]


# --- envelope checks -------------------------------------------------------------------


def test_invalid_control_numbers(corpus: Path) -> None:
    err = fail(corpus, "INVALID_edinet_control_numbers_mismatch.edi")
    assert isinstance(err, EnvelopeError)
    assert "SE02" in err.reason
    assert "'0002'" in err.reason
    assert "'0001'" in err.reason
    assert (err.position.segment, err.position.segment_tag, err.position.element, err.position.line) == (
        7,
        "SE",
        2,
        7,
    )


def test_invalid_group_and_set_counts(corpus: Path) -> None:
    data = (corpus / "x12" / "INVALID_edinet_wrong_group_and_set_counts.edi").read_bytes()
    gen = PARSER.parse(data)
    first = next(gen)  # the set itself is fine and is yielded before GE is read
    assert first.control_number == "0001"
    with pytest.raises(EnvelopeError) as info:
        next(gen)
    err = info.value
    assert err.reason == "GE01 (number of transaction sets in the group) is 2, expected 1"
    assert (err.position.segment, err.position.segment_tag, err.position.line) == (8, "GE", 8)


def test_not_edi(corpus: Path) -> None:
    err = fail(corpus, "INVALID_edinet_not_edi.edi")
    assert not isinstance(err, EnvelopeError)
    assert "not EDI" in err.reason
    assert "expected ISA" in err.reason
    assert "'Tk9'" in err.reason
    assert not PARSER.sniff((corpus / "x12" / "INVALID_edinet_not_edi.edi").read_bytes())


def test_missing_iea_is_refused_before_any_unit(corpus: Path) -> None:
    gen = PARSER.parse((corpus / "x12" / "INVALID_pyx12_837_missing_IEA.edi").read_bytes())
    with pytest.raises(EnvelopeError) as info:
        next(gen)
    err = info.value
    assert "expected IEA" in err.reason
    assert "'GE'" in err.reason
    assert (err.position.segment_tag, err.position.line) == ("GE", 5)


def test_999_segment_order(corpus: Path) -> None:
    err = fail(corpus, "INVALID_staedi_999_bad_structure.edi")
    assert "IK5" in err.reason
    assert "999" in err.reason
    assert (err.position.segment, err.position.segment_tag, err.position.line) == (4, "IK5", 4)


def test_999_out_of_order_inside_loop() -> None:
    segs = ["ST*999*0001", "AK1*HC*1", "AK2*837*1", "IK5*A", "IK3*CLM*1**8", "AK9*A*1*1*1", "SE*7*0001"]
    with pytest.raises(ParseError, match="IK3 is out of order in AK2Loop"):
        list(PARSER.parse(_x12(segs, gs_id="FA")))


BASE = ["ST*850*0001", "BEG*00*SA*PO-1**20240101", "SE*3*0001"]


@pytest.mark.parametrize(
    ("mutate", "expected", "tag"),
    [
        (
            lambda t: t.replace("SE*3*", "SE*4*"),
            "SE01 (number of included segments ST..SE) is 4, expected 3",
            "SE",
        ),
        (
            lambda t: t.replace("SE*3*", "SE*x*"),
            "SE01 (number of included segments ST..SE) must be a number",
            "SE",
        ),
        (
            lambda t: t.replace("GE*1*7~", "GE*1*8~"),
            "GE02 control number '8' does not match GS06: expected '7'",
            "GE",
        ),
        (
            lambda t: t.replace("IEA*1*", "IEA*2*"),
            "IEA01 (number of functional groups) is 2, expected 1",
            "IEA",
        ),
        (lambda t: t.replace("IEA*1*000000007", "IEA*1*000000008"), "IEA02 control number", "IEA"),
        (
            lambda t: t.replace("SE*3*0001~", ""),
            "transaction set 0001 not terminated: expected SE, found GE",
            "GE",
        ),
        (lambda t: t.replace("GE*1*7~", ""), "group 7 not terminated: expected GE, found IEA", "IEA"),
        (lambda t: t.replace("ST*850*0001~", ""), "outside a transaction set", "BEG"),
        (lambda t: t.replace("GS*", "XS*"), "outside a transaction set", "XS"),
        (lambda t: t.replace("IEA*1*000000007~", "IEA*1*000000007~ISA*junk"), "ISA", None),
        (lambda t: t + "N1*ST*X~IEA*1*000000007~", "data after IEA", None),
        (lambda t: t.replace("ZZ*SENDER  ", "ZZ*SENDER"), "ISA06 must be 15 characters wide", "ISA"),
        (lambda t: t.replace("*U*00401*", "*U*0040*"), "ISA12 must be 5 characters wide", "ISA"),
        (lambda t: t.replace("*P*>~", "*P*~~"), "same character for two delimiters", "ISA"),
        (lambda t: t.replace("*P*>~", "*P*>*"), "same character for two delimiters", "ISA"),
        (
            lambda t: t.replace("*P*>~", "*P*A~"),
            "component separator ISA16 must be a special character",
            "ISA",
        ),
        (lambda t: t.replace("BEG*", "beg*"), "invalid segment id", None),
        (lambda t: t.replace("PO-1", "PO\x01"), "not allowed in XML text", "BEG"),
    ],
)
def test_envelope_errors(mutate: object, expected: str, tag: str | None) -> None:
    text = _x12(BASE).decode()
    assert callable(mutate)
    with pytest.raises(ParseError) as info:
        list(PARSER.parse(mutate(text).encode()))
    assert expected in info.value.reason
    if tag is not None:
        assert info.value.position.segment_tag == tag
    assert info.value.position.line is not None


def test_truncated_inside_a_set() -> None:
    text = _x12(BASE).decode()
    cut = text[: text.index("SE*")]
    with pytest.raises(EnvelopeError, match="expected IEA at the end of the data, found 'BEG'"):
        list(PARSER.parse(cut.encode()))


def test_tolerated_trailers() -> None:
    text = _x12(BASE).decode()
    # unterminated last segment, trailing EOF padding, IEA02 without zero padding
    for variant in (text.rstrip("~\n"), text + "\x1a\x00\n", text.replace("IEA*1*000000007", "IEA*1*7")):
        assert len(list(PARSER.parse(variant.encode()))) == 1


def test_empty_and_tiny_inputs() -> None:
    for data in (b"", b"ISA", b"ISA*", b"   \n", b"\xef\xbb\xbf"):
        with pytest.raises(ParseError):
            list(PARSER.parse(data))


# --- speed ---------------------------------------------------------------------------------


def synthetic_interchange(sets: int) -> bytes:
    """One interchange, one group, ``sets`` 850s of about 1 KB each."""
    out: list[str] = []
    for n in range(1, sets + 1):
        body = [
            f"ST*850*{n:04d}",
            f"BEG*00*SA*PO-{n}**20240101",
            "REF*DP*038",
            "DTM*002*20240115",
            "N1*ST*ACME RETAIL DISTRIBUTION CENTER*92*0001",
            "N3*31875 SOLON RD",
            "N4*SOLON*OH*44139",
        ]
        for line in range(1, 9):
            body += [
                f"PO1*{line}*120*EA*9.25*TE*CB*065322-117*PR*RO*VN*AB{line:04d}",
                f"PID*F****WIDGET NUMBER {line} WITH A LONGER DESCRIPTION",
                "PO4*4*4*EA*PLT94**3*LR*15*CT",
            ]
        body.append("CTT*8")
        body.append(f"SE*{len(body) + 1}*{n:04d}")
        out += body
    return _x12(out, control="1", sets=sets).replace(b"~", b"~\n")


def test_speed_report() -> None:
    data = synthetic_interchange(10_000)
    start = time.perf_counter()
    count = sum(1 for _ in PARSER.parse(data))
    elapsed = time.perf_counter() - start
    assert count == 10_000
    print(
        f"\nX12 parse: {count} sets, {len(data) / 1e6:.1f} MB in {elapsed:.2f} s = "
        f"{count / elapsed:,.0f} sets/s, {len(data) / 1e6 / elapsed:.1f} MB/s"
    )


# --- helpers -------------------------------------------------------------------------------


def _x12(
    segments: list[str],
    *,
    version: str = "00401",
    rep: str = "U",
    control: str = "7",
    gs_id: str = "PO",
    sets: int = 1,
) -> bytes:
    isa = (
        f"ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *240101*1200*{rep}*{version}"
        f"*{int(control):09d}*0*P*>"
    )
    if rep == "^":
        isa = isa[:-1] + ":"
    parts = [
        isa,
        f"GS*{gs_id}*SENDER*RECEIVER*20240101*1200*{control}*X*004010",
        *segments,
        f"GE*{sets}*{control}",
        f"IEA*1*{int(control):09d}",
    ]
    return ("~".join(parts) + "~\n").encode()
