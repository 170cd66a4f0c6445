"""SFTP polling throughput against a real OpenSSH sshd on loopback (not part of the test run).

2,000 files of 1 KB in one remote drop: files per second picked up (downloaded, archived
with fsync, in the inbox, removed remotely) and processed (parsed, mapped, stored), with
one SFTP session and with several, next to a plain paramiko list + get + remove of the
same files measured in the same run (the ceiling: no archive, no store).

    .venv/bin/python bench/sftp.py [--files 2000] [--sessions 4]

Needs /usr/sbin/sshd (Debian openssh-server); as root it uses the test user of
tests/fixtures_sshd.py.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapters.sftp_poll import DropPoller  # noqa: E402
from gateway.config import SftpConnection, load_config  # noqa: E402
from gateway.pipeline import Pipeline  # noqa: E402
from gateway.sftp.client import open_session  # noqa: E402
from tests.fixtures_sshd import Sshd, running_sshd  # noqa: E402
from tests.helpers import copy_config  # noqa: E402


def one_kb(n: int) -> bytes:
    """An X12 850 of about 1 KB (a few item lines), unique per n."""
    lines = [
        f"PO1*{i}*{i + 2}*EA*12.50**VP*PART-{n}-{i}~PID*F****WIDGET NUMBER {i} FOR ORDER {n} PADDING TEXT~"
        for i in range(1, 9)
    ]
    segs = ["ST*850*0001", f"BEG*00*SA*PO-{n}**20240105", *lines, "CTT*8"]
    body = "~".join(s.rstrip("~") for s in segs)
    count = body.count("~") + 2
    isa = f"ISA*00*          *00*          *ZZ*DEMOPARTNER    *ZZ*GATEWAY        *240105*1200*U*00401*{n:09d}*0*P*>"
    text = f"{isa}~GS*PO*DEMOPARTNER*GATEWAY*20240105*1200*{n}*X*004010~{body}~SE*{count}*0001~GE*1*{n}~IEA*1*{n:09d}~\n"
    return text.encode()


def fill(server: Sshd, folder: Path, count: int) -> None:
    old = time.time() - 60  # settled long ago
    for n in range(1, count + 1):
        server.put(folder / f"po{n:05d}.edi", one_kb(n), mtime=old)


def plain(server: Sshd, folder: Path) -> tuple[int, float]:
    conn = SftpConnection(
        host=server.host, port=server.port, user=server.user, host_key=server.host_key, key=server.client_key
    )
    start = time.perf_counter()
    sess = open_session(conn)
    try:
        names = sess.sftp.listdir(str(folder))
        for name in names:
            buf = io.BytesIO()
            sess.sftp.getfo(f"{folder}/{name}", buf)
            sess.sftp.remove(f"{folder}/{name}")
    finally:
        sess.close()
    return len(names), time.perf_counter() - start


def gateway(server: Sshd, folder: Path, sessions: int, work: Path) -> tuple[int, float, float]:
    conf = copy_config(work / "config")
    profile = conf / "partners" / "demo.toml"
    profile.write_text(
        profile.read_text()
        + textwrap.dedent(
            f"""
            [[sftp.drop]]
            name = "bench"
            host = "{server.host}"
            port = {server.port}
            user = "{server.user}"
            key = "{server.client_key}"
            host_key = "{server.host_key}"
            folder = "{folder}"
            settle = 0.5
            """
        )
    )
    config, _ = load_config(conf)
    pipeline = Pipeline.open(config, work / "data")
    try:
        (drop,) = config.partners[0].sftp_drops
        poller = DropPoller(
            drop,
            pipeline.store,
            data_dir=work / "data",
            max_bytes=config.settings.limits.max_message_bytes,
            holder="bench",
            sessions=sessions,
        )
        start = time.perf_counter()
        result = poller.poll(pipeline.accept, force=True)
        picked = time.perf_counter() - start
        if result.error:
            raise SystemExit(f"poll failed: {result.error}")
        pipeline.drain("bench")
        total = time.perf_counter() - start
        return result.taken, picked, total
    finally:
        pipeline.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=4)
    args = ap.parse_args()
    with running_sshd() as server, tempfile.TemporaryDirectory(prefix="gw-bench-sftp-") as tmp:
        work = Path(tmp)
        print(f"{args.files} files of ~{len(one_kb(1))} bytes, OpenSSH sshd on 127.0.0.1:{server.port}")
        folder = server.folder()
        fill(server, folder, args.files)
        n, secs = plain(server, folder)
        plain_rate = n / secs
        print(
            f"plain paramiko list+get+remove, 1 session : {n} files in {secs:6.2f}s = {plain_rate:7.1f} files/s"
        )
        for sessions in (1, args.sessions):
            folder = server.folder()
            fill(server, folder, args.files)
            run = work / f"s{sessions}"
            run.mkdir()
            taken, picked, total = gateway(server, folder, sessions, run)
            print(
                f"gateway poll, {sessions} session(s)             : {taken} files picked up in {picked:6.2f}s "
                f"= {taken / picked:7.1f} files/s ({taken / picked / plain_rate:4.0%} of plain); "
                f"picked up + processed {total:6.2f}s = {taken / total:7.1f} files/s"
            )
        print("(picked up includes the 0.5 s settle wait: two listings at least settle seconds apart)")


if __name__ == "__main__":
    main()
