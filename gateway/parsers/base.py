"""What every document parser produces.

A parser turns raw bytes into one or more :class:`DocumentUnit` objects. A unit is
one business document: one X12 transaction set, one EDIFACT message, one CSV
order, one XML document, one e-mail, one fax. Each unit carries its canonical XML
(see ``docs/canonical-xml.md``) and the facts the pipeline needs without looking
into the XML: standard, type, version, control numbers and sender identifiers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from lxml import etree


@dataclass(frozen=True)
class DocumentUnit:
    """One business document in canonical XML."""

    #: ``X12``, ``EDIFACT``, ``CSV``, ``XML``, ``EMAIL``, ``FAX``, ``TEXT``, ``PDF``
    standard: str
    #: document type: X12 set id (``850``), EDIFACT message type (``ORDERS``),
    #: XML root local name, ``order`` for CSV, ``message`` for e-mail ...
    doc_type: str
    #: canonical XML of this unit alone (envelopes trimmed to this unit)
    tree: etree._Element
    #: X12 GS08 (``004010``), EDIFACT ``D:96A``; ``""`` when not applicable
    version: str = ""
    #: the unit's own control number (ST02, UNH 0062); ``""`` when none
    control_number: str = ""
    #: the interchange control number (ISA13, UNB 0020); ``""`` when none
    interchange_control_number: str = ""
    #: the group control number (GS06, UNG 0048); ``""`` when none
    group_control_number: str = ""
    #: identifiers of the sender as found in the document, e.g.
    #: ``{"x12": "ZZ:SENDERISA"}``, ``{"edifact": "12345678:14"}``,
    #: ``{"email": "a@b.test"}``; keys match partner identity kinds.
    sender: Mapping[str, str] = field(default_factory=dict)
    #: identifiers of the receiver as found in the document (same keys)
    receiver: Mapping[str, str] = field(default_factory=dict)
    #: 1-based ordinal of this unit within the raw message
    index: int = 1
    #: units found inside this one (e-mail attachments that are documents)
    children: tuple[DocumentUnit, ...] = ()
    #: attachments to record: dicts with filename, media_type, size, sha256
    attachments: tuple[Mapping[str, str | int], ...] = ()
    #: parts that failed inside this unit without failing it (an e-mail attachment
    #: named as an order that does not parse): ``(what, reason)``; the pipeline puts
    #: them on the record (``references.attachment_errors``) and in the audit log
    problems: tuple[tuple[str, str], ...] = ()
    #: channel-specific objects for the record's JSON form (``{"fax": {...}}``)
    extra: Mapping[str, Any] = field(default_factory=dict)


class Parser(Protocol):
    """A document parser. ``parse`` raises :class:`gateway.errors.ParseError`."""

    standard: str

    def sniff(self, data: bytes) -> bool:
        """Cheap check whether ``data`` looks like this format."""
        ...

    def parse(self, data: bytes) -> Iterator[DocumentUnit]:
        """Yield units as they complete, so a 50 MB interchange never exists as one
        tree. Envelope checks that need the trailer raise after the last unit has
        been yielded: callers must consume the whole iterator before trusting it."""
        ...
