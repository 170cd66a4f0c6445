"""The ``[[imap.mailbox]]`` settings: typed, checked, secrets only as references."""

from __future__ import annotations

import textwrap
from pathlib import Path

from adapters import RunOptions, factories
from gateway.config import SecretRef, load_config
from tests.helpers import copy_config


def _config(tmp_path: Path, imap: str) -> Path:
    conf = copy_config(tmp_path / "config")
    with (conf / "gateway.toml").open("a") as f:
        f.write(textwrap.dedent(imap))
    return conf


def test_shipped_config_has_no_mailbox_and_no_imap_adapter(tmp_path: Path) -> None:
    config, problems = load_config(copy_config(tmp_path / "config"), strict=False)
    assert problems == []
    assert config.settings.imap.mailboxes == ()
    assert factories()["imap"](config, RunOptions(data_dir=str(tmp_path))) is None


def test_mailboxes_are_read_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    conf = _config(
        tmp_path,
        f"""
        [[imap.mailbox]]
        name = "orders"
        host = "imap.example.test"
        user = "orders@example.test"
        password = "env:IMAP_PW"

        [[imap.mailbox]]
        name = "fax"
        host = "mail.example.test"
        tls = "starttls"
        tls_ca = "{tmp_path / "ca.pem"}"
        user = "fax"
        password = "file:secrets/fax.pw"
        folders = ["INBOX", "Faxes"]
        after = "move:Processed"
        cron = "*/5 * * * *"
        include_seen = true
        """,
    )
    config, problems = load_config(conf, strict=False)
    assert problems == []
    orders, fax = config.settings.imap.mailboxes
    assert (orders.port, orders.tls, orders.folders, orders.after, orders.move_to) == (
        993,
        "implicit",
        ("INBOX",),
        "seen",
        None,
    )
    assert (orders.interval, orders.cron, orders.tls_verify, orders.include_seen) == (60.0, None, True, False)
    assert orders.password == SecretRef("env", "IMAP_PW")
    assert (fax.port, fax.tls, fax.move_to, fax.cron, fax.include_seen) == (
        143,
        "starttls",
        "Processed",
        "*/5 * * * *",
        True,
    )
    assert fax.folders == ("INBOX", "Faxes")
    assert fax.tls_ca == tmp_path / "ca.pem"
    assert fax.password == SecretRef("file", str((conf / "secrets/fax.pw").resolve()))
    adapter = factories()["imap"](config, RunOptions(data_dir=str(tmp_path)))
    assert adapter is not None
    assert "orders" in adapter.describe()
    assert "cron" in adapter.describe()


def test_every_problem_is_reported(tmp_path: Path) -> None:
    conf = _config(
        tmp_path,
        """
        [[imap.mailbox]]
        name = "Bad Name"
        host = "h"
        user = "u"
        password = "inline-secret"
        tls = "none"
        after = "delete"
        interval = 30
        cron = "61 * * * *"
        colour = "blue"

        [[imap.mailbox]]
        name = "ok"
        host = "h"
        user = "u"
        password = "env:X"
        folders = []
        after = "move:INBOX"
        interval = 0

        [[imap.mailbox]]
        name = "ok"
        host = "h2"
        user = "u"
        password = "env:Y"

        [[imap.mailbox]]
        name = "nopass"
        host = "h"
        user = "u"
        """,
    )
    _, problems = load_config(conf, strict=False)
    text = "\n".join(str(p) for p in problems)
    assert "secrets are never stored inline" in text
    assert "'Bad Name'" in text
    assert "'none'" in text
    assert "plain IMAP is refused" in text
    assert "'delete'" in text
    assert "interval or cron, not both" in text
    assert "not a crontab line" in text
    assert "[imap.mailbox.colour] unknown setting" in text
    assert "non-empty list of folder names" in text
    assert "must be greater than 0" in text
    assert "'ok' names two mailboxes" in text
    assert 'needs password = "env:VARIABLE"' in text
