"""Segment-group tables for the EDIFACT messages that get ``SGn`` elements.

The canonical XML (``docs/canonical-xml.md``) wraps each instance of a segment
group in an element named after its UN/EDIFACT number (``SG25``). The tables below
are the message structures (branching diagrams) of the UN/EDIFACT directories,
written in a small indented notation so they stay reviewable against the
published directory:

* a line ``SGn TAG`` opens segment group *n*, whose trigger (first) segment is
  ``TAG``; its other members follow on the lines indented one step deeper;
* any other line lists plain segments, in directory order;
* UNH and UNT are implied (first and last, at message level).

Group numbers are the directory's own: they run in the order the groups appear in
the branching diagram (depth first), which is also how the tables are written.

Covered: ORDERS, ORDRSP, INVOIC and DESADV of the directories D.93A, D.96A,
D.96B, D.97A, D.97B and D.01B (where a directory did not change a message, the
table is shared, see ``_SAME_AS``), and CONTRL of syntax version 3, used for every
CONTRL version. The tables were derived from the UN/EDIFACT directory message
structures (cross-checked against the machine-readable grammars that the Bots
EDI translator generates from the UN documents). Every other message, and these
messages under another directory release, is left flat.

Mandatory/conditional status and repeat counts are deliberately not kept: the
parser only needs to know where a segment belongs, and a syntax parser must not
reject a message because a partner sent one DTM too many.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Generic, TypeVar

__all__ = ["GroupDef", "Grouper", "directory_key", "structure_for", "supported"]

T = TypeVar("T")


@dataclass(frozen=True, eq=False)
class GroupDef:
    """A segment group (or, with ``name == ""``, the message level)."""

    name: str
    trigger: str
    children: tuple[str | GroupDef, ...]
    #: ``lookup[i][tag]``: the first child at index >= i that ``tag`` starts or is
    #: (a segment of that tag, or a group triggered by it). Precomputed because the
    #: parser asks this for every segment of every message.
    lookup: tuple[dict[str, int], ...] = field(repr=False, default=())

    @staticmethod
    def build(name: str, trigger: str, children: tuple[str | GroupDef, ...]) -> GroupDef:
        lookup: list[dict[str, int]] = [{} for _ in range(len(children) + 1)]
        for i in range(len(children) - 1, -1, -1):
            row = dict(lookup[i + 1])
            child = children[i]
            row[child if isinstance(child, str) else child.trigger] = i
            lookup[i] = row
        return GroupDef(name, trigger, children, tuple(lookup))

    def groups(self) -> list[GroupDef]:
        """Every group below this one, in directory (depth-first) order."""
        found: list[GroupDef] = []
        for child in self.children:
            if isinstance(child, GroupDef):
                found.append(child)
                found.extend(child.groups())
        return found


_GROUP_LINE = re.compile(r"SG(\d+) ([A-Z][A-Z0-9]{2})")
_SEGMENT = re.compile(r"[A-Z][A-Z0-9]{2}")


def _compile(spec: str, what: str) -> GroupDef:
    """Turn the indented notation into a GroupDef tree (checked: numbering, indentation)."""
    # Each stack entry: (indent of its members, name, trigger, members so far).
    stack: list[tuple[int, str, str, list[str | GroupDef]]] = [(0, "", "UNH", [])]
    expected = 1
    for raw in spec.strip("\n").splitlines():
        text = raw.strip()
        if not text:
            continue
        indent = (len(raw) - len(raw.lstrip(" "))) // 2
        while indent < stack[-1][0]:
            _close(stack)
        if indent != stack[-1][0]:
            raise ValueError(f"{what}: bad indentation: {raw!r}")
        group = _GROUP_LINE.fullmatch(text)
        if group:
            number = int(group.group(1))
            if number != expected:
                raise ValueError(f"{what}: SG{number} out of order, expected SG{expected}")
            expected += 1
            stack.append((indent + 1, f"SG{number}", group.group(2), []))
            continue
        tags = text.split()
        if not all(_SEGMENT.fullmatch(t) for t in tags):
            raise ValueError(f"{what}: bad segment line {raw!r}")
        stack[-1][3].extend(tags)
    while len(stack) > 1:
        _close(stack)
    return GroupDef.build("", "UNH", tuple(stack[0][3]))


def _close(stack: list[tuple[int, str, str, list[str | GroupDef]]]) -> None:
    _, name, trigger, members = stack.pop()
    stack[-1][3].append(GroupDef.build(name, trigger, tuple(members)))


# CONTRL, syntax version 3 (ISO 9735:1988 + amendment 1:1992, annex B): the
# interchange response, then per group/message the responses with their
# segment and data element errors. Syntax 4 (CONTRL 4:1) keeps this shape.
_CONTRL = """
UCI
SG1 UCM
  SG2 UCS
    UCD
SG3 UCF
  SG4 UCM
    SG5 UCS
      UCD
"""

#: (message type, directory) -> structure in the notation above
_SPECS: dict[tuple[str, str], str] = {
    ("ORDERS", "D93A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  PCD DTM
SG8 PAT
  DTM PCD MOA
SG9 TDT
  SG10 LOC
    DTM
SG11 TOD
  LOC
SG12 PAC
  MEA
  SG13 PCI
    RFF DTM GIN
SG14 EQD
  HAN MEA FTX
SG15 SCC
  FTX RFF
  SG16 QTY
    DTM
SG17 API
  DTM RNG
SG18 ALC
  ALI DTM
  SG19 QTY
    RNG
  SG20 PCD
    RNG
  SG21 MOA
    RNG
  SG22 RTE
    RNG
  SG23 TAX
    MOA
SG24 RCS
  RFF DTM FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVA DOC PAI FTX
  SG26 PAT
    DTM PCD MOA
  SG27 PRI
    CUX API RNG DTM
  SG28 RFF
    DTM
  SG29 PAC
    MEA QTY DTM
    SG30 RFF
      DTM
    SG31 PCI
      RFF DTM GIN
  SG32 LOC
    QTY DTM
  SG33 TAX
    MOA LOC
  SG34 NAD
    LOC
    SG35 RFF
      DTM
    SG36 DOC
      DTM
    SG37 CTA
      COM
  SG38 ALC
    ALI DTM
    SG39 QTY
      RNG
    SG40 PCD
      RNG
    SG41 MOA
      RNG
    SG42 RTE
      RNG
    SG43 TAX
      MOA
  SG44 TDT
    SG45 LOC
      DTM
  SG46 TOD
    LOC
  SG47 EQD
    HAN MEA FTX
  SG48 SCC
    FTX RFF
    SG49 QTY
      DTM
  SG50 RCS
    RFF DTM FTX
UNS MOA CNT
SG51 ALC
  ALI MOA
""",
    ("ORDERS", "D96A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  PCD DTM
SG8 PAT
  DTM PCD MOA
SG9 TDT
  SG10 LOC
    DTM
SG11 TOD
  LOC
SG12 PAC
  MEA
  SG13 PCI
    RFF DTM GIN
SG14 EQD
  HAN MEA FTX
SG15 SCC
  FTX RFF
  SG16 QTY
    DTM
SG17 APR
  DTM RNG
SG18 ALC
  ALI DTM
  SG19 QTY
    RNG
  SG20 PCD
    RNG
  SG21 MOA
    RNG
  SG22 RTE
    RNG
  SG23 TAX
    MOA
SG24 RCS
  RFF DTM FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVR DOC PAI FTX
  SG26 CCI
    CAV MEA
  SG27 PAT
    DTM PCD MOA
  SG28 PRI
    CUX APR RNG DTM
  SG29 RFF
    DTM
  SG30 PAC
    MEA QTY DTM
    SG31 RFF
      DTM
    SG32 PCI
      RFF DTM GIN
  SG33 LOC
    QTY DTM
  SG34 TAX
    MOA LOC
  SG35 NAD
    LOC
    SG36 RFF
      DTM
    SG37 DOC
      DTM
    SG38 CTA
      COM
  SG39 ALC
    ALI DTM
    SG40 QTY
      RNG
    SG41 PCD
      RNG
    SG42 MOA
      RNG
    SG43 RTE
      RNG
    SG44 TAX
      MOA
  SG45 TDT
    SG46 LOC
      DTM
  SG47 TOD
    LOC
  SG48 EQD
    HAN MEA FTX
  SG49 SCC
    FTX RFF
    SG50 QTY
      DTM
  SG51 RCS
    RFF DTM FTX
  SG52 STG
    SG53 QTY
      MOA
UNS MOA CNT
SG54 ALC
  ALI MOA
""",
    ("ORDERS", "D97A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  PCD DTM
SG8 PAT
  DTM PCD
  SG9 MOA
    GIR
SG10 TDT
  SG11 LOC
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 EQD
  HAN MEA FTX
SG16 SCC
  FTX RFF
  SG17 QTY
    DTM
SG18 APR
  DTM RNG
SG19 ALC
  ALI DTM
  SG20 QTY
    RNG
  SG21 PCD
    RNG
  SG22 MOA
    RNG
  SG23 RTE
    RNG
  SG24 TAX
    MOA
SG25 RCS
  RFF DTM FTX
SG26 DGS
  FTX
  SG27 CTA
    COM
SG28 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVR DOC PAI FTX
  SG29 CCI
    CAV MEA
  SG30 PAT
    DTM PCD
    SG31 MOA
      GIR
  SG32 PRI
    CUX APR RNG DTM
  SG33 RFF
    DTM
  SG34 PAC
    MEA QTY DTM
    SG35 RFF
      DTM
    SG36 PCI
      RFF DTM GIN
  SG37 LOC
    QTY PCD DTM
  SG38 TAX
    MOA LOC
  SG39 NAD
    LOC
    SG40 RFF
      DTM
    SG41 DOC
      DTM
    SG42 CTA
      COM
  SG43 ALC
    ALI DTM
    SG44 QTY
      RNG
    SG45 PCD
      RNG
    SG46 MOA
      RNG
    SG47 RTE
      RNG
    SG48 TAX
      MOA
  SG49 TDT
    SG50 LOC
      DTM
  SG51 TOD
    LOC
  SG52 EQD
    HAN MEA FTX
  SG53 SCC
    FTX RFF
    SG54 QTY
      DTM
  SG55 RCS
    RFF DTM FTX
  SG56 STG
    SG57 QTY
      MOA
  SG58 DGS
    FTX
    SG59 CTA
      COM
UNS MOA CNT
SG60 ALC
  ALI MOA
""",
    ("ORDERS", "D01B"): """
BGM DTM PAI ALI IMD FTX GIR
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  PCD DTM
SG8 PAT
  DTM PCD
  SG9 MOA
    GIR RJL
SG10 TDT
  SG11 LOC
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 EQD
  HAN MEA FTX
SG16 SCC
  FTX RFF
  SG17 QTY
    DTM
SG18 APR
  DTM RNG
SG19 ALC
  ALI DTM
  SG20 QTY
    RNG
  SG21 PCD
    RNG
  SG22 MOA
    RNG
  SG23 RTE
    RNG
  SG24 TAX
    MOA
SG25 RCS
  RFF DTM FTX
SG26 DGS
  FTX
  SG27 CTA
    COM
SG28 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIS GIN GIR QVR DOC PAI MTD FTX
  SG29 CCI
    CAV MEA
  SG30 PAT
    DTM PCD
    SG31 MOA
      GIR
  SG32 PRI
    CUX APR RNG DTM
  SG33 RFF
    DTM GIS MOA
  SG34 PAC
    MEA QTY DTM
    SG35 RFF
      DTM
    SG36 PCI
      RFF DTM GIN
  SG37 LOC
    QTY PCD DTM
  SG38 TAX
    MOA LOC
  SG39 NAD
    LOC FII
    SG40 RFF
      DTM
    SG41 DOC
      DTM
    SG42 CTA
      COM
  SG43 ALC
    ALI DTM
    SG44 QTY
      RNG
    SG45 PCD
      RNG
    SG46 MOA
      RNG
    SG47 RTE
      RNG
    SG48 TAX
      MOA
  SG49 TDT
    SG50 LOC
      DTM
  SG51 TOD
    LOC
  SG52 EQD
    HAN MEA FTX
  SG53 SCC
    FTX RFF
    SG54 QTY
      DTM
  SG55 RCS
    RFF DTM FTX
  SG56 STG
    SG57 QTY
      MOA
  SG58 DGS
    FTX
    SG59 CTA
      COM
UNS MOA CNT
SG60 ALC
  ALI MOA
""",
    ("ORDRSP", "D93A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  PCD DTM
SG8 PAT
  DTM PCD MOA
SG9 TDT
  SG10 LOC
    DTM
SG11 TOD
  LOC
SG12 PAC
  MEA
  SG13 PCI
    RFF DTM GIN
SG14 EQD
  HAN MEA FTX
SG15 SCC
  FTX RFF
  SG16 QTY
    DTM
SG17 API
  DTM RNG
SG18 ALC
  ALI DTM
  SG19 QTY
    RNG
  SG20 PCD
    RNG
  SG21 MOA
    RNG
  SG22 RTE
    RNG
  SG23 TAX
    MOA
SG24 RCS
  RFF DTM FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVA DOC PAI FTX
  SG26 PAT
    DTM PCD MOA
  SG27 PRI
    CUX API RNG DTM
  SG28 RFF
    DTM
  SG29 PAC
    MEA QTY DTM
    SG30 RFF
      DTM
    SG31 PCI
      RFF DTM GIN
  SG32 LOC
    QTY DTM
  SG33 TAX
    MOA LOC
  SG34 NAD
    LOC
    SG35 RFF
      DTM
    SG36 DOC
      DTM
    SG37 CTA
      COM
  SG38 ALC
    ALI DTM
    SG39 QTY
      RNG
    SG40 PCD
      RNG
    SG41 MOA
      RNG
    SG42 RTE
      RNG
    SG43 TAX
      MOA
  SG44 TDT
    SG45 LOC
      DTM
  SG46 TOD
    LOC
  SG47 EQD
    HAN MEA FTX
  SG48 SCC
    FTX RFF
    SG49 QTY
      DTM
  SG50 RCS
    RFF DTM FTX
UNS MOA CNT
SG51 ALC
  ALI MOA
""",
    ("ORDRSP", "D96A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 AJT
  FTX
SG3 NAD
  LOC FII
  SG4 RFF
    DTM
  SG5 DOC
    DTM
  SG6 CTA
    COM
SG7 TAX
  MOA LOC
SG8 CUX
  PCD DTM
SG9 PAT
  DTM PCD MOA
SG10 TDT
  SG11 LOC
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 EQD
  HAN MEA FTX
SG16 SCC
  FTX RFF
  SG17 QTY
    DTM
SG18 APR
  DTM RNG
SG19 ALC
  ALI DTM
  SG20 QTY
    RNG
  SG21 PCD
    RNG
  SG22 MOA
    RNG
  SG23 RTE
    RNG
  SG24 TAX
    MOA
SG25 RCS
  RFF DTM FTX
SG26 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVR DOC PAI FTX
  SG27 CCI
    CAV MEA
  SG28 PAT
    DTM PCD MOA
  SG29 AJT
    FTX
  SG30 PRI
    CUX APR RNG DTM
  SG31 RFF
    DTM
  SG32 PAC
    MEA QTY DTM
    SG33 RFF
      DTM
    SG34 PCI
      RFF DTM GIN
  SG35 LOC
    QTY DTM
  SG36 TAX
    MOA LOC
  SG37 NAD
    LOC
    SG38 RFF
      DTM
    SG39 DOC
      DTM
    SG40 CTA
      COM
  SG41 ALC
    ALI DTM
    SG42 QTY
      RNG
    SG43 PCD
      RNG
    SG44 MOA
      RNG
    SG45 RTE
      RNG
    SG46 TAX
      MOA
  SG47 TDT
    SG48 LOC
      DTM
  SG49 TOD
    LOC
  SG50 EQD
    HAN MEA FTX
  SG51 SCC
    FTX RFF
    SG52 QTY
      DTM
  SG53 RCS
    RFF DTM FTX
  SG54 STG
    SG55 QTY
      MOA
UNS MOA CNT
SG56 ALC
  ALI MOA
""",
    ("ORDRSP", "D97A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 AJT
  FTX
SG3 NAD
  LOC FII
  SG4 RFF
    DTM
  SG5 DOC
    DTM
  SG6 CTA
    COM
SG7 TAX
  MOA LOC
SG8 CUX
  PCD DTM
SG9 PAT
  DTM PCD MOA
SG10 TDT
  SG11 LOC
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 EQD
  HAN MEA FTX
SG16 SCC
  FTX RFF
  SG17 QTY
    DTM
SG18 APR
  DTM RNG
SG19 ALC
  ALI DTM
  SG20 QTY
    RNG
  SG21 PCD
    RNG
  SG22 MOA
    RNG
  SG23 RTE
    RNG
  SG24 TAX
    MOA
SG25 RCS
  RFF DTM FTX
SG26 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIN GIR QVR DOC PAI FTX
  SG27 CCI
    CAV MEA
  SG28 PAT
    DTM PCD MOA
  SG29 AJT
    FTX
  SG30 PRI
    CUX APR RNG DTM
  SG31 RFF
    DTM
  SG32 PAC
    MEA QTY DTM
    SG33 RFF
      DTM
    SG34 PCI
      RFF DTM GIN
  SG35 LOC
    QTY PCD DTM
  SG36 TAX
    MOA LOC
  SG37 NAD
    LOC
    SG38 RFF
      DTM
    SG39 DOC
      DTM
    SG40 CTA
      COM
  SG41 ALC
    ALI DTM
    SG42 QTY
      RNG
    SG43 PCD
      RNG
    SG44 MOA
      RNG
    SG45 RTE
      RNG
    SG46 TAX
      MOA
  SG47 TDT
    SG48 LOC
      DTM
  SG49 TOD
    LOC
  SG50 EQD
    HAN MEA FTX
  SG51 SCC
    FTX RFF
    SG52 QTY
      DTM
  SG53 RCS
    RFF DTM FTX
  SG54 STG
    SG55 QTY
      MOA
UNS MOA CNT
SG56 ALC
  ALI MOA
""",
    ("ORDRSP", "D01B"): """
BGM DTM PAI ALI IMD FTX GIR
SG1 RFF
  DTM
SG2 AJT
  FTX
SG3 NAD
  LOC FII
  SG4 RFF
    DTM
  SG5 DOC
    DTM
  SG6 CTA
    COM
SG7 TAX
  MOA LOC
SG8 CUX
  PCD DTM
SG9 PAT
  DTM PCD MOA
SG10 TDT
  SG11 LOC
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 EQD
  HAN MEA FTX
SG16 SCC
  FTX RFF
  SG17 QTY
    DTM
SG18 APR
  DTM RNG
SG19 ALC
  ALI DTM
  SG20 QTY
    RNG
  SG21 PCD
    RNG
  SG22 MOA
    RNG
  SG23 RTE
    RNG
  SG24 TAX
    MOA
SG25 RCS
  RFF DTM FTX
SG26 LIN
  PIA IMD MEA QTY PCD ALI DTM MOA GIS GIN GIR QVR DOC PAI MTD FTX
  SG27 CCI
    CAV MEA
  SG28 PAT
    DTM PCD MOA
  SG29 AJT
    FTX
  SG30 PRI
    CUX APR RNG DTM
  SG31 RFF
    DTM
  SG32 PAC
    MEA QTY DTM
    SG33 RFF
      DTM
    SG34 PCI
      RFF DTM GIN
  SG35 LOC
    QTY PCD DTM
  SG36 TAX
    MOA LOC
  SG37 NAD
    LOC FII
    SG38 RFF
      DTM
    SG39 DOC
      DTM
    SG40 CTA
      COM
  SG41 ALC
    ALI DTM
    SG42 QTY
      RNG
    SG43 PCD
      RNG
    SG44 MOA
      RNG
    SG45 RTE
      RNG
    SG46 TAX
      MOA
  SG47 TDT
    SG48 LOC
      DTM
  SG49 TOD
    LOC
  SG50 EQD
    HAN MEA FTX
  SG51 SCC
    FTX RFF
    SG52 QTY
      DTM
  SG53 RCS
    RFF DTM FTX
  SG54 STG
    SG55 QTY
      MOA
UNS MOA CNT
SG56 ALC
  ALI MOA
""",
    ("INVOIC", "D93A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA
SG9 TDT
  SG10 LOC
    DTM
SG11 TOD
  LOC
SG12 PAC
  MEA
  SG13 PCI
    RFF DTM GIN
SG14 ALC
  ALI
  SG15 RFF
    DTM
  SG16 QTY
    RNG
  SG17 PCD
    RNG
  SG18 MOA
    RNG
  SG19 RTE
    RNG
  SG20 TAX
    MOA
SG21 RCS
  RFF DTM FTX
SG22 LIN
  PIA IMD MEA QTY PCD ALI DTM GIN GIR QVA FTX
  SG23 MOA
    CUX
  SG24 PAT
    DTM PCD MOA
  SG25 PRI
    API RNG DTM
  SG26 RFF
    DTM
  SG27 PAC
    MEA
    SG28 PCI
      RFF DTM GIN
  SG29 LOC
    QTY DTM
  SG30 TAX
    MOA LOC
  SG31 NAD
    LOC
    SG32 RFF
      DTM
    SG33 DOC
      DTM
    SG34 CTA
      COM
  SG35 ALC
    ALI
    SG36 QTY
      RNG
    SG37 PCD
      RNG
    SG38 MOA
      RNG
    SG39 RTE
      RNG
    SG40 TAX
      MOA
  SG41 TDT
    SG42 LOC
      DTM
  SG43 TOD
    LOC
  SG44 RCS
    RFF DTM FTX
UNS CNT
SG45 MOA
  SG46 RFF
    DTM
SG47 TAX
  MOA
SG48 ALC
  ALI MOA
""",
    ("INVOIC", "D96A"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA PAI FII
SG9 TDT
  SG10 LOC
    DTM
  SG11 RFF
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 ALC
  ALI
  SG16 RFF
    DTM
  SG17 QTY
    RNG
  SG18 PCD
    RNG
  SG19 MOA
    RNG
  SG20 RTE
    RNG
  SG21 TAX
    MOA
SG22 RCS
  RFF DTM FTX
SG23 AJT
  FTX
SG24 INP
  FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM GIN GIR QVR EQD FTX
  SG26 MOA
    CUX
  SG27 PAT
    DTM PCD MOA
  SG28 PRI
    APR RNG DTM
  SG29 RFF
    DTM
  SG30 PAC
    MEA
    SG31 PCI
      RFF DTM GIN
  SG32 LOC
    QTY DTM
  SG33 TAX
    MOA LOC
  SG34 NAD
    LOC
    SG35 RFF
      DTM
    SG36 DOC
      DTM
    SG37 CTA
      COM
  SG38 ALC
    ALI DTM
    SG39 QTY
      RNG
    SG40 PCD
      RNG
    SG41 MOA
      RNG
    SG42 RTE
      RNG
    SG43 TAX
      MOA
  SG44 TDT
    SG45 LOC
      DTM
  SG46 TOD
    LOC
  SG47 RCS
    RFF DTM FTX
UNS CNT
SG48 MOA
  SG49 RFF
    DTM
SG50 TAX
  MOA
SG51 ALC
  ALI MOA
""",
    ("INVOIC", "D96B"): """
BGM DTM PAI ALI IMD FTX
SG1 RFF
  DTM
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA PAI FII
SG9 TDT
  SG10 LOC
    DTM
  SG11 RFF
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA
  SG14 PCI
    RFF DTM GIN
SG15 ALC
  ALI
  SG16 RFF
    DTM
  SG17 QTY
    RNG
  SG18 PCD
    RNG
  SG19 MOA
    RNG CUX DTM
  SG20 RTE
    RNG
  SG21 TAX
    MOA
SG22 RCS
  RFF DTM FTX
SG23 AJT
  FTX
SG24 INP
  FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM GIN GIR QVR EQD FTX
  SG26 MOA
    CUX
  SG27 PAT
    DTM PCD MOA
  SG28 PRI
    CUX APR RNG DTM
  SG29 RFF
    DTM
  SG30 PAC
    MEA
    SG31 PCI
      RFF DTM GIN
  SG32 LOC
    QTY DTM
  SG33 TAX
    MOA LOC
  SG34 NAD
    LOC
    SG35 RFF
      DTM
    SG36 DOC
      DTM
    SG37 CTA
      COM
  SG38 ALC
    ALI DTM
    SG39 QTY
      RNG
    SG40 PCD
      RNG
    SG41 MOA
      RNG CUX DTM
    SG42 RTE
      RNG
    SG43 TAX
      MOA
  SG44 TDT
    SG45 LOC
      DTM
  SG46 TOD
    LOC
  SG47 RCS
    RFF DTM FTX
UNS CNT
SG48 MOA
  SG49 RFF
    DTM
SG50 TAX
  MOA
SG51 ALC
  ALI MOA
""",
    ("INVOIC", "D97A"): """
BGM DTM PAI ALI IMD FTX LOC GIS DGS
SG1 RFF
  DTM GIR LOC MEA QTY FTX MOA
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA PAI FII
SG9 TDT
  TSR
  SG10 LOC
    DTM
  SG11 RFF
    DTM
SG12 TOD
  LOC
SG13 PAC
  MEA EQD
  SG14 PCI
    RFF DTM GIN
SG15 ALC
  ALI FTX
  SG16 RFF
    DTM
  SG17 QTY
    RNG
  SG18 PCD
    RNG
  SG19 MOA
    RNG CUX DTM
  SG20 RTE
    RNG
  SG21 TAX
    MOA
SG22 RCS
  RFF DTM FTX
SG23 AJT
  FTX
SG24 INP
  FTX
SG25 LIN
  PIA IMD MEA QTY PCD ALI DTM GIN GIR QVR EQD FTX DGS
  SG26 MOA
    CUX
  SG27 PAT
    DTM PCD MOA
  SG28 PRI
    CUX APR RNG DTM
  SG29 RFF
    DTM
  SG30 PAC
    MEA EQD
    SG31 PCI
      RFF DTM GIN
  SG32 LOC
    QTY DTM
  SG33 TAX
    MOA LOC
  SG34 NAD
    LOC
    SG35 RFF
      DTM
    SG36 DOC
      DTM
    SG37 CTA
      COM
  SG38 ALC
    ALI DTM FTX
    SG39 QTY
      RNG
    SG40 PCD
      RNG
    SG41 MOA
      RNG CUX DTM
    SG42 RTE
      RNG
    SG43 TAX
      MOA
  SG44 TDT
    SG45 LOC
      DTM
  SG46 TOD
    LOC
  SG47 RCS
    RFF DTM FTX
  SG48 GIS
    RFF DTM GIR LOC MEA QTY FTX MOA
UNS CNT
SG49 MOA
  SG50 RFF
    DTM
SG51 TAX
  MOA
SG52 ALC
  ALI MOA FTX
""",
    ("INVOIC", "D97B"): """
BGM DTM PAI ALI IMD FTX LOC GIS DGS
SG1 RFF
  DTM GIR LOC MEA QTY FTX MOA
SG2 NAD
  LOC FII
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA PAI FII
SG9 TDT
  TSR
  SG10 LOC
    DTM
  SG11 RFF
    DTM
SG12 TOD
  LOC
SG13 EQD
  SEL
SG14 PAC
  MEA EQD
  SG15 PCI
    RFF DTM GIN
SG16 ALC
  ALI FTX
  SG17 RFF
    DTM
  SG18 QTY
    RNG
  SG19 PCD
    RNG
  SG20 MOA
    RNG CUX DTM
  SG21 RTE
    RNG
  SG22 TAX
    MOA
SG23 RCS
  RFF DTM FTX
SG24 AJT
  FTX
SG25 INP
  FTX
SG26 LIN
  PIA IMD MEA QTY PCD ALI DTM GIN GIR QVR EQD FTX DGS
  SG27 MOA
    CUX
  SG28 PAT
    DTM PCD MOA
  SG29 PRI
    CUX APR RNG DTM
  SG30 RFF
    DTM
  SG31 PAC
    MEA EQD
    SG32 PCI
      RFF DTM GIN
  SG33 LOC
    QTY DTM
  SG34 TAX
    MOA LOC
  SG35 NAD
    LOC
    SG36 RFF
      DTM
    SG37 DOC
      DTM
    SG38 CTA
      COM
  SG39 ALC
    ALI DTM FTX
    SG40 QTY
      RNG
    SG41 PCD
      RNG
    SG42 MOA
      RNG CUX DTM
    SG43 RTE
      RNG
    SG44 TAX
      MOA
  SG45 TDT
    SG46 LOC
      DTM
  SG47 TOD
    LOC
  SG48 RCS
    RFF DTM FTX
  SG49 GIS
    RFF DTM GIR LOC MEA QTY FTX MOA
UNS CNT
SG50 MOA
  SG51 RFF
    DTM
SG52 TAX
  MOA
SG53 ALC
  ALI MOA FTX
""",
    ("INVOIC", "D01B"): """
BGM DTM PAI ALI IMD FTX LOC GIS DGS GIR
SG1 RFF
  DTM GIR LOC MEA QTY FTX MOA RTE
SG2 NAD
  LOC FII MOA
  SG3 RFF
    DTM
  SG4 DOC
    DTM
  SG5 CTA
    COM
SG6 TAX
  MOA LOC
SG7 CUX
  DTM
SG8 PAT
  DTM PCD MOA PAI FII
SG9 TDT
  TSR
  SG10 LOC
    DTM
  SG11 RFF
    DTM
SG12 TOD
  LOC
SG13 EQD
  SEL
SG14 PAC
  MEA EQD
  SG15 PCI
    RFF DTM GIN
SG16 ALC
  ALI FTX
  SG17 RFF
    DTM
  SG18 QTY
    RNG
  SG19 PCD
    RNG
  SG20 MOA
    RNG CUX DTM
  SG21 RTE
    RNG
  SG22 TAX
    MOA
SG23 RCS
  RFF DTM FTX
SG24 AJT
  FTX
SG25 INP
  FTX
SG26 LIN
  PIA PGI IMD MEA QTY PCD ALI DTM GIN GIR QVR EQD FTX DGS
  SG27 MOA
    CUX
  SG28 PAT
    DTM PCD MOA
  SG29 PRI
    CUX APR RNG DTM
  SG30 RFF
    DTM
  SG31 PAC
    MEA EQD
    SG32 PCI
      RFF DTM GIN
  SG33 LOC
    QTY DTM
  SG34 TAX
    MOA LOC
  SG35 NAD
    LOC FII
    SG36 RFF
      DTM
    SG37 DOC
      DTM
    SG38 CTA
      COM
  SG39 ALC
    ALI DTM FTX
    SG40 QTY
      RNG
    SG41 PCD
      RNG
    SG42 MOA
      RNG CUX DTM
    SG43 RTE
      RNG
    SG44 TAX
      MOA
  SG45 TDT
    SG46 LOC
      DTM
  SG47 TOD
    LOC
  SG48 RCS
    RFF DTM FTX
  SG49 GIS
    RFF DTM GIR LOC MEA QTY FTX MOA
UNS CNT
SG50 MOA
  SG51 RFF
    DTM
SG52 TAX
  MOA
SG53 ALC
  ALI MOA FTX
""",
    ("DESADV", "D93A"): """
BGM DTM ALI MEA
SG1 RFF
  DTM
SG2 NAD
  LOC
  SG3 RFF
    DTM
  SG4 CTA
    COM
SG5 TOD
  LOC FTX
SG6 TDT
  PCD
  SG7 LOC
    DTM
SG8 EQD
  MEA SEL EQA
  SG9 HAN
    FTX
SG10 CPS
  FTX
  SG11 PAC
    MEA QTY
    SG12 HAN
      FTX
    SG13 PCI
      RFF DTM GIR
      SG14 GIN
        DLM
  SG15 LIN
    PIA IMD MEA QTY ALI GIN GIR DLM DTM FTX
    SG16 RFF
      DTM
    SG17 DGS
      QTY FTX
    SG18 LOC
      NAD DTM QTY
    SG19 SGP
      QTY
    SG20 PCI
      DTM MEA QTY
      SG21 GIN
        DLM
      SG22 HAN
        FTX GIN
    SG23 QVA
      DTM
CNT
""",
    ("DESADV", "D96A"): """
BGM DTM ALI MEA MOA
SG1 RFF
  DTM
SG2 NAD
  LOC
  SG3 RFF
    DTM
  SG4 CTA
    COM
SG5 TOD
  LOC FTX
SG6 TDT
  PCD
  SG7 LOC
    DTM
SG8 EQD
  MEA SEL EQA
  SG9 HAN
    FTX
SG10 CPS
  FTX
  SG11 PAC
    MEA QTY
    SG12 HAN
      FTX
    SG13 PCI
      RFF DTM GIR
      SG14 GIN
        DLM
  SG15 LIN
    PIA IMD MEA QTY ALI GIN GIR DLM DTM FTX MOA
    SG16 RFF
      DTM
    SG17 DGS
      QTY FTX
    SG18 LOC
      NAD DTM QTY
    SG19 SGP
      QTY
    SG20 PCI
      DTM MEA QTY
      SG21 GIN
        DLM
      SG22 HAN
        FTX GIN
    SG23 QVR
      DTM
CNT
""",
    ("DESADV", "D96B"): """
BGM DTM ALI MEA MOA
SG1 RFF
  DTM
SG2 NAD
  LOC
  SG3 RFF
    DTM
  SG4 CTA
    COM
SG5 TOD
  LOC FTX
SG6 TDT
  PCD
  SG7 LOC
    DTM
SG8 EQD
  MEA SEL EQA
  SG9 HAN
    FTX
SG10 CPS
  FTX
  SG11 PAC
    MEA QTY
    SG12 HAN
      FTX
    SG13 PCI
      RFF DTM GIR
      SG14 GIN
        DLM
  SG15 LIN
    PIA IMD MEA QTY ALI GIN GIR DLM DTM NAD TDT HAN FTX MOA
    SG16 RFF
      NAD CTA DTM
    SG17 DGS
      QTY FTX
    SG18 LOC
      NAD DTM QTY
    SG19 SGP
      QTY
    SG20 PCI
      DTM MEA QTY
      SG21 GIN
        DLM
      SG22 HAN
        FTX GIN
    SG23 QVR
      DTM
CNT
""",
    ("DESADV", "D01B"): """
BGM DTM ALI MEA MOA CUX
SG1 RFF
  DTM
SG2 NAD
  LOC
  SG3 RFF
    DTM
  SG4 CTA
    COM
SG5 TOD
  LOC FTX
SG6 TDT
  PCD TMD
  SG7 LOC
    DTM
SG8 EQD
  MEA SEL EQA
  SG9 HAN
    FTX
SG10 CPS
  FTX QVR
  SG11 PAC
    MEA QTY
    SG12 HAN
      FTX
    SG13 PCI
      RFF DTM
      SG14 GIR
        DTM
      SG15 GIN
        DLM
      SG16 COD
        MEA QTY PCD
  SG17 LIN
    PIA IMD MEA QTY ALI GIN GIR DLM DTM NAD TDT TMD HAN FTX MOA
    SG18 RFF
      NAD CTA DTM
    SG19 DGS
      QTY FTX
    SG20 LOC
      NAD DTM QTY
    SG21 SGP
      QTY
    SG22 PCI
      DTM MEA QTY
      SG23 GIN
        DLM
      SG24 HAN
        FTX GIN
    SG25 QVR
      DTM
CNT
""",
}

#: directories whose structure for a message equals that of an earlier directory
_SAME_AS: dict[tuple[str, str], str] = {
    ("ORDERS", "D96B"): "D96A",
    ("ORDERS", "D97B"): "D97A",
    ("ORDRSP", "D96B"): "D96A",
    ("ORDRSP", "D97B"): "D97A",
    ("DESADV", "D97A"): "D96B",
    ("DESADV", "D97B"): "D96B",
}


def directory_key(version: str, release: str) -> str:
    """``D`` + release (``96A``), the key the tables use; ``""`` if not a directory release.

    The release (UNH 0054) alone identifies the directory: some senders put ``0``
    or ``S`` in 0052 instead of ``D`` but still mean directory D.96A.
    """
    release = release.strip().upper()
    if re.fullmatch(r"\d\d[A-Z]", release):
        return "D" + release
    return ""


@cache
def structure_for(message_type: str, version: str, release: str) -> GroupDef | None:
    """The message structure to group ``message_type`` with, or None (flat)."""
    if message_type == "CONTRL":
        return _compile(_CONTRL, "CONTRL")
    key = (message_type, directory_key(version, release))
    key = (message_type, _SAME_AS.get(key, key[1]))
    spec = _SPECS.get(key)
    return _compile(spec, " ".join(key)) if spec is not None else None


def supported() -> list[tuple[str, str]]:
    """Every (message type, directory) that has a table, for documentation and tests."""
    pairs = sorted(set(_SPECS) | set(_SAME_AS))
    return [("CONTRL", "any"), *pairs]


class Grouper(Generic[T]):
    """Places the segments of one message into segment groups, in order.

    For each segment, the innermost open group that can still take the tag at or
    after its current position wins; groups between it and the innermost are
    closed. A tag that starts a group opens a new instance (closing a previous
    instance of the same group). A tag that fits nowhere stays where it is, in the
    innermost open group: the data is kept in order and nothing is dropped.

    ``open_group(group, parent)`` creates the container of a new group instance
    inside ``parent`` and returns it; ``close_group(container)``, when given, is told
    when an instance ends (innermost first), for writers that emit end tags.
    """

    __slots__ = ("_close", "_containers", "_defs", "_open", "_positions")

    def __init__(
        self,
        structure: GroupDef,
        root: T,
        open_group: Callable[[GroupDef, T], T],
        close_group: Callable[[T], None] | None = None,
    ) -> None:
        self._defs: list[GroupDef] = [structure]
        self._positions: list[int] = [0]
        self._containers: list[T] = [root]
        self._open = open_group
        self._close = close_group

    def _pop_to(self, level: int) -> None:
        if len(self._defs) > level + 1:
            if self._close is not None:
                for container in reversed(self._containers[level + 1 :]):
                    self._close(container)
            del self._defs[level + 1 :], self._positions[level + 1 :], self._containers[level + 1 :]

    def place(self, tag: str) -> T:
        """The container the segment ``tag`` belongs in (opening groups as needed)."""
        defs, positions = self._defs, self._positions
        level = len(defs) - 1
        while level >= 0:
            index = defs[level].lookup[positions[level]].get(tag)
            if index is not None:
                break
            level -= 1
        else:
            return self._containers[-1]
        self._pop_to(level)
        positions[level] = index
        child = defs[level].children[index]
        if isinstance(child, str):
            return self._containers[level]
        container = self._open(child, self._containers[level])
        defs.append(child)
        positions.append(0)
        self._containers.append(container)
        return container

    def root(self) -> T:
        """Close every group and return the message level (where UNT goes)."""
        self._pop_to(0)
        return self._containers[0]


class GroupState:
    """A :class:`Grouper`'s stack as a shared, immutable value, for writers of XML text.

    ``move(tag)`` gives the end/start tags that placing ``tag`` writes (innermost
    group closed first, as ``Grouper.place`` reports them) and the state after it;
    moves are cached per state, so placing a segment is usually one dict lookup.
    Obtain the message-level state with :func:`start_state`.
    """

    __slots__ = ("close_all", "defs", "moves", "positions")

    def __init__(self, defs: tuple[GroupDef, ...], positions: tuple[int, ...]) -> None:
        self.defs = defs
        self.positions = positions
        #: end tags of every open group, innermost first (what ``Grouper.root`` closes)
        self.close_all = "".join(f"</{d.name}>" for d in reversed(defs[1:]))
        self.moves: dict[str, tuple[str, GroupState]] = {}

    def move(self, tag: str) -> tuple[str, GroupState]:
        got = self.moves.get(tag)
        if got is not None:
            return got
        defs, positions = self.defs, self.positions
        level = len(defs) - 1
        while level >= 0:
            index = defs[level].lookup[positions[level]].get(tag)
            if index is not None:
                break
            level -= 1
        else:
            return ("", self)  # fits nowhere: stays in the innermost open group (not cached)
        closes = "".join(f"</{d.name}>" for d in reversed(defs[level + 1 :]))
        child = defs[level].children[index]
        if isinstance(child, str):
            got = (closes, _state(defs[: level + 1], (*positions[:level], index)))
        else:
            got = (
                f"{closes}<{child.name}>",
                _state((*defs[: level + 1], child), (*positions[:level], index, 0)),
            )
        self.moves[tag] = got
        return got


_STATES: dict[tuple[tuple[GroupDef, ...], tuple[int, ...]], GroupState] = {}


def _state(defs: tuple[GroupDef, ...], positions: tuple[int, ...]) -> GroupState:
    key = (defs, positions)
    got = _STATES.get(key)
    if got is None:
        got = _STATES[key] = GroupState(defs, positions)
    return got


def start_state(structure: GroupDef) -> GroupState:
    """The state at the start of a message (message level, nothing placed yet)."""
    return _state((structure,), (0,))
