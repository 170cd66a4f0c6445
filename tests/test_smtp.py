"""The SMTP server in real conversations with smtplib (a real client, no mocks)."""

from __future__ import annotations

import email.policy
import hashlib
import shutil
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.archive import Archive
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.fixtures_smtp import SmtpGateway, StartSmtp, set_demo_senders, set_smtp
from tests.helpers import copy_config, x12_850

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def order_mail(
    *,
    sender: str = "orders@demo-partner.test",
    to: str = "orders@gateway.test",
    message_id: str = "<po-1@demo-partner.test>",
    po: str = "PO-1",
    icn: int = 1,
    body_size: int = 0,
) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = f"Demo Orders <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"Purchase order {po}"
    msg["Message-ID"] = message_id
    msg["Date"] = "Fri, 05 Jan 2024 12:00:00 +0000"
    msg.set_content(f"Please find our order {po} attached.\n" + "x" * body_size)
    msg.add_attachment(
        x12_850(icn=icn, po=po), maintype="application", subtype="edi-x12", filename=f"{po}.edi"
    )
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename=f"{po}.pdf")
    return msg


def client(gw: SmtpGateway) -> smtplib.SMTP:
    return smtplib.SMTP("127.0.0.1", gw.port, timeout=30)


def send(gw: SmtpGateway, msg: EmailMessage, *, sender: str | None = None, to: str | None = None) -> None:
    with client(gw) as c:
        c.send_message(msg, from_addr=sender, to_addrs=[to] if to else None)


def test_order_with_attachments_is_accepted_stored_and_processed(smtp_gateway: SmtpGateway) -> None:
    msg = order_mail()
    wire = msg.as_bytes(policy=email.policy.SMTP)
    with client(smtp_gateway) as c:
        code, _ = c.ehlo("client.demo-partner.test")
        assert code == 250
        c.mail("orders@demo-partner.test")
        c.rcpt("orders@gateway.test")
        code, reply = c.data(wire)
    assert code == 250, reply
    assert reply.startswith(b"2.0.0")
    # 250 means durable: the raw message is in the inbox before anything is processed
    (raw,) = smtp_gateway.pipeline.store.claim("peek", limit=5)
    smtp_gateway.pipeline.store.recover(older_than=None)
    assert raw.channel == "email"
    assert raw.transport["mail_from"] == "orders@demo-partner.test"
    assert raw.transport["rcpt_to"] == "orders@gateway.test"
    assert raw.transport["helo"] == "client.demo-partner.test"
    assert raw.transport["tls"] == "false"
    assert raw.sender["email"] == "orders@demo-partner.test"
    stored = Archive(smtp_gateway.data_dir / "archive").get(raw.sha256)
    trace = stored.partition(b"\r\n\t")[0]
    assert trace.startswith(b"Received: from client.demo-partner.test ([127.0.0.1])")
    assert stored.endswith(wire)  # exactly the bytes received, after the Received: header
    assert stored[: len(stored) - len(wire)].count(b"\r\n") == 3

    assert smtp_gateway.drain() == 1
    records = smtp_gateway.pipeline.store.list_interactions()
    mail = next(r for r in records if r.document.standard == "EMAIL")
    assert mail.channel == "email"
    assert mail.partner is not None
    assert mail.partner.id == "demo"
    assert mail.subject == "Purchase order PO-1"
    names = {a.filename: a for a in mail.attachments}
    assert set(names) == {"PO-1.edi", "PO-1.pdf"}
    assert names["PO-1.pdf"].sha256 == hashlib.sha256(PDF).hexdigest()
    assert names["PO-1.edi"].size == len(x12_850(icn=1, po="PO-1"))
    order = next(r for r in records if r.kind == "order")
    assert order.references["po_number"] == "PO-1"


def test_relay_attempt_is_refused(smtp_gateway: SmtpGateway) -> None:
    with client(smtp_gateway) as c:
        c.ehlo()
        c.mail("someone@elsewhere.example")
        code, reply = c.rcpt("victim@elsewhere.example")
        assert (code, reply[:5]) == (550, b"5.7.1")
        code, reply = c.rcpt("orders@gateway.test.evil.example")
        assert (code, reply[:5]) == (550, b"5.7.1")
        code, _ = c.rcpt("ORDERS@Gateway.Test")  # addresses compare case-insensitively
        assert code == 250
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(smtp_gateway, order_mail(to="victim@elsewhere.example"))
    assert info.value.recipients["victim@elsewhere.example"][0] == 550
    assert smtp_gateway.pipeline.store.counts()["received"] == 0


def test_domain_entries_accept_any_address_in_the_domain(start_smtp: StartSmtp) -> None:
    gw = start_smtp(accept='["@inbound.gateway.test"]')
    with client(gw) as c:
        c.ehlo()
        c.mail("a@demo-partner.test")
        assert c.rcpt("anything@inbound.gateway.test")[0] == 250
        assert c.rcpt("orders@gateway.test")[0] == 550
        assert c.rcpt("x@sub.inbound.gateway.test")[0] == 550


def test_size_is_advertised_and_enforced(start_smtp: StartSmtp) -> None:
    gw = start_smtp(max_message_bytes="20000")
    with client(gw) as c:
        c.ehlo()
        assert c.has_extn("size")
        assert c.esmtp_features["size"] == "20000"
        # declared too large in MAIL FROM: refused before any data is sent
        code, reply = c.mail("orders@demo-partner.test", options=["SIZE=20001"])
        assert (code, reply[:5]) == (552, b"5.3.4")
        # not declared, sent anyway: refused after the data
        c.rset()
        c.mail("orders@demo-partner.test")
        c.rcpt("orders@gateway.test")
        code, reply = c.data(order_mail(body_size=30000).as_bytes(policy=email.policy.SMTP))
        assert (code, reply[:5]) == (552, b"5.3.4")
        # the session goes on: a small message is taken
        c.mail("orders@demo-partner.test")
        c.rcpt("orders@gateway.test")
        code, _ = c.data(order_mail().as_bytes(policy=email.policy.SMTP))
        assert code == 250
    assert gw.pipeline.store.counts()["received"] == 1


@pytest.mark.parametrize("address", ["not-an-address", "a@@b.test", "a b@demo-partner.test", "a@-bad-.test"])
def test_malformed_mail_from_is_refused(smtp_gateway: SmtpGateway, address: str) -> None:
    with client(smtp_gateway) as c:
        c.ehlo()
        code, reply = c.docmd(f"MAIL FROM:<{address}>")
        assert (code, reply[:5]) == (501, b"5.1.7"), reply


@pytest.mark.parametrize("address", ["not-an-address", "a@@gateway.test", "orders@gateway..test"])
def test_malformed_rcpt_to_is_refused(smtp_gateway: SmtpGateway, address: str) -> None:
    with client(smtp_gateway) as c:
        c.ehlo()
        assert c.mail("orders@demo-partner.test")[0] == 250
        code, reply = c.docmd(f"RCPT TO:<{address}>")
        assert (code, reply[:5]) == (553, b"5.1.3"), reply


def test_null_sender_is_accepted_for_bounces(smtp_gateway: SmtpGateway) -> None:
    with client(smtp_gateway) as c:
        c.ehlo()
        assert c.docmd("MAIL FROM:<>")[0] == 250
        assert c.rcpt("orders@gateway.test")[0] == 250
        assert c.data(order_mail().as_bytes(policy=email.policy.SMTP))[0] == 250
    (raw,) = smtp_gateway.pipeline.store.claim("peek", limit=5)
    assert raw.transport["mail_from"] == ""
    assert "email" not in raw.sender


def test_bad_from_header_is_refused_after_data(smtp_gateway: SmtpGateway) -> None:
    msg = order_mail()
    del msg["From"]
    msg["From"] = "Broken <not an address>"
    with client(smtp_gateway) as c:
        c.ehlo()
        c.mail("orders@demo-partner.test")
        c.rcpt("orders@gateway.test")
        code, reply = c.data(msg.as_bytes(policy=email.policy.SMTP))
    assert (code, reply[:5]) == (550, b"5.1.7")
    assert smtp_gateway.pipeline.store.counts()["received"] == 0


def test_too_many_recipients(start_smtp: StartSmtp) -> None:
    gw = start_smtp(max_recipients="2")
    with client(gw) as c:
        c.ehlo()
        c.mail("orders@demo-partner.test")
        assert c.rcpt("orders@gateway.test")[0] == 250
        assert c.rcpt("fax@gateway.test")[0] == 250
        code, reply = c.rcpt("orders@gateway.test")
        assert (code, reply[:5]) == (452, b"4.5.3")


def test_store_failure_gives_451_and_the_resend_is_taken_once(smtp_gateway: SmtpGateway) -> None:
    archive = smtp_gateway.data_dir / "archive"
    if archive.exists():
        shutil.rmtree(archive)
    archive.write_text("not a directory")  # the archive cannot be written
    msg = order_mail(message_id="<retry-1@demo-partner.test>")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(smtp_gateway, msg)
    assert info.value.smtp_code == 451
    assert info.value.smtp_error.startswith(b"4.3.0")
    assert smtp_gateway.pipeline.store.counts()["received"] == 0
    # fixed: the client's retry is accepted and processed, once
    archive.unlink()
    send(smtp_gateway, msg)
    assert smtp_gateway.drain() == 1
    mails = [r for r in smtp_gateway.pipeline.store.list_interactions() if r.document.standard == "EMAIL"]
    assert len(mails) == 1


def test_the_same_message_twice_is_one_interaction(smtp_gateway: SmtpGateway) -> None:
    msg = order_mail(message_id="<twice@demo-partner.test>")
    send(smtp_gateway, msg)
    send(smtp_gateway, msg)  # a resend: another Received: header, the same Message-ID
    assert smtp_gateway.drain() == 2
    records = smtp_gateway.pipeline.store.list_interactions()
    assert len([r for r in records if r.document.standard == "EMAIL"]) == 1
    assert len([r for r in records if r.kind == "order"]) == 1


def test_starttls(start_smtp: StartSmtp, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    gw = start_smtp(tls_certificate=f'"{cert}"', tls_key=f'"{key}"', require_starttls="true")
    context = ssl.create_default_context(cafile=str(cert))
    with client(gw) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        code, reply = c.docmd("MAIL FROM:<orders@demo-partner.test>")
        assert (code, reply[:5]) == (530, b"5.7.0")  # STARTTLS first
        c.starttls(context=context)
        c.ehlo()
        c.send_message(order_mail())
    (raw,) = gw.pipeline.store.claim("peek", limit=5)
    assert raw.transport["tls"] == "true"
    assert b" with ESMTPS id " in Archive(gw.data_dir / "archive").get(raw.sha256)[:300]


def test_auth_required(
    start_smtp: StartSmtp, tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tls_files
    monkeypatch.setenv("SMTP_PW_PARTNER1", "s3cret pass")
    gw = start_smtp(
        tls_certificate=f'"{cert}"',
        tls_key=f'"{key}"',
        auth='{ users = { "partner1" = "env:SMTP_PW_PARTNER1" } }',
    )
    context = ssl.create_default_context(cafile=str(cert))
    with client(gw) as c:
        c.ehlo()
        assert not c.has_extn("auth")  # never offered in clear text
        code, reply = c.docmd("MAIL FROM:<orders@demo-partner.test>")
        assert (code, reply[:5]) == (530, b"5.7.0")
        c.starttls(context=context)
        c.ehlo()
        assert set(c.esmtp_features["auth"].split()) == {"LOGIN", "PLAIN"}
        code, reply = c.docmd("MAIL FROM:<orders@demo-partner.test>")
        assert (code, reply[:5]) == (530, b"5.7.0")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("partner1", "wrong")
        c.login("partner1", "s3cret pass")
        c.send_message(order_mail())
    (raw,) = gw.pipeline.store.claim("peek", limit=5)
    assert raw.transport["auth_user"] == "partner1"
    assert b" with ESMTPSA id " in Archive(gw.data_dir / "archive").get(raw.sha256)[:300]


def test_sender_rules_narrow_who_counts_as_the_partner(start_smtp: StartSmtp) -> None:
    gw = start_smtp(demo_senders='["orders@demo-partner.test"]')  # only orders@ may send as demo
    with client(gw) as c:
        c.ehlo()
        code, reply = c.mail("ceo@demo-partner.test")
        assert (code, reply[:5]) == (550, b"5.7.1")
        assert c.mail("someone@other.example")[0] == 250  # not the partner's: unaffected
    # header From claiming the partner from another address
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(gw, order_mail(sender="ceo@demo-partner.test"), sender="orders@demo-partner.test")
    assert (info.value.smtp_code, info.value.smtp_error[:5]) == (550, b"5.7.1")
    send(gw, order_mail())
    assert gw.pipeline.store.counts()["received"] == 1


def test_sender_rules_and_smtp_settings_are_validated_at_load(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    set_smtp(
        config_dir,
        accept='["orders@gateway.test", "not an address", "@"]',
        auth='{ users = { "partner1" = "inline-password" } }',
        require_starttls="true",
        max_recipients="0",
    )
    set_demo_senders(config_dir, '["x@elsewhere.example"]')
    with pytest.raises(ConfigError) as info:
        load_config(config_dir)
    text = str(info.value)
    assert "smtp.accept" in text
    assert "'not an address'" in text
    assert "'@'" in text
    assert "secrets are never stored inline" in text
    assert "smtp.require_starttls" in text
    assert "smtp.auth" in text
    assert "smtp.max_recipients" in text
    assert "email.senders" in text
    assert "x@elsewhere.example" in text
