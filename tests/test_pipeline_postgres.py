"""The whole pipeline on PostgreSQL, as several gateway nodes would run it.

Two pipelines (two "nodes") share one real PostgreSQL store and one archive; each runs
its worker thread; every message is processed exactly once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.pipeline import Pipeline
from gateway.store import RawState
from tests.helpers import copy_config, x12_850

pytestmark = pytest.mark.postgres


def _node(config_dir: Path, data: Path, url: str) -> Pipeline:
    text = (config_dir / "gateway.toml").read_text().replace('url = ""', f'url = "{url}"')
    (config_dir / "gateway.toml").write_text(text)
    config, _ = load_config(config_dir)
    return Pipeline.open(config, data)


def test_two_nodes_process_each_message_exactly_once(tmp_path: Path, postgres_db_url: str) -> None:
    data = tmp_path / "shared-data"  # the archive is shared storage between nodes
    a = _node(copy_config(tmp_path / "config-a"), data, postgres_db_url)
    b = _node(copy_config(tmp_path / "config-b"), data, postgres_db_url)
    try:
        assert a.store.backend == "postgresql"
        for i in range(60):
            node = a if i % 2 else b
            node.accept(Envelope(raw=x12_850(icn=1000 + i, po=f"PO-{i}"), channel=Channel.FILE))
        stop = threading.Event()
        workers = [
            threading.Thread(target=node.run_worker, args=(stop, name))
            for node, name in ((a, "node-a"), (b, "node-b"))
        ]
        for w in workers:
            w.start()
        for _ in range(300):
            if a.store.pending_count() == 0 and a.store.counts()["processing"] == 0:
                break
            stop.wait(0.1)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        counts = a.store.counts()
        assert counts["stored"] == 60
        assert counts["interactions"] == 60
        pos = sorted(r.references["po_number"] for r in a.store.list_interactions())
        assert pos == sorted(f"PO-{i}" for i in range(60))
        # the same interchange sent to the other node is recognised there too
        raw = b.accept(
            Envelope(raw=x12_850(icn=1000, po="PO-0").replace(b"~\n", b"~\r\n"), channel=Channel.FILE)
        )
        claimed = b.store.claim_id(raw.id, "node-b")
        assert claimed is not None
        assert b.process(claimed).state == RawState.DUPLICATE
    finally:
        a.close()
        b.close()
