"""The CRM store (SQLite embedded, PostgreSQL for several nodes). See docs/store.md."""

from gateway.store.models import RawState
from gateway.store.store import (
    AuditEntry,
    PartnerRow,
    QuarantineEntry,
    RawMessage,
    Store,
    StoredRecord,
    StoreOutcome,
)

__all__ = [
    "AuditEntry",
    "PartnerRow",
    "QuarantineEntry",
    "RawMessage",
    "RawState",
    "Store",
    "StoreOutcome",
    "StoredRecord",
]
