"""Contract suite for gateway.store, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError

from gateway.envelope import Channel, Envelope
from gateway.errors import Stage, StoreUnavailable
from gateway.record import (
    Attachment,
    Direction,
    DocumentInfo,
    InteractionRecord,
    Kind,
    Line,
    MappingRef,
    PartnerRef,
    Party,
    Status,
)
from gateway.store import (
    PartnerRow,
    Quarantine,
    QuarantineEntry,
    RawState,
    SameBytes,
    Store,
    StoreOutcome,
    StoreRecords,
)
from gateway.store.engine import SYNC_FULL, SYNC_NORMAL
from gateway.store.models import Base
from gateway.store.store import MIGRATIONS
from tests.fixtures_postgres import free_port, fresh_database

T0 = datetime(2024, 5, 1, 8, 0, 0, tzinfo=UTC)


R = TypeVar("R")


def in_parallel(fns: Sequence[Callable[[], R]]) -> list[R]:
    """Run ``fns`` in threads released together; a worker's exception fails the test."""
    start = threading.Barrier(len(fns))

    def go(fn: Callable[[], R]) -> R:
        start.wait()
        return fn()

    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(go, fn) for fn in fns]
        return [f.result(timeout=120) for f in futures]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    with fresh_database(server) as url:
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def other(store: Store, store_url: str) -> Iterator[Store]:
    """A second Store on the same database, as another process or node would have."""
    s = Store(store_url)
    yield s
    s.close()


def envelope(
    raw: bytes = b"UNA:+.? '",
    *,
    channel: Channel = Channel.AS2,
    at: datetime = T0,
    **kw: Any,
) -> Envelope:
    return Envelope(raw=raw, channel=channel, received_at=at, **kw)


def sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def add(store: Store, raw: bytes = b"data", **kw: Any) -> str:
    env = envelope(raw, **kw)
    return store.add_raw(env, sha(raw)).id


def record(rid: str, **kw: Any) -> InteractionRecord:
    base: dict[str, Any] = {
        "id": rid,
        "channel": "as2",
        "direction": Direction.INBOUND,
        "kind": Kind.ORDER,
        "received_at": T0,
        "raw_sha256": "0" * 64,
        "partner": PartnerRef("acme", "ACME"),
    }
    base.update(kw)
    return InteractionRecord(**base)


def full_record(rid: str = "rec-full") -> InteractionRecord:
    cet = timezone(timedelta(hours=2))
    return InteractionRecord(
        id=rid,
        channel="email",
        direction=Direction.INBOUND,
        kind=Kind.INVOICE,
        received_at=datetime(2024, 5, 1, 10, 30, 15, 123456, tzinfo=cet),
        raw_sha256="ab" * 32,
        status=Status.RECEIVED,
        partner=PartnerRef("müller", "Müller & Söhne GmbH"),
        sender={"email": "büro@müller.test", "as2_id": "MUELLER"},
        occurred_at=datetime(2024, 4, 30, 23, 59, 59, tzinfo=UTC),
        document=DocumentInfo(standard="EDIFACT", type="INVOIC", version="D96A", control_number="000000042"),
        subject="Rechnung Nr. 4711 — Überweisung ✓",
        references={"invoice": "4711", "po": "PO-ÄÖÜ-1"},
        currency="EUR",
        total_amount=Decimal("12.340"),
        lines=(
            Line("1", "SKU-1", "Schraube M4 × 20", Decimal("1000"), "PCE", Decimal("0.01234")),
            Line("2", None, None, Decimal("-0.50"), None, Decimal("99999999999999.999999")),
            Line(),
        ),
        parties=(Party("buyer", "Käufer AG", "4000000000001"), Party("seller")),
        attachments=(
            Attachment("rechnung.pdf", "application/pdf", 12345, "cd" * 32),
            Attachment(None, "text/plain", 0, "ef" * 32),
        ),
        mapping=MappingRef("mappings/invoic.xml", "12" * 32),
        body="Sehr geehrte Damen und Herren,\n\nanbei die Rechnung. 日本語テキスト\n",
        extra={"as2": {"message_id": "<1@x>", "mdn": "signed"}, "pages": 3, "flag": True, "none": None},
    )


# --- schema -------------------------------------------------------------------------


_MODEL_MODULES = ("gateway.as2.ledger",)


def _script_heads() -> set[str]:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return set(ScriptDirectory.from_config(cfg).get_heads())


def test_migrate_is_idempotent_and_matches_models(store: Store, store_url: str) -> None:
    # Other features declare their tables on the store's Base and add revisions to its
    # migrations (the AS2 ledger); every such model must be imported for the comparison.
    for module in _MODEL_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    store.migrate()
    store.migrate()
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            versions = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
            assert versions == _script_heads()
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()


def test_migration_0002_replaces_the_sha256_index(store: Store, store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("raw_messages")}
    finally:
        engine.dispose()
    assert indexes["ix_raw_messages_sha256_state_received_at"] == ["sha256", "state", "received_at", "id"]
    assert "ix_raw_messages_sha256" not in indexes


def test_migration_0002_downgrades_and_upgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    Store(url).migrate()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    command.downgrade(cfg, "0001")
    engine = create_engine(url)
    try:
        names = {ix["name"] for ix in inspect(engine).get_indexes("raw_messages")}
        assert "ix_raw_messages_sha256" in names
        assert "ix_raw_messages_sha256_state_received_at" not in names
    finally:
        engine.dispose()
    store = Store(url)
    store.migrate()  # back to head
    add(store, b"after downgrade and upgrade")
    assert store.pending_count() == 1
    store.close()


def _plan(store: Store, name: str) -> str:
    stmt = getattr(store._sql, name)
    if name == "key_owners":
        stmt = stmt.params(p_keys=["k1", "k2"])
    if name in {"lock_raws", "raws_exist"}:
        stmt = stmt.params(p_ids=["r1", "r2"])
    if name == "first_raws_with_sha":
        stmt = stmt.params(p_shas=["s1", "s2"], p_ids=["r1", "r2"])
    with store._engine.connect() as conn:
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = tuple([None] * compiled.string.count("?"))
        return " | ".join(
            str(row[3]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params)
        )


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'plans.db'}")
    s.migrate()
    yield s
    s.close()


def test_hot_lookups_use_an_index_on_sqlite(sqlite_store: Store) -> None:
    """EXPLAIN QUERY PLAN of the per-message queries: index seeks, never a table scan."""
    store = sqlite_store
    checks = {
        "first_raw_with_sha": "ix_raw_messages_sha256_state_received_at (sha256=? AND state=?)",
        "first_raws_with_sha": "ix_raw_messages_sha256_state_received_at (sha256=? AND state=?)",
        "lock_raw": "uq_quarantine_open_raw_id (raw_id=?)",
        "lock_raws": "uq_quarantine_open_raw_id (raw_id=?)",
        "raws_exist": "(id=?)",
        "claim": "ix_raw_messages_state_received_at (state=?)",
        "claim_id": "(id=?)",
        "get_raw": "(id=?)",
        "key_owners": "(dedup_key=?)",
        "resolve_quarantine": "(id=?)",
    }
    for name, expected in checks.items():
        plan = _plan(store, name)
        assert expected in plan, (name, plan)
        assert "SCAN" not in plan, (name, plan)
    assert "TEMP B-TREE" not in _plan(store, "first_raw_with_sha")  # already in order


# --- inbox --------------------------------------------------------------------------


def test_add_raw_is_committed_and_visible_elsewhere(store: Store, other: Store) -> None:
    env = envelope(
        b"ISA*00*...",
        channel=Channel.SFTP,
        transport={"sftp_host": "sftp.example", "sftp_path": "/out/ö.edi"},
        sender={"sftp_drop": "acme-drop"},
        filename="ö.edi",
    )
    raw = store.add_raw(env, sha(env.raw))
    seen = other.get_raw(env.id)
    assert seen == raw
    assert seen is not None
    assert seen.state is RawState.RECEIVED
    assert (seen.channel, seen.size, seen.filename, seen.attempts) == ("sftp", len(env.raw), "ö.edi", 0)
    assert dict(seen.transport) == {"sftp_host": "sftp.example", "sftp_path": "/out/ö.edi"}
    assert dict(seen.sender) == {"sftp_drop": "acme-drop"}
    assert seen.received_at == T0
    assert seen.received_at.tzinfo is not None
    assert seen.duplicate_of is None
    assert seen.error is None
    assert other.pending_count() == 1


def test_add_raw_twice_is_idempotent(store: Store) -> None:
    env = envelope(b"abc")
    first = store.add_raw(env, sha(b"abc"))
    assert store.add_raw(env, sha(b"abc")) == first
    with pytest.raises(ValueError, match="other content"):
        store.add_raw(env, sha(b"xyz"))
    assert store.pending_count() == 1


def test_get_raw_unknown(store: Store) -> None:
    assert store.get_raw("nope") is None


def test_claim_oldest_first_and_marks_processing(store: Store) -> None:
    ids = [add(store, f"m{i}".encode(), at=T0 + timedelta(minutes=10 - i)) for i in range(3)]
    claimed = store.claim("worker-1", limit=2)
    assert [m.id for m in claimed] == [ids[2], ids[1]]
    for m in claimed:
        assert m.state is RawState.PROCESSING
        assert m.attempts == 1
        assert m.claimed_by == "worker-1"
    assert store.pending_count() == 1
    assert [m.id for m in store.claim("worker-2", limit=5)] == [ids[0]]
    assert store.claim("worker-2") == []
    assert store.claim("worker-2", limit=0) == []


def test_claim_is_exclusive_under_concurrency(store: Store, store_url: str) -> None:
    total = 50
    for i in range(total):
        add(store, f"msg-{i}".encode(), at=T0 + timedelta(seconds=i))
    workers = [Store(store_url) for _ in range(4)]

    def drain(worker: Store, name: str) -> list[str]:
        got: list[str] = []
        while batch := worker.claim(name, limit=3):
            got.extend(m.id for m in batch)
        return got

    try:
        results = in_parallel([partial(drain, w, f"w{i}") for i, w in enumerate(workers)])
    finally:
        for w in workers:
            w.close()
    claimed = [rid for ids in results for rid in ids]
    assert len(claimed) == total
    assert len(set(claimed)) == total
    assert store.counts()["processing"] == total
    # every row was claimed exactly once
    assert all((r := store.get_raw(rid)) is not None and r.attempts == 1 for rid in claimed)


def test_recover_returns_claims_to_inbox(store: Store, store_url: str) -> None:
    ids = [add(store, f"r{i}".encode()) for i in range(3)]
    store.claim("w", limit=3)
    assert store.recover(older_than=timedelta(hours=1)) == 0
    # age one claim as if its worker had died long ago
    engine = create_engine(store_url)
    old = datetime.now(UTC) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE raw_messages SET claimed_at = :t WHERE id = :id"),
            {"t": old.replace(tzinfo=None) if store.backend == "sqlite" else old, "id": ids[0]},
        )
    engine.dispose()
    assert store.recover(older_than=timedelta(hours=1)) == 1
    assert store.pending_count() == 1
    assert store.recover() == 2
    assert store.pending_count() == 3
    again = store.claim("w2", limit=3)
    assert {m.attempts for m in again} == {2}
    assert store.recover() == 3


# --- outcomes -----------------------------------------------------------------------


def test_store_round_trips_a_full_record(store: Store, other: Store) -> None:
    store.sync_partners([PartnerRow("müller", "Müller & Söhne GmbH", (("email_domain", "müller.test"),))])
    raw_id = add(store, b"full")
    rec = full_record()
    outcome = store.store_interactions(raw_id, [(rec, "email:<full@x>")])
    assert outcome.state is RawState.STORED
    assert outcome.records[0].record_id == rec.id
    assert outcome.records[0].duplicate_of is None
    assert outcome.duplicate_of_raw is None

    back = other.get_interaction(rec.id)
    assert back is not None
    assert back == rec
    assert back.to_json() == rec.to_json() | {"received_at": back.received_at.isoformat()}
    # exactness: the scale of every amount survives, as text in plain notation
    assert str(back.total_amount) == "12.340"
    assert [str(ln.quantity) for ln in back.lines[:2]] == ["1000", "-0.50"]
    assert [str(ln.unit_price) for ln in back.lines[:2]] == ["0.01234", "99999999999999.999999"]
    # timestamps come back as the same instant, in UTC
    assert back.received_at.utcoffset() == timedelta(0)
    assert back.received_at == rec.received_at
    assert back.received_at.microsecond == 123456
    assert isinstance(back.kind, Kind)
    assert isinstance(back.direction, Direction)
    assert isinstance(back.status, Status)
    raw = store.get_raw(raw_id)
    assert raw is not None
    assert raw.state is RawState.STORED
    assert store.interactions_for_raw(raw_id) == [rec.id]


def test_minimal_unresolved_record(store: Store) -> None:
    raw_id = add(store)
    rec = record("rec-min", partner=None, status=Status.UNRESOLVED, document=DocumentInfo())
    store.store_interactions(raw_id, [(rec, "k-min")])
    back = store.get_interaction("rec-min")
    assert back == rec
    assert back is not None
    assert back.partner is None
    assert back.mapping is None
    assert back.status is Status.UNRESOLVED
    assert store.get_interaction("missing") is None


def test_partner_not_yet_synced_gets_placeholder(store: Store) -> None:
    raw_id = add(store)
    store.store_interactions(raw_id, [(record("r1", partner=PartnerRef("newco", None)), "k1")])
    back = store.get_interaction("r1")
    assert back is not None
    assert back.partner == PartnerRef("newco", "newco")
    assert store.list_partners() == []
    assert [p.id for p in store.list_partners(include_inactive=True)] == ["newco"]
    store.sync_partners([PartnerRow("newco", "New Company", ())])
    back = store.get_interaction("r1")
    assert back is not None
    assert back.partner == PartnerRef("newco", "New Company")


def test_dedup_within_one_call_and_across_calls(store: Store) -> None:
    raw1 = add(store, b"one")
    out = store.store_interactions(
        raw1,
        [(record("a"), "K1"), (record("b"), "K2"), (record("c"), "K1")],
    )
    assert out.state is RawState.STORED
    assert [(r.record_id, r.duplicate_of) for r in out.records] == [("a", None), ("b", None), ("c", "a")]
    assert store.get_interaction("c") is None

    raw2 = add(store, b"two")
    out2 = store.store_interactions(raw2, [(record("d"), "K2"), (record("e"), "K3")])
    assert out2.state is RawState.STORED  # one record was new
    assert [(r.record_id, r.duplicate_of) for r in out2.records] == [("d", "b"), ("e", None)]
    assert out2.duplicate_of_raw is None
    assert store.counts()["interactions"] == 3


def test_all_duplicates_make_the_raw_duplicate(store: Store) -> None:
    raw1 = add(store, b"first")
    store.store_interactions(raw1, [(record("a"), "K1"), (record("b"), "K2")])
    raw2 = add(store, b"resend with other bytes")
    out = store.store_interactions(raw2, [(record("a2"), "K2"), (record("b2"), "K1")])
    assert out.state is RawState.DUPLICATE
    assert out.duplicate_of_raw == raw1
    assert [r.duplicate_of for r in out.records] == ["b", "a"]
    raw = store.get_raw(raw2)
    assert raw is not None
    assert raw.state is RawState.DUPLICATE
    assert raw.duplicate_of == raw1
    assert store.counts()["duplicate"] == 1


def test_restoring_the_same_raw_stays_stored(store: Store) -> None:
    raw1 = add(store)
    store.store_interactions(raw1, [(record("a"), "K1")])
    store.requeue(raw1)
    out = store.store_interactions(raw1, [(record("a-again"), "K1")])
    assert out.state is RawState.STORED
    assert out.duplicate_of_raw is None
    assert out.records[0].duplicate_of == "a"


def test_store_without_records_marks_stored(store: Store) -> None:
    raw_id = add(store)
    out = store.store_interactions(raw_id, [])
    assert (out.state, out.records) == (RawState.STORED, ())


def test_concurrent_store_of_the_same_document(store: Store, store_url: str) -> None:
    """Nodes storing the same document at once: exactly one interaction."""
    raws = [add(store, f"copy{i}".encode()) for i in range(4)]
    stores = [Store(store_url) for _ in raws]
    try:
        outcomes = in_parallel(
            [
                partial(s.store_interactions, raw, [(record(f"r{i}"), "SAME")])
                for i, (s, raw) in enumerate(zip(stores, raws, strict=True))
            ]
        )
    finally:
        for s in stores:
            s.close()
    assert sorted(o.state.value for o in outcomes) == ["duplicate", "duplicate", "duplicate", "stored"]
    assert store.counts()["interactions"] == 1


def test_unknown_raw_is_a_caller_error(store: Store) -> None:
    with pytest.raises(KeyError):
        store.store_interactions("nope", [(record("x"), "k")])
    with pytest.raises(KeyError):
        store.quarantine("nope", "parse", "why")
    with pytest.raises(KeyError):
        store.requeue("nope")
    raw = add(store)
    with pytest.raises(KeyError):
        store.mark_duplicate(raw, "nope")


def test_mark_duplicate_and_first_raw_with_sha(store: Store) -> None:
    first = add(store, b"same", at=T0)
    store.store_interactions(first, [(record("a"), "K")])
    later = add(store, b"same", at=T0 + timedelta(hours=1))
    pending = add(store, b"same", at=T0 + timedelta(hours=2))
    found = store.first_raw_with_sha(sha(b"same"), exclude=later)
    assert found is not None
    assert found.id == first
    assert store.first_raw_with_sha(sha(b"same"), exclude=first) is None  # others not STORED
    assert store.first_raw_with_sha(sha(b"other"), exclude=later) is None
    store.mark_duplicate(later, first)
    raw = store.get_raw(later)
    assert raw is not None
    assert (raw.state, raw.duplicate_of) == (RawState.DUPLICATE, first)
    assert store.get_raw(pending) is not None


# --- quarantine ---------------------------------------------------------------------


def test_quarantine_requeue_and_resolve(store: Store) -> None:
    raw_id = add(store, b"bad", filename="order.edi", channel=Channel.SFTP)
    store.claim("w")
    entry = store.quarantine(raw_id, Stage.PARSE, "segment 3 ISA: bad element")
    assert (entry.raw_id, entry.stage, entry.reason, entry.replays) == (
        raw_id,
        "parse",
        "segment 3 ISA: bad element",
        0,
    )
    assert (entry.raw_sha256, entry.channel, entry.filename, entry.resolved_at) == (
        sha(b"bad"),
        "sftp",
        "order.edi",
        None,
    )
    raw = store.get_raw(raw_id)
    assert raw is not None
    assert (raw.state, raw.error) == (RawState.QUARANTINED, "segment 3 ISA: bad element")
    assert store.list_quarantine() == [entry]
    assert store.get_quarantine(entry.id) == entry
    assert store.get_quarantine("nope") is None

    # replay, fail again: same entry, replays + 1
    store.requeue(raw_id)
    assert store.pending_count() == 1
    assert store.list_quarantine() == [entry]  # still open while being replayed
    store.claim("w")
    again = store.quarantine(raw_id, "map", "no mapping matches")
    assert again.id == entry.id
    assert (again.stage, again.reason, again.replays) == ("map", "no mapping matches", 1)
    assert store.counts()["quarantine_open"] == 1

    # replay, succeed: entry resolved, kept as history
    store.requeue(raw_id)
    store.claim("w")
    store.store_interactions(raw_id, [(record("ok"), "K-ok")])
    assert store.list_quarantine() == []
    history = store.list_quarantine(include_resolved=True)
    assert len(history) == 1
    assert history[0].resolved_at is not None
    raw = store.get_raw(raw_id)
    assert raw is not None
    assert (raw.state, raw.error) == (RawState.STORED, None)

    # a later failure opens a new entry
    store.requeue(raw_id)
    fresh = store.quarantine(raw_id, "store", "x")
    assert fresh.id != entry.id
    assert len(store.list_quarantine(include_resolved=True)) == 2


def test_requeue_refuses_a_message_being_processed(store: Store) -> None:
    raw_id = add(store)
    store.claim("w")
    with pytest.raises(ValueError, match="being processed"):
        store.requeue(raw_id)


def test_mark_duplicate_resolves_quarantine(store: Store) -> None:
    first = add(store, b"x")
    store.store_interactions(first, [(record("a"), "K")])
    second = add(store, b"x")
    store.quarantine(second, "parse", "oops")
    store.mark_duplicate(second, first)
    assert store.list_quarantine() == []


# --- partners -----------------------------------------------------------------------


def test_sync_partners_upserts_and_deactivates(store: Store) -> None:
    acme = PartnerRow("acme", "ACME", (("as2", "ACME"), ("x12", "ZZ:ACMEISA"), ("email_domain", "acme.test")))
    beta = PartnerRow("beta", "Beta", (("fax", "+15551234567"),))
    store.sync_partners([acme, beta])
    assert store.list_partners() == [acme, beta]

    acme2 = PartnerRow("acme", "ACME Corp", (("edifact", "12345678:14"), ("as2", "ACME")))
    gamma = PartnerRow("gamma", "Gamma", (("sftp", "gamma-drop"),))
    store.sync_partners([acme2, gamma])
    assert store.list_partners() == [acme2, gamma]
    everything = store.list_partners(include_inactive=True)
    assert [(p.id, p.active) for p in everything] == [("acme", True), ("beta", False), ("gamma", True)]
    assert everything[1].identities == (("fax", "+15551234567"),)

    # a partner that comes back is active again; history keeps pointing at it
    store.sync_partners([acme2, beta, gamma])
    assert [p.id for p in store.list_partners()] == ["acme", "beta", "gamma"]
    store.sync_partners([])
    assert store.list_partners() == []


# --- queries ------------------------------------------------------------------------


def test_list_interactions_filters(store: Store) -> None:
    store.sync_partners([PartnerRow("acme", "ACME", ()), PartnerRow("beta", "Beta", ())])
    raw = add(store)
    specs = [
        ("i1", "acme", "as2", Kind.ORDER, 1),
        ("i2", "acme", "email", Kind.INVOICE, 2),
        ("i3", "beta", "as2", Kind.INVOICE, 3),
        ("i4", None, "fax", Kind.FAX, 4),
        ("i5", "beta", "sftp", Kind.ORDER, 5),
    ]
    records = [
        (
            record(
                rid,
                partner=None if p is None else PartnerRef(p, p.upper()),
                status=Status.UNRESOLVED if p is None else Status.RECEIVED,
                channel=ch,
                kind=kind,
                received_at=T0 + timedelta(hours=h),
            ),
            f"key-{rid}",
        )
        for rid, p, ch, kind, h in specs
    ]
    store.store_interactions(raw, records)

    def ids(**kw: Any) -> list[str]:
        return [r.id for r in store.list_interactions(**kw)]

    assert ids() == ["i5", "i4", "i3", "i2", "i1"]
    assert ids(partner="acme") == ["i2", "i1"]
    assert ids(channel="as2") == ["i3", "i1"]
    assert ids(kind="invoice") == ["i3", "i2"]
    assert ids(kind=Kind.ORDER, partner="beta") == ["i5"]
    assert ids(since=T0 + timedelta(hours=3)) == ["i5", "i4", "i3"]
    assert ids(since=(T0 + timedelta(hours=3)).astimezone(timezone(timedelta(hours=-5)))) == [
        "i5",
        "i4",
        "i3",
    ]
    assert ids(limit=2) == ["i5", "i4"]
    assert ids(partner="nobody") == []
    full = store.list_interactions(limit=1)[0]
    assert full == records[4][0]


def test_counts(store: Store) -> None:
    _a, b, c, _d = (
        add(store, x, at=T0 + timedelta(seconds=i)) for i, x in enumerate((b"a", b"b", b"c", b"d"))
    )
    store.claim("w", limit=1)  # the oldest: a
    store.store_interactions(b, [(record("rb"), "Kb")])
    store.quarantine(c, "parse", "bad")
    assert store.counts() == {
        "received": 1,
        "processing": 1,
        "stored": 1,
        "quarantined": 1,
        "duplicate": 0,
        "interactions": 1,
        "quarantine_open": 1,
    }


def test_audit_events(store: Store) -> None:
    store.audit("config_reloaded", "config", "3 partners, 2 mappings — ok")
    raw = add(store)
    store.quarantine(raw, "parse", "bad")
    events = store.list_audit()
    assert [e.event for e in events[:2]] == ["quarantined", "config_reloaded"]
    assert events[1].detail == "3 partners, 2 mappings — ok"
    assert [e.event for e in store.list_audit(subject=raw)] == ["quarantined"]
    assert events[0].at.tzinfo is not None


# --- leases -------------------------------------------------------------------------


def test_leases_are_exclusive_renewable_and_expire(store: Store, other: Store) -> None:
    assert store.try_lease("sftp:acme", "node-a", 30)
    assert not other.try_lease("sftp:acme", "node-b", 30)
    assert store.try_lease("sftp:acme", "node-a", 30)  # renewal by the holder
    assert other.try_lease("sftp:beta", "node-b", 30)  # other names are independent
    other.release_lease("sftp:acme", "node-b")  # not the holder: no effect
    assert not other.try_lease("sftp:acme", "node-b", 30)
    store.release_lease("sftp:acme", "node-a")
    assert other.try_lease("sftp:acme", "node-b", 0.3)
    assert not store.try_lease("sftp:acme", "node-a", 30)
    time.sleep(0.5)
    assert store.try_lease("sftp:acme", "node-a", 30)  # expired: taken over
    assert not other.try_lease("sftp:acme", "node-b", 30)


def test_lease_race(store: Store, store_url: str) -> None:
    stores = [Store(store_url) for _ in range(6)]
    try:
        wins = in_parallel([partial(s.try_lease, "poll", f"n{i}", 60) for i, s in enumerate(stores)])
    finally:
        for s in stores:
            s.close()
    assert wins.count(True) == 1


# --- failures -----------------------------------------------------------------------


def _unreachable_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("a file where a directory should be")
        return f"sqlite:///{blocker / 'gateway.db'}"
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.migrate(), id="migrate"),
        pytest.param(lambda s: s.add_raw(envelope(b"x"), sha(b"x")), id="add_raw"),
        pytest.param(lambda s: s.add_raws([(envelope(b"x"), sha(b"x"))]), id="add_raws"),
        pytest.param(lambda s: s.claim("w"), id="claim"),
        pytest.param(lambda s: s.counts(), id="counts"),
        pytest.param(lambda s: s.try_lease("x", "y", 1), id="try_lease"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_storage_failure_is_store_unavailable(
    backend: str, call: Callable[[Store], object], tmp_path: Path
) -> None:
    store = Store(_unreachable_url(backend, tmp_path))
    try:
        with pytest.raises(StoreUnavailable) as info:
            call(store)
        assert info.value.action.value == "retry"
    finally:
        store.close()


@pytest.mark.postgres
def test_server_going_away_is_store_unavailable(postgres_url: str) -> None:
    """A database dropped under a running store: later writes fail as StoreUnavailable."""
    with fresh_database(postgres_url) as url:
        store = Store(url)
        store.migrate()
        add(store)
    try:
        with pytest.raises(StoreUnavailable):
            add(store, b"after")
    finally:
        store.close()


def test_unsupported_backend() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql+pymysql://u@localhost/db")


def test_claim_id_takes_one_specific_message(store: Store, other: Store) -> None:
    first = add(store, b"1", at=T0)
    target = add(store, b"2", at=T0 + timedelta(seconds=1))
    claimed = store.claim_id(target, "ingest")
    assert claimed is not None
    assert (claimed.id, claimed.state, claimed.attempts, claimed.claimed_by) == (
        target,
        RawState.PROCESSING,
        1,
        "ingest",
    )
    assert other.claim_id(target, "other") is None  # already taken
    assert store.claim_id("nope", "x") is None
    assert [m.id for m in other.claim("w", limit=5)] == [first]


# --- durability per path (SQLite) -----------------------------------------------------


def test_sqlite_synchronous_per_path(tmp_path: Path) -> None:
    """add_raw (and every other durable write) commits at FULL; processing results at NORMAL."""
    store = Store.for_data_dir(tmp_path / "data")
    store.migrate()
    seen: list[int] = []

    def on_commit(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        seen.append(dbapi.execute("PRAGMA synchronous").fetchone()[0])

    event.listen(store._engine, "commit", on_commit)

    def level(call: Callable[[], object]) -> int:
        seen.clear()
        call()
        assert len(seen) == 1, seen
        return seen[0]

    try:
        env1, env2, env3 = envelope(b"one"), envelope(b"two"), envelope(b"three")
        assert level(lambda: store.add_raw(env1, sha(b"one"))) == SYNC_FULL
        assert level(lambda: store.claim_id(env1.id, "w")) == SYNC_NORMAL
        assert level(lambda: store.add_raw(env2, sha(b"two"))) == SYNC_FULL  # switched back
        assert level(lambda: store.add_raw(env3, sha(b"three"))) == SYNC_FULL
        assert level(lambda: store.claim("w", limit=1)) == SYNC_NORMAL
        assert level(lambda: store.store_interactions(env1.id, [(record("a"), "K")])) == SYNC_NORMAL
        assert level(lambda: store.quarantine(env2.id, "parse", "bad")) == SYNC_NORMAL
        assert level(lambda: store.mark_duplicate(env3.id, env1.id)) == SYNC_NORMAL
        assert level(lambda: store.store_outcomes([Quarantine(env3.id, "parse", "x")])) == SYNC_NORMAL
        assert level(lambda: store.requeue(env2.id)) == SYNC_FULL
        assert level(lambda: store.recover()) == SYNC_FULL
        assert level(lambda: store.audit("x", "y")) == SYNC_FULL
        assert level(lambda: store.sync_partners([])) == SYNC_FULL
        assert level(lambda: store.try_lease("l", "h", 5)) == SYNC_FULL
        # a processing path, then the accept path again on the same pooled connection
        assert level(lambda: store.claim_id(env2.id, "w")) == SYNC_NORMAL
        env4 = envelope(b"four")
        assert level(lambda: store.add_raw(env4, sha(b"four"))) == SYNC_FULL
        assert level(lambda: store.claim_id(env4.id, "w")) == SYNC_NORMAL
        many = [(envelope(b"five"), sha(b"five")), (envelope(b"six"), sha(b"six"))]
        assert level(lambda: store.add_raws(many)) == SYNC_FULL  # the group commit: one commit, FULL
    finally:
        event.remove(store._engine, "commit", on_commit)
        store.close()


# --- many records in one call -------------------------------------------------------


def test_store_many_records_with_duplicates(store: Store) -> None:
    """One call with thousands of records: the batched inserts keep order, children, dedup."""
    store.sync_partners([PartnerRow("acme", "ACME", ())])
    raw1 = add(store, b"big-1")
    before = add(store, b"earlier")
    store.store_interactions(before, [(record("old-7"), "key-7")])

    def big(n: int, prefix: str) -> InteractionRecord:
        return record(
            f"{prefix}-{n}",
            partner=PartnerRef("acme", "ACME") if n % 3 else PartnerRef(f"new-{n % 5}", f"New {n % 5}"),
            total_amount=Decimal(f"{n}.10"),
            lines=tuple(Line(str(i), f"P{n}-{i}", None, Decimal(i), "EA", Decimal("1.5")) for i in range(5)),
            parties=(Party("buyer", f"B{n}", str(n)), Party("seller")),
            attachments=(Attachment(f"{n}.pdf", "application/pdf", n, "ab" * 32),) if n % 100 == 0 else (),
        )

    count = 2500
    records = [(big(n, "r"), f"key-{n}") for n in range(count)]
    records.append((big(1, "again"), "key-1"))  # duplicate within the call
    out = store.store_interactions(raw1, records)
    assert out.state is RawState.STORED
    assert [r.record_id for r in out.records] == [rec.id for rec, _ in records]
    dups = {r.record_id: r.duplicate_of for r in out.records if r.duplicate_of is not None}
    assert dups == {"r-7": "old-7", "again-1": "r-1"}
    assert store.counts()["interactions"] == count  # old-7 + (count - 1) new
    for n in (0, 1, 100, 2499):
        assert store.get_interaction(f"r-{n}") == records[n][0]
    assert store.get_interaction("r-7") is None
    assert {p.id for p in store.list_partners(include_inactive=True)} >= {"acme", "new-0", "new-4"}

    # the same documents again from other bytes: all duplicates of raw1 (and of `before`)
    raw2 = add(store, b"big-2")
    again = store.store_interactions(raw2, [(big(n, "s"), f"key-{n}") for n in range(8, count)])
    assert again.state is RawState.DUPLICATE
    assert again.duplicate_of_raw == raw1
    assert all(r.duplicate_of == f"r-{n}" for n, r in zip(range(8, count), again.records, strict=True))
    assert store.counts()["interactions"] == count


def test_batches_are_one_transaction_with_cross_batch_dedup(store: Store) -> None:
    raw_id = add(store, b"big interchange")
    assert store.claim_id(raw_id, "w") is not None
    batches = [
        [(record("b1"), "k1"), (record("b2"), "k2")],
        [(record("b3"), "k2"), (record("b4"), "k3")],
    ]
    outcome = store.store_interaction_batches(raw_id, iter(batches))
    assert outcome.state == RawState.STORED
    assert [(r.record_id, r.duplicate_of) for r in outcome.records] == [
        ("b1", None),
        ("b2", None),
        ("b3", "b2"),
        ("b4", None),
    ]
    assert {r.id for r in store.list_interactions()} == {"b1", "b2", "b4"}


def test_a_failing_batch_stream_stores_nothing(store: Store) -> None:
    raw_id = add(store, b"truncated interchange")
    assert store.claim_id(raw_id, "w") is not None

    class TrailerMissing(Exception):
        pass

    def batches() -> Iterator[list[tuple[InteractionRecord, str]]]:
        yield [(record("c1"), "c1")]
        raise TrailerMissing("IEA missing")

    with pytest.raises(TrailerMissing):
        store.store_interaction_batches(raw_id, batches())
    assert store.list_interactions() == []
    raw = store.get_raw(raw_id)
    assert raw is not None
    assert raw.state == RawState.PROCESSING
    # the message can still be quarantined and later stored whole
    store.quarantine(raw_id, "parse", "IEA missing")
    assert store.get_raw(raw_id).state == RawState.QUARANTINED  # type: ignore[union-attr]


# --- outcomes of several raw messages in one transaction -----------------------------


def _commits(store: Store) -> list[int]:
    seen: list[int] = []
    event.listen(store._engine, "commit", lambda _conn: seen.append(1))
    return seen


def test_store_outcomes_mixed_batch_is_one_transaction(store: Store) -> None:
    earlier = add(store, b"earlier", at=T0)
    store.store_interactions(earlier, [(record("old"), "K-old")])
    raws = [add(store, f"raw{i}".encode(), at=T0 + timedelta(minutes=i)) for i in range(6)]
    claimed = store.claim("w", limit=10)
    assert [r.id for r in claimed] == raws
    r1, r2, r3, r4, r5, r6 = raws
    commits = _commits(store)
    results = store.store_outcomes(
        [
            StoreRecords(r1, [(record("a"), "K1"), (record("b"), "K2"), (record("a2"), "K1")]),
            StoreRecords(r2, [(record("c"), "K1")]),  # a duplicate of r1's, in the same batch
            StoreRecords(r3, [(record("d"), "K-old")]),  # a duplicate of an earlier raw's
            Quarantine(r4, Stage.MAP, "no mapping matches"),
            SameBytes(r5, earlier),
            StoreRecords(r6, [(record("e"), "K3"), (record("f"), "K2")]),  # one new: stored
        ]
    )
    assert len(commits) == 1
    o1, o2, o3, q4, d5, o6 = results
    assert isinstance(o1, StoreOutcome)
    assert (o1.raw_id, o1.state, o1.duplicate_of_raw) == (r1, RawState.STORED, None)
    assert [(r.record_id, r.duplicate_of) for r in o1.records] == [("a", None), ("b", None), ("a2", "a")]
    assert isinstance(o2, StoreOutcome)
    assert (o2.state, o2.duplicate_of_raw) == (RawState.DUPLICATE, r1)
    assert [(r.record_id, r.duplicate_of) for r in o2.records] == [("c", "a")]
    assert isinstance(o3, StoreOutcome)
    assert (o3.state, o3.duplicate_of_raw) == (RawState.DUPLICATE, earlier)
    assert [(r.record_id, r.duplicate_of) for r in o3.records] == [("d", "old")]
    assert isinstance(q4, QuarantineEntry)
    assert (q4.raw_id, q4.stage, q4.reason, q4.replays) == (r4, "map", "no mapping matches", 0)
    assert (q4.raw_sha256, q4.resolved_at) == (sha(b"raw3"), None)
    assert d5 == StoreOutcome(r5, RawState.DUPLICATE, (), earlier)
    assert isinstance(o6, StoreOutcome)
    assert (o6.state, o6.duplicate_of_raw) == (RawState.STORED, None)
    assert [(r.record_id, r.duplicate_of) for r in o6.records] == [("e", None), ("f", "b")]

    def state(raw_id: str) -> tuple[RawState, str | None, str | None]:
        raw = store.get_raw(raw_id)
        assert raw is not None
        return raw.state, raw.duplicate_of, raw.error

    assert [state(r) for r in raws] == [
        (RawState.STORED, None, None),
        (RawState.DUPLICATE, r1, None),
        (RawState.DUPLICATE, earlier, None),
        (RawState.QUARANTINED, None, "no mapping matches"),
        (RawState.DUPLICATE, earlier, None),
        (RawState.STORED, None, None),
    ]
    assert {r.id for r in store.list_interactions()} == {"old", "a", "b", "e"}
    assert store.list_quarantine() == [q4]
    events = [(e.event, e.subject) for e in reversed(store.list_audit(limit=6))]
    assert events == [
        ("stored", r1),
        ("duplicate", r2),
        ("duplicate", r3),
        ("quarantined", r4),
        ("duplicate", r5),
        ("stored", r6),
    ]


def test_store_outcomes_match_the_one_by_one_methods(store: Store, other: Store) -> None:
    """The same outcomes through store_outcomes and through the single methods (on a
    second database state built the same way) come out the same."""

    def scenario(s: Store, tag: str, batched: bool) -> list[object]:
        first = add(s, f"{tag}-first".encode())
        s.store_interactions(first, [(record(f"{tag}-x"), f"{tag}-KX")])
        quarantined = add(s, f"{tag}-q".encode())
        s.quarantine(quarantined, "parse", "bad")
        s.requeue(quarantined)
        ids = [add(s, f"{tag}-{i}".encode()) for i in range(3)]
        outcomes = [
            StoreRecords(ids[0], [(record(f"{tag}-a"), f"{tag}-KA"), (record(f"{tag}-x2"), f"{tag}-KX")]),
            Quarantine(quarantined, "map", "still bad"),  # a replay failing again: replays + 1
            StoreRecords(ids[1], [(record(f"{tag}-a2"), f"{tag}-KA")]),
            SameBytes(ids[2], first),
        ]
        if batched:
            results = s.store_outcomes(outcomes)
        else:
            results = []
            for o in outcomes:
                if isinstance(o, StoreRecords):
                    results.append(s.store_interactions(o.raw_id, o.records))
                elif isinstance(o, Quarantine):
                    results.append(s.quarantine(o.raw_id, o.stage, o.reason))
                else:
                    s.mark_duplicate(o.raw_id, o.duplicate_of)
                    results.append(StoreOutcome(o.raw_id, RawState.DUPLICATE, (), o.duplicate_of))
        names = {first: "first", quarantined: "q", **{r: f"r{i}" for i, r in enumerate(ids)}}

        def norm(value: object) -> object:
            text_ = repr(value).replace(f"{tag}-", "")
            for raw_id, name in names.items():
                text_ = text_.replace(raw_id, name)
            return text_

        out: list[object] = []
        for res in results:
            if isinstance(res, QuarantineEntry):
                out.append(norm((res.raw_id, res.stage, res.reason, res.replays)))
            else:
                out.append(norm(res))
        for raw_id in [first, quarantined, *ids]:
            raw = s.get_raw(raw_id)
            assert raw is not None
            out.append(norm((raw.state, raw.duplicate_of, raw.error)))
        out.append(norm(sorted(r.id for r in s.list_interactions() if r.id.startswith(tag))))
        return out

    assert scenario(store, "batch", True) == scenario(other, "single", False)


def test_a_failing_batch_transaction_records_no_outcome(store: Store, store_url: str) -> None:
    earlier = add(store, b"earlier")
    store.store_interactions(earlier, [(record("old"), "K-old")])
    raws = [add(store, f"raw{i}".encode(), at=T0 + timedelta(minutes=i)) for i in range(4)]
    assert len(store.claim("w", limit=10)) == 4
    outcomes = [
        StoreRecords(raws[0], [(record("a"), "K1")]),
        StoreRecords(raws[1], [(record("b"), "K1")]),
        Quarantine(raws[2], "parse", "bad"),
        SameBytes(raws[3], earlier),
    ]

    def fail_on_audit(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # the last statement of the transaction, after every other write
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_EVENTS"):
            raise OperationalError(statement, None, Exception("disk I/O error (injected)"))

    event.listen(store._engine, "before_cursor_execute", fail_on_audit)
    try:
        with pytest.raises(StoreUnavailable, match="injected"):
            store.store_outcomes(outcomes)
    finally:
        event.remove(store._engine, "before_cursor_execute", fail_on_audit)
    for raw_id in raws:
        raw = store.get_raw(raw_id)
        assert raw is not None
        assert (raw.state, raw.duplicate_of, raw.error) == (RawState.PROCESSING, None, None)
    assert [r.id for r in store.list_interactions()] == ["old"]
    assert store.list_quarantine(include_resolved=True) == []
    # recovery re-runs them, and then they are recorded whole
    assert store.recover() == 4
    assert len(store.claim("w2", limit=10)) == 4
    results = store.store_outcomes(outcomes)
    assert [getattr(r, "state", "quarantined") for r in results] == [
        RawState.STORED,
        RawState.DUPLICATE,
        "quarantined",
        RawState.DUPLICATE,
    ]
    assert {r.id for r in store.list_interactions()} == {"old", "a"}


def test_store_outcomes_caller_errors(store: Store) -> None:
    raw = add(store, b"one")
    assert store.store_outcomes([]) == []
    with pytest.raises(ValueError, match="only one outcome"):
        store.store_outcomes([Quarantine(raw, "parse", "x"), StoreRecords(raw, [])])
    with pytest.raises(KeyError):
        store.store_outcomes([StoreRecords(raw, []), Quarantine("nope", "parse", "x")])
    with pytest.raises(KeyError):
        store.store_outcomes([SameBytes(raw, "nope")])
    got = store.get_raw(raw)
    assert got is not None
    assert got.state is RawState.RECEIVED  # nothing of the failed calls was kept


def test_first_raws_with_sha_for_a_batch(store: Store) -> None:
    first = add(store, b"same", at=T0 + timedelta(hours=1))
    earliest = add(store, b"same", at=T0)
    other = add(store, b"other", at=T0)
    pending = add(store, b"new", at=T0)
    for raw_id, key in ((first, "k1"), (earliest, "k2"), (other, "k3")):
        store.store_interactions(raw_id, [(record(f"rec-{key}"), key)])
    found = store.first_raws_with_sha([sha(b"same"), sha(b"other"), sha(b"new"), sha(b"none")])
    assert {k: v.id for k, v in found.items()} == {sha(b"same"): earliest, sha(b"other"): other}
    assert found[sha(b"same")] == store.first_raw_with_sha(sha(b"same"), exclude=pending)
    excluded = store.first_raws_with_sha([sha(b"same"), sha(b"other")], exclude=[earliest, other])
    assert {k: v.id for k, v in excluded.items()} == {sha(b"same"): first}
    assert store.first_raws_with_sha([]) == {}


def test_add_raws_commits_all_in_one_call_in_order(store: Store, other: Store) -> None:
    envs = [envelope(f"doc {i}".encode(), filename=f"f{i}.edi", sender={"as2": f"p{i}"}) for i in range(5)]
    raws = store.add_raws([(e, sha(e.raw)) for e in envs])
    assert [r.id for r in raws] == [e.id for e in envs]
    for env, raw in zip(envs, raws, strict=True):
        assert raw.sha256 == sha(env.raw)
        assert raw.state == RawState.RECEIVED
        assert raw.filename == env.filename
        assert dict(raw.sender) == dict(env.sender)
        assert raw.attempts == 0
        assert raw.claimed_by is None
        # committed: another connection (process, node) sees each row as returned
        assert other.get_raw(raw.id) == raw
    assert store.add_raws([]) == []


def test_add_raws_is_idempotent_like_add_raw(store: Store) -> None:
    old = envelope(b"old")
    first = store.add_raw(old, sha(b"old"))
    new = envelope(b"new")
    # a retry of an envelope on file, a new one, and the new one again in the same call
    raws = store.add_raws([(old, sha(b"old")), (new, sha(b"new")), (new, sha(b"new"))])
    assert raws[0] == first
    assert raws[1].id == raws[2].id == new.id
    assert raws[1].sha256 == raws[2].sha256 == sha(b"new")
    assert store.get_raw(new.id) == raws[1]
    assert store.counts()["received"] == 2


def test_add_raws_with_other_content_adds_nothing(store: Store) -> None:
    taken = envelope(b"abc")
    store.add_raw(taken, sha(b"abc"))
    fresh = envelope(b"fresh")
    with pytest.raises(ValueError, match="other content"):
        store.add_raws([(fresh, sha(b"fresh")), (taken, sha(b"xyz"))])
    # all or nothing: the fresh envelope of the failed call is not in the inbox
    assert store.get_raw(fresh.id) is None
    assert store.counts()["received"] == 1


def test_add_raws_born_claimed(store: Store) -> None:
    envs = [envelope(b"out 1"), envelope(b"out 2")]
    raws = store.add_raws([(e, sha(e.raw)) for e in envs], claimed_by="sender")
    assert [(r.state, r.claimed_by, r.attempts) for r in raws] == [(RawState.PROCESSING, "sender", 1)] * 2
    assert all(r.claimed_at is not None for r in raws)
    assert store.claim("worker", limit=5) == []


def test_add_raws_from_many_threads(store: Store, other: Store) -> None:
    """Concurrent group commits (several pipelines, several nodes): each row once."""
    batches = [[envelope(f"t{t} m{m}".encode()) for m in range(10)] for t in range(8)]
    results = in_parallel([partial(store.add_raws, [(e, sha(e.raw)) for e in b]) for b in batches])
    ids = [r.id for rs in results for r in rs]
    assert ids == [e.id for b in batches for e in b]
    assert other.counts()["received"] == 80


def test_add_raw_born_claimed_is_never_claimed_by_a_worker(store: Store) -> None:
    raw = store.add_raw(envelope(b"outbound doc"), sha(b"outbound doc"), claimed_by="sender")
    assert raw.state == RawState.PROCESSING
    assert raw.claimed_by == "sender"
    assert store.claim("worker", limit=10) == []
    assert store.claim_id(raw.id, "worker") is None
    outcome = store.store_interactions(raw.id, [(record("out-1"), "out-1")])
    assert outcome.state == RawState.STORED
