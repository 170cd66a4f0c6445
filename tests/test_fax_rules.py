"""Fax-to-mail provider rules: shipped rules and their examples, loading problems,
E.164 normalisation, and what is (not) a fax."""

from __future__ import annotations

import email.policy
import tempfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.errors import Problem
from gateway.fax_rules import FaxDocument, load_rules, match_notice, to_e164
from gateway.parsers.detect import ParseOptions, parse_document
from gateway.pipeline import Pipeline
from gateway.store import RawState
from tests.conftest import REPO
from tests.helpers import copy_config

RULES_DIR = REPO / "config" / "fax-providers"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
TIFF = bytes.fromhex("49492a00080000000000" + "00000000")  # one empty IFD


def shipped() -> list[Path]:
    return sorted(RULES_DIR.glob("*.toml"))


def test_shipped_rules_load_cleanly() -> None:
    problems: list[Problem] = []
    rules = load_rules(RULES_DIR, problems)
    assert problems == []
    assert {r.name for r in rules} >= {
        "efax",
        "hylafax",
        "ringcentral",
        "interfax",
        "ricoh-mfp",
        "copiafacts",
    }
    for path in shipped():
        text = path.read_text()
        assert text.startswith("#"), f"{path.name}: document the rule in a comment"
        assert "http" in text, f"{path.name}: cite the documented format"


@pytest.mark.parametrize("path", shipped(), ids=lambda p: p.stem)
def test_every_shipped_rule_matches_its_example(path: Path) -> None:
    problems: list[Problem] = []
    rules = load_rules(RULES_DIR, problems)
    (rule,) = [r for r in rules if r.source == path]
    example = rule.example
    assert example, f"{path.name} has no [example]"
    sender = str(example["from"]).rpartition("<")[2].rstrip(">").strip()
    attachment = str(example.get("attachment", "application/pdf"))
    doc = FaxDocument("fax", attachment, PDF if attachment == "application/pdf" else TIFF)
    found = match_notice(
        [rule],
        sender=sender,
        subject=str(example["subject"]),
        body=str(example.get("body", "")),
        documents=[doc],
    )
    assert found is not None, f"{path.name} does not match its own example"
    assert dict(found.values) == dict(example["expect"])
    # the same notice without the fax document, or from another domain, is no fax
    assert match_notice([rule], sender=sender, subject=str(example["subject"]), body="", documents=[]) is None
    assert (
        match_notice(
            [rule], sender="fax@lookalike.example", subject=str(example["subject"]), body="", documents=[doc]
        )
        is None
    )


@pytest.mark.parametrize(
    ("number", "country", "e164"),
    [
        ("(555) 555-0100", "US", "+15555550100"),
        ("555-555-0100", "US", "+15555550100"),
        ("1-212-555-0199", "US", "+12125550199"),
        ("+1 212 555 0199", "DE", "+12125550199"),
        ("011 49 40 5550199", "US", "+49405550199"),
        ("+49 40 5550199", "US", "+49405550199"),
        ("0049 40 5550199", "DE", "+49405550199"),
        ("040 5550199", "DE", "+49405550199"),
        ("031-555-0142", "KR", "+82315550142"),
        ("+82 31-555-0142", "US", "+82315550142"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("031-555-0142", "US", None),  # not a NANP number: area codes never start with 0
        ("Unknown", "US", None),
        ("12", "US", None),
        ("", "US", None),
    ],
)
def test_e164(number: str, country: str, e164: str | None) -> None:
    assert to_e164(number, country) == e164


def _write(tmp_path: Path, name: str, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rule_problems_name_file_line_field_and_reason(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "bad.toml",
        'name = "bad"\n'
        'senders = ["fax.example", "not a domain"]\n'
        "subject = 'Fax from (?P<caller>[0-9+'\n"
        "body = ['(?P<sender>\\d+) pages']\n"
        'documents = ["application/msword"]\n'
        "colour = 1\n",
    )
    _write(tmp_path, "nosender.toml", "subject = 'fax'\n")
    _write(tmp_path, "broken.toml", "subject = 'unterminated\n")
    problems: list[Problem] = []
    assert load_rules(tmp_path, problems) == ()
    text = "\n".join(str(p) for p in problems)
    assert "bad.toml:2: [senders] 'not a domain' is not an e-mail address or a domain" in text
    assert "bad.toml:3: [subject] regular expression does not compile" in text
    assert "bad.toml:4: [body] unknown group name(s) sender" in text
    assert "bad.toml:5: [documents]" in text
    assert "bad.toml:6: [colour] unknown setting" in text
    assert "nosender.toml" in text
    assert "[senders] required" in text
    assert "broken.toml: not valid TOML" in text


def test_config_check_reports_rule_problems(tmp_path: Path) -> None:
    config = copy_config(tmp_path / "config")
    _write(config / "fax-providers", "zz-bad.toml", "senders = ['x.example']\nsubject = '(?P<pages>'\n")
    toml = config / "gateway.toml"
    toml.write_text(toml.read_text().replace('default_country = "US"', 'default_country = "XX"'))
    loaded, problems = load_config(config, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "zz-bad.toml:2: [subject] regular expression does not compile" in text
    assert "[fax.default_country] 'XX' is not a country code" in text
    assert "efax" in {r.name for r in loaded.fax_rules}


def test_shipped_config_has_rules_and_default_country() -> None:
    config, problems = load_config(copy_config(Path(tempfile.mkdtemp()) / "c"))
    assert not problems
    assert config.settings.fax_default_country == "US"
    assert len(config.fax_rules) == len(shipped())


def notice(
    *, sender: str, subject: str, body: str, attachment: tuple[str, bytes] | None = ("fax.pdf", PDF)
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "fax@gateway.test"
    msg["Subject"] = subject
    msg["Message-ID"] = "<notice-1@fax.example>"
    msg["Date"] = "Fri, 27 Nov 2026 09:41:00 +0000"
    msg.set_content(body)
    if attachment is not None:
        name, data = attachment
        maintype, subtype = ("application", "pdf") if data.startswith(b"%PDF") else ("image", "tiff")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg.as_bytes(policy=email.policy.SMTP)


def _standard(data: bytes, country: str = "US") -> str:
    problems: list[Problem] = []
    rules = load_rules(RULES_DIR, problems)
    options = ParseOptions(fax_rules=rules, fax_default_country=country)
    (unit,) = list(parse_document(data, channel="email", options=options))
    return unit.standard


def test_lookalike_notices_stay_messages() -> None:
    efax_subject = "eFax from ACME - 1 page(s), caller ID: 212-555-0199"
    assert (
        _standard(notice(sender='"eFax" <message@inbound.efax.com>', subject=efax_subject, body="x")) == "FAX"
    )
    # sender domain not the provider's (a classic phishing lure)
    assert (
        _standard(notice(sender='"eFax" <message@efax-mail.example>', subject=efax_subject, body="x"))
        == "EMAIL"
    )
    assert (
        _standard(
            notice(
                sender='"RingCentral" <fax@ring-central.com>',
                subject="Incoming Fax from 302-216-1018",
                body="<html>click</html>",
            )
        )
        == "EMAIL"
    )
    # the provider's domain, but no fax document attached
    assert (
        _standard(
            notice(
                sender='"Interfax Online" <incoming@interfax.net>',
                subject="You have 1 new fax, document 000992142",
                body="Open the link",
                attachment=None,
            )
        )
        == "EMAIL"
    )
    # the provider's domain and a PDF, but not a notice (subject does not fit)
    assert _standard(notice(sender="billing@efax.com", subject="Your invoice", body="x")) == "EMAIL"


def test_fax_partner_resolved_by_fax_number_and_unnormalisable_caller_kept(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    config, _ = load_config(config_dir)
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        # the demo partner's fax is +15555550100; eFax writes the caller ID nationally
        data = notice(
            sender='"eFax" <message@inbound.efax.com>',
            subject="eFax from - 1 page(s), caller ID: (555) 555-0100",
            body="You have received a 1 page fax at 2026-11-27 09:41:07 EST.",
            attachment=("fax.tif", TIFF),
        )
        raw = pipe.accept(Envelope(raw=data, channel=Channel.EMAIL))
        claimed = pipe.store.claim_id(raw.id, "t")
        assert claimed is not None
        result = pipe.process(claimed)
        assert result.state == RawState.STORED
        (record,) = result.records
        assert record.kind.value == "fax"
        assert record.partner is not None
        assert record.partner.id == "demo"
        fax = record.to_json()["fax"]
        assert fax["caller"] == "+15555550100"
        assert fax["pages"] == 1  # read from the TIFF
        assert fax["provider"] == "efax"
        assert record.sender["fax"] == "+15555550100"
        assert record.sender["email"] == "message@inbound.efax.com"
        # stored and read back with its fax object
        again = pipe.store.get_interaction(record.id)
        assert again is not None
        assert again.to_json()["fax"]["caller"] == "+15555550100"

        # a caller ID that is no number in the default country: kept as received
        data = notice(
            sender='"eFax" <message@inbound.efax.com>',
            subject="eFax from Far Away - 2 page(s), caller ID: 031-555-0142",
            body="",
        ).replace(b"notice-1@", b"notice-2@")
        raw = pipe.accept(Envelope(raw=data, channel=Channel.EMAIL))
        claimed = pipe.store.claim_id(raw.id, "t")
        assert claimed is not None
        (record,) = pipe.process(claimed).records
        fax = record.to_json()["fax"]
        assert fax["caller"] is None
        assert fax["caller_as_received"] == "031-555-0142"
        assert record.subject == "Fax from Far Away 031-555-0142"
        assert record.partner is None
    finally:
        pipe.close()
