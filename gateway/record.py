"""The interaction record: one shape for every channel.

``schemas/interaction.xsd`` is the contract for the XML form; :meth:`to_json`
gives the CLI's JSON form. Amounts and quantities are :class:`~decimal.Decimal`
and serialise as strings, never floats.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

NS = "urn:b2b-gateway:interaction:1"


class Kind(enum.StrEnum):
    ORDER = "order"
    ORDER_CHANGE = "order_change"
    ORDER_RESPONSE = "order_response"
    INVOICE = "invoice"
    SHIP_NOTICE = "ship_notice"
    ACKNOWLEDGEMENT = "acknowledgement"
    MESSAGE = "message"
    FAX = "fax"
    OTHER = "other"


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Status(enum.StrEnum):
    """Status of a stored interaction."""

    RECEIVED = "received"  # stored, partner resolved
    UNRESOLVED = "unresolved"  # stored, but no partner profile matches the sender
    DUPLICATE = "duplicate"  # never stored as an interaction; used on raw messages


@dataclass(frozen=True)
class Line:
    line_number: str | None = None
    product_id: str | None = None
    description: str | None = None
    quantity: Decimal | None = None
    unit: str | None = None
    unit_price: Decimal | None = None


@dataclass(frozen=True)
class Party:
    role: str
    name: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str | None
    media_type: str
    size: int
    sha256: str


@dataclass(frozen=True)
class DocumentInfo:
    standard: str | None = None
    type: str | None = None
    version: str | None = None
    control_number: str | None = None


@dataclass(frozen=True)
class MappingRef:
    file: str
    sha256: str


@dataclass(frozen=True)
class PartnerRef:
    id: str
    name: str | None = None


def _ro(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class InteractionRecord:
    id: str
    channel: str
    direction: Direction
    kind: Kind
    received_at: datetime
    raw_sha256: str
    status: Status = Status.RECEIVED
    partner: PartnerRef | None = None
    sender: Mapping[str, str] = field(default_factory=dict)
    occurred_at: datetime | None = None
    document: DocumentInfo = field(default_factory=DocumentInfo)
    subject: str | None = None
    references: Mapping[str, str] = field(default_factory=dict)
    currency: str | None = None
    total_amount: Decimal | None = None
    lines: tuple[Line, ...] = ()
    parties: tuple[Party, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    mapping: MappingRef | None = None
    #: free-form text content (e-mail body, PDF text layer); not in the JSON summary
    body: str | None = None
    #: channel-specific extras (``as2``, ``fax`` objects in later issues)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender", _ro(self.sender))
        object.__setattr__(self, "references", _ro(self.references))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Read-only mapping views cannot be pickled; plain dicts go in, __post_init__
        # wraps them again. (The pipeline spools large interchanges' records to disk.)
        values = tuple(
            dict(v) if isinstance(v, MappingProxyType) else v
            for v in (getattr(self, f.name) for f in fields(self))
        )
        return (type(self), values)

    def to_json(self) -> dict[str, Any]:
        """The CLI's JSON form (field names fixed by the issue tracker)."""

        def dec(v: Decimal | None) -> str | None:
            return None if v is None else format(v, "f")

        def ts(v: datetime | None) -> str | None:
            return None if v is None else v.isoformat()

        out: dict[str, Any] = {
            "id": self.id,
            "channel": self.channel,
            "direction": self.direction.value,
            "kind": self.kind.value,
            "partner": None if self.partner is None else {"id": self.partner.id, "name": self.partner.name},
            "sender": dict(self.sender),
            "occurred_at": ts(self.occurred_at),
            "received_at": ts(self.received_at),
            "document": {
                "standard": self.document.standard,
                "type": self.document.type,
                "version": self.document.version,
                "control_number": self.document.control_number,
            },
            "subject": self.subject,
            "references": dict(self.references),
            "currency": self.currency,
            "total_amount": dec(self.total_amount),
            "lines": [
                {
                    "line_number": ln.line_number,
                    "product_id": ln.product_id,
                    "description": ln.description,
                    "quantity": dec(ln.quantity),
                    "unit": ln.unit,
                    "unit_price": dec(ln.unit_price),
                }
                for ln in self.lines
            ],
            "parties": [{"role": p.role, "name": p.name, "id": p.id} for p in self.parties],
            "attachments": [
                {
                    "filename": a.filename,
                    "media_type": a.media_type,
                    "size": a.size,
                    "sha256": a.sha256,
                }
                for a in self.attachments
            ],
            "raw_sha256": self.raw_sha256,
            "mapping": None
            if self.mapping is None
            else {"file": self.mapping.file, "sha256": self.mapping.sha256},
            "status": self.status.value,
        }
        for key, value in self.extra.items():
            out[key] = value
        return out
