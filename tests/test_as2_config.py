"""AS2 settings in config/: typed, validated, certificate expiry reported by `config check`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gateway.config import load_config
from tests.conftest import need_peer
from tests.helpers import copy_config


def test_shipped_as2_settings_are_typed() -> None:
    from tests.conftest import REPO

    config, problems = load_config(REPO / "config", strict=False)
    assert [str(p) for p in problems] == []
    assert config.settings.as2_settings.path == "/as2"
    assert config.settings.as2_settings.certificate == REPO / "config" / "demo" / "gateway.crt"
    demo = config.partner("demo")
    assert demo is not None
    assert demo.as2 is not None
    assert demo.as2.require_signature
    assert demo.as2.require_encryption
    assert demo.as2.mdn_signed
    assert "sha1" not in demo.as2.digests
    assert "3des-cbc" not in demo.as2.ciphers


def test_config_check_reports_as2_problems_and_expiring_certificates(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        need_peer("openssl")
    cfg = copy_config(tmp_path / "config")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5", "-subj", "/CN=SOON",
         "-keyout", str(cfg / "demo" / "soon.key"), "-out", str(cfg / "demo" / "soon.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    profile = cfg / "partners" / "demo.toml"
    text = profile.read_text().replace('["../demo/partner.crt"]', '["../demo/soon.crt"]')
    profile.write_text(text.replace('digests = ["sha256"', 'digests = ["md5", "sha256"'))
    gw = cfg / "gateway.toml"
    gw.write_text(
        gw.read_text().replace('private_key = "demo/gateway.key"', 'private_key = "demo/partner.key"')
    )
    _config, problems = load_config(cfg, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "soon.crt expires on" in text
    assert "[as2.digests] unknown md5" in text
    assert "does not belong to the certificate" in text
    # at start an expiring certificate is a warning, not a refusal to run
    gw.write_text(
        gw.read_text().replace('private_key = "demo/partner.key"', 'private_key = "demo/gateway.key"')
    )
    profile.write_text(profile.read_text().replace('"md5", ', ""))
    config, _ = load_config(cfg)
    assert config.partner("demo") is not None


def test_expiry_of_our_pkcs12_certificate_is_reported(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if shutil.which("openssl") is None:
        need_peer("openssl")
    cfg = copy_config(tmp_path / "config")
    demo = cfg / "demo"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3", "-subj", "/CN=GATEWAY",
         "-keyout", str(demo / "p12.key"), "-out", str(demo / "p12.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-inkey", str(demo / "p12.key"), "-in", str(demo / "p12.crt"),
         "-out", str(demo / "ours.p12"), "-passout", "pass:s3cret"],
        check=True, capture_output=True,
    )  # fmt: skip
    monkeypatch.setenv("GW_TEST_P12_PASSWORD", "s3cret")
    gw = cfg / "gateway.toml"
    gw.write_text(
        gw.read_text()
        .replace('certificate = "demo/gateway.crt"', 'certificate = "demo/ours.p12"')
        .replace('private_key = "demo/gateway.key"', 'key_password = "env:GW_TEST_P12_PASSWORD"')
    )
    _config, problems = load_config(cfg, strict=False)
    assert any("ours.p12 expires on" in str(p) for p in problems), [str(p) for p in problems]
