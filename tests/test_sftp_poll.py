"""SFTP polling and delivery against a real OpenSSH sshd (tests/fixtures_sshd.py): no mocks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapters.polling import PollResult
from adapters.sftp_poll import DropPoller, RemoteFile, SftpDeliverer, SftpPollAdapter, load_status
from gateway.config import load_config
from gateway.pipeline import Pipeline
from gateway.store import RawState
from tests.conftest import REPO
from tests.fixtures_sshd import Sshd
from tests.helpers import copy_config, x12_850

HOLDER = "test-node"


def drop_config(
    tmp_path: Path, sshd: Sshd, folder: Path, extra: str = "", *, host_key: str | None = None
) -> Path:
    conf = copy_config(tmp_path / "config")
    profile = conf / "partners" / "demo.toml"
    text = profile.read_text()
    text += textwrap.dedent(
        f"""
        [[sftp.drop]]
        name = "demo-orders"
        host = "{sshd.host}"
        port = {sshd.port}
        user = "{sshd.user}"
        key = "{sshd.client_key}"
        host_key = "{host_key or sshd.host_key}"
        folder = "{folder}"
        interval = 1
        """
    )
    text += textwrap.dedent(extra)
    profile.write_text(text)
    return conf


class Gateway:
    def __init__(self, conf: Path, data: Path) -> None:
        self.config, _ = load_config(conf)
        self.data = data
        self.pipeline = Pipeline.open(self.config, data)
        self.adapter = SftpPollAdapter(self.config, data_dir=data, holder=HOLDER)

    @property
    def poller(self) -> DropPoller:
        return self.adapter.pollers(self.pipeline.accept)["demo:demo-orders"]

    def poll(self) -> PollResult:
        return self.poller.poll(self.pipeline.accept, force=True)

    def raws(self) -> int:
        counts = self.pipeline.store.counts()
        return sum(counts[s.value] for s in RawState)

    def close(self) -> None:
        self.adapter.stop()
        self.pipeline.close()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gw in made:
        gw.close()


def open_gateway(made: list[Gateway], conf: Path, data: Path) -> Gateway:
    gw = Gateway(conf, data)
    made.append(gw)
    return gw


def order(n: int) -> bytes:
    # an ISA sender no profile knows: the partner is found by the drop (identity "sftp")
    return x12_850(n, sender="SFTPONLY", po=f"PO-SFTP-{n}")


def test_files_are_taken_processed_and_removed(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    for n in (1, 2):
        sshd.put(sftp_drop / f"po{n}.edi", order(n))
    stats = {n: remote(sftp_drop / f"po{n}.edi") for n in (1, 2)}
    gw = open_gateway(gateways, drop_config(tmp_path, sshd, sftp_drop, "settle = 0.5\n"), tmp_path / "data")

    result = gw.poll()
    assert (result.taken, result.recognised, result.refused, result.error) == (2, 0, 0, None)
    assert list(sftp_drop.iterdir()) == []
    assert gw.pipeline.drain() == 2
    records = gw.pipeline.store.list_interactions()
    assert len(records) == 2
    assert {r.channel for r in records} == {"sftp"}
    assert {r.partner.id for r in records if r.partner} == {"demo"}
    assert {r.references.get("po_number") for r in records} == {"PO-SFTP-1", "PO-SFTP-2"}
    for n in (1, 2):
        raw = gw.pipeline.store.get_raw(gw.poller.envelope_id(stats[n]))
        assert raw is not None  # the id is derived from host, port, path, size and mtime
        assert raw.channel == "sftp"
        assert raw.filename == f"po{n}.edi"
        assert raw.transport["sftp_drop"] == "demo:demo-orders"
        assert raw.transport["sftp_path"] == f"{sftp_drop}/po{n}.edi"
        assert raw.transport["sftp_host"] == sshd.host
        assert raw.transport["sftp_port"] == str(sshd.port)
        assert raw.transport["size"] == str(len(order(n)))
        assert raw.sender == {"sftp": "demo-orders"}
    # the next poll finds nothing
    assert gw.poll().taken == 0


def remote(path: Path) -> RemoteFile:
    st = path.stat()
    return RemoteFile(path.name, str(path), st.st_size, int(st.st_mtime))


def test_after_move_renames_into_the_archive_folder(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1), mtime=1_700_000_000)
    conf = drop_config(tmp_path, sshd, sftp_drop, 'settle = 0.3\nafter = "move:done/2024"\n')
    gw = open_gateway(gateways, conf, tmp_path / "data")
    assert gw.poll().taken == 1
    assert sorted(p.name for p in sftp_drop.iterdir()) == ["done"]
    assert (sftp_drop / "done" / "2024" / "po1.edi").read_bytes() == order(1)
    # a new file of the same name, size and mtime: taken too (its bytes differ), and it
    # does not overwrite the archived one
    assert len(order(2)) == len(order(1))
    sshd.put(sftp_drop / "po1.edi", order(2), mtime=1_700_000_000)
    assert gw.poll().taken == 1
    assert gw.raws() == 2
    assert len(list((sftp_drop / "done" / "2024").iterdir())) == 2


def test_a_file_still_being_written_is_not_taken(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    target = sftp_drop / "big.edi"
    data = order(7)
    sshd.put(target, b"")
    done = threading.Event()

    def writer() -> None:  # appends a slice every 0.3 s for about 3 s, as a slow upload would
        step = len(data) // 10 + 1
        for i in range(0, len(data), step):
            with target.open("ab") as fh:
                fh.write(data[i : i + step])
            time.sleep(0.3)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        gw = open_gateway(gateways, drop_config(tmp_path, sshd, sftp_drop, "settle = 1\n"), tmp_path / "data")
        time.sleep(0.4)
        result = gw.poll()
        assert result.taken == 0
        assert result.waiting == 1
        assert gw.raws() == 0
    finally:
        thread.join()
    assert done.is_set()
    result = gw.poll()
    assert result.taken == 1
    assert not target.exists()
    assert gw.pipeline.drain() == 1
    (rec,) = gw.pipeline.store.list_interactions()
    assert rec.references.get("po_number") == "PO-SFTP-7"


def test_marker_file_says_when_a_file_is_complete(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1))
    sshd.put(sftp_drop / "po2.edi", order(2))
    sshd.put(sftp_drop / "po2.edi.ok", b"")
    gw = open_gateway(gateways, drop_config(tmp_path, sshd, sftp_drop, 'marker = ".ok"\n'), tmp_path / "data")
    result = gw.poll()
    assert (result.taken, result.waiting) == (1, 1)
    assert sorted(p.name for p in sftp_drop.iterdir()) == ["po1.edi"]  # po2 and its marker gone
    sshd.put(sftp_drop / "po1.edi.ok", b"")
    assert gw.poll().taken == 1
    assert list(sftp_drop.iterdir()) == []


def test_a_changed_host_key_is_refused_and_reported(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway], caplog: pytest.LogCaptureFixture
) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1))
    conf = drop_config(tmp_path, sshd, sftp_drop, "settle = 0\n", host_key=sshd.other_host_key)
    gw = open_gateway(gateways, conf, tmp_path / "data")
    result = gw.poll()
    assert result.taken == 0
    assert result.error is not None
    assert "host key" in result.error
    assert "refused" in result.error
    assert result.error.count("SHA256:") == 2  # expected and found
    assert (sftp_drop / "po1.edi").exists()
    assert gw.raws() == 0
    assert "SHA256:" in caplog.text
    status = load_status(gw.pipeline.store, gw.poller.drop)
    assert status.failures == 1
    assert status.last_error == result.error
    assert status.next_attempt is not None
    assert any(e.event == "sftp_error" for e in gw.pipeline.store.list_audit(subject="sftp:demo:demo-orders"))
    # backing off: a scheduled poll now is skipped
    assert gw.poller.poll(gw.pipeline.accept).skipped


def test_a_crash_between_accept_and_removal_takes_the_file_once(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1))
    sshd.put(sftp_drop / "po2.edi", order(2), mtime=time.time() + 5)  # taken second
    conf = drop_config(tmp_path, sshd, sftp_drop, "settle = 0\n")
    data = tmp_path / "data"
    # A real process that dies (os._exit: no clean-up at all) right after accept returned.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from adapters.sftp_poll import SftpPollAdapter
        from gateway.config import load_config
        from gateway.pipeline import Pipeline

        config, _ = load_config(Path(sys.argv[1]))
        pipe = Pipeline.open(config, Path(sys.argv[2]))
        poller = SftpPollAdapter(config, data_dir=Path(sys.argv[2]), holder={HOLDER!r}).pollers(pipe.accept)[
            "demo:demo-orders"
        ]
        poller.after_accept = lambda raw: os._exit(17)
        poller.poll(pipe.accept)
        os._exit(1)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(conf), str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 17, proc.stderr
    assert sorted(p.name for p in sftp_drop.iterdir()) == ["po1.edi", "po2.edi"]  # accepted, not removed

    gw = open_gateway(gateways, conf, data)
    assert gw.raws() == 1
    result = gw.poll()
    assert (result.recognised, result.taken) == (1, 1)
    assert gw.raws() == 2  # no second raw message for the first file
    assert list(sftp_drop.iterdir()) == []
    assert gw.pipeline.drain() == 2
    assert gw.pipeline.store.counts()["interactions"] == 2


def test_a_file_over_the_limit_is_refused_and_left_in_place(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    sshd.put(sftp_drop / "huge.edi", b"x" * 5000)
    sshd.put(sftp_drop / "po1.edi", order(1))
    conf = drop_config(tmp_path, sshd, sftp_drop, "settle = 0\n")
    gw_text = (
        (conf / "gateway.toml")
        .read_text()
        .replace("max_message_bytes = 52428800", "max_message_bytes = 4096")
    )
    (conf / "gateway.toml").write_text(gw_text)
    gw = open_gateway(gateways, conf, tmp_path / "data")
    result = gw.poll()
    assert (result.taken, result.refused) == (1, 1)
    assert [p.name for p in sftp_drop.iterdir()] == ["huge.edi"]
    assert any(e.event == "sftp_refused" for e in gw.pipeline.store.list_audit(limit=None))


def test_one_failing_drop_does_not_block_the_others(
    tmp_path: Path, sshd: Sshd, gateways: list[Gateway]
) -> None:
    good, bad = sshd.folder(), sshd.folder()
    sshd.put(good / "po1.edi", order(1))
    conf = drop_config(tmp_path, sshd, good, "settle = 0\n")
    profile = conf / "partners" / "demo.toml"
    profile.write_text(
        profile.read_text()
        + textwrap.dedent(
            f"""
            [[sftp.drop]]
            name = "demo-unreachable"
            host = "127.0.0.1"
            port = 1
            user = "nobody"
            key = "{sshd.client_key}"
            host_key = "{sshd.host_key}"
            folder = "{bad}"
            interval = 1
            """
        )
    )
    gw = open_gateway(gateways, conf, tmp_path / "data")
    gw.adapter.start(gw.pipeline.accept)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (good / "po1.edi").exists():
        time.sleep(0.1)
    assert not (good / "po1.edi").exists()
    status = gw.adapter.status()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and status["demo:demo-unreachable"].failures == 0:
        time.sleep(0.1)
        status = gw.adapter.status()
    assert status["demo:demo-orders"].taken == 1
    assert status["demo:demo-unreachable"].failures >= 1
    assert "connection" in (status["demo:demo-unreachable"].last_error or "")


def test_an_upload_to_a_partner_inbox_appears_atomically(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]
) -> None:
    inbox = sshd.folder()
    conf = copy_config(tmp_path / "config")
    profile = conf / "partners" / "demo.toml"
    profile.write_text(
        profile.read_text()
        + textwrap.dedent(
            f"""
            [sftp.deliver]
            host = "{sshd.host}"
            port = {sshd.port}
            user = "{sshd.user}"
            key = "{sshd.client_key}"
            host_key = "{sshd.host_key}"
            folder = "{inbox}"
            """
        )
    )
    config, _ = load_config(conf)
    pipeline = Pipeline.open(config, tmp_path / "data")
    try:
        deliverer = SftpDeliverer(config, pipeline.store, tmp_path / "data")
        data = os.urandom(8 * 1024 * 1024)
        seen: list[tuple[str, int]] = []
        stop = threading.Event()

        def watch() -> None:  # a concurrent listing, as the partner's poller would do
            while not stop.is_set():
                for entry in os.scandir(inbox):
                    with contextlib.suppress(FileNotFoundError):
                        seen.append((entry.name, entry.stat().st_size))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            result = deliverer.deliver("demo", "ack-1.edi", data)
        finally:
            stop.set()
            watcher.join()
        assert result.state == "delivered", result.error
        assert (inbox / "ack-1.edi").read_bytes() == data
        assert [p.name for p in inbox.iterdir()] == ["ack-1.edi"]
        finals = [size for name, size in seen if name == "ack-1.edi"]
        assert all(size == len(data) for size in finals)  # never partial under the final name
        assert any(name == ".ack-1.edi.part" for name, _ in seen)  # written under the temporary name

        # the server refuses: pending, kept, then delivered by a retry
        inbox.chmod(0o555)
        failed = deliverer.deliver("demo", "ack-2.edi", b"ISA*...")
        assert failed.state == "pending"
        assert failed.error
        assert len(deliverer.pending()) == 1
        inbox.chmod(0o755)
        (retried,) = deliverer.retry_due(datetime.now(UTC) + timedelta(minutes=2))
        assert retried.state == "delivered"
        assert (inbox / "ack-2.edi").read_bytes() == b"ISA*..."
        assert deliverer.pending() == []
    finally:
        pipeline.close()


def _gateway_cli(conf: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(conf), "--data", str(data), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_gateway_fetch_end_to_end_and_a_wrong_host_key_refused(
    tmp_path: Path, sshd: Sshd, sftp_drop: Path
) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1))
    sshd.put(sftp_drop / "notes.txt", b"not picked: pattern")
    conf = copy_config(tmp_path / "config")
    data = tmp_path / "data"
    url = f"sftp://{sshd.user}@{sshd.host}:{sshd.port}{sftp_drop}"
    common = ["--identity", str(sshd.client_key), "--pattern", "*.edi", "--settle", "0.2"]

    refused = _gateway_cli(conf, data, "fetch", url, *common, "--host-key", sshd.other_host_key)
    assert refused.returncode == 2
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("gateway:")]
    assert "host key" in line
    assert line.count("SHA256:") == 2  # expected and found
    assert (sftp_drop / "po1.edi").exists()

    proc = _gateway_cli(conf, data, "fetch", url, *common, "--host-key", sshd.host_key, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1
    assert lines[0]["channel"] == "sftp"
    assert lines[0]["references"]["po_number"] == "PO-SFTP-1"
    assert sorted(p.name for p in sftp_drop.iterdir()) == ["notes.txt"]


def test_gateway_drops_json(tmp_path: Path, sshd: Sshd, sftp_drop: Path, gateways: list[Gateway]) -> None:
    sshd.put(sftp_drop / "po1.edi", order(1))
    conf = drop_config(tmp_path, sshd, sftp_drop, "settle = 0\n")
    data = tmp_path / "data"
    before = _gateway_cli(conf, data, "drops", "--json")
    assert before.returncode == 0, before.stderr
    (row,) = [json.loads(line) for line in before.stdout.splitlines()]
    assert row["drop"] == "demo:demo-orders"
    assert row["last_run"] is None
    assert row["taken"] == 0
    gw = open_gateway(gateways, conf, data)
    assert gw.poll().taken == 1
    gw.close()
    gateways.remove(gw)
    after = _gateway_cli(conf, data, "drops", "--json")
    (row,) = [json.loads(line) for line in after.stdout.splitlines()]
    assert row["taken"] == 1
    assert row["polls"] == 1
    assert row["last_error"] is None
    assert row["last_run"]
    assert row["last_success"]
    assert row["host"] == sshd.host
    assert row["port"] == sshd.port
    assert row["folder"] == str(sftp_drop)


def test_a_drop_without_a_pinned_host_key_is_a_configuration_problem(tmp_path: Path) -> None:
    conf = copy_config(tmp_path / "config")
    profile = conf / "partners" / "demo.toml"
    profile.write_text(
        profile.read_text()
        + textwrap.dedent(
            """
            [[sftp.drop]]
            name = "no-key"
            host = "sftp.example"
            user = "gw"
            password = "env:X"

            [[sftp.drop]]
            name = "bad-key"
            host = "sftp.example"
            user = "gw"
            password = "env:X"
            host_key = "ssh-ed25519 bm90IGEga2V5"
            after = "rename"
            """
        )
    )
    _, problems = load_config(conf, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "sftp.drop.host_key" in text
    assert "there is no accepting an unknown key" in text
    assert "not a ssh-ed25519 key" in text
    assert "sftp.drop.after" in text


def test_gateway_send_to_an_sftp_partner_uploads_and_records_outbound(tmp_path: Path, sshd: Sshd) -> None:
    inbox = sshd.folder()
    conf = copy_config(tmp_path / "config")
    profile = conf / "partners" / "demo.toml"
    profile.write_text(
        profile.read_text()
        + textwrap.dedent(
            f"""
            [sftp.deliver]
            host = "{sshd.host}"
            port = {sshd.port}
            user = "{sshd.user}"
            key = "{sshd.client_key}"
            host_key = "{sshd.host_key}"
            folder = "{inbox}"
            """
        )
    )
    doc = tmp_path / "po-out.edi"
    doc.write_bytes(order(901))
    proc = _gateway_cli(conf, tmp_path / "data", "send", "--partner", "demo", str(doc), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[0])
    assert out["sftp"]["state"] == "delivered"
    assert (inbox / "po-out.edi").read_bytes() == order(901)
    (rec,) = out["interactions"]
    assert rec["direction"] == "outbound"
    assert rec["channel"] == "sftp"
    assert rec["kind"] == "order"
    assert rec["partner"]["id"] == "demo"
    assert rec["references"]["sftp_delivery"] == out["sftp"]["id"]
    listed = _gateway_cli(conf, tmp_path / "data", "interactions", "--json")
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [rec["id"]]
    # the outbound file was never taken as an inbound message
    drained = _gateway_cli(conf, tmp_path / "data", "run", "--once", "--no-as2", "--no-smtp", "--no-sftp")
    assert "processed 0 message(s)" in drained.stdout, drained.stdout
