"""``[sftp]`` listener settings and ``[[sftp.users]]`` in partner profiles (hosting a drop)."""

from __future__ import annotations

from pathlib import Path

from adapters import RunOptions
from adapters.sftp_server import SftpServerAdapter, factory
from gateway.config import load_config
from tests.conftest import REPO
from tests.helpers import copy_config

DEMO_PUB = (REPO / "config" / "demo" / "partner_ssh.pub").read_text().strip()


def test_shipped_config_serves_the_demo_user() -> None:
    config, problems = load_config(REPO / "config", strict=False)
    assert not [p for p in problems if "sftp" in str(p)]
    settings = config.settings.sftp_server
    assert settings.host_key == REPO / "config" / "demo" / "sftp_host_ed25519_key"
    assert settings.max_sessions == 10
    demo = config.partner("demo")
    assert demo is not None
    (user,) = demo.sftp_users
    assert user.name == "demo"
    assert user.keys == (" ".join(DEMO_PUB.split()[:2]),)
    assert ("sftp", "server:demo") in demo.identities


def _write_partner(config_dir: Path, name: str, body: str) -> None:
    (config_dir / "partners" / f"{name}.toml").write_text(f'id = "{name}"\nname = "{name}"\n{body}')


def test_bad_users_are_reported(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    _write_partner(
        config_dir,
        "acme",
        '[[sftp.users]]\nname = "acme"\nkeys = ["ssh-ed25519 notbase64"]\n'
        '[[sftp.users]]\nname = "../x"\nkeys = []\n'
        '[[sftp.users]]\nname = "nokey"\nauthorized_keys = "missing.pub"\n',
    )
    _, problems = load_config(config_dir, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "not an OpenSSH public key" in text
    assert "'../x'" in text
    assert "missing.pub does not exist" in text


def test_a_user_belongs_to_one_partner(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    _write_partner(config_dir, "acme", f'[[sftp.users]]\nname = "demo"\nkeys = ["{DEMO_PUB}"]\n')
    _, problems = load_config(config_dir, strict=False)
    assert any("server:demo" in str(p) and "also belongs" in str(p) for p in problems)


def test_settings_are_typed(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    path = config_dir / "gateway.toml"
    path.write_text(
        path.read_text()
        .replace("max_sessions = 10", 'max_sessions = "many"')
        .replace('host_key = "demo/sftp_host_ed25519_key"', 'host_key = "demo/partner_ssh.pub"')
    )
    _, problems = load_config(config_dir, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "max_sessions" in text
    assert "not an unencrypted SSH private key" in text


def test_factory_honours_run_options(tmp_path: Path) -> None:
    config, _ = load_config(REPO / "config")
    data = str(tmp_path)
    assert factory(config, RunOptions(data_dir=data, no_sftp=True)) is None
    adapter = factory(config, RunOptions(data_dir=data, sftp="127.0.0.1:2299"))
    assert isinstance(adapter, SftpServerAdapter)
    assert (adapter.host, adapter.port) == ("127.0.0.1", 2299)
    assert adapter.drops.root == (tmp_path / "sftp").resolve()


def test_no_host_key_no_server(tmp_path: Path) -> None:
    config_dir = copy_config(tmp_path / "config")
    path = config_dir / "gateway.toml"
    path.write_text(path.read_text().replace('host_key = "demo/sftp_host_ed25519_key"', ""))
    config, _ = load_config(config_dir)
    assert factory(config, RunOptions(data_dir=str(tmp_path))) is None
