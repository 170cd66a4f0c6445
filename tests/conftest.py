"""Shared fixtures. Fixtures that start real servers live in tests/fixtures_*.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("GATEWAY_CORPUS", REPO.parent / "shared" / "corpus"))

pytest_plugins = [
    "tests.fixtures_postgres",
    "tests.fixtures_dovecot",
    "tests.fixtures_smtp",
    "tests.fixtures_sshd",
]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def need_peer(what: str) -> None:
    """Skip a test whose real peer is missing, except in CI where that is a failure."""
    if in_ci():
        pytest.fail(f"{what} is not available, and CI must not skip it")
    pytest.skip(f"{what} is not available")


def corpus_files(*patterns: str) -> list[Path]:
    """Corpus files for parametrize. Without the corpus there is one placeholder, so the
    test still runs and its ``corpus`` fixture skips it, or fails it in CI: an empty
    parameter set would be skipped silently."""
    found = sorted(p for pattern in patterns for p in CORPUS.glob(pattern))
    return found or [CORPUS / "(corpus missing)"]


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        need_peer(f"the shared corpus at {CORPUS}")
    return CORPUS
