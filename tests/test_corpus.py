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
}
ACCEPTED_INVALID = {
    "x12/INVALID_staedi_997_bad_codes.edi": "element values outside their code lists: syntax is valid",
    "edifact/INVALID_staedi_INVOIC_D97B_bad_NAD_qualifier.edi": "code-list error (NAD qualifier): syntax is valid",
    "edifact/INVALID_phpedifact_ORDERS_D01B_missing_release_chars.edi": "unescaped separators still parse",
}


def _files(corpus: Path, *folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (corpus / f).iterdir() if p.suffix in {".edi", ".txt", ".eml"})


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict[str, list[ProcessResult]]:
    tmp = tmp_path_factory.mktemp("corpus")
    config, _ = load_config(copy_config(tmp / "config"))
    pipe = Pipeline.open(config, tmp / "data")
    out: dict[str, list[ProcessResult]] = {}
    try:
        for path in _files(corpus, "x12", "edifact"):
            rel = f"{path.parent.name}/{path.name}"
            raw = pipe.accept(Envelope(raw=path.read_bytes(), channel=Channel.FILE, filename=path.name))
            claimed = pipe.store.claim_id(raw.id, "corpus")
            out.setdefault(rel, []).append(pipe.process(claimed or raw))
        # the books balance: every raw message is stored, quarantined or a duplicate
        counts = pipe.store.counts()
        total_raw = sum(v for k, v in counts.items() if k.startswith("raw_"))
        assert total_raw == len(out)
        assert (
            counts.get("raw_stored", 0) + counts.get("raw_quarantined", 0) + counts.get("raw_duplicate", 0)
            == total_raw
        )
        assert counts.get("raw_received", 0) == counts.get("raw_processing", 0) == 0
        stored_records = sum(len(r.records) for rs in out.values() for r in rs)
        assert counts["interactions"] == stored_records
    finally:
        pipe.close()
    return out


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


@pytest.mark.parametrize("expected_file", sorted(EXPECTED.glob("*.json")), ids=lambda p: p.stem)
def test_expected_outputs(expected_file: Path, results: dict[str, list[ProcessResult]]) -> None:
    rel = expected_file.name.removesuffix(".json").replace("__", "/", 1)
    expected = json.loads(expected_file.read_text())
    (result,) = results[rel]
    actual = [r.to_json() for r in result.records]
    _match(expected["interactions"], actual, rel)
