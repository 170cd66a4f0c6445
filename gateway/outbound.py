"""Outbound documents as interactions, whatever channel carries them.

A document we send is parsed and mapped like an inbound one, so the partner's timeline
shows our order responses, invoices and acknowledgements beside theirs; a document no
mapping takes (or that does not parse) is recorded as kind ``other``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping

from gateway.errors import GatewayError
from gateway.mapping import MappingRegistry
from gateway.parsers.base import DocumentUnit
from gateway.parsers.detect import parse_document
from gateway.record import Direction, DocumentInfo, InteractionRecord, Kind, PartnerRef, Status
from gateway.record_xml import validate_record
from gateway.store import RawMessage

log = logging.getLogger(__name__)

# What a document the parsers or mappings cannot take raises; it is then kind "other".
_NOT_MAPPED = (GatewayError, ValueError, LookupError, TypeError)


def _units(data: bytes, channel: str, raw: RawMessage) -> Iterator[DocumentUnit]:
    stack = list(
        reversed(
            list(parse_document(data, channel=channel, filename=raw.filename, facts=dict(raw.transport)))
        )
    )
    while stack:
        unit = stack.pop()
        yield unit
        stack.extend(reversed(unit.children))


def outbound_records(
    raw: RawMessage,
    data: bytes,
    *,
    channel: str,
    partner: PartnerRef,
    our_ids: Mapping[str, str],
    references: Mapping[str, str],
    registry: MappingRegistry | None,
) -> list[InteractionRecord]:
    """The validated outbound interaction(s) for ``data`` sent to ``partner``.

    ``references`` (e.g. the AS2 Message-ID, the SFTP delivery id) are added to each."""
    tag = ", ".join(f"{k}={v}" for k, v in references.items())
    base_refs = dict(references)
    records: list[InteractionRecord] = []
    try:
        units = list(_units(data, channel, raw))
    except _NOT_MAPPED as exc:
        log.info("outbound %s: not a document the parsers know (%s): recorded as 'other'", tag, exc)
        units = []
    for unit in units:
        sender_ids = {**our_ids, **{k: v for k, v in unit.sender.items() if v}}
        record: InteractionRecord | None = None
        if registry is not None:
            try:
                result = registry.select(unit, channel=channel, partner=partner.id).apply(unit)
                record = result.to_record(
                    id=uuid.uuid4().hex,
                    channel=channel,
                    direction=Direction.OUTBOUND,
                    received_at=raw.received_at,
                    raw_sha256=raw.sha256,
                    partner=partner,
                    sender=sender_ids,
                    references={**result.references, **base_refs},
                )
                validate_record(record)
            except _NOT_MAPPED as exc:
                log.info("outbound %s: unit %d not mapped (%s): recorded as 'other'", tag, unit.index, exc)
                record = None
        if record is None:
            record = _other(raw, channel, partner, sender_ids, base_refs, unit)
        records.append(record)
    if not records:
        records.append(_other(raw, channel, partner, dict(our_ids), base_refs, None))
    return records


def _other(
    raw: RawMessage,
    channel: str,
    partner: PartnerRef,
    sender: Mapping[str, str],
    references: Mapping[str, str],
    unit: DocumentUnit | None,
) -> InteractionRecord:
    record = InteractionRecord(
        id=uuid.uuid4().hex,
        channel=channel,
        direction=Direction.OUTBOUND,
        kind=Kind.OTHER,
        received_at=raw.received_at,
        raw_sha256=raw.sha256,
        status=Status.RECEIVED,
        partner=partner,
        sender=sender,
        document=DocumentInfo()
        if unit is None
        else DocumentInfo(
            standard=unit.standard or None,
            type=unit.doc_type or None,
            version=unit.version or None,
            control_number=unit.control_number or None,
        ),
        subject=raw.filename,
        references=references,
    )
    validate_record(record)
    return record
