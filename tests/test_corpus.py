"""Every file in the shared corpus through the whole pipeline.

Valid files become the expected interactions (checked against hand-written expected
outputs in tests/expected/ for a representative set); deliberately invalid ones are
quarantined with a precise reason; and the books always balance: every raw message is
stored, quarantined or a duplicate.
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

EXPECTED = Path(__file__).parent / "expected"

# What a syntax-level parser can say about each deliberately broken file. Files whose
# only fault is a code-list or semantic one are accepted here and listed in
# ACCEPTED_INVALID with the reason; a code-list validator is a separate issue.
INVALID_REASONS: dict[str, tuple[str, ...]] = {
    "x12/INVALID_edinet_control_numbers_mismatch.edi": ("SE02",),
    "x12/INVALID_edinet_wrong_group_and_set_counts.edi": ("GE01",),
    "x12/INVALID_edinet_not_edi.edi": ("not EDI",),
    "x12/INVALID_pyx12_837_missing_IEA.edi": ("IEA",),
    "x12/INVALID_staedi_999_bad_structure.edi": ("IK5", "not allowed"),
    # the file's code-list fault (NAD+BYZZ) is invisible to syntax, but its QTY holds "1020A"
    "edifact/INVALID_staedi_INVOIC_D97B_bad_NAD_qualifier.edi": ("quantity", "not a number", "1020A"),
}
ACCEPTED_INVALID = {
    "x12/INVALID_staedi_997_bad_codes.edi": "element values outside their code lists: syntax is valid",
    "edifact/INVALID_phpedifact_ORDERS_D01B_missing_release_chars.edi": "unescaped separators still parse",
}


# Files that repeat a document of an earlier file: same sender, same interchange, group
# and set control numbers AND the same segments (only wrapping, separators or envelope
# differ). Ingested together, in name order, each is recorded as a duplicate. Upstream
# suites also reuse control numbers for documents whose content differs (other
# charsets, other values): those are different documents and are stored.
DUPLICATE_FILES = {
    "x12/staedi_810_invoice_4010.edi",  # the first 810 of staedi_810_and_850_two_GS_groups.edi
    "edifact/staedi_INVOIC_D97B_wrapped_fixed_width.edi",  # custom_UNA_release_char, re-wrapped
}


def _files(corpus: Path, *folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (corpus / f).iterdir() if p.suffix in {".edi", ".txt", ".eml"})


def _ingest_all(pipe: Pipeline, paths: list[Path]) -> dict[str, ProcessResult]:
    out: dict[str, ProcessResult] = {}
    for path in paths:
        rel = f"{path.parent.name}/{path.name}"
        raw = pipe.accept(Envelope(raw=path.read_bytes(), channel=Channel.FILE, filename=path.name))
        claimed = pipe.store.claim_id(raw.id, "corpus")
        assert claimed is not None
        out[rel] = pipe.process(claimed)
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict[str, list[ProcessResult]]:
    """Each file on its own, into a fresh store, so each is judged on its own merits."""
    tmp = tmp_path_factory.mktemp("corpus")
    config, _ = load_config(copy_config(tmp / "config"))
    out: dict[str, list[ProcessResult]] = {}
    for i, path in enumerate(_files(corpus, "x12", "edifact")):
        pipe = Pipeline.open(config, tmp / f"data{i}")
        try:
            for rel, result in _ingest_all(pipe, [path]).items():
                out[rel] = [result]
        finally:
            pipe.close()
    return out


def test_whole_corpus_in_one_store_balances(tmp_path: Path, corpus: Path) -> None:
    config, _ = load_config(copy_config(tmp_path / "config"))
    pipe = Pipeline.open(config, tmp_path / "data")
    try:
        out = _ingest_all(pipe, _files(corpus, "x12", "edifact"))
        counts = pipe.store.counts()
    finally:
        pipe.close()
    states = ("received", "processing", "stored", "quarantined", "duplicate")
    total_raw = sum(counts[k] for k in states)
    assert total_raw == len(out)
    # the books balance: every raw message is stored, quarantined or a duplicate
    assert counts["stored"] + counts["quarantined"] + counts["duplicate"] == total_raw
    assert counts["received"] == counts["processing"] == 0
    assert counts["interactions"] == sum(len(r.records) for r in out.values())
    assert {rel for rel, r in out.items() if r.state == RawState.DUPLICATE} == DUPLICATE_FILES
    assert counts["quarantined"] == len(INVALID_REASONS)
    for rel in DUPLICATE_FILES:
        assert out[rel].duplicate_records, rel


def test_valid_files_are_stored(results: dict[str, list[ProcessResult]]) -> None:
    for rel, rs in results.items():
        if Path(rel).name.startswith("INVALID_") and rel not in ACCEPTED_INVALID:
            continue
        (result,) = rs
        assert result.state == RawState.STORED, f"{rel}: {result.quarantine}"
        assert result.records, rel


def test_invalid_files_are_quarantined_with_reason(results: dict[str, list[ProcessResult]]) -> None:
    for rel, fragments in INVALID_REASONS.items():
        (result,) = results[rel]
        assert result.state == RawState.QUARANTINED, rel
        assert result.quarantine is not None
        for fragment in fragments:
            assert fragment in result.quarantine.reason, f"{rel}: {result.quarantine.reason}"


def test_every_invalid_file_is_accounted_for(corpus: Path) -> None:
    invalid = {
        f"{p.parent.name}/{p.name}" for p in _files(corpus, "x12", "edifact") if p.name.startswith("INVALID_")
    }
    assert invalid == set(INVALID_REASONS) | set(ACCEPTED_INVALID)


def _match(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: missing {key}"
            _match(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        assert len(actual) == len(expected), (
            f"{where}: {len(actual)} items, expected {len(expected)}: {actual!r}"
        )
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _match(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# tests/expected/email__*.json and fax__*.json are checked by tests/test_email_corpus.py
@pytest.mark.parametrize(
    "expected_file",
    sorted(p for p in EXPECTED.glob("*.json") if p.name.startswith(("x12__", "edifact__"))),
    ids=lambda p: p.stem,
)
def test_expected_outputs(expected_file: Path, results: dict[str, list[ProcessResult]]) -> None:
    rel = expected_file.name.removesuffix(".json").replace("__", "/", 1)
    expected = json.loads(expected_file.read_text())
    (result,) = results[rel]
    actual = [r.to_json() for r in result.records]
    _match(expected["interactions"], actual, rel)
    assert len(result.duplicate_records) == expected.get("duplicates", 0), rel
