"""The embedded SFTP server (hosting a drop), driven by the real OpenSSH ``sftp`` client.

Each test starts the gateway's server on a free loopback port with the shipped
configuration copied to a temporary directory and the real pipeline; the client logs
in with the demo partner's key and pins the server's host key (StrictHostKeyChecking).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.sftp_server import SftpServerAdapter, file_name
from gateway.config import load_config
from gateway.pipeline import Pipeline, ProcessResult
from gateway.store import RawState
from tests.conftest import REPO, need_peer
from tests.helpers import copy_config, x12_850

HOST_PUB = REPO / "config" / "demo" / "sftp_host_ed25519_key.pub"


@pytest.fixture(scope="session")
def sftp_binary() -> str:
    found = shutil.which("sftp")
    if found is None:
        need_peer("OpenSSH sftp client")
        raise AssertionError("unreachable")
    return found


@pytest.fixture(scope="session")
def client_files(tmp_path_factory: pytest.TempPathFactory, sftp_binary: str) -> dict[str, Path]:
    """The demo key copied with 0600 permissions, and a second key nobody knows."""
    del sftp_binary
    folder = tmp_path_factory.mktemp("sftp-client")
    demo = folder / "partner_ssh"
    shutil.copyfile(REPO / "config" / "demo" / "partner_ssh", demo)
    demo.chmod(0o600)
    other = folder / "other_ssh"
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        need_peer("OpenSSH ssh-keygen")
        raise AssertionError("unreachable")
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    return {"demo": demo, "other": other, "other_pub": other.with_suffix(".pub")}


@dataclass
class Sftp:
    """A running embedded server and a way to drive it with the OpenSSH client."""

    tmp: Path
    config_dir: Path
    data_dir: Path
    pipeline: Pipeline
    adapter: SftpServerAdapter
    sftp: str
    keys: dict[str, Path]

    @property
    def port(self) -> int:
        return self.adapter.port

    @property
    def folder(self) -> Path:
        return self.data_dir / "sftp" / "demo"

    def known_hosts(self, public_key: Path = HOST_PUB) -> Path:
        path = self.tmp / f"known_hosts-{public_key.name}"
        path.write_text(f"[127.0.0.1]:{self.port} {public_key.read_text().strip()}\n")
        return path

    def run(
        self,
        *commands: str,
        key: str = "demo",
        user: str = "demo",
        known_hosts: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        batch = self.tmp / "batch"
        batch.write_text("".join(f"{c}\n" for c in commands))
        return subprocess.run(
            [
                self.sftp,
                "-b",
                str(batch),
                "-i",
                str(self.keys[key]),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={known_hosts or self.known_hosts()}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-P",
                str(self.port),
                f"{user}@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=cwd or self.tmp,
            check=False,
        )


StartSftp = Callable[..., Sftp]


def _set_limit(config_dir: Path, max_bytes: int) -> None:
    path = config_dir / "gateway.toml"
    text = path.read_text()
    path.write_text(text.replace("max_message_bytes = 52428800", f"max_message_bytes = {max_bytes}", 1))


def _set_sftp(config_dir: Path, key: str, value: str) -> None:
    """Set ``key`` of ``[sftp]`` in gateway.toml (``value`` is TOML text)."""
    path = config_dir / "gateway.toml"
    head, sep, rest = path.read_text().partition("\n[sftp]\n")
    assert sep, "gateway.toml has no [sftp] table"
    body, nxt, tail = rest.partition("\n[")
    line = f"{key} = {value}"
    if re.search(rf"^{re.escape(key)}\s*=", body, re.MULTILINE):
        body = re.sub(rf"^{re.escape(key)}\s*=.*$", lambda _m: line, body, flags=re.MULTILINE)
    else:
        body = f"{line}\n{body}"
    path.write_text(head + sep + body + nxt + tail)


@pytest.fixture
def start_sftp(tmp_path: Path, sftp_binary: str, client_files: dict[str, Path]) -> Iterator[StartSftp]:
    running: list[Sftp] = []

    def start(*, max_bytes: int | None = None, **sftp: str) -> Sftp:
        config_dir = copy_config(tmp_path / f"config{len(running)}")
        if max_bytes is not None:
            _set_limit(config_dir, max_bytes)
        for key, value in sftp.items():
            _set_sftp(config_dir, key, value)
        config, _ = load_config(config_dir)
        data = tmp_path / f"data{len(running)}"
        pipeline = Pipeline.open(config, data)
        adapter = SftpServerAdapter(config, "127.0.0.1", 0, data_dir=data)
        try:
            adapter.start(pipeline.accept)
        except BaseException:
            pipeline.close()
            raise
        gw = Sftp(tmp_path, config_dir, data, pipeline, adapter, sftp_binary, client_files)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.adapter.stop()
        gw.pipeline.close()


@pytest.fixture
def gw(start_sftp: StartSftp) -> Sftp:
    return start_sftp()


def _order(tmp: Path, name: str = "po.edi", icn: int = 1) -> Path:
    path = tmp / name
    path.write_bytes(x12_850(icn))
    return path


# ---- uploads ------------------------------------------------------------------------------


def test_upload_is_accepted_processed_and_removed(gw: Sftp) -> None:
    _order(gw.tmp)
    done = gw.run("put po.edi", "ls -l")
    assert done.returncode == 0, done.stderr
    assert list(gw.folder.iterdir()) == []  # removed once accepted
    assert list((gw.data_dir / "sftp" / ".uploads" / "demo").iterdir()) == []
    results: list[ProcessResult] = []
    assert gw.pipeline.drain("test", on_result=results.append) == 1
    records = [r for res in results for r in res.records]
    assert len(records) == 1
    record = records[0]
    assert record.channel == "sftp"
    assert record.partner is not None
    assert record.partner.id == "demo"
    assert dict(record.sender)["sftp"] == "server:demo"
    assert gw.pipeline.store.claim("check", limit=5) == []  # nothing left in the inbox


def test_upload_carries_transport_facts(gw: Sftp) -> None:
    _order(gw.tmp, "order-7.x12", icn=7)
    assert gw.run("put order-7.x12").returncode == 0
    (raw,) = gw.pipeline.store.claim("check", limit=5)
    assert raw.channel == "sftp"
    assert raw.filename == "order-7.x12"
    assert raw.transport["sftp_user"] == "demo"
    assert raw.transport["sftp_path"] == "/order-7.x12"
    assert raw.transport["peer"] == "127.0.0.1"
    assert dict(raw.sender) == {"sftp": "server:demo"}


def test_partner_sees_reads_renames_and_removes_its_pending_files(gw: Sftp) -> None:
    (gw.folder / "waiting.edi").write_bytes(b"pending bytes")
    done = gw.run("ls", "get waiting.edi got.edi", "rename waiting.edi renamed.edi", "ls", "rm renamed.edi")
    assert done.returncode == 0, done.stderr
    assert "waiting.edi" in done.stdout
    assert "renamed.edi" in done.stdout
    assert (gw.tmp / "got.edi").read_bytes() == b"pending bytes"
    assert list(gw.folder.iterdir()) == []


def test_too_large_upload_is_refused_and_discarded(start_sftp: StartSftp) -> None:
    gw = start_sftp(max_bytes=1000)
    (gw.tmp / "big.edi").write_bytes(b"x" * 5000)
    done = gw.run("put big.edi")
    assert done.returncode != 0
    assert list(gw.folder.iterdir()) == []
    assert list((gw.data_dir / "sftp" / ".uploads" / "demo").iterdir()) == []
    assert gw.pipeline.store.claim("check", limit=5) == []


# ---- store failure ------------------------------------------------------------------------


def _break_archive(gw: Sftp) -> Path:
    """A real write failure: the archive folder replaced by a plain file."""
    archive = gw.data_dir / "archive"
    moved = gw.data_dir / "archive.away"
    if archive.exists():
        archive.rename(moved)
    archive.write_text("not a folder")
    return moved


def _mend_archive(gw: Sftp, moved: Path) -> None:
    archive = gw.data_dir / "archive"
    archive.unlink()
    if moved.exists():
        moved.rename(archive)


def test_store_failure_on_close_reports_error_keeps_file_then_upload_again_works(gw: Sftp) -> None:
    _order(gw.tmp)
    moved = _break_archive(gw)
    failed = gw.run("put po.edi")
    assert failed.returncode != 0
    assert (gw.folder / "po.edi").read_bytes() == x12_850(1)  # kept for a retry
    listed = gw.run("ls")
    assert "po.edi" in listed.stdout  # the partner sees it pending
    assert gw.pipeline.store.claim("check", limit=5) == []
    _mend_archive(gw, moved)
    again = gw.run("put po.edi")
    assert again.returncode == 0, again.stderr
    assert list(gw.folder.iterdir()) == []
    assert gw.pipeline.drain("test") == 1
    assert len(gw.pipeline.store.list_interactions(channel="sftp")) == 1


def test_pending_file_is_retried_by_the_server(gw: Sftp) -> None:
    _order(gw.tmp)
    moved = _break_archive(gw)
    assert gw.run("put po.edi").returncode != 0
    assert gw.adapter.poll_once(gw.pipeline.accept) == 0  # still failing: kept
    assert (gw.folder / "po.edi").exists()
    _mend_archive(gw, moved)
    assert gw.adapter.poll_once(gw.pipeline.accept) == 1
    assert list(gw.folder.iterdir()) == []
    assert gw.pipeline.drain("test") == 1
    (record,) = gw.pipeline.store.list_interactions(channel="sftp")
    assert record.partner is not None
    assert record.partner.id == "demo"


# ---- confinement --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        "put po.edi ../../etc/x",
        "put po.edi ../x",
        "put po.edi /etc/x",
        "put po.edi sub/x",
        "cd ..",
        "cd /..",
        "ls ..",
        "get /etc/passwd",
        "get ../../../../etc/passwd",
        "mkdir sub",
        "symlink /etc/passwd link",
        "ln -s /etc/passwd link",
        "rename waiting.edi ../waiting.edi",
        "rename waiting.edi /tmp/waiting.edi",
    ],
)
def test_path_escapes_are_refused(gw: Sftp, command: str) -> None:
    _order(gw.tmp)
    (gw.folder / "waiting.edi").write_bytes(b"pending")
    done = gw.run(command)
    assert done.returncode != 0, f"{command!r} was allowed: {done.stdout}"
    assert sorted(p.name for p in gw.folder.iterdir()) == ["waiting.edi"]
    root = gw.data_dir / "sftp"
    assert sorted(p.name for p in root.iterdir()) == [".uploads", "demo"]
    assert gw.pipeline.store.claim("check", limit=5) == []


def test_refusals_say_permission_denied(gw: Sftp) -> None:
    _order(gw.tmp)
    done = gw.run("put po.edi ../../etc/x")
    assert "permission denied" in done.stderr.lower() or "outside your folder" in done.stderr.lower()
    done = gw.run("cd ..")
    assert "outside your folder" in done.stderr.lower()


def test_root_is_the_partner_folder_and_links_on_disk_are_not_followed(gw: Sftp) -> None:
    secret = gw.tmp / "secret.txt"
    secret.write_text("not for partners")
    os.symlink(secret, gw.folder / "link.txt")
    (gw.folder / "mine.edi").write_bytes(b"pending")
    listed = gw.run("cd /", "ls -la")
    assert listed.returncode == 0, listed.stderr
    assert "mine.edi" in listed.stdout
    assert "link.txt" not in listed.stdout  # links are not shown ...
    got = gw.run("get link.txt")
    assert got.returncode != 0  # ... nor followed
    assert not (gw.tmp / "link.txt").exists()
    _order(gw.tmp)
    assert gw.run("put po.edi link.txt").returncode != 0  # not replaced either
    assert secret.read_text() == "not for partners"
    gone = gw.run("rm link.txt")
    assert gone.returncode != 0
    assert (gw.folder / "link.txt").is_symlink()


def test_no_shell_or_exec(gw: Sftp, client_files: dict[str, Path]) -> None:
    ssh = shutil.which("ssh")
    if ssh is None:
        need_peer("OpenSSH ssh client")
    done = subprocess.run(
        [
            str(ssh),
            "-i",
            str(client_files["demo"]),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={gw.known_hosts()}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(gw.port),
            "demo@127.0.0.1",
            "id",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "uid=" not in done.stdout


# ---- authentication ---------------------------------------------------------------------


def test_wrong_key_is_refused_and_audited(gw: Sftp) -> None:
    _order(gw.tmp)
    done = gw.run("put po.edi", key="other")
    assert done.returncode != 0
    assert "permission denied" in done.stderr.lower()
    assert list(gw.folder.iterdir()) == []
    assert gw.pipeline.store.claim("check", limit=5) == []
    events = [e for e in gw.pipeline.store.list_audit() if e.event == "sftp_auth_failed"]
    assert events
    assert events[0].subject == "sftp:demo"
    assert "key not listed" in events[0].detail
    other_pub = gw.keys["other_pub"].read_text().split()[1]
    assert all(other_pub not in e.detail for e in events)  # a fingerprint, never the key


def test_unknown_user_is_refused(gw: Sftp) -> None:
    _order(gw.tmp)
    done = gw.run("put po.edi", user="mallory")
    assert done.returncode != 0
    assert gw.pipeline.store.claim("check", limit=5) == []
    assert any(e.subject == "sftp:mallory" for e in gw.pipeline.store.list_audit())


def test_client_refuses_a_server_whose_host_key_is_not_pinned(gw: Sftp) -> None:
    _order(gw.tmp)
    wrong = gw.known_hosts(gw.keys["other_pub"])
    done = gw.run("put po.edi", known_hosts=wrong)
    assert done.returncode != 0
    assert "host key" in done.stderr.lower()
    assert gw.pipeline.store.claim("check", limit=5) == []


def test_sessions_are_bounded(start_sftp: StartSftp) -> None:
    gw = start_sftp(max_sessions="1")
    holder = socket.create_connection(("127.0.0.1", gw.port))
    try:
        holder.recv(64)  # the server's banner: the one session is taken
        _order(gw.tmp)
        assert gw.run("put po.edi").returncode != 0
    finally:
        holder.close()
    deadline = time.monotonic() + 10
    while True:
        done = gw.run("put po.edi")
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert done.returncode == 0, done.stderr


# ---- gateway run ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gateway_run_starts_the_sftp_server(
    tmp_path: Path, sftp_binary: str, client_files: dict[str, Path]
) -> None:
    config_dir = copy_config(tmp_path / "config")
    data = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "GATEWAY_CONFIG": str(config_dir), "GATEWAY_DATA": str(data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--no-as2", "--no-smtp", "--sftp", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("gateway running"):
                break
        assert any(line.startswith("started sftp:") for line in lines), "".join(lines)
        _order(tmp_path)
        (tmp_path / "kh").write_text(f"[127.0.0.1]:{port} {HOST_PUB.read_text().strip()}\n")
        (tmp_path / "batch").write_text("put po.edi\n")
        done = subprocess.run(
            [
                sftp_binary,
                "-b",
                str(tmp_path / "batch"),
                "-i",
                str(client_files["demo"]),
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                f"UserKnownHostsFile={tmp_path / 'kh'}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-P",
                str(port),
                "demo@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert not (data / "sftp" / "demo" / "po.edi").exists()
        listed = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            listed = subprocess.run(
                [sys.executable, "-m", "gateway", "interactions", "--channel", "sftp", "--json"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            ).stdout
            if listed.strip():
                break
            time.sleep(0.3)
        assert '"demo"' in listed
        assert '"order"' in listed
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0


# ---- units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "name"),
    [("/", ""), (".", ""), ("", ""), ("/po.edi", "po.edi"), ("po.edi", "po.edi"), ("/a/../po.edi", "po.edi")],
)
def test_file_name_resolves_within_the_folder(path: str, name: str) -> None:
    assert file_name(path) == name


@pytest.mark.parametrize("path", ["..", "/..", "/../x", "../../etc/passwd", "/etc/passwd", "a/b", "x\0y"])
def test_file_name_refuses_escapes(path: str) -> None:
    from adapters.sftp_server import Refused

    with pytest.raises(Refused):
        file_name(path)


def test_raw_states_after_upload(gw: Sftp) -> None:
    _order(gw.tmp)
    assert gw.run("put po.edi").returncode == 0
    results: list[ProcessResult] = []
    gw.pipeline.drain("test", on_result=results.append)
    assert [r.state for r in results] == [RawState.STORED]
