"""A real SMTP server (the gateway's aiosmtpd adapter) on a free loopback port, with
the shipped configuration copied to a temporary directory and the real pipeline."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.smtp import SmtpAdapter
from gateway.config import load_config
from gateway.pipeline import Pipeline
from tests.conftest import need_peer
from tests.helpers import copy_config


def set_smtp(config_dir: Path, **values: str) -> None:
    """Set keys of ``[smtp]`` in gateway.toml (values are TOML text, e.g. '"x"' or '10')."""
    path = config_dir / "gateway.toml"
    text = path.read_text()
    head, sep, rest = text.partition("\n[smtp]\n")
    assert sep, "gateway.toml has no [smtp] table"
    body, nxt, tail = rest.partition("\n[")
    for key, value in values.items():
        line = f"{key} = {value}"
        if re.search(rf"^{re.escape(key)}\s*=", body, re.MULTILINE):
            body = re.sub(rf"^{re.escape(key)}\s*=.*$", lambda _m, line=line: line, body, flags=re.MULTILINE)
        else:
            body = f"{line}\n{body}"
    path.write_text(head + sep + body + nxt + tail)


def set_demo_senders(config_dir: Path, senders: str) -> None:
    """Give the demo partner ``[email] senders = <senders>`` (TOML text)."""
    path = config_dir / "partners" / "demo.toml"
    text = path.read_text()
    assert "\n[as2]\n" in text
    path.write_text(text.replace("\n[as2]\n", f"\n[email]\nsenders = {senders}\n\n[as2]\n", 1))


@dataclass
class SmtpGateway:
    config_dir: Path
    data_dir: Path
    pipeline: Pipeline
    adapter: SmtpAdapter

    @property
    def port(self) -> int:
        return self.adapter.port

    def drain(self) -> int:
        return self.pipeline.drain("test")


StartSmtp = Callable[..., SmtpGateway]


@pytest.fixture
def start_smtp(tmp_path: Path) -> Iterator[StartSmtp]:
    """Start the gateway's SMTP server; keyword arguments set ``[smtp]`` keys first."""
    running: list[SmtpGateway] = []

    def start(*, demo_senders: str | None = None, **smtp: str) -> SmtpGateway:
        config_dir = tmp_path / f"config{len(running)}"
        copy_config(config_dir)
        if smtp:
            set_smtp(config_dir, **smtp)
        if demo_senders is not None:
            set_demo_senders(config_dir, demo_senders)
        config, _ = load_config(config_dir)
        data = tmp_path / f"data{len(running)}"
        pipeline = Pipeline.open(config, data)
        adapter = SmtpAdapter(config, "127.0.0.1", 0, workers=4)
        try:
            adapter.start(pipeline.accept)
        except BaseException:
            pipeline.close()
            raise
        gw = SmtpGateway(config_dir, data, pipeline, adapter)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.adapter.stop()
        gw.pipeline.close()


@pytest.fixture
def smtp_gateway(start_smtp: StartSmtp) -> SmtpGateway:
    return start_smtp()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed test certificate and key made by the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        need_peer("openssl")
        raise AssertionError("unreachable")
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
