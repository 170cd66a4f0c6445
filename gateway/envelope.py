"""The adapter-independent envelope: what arrived, how, and from whom."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType


class Channel(enum.StrEnum):
    AS2 = "as2"
    SFTP = "sftp"
    EMAIL = "email"
    FAX = "fax"
    FILE = "file"


def _frozen(m: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class Envelope:
    """Raw bytes exactly as received plus the transport facts.

    ``transport`` holds protocol facts (``as2_message_id``, ``mail_from``,
    ``rcpt_to``, ``sftp_host``, ``sftp_path``, ``fax_caller``, ``filename`` ...).
    ``sender`` holds identifiers of the sender as received (``as2_id``,
    ``email``, ``fax``, ``sftp_drop``); the parsers add document-level ones later.
    """

    raw: bytes
    channel: Channel
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    transport: Mapping[str, str] = field(default_factory=dict)
    sender: Mapping[str, str] = field(default_factory=dict)
    filename: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: the bytes on the wire when ``raw`` is content the adapter had to unwrap to
    #: acknowledge it (an AS2 request: raw is the decrypted, verified payload). Both
    #: are archived; the inbox row names the original's sha256 in
    #: ``transport["original_sha256"]``.
    original: bytes | None = None
    #: a file holding the bytes instead of ``raw`` (then empty): streamed into the archive
    #: so a large file is never held whole in memory on its way in. The caller keeps the
    #: file until :meth:`~gateway.pipeline.Pipeline.accept` has returned.
    source: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", _frozen(self.transport))
        object.__setattr__(self, "sender", _frozen(self.sender))
        if self.received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")

    @property
    def size(self) -> int:
        own = self.source.stat().st_size if self.source is not None else len(self.raw)
        return own if self.original is None else max(own, len(self.original))

    #: transport key an adapter sets when it refused the message on the wire (e.g. an
    #: AS2 signature that does not verify) but keeps it for the record: the pipeline
    #: quarantines such a message at once with this text as the reason.
    REJECTED = "rejected"
