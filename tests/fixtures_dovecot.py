"""A real Dovecot IMAP server for the tests.

``dovecot`` (session scope) starts ``/usr/sbin/dovecot -F -c <conf>`` (Debian package
``dovecot-imapd``) with a configuration of its own in a temporary directory: IMAP only,
on free loopback ports (implicit TLS and STARTTLS), ``ssl = required`` with a server
certificate issued by a throw-away CA made with the openssl CLI, PLAIN authentication
over TLS only, a passwd-file of users and maildirs owned by an unprivileged user
(Dovecot refuses root as the mail user). ``imap_account`` adds a fresh user per test
(Dovecot re-reads the passwd-file when it changes), so tests never see each other's mail.
Dovecot's log is printed when a test using it fails (pytest shows teardown output then).
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import need_peer
from tests.fixtures_postgres import free_port

DOVECOT = Path("/usr/sbin/dovecot")
IMAP_BINARY = Path("/usr/lib/dovecot/imap")
#: users made at start, one per test that asks for an account
_SPARE_USERS = 40


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed test CA: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for localhost / 127.0.0.1 issued by ``ca``."""
    cert, key, csr, ext = (directory / n for n in ("server.crt", "server.key", "server.csr", "server.ext"))
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr), cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-days", "2", "-extfile", str(ext), "-out", str(cert), cwd=directory,
    )  # fmt: skip
    return cert, key


@dataclass
class Dovecot:
    base: Path
    port_tls: int  # implicit TLS (imaps)
    port_starttls: int  # plain port; STARTTLS required before login
    ca: Path  # the CA that issued the server certificate
    other_ca: Path  # a CA that did not: a client trusting only it must refuse the server
    users: Path
    log: Path
    mail_uid: str
    mail_gid: str
    host: str = "127.0.0.1"
    #: users written before the server started (a user added later costs a re-read)
    spare: list[tuple[str, str]] = field(default_factory=list)

    def add_user(self, user: str, password: str) -> None:
        with self.users.open("a") as f:
            f.write(f"{user}:{{PLAIN}}{password}\n")
        # passwd-file is re-read when its mtime changes (second resolution): make sure it does
        st = self.users.stat()
        os.utime(self.users, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@dataclass
class ImapAccount:
    """A user of the test server, with helpers that speak real IMAP to it."""

    server: Dovecot
    user: str
    password: str

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4_SSL]:
        conn = imaplib.IMAP4_SSL(
            self.server.host, self.server.port_tls, ssl_context=self.server.client_context(), timeout=30
        )
        try:
            conn.login(self.user, self.password)
            yield conn
        finally:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                conn.logout()

    def create(self, folder: str) -> None:
        with self.client() as c:
            typ, data = c.create(folder)
            assert typ == "OK", data

    def delete(self, folder: str) -> None:
        with self.client() as c:
            typ, data = c.delete(folder)
            assert typ == "OK", data

    def append(self, raw: bytes, folder: str = "INBOX", *, seen: bool = False) -> int:
        """APPEND a message; its UID."""
        with self.client() as c:
            typ, data = c.append(folder, "(\\Seen)" if seen else "()", None, raw)
            assert typ == "OK", data
            match = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            assert match, data
            return int(match.group(1))

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as c:
            typ, data = c.status(folder, "(UIDVALIDITY)")
            assert typ == "OK", data
            match = re.search(rb"UIDVALIDITY (\d+)", data[0] or b"")
            assert match, data
            return int(match.group(1))

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags of every message in ``folder`` (empty when the folder is missing)."""
        with self.client() as c:
            typ, _ = c.select(folder, readonly=True)
            if typ != "OK":
                return {}
            typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", data
            out: dict[int, set[str]] = {}
            for item in data:
                if not isinstance(item, bytes):
                    continue
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", item)
                if match:
                    uid = int(match.group(1) or match.group(4))
                    flags = (match.group(2) if match.group(1) else match.group(3)).decode()
                    out[uid] = set(flags.split())
            return out

    def folders(self) -> set[str]:
        with self.client() as c:
            typ, data = c.list()
            assert typ == "OK", data
            return {item.decode().rsplit(" ", 1)[-1].strip('"') for item in data if isinstance(item, bytes)}


def _config(base: Dovecot, cert: Path, key: Path, root: bool) -> str:
    run_as = (
        ""
        if root
        else (
            f"default_login_user = {base.mail_uid}\n"
            f"default_internal_user = {base.mail_uid}\n"
            f"default_internal_group = {base.mail_gid}\n"
        )
    )
    b = base.base
    return f"""# generated by tests/fixtures_dovecot.py
base_dir = {b}/run
state_dir = {b}/state
log_path = {base.log}
instance_name = gateway-test-{b.name}
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = yes
auth_mechanisms = plain
auth_failure_delay = 0
mail_location = maildir:{b}/mail/%u
first_valid_uid = 1
{run_as}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base.users}
}}
userdb {{
  driver = static
  args = uid={base.mail_uid} gid={base.mail_gid} home={b}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {base.port_starttls}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {base.port_tls}
    ssl = yes
  }}
}}
"""


def _wait_listening(proc: subprocess.Popen[bytes], port: int, server: Dovecot) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dovecot exited with {proc.returncode}:\n{server.log_tail()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"dovecot did not listen on {port}:\n{server.log_tail()}")


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    if not DOVECOT.is_file() or not IMAP_BINARY.is_file():
        need_peer("dovecot (Debian package dovecot-imapd)")
    if shutil.which("openssl") is None:
        need_peer("the openssl command")
    root = os.geteuid() == 0
    if root:
        # Dovecot refuses root as the mail user: the maildirs belong to nobody.
        user = pwd.getpwnam("nobody")
        mail_uid, mail_gid = user.pw_name, str(user.pw_gid)
    else:
        user = pwd.getpwuid(os.geteuid())
        mail_uid, mail_gid = user.pw_name, str(user.pw_gid)
    base = Path(tempfile.mkdtemp(prefix="gw-dovecot-"))
    base.chmod(0o755)  # the login and auth processes run as other users
    server = Dovecot(
        base=base,
        port_tls=free_port(),
        port_starttls=free_port(),
        ca=base / "ca.crt",
        other_ca=base / "other-ca.crt",
        users=base / "users",
        log=base / "dovecot.log",
        mail_uid=mail_uid,
        mail_gid=mail_gid,
    )
    proc: subprocess.Popen[bytes] | None = None
    try:
        ca = make_ca(base, "ca")
        make_ca(base, "other-ca")
        cert, key = make_server_cert(base, ca)
        for path in (cert, key):
            path.chmod(0o644)  # a throw-away test key
        server.spare = [(f"u{secrets.token_hex(6)}", secrets.token_urlsafe(12)) for _ in range(_SPARE_USERS)]
        server.users.write_text("".join(f"{u}:{{PLAIN}}{p}\n" for u, p in server.spare))
        server.users.chmod(0o644)
        (base / "mail").mkdir()
        if root:
            shutil.chown(base / "mail", user.pw_uid, user.pw_gid)
        conf = base / "dovecot.conf"
        conf.write_text(_config(server, cert, key, root))
        proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        _wait_listening(proc, server.port_tls, server)
        _wait_listening(proc, server.port_starttls, server)
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def imap_account(dovecot: Dovecot) -> Iterator[ImapAccount]:
    """A user of its own on the test server; Dovecot's log is printed if the test fails."""
    if dovecot.spare:
        user, password = dovecot.spare.pop()
    else:
        user, password = f"u{secrets.token_hex(6)}", secrets.token_urlsafe(12)
        dovecot.add_user(user, password)
        deadline = time.monotonic() + 10
        while True:  # until Dovecot has re-read the passwd-file
            try:
                with ImapAccount(dovecot, user, password).client():
                    break
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    yield ImapAccount(dovecot, user, password)
    print(f"--- dovecot log (tail) ---\n{dovecot.log_tail()}")
