"""The SMTP server against an independent client (swaks), and started by `gateway run`."""

from __future__ import annotations

import email.policy
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

from tests.conftest import REPO, need_peer
from tests.fixtures_smtp import SmtpGateway
from tests.helpers import copy_config, x12_850


def swaks(gw: SmtpGateway, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("swaks")
    if exe is None:
        need_peer("swaks")
        raise AssertionError("unreachable")
    return subprocess.run(
        [exe, "--server", "127.0.0.1", "--port", str(gw.port), "--helo", "swaks.demo-partner.test", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_swaks_sends_an_order_with_an_attachment(smtp_gateway: SmtpGateway, tmp_path: Path) -> None:
    po = tmp_path / "PO-77.edi"
    po.write_bytes(x12_850(icn=77, po="PO-77"))
    proc = swaks(
        smtp_gateway,
        "--from",
        "orders@demo-partner.test",
        "--to",
        "orders@gateway.test",
        "--header",
        "Subject: Order PO-77",
        "--header",
        "Message-ID: <po-77@demo-partner.test>",
        "--body",
        "Our order is attached.",
        "--attach-type",
        "application/edi-x12",
        "--attach-name",
        "PO-77.edi",
        "--attach",
        f"@{po}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "<-  250 2.0.0 OK" in proc.stdout
    assert smtp_gateway.drain() == 1
    records = smtp_gateway.pipeline.store.list_interactions()
    mail = next(r for r in records if r.document.standard == "EMAIL")
    assert mail.partner is not None
    assert mail.partner.id == "demo"
    assert [a.filename for a in mail.attachments] == ["PO-77.edi"]
    order = next(r for r in records if r.kind == "order")
    assert order.references["po_number"] == "PO-77"


def test_swaks_relay_attempt_is_refused(smtp_gateway: SmtpGateway) -> None:
    proc = swaks(smtp_gateway, "--from", "spammer@elsewhere.example", "--to", "victim@elsewhere.example")
    assert proc.returncode != 0
    assert "<** 550 5.7.1" in proc.stdout
    assert smtp_gateway.pipeline.store.counts()["received"] == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gateway_run_starts_the_smtp_server(tmp_path: Path) -> None:
    config = copy_config(tmp_path / "config")
    data = tmp_path / "data"
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GATEWAY_CONFIG": str(config), "GATEWAY_DATA": str(data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--no-as2", "--no-sftp", "--smtp", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = smtplib.SMTP("127.0.0.1", port, timeout=10)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the SMTP server did not start"
                time.sleep(0.2)
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = "orders@demo-partner.test"
        msg["To"] = "orders@gateway.test"
        msg["Subject"] = "Order by SMTP"
        msg["Message-ID"] = "<run-1@demo-partner.test>"
        msg.set_content("Order attached.")
        msg.add_attachment(
            x12_850(icn=5, po="PO-RUN"), maintype="application", subtype="edi-x12", filename="po.edi"
        )
        with conn:
            conn.send_message(msg)
        found: list[str] = []
        while time.monotonic() < deadline and not found:
            out = subprocess.run(
                [sys.executable, "-m", "gateway", "interactions", "--json"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
            found = [line for line in out.splitlines() if '"PO-RUN"' in line]
            time.sleep(0.3)
        assert found, "the order sent by SMTP was not processed"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"started smtp: smtp on 127.0.0.1:{port}" in out
    assert "smtp: no listener" not in out
