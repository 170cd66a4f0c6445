"""Understanding e-mail: charsets, encodings, MIME shapes, replies, duplicates, PDF
text and attachments that fail to parse -- with messages built here."""

from __future__ import annotations

import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.parsers.emaildoc import EmailParser, conversation_root
from gateway.pipeline import Pipeline, ProcessResult
from gateway.store import RawState
from tests.helpers import copy_config, x12_850

SMTP = email.policy.SMTP


@pytest.fixture
def pipe(tmp_path: Path) -> Pipeline:
    config, _ = load_config(copy_config(tmp_path / "config"))
    pipeline = Pipeline.open(config, tmp_path / "data")
    yield pipeline  # type: ignore[misc]
    pipeline.close()


def ingest(pipe: Pipeline, data: bytes) -> ProcessResult:
    raw = pipe.accept(Envelope(raw=data, channel=Channel.EMAIL))
    claimed = pipe.store.claim_id(raw.id, "t")
    assert claimed is not None
    return pipe.process(claimed)


def raw_mail(headers: str, body: bytes) -> bytes:
    return headers.replace("\n", "\r\n").encode("ascii") + b"\r\n" + body


@pytest.mark.parametrize(
    ("charset", "text"),
    [
        ("euc-kr", "주문서를 보내드립니다. 수량 20개"),
        ("shift_jis", "注文書を送ります。数量は二十個です。"),
        ("iso-2022-jp", "注文書を送ります。数量は二十個です。"),
        ("iso-8859-2", "Zamówienie: łożyska, ilość 20"),
        ("windows-1251", "Заказ: подшипники, количество 20"),
        ("windows-1252", "Bestellung: Lager für Öl – 20 Stück"),
    ],
)
@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
def test_charsets_and_transfer_encodings(charset: str, text: str, cte: str) -> None:
    if cte == "8bit" and charset == "iso-2022-jp":
        cte = "7bit"  # ISO-2022-JP is a 7-bit encoding
    msg = EmailMessage()
    msg["From"] = "a@sender.example"
    msg["To"] = "orders@gateway.test"
    msg["Subject"] = text  # RFC 2047 encoded by the policy
    msg.set_content(text, charset=charset, cte=cte)
    data = msg.as_bytes(policy=SMTP)
    (unit,) = list(EmailParser().parse(data))
    assert unit.tree.findtext("Subject") == text
    assert text in (unit.tree.findtext("Body") or "")


def test_rfc2047_and_rfc2231_names_nested_forward_and_html_only() -> None:
    inner = EmailMessage()
    inner["From"] = "buyer@partner.example"
    inner["Subject"] = "Bestellung"
    inner.set_content("<html><body><p>Bitte liefern:</p><p>20 Stück</p></body></html>", subtype="html")
    inner.add_attachment(
        b"po_number,line,sku,quantity\nPO-9,1,AB-1,20\n",
        maintype="text",
        subtype="csv",
        filename="Bestellübersicht.csv",  # RFC 2231 filename*=utf-8''...
    )
    outer = EmailMessage()
    outer["From"] = "=?utf-8?q?J=C3=BCrgen?= <j@fwd.example>"
    outer["To"] = "orders@gateway.test"
    outer["Subject"] = "=?iso-8859-1?q?WG:_Bestellung_f=FCr_Juni?="
    outer["Message-ID"] = "<fwd-1@fwd.example>"
    outer.set_content("see below")
    outer.add_attachment(inner)  # message/rfc822
    (unit,) = list(EmailParser().parse(outer.as_bytes(policy=SMTP)))
    tree = unit.tree
    assert tree.findtext("Subject") == "WG: Bestellung für Juni"
    assert tree.find("From").get("name") == "Jürgen"  # type: ignore[union-attr]
    names = [a.get("filename") for a in tree.iter("Attachment")]
    assert "Bestellübersicht.csv" in names
    assert any(a.get("forwarded") == "true" for a in tree.iter("Attachment"))
    (child,) = unit.children  # the forwarded CSV order
    assert child.standard == "CSV"
    # HTML-only message: body converted to text
    (only,) = list(EmailParser().parse(inner.as_bytes(policy=SMTP)))
    body = only.tree.find("Body")
    assert body is not None
    assert body.get("media_type") == "text/html"
    assert "Bitte liefern:" in (body.text or "")
    assert "<p>" not in (body.text or "")


def test_tnef_is_recognised() -> None:
    msg = EmailMessage()
    msg["From"] = "a@sender.example"
    msg.set_content("see attached")
    msg.add_attachment(
        b"\x78\x9f\x3e\x22" + bytes(40), maintype="application", subtype="ms-tnef", filename="winmail.dat"
    )
    (unit,) = list(EmailParser().parse(msg.as_bytes(policy=SMTP)))
    (att,) = [a for a in unit.tree.iter("Attachment")]
    assert att.get("tnef") == "true"


def test_conversation_root() -> None:
    assert conversation_root("c@x", "b@x", "<a@x> <b@x>") == "a@x"
    assert conversation_root("c@x", "b@x", "") == "b@x"
    assert conversation_root("c@x", "", "") == "c@x"


def mail(message_id: str, *, subject: str = "Order", in_reply_to: str = "", references: str = "") -> bytes:
    headers = f"From: Buyer <buyer@demo-partner.test>\nTo: orders@gateway.test\nSubject: {subject}\nMessage-ID: <{message_id}>\n"
    if in_reply_to:
        headers += f"In-Reply-To: <{in_reply_to}>\n"
    if references:
        headers += f"References: {references}\n"
    headers += "Date: Fri, 27 Nov 2026 09:41:00 +0000\nContent-Type: text/plain; charset=utf-8\n"
    return raw_mail(headers, f"{subject}\r\n".encode())


def test_replies_share_the_conversation_of_what_they_answer(pipe: Pipeline) -> None:
    first = ingest(pipe, mail("root@demo-partner.test", subject="Order 1")).records[0]
    reply = ingest(
        pipe, mail("r1@gateway.test", subject="Re: Order 1", in_reply_to="root@demo-partner.test")
    ).records[0]
    second = ingest(
        pipe,
        mail(
            "r2@demo-partner.test",
            subject="Re: Re: Order 1",
            in_reply_to="r1@gateway.test",
            references="<root@demo-partner.test> <r1@gateway.test>",
        ),
    ).records[0]
    other = ingest(pipe, mail("other@demo-partner.test", subject="Order 2")).records[0]
    assert first.references["conversation"] == "root@demo-partner.test"
    assert reply.references["in_reply_to"] == "root@demo-partner.test"
    assert {r.references["conversation"] for r in (first, reply, second)} == {"root@demo-partner.test"}
    assert other.references["conversation"] == "other@demo-partner.test"
    assert all(r.partner is not None and r.partner.id == "demo" for r in (first, reply, second))


def test_same_message_id_same_sender_twice_is_one_interaction(pipe: Pipeline) -> None:
    first = ingest(pipe, mail("dup@demo-partner.test"))
    # resent: other bytes (a relay added a header), same Message-ID and sender
    again = ingest(pipe, b"Received: from relay.example\r\n" + mail("dup@demo-partner.test"))
    assert first.state == RawState.STORED
    assert len(first.records) == 1
    assert again.records == ()
    assert again.duplicate_records == (first.records[0].id,)
    assert pipe.store.counts()["interactions"] == 1


def _with_attachment(data: bytes, filename: str, maintype: str, subtype: str, message_id: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "buyer@demo-partner.test"
    msg["To"] = "orders@gateway.test"
    msg["Subject"] = "Our order"
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content("Order attached.")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=SMTP)


def test_edi_attachment_becomes_its_own_linked_interaction(pipe: Pipeline) -> None:
    result = ingest(pipe, _with_attachment(x12_850(po="PO-77"), "po.edi", "application", "edi-x12", "e1@x"))
    message, order = result.records
    assert order.kind.value == "order"
    assert order.references["po_number"] == "PO-77"
    assert order.references["in_message"] == message.id
    assert message.attachments[0].filename == "po.edi"


def test_broken_order_attachment_is_surfaced_not_dropped(pipe: Pipeline) -> None:
    result = ingest(pipe, _with_attachment(b"this is no EDI", "po.edi", "application", "edi-x12", "e2@x"))
    assert result.state == RawState.STORED
    (message,) = result.records
    assert "po.edi: attachment po.edi is not EDI" in message.references["attachment_errors"]
    events = pipe.store.list_audit(subject=result.raw.id)
    (event,) = [e for e in events if e.event == "attachment_error"]
    assert "po.edi" in event.detail


def test_pdf_attachment_text_layer_is_in_the_record(pipe: Pipeline, corpus: Path) -> None:
    # the eFax sample's PDF, sent by an ordinary sender: a message, not a fax
    src = (corpus / "fax" / "efax_pdf_two_pages.eml").read_bytes()
    pdf_part = email.message_from_bytes(src, policy=email.policy.default).get_payload()[1]  # type: ignore[index]
    pdf = pdf_part.get_payload(decode=True)
    result = ingest(pipe, _with_attachment(pdf, "PO-FX-3001.pdf", "application", "pdf", "e3@x"))
    (message,) = result.records
    assert message.kind.value == "message"
    assert message.body is not None
    assert message.body.startswith("Order attached.")
    assert "PO-FX-3001.pdf" in message.body
    assert "PURCHASE ORDER  PO-FX-3001" in message.body
