"""Loop tables for the X12 parser: which segments open a loop and what a loop holds.

Each transaction set is described by a :class:`SetSpec`: its body lists, in standard
order, the segments allowed directly in the set and the loops it contains; a
:class:`Loop` lists its own member segments and nested loops the same way. The
tables follow the ASC X12 004010 structures (with the 005010 additions where a
segment was added), trimmed to what mappings address. Two deliberate deviations,
both fixed by the canonical XML contract (``docs/canonical-xml.md``):

* ``PID`` is a plain member of ``PO1Loop``/``IT1Loop``/``POCLoop``/``HLLoop``
  (the standard wraps it in a one-segment ``PID`` loop), so ``PO1Loop/PID`` works;
* ``CTT`` is a flat summary segment (the standard's ``CTT`` loop with ``AMT`` is
  not materialised), so ``Transaction/CTT`` works.

Sets that are not listed here are parsed flat.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loop:
    """A loop: opened by ``start``; ``body`` holds members and nested loops in order."""

    start: str
    body: tuple[str | Loop, ...] = ()

    @property
    def name(self) -> str:
        return self.start + "Loop"


@dataclass(frozen=True)
class SetSpec:
    """The structure of one transaction set (segments between ST and SE)."""

    body: tuple[str | Loop, ...]
    #: HL loops nest by HL02 (parent id) instead of by table position
    hierarchical: bool = False
    #: every segment must fit the table, in order; anything else is a ParseError.
    #: Only for sets whose structure is fixed by the standard itself (acknowledgements).
    strict: bool = False


def L(start: str, *body: str | Loop) -> Loop:
    return Loop(start, body)


# --- shared loop shapes ------------------------------------------------------------

_TD = ("TD1", "TD5", "TD3", "TD4")
_SAC_CUR = L("SAC", "CUR")
_N9_MSG = L("N9", "DTM", "MSG")
_LM = L("LM", "LQ")
_QTY = L("QTY", "SI")
_SCH = L("SCH", *_TD, "REF")
_CTP = L("CTP", "CUR")
_LDT = L("LDT", "QTY", "MSG", "REF")
_N1_ORDER = L("N1", "N2", "N3", "N4", "NX2", "REF", "PER", "SI", "FOB", *_TD, "PKG")
_N1_ORDER_LINE = L("N1", "N2", "N3", "N4", "QTY", "NX2", "REF", "PER", "SI", "DTM", "FOB", "SCH", *_TD, "PKG")
_SLN_ORDER = L(
    "SLN", "MSG", "SI", "PID", "PO3", "TC2", "ADV", "DTM", "CTP", "PAM", "PO4", "TAX",
    _N9_MSG, _SAC_CUR, _QTY, _N1_ORDER_LINE,
)  # fmt: skip

_ORDER_HEADING: tuple[str | Loop, ...] = (
    "CUR", "REF", "PER", "TAX", "FOB", "CTP", "PAM", "CSH", "TC2", _SAC_CUR, "ITD", "DIS", "INC",
    "DTM", "LDT", "LIN", "SI", "PID", "MEA", "PWK", "PKG", *_TD, "MAN", "PCT", "CTB", "TXI",
    _N9_MSG, _N1_ORDER, _LM, L("SPI", "REF", "DTM", "MSG"), L("ADV", "DTM", "MTX"),
)  # fmt: skip

_ORDER_LINE_BODY: tuple[str | Loop, ...] = (
    "LIN", "SI", "CUR", "CN1", "PO3", _CTP, "MEA", "PID", "PWK", "PO4", "REF", "PER", _SAC_CUR,
    "IT8", "CSH", "ITD", "DIS", "INC", "TAX", "FOB", "SDQ", "IT3", "DTM", "TC2", *_TD, "PCT", "MAN",
    "MSG", "SPI", "TXI", "CTB", _QTY, _SCH, "PKG", "LS", _LDT, _N9_MSG, _N1_ORDER_LINE, _SLN_ORDER,
    L("AMT", "REF", "PCT"), _LM, "LE",
)  # fmt: skip

_SUMMARY: tuple[str, ...] = ("CTT", "AMT")

# --- 850 Purchase Order ------------------------------------------------------------

SET_850 = SetSpec(("BEG", *_ORDER_HEADING, L("PO1", *_ORDER_LINE_BODY), *_SUMMARY))

# --- 855 Purchase Order Acknowledgment ---------------------------------------------
# ACK (line item acknowledgment) is a plain member of the PO1 loop, as in 004010.

SET_855 = SetSpec(("BAK", *_ORDER_HEADING, L("PO1", *_ORDER_LINE_BODY, "ACK"), *_SUMMARY))

# --- 860 Purchase Order Change (buyer initiated) -----------------------------------

SET_860 = SetSpec(("BCH", *_ORDER_HEADING, L("POC", *_ORDER_LINE_BODY), *_SUMMARY))

# --- 810 Invoice -------------------------------------------------------------------

_N1_INVOICE = L("N1", "N2", "N3", "N4", "REF", "PER", "DMG")
_SAC_TXI = L("SAC", "TXI")
_V1 = L("V1", "R4", "DTM")
_FA1 = L("FA1", "FA2")

SET_810 = SetSpec(
    (
        "BIG", "NTE", "CUR", "REF", "YNQ", "PER", _N1_INVOICE, "ITD", "DTM", "FOB", "PID", "MEA",
        "PWK", "PKG", "L7", "BAL", "INC", "PAM", _LM, L("N9", "MSG"), _V1, _FA1,
        L(
            "IT1", "CRC", "QTY", "CUR", "IT3", "TXI", "CTP", "PAM", "MEA", "PID", "PWK", "PKG",
            "PO4", "ITD", "REF", "YNQ", "PER", "IT6", "DTM", "CAD", "L7", "SR", _SAC_TXI,
            L("SLN", "DTM", "REF", "PID", "SAC", "TC2", "TXI"), _N1_INVOICE, _LM, _V1, _FA1,
        ),
        "TDS", "TXI", "CAD", "AMT", _SAC_TXI, L("ISS", "PID"), "CTT",
    )
)  # fmt: skip

# --- 856 Ship Notice/Manifest --------------------------------------------------------
# Every level (shipment, order, tare, pack, item) is one HL loop with the same member
# list; the nesting comes from HL02, not from the table.

SET_856 = SetSpec(
    (
        "BSN", "DTM",
        L(
            "HL", "LIN", "SN1", "SLN", "PRF", "PO4", "PID", "MEA", "PWK", "PKG", *_TD, "TSD", "REF",
            "PER",
            L("LH1", "LH2", "LH3", "LFH", "LEP", "LH4", "LHT", "LHR", "PER", "LHE"),
            L("CLD", "REF", "DTM"),
            "MAN", "DTM", "FOB", "PAL",
            L("N1", "N2", "N3", "N4", "REF", "PER", "FOB"),
            "SDQ", "ETD", "CUR", _SAC_CUR, "GF", "YNQ", _LM, _V1,
        ),
        "CTT",
    ),
    hierarchical=True,
)  # fmt: skip

# --- 997 Functional Acknowledgment / 999 Implementation Acknowledgment -----------------

SET_997 = SetSpec(("AK1", L("AK2", L("AK3", "AK4"), "AK5"), "AK9"), strict=True)

SET_999 = SetSpec(
    ("AK1", L("AK2", L("IK3", "CTX", L("IK4", "CTX")), "IK5"), "AK9"),
    strict=True,
)

#: transaction set id (ST01) -> structure; other sets are flat
SETS: dict[str, SetSpec] = {
    "810": SET_810,
    "850": SET_850,
    "855": SET_855,
    "856": SET_856,
    "860": SET_860,
    "997": SET_997,
    "999": SET_999,
}
