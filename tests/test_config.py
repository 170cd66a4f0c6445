"""Configuration loading: the shipped config works, and every problem is reported at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.config import SecretRef, load_config, normalise_identity
from gateway.errors import ConfigError
from tests.conftest import REPO


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    (target / "gateway.toml").write_text(
        (target / "gateway.toml").read_text().replace('"../mappings"', f'"{REPO / "mappings"}"')
    )
    return target


def test_shipped_config_is_valid() -> None:
    config, problems = load_config(REPO / "config")
    assert problems == []
    assert config.settings.as2_id == "GATEWAY"
    assert config.settings.as2.address == "127.0.0.1:4080"
    assert config.settings.smtp.address == "127.0.0.1:2525"
    assert config.settings.sftp.address == "127.0.0.1:2222"
    demo = config.partner("demo")
    assert demo is not None
    assert ("as2", "DEMOPARTNER") in demo.identities
    assert ("email_domain", "demo-partner.test") in demo.identities


def test_every_problem_is_reported_at_once(cfg: Path) -> None:
    (cfg / "gateway.toml").write_text(
        "[gateway]\nas2_id = 5\n\n[limits]\nmax_message_bytes = -1\nbogus = 1\n"
        '[store]\nurl = "postgresql://u:secret@db/x"\n'
    )
    (cfg / "partners" / "broken.toml").write_text('id = "Bad Id"\n[identities]\nx12 = ["NOQUALIFIER"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    text = str(info.value)
    problems = info.value.problems
    assert len(problems) >= 5, text
    assert any(p.field == "gateway.as2_id" and p.line == 2 for p in problems), text
    assert any(p.field == "limits.max_message_bytes" and "greater than 0" in p.reason for p in problems)
    assert any(p.field == "limits.bogus" and "unknown setting" in p.reason for p in problems)
    assert any(p.field == "store.url" and "password" in p.reason for p in problems)
    assert any(p.field == "identities.x12" and "QUALIFIER:ID" in p.reason for p in problems)
    assert any(p.field == "id" and "lower-case" in p.reason for p in problems)


def test_toml_syntax_error_has_line(cfg: Path) -> None:
    (cfg / "gateway.toml").write_text('[gateway]\nname = "x"\nas2_id = \n')
    _, problems = load_config(cfg, strict=False)
    assert problems
    assert problems[0].line == 3


def test_duplicate_identity_across_partners(cfg: Path) -> None:
    (cfg / "partners" / "other.toml").write_text('id = "other"\n[identities]\nas2 = ["DEMOPARTNER"]\n')
    _, problems = load_config(cfg, strict=False)
    assert any("also belongs to partner 'demo'" in p.reason for p in problems)


def test_secrets_are_references_never_inline(
    cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (cfg / "gateway.toml").read_text().replace('url = ""', 'url_secret = "hunter2"')
    (cfg / "gateway.toml").write_text(text)
    _, problems = load_config(cfg, strict=False)
    assert any(p.field == "store.url_secret" and "never stored inline" in p.reason for p in problems)

    secret = tmp_path / "db-url"
    secret.write_text("sqlite:////tmp/x.db\n")
    (cfg / "gateway.toml").write_text(text.replace('"hunter2"', f'"file:{secret}"'))
    config, problems = load_config(cfg, strict=False)
    assert problems == []
    assert config.settings.store_url_secret == SecretRef("file", str(secret))
    assert config.settings.store_url_secret.read() == "sqlite:////tmp/x.db"

    monkeypatch.setenv("GW_TEST_DB", "postgresql+psycopg://x/y")
    assert SecretRef("env", "GW_TEST_DB").read() == "postgresql+psycopg://x/y"
    monkeypatch.delenv("GW_TEST_DB")
    with pytest.raises(ConfigError, match="GW_TEST_DB is not set"):
        SecretRef("env", "GW_TEST_DB").read()


def test_missing_config_dir() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/nonexistent/config"))


@pytest.mark.parametrize(
    ("kind", "raw", "norm"),
    [
        ("x12", "zz: demo ", "ZZ:DEMO"),
        ("edifact", "5412345000013:14", "5412345000013:14"),
        ("email", "Orders@Example.COM", "orders@example.com"),
        ("fax", "+1 (555) 555-0100", "+15555550100"),
    ],
)
def test_identity_normalisation(kind: str, raw: str, norm: str) -> None:
    assert normalise_identity(kind, raw) == norm
