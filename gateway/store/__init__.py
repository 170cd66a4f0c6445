"""The CRM store (SQLite embedded, PostgreSQL for several nodes). See docs/store.md."""

from gateway.store.models import RawState
from gateway.store.store import (
    AuditEntry,
    Outcome,
    PartnerRow,
    Quarantine,
    QuarantineEntry,
    RawMessage,
    SameBytes,
    Store,
    StoredRecord,
    StoreOutcome,
    StoreRecords,
)

__all__ = [
    "AuditEntry",
    "Outcome",
    "PartnerRow",
    "Quarantine",
    "QuarantineEntry",
    "RawMessage",
    "RawState",
    "SameBytes",
    "Store",
    "StoreOutcome",
    "StoreRecords",
    "StoredRecord",
]
