"""EdifactParser against the real corpus files, plus small interchanges for the cases
the corpus lacks (syntax 4 repetition, level B, UNOY/UNOX, CONTRL, envelope errors).

Expected values were written by hand from reading the files (hex where non-ASCII)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from gateway.errors import EnvelopeError, ParseError
from gateway.parsers.base import DocumentUnit
from gateway.parsers.edifact import EdifactParser
from gateway.parsers.edifact_groups import structure_for, supported

ED = "edifact"


def parse(data: bytes, *, strict: bool = True) -> list[DocumentUnit]:
    return list(EdifactParser(strict=strict, on_problem=lambda e: None).parse(data))


def read(corpus: Path, name: str) -> bytes:
    return (corpus / ED / name).read_bytes()


def text(unit: DocumentUnit, xpath: str) -> str:
    return str(unit.tree.xpath(f"string({xpath})"))


def count(unit: DocumentUnit, xpath: str) -> int:
    result = unit.tree.xpath(f"count({xpath})")
    assert isinstance(result, float)
    return int(result)


# -- every sample file ------------------------------------------------------------------

# name -> (doc_type, version, UNH 0062, UNB 0020, UNG 0048, sender, receiver)
CLEAN = {
    "edireader_INVOIC_D97B_UNOA_custom_UNA_dollar_terminator.edi": (
        "INVOIC",
        "D:97B",
        "00000000000117",
        "00000000000778",
        "",
        "005435656:1",
        "006415160CFS:1",
    ),
    "edireader_INVOIC_D97B_UNOE_cyrillic_with_UNA.edi": (
        "INVOIC",
        "D:97B",
        "00000000000117",
        "00000000000778",
        "",
        "005435656:1",
        "006415160CFS:1",
    ),
    "edireader_ORDRSP_D01B_EAN008_UNOC_latin1.edi": (
        "ORDRSP",
        "D:01B",
        "000001",
        "000001",
        "",
        "0123456789012:14",
        "1234567890128:14",
    ),
    "phpedifact_DESADV_D96A_UNOC1.edi": ("DESADV", "0:96A", "142", "1", "", "1556150:31B", "8888888:ZZ"),
    "phpedifact_DESADV_D96A_UNOC1_utf8_bytes.edi": (
        "DESADV",
        "0:96A",
        "142",
        "1",
        "",
        "1556150:31B",
        "8888888:ZZ",
    ),
    "phpedifact_ORDERS_D01B_EAN010_latin1_release_chars.edi": (
        "ORDERS",
        "D:01B",
        "2019265563",
        "896",
        "",
        "4250159300001:14",
        "unbekannt:14",
    ),
    "phpedifact_PAORES_single_line_no_newlines.edi": ("PAORES", "93:1", "1", "1", "", "6XPPC", "LHPPC"),
    "pydifact_INVOIC_D97A_UNOA1_no_UNA.edi": (
        "INVOIC",
        "D:97A",
        "1",
        "PAYO0012101221",
        "",
        "01010000253001",
        "O0013000093SCHA-Z59",
    ),
    "staedi_INVOIC_D97B_custom_UNA_release_char.edi": (
        "INVOIC",
        "D:97B",
        "00000000000117",
        "00000000000778",
        "",
        "005435656:1",
        "006415160:1",
    ),
    "staedi_INVOIC_D97B_wrapped_fixed_width.edi": (
        "INVOIC",
        "D:97B",
        "00000000000117",
        "00000000000778",
        "",
        "005435656:1",
        "006415160:1",
    ),
    # the two deliberately invalid files are syntactically fine (see test_invalid_* below)
    "INVALID_phpedifact_ORDERS_D01B_missing_release_chars.edi": (
        "ORDERS",
        "D:01B",
        "2019265563",
        "896",
        "",
        "4250159300001:14",
        "unbekannt:14",
    ),
    "INVALID_staedi_INVOIC_D97B_bad_NAD_qualifier.edi": (
        "INVOIC",
        "D:97B",
        "00000000000117",
        "00000000000778",
        "",
        "005435656:1",
        "006415160:1",
    ),
}

# Files the corpus calls valid whose envelope is wrong all the same (counted by hand):
# strict parsing refuses them, lenient parsing yields the message.
# name -> (doc_type, UNH 0062, UNG 0048, the reason's text)
ENVELOPE_WRONG = {
    # UNH BGM TSR FTX FTX FTX UNT = 7 segments
    "phpedifact_IFTMBC_D00B_UNOB2.edi": ("IFTMBC", "0001", "", "expected 7, found 10"),
    # 23 segments UNH..UNT (the 14 matches an older, shorter version of the file)
    "phpedifact_PAORES_release_character.edi": ("PAORES", "1", "", "expected 23, found 14"),
    # UNH BGM DTM RFF ERC FTX UNT = 7
    "pydifact_APERAK_D96A_UNOA4.edi": ("APERAK", "1", "", "expected 7, found 8"),
    # UNH BGM DTM FTX NAD NAD LIN PIA IMD IMD MEA MEA QTY QTY PRI SCC UNS UNT = 18
    "staedi_ORDERS_D96B_with_UNG_group.edi": ("ORDERS", "1", "1", "expected 18, found 21"),
    # ends after UNT: no UNZ
    "pydifact_ORDERS_D96A_EAN008_UNA_comma_decimal.edi": ("ORDERS", "1", "", "expected UNZ"),
}


def test_every_corpus_file_is_covered(corpus: Path) -> None:
    assert {p.name for p in (corpus / ED).glob("*.edi")} == set(CLEAN) | set(ENVELOPE_WRONG)


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_corpus_file_parses(corpus: Path, name: str) -> None:
    doc_type, version, ref, icn, gcn, sender, receiver = CLEAN[name]
    (unit,) = parse(read(corpus, name))
    assert (unit.standard, unit.doc_type, unit.version) == ("EDIFACT", doc_type, version)
    assert (unit.control_number, unit.interchange_control_number, unit.group_control_number) == (
        ref,
        icn,
        gcn,
    )
    assert unit.sender == {"edifact": sender}
    assert unit.receiver == {"edifact": receiver}
    assert unit.index == 1
    root = unit.tree
    assert root.tag == "Interchange"
    assert root.get("standard") == "EDIFACT"
    assert [e.tag for e in root] == ["UNB", "Message", "UNZ"]
    message = root.find("Message")
    assert message is not None
    assert message.get("type") == doc_type
    assert message[0].tag == "UNH"
    assert message[-1].tag == "UNT"
    assert text(unit, "/Interchange/Message/UNH/UNH01/UNH01-1") == ref


@pytest.mark.parametrize("name", sorted(ENVELOPE_WRONG))
def test_corpus_file_with_wrong_envelope(corpus: Path, name: str) -> None:
    doc_type, ref, gcn, reason = ENVELOPE_WRONG[name]
    data = read(corpus, name)
    with pytest.raises(EnvelopeError) as info:
        parse(data)
    assert reason in info.value.reason
    assert info.value.position.segment is not None
    assert info.value.position.line is not None
    problems: list[EnvelopeError] = []
    units = list(EdifactParser(strict=False, on_problem=problems.append).parse(data))
    assert [(u.doc_type, u.control_number, u.group_control_number) for u in units] == [(doc_type, ref, gcn)]
    assert len(problems) == 1
    assert reason in problems[0].reason


def test_as2_payload(corpus: Path) -> None:
    (unit,) = parse((corpus / "as2" / "pyas2lib" / "payload_edifact_orders.txt").read_bytes())
    assert (unit.doc_type, unit.version, unit.control_number, unit.interchange_control_number) == (
        "ORDERS",
        "D:96A",
        "1",
        "5",
    )
    assert unit.sender == {"edifact": "<Sender GLN>:14"}
    assert unit.tree.get("syntax") == "UNOA"
    assert unit.tree.get("syntax_version") == "2"
    message = unit.tree.find("Message")
    assert message is not None
    assert {str(k): str(v) for k, v in message.attrib.items()} == {
        "type": "ORDERS",
        "version": "D",
        "release": "96A",
        "agency": "UN",
        "association": "EAN008",
    }
    # D.96A ORDERS: SG2 NAD > SG3 RFF, SG7 CUX, SG25 LIN > SG28 PRI; UNS/CNT at message level
    assert count(unit, "//SG25/LIN") == 3
    assert count(unit, "/Interchange/Message/SG25/SG28/PRI") == 3
    assert text(unit, "//SG25[3]/PIA/PIA02/PIA02-1") == "3899408268X-39"
    assert text(unit, "//SG2[NAD/NAD01/NAD01-1='IV']/SG3/RFF/RFF01/RFF01-2") == "GB727255821"
    assert text(unit, "//SG2[4]/NAD/NAD04/NAD04-2") == "5 RUE PLAETIS LUXEMBOURG"
    assert text(unit, "//SG2[1]/NAD/NAD02/NAD02-3") == "9"
    assert count(unit, "//SG2[1]/NAD/NAD02/NAD02-2") == 0  # empty components are omitted
    assert count(unit, "//SG7/CUX") == 1
    assert [e.tag for e in message][-3:] == ["UNS", "CNT", "UNT"]
    assert text(unit, "/Interchange/UNZ/UNZ02/UNZ02-1") == "5"


# -- character sets ---------------------------------------------------------------------


def test_unoe_cyrillic(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "edireader_INVOIC_D97B_UNOE_cyrillic_with_UNA.edi"))
    # bytes C0 EB D1 D0 20 E2 D5 DA E1 E2 in ISO 8859-5
    assert text(unit, "//NAD/NAD04/NAD04-1") == "Рыба текст"
    assert unit.tree.get("syntax") == "UNOE"


def test_unoc_latin1(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "edireader_ORDRSP_D01B_EAN008_UNOC_latin1.edi"))
    # DTM+101:L\xf6r\xe9m \xefps\xfc:106
    assert text(unit, "/Interchange/Message/DTM[1]/DTM01/DTM01-2") == "Lörém ïpsü"
    assert count(unit, "//SG26/LIN") > 0  # D.01B ORDRSP: LIN is SG26


def test_unoc_with_utf8_bytes_decodes_as_declared(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_DESADV_D96A_UNOC1_utf8_bytes.edi"))
    value = text(unit, "//LIN[LIN01/LIN01-1='001']/following-sibling::IMD[1]/IMD03/IMD03-4")
    # C3 8B is UTF-8 for Ë; UNOC says ISO 8859-1, and the declared set wins (no guessing).
    assert value == "MUNCI\u00c3\u008b THE MIDDLE"
    assert value.encode("latin-1").decode("utf-8") == "MUNCIË THE MIDDLE"  # nothing is lost


def test_unoc_with_utf8_replacement_chars_and_release(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_ORDERS_D01B_EAN010_latin1_release_chars.edi"))
    # NAD+BY+...++A?+A K\xef\xbf\xbdlte GmbH+...: released '+', and UTF-8 U+FFFD bytes read as Latin-1
    assert text(unit, "//SG2[1]/NAD/NAD04/NAD04-1") == "A+A K\u00ef\u00bf\u00bdlte GmbH"
    assert count(unit, "//SG28/LIN") == 146  # D.01B ORDERS: LIN is SG28; CNT+2:146


def envelope(syntax: str, body: str, una: str = "") -> str:
    return (
        f"{una}UNB+{syntax}+SENDER:ZZ+RECEIVER+240101:1200+IC1'UNH+M1+ORDERS:D:96A:UN'{body}"
        f"UNT+{body.count(chr(39)) + 2}+M1'UNZ+1+IC1'"
    )


@pytest.mark.parametrize(
    ("syntax", "encoding", "value"),
    [
        ("UNOY:4", "utf-8", "Grüße 東京 ✓"),
        ("UNOW:4", "utf-8", "Ελλάδα"),
        ("UNOD:3", "iso8859-2", "Łódź"),
        ("UNOF:3", "iso8859-7", "Αθήνα"),
        ("UNOK:3", "iso8859-9", "İstanbul"),
        ("UNOX:3", "iso2022_jp_2", "東京都"),
        ("UNOB:3", "ascii", "lower case"),
    ],
)
def test_charsets(syntax: str, encoding: str, value: str) -> None:
    data = envelope(syntax, f"NAD+BY+++{value}'").encode(encoding)
    (unit,) = parse(data)
    assert text(unit, "//NAD/NAD04/NAD04-1") == value


def test_unoa_with_8bit_bytes_falls_back_to_latin1() -> None:
    (unit,) = parse(envelope("UNOA:3", "NAD+BY+++M\xfcller'").encode("latin-1"))
    assert text(unit, "//NAD/NAD04/NAD04-1") == "Müller"


def test_invalid_utf8_under_unoy_is_a_parse_error() -> None:
    data = envelope("UNOY:4", "NAD+BY+++AB'").encode().replace(b"AB", b"A\xffB")
    with pytest.raises(ParseError) as info:
        parse(data)
    assert "UNOY" in info.value.reason
    assert info.value.position.offset == data.index(b"\xff")


# -- service characters -----------------------------------------------------------------


def test_release_characters(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_PAORES_release_character.edi"), strict=False)
    ift = [(text(unit, f"//IFT[{i}]/IFT02"), text(unit, f"//IFT[{i}]/IFT03")) for i in range(1, 13)]
    assert ift == [
        ("XYZCOMPANY AVAILABILITY", ""),
        ("NO MORE FLIGHTS 1", ""),
        ("NO MORE FLIGHTS 2?", ""),  # ?? -> ?
        ("NO MORE ' FLIGHTS 3", ""),  # ?' -> ' (terminator released)
        ("NO MORE ? FLIGHTS 3", ""),
        ("NO MORE ?' FLIGHTS 3", ""),  # ??? ' -> ?'
        ("FIELD 1", "FIELD 2"),
        ("FIELD 1?", "FIELD 2"),  # ??+ : released release, then a real separator
        ("FIELD 1?+FIELD 2", ""),  # ???+ : one element
        ("FIELD 1.1FIELD 1.2", ""),
        ("FIELD 1.1?FIELD 1.2", ""),
        ("FIELD 1.1?:FIELD 1.2", ""),
    ]
    assert text(unit, "//IFT[11]/IFT02/IFT02-1") == "FIELD 1.1?"
    assert text(unit, "//IFT[12]/IFT02/IFT02-1") == "FIELD 1.1?:FIELD 1.2"
    assert count(unit, "//IFT[12]/IFT02/IFT02-2") == 0


def test_custom_una_and_release_before_ordinary_character(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "staedi_INVOIC_D97B_custom_UNA_release_char.edi"))
    # UNA=*.? ~ : component '=', element '*', terminator '~'; "006?415160": '?' releases '4'
    assert text(unit, "//UNB/UNB03/UNB03-1") == "006415160"
    assert text(unit, "//SG2[1]/NAD/NAD02/NAD02-3") == "16"
    assert count(unit, "//SG26/LIN") == 2  # D.97B INVOIC: LIN is SG26
    assert text(unit, "//SG26[1]/SG29/PRI/PRI01/PRI01-2") == "1.179"


def test_dollar_terminator(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "edireader_INVOIC_D97B_UNOA_custom_UNA_dollar_terminator.edi"))
    assert text(unit, "//NAD/NAD04/NAD04-1") == "GENERAL WIDGET COMPANY"
    assert text(unit, "//UNB/UNB11/UNB11-1") == "t"


def test_wrapped_equals_unwrapped(corpus: Path) -> None:
    (wrapped,) = parse(read(corpus, "staedi_INVOIC_D97B_wrapped_fixed_width.edi"))
    (plain,) = parse(read(corpus, "staedi_INVOIC_D97B_custom_UNA_release_char.edi"))
    assert etree.tostring(wrapped.tree) == etree.tostring(plain.tree)
    assert text(wrapped, "//NAD[1]/NAD04/NAD04-1") == "CUMMINS MID-RANGE ENGINE PLANT"


def test_single_line(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_PAORES_single_line_no_newlines.edi"))
    assert count(unit, "//Message/*") == 13
    assert text(unit, "//TVL[2]/TVL01/TVL01-4") == "2030"
    assert unit.tree.get("syntax") == "IATB"


def test_line_break_inside_segment_is_not_data(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_IFTMBC_D00B_UNOB2.edi"), strict=False)
    assert (
        text(unit, "//FTX[3]/FTX04/FTX04-1")
        == "THE SHIPPER SHALL NOT BE RESPONSIBLE FOR ANY COSTS/DELAYS OCCUR"
    )
    assert text(unit, "//FTX[3]/FTX04/FTX04-2") == "DUE TO INTERVENTION OF CUSTOMS."


def test_decimal_comma_kept() -> None:
    data = envelope("UNOC:3", "PRI+AAA:27,5'QTY+21:1.000,25'", una="UNA:+,? '").encode()
    (unit,) = parse(data)
    assert text(unit, "//PRI/PRI01/PRI01-2") == "27,5"
    assert text(unit, "//QTY/QTY01/QTY01-2") == "1.000,25"


def test_comma_decimal_corpus_file(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "pydifact_ORDERS_D96A_EAN008_UNA_comma_decimal.edi"), strict=False)
    assert count(unit, "//SG25/LIN") == 2
    assert text(unit, "//SG25[2]/LIN/LIN03/LIN03-1") == "5020436373108"
    assert unit.tree.find("UNZ") is None  # the file ends after UNT


def test_syntax4_repetition_separator() -> None:
    data = envelope("UNOC:4", "NAD+BY+++ONE*TWO:B*THREE'", una="UNA:+.?*'").encode()
    (unit,) = parse(data)
    assert [e.findtext("NAD04-1") for e in unit.tree.iterfind(".//NAD/NAD04")] == ["ONE", "TWO", "THREE"]
    assert text(unit, "//NAD/NAD04[2]/NAD04-2") == "B"


def test_syntax4_default_repetition_without_una() -> None:
    (unit,) = parse(envelope("UNOC:4", "NAD+BY+++A*B'").encode())
    assert count(unit, "//NAD/NAD04") == 2


def test_syntax3_has_no_repetition_separator() -> None:
    # position 5 of UNA is reserved in syntax 3: '*' there is not a separator
    (unit,) = parse(envelope("UNOC:3", "NAD+BY+++A*B'", una="UNA:+.?*'").encode())
    assert text(unit, "//NAD/NAD04/NAD04-1") == "A*B"


def test_level_b_default_separators() -> None:
    body = "UNB\x1dUNOB\x1f3\x1dS\x1dR\x1d240101\x1f1200\x1dIC\x1c"
    body += (
        "UNH\x1d1\x1dORDERS\x1fD\x1f96A\x1fUN\x1cBGM\x1d220\x1dPO\x1fX\x1cUNT\x1d3\x1d1\x1cUNZ\x1d1\x1dIC\x1c"
    )
    (unit,) = parse(body.encode())
    assert text(unit, "//BGM/BGM02/BGM02-2") == "X"
    assert unit.sender == {"edifact": "S"}


def test_placeholder_characters_in_data_take_the_slow_path() -> None:
    value = "A\ue000B\ue001C"
    data = envelope("UNOY:4", f"NAD+BY+++{value}?+X:Y?:Z'").encode()
    (unit,) = parse(data)
    assert text(unit, "//NAD/NAD04/NAD04-1") == value + "+X"
    assert text(unit, "//NAD/NAD04/NAD04-2") == "Y:Z"


def test_xml_special_characters_escaped(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_ORDERS_D01B_EAN010_latin1_release_chars.edi"))
    assert text(unit, "//SG2[2]/NAD/NAD04/NAD04-1") == "FooBar GmbH & Co. KG"
    data = envelope("UNOA:3", 'FTX+AAI+++<a href="x">&amp;</a>\'').encode()
    (unit,) = parse(data)
    assert text(unit, "//FTX/FTX04/FTX04-1") == '<a href="x">&amp;</a>'


def test_control_character_is_a_parse_error() -> None:
    data = envelope("UNOA:3", "FTX+AAI+++A\x01B'").encode()
    with pytest.raises(ParseError) as info:
        parse(data)
    assert "U+0001" in info.value.reason
    assert info.value.position.segment == 3


def test_trailing_junk_is_ignored(corpus: Path) -> None:
    data = read(corpus, "phpedifact_DESADV_D96A_UNOC1.edi") + b"\r\n\x1a\x00\x00"
    assert len(parse(data)) == 1
    assert len(parse(b"\xef\xbb\xbf" + read(corpus, "phpedifact_DESADV_D96A_UNOC1.edi"))) == 1


# -- groups -------------------------------------------------------------------------------


def test_ung_group(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "staedi_ORDERS_D96B_with_UNG_group.edi"), strict=False)
    assert [e.tag for e in unit.tree] == ["UNB", "Group", "UNZ"]
    group = unit.tree.find("Group")
    assert group is not None
    assert [e.tag for e in group] == ["UNG", "Message", "UNE"]
    assert unit.group_control_number == "1"
    assert text(unit, "/Interchange/Group/UNG/UNG01/UNG01-1") == "ORDERS"
    assert text(unit, "/Interchange/Group/UNE/UNE02/UNE02-1") == "1"
    # D.96B ORDERS has the D.96A structure
    assert count(unit, "/Interchange/Group/Message/SG25/LIN") == 1
    assert count(unit, "//SG25/SG28/PRI") == 1
    assert text(unit, "//SG25/IMD[2]/IMD03/IMD03-4") == "0.7066 EURO"


def test_desadv_nesting(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "phpedifact_DESADV_D96A_UNOC1.edi"))
    # DESADV D.96A: SG10 CPS > SG15 LIN > SG16 RFF; "0:96A" still means directory D.96A
    assert count(unit, "/Interchange/Message/SG10/CPS") == 1
    assert count(unit, "//SG10/SG15/LIN") == 2
    assert count(unit, "//SG15/SG16/RFF") == 4
    assert count(unit, "/Interchange/Message/SG1/RFF") == 2
    assert count(unit, "/Interchange/Message/SG2/NAD") == 2


def test_invoic_d97a_groups(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "pydifact_INVOIC_D97A_UNOA1_no_UNA.edi"))
    assert count(unit, "/Interchange/Message/SG2/SG3/RFF") == 2
    assert count(unit, "/Interchange/Message/SG25/LIN") == 1
    assert count(unit, "//SG25/SG28/PRI") == 1
    assert count(unit, "//SG25/SG29/RFF") == 3


def test_contrl_groups() -> None:
    body = (
        "UNB+UNOA:3+S+R+240101:1200+IC'UNH+1+CONTRL:D:3:UN'UCI+ORIG+S+R+4'"
        "UCM+1+ORDERS:D:96A:UN+4'UCS+5+13'UCD+12+2:1'UCF+G1+S+R+7'UCM+2+INVOIC:D:96A:UN+4'"
        "UCS+3+35'UCD+12+1'UNT+10+1'UNZ+1+IC'"
    )
    (unit,) = parse(body.encode())
    assert unit.doc_type == "CONTRL"
    assert count(unit, "/Interchange/Message/SG1/UCM") == 1
    assert text(unit, "//SG1/SG2/UCD/UCD02/UCD02-1") == "2"
    assert count(unit, "/Interchange/Message/SG3/UCF") == 1
    assert text(unit, "//SG3/SG4/SG5/UCS/UCS02/UCS02-1") == "35"


def test_unknown_message_is_flat(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "pydifact_APERAK_D96A_UNOA4.edi"), strict=False)
    assert not any(e.tag.startswith("SG") for e in unit.tree.iter())


def test_group_tables() -> None:
    pairs = supported()
    for message in ("ORDERS", "ORDRSP", "INVOIC", "DESADV"):
        for directory in ("D93A", "D96A", "D96B", "D97A", "D97B", "D01B"):
            assert (message, directory) in pairs
    lin = {
        ("ORDERS", "96A"): "SG25",
        ("ORDERS", "01B"): "SG28",
        ("INVOIC", "96A"): "SG25",
        ("INVOIC", "97B"): "SG26",
        ("DESADV", "96A"): "SG15",
    }
    for (message, release), name in lin.items():
        structure = structure_for(message, "D", release)
        assert structure is not None
        assert any(g.name == name and g.trigger == "LIN" for g in structure.groups())
    assert structure_for("ORDERS", "D", "12B") is None  # no table: flat
    assert structure_for("APERAK", "D", "96A") is None


# -- envelope errors ----------------------------------------------------------------------


def payload(corpus: Path) -> str:
    return (corpus / "as2" / "pyas2lib" / "payload_edifact_orders.txt").read_text("ascii")


def envelope_error(data: str) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as info:
        parse(data.encode("latin-1"))
    return info.value


def test_unt_count(corpus: Path) -> None:
    err = envelope_error(payload(corpus).replace("UNT+26+1'", "UNT+25+1'"))
    assert err.reason == "UNT01 (number of segments UNH..UNT): expected 26, found 25"
    assert (err.position.segment, err.position.segment_tag, err.position.element, err.position.line) == (
        27,
        "UNT",
        1,
        27,
    )


def test_unt_reference(corpus: Path) -> None:
    err = envelope_error(payload(corpus).replace("UNT+26+1'", "UNT+26+9'"))
    assert "expected '1', found '9'" in err.reason
    assert (err.position.segment_tag, err.position.element) == ("UNT", 2)


def test_unz_count_and_reference_raise_after_the_units(corpus: Path) -> None:
    data = payload(corpus).replace("UNZ+1+5'", "UNZ+2+5'").encode()
    iterator: Iterator[DocumentUnit] = EdifactParser().parse(data)
    first = next(iterator)  # streaming: the message comes out before UNZ is checked
    assert first.control_number == "1"
    with pytest.raises(EnvelopeError) as info:
        next(iterator)
    assert info.value.reason == "UNZ01 (number of messages): expected 1, found 2"
    assert info.value.position.segment_tag == "UNZ"
    err = envelope_error(payload(corpus).replace("UNZ+1+5'", "UNZ+1+6'"))
    assert "UNZ02" in err.reason
    assert "expected '5', found '6'" in err.reason


def test_une_checks(corpus: Path) -> None:
    good = read(corpus, "staedi_ORDERS_D96B_with_UNG_group.edi").decode().replace("UNT+21+1'", "UNT+18+1'")
    assert len(parse(good.encode())) == 1
    err = envelope_error(good.replace("UNE+1+1'", "UNE+3+1'"))
    assert err.reason == "UNE01 (number of messages in the group): expected 1, found 3"
    err = envelope_error(good.replace("UNE+1+1'", "UNE+1+7'"))
    assert "UNE02" in err.reason
    assert "expected '1', found '7'" in err.reason
    err = envelope_error(good.replace("UNZ+1+", "UNZ+4+"))
    assert err.reason == "UNZ01 (number of groups): expected 1, found 4"
    err = envelope_error(good.replace("UNE+1+1'", ""))
    assert "expected UNE" in err.reason


def test_missing_unt(corpus: Path) -> None:
    err = envelope_error(payload(corpus).replace("UNT+26+1'", ""))
    assert "expected UNT, found UNZ" in err.reason
    truncated = payload(corpus).split("UNS+S'")[0]
    err = envelope_error(truncated)
    assert "expected UNZ" in err.reason  # refused before any unit is yielded


def test_missing_unz_refused_before_first_unit(corpus: Path) -> None:
    data = payload(corpus).replace("UNZ+1+5'", "").encode()
    iterator = EdifactParser().parse(data)
    with pytest.raises(EnvelopeError) as info:
        next(iterator)
    assert "is not terminated" in info.value.reason
    assert "expected UNZ" in info.value.reason


def test_segment_outside_message(corpus: Path) -> None:
    err = envelope_error(payload(corpus).replace("UNZ+1+5'", "FTX+AAI+++LATE'UNZ+1+5'"))
    assert err.reason == "segment FTX outside a message (no UNH before it)"
    assert err.position.segment_tag == "FTX"


def test_not_edifact(corpus: Path) -> None:
    data = (corpus / "x12" / "INVALID_edinet_not_edi.edi").read_bytes()
    assert not EdifactParser().sniff(data)
    with pytest.raises(EnvelopeError) as info:
        parse(data)
    assert info.value.reason.startswith("not EDIFACT")
    with pytest.raises(EnvelopeError):
        parse(b"UNH+1+ORDERS:D:96A:UN'UNT+2+1'")
    with pytest.raises(EnvelopeError):
        parse(b"   ")


def test_bad_segment_tag() -> None:
    with pytest.raises(ParseError) as info:
        parse(envelope("UNOA:3", "bgm+220'").encode())
    assert "segment tag" in info.value.reason
    assert info.value.position.segment == 3


# -- several messages and interchanges ----------------------------------------------------


def test_two_interchanges_with_different_service_characters(corpus: Path) -> None:
    data = read(corpus, "staedi_INVOIC_D97B_custom_UNA_release_char.edi") + read(
        corpus, "phpedifact_ORDERS_D01B_EAN010_latin1_release_chars.edi"
    )
    units = parse(data)
    assert [(u.index, u.doc_type, u.interchange_control_number) for u in units] == [
        (1, "INVOIC", "00000000000778"),
        (2, "ORDERS", "896"),
    ]


def test_many_messages_streamed(corpus: Path) -> None:
    text_ = payload(corpus)
    unh = text_.index("UNH+")
    unz = text_.index("UNZ+")
    message = text_[unh:unz]
    body = "".join(
        message.replace("UNH+1+", f"UNH+{i}+").replace("UNT+26+1", f"UNT+26+{i}") for i in range(1, 51)
    )
    data = (text_[:unh] + body + "UNZ+50+5'").encode()
    units = parse(data)
    assert [u.index for u in units] == list(range(1, 51))
    assert units[49].control_number == "50"
    assert all(len(u.tree.findall("Message")) == 1 for u in units)


# -- the two deliberately invalid files --------------------------------------------------------


def test_invalid_missing_release_chars_is_syntactically_valid(corpus: Path) -> None:
    """Unescaped ':' only moves text into extra components; '?*' releases a character
    that is no separator. Nothing a syntax parser can see: the segment count stays 599."""
    (bad,) = parse(read(corpus, "INVALID_phpedifact_ORDERS_D01B_missing_release_chars.edi"))
    (good,) = parse(read(corpus, "phpedifact_ORDERS_D01B_EAN010_latin1_release_chars.edi"))
    assert text(bad, "//IMD[contains(., 'Vollmilch')]/IMD03/IMD03-4") == text(
        good, "//IMD[contains(., 'Vollmilch')]/IMD03/IMD03-4"
    )
    # "... Sup 1:10 und ... 1:6" -> C273 gets 7 components; the directory allows 6
    assert count(bad, "//IMD/IMD03[IMD03-7]") == 1
    assert count(good, "//IMD/IMD03[IMD03-7]") == 0
    assert text(bad, "//IMD/IMD03[IMD03-7]/IMD03-7") == "6"


def test_invalid_nad_qualifier_is_a_code_list_matter(corpus: Path) -> None:
    (unit,) = parse(read(corpus, "INVALID_staedi_INVOIC_D97B_bad_NAD_qualifier.edi"))
    assert text(unit, "//SG2[1]/NAD/NAD01/NAD01-1") == "BYZZ"


def test_sniff(corpus: Path) -> None:
    parser = EdifactParser()
    for name in CLEAN:
        assert parser.sniff(read(corpus, name))
    assert not parser.sniff(b"ISA*00*")
    assert not parser.sniff(b"UNBOUND")
    assert parser.standard == "EDIFACT"
