"""The pipeline end to end on the embedded store: durability, dedup, quarantine, replay."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.errors import StoreUnavailable, TooLarge
from gateway.pipeline import Pipeline, ProcessResult
from gateway.record import Kind, Status
from gateway.store import RawMessage, RawState, Store
from tests.conftest import REPO
from tests.helpers import copy_config, x12_850, x12_940


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return copy_config(tmp_path / "config")


@pytest.fixture
def pipeline(tmp_path: Path, config_dir: Path) -> Pipeline:
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    yield pipe  # type: ignore[misc]
    pipe.close()


def _ingest(pipe: Pipeline, data: bytes, name: str = "po.edi", channel: Channel = Channel.FILE):  # type: ignore[no-untyped-def]
    raw = pipe.accept(Envelope(raw=data, channel=channel, filename=name))
    claimed = pipe.store.claim_id(raw.id, "test")
    assert claimed is not None
    return pipe.process(claimed)


def test_accept_is_durable_before_it_returns(pipeline: Pipeline, tmp_path: Path) -> None:
    raw = pipeline.accept(Envelope(raw=x12_850(), channel=Channel.FILE, filename="po.edi"))
    # a second, independent connection sees the committed row, and the bytes are on disk
    other = Store.for_data_dir(tmp_path / "data")
    try:
        seen = other.get_raw(raw.id)
        assert seen is not None
        assert seen.state == RawState.RECEIVED
    finally:
        other.close()
    assert pipeline.archive.get(raw.sha256) == x12_850()


def test_order_is_stored_with_partner_and_mapping(pipeline: Pipeline) -> None:
    result = _ingest(pipeline, x12_850(po="PO-77"))
    assert result.state == RawState.STORED
    (rec,) = result.records
    assert rec.kind == Kind.ORDER
    assert rec.partner is not None
    assert rec.partner.id == "demo"
    assert rec.status == Status.RECEIVED
    assert rec.references["po_number"] == "PO-77"
    assert rec.document.standard == "X12"
    assert rec.document.type == "850"
    assert rec.mapping is not None
    assert rec.mapping.file.endswith(".xml")
    assert len(rec.mapping.sha256) == 64
    stored = pipeline.store.get_interaction(rec.id)
    assert stored is not None
    assert stored.lines[0].quantity is not None
    assert str(stored.lines[0].quantity) == "3"


def test_unknown_sender_is_stored_unresolved(pipeline: Pipeline) -> None:
    result = _ingest(pipeline, x12_850(sender="STRANGER"))
    (rec,) = result.records
    assert rec.partner is None
    assert rec.status == Status.UNRESOLVED
    assert rec.sender["x12"] == "ZZ:STRANGER"


def test_same_bytes_twice_is_one_interaction(pipeline: Pipeline) -> None:
    first = _ingest(pipeline, x12_850())
    second = _ingest(pipeline, x12_850())
    assert second.state == RawState.DUPLICATE
    assert second.duplicate_of_raw == first.raw.id
    assert len(pipeline.store.list_interactions()) == 1


def test_same_interchange_in_other_bytes_is_a_duplicate(pipeline: Pipeline) -> None:
    first = _ingest(pipeline, x12_850(icn=42))
    resend = x12_850(icn=42).replace(b"~\n", b"~\r\n")  # same interchange, re-wrapped by the sender
    second = _ingest(pipeline, resend)
    assert second.state == RawState.DUPLICATE
    assert second.duplicate_records == (first.records[0].id,)
    assert len(pipeline.store.list_interactions()) == 1
    # another control number is another interchange
    assert _ingest(pipeline, x12_850(icn=43)).state == RawState.STORED


def test_parse_failure_is_quarantined_with_position(pipeline: Pipeline) -> None:
    bad = x12_850().replace(b"SE*7*0001", b"SE*9*0001")
    result = _ingest(pipeline, bad)
    assert result.state == RawState.QUARANTINED
    assert result.quarantine is not None
    assert result.quarantine.stage == "parse"
    assert "SE01" in result.quarantine.reason
    assert "segment" in result.quarantine.reason
    assert pipeline.store.list_interactions() == []


def test_quarantine_then_replay_with_a_fixed_mapping(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    fallback = [p for p in mappings.glob("*.xml") if "fallback" in p.name or "other" in p.name]
    assert fallback, "expected a fallback mapping for unknown sets"
    saved = {p: p.read_bytes() for p in fallback}
    for p in fallback:
        p.unlink()
    config, _ = load_config(copy_config(tmp_path / "config", mappings=mappings))
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        result = _ingest(pipe, x12_940())
        assert result.state == RawState.QUARANTINED
        assert result.quarantine is not None
        assert result.quarantine.stage == "map"
        assert "940" in result.quarantine.reason
        for p, data in saved.items():
            p.write_bytes(data)
        pipe._next_reload = 0.0  # the file watcher would see it within a second
        replayed = pipe.replay(result.raw.id)
        assert replayed.state == RawState.STORED
        assert replayed.records[0].kind == Kind.OTHER
        assert pipe.store.list_quarantine() == []
        assert len(pipe.store.list_quarantine(include_resolved=True)) == 1
    finally:
        pipe.close()


def test_too_large_is_refused_before_anything_is_stored(pipeline: Pipeline) -> None:
    limit = pipeline.config.settings.limits.max_message_bytes
    with pytest.raises(TooLarge):
        pipeline.accept(Envelope(raw=b"x" * (limit + 1), channel=Channel.FILE))
    assert pipeline.store.counts()["received"] == 0


def test_archive_failure_means_not_accepted(tmp_path: Path, config_dir: Path) -> None:
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        shutil.rmtree(tmp_path / "data" / "archive", ignore_errors=True)
        (tmp_path / "data" / "archive").write_text("in the way")
        with pytest.raises(StoreUnavailable):
            pipe.accept(Envelope(raw=x12_850(), channel=Channel.FILE))
        assert pipe.store.pending_count() == 0
    finally:
        pipe.close()


CRASHER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from gateway.config import load_config
    from gateway.envelope import Channel, Envelope
    from gateway.pipeline import Pipeline
    config, _ = load_config(Path(sys.argv[1]))
    pipe = Pipeline.open(config, Path(sys.argv[2]))
    raw = pipe.accept(Envelope(raw=Path(sys.argv[3]).read_bytes(), channel=Channel.FILE, filename="po.edi"))
    assert pipe.store.claim_id(raw.id, "doomed") is not None
    print(raw.id, flush=True)
    os._exit(137)  # dies holding the claim, before processing: no cleanup, no commit
    """
)


def test_crash_after_accept_is_recovered_exactly_once(tmp_path: Path, config_dir: Path) -> None:
    sample = tmp_path / "po.edi"
    sample.write_bytes(x12_850(icn=99))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(config_dir), str(tmp_path / "data"), str(sample)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 137, proc.stderr
    raw_id = proc.stdout.strip()
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        assert pipe.store.get_raw(raw_id).state == RawState.PROCESSING  # type: ignore[union-attr]
        assert pipe.recover() == 1
        assert pipe.drain() == 1
        assert pipe.recover() == 0
        assert pipe.drain() == 0
        assert len(pipe.store.list_interactions()) == 1
        assert pipe.store.get_raw(raw_id).state == RawState.STORED  # type: ignore[union-attr]
    finally:
        pipe.close()


def test_mapping_edit_is_picked_up_without_restart(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    config, _ = load_config(copy_config(tmp_path / "config", mappings=mappings))
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        before = _ingest(pipe, x12_850(icn=1)).records[0]
        target = next(p for p in mappings.glob("*.xml") if p.read_text().count('type="850"'))
        target.write_text(target.read_text().replace("<mapping ", "<mapping ", 1) + "\n<!-- edited -->\n")
        os.utime(target, (1e9, 2e9))
        pipe._next_reload = 0.0
        after = _ingest(pipe, x12_850(icn=2)).records[0]
        assert before.mapping is not None
        assert after.mapping is not None
        assert before.mapping.sha256 != after.mapping.sha256
        # a broken edit keeps the last good version active
        target.write_text("<mapping broken")
        os.utime(target, (1e9, 3e9))
        pipe._next_reload = 0.0
        kept = _ingest(pipe, x12_850(icn=3)).records[0]
        assert kept.mapping is not None
        assert kept.mapping.sha256 == after.mapping.sha256
    finally:
        pipe.close()


def test_original_wire_bytes_are_archived_beside_the_payload(pipeline: Pipeline) -> None:
    wire = b"Content-Type: application/pkcs7-mime\r\n\r\n<encrypted>" + x12_850(icn=50)
    raw = pipeline.accept(Envelope(raw=x12_850(icn=50), original=wire, channel=Channel.AS2))
    original_sha = raw.transport["original_sha256"]
    assert pipeline.archive.get(original_sha) == wire
    assert pipeline.archive.get(raw.sha256) == x12_850(icn=50)


def test_message_refused_on_the_wire_is_kept_and_quarantined(pipeline: Pipeline) -> None:
    env = Envelope(
        raw=b"garbled",
        channel=Channel.AS2,
        transport={Envelope.REJECTED: "authentication-failed: signature does not verify"},
    )
    raw = pipeline.accept(env)
    claimed = pipeline.store.claim_id(raw.id, "test")
    assert claimed is not None
    result = pipeline.process(claimed)
    assert result.state == RawState.QUARANTINED
    assert result.quarantine is not None
    assert result.quarantine.stage == "receive"
    assert "authentication-failed" in result.quarantine.reason


def _big_x12(sets: int, icn: int = 500, *, with_iea: bool = True) -> bytes:
    segs: list[str] = []
    for n in range(1, sets + 1):
        body = [f"ST*850*{n:04d}", f"BEG*00*SA*PO-{n}**20240105", "PO1*1*2*EA*1.50**VP*P-1", "CTT*1"]
        body.append(f"SE*{len(body) + 1}*{n:04d}")
        segs += body
    isa = f"ISA*00*          *00*          *ZZ*DEMOPARTNER    *ZZ*GATEWAY        *240105*1200*U*00401*{icn:09d}*0*P*>"
    parts = [isa, f"GS*PO*DEMOPARTNER*GATEWAY*20240105*1200*{icn}*X*004010", *segs, f"GE*{sets}*{icn}"]
    if with_iea:
        parts.append(f"IEA*1*{icn:09d}")
    return ("~".join(parts) + "~").encode()


def test_large_interchange_is_spooled_and_stored_whole(pipeline: Pipeline) -> None:
    from gateway.pipeline import SPOOL_AFTER

    sets = SPOOL_AFTER + 500
    result = _ingest(pipeline, _big_x12(sets))
    assert result.state == RawState.STORED
    assert result.stored_count == sets
    assert result.records == ()  # spooled: read them back from the store
    assert pipeline.store.counts()["interactions"] == sets
    # the whole interchange again: every set is a duplicate, nothing new
    again = _ingest(pipeline, _big_x12(sets).replace(b"~", b"~\n"))
    assert again.state == RawState.DUPLICATE
    assert again.duplicate_count == sets
    assert pipeline.store.counts()["interactions"] == sets


def test_large_interchange_with_a_bad_trailer_stores_nothing(pipeline: Pipeline) -> None:
    from gateway.pipeline import SPOOL_AFTER

    result = _ingest(pipeline, _big_x12(SPOOL_AFTER + 10, icn=501, with_iea=False))
    assert result.state == RawState.QUARANTINED
    assert result.quarantine is not None
    assert "IEA" in result.quarantine.reason
    assert pipeline.store.counts()["interactions"] == 0


def _batch_inputs() -> list[tuple[bytes, dict[str, str]]]:
    bad = x12_850(icn=73).replace(b"SE*7*0001", b"SE*9*0001")
    return [
        (x12_850(icn=70, po="PO-70"), {}),
        (x12_850(icn=71, po="PO-71"), {}),
        (x12_850(icn=70, po="PO-70"), {}),  # the same bytes as the first, in the same batch
        (x12_850(icn=71, po="PO-71").replace(b"~\n", b"~\r\n"), {}),  # the same interchange
        (bad, {}),  # quarantined at parse
        (bad, {}),  # the same bytes as a quarantined message: quarantined again, not a duplicate
        (x12_850(icn=60, po="PO-60"), {}),  # the same bytes as one stored before the batch
        (b"garbled", {Envelope.REJECTED: "authentication-failed: signature does not verify"}),
        (x12_850(icn=74, po="PO-74"), {}),
    ]


def _summary(results: list, raws: list) -> list[tuple[object, ...]]:  # type: ignore[type-arg]
    index = {raw.id: i for i, raw in enumerate(raws)}
    out: list[tuple[object, ...]] = []
    for r in results:
        out.append(
            (
                index[r.raw.id],
                r.state,
                index.get(r.duplicate_of_raw, r.duplicate_of_raw),
                tuple(rec.references.get("po_number") for rec in r.records),
                r.stored_count,
                r.duplicate_count,
                None if r.quarantine is None else (r.quarantine.stage, r.quarantine.reason),
            )
        )
    return out


def test_drain_of_a_batch_gives_the_results_of_one_by_one(tmp_path: Path, config_dir: Path) -> None:
    config, _ = load_config(config_dir)
    outcomes: dict[str, list[tuple[object, ...]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for mode in ("single", "batch"):
        pipe = Pipeline.open(config, tmp_path / mode)
        try:
            before = pipe.accept(Envelope(raw=x12_850(icn=60, po="PO-60"), channel=Channel.FILE))
            assert pipe.drain("before") == 1
            raws = [before]
            for data, transport in _batch_inputs():
                raws.append(pipe.accept(Envelope(raw=data, channel=Channel.FILE, transport=transport)))
            results: list[ProcessResult] = []
            if mode == "single":
                for raw in raws[1:]:
                    claimed = pipe.store.claim_id(raw.id, "one")
                    assert claimed is not None
                    results.append(pipe.process(claimed))
            else:
                calls: list[int] = []
                store_outcomes = pipe.store.store_outcomes

                def counted(items, _orig=store_outcomes, calls=calls):  # type: ignore[no-untyped-def]
                    calls.append(len(items))
                    return _orig(items)

                pipe.store.store_outcomes = counted  # type: ignore[method-assign]
                assert pipe.drain("batch", on_result=results.append) == len(raws) - 1
                # one transaction per run: a new run starts at each same-bytes pair
                # whose first message was still undecided (items 3 and 6)
                assert calls == [2, 3, 4]
            outcomes[mode] = _summary(results, raws)
            counts[mode] = pipe.store.counts()
        finally:
            pipe.close()
    assert outcomes["batch"] == outcomes["single"]
    assert counts["batch"] == counts["single"]
    states = [o[1] for o in outcomes["batch"]]
    assert states == [
        RawState.STORED,
        RawState.STORED,
        RawState.DUPLICATE,
        RawState.DUPLICATE,
        RawState.QUARANTINED,
        RawState.QUARANTINED,
        RawState.DUPLICATE,
        RawState.QUARANTINED,
        RawState.STORED,
    ]
    assert [o[2] for o in outcomes["batch"]][2:4] == [1, 2]  # same bytes / same interchange
    assert outcomes["batch"][6][2] == 0  # the message stored before the batch


def test_reused_control_numbers_with_new_content_are_not_dropped(pipeline: Pipeline) -> None:
    first = _ingest(pipeline, x12_850(icn=77, po="PO-A"))
    # a partner's translator was reset: same ISA13/GS06/ST02, a different order
    second = _ingest(pipeline, x12_850(icn=77, po="PO-B"))
    assert first.state == second.state == RawState.STORED
    assert sorted(r.references["po_number"] for r in pipeline.store.list_interactions()) == ["PO-A", "PO-B"]


# --- group commit of concurrent accepts ---------------------------------------------------

THREADS = 16


def _accept_all(
    pipe: Pipeline, envelopes: list[Envelope], first: Envelope | None = None
) -> list[RawMessage | BaseException]:
    """accept() every envelope, each from its own thread, all released together; with
    ``first``, that one is accepted first and the others once it is committing."""

    def one(env: Envelope, start: threading.Barrier | None) -> RawMessage | BaseException:
        if start is not None:
            start.wait()
        try:
            return pipe.accept(env)
        except BaseException as exc:  # noqa: BLE001 - returned, for the test to look at
            return exc

    with ThreadPoolExecutor(max_workers=len(envelopes) + 1) as pool:
        leader = None
        if first is not None:
            leader = pool.submit(one, first, None)
            deadline = time.monotonic() + 30
            while not pipe._group._busy and time.monotonic() < deadline:
                time.sleep(0.001)
        start = threading.Barrier(len(envelopes))
        futures = [pool.submit(one, env, start) for env in envelopes]
        results = [f.result(timeout=120) for f in futures]
        return results if leader is None else [leader.result(timeout=120), *results]


def _hold_first_commit(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, queued: int) -> list[int]:
    """Hold the first (lone) commit until ``queued`` other callers wait behind it, so that
    they are all in the next batch; return the sizes of the add_raws calls made."""
    real_add_raw, real_add_raws = pipe.store.add_raw, pipe.store.add_raws
    held = threading.Event()
    sizes: list[int] = []

    def add_raw(envelope: Envelope, sha256: str, **kw: Any) -> RawMessage:
        if not held.is_set():
            held.set()
            deadline = time.monotonic() + 30
            while len(pipe._group._queue) < queued and time.monotonic() < deadline:
                time.sleep(0.001)
        return real_add_raw(envelope, sha256, **kw)

    def add_raws(pairs: list[tuple[Envelope, str]], **kw: Any) -> list[RawMessage]:
        sizes.append(len(pairs))
        return real_add_raws(pairs, **kw)

    monkeypatch.setattr(pipe.store, "add_raw", add_raw)
    monkeypatch.setattr(pipe.store, "add_raws", add_raws)
    return sizes


def _docs(count: int, base: int = 7000) -> list[Envelope]:
    return [
        Envelope(raw=x12_850(icn=base + i, po=f"PO-{base + i}"), channel=Channel.FILE, filename=f"po{i}.edi")
        for i in range(count)
    ]


def test_concurrent_accepts_are_group_committed_and_durable(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _hold_first_commit(pipeline, monkeypatch, THREADS - 1)
    envelopes = _docs(THREADS)
    results = _accept_all(pipeline, envelopes)
    assert all(isinstance(r, RawMessage) for r in results), results
    # the first caller committed alone; the 15 that queued behind it, in one transaction
    assert sizes == [THREADS - 1]
    assert (pipeline._group.batches, pipeline._group.accepted) == (2, THREADS)
    other = Store.for_data_dir(tmp_path / "data")
    try:
        for env, raw in zip(envelopes, results, strict=True):
            assert isinstance(raw, RawMessage)
            assert raw.id == env.id
            assert other.get_raw(raw.id) == raw  # committed, seen by another connection
            assert pipeline.archive.get(raw.sha256) == env.raw  # and its bytes archived
    finally:
        other.close()


def test_many_threads_accepting_at_once_lose_nothing(pipeline: Pipeline, tmp_path: Path) -> None:
    envelopes = _docs(THREADS * 12, base=8000)
    per_thread = [envelopes[t::THREADS] for t in range(THREADS)]
    start = threading.Barrier(THREADS)

    def run(mine: list[Envelope]) -> list[RawMessage]:
        start.wait()
        return [pipeline.accept(env) for env in mine]

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        returned = [r for f in [pool.submit(run, m) for m in per_thread] for r in f.result(timeout=120)]
    assert sorted(r.id for r in returned) == sorted(e.id for e in envelopes)
    assert pipeline._group.accepted == len(envelopes)
    assert pipeline._group.batches <= len(envelopes)
    other = Store.for_data_dir(tmp_path / "data")
    try:
        assert other.counts()["received"] == len(envelopes)
        by_id = {e.id: e for e in envelopes}
        for raw in returned:
            assert other.get_raw(raw.id) == raw
            assert pipeline.archive.get(raw.sha256) == by_id[raw.id].raw
    finally:
        other.close()
    # and they are processed like any other accepted message
    assert pipeline.drain("test") == len(envelopes)
    assert pipeline.store.counts()["stored"] == len(envelopes)


def test_database_failure_fails_every_caller_of_the_batch(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real failure halfway through the batch's INSERT: the rows before it were written
    # in the transaction, and must not become visible.
    with pipeline.store.write_engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER poison BEFORE INSERT ON raw_messages WHEN NEW.filename = 'poison.edi' "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    sizes = _hold_first_commit(pipeline, monkeypatch, THREADS - 1)
    first, *envelopes = _docs(THREADS)
    envelopes[THREADS // 2] = replace(envelopes[THREADS // 2], filename="poison.edi")
    results = _accept_all(pipeline, envelopes, first=first)
    assert sizes == [THREADS - 1]
    accepted = [r for r in results if isinstance(r, RawMessage)]
    failed = [r for r in results if not isinstance(r, RawMessage)]
    # the lone first commit succeeded; every caller of the failed batch was told
    # "not accepted, retry"
    assert [r.id for r in accepted] == [first.id]
    assert len(failed) == THREADS - 1
    assert all(isinstance(exc, StoreUnavailable) for exc in failed), failed
    assert all("disk on fire" in str(exc) for exc in failed)
    assert len({id(exc) for exc in failed}) == len(failed)  # one exception per caller
    other = Store.for_data_dir(tmp_path / "data")
    try:
        assert other.counts()["received"] == 1  # nothing of the failed batch is visible
        assert other.get_raw(accepted[0].id) == accepted[0]
    finally:
        other.close()
    # the group commit is not stuck: the next accepts go through
    assert isinstance(pipeline.accept(_docs(1, base=9000)[0]), RawMessage)
    assert all(isinstance(r, RawMessage) for r in _accept_all(pipeline, _docs(4, base=9100)))


def test_archive_replaced_by_a_file_fails_every_concurrent_caller(tmp_path: Path, config_dir: Path) -> None:
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        shutil.rmtree(tmp_path / "data" / "archive", ignore_errors=True)
        (tmp_path / "data" / "archive").write_text("in the way")
        results = _accept_all(pipe, _docs(THREADS))
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert pipe.store.pending_count() == 0
    finally:
        pipe.close()


def test_directory_sync_failure_fails_only_the_envelopes_in_it(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_first_commit(pipeline, monkeypatch, THREADS - 1)
    envelopes = _docs(THREADS)
    shas = [hashlib.sha256(e.raw).hexdigest() for e in envelopes]
    broken = pipeline.archive.path_for(shas[-1]).parent
    real_sync = pipeline.archive.sync_dir

    def sync_dir(directory: Path) -> None:
        if directory == broken:
            raise StoreUnavailable("cannot write to the archive: EIO")
        real_sync(directory)

    monkeypatch.setattr(pipeline.archive, "sync_dir", sync_dir)
    results = _accept_all(pipeline, envelopes)
    for sha, result in zip(shas, results, strict=True):
        if pipeline.archive.path_for(sha).parent == broken:
            assert isinstance(result, StoreUnavailable)
        else:
            assert isinstance(result, RawMessage), result
    ok = [r for r in results if isinstance(r, RawMessage)]
    assert 0 < len(ok) < THREADS
    assert pipeline.store.counts()["received"] == len(ok)


def test_envelope_id_clash_in_a_batch_fails_only_that_caller(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = pipeline.accept(Envelope(raw=b"first content", channel=Channel.FILE))
    sizes = _hold_first_commit(pipeline, monkeypatch, 4)
    envelopes = _docs(5)
    envelopes[3] = replace(envelopes[3], id=taken.id)  # same id, other bytes
    results = _accept_all(pipeline, envelopes)
    assert sizes == [4]  # tried together, then each on its own
    assert isinstance(results[3], ValueError)
    assert all(isinstance(r, RawMessage) for i, r in enumerate(results) if i != 3)
    assert pipeline.store.counts()["received"] == 5


def test_lone_accept_commits_at_once_on_its_own(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Single-threaded accept is as before: archive put + add_raw, no batching, no wait."""
    calls: list[str] = []
    real = pipeline.store.add_raw

    def add_raw(envelope: Envelope, sha256: str, **kw: Any) -> RawMessage:
        calls.append(envelope.id)
        return real(envelope, sha256, **kw)

    def add_raws(*_a: object, **_k: object) -> list[RawMessage]:
        raise AssertionError("a lone accept needs no batch")

    monkeypatch.setattr(pipeline.store, "add_raw", add_raw)
    monkeypatch.setattr(pipeline.store, "add_raws", add_raws)
    envelopes = _docs(3)
    raws = [pipeline.accept(env) for env in envelopes]
    assert calls == [e.id for e in envelopes] == [r.id for r in raws]
    assert (pipeline._group.batches, pipeline._group.accepted) == (3, 3)
    assert pipeline._group._queue == []
    assert not pipeline._group._busy


@pytest.mark.postgres
def test_group_commit_on_postgresql(tmp_path: Path, config_dir: Path, postgres_db_url: str) -> None:
    toml = config_dir / "gateway.toml"
    toml.write_text(toml.read_text().replace('url = ""', f'url = "{postgres_db_url}"'))
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        assert pipe.store.backend == "postgresql"
        envelopes = _docs(THREADS * 4, base=9500)
        results = _accept_all(pipe, envelopes)
        assert all(isinstance(r, RawMessage) for r in results), results
        other = Store(postgres_db_url)
        try:
            assert other.counts()["received"] == len(envelopes)
            for env, raw in zip(envelopes, results, strict=True):
                assert other.get_raw(env.id) == raw
                assert pipe.archive.get(hashlib.sha256(env.raw).hexdigest()) == env.raw
        finally:
            other.close()
    finally:
        pipe.close()


def test_a_file_envelope_is_streamed_into_the_archive(pipeline: Pipeline, tmp_path: Path) -> None:
    source = tmp_path / "big.edi"
    source.write_bytes(x12_850(icn=61))
    raw = pipeline.accept(Envelope(raw=b"", source=source, channel=Channel.SFTP, filename="big.edi"))
    assert raw.size == source.stat().st_size
    assert pipeline.archive.get(raw.sha256) == source.read_bytes()
    claimed = pipeline.store.claim_id(raw.id, "test")
    assert claimed is not None
    assert pipeline.process(claimed).state == RawState.STORED
