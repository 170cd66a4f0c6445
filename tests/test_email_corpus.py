"""Every .eml of the shared corpus (email/ and fax/) through the real pipeline, on
channel ``email``: each is stored, and a representative set matches hand-written
expected outputs (tests/expected/email__NAME.json, fax__NAME.json).

The test configuration is the shipped one plus a partner "daewon" (Daewon Tools, the
corpus's order sender: e-mail domain daewon-tools.example, fax +82 31 555 0142), and
``[fax] default_country = "KR"``: the corpus's recipient (horizon-mfg.example) sits in
Korea (its mail is dated +0900, the eFax notice says KST), so the eFax caller ID
``031-555-0142`` is a Korean national number.

Expected files hold only the fields worth pinning (the matcher checks the keys given,
lists in full); ``body_contains`` lists fragments of the record's text body, which the
JSON form leaves out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.pipeline import Pipeline, ProcessResult
from gateway.store import RawState
from tests.helpers import copy_config
from tests.test_corpus import _match

EXPECTED = Path(__file__).parent / "expected"

DAEWON = """id = "daewon"
name = "Daewon Tools Co., Ltd."

[identities]
email_domain = ["daewon-tools.example"]
fax = ["+82 31 555 0142"]
"""


def corpus_config(target: Path) -> Path:
    config = copy_config(target)
    (config / "partners" / "daewon.toml").write_text(DAEWON)
    toml = config / "gateway.toml"
    text = toml.read_text()
    assert 'default_country = "US"' in text
    toml.write_text(text.replace('default_country = "US"', 'default_country = "KR"'))
    return config


def _eml_files(corpus: Path) -> list[Path]:
    return sorted(p for folder in ("email", "fax") for p in (corpus / folder).glob("*.eml"))


@pytest.fixture(scope="module")
def mail_results(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict[str, ProcessResult]:
    """Each file into a fresh store, as if it arrived by SMTP."""
    tmp = tmp_path_factory.mktemp("mailcorpus")
    config, problems = load_config(corpus_config(tmp / "config"))
    assert not problems
    out: dict[str, ProcessResult] = {}
    for i, path in enumerate(_eml_files(corpus)):
        pipe = Pipeline.open(config, tmp / f"data{i}")
        try:
            raw = pipe.accept(Envelope(raw=path.read_bytes(), channel=Channel.EMAIL, filename=path.name))
            claimed = pipe.store.claim_id(raw.id, "corpus")
            assert claimed is not None
            out[f"{path.parent.name}/{path.name}"] = pipe.process(claimed)
        finally:
            pipe.close()
    return out


def test_every_eml_is_stored(mail_results: dict[str, ProcessResult], corpus: Path) -> None:
    # INVALID_unknown_charset.eml too: an unknown charset label is no reason to refuse
    # a message; its text is decoded as UTF-8, else Latin-1 (see docs/email.md).
    assert len(mail_results) == len(_eml_files(corpus)) >= 20
    for rel, result in mail_results.items():
        assert result.state == RawState.STORED, f"{rel}: {result.quarantine}"
        assert result.records, rel
        top = result.records[0]
        assert top.kind.value in {"message", "fax"}, rel
        for attachment in top.attachments:
            assert len(attachment.sha256) == 64, rel


def test_fax_samples_are_faxes(mail_results: dict[str, ProcessResult]) -> None:
    kinds = {rel: r.records[0].kind.value for rel, r in mail_results.items()}
    assert {rel for rel, kind in kinds.items() if kind == "fax"} == {
        "fax/efax_pdf_two_pages.eml",
        "fax/hylafax_tiff_one_page.eml",
    }


def _expected_files() -> list[Path]:
    return sorted(p for p in EXPECTED.glob("*.json") if p.name.startswith(("email__", "fax__")))


def test_representative_set_has_expected_outputs() -> None:
    names = {p.stem for p in _expected_files()}
    for required in (
        "email__order_x12_attachment.eml",
        "email__order_csv_attachment.eml",
        "email__mailparser_italian_order_forward_pdf.eml",
        "email__hunnysoft_netscape_rfc2047_subject_nested.eml",
        "email__outlook_tnef_winmail_dat.eml",
        "email__INVALID_unknown_charset.eml",
        "fax__efax_pdf_two_pages.eml",
        "fax__hylafax_tiff_one_page.eml",
    ):
        assert required in names


@pytest.mark.parametrize("expected_file", _expected_files(), ids=lambda p: p.stem)
def test_expected_outputs(expected_file: Path, mail_results: dict[str, ProcessResult]) -> None:
    rel = expected_file.name.removesuffix(".json").replace("__", "/", 1)
    expected: dict[str, Any] = json.loads(expected_file.read_text())
    result = mail_results[rel]
    records = list(result.records)
    assert len(records) == len(expected["interactions"]), rel
    bodies = [e.pop("body_contains", []) for e in expected["interactions"]]
    _match(expected["interactions"], [r.to_json() for r in records], rel)
    for record, fragments in zip(records, bodies, strict=True):
        for fragment in fragments:
            assert fragment in (record.body or ""), f"{rel}: {fragment!r} not in body {record.body!r}"
    # attachments that are documents are linked to the e-mail's interaction
    for child in records[1:]:
        assert child.references["in_message"] == records[0].id, rel
