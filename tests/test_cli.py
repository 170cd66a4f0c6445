"""The command line as a user runs it: a real process, real files, exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import copy_config, x12_850


class Gw:
    def __init__(self, tmp: Path) -> None:
        self.config = copy_config(tmp / "config")
        self.data = tmp / "data"
        self.tmp = tmp

    def __call__(self, *args: str, ok: bool | None = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "GATEWAY_CONFIG": str(self.config),
            "GATEWAY_DATA": str(self.data),
        }
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env, timeout=300
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        if ok is True:
            assert proc.returncode == 0, proc.stderr
        return proc

    def jsonl(self, *args: str, ok: bool | None = True) -> list[dict]:  # type: ignore[type-arg]
        proc = self(*args, "--json", ok=ok)
        return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture
def gw(tmp_path: Path) -> Gw:
    return Gw(tmp_path)


def test_ingest_json_and_interactions(gw: Gw, corpus: Path) -> None:
    out = gw.jsonl("ingest", str(corpus / "x12" / "staedi_810_and_850_two_GS_groups.edi"))
    assert [o["kind"] for o in out] == ["invoice", "invoice", "order"]
    for o in out:
        assert set(o) >= {
            "id",
            "channel",
            "direction",
            "kind",
            "partner",
            "sender",
            "occurred_at",
            "received_at",
            "document",
            "subject",
            "references",
            "currency",
            "total_amount",
            "lines",
            "parties",
            "attachments",
            "raw_sha256",
            "mapping",
            "status",
        }
        assert o["channel"] == "file"
        assert o["status"] == "unresolved"  # the corpus sender is not a configured partner
        for line in o["lines"]:
            assert line["quantity"] is None or isinstance(line["quantity"], str)
    listed = gw.jsonl("interactions")
    assert {o["id"] for o in listed} == {o["id"] for o in out}
    assert [o["kind"] for o in gw.jsonl("interactions", "--kind", "order")] == ["order"]
    assert len(gw.jsonl("interactions", "--limit", "1")) == 1
    assert gw.jsonl("interactions", "--channel", "email") == []
    assert gw.jsonl("interactions", "--since", "2999-01-01") == []
    shown = gw.jsonl("interactions", "show", out[0]["id"])
    assert shown == [out[0]] or shown[0]["id"] == out[0]["id"]
    text = gw("interactions", "show", out[2]["id"]).stdout
    assert "kind: order" in text


def test_partner_filter(gw: Gw, tmp_path: Path) -> None:
    (tmp_path / "po.edi").write_bytes(x12_850(icn=5))
    (tmp_path / "other.edi").write_bytes(x12_850(icn=6, sender="STRANGER"))
    gw("ingest", str(tmp_path / "po.edi"), str(tmp_path / "other.edi"))
    mine = gw.jsonl("interactions", "--partner", "demo")
    assert len(mine) == 1
    assert mine[0]["partner"] == {"id": "demo", "name": "Demo Partner Inc."}


def test_quarantine_and_replay(gw: Gw, corpus: Path) -> None:
    bad = corpus / "x12" / "INVALID_edinet_control_numbers_mismatch.edi"
    proc = gw("ingest", str(bad), ok=None)
    assert proc.returncode == 1
    assert "quarantined" in proc.stdout
    entries = gw.jsonl("quarantine")
    assert len(entries) == 1
    assert entries[0]["stage"] == "parse"
    assert entries[0]["filename"] == bad.name
    replay = gw("replay", entries[0]["id"], ok=None)
    assert replay.returncode == 1  # still broken: still quarantined, with the same reason
    assert len(gw.jsonl("quarantine")) == 1
    assert gw.jsonl("quarantine")[0]["replays"] >= 1


def test_ingest_folder_exit_status(gw: Gw, corpus: Path) -> None:
    proc = gw("ingest", str(corpus / "edifact"), ok=None)
    assert proc.returncode == 1  # the folder holds deliberately invalid files
    assert proc.stdout.count("quarantined") >= 1


def test_errors_are_one_line(gw: Gw) -> None:
    proc = gw("interactions", "show", "nope", ok=None)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "no interaction nope" in proc.stderr
    proc = gw("ingest", "/no/such/file", ok=None)
    assert proc.returncode == 2
    assert "no such file" in proc.stderr
    proc = gw("interactions", "--since", "yesterday", ok=None)
    assert proc.returncode == 2
    assert "ISO 8601" in proc.stderr


def test_config_check(gw: Gw) -> None:
    assert "OK" in gw("config", "check").stdout
    (gw.config / "gateway.toml").write_text(
        f"[mappings]\ndirectory = '{REPO / 'mappings'}'\n"
        "[limits]\nmax_message_bytes = 'big'\n[processing]\nworkers = 0\n"
    )
    (gw.config / "partners" / "x.toml").write_text('id = "x"\n[identities]\nemail = ["not-an-address"]\n')
    proc = gw("config", "check", ok=None)
    assert proc.returncode == 1
    assert "max_message_bytes" in proc.stderr
    assert "workers" in proc.stderr
    assert "not-an-address" in proc.stderr
    assert "3 problem(s)" in proc.stderr
    # other commands refuse to start on a broken configuration, with the problems listed
    proc = gw("interactions", ok=None)
    assert proc.returncode == 2
    assert "max_message_bytes" in proc.stderr


def test_mapping_check_and_test(gw: Gw, corpus: Path, tmp_path: Path) -> None:
    assert "OK" in gw("mapping", "check").stdout
    broken = tmp_path / "broken.xml"
    good = next((REPO / "mappings").glob("*850*.xml"))
    broken.write_text(good.read_text().replace('xpath="', 'xpath="///[', 1))
    proc = gw("mapping", "check", str(broken), ok=None)
    assert proc.returncode == 1
    assert str(broken) in proc.stderr
    assert ":" in proc.stderr.split(str(broken), 1)[1][:8]  # file:line
    out = gw.jsonl(
        "mapping", "test", str(good), str(corpus / "x12" / "staedi_810_and_850_two_GS_groups.edi"), ok=None
    )
    assert any(o["kind"] == "order" for o in out)
    assert gw.jsonl("interactions") == []  # a preview stores nothing


def test_run_once_takes_the_drop_folder_and_processes(gw: Gw) -> None:
    incoming = gw.data / "incoming"
    incoming.mkdir(parents=True)
    (incoming / "po.edi").write_bytes(x12_850(icn=11))
    proc = gw("run", "--once", "--no-as2", "--no-smtp", "--no-sftp")
    assert "processed 1 message(s)" in proc.stdout
    assert not (incoming / "po.edi").exists()  # removed only after it was safely in the inbox
    (rec,) = gw.jsonl("interactions")
    assert rec["kind"] == "order"
    assert rec["partner"]["id"] == "demo"


def test_run_serves_until_stopped(gw: Gw) -> None:
    import signal
    import time

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GATEWAY_CONFIG": str(gw.config),
        "GATEWAY_DATA": str(gw.data),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        incoming = gw.data / "incoming"
        while not incoming.is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        (incoming / "po.edi").write_bytes(x12_850(icn=12))
        while (incoming / "po.edi").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (incoming / "po.edi").exists()
        while time.monotonic() < deadline:
            if gw.jsonl("interactions"):
                break
            time.sleep(0.3)
        assert len(gw.jsonl("interactions")) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "gateway running" in out


def test_oversized_file_is_refused_without_reading_it(gw: Gw, tmp_path: Path) -> None:
    text = (
        (gw.config / "gateway.toml")
        .read_text()
        .replace("max_message_bytes = 52428800", "max_message_bytes = 100")
    )
    (gw.config / "gateway.toml").write_text(text)
    (tmp_path / "big.edi").write_bytes(x12_850())
    (tmp_path / "small.txt").write_text("hello")
    out = gw.jsonl("ingest", str(tmp_path / "big.edi"), str(tmp_path / "small.txt"), ok=None)
    assert out[0]["refused"]["reason"].startswith(f"{len(x12_850())} bytes exceeds")
    assert out[1]["kind"] == "other"
    assert gw("ingest", str(tmp_path / "big.edi"), ok=None).returncode == 1
