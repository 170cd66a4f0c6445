"""AS2 over HTTPS: with a TLS certificate configured, the endpoint speaks TLS only."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import need_peer
from tests.helpers import x12_850
from tests.test_as2_receive import check_mdn, pyas2, pyas2_partner, start_gateway


def _tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        need_peer("the openssl command")
    crt, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt, key


def test_https_endpoint_accepts_a_message_and_refuses_plain_http(tmp_path: Path) -> None:
    lib = pyas2()
    crt, key = _tls_pair(tmp_path)
    gw = start_gateway(
        tmp_path,
        {
            "gateway.toml": [
                ('# tls_certificate = "tls.crt"', f'tls_certificate = "{crt}"'),
                ('# tls_key = "tls.key"', f'tls_key = "{key}"'),
            ]
        },
    )
    try:
        assert gw.url.startswith("https://127.0.0.1:")
        org, partner = pyas2_partner(lib)
        msg = lib.Message(sender=org, receiver=partner)
        msg.build(x12_850(icn=31), filename="po.edi", content_type="application/edi-x12")
        headers = {k: str(v) for k, v in msg.headers.items()}
        resp = httpx.post(
            gw.url,
            content=msg.content,
            headers=headers,
            timeout=30,
            verify=ssl.create_default_context(cafile=str(crt)),
        )
        assert resp.status_code == 200
        status, detail = check_mdn(lib, msg, resp)
        assert status == "processed", detail
        # a client that does not speak TLS gets nothing it could mistake for an MDN
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                gw.url.replace("https://", "http://"), content=msg.content, headers=headers, timeout=10
            )
    finally:
        gw.adapter.stop()
        gw.pipeline.close()
