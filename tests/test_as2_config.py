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
