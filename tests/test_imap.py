"""Mailbox polling against a real Dovecot (tests/fixtures_dovecot.py): no mocks."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.imap import ImapAdapter, MailboxPoller, encode_folder
from gateway.config import load_config
from gateway.pipeline import Pipeline
from gateway.store import RawState
from tests.conftest import REPO
from tests.fixtures_dovecot import ImapAccount
from tests.helpers import copy_config

PASSWORD_ENV = "GW_TEST_IMAP_PASSWORD"
HOLDER = "test-node"


def mail(n: int, tag: str, *, size: int = 0) -> bytes:
    body = f"Please ship {n} widgets.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (
        "From: Buyer <buyer@demo-partner.test>\r\n"
        "To: orders@gateway.test\r\n"
        f"Subject: Order {n}\r\n"
        f"Message-ID: <order-{n}-{tag}@demo-partner.test>\r\n"
        "Date: Fri, 05 Jan 2024 12:00:00 +0000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n" + body
    ).encode()


def write_config(tmp_path: Path, account: ImapAccount, extra: str = "", *, limits: str = "") -> Path:
    conf = copy_config(tmp_path / "config")
    text = (conf / "gateway.toml").read_text()
    if limits:
        text = text.replace("max_message_bytes = 52428800", limits)
    text += textwrap.dedent(
        f"""
        [[imap.mailbox]]
        name = "orders"
        host = "{account.server.host}"
        port = {account.server.port_tls}
        tls = "implicit"
        tls_ca = "{account.server.ca}"
        user = "{account.user}"
        password = "env:{PASSWORD_ENV}"
        """
    )
    text += textwrap.dedent(extra)
    (conf / "gateway.toml").write_text(text)
    return conf


@pytest.fixture
def tag() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def password(imap_account: ImapAccount, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, imap_account.password)
    return imap_account.password


class Gateway:
    """A pipeline and an IMAP adapter on one configuration and data directory."""

    def __init__(self, conf: Path, data: Path) -> None:
        self.config, _ = load_config(conf)
        self.pipeline = Pipeline.open(self.config, data)
        self.adapter = ImapAdapter(self.config, holder=HOLDER)

    @property
    def poller(self) -> MailboxPoller:
        return self.adapter.pollers(self.pipeline.accept)["orders"]

    def poll(self, *, force: bool = True):  # type: ignore[no-untyped-def]
        return self.poller.poll(self.pipeline.accept, force=force)

    def raws(self) -> int:
        counts = self.pipeline.store.counts()
        return sum(counts[s.value] for s in RawState)

    def close(self) -> None:
        self.adapter.stop()
        self.pipeline.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[list[Gateway]]:
    made: list[Gateway] = []
    yield made
    for gw in made:
        gw.close()


def open_gateway(made: list[Gateway], conf: Path, data: Path) -> Gateway:
    gw = Gateway(conf, data)
    made.append(gw)
    return gw


def test_new_messages_are_taken_processed_and_marked_seen(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    uids = [imap_account.append(mail(n, tag)) for n in (1, 2)]
    gw = open_gateway(gateway_factory, write_config(tmp_path, imap_account), tmp_path / "data")

    result = gw.poll()
    assert (result.taken, result.recognised, result.error) == (2, 0, None)
    assert gw.pipeline.drain() == 2
    records = gw.pipeline.store.list_interactions()
    assert len(records) == 2
    assert {r.channel for r in records} == {"email"}
    assert {r.sender.get("email") for r in records} == {"buyer@demo-partner.test"}
    flags = imap_account.flags()
    assert all("\\Seen" in flags[u] for u in uids)
    raw = gw.pipeline.store.get_raw(gw.poller.envelope_id("INBOX", imap_account.uidvalidity(), uids[0]))
    assert raw is not None
    assert raw.transport["imap_folder"] == "INBOX"
    assert raw.transport["imap_uid"] == str(uids[0])
    assert raw.transport["message_id"] == f"<order-1-{tag}@demo-partner.test>"
    assert raw.transport["imap_user"] == imap_account.user

    # Nothing new: the next poll takes nothing; a new message is taken alone.
    assert gw.poll().taken == 0
    imap_account.append(mail(3, tag))
    assert gw.poll().taken == 1
    assert gw.raws() == 3
    status = gw.adapter.status()["orders"]
    assert (status.taken, status.polls, status.failures, status.last_error) == (3, 3, 0, None)
    assert status.last_success is not None


def test_moved_to_the_processed_folder_which_is_created_when_missing(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    for n in (1, 2):
        imap_account.append(mail(n, tag))
    assert "Processed" not in imap_account.folders()
    conf = write_config(tmp_path, imap_account, 'after = "move:Processed"\n')
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")

    assert gw.poll().taken == 2
    assert imap_account.flags("INBOX") == {}
    assert len(imap_account.flags("Processed")) == 2
    assert gw.pipeline.drain() == 2
    assert gw.pipeline.store.counts()["interactions"] == 2
    assert gw.poll().taken == 0


def test_move_falls_back_to_copy_delete_expunge_without_move(
    imap_account: ImapAccount, tmp_path: Path, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    uid = imap_account.append(mail(1, tag))
    keep = imap_account.append(mail(2, tag))
    imap_account.create("Done")
    gw = open_gateway(gateway_factory, write_config(tmp_path, imap_account), tmp_path / "data")
    conn = gw.poller._connect()
    try:
        assert "MOVE" in gw.poller._caps  # Dovecot has it; the fallback is forced here
        conn.select(encode_folder("INBOX"))
        gw.poller.move(conn, uid, "Done", use_move=False)
    finally:
        conn.logout()
    assert set(imap_account.flags("INBOX")) == {keep}  # only that UID was expunged
    assert len(imap_account.flags("Done")) == 1


def test_seen_messages_are_left_alone_unless_configured(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    imap_account.append(mail(1, tag), seen=True)
    unseen = imap_account.append(mail(2, tag))
    gw = open_gateway(gateway_factory, write_config(tmp_path, imap_account), tmp_path / "data")
    assert gw.poll().taken == 1
    assert gw.raws() == 1
    assert "\\Seen" in imap_account.flags()[unseen]

    conf = write_config(tmp_path / "b", imap_account, "include_seen = true\n")
    other = open_gateway(gateway_factory, conf, tmp_path / "data-b")
    assert other.poll().taken == 2


def test_crash_between_accept_and_flag_takes_the_message_once(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    first = imap_account.append(mail(1, tag))
    second = imap_account.append(mail(2, tag))
    conf = write_config(tmp_path, imap_account)
    data = tmp_path / "data"
    # A real process that dies (os._exit: no clean-up at all) right after accept returned.
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from adapters.imap import ImapAdapter
        from gateway.config import load_config
        from gateway.pipeline import Pipeline

        config, _ = load_config(Path(sys.argv[1]))
        pipe = Pipeline.open(config, Path(sys.argv[2]))
        poller = ImapAdapter(config, holder={HOLDER!r}).pollers(pipe.accept)["orders"]
        poller.after_accept = lambda raw: os._exit(17)
        poller.poll(pipe.accept)
        os._exit(1)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(conf), str(data)],
        cwd=REPO,
        env={**os.environ, PASSWORD_ENV: password},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 17, proc.stderr
    assert "\\Seen" not in imap_account.flags()[first]  # accepted, never flagged

    gw = open_gateway(gateway_factory, conf, data)
    assert gw.raws() == 1
    result = gw.poll()
    assert (result.recognised, result.taken) == (1, 1)
    assert gw.raws() == 2  # no second raw message for the first one
    assert gw.pipeline.drain() == 2
    assert gw.pipeline.store.counts()["interactions"] == 2
    flags = imap_account.flags()
    assert "\\Seen" in flags[first]
    assert "\\Seen" in flags[second]
    assert any(e.event == "imap_recovered" for e in gw.pipeline.store.list_audit())


def test_uidvalidity_change_rescans_without_doubles(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    imap_account.create("Orders")
    for n in (1, 2):
        imap_account.append(mail(n, tag), "Orders")
    before = imap_account.uidvalidity("Orders")
    conf = write_config(tmp_path, imap_account, 'folders = ["Orders"]\n')
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")
    assert gw.poll().taken == 2
    assert gw.poller.load_state("Orders") == (before, 2)

    # The folder is rebuilt (a restore, a server migration): every UID is new, the
    # old messages are unseen again, and one new message is among them.
    imap_account.delete("Orders")
    imap_account.create("Orders")
    if imap_account.uidvalidity("Orders") == before:  # pragma: no cover - same second
        time.sleep(1.1)
        imap_account.delete("Orders")
        imap_account.create("Orders")
    after = imap_account.uidvalidity("Orders")
    assert after != before
    for n in (1, 2, 3):
        imap_account.append(mail(n, tag), "Orders")

    result = gw.poll()
    assert (result.taken, result.recognised) == (1, 2)
    assert gw.raws() == 3
    assert gw.pipeline.drain() == 3
    assert gw.pipeline.store.counts()["interactions"] == 3
    assert all("\\Seen" in f for f in imap_account.flags("Orders").values())
    assert gw.poller.load_state("Orders") == (after, 3)
    assert any(e.event == "imap_uidvalidity" for e in gw.pipeline.store.list_audit())


def test_wrong_password_is_recorded_and_backed_off(
    tmp_path: Path,
    imap_account: ImapAccount,
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    gateway_factory: list[Gateway],
) -> None:
    wrong = "wrong-" + secrets.token_hex(6)
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    imap_account.append(mail(1, tag))
    gw = open_gateway(gateway_factory, write_config(tmp_path, imap_account), tmp_path / "data")
    with caplog.at_level(logging.INFO):
        result = gw.poll(force=False)
    assert result.taken == 0
    assert result.error is not None
    assert "login" in result.error
    assert "AUTHENTICATIONFAILED" in result.error or "uthentication" in result.error
    status = gw.adapter.status()["orders"]
    assert status.failures == 1
    assert status.last_error == result.error
    assert status.next_attempt is not None
    # backed off: the scheduled poll does not even try until next_attempt
    skipped = gw.poll(force=False)
    assert skipped.skipped is not None
    assert skipped.skipped.startswith("backing off")
    assert gw.adapter.status()["orders"].failures == 1
    # a forced poll fails again and the back-off doubles
    first_wait = status.next_attempt
    gw.poll(force=True)
    status = gw.adapter.status()["orders"]
    assert status.failures == 2
    assert status.next_attempt is not None
    assert status.next_attempt > first_wait
    assert wrong not in caplog.text
    assert any(e.event == "imap_error" for e in gw.pipeline.store.list_audit())
    assert gw.raws() == 0
    assert "\\Seen" not in next(iter(imap_account.flags().values()))

    # fixed: the next poll works and clears the error
    monkeypatch.setenv(PASSWORD_ENV, imap_account.password)
    assert gw.poll(force=True).taken == 1
    status = gw.adapter.status()["orders"]
    assert (status.failures, status.last_error, status.next_attempt) == (0, None, None)


def test_untrusted_server_certificate_is_refused(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    imap_account.append(mail(1, tag))
    conf = write_config(tmp_path, imap_account)
    text = (
        (conf / "gateway.toml")
        .read_text()
        .replace(str(imap_account.server.ca), str(imap_account.server.other_ca))
    )
    (conf / "gateway.toml").write_text(text)
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")
    result = gw.poll()
    assert result.error is not None
    assert "certificate" in result.error
    assert gw.raws() == 0
    assert gw.adapter.status()["orders"].last_error == result.error


def test_starttls(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    imap_account.append(mail(1, tag))
    extra = f'tls = "starttls"\nport = {imap_account.server.port_starttls}\n'
    conf = write_config(tmp_path, imap_account)
    text = (conf / "gateway.toml").read_text()
    text = text.replace('tls = "implicit"\n', "").replace(f"port = {imap_account.server.port_tls}\n", extra)
    (conf / "gateway.toml").write_text(text)
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")
    assert gw.poller.mailbox.tls == "starttls"
    result = gw.poll()
    assert (result.taken, result.error) == (1, None)


def test_only_the_lease_holder_polls(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    imap_account.append(mail(1, tag))
    gw = open_gateway(gateway_factory, write_config(tmp_path, imap_account), tmp_path / "data")
    assert gw.pipeline.store.try_lease("imap:orders", "another-node", 60)
    result = gw.poll()
    assert result.skipped == "another node is polling this mailbox"
    assert gw.raws() == 0
    assert gw.adapter.status()["orders"].lease_busy == 1
    gw.pipeline.store.release_lease("imap:orders", "another-node")
    assert gw.poll().taken == 1
    # released after the poll: another node may take it now
    assert gw.pipeline.store.try_lease("imap:orders", "another-node", 60)


def test_oversized_message_is_left_in_the_mailbox(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    big = imap_account.append(mail(1, tag, size=20_000))
    small = imap_account.append(mail(2, tag))
    conf = write_config(tmp_path, imap_account, limits="max_message_bytes = 10000")
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")
    result = gw.poll()
    assert (result.taken, result.refused) == (1, 1)
    flags = imap_account.flags()
    assert "\\Seen" not in flags[big]
    assert "\\Seen" in flags[small]
    assert any(e.event == "imap_refused" for e in gw.pipeline.store.list_audit())


def test_scheduler_polls_on_its_own(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str, gateway_factory: list[Gateway]
) -> None:
    conf = write_config(tmp_path, imap_account, "interval = 0.5\n")
    gw = open_gateway(gateway_factory, conf, tmp_path / "data")
    gw.adapter.start(gw.pipeline.accept)
    try:
        uid = imap_account.append(mail(1, tag))
        deadline = time.monotonic() + 20
        while "\\Seen" not in imap_account.flags().get(uid, set()):
            assert time.monotonic() < deadline, gw.adapter.status()
            time.sleep(0.2)
    finally:
        gw.adapter.stop()
    assert gw.raws() == 1
    assert gw.adapter.status()["orders"].polls >= 1


def test_gateway_run_once_polls_configured_mailboxes(
    tmp_path: Path, imap_account: ImapAccount, password: str, tag: str
) -> None:
    imap_account.append(mail(1, tag))
    conf = write_config(tmp_path, imap_account)
    # `run --once` also reads the drop folder, which only `start` creates
    (tmp_path / "data" / "incoming").mkdir(parents=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--config",
            str(conf),
            "--data",
            str(tmp_path / "data"),
            "run",
            "--once",
        ],
        cwd=REPO,
        env={**os.environ, PASSWORD_ENV: password},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "processed 1 message(s)" in proc.stdout
    assert password not in proc.stdout + proc.stderr
    assert all("\\Seen" in f for f in imap_account.flags().values())
