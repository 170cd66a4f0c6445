"""SMTP receiving benchmark (issue 4). Not part of the test run.

5 KB e-mails (a short order text with a small CSV attachment, each with its own
Message-ID) sent with smtplib over 1 and over 20 concurrent connections, to:

  (a) the gateway's SMTP server (aiosmtpd, the real handler: recipient and address
      checks, header check, Received: header, the real pipeline's durable accept:
      archive fsync + inbox commit) on the embedded SQLite store in a temporary data
      directory: messages accepted per second (every 250 means durable), then
      processed per second (the pipeline draining the inbox: parse the MIME, map,
      validate, store);
  (b) a bare aiosmtpd server in the same process that only counts messages,

measured in the same run, loopback only. The clients run in a separate process (one
thread per connection), so they do not share the servers' interpreter.

Targets (issue 4): accepted at least half as fast as the bare server; processed at
least 300 messages per second.

    .venv/bin/python bench/smtp.py [--messages N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import multiprocessing as mp
import smtplib
import sys
import tempfile
import threading
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmtpd.smtp import SMTP

from adapters.smtp import SmtpAdapter
from gateway.config import load_config
from gateway.pipeline import Pipeline
from tests.helpers import copy_config

TARGET_VS_BARE = 0.5
TARGET_PROCESSED = 300.0
SIZE = 5 * 1024


def build_message(size: int = SIZE) -> bytes:
    """A ~``size`` byte order e-mail with ``{MSGID}`` where the Message-ID goes."""
    rows = "line,part,quantity,unit_price\n" + "".join(
        f"{i},PART-{i:04d},{i % 9 + 1},12.50\n" for i in range(40)
    )
    text = "Please find our order attached.\n"
    while True:
        msg = EmailMessage(policy=email.policy.SMTP)
        msg["From"] = "Demo Orders <orders@demo-partner.test>"
        msg["To"] = "orders@gateway.test"
        msg["Subject"] = "Purchase order"
        msg["Date"] = "Fri, 05 Jan 2024 12:00:00 +0000"
        msg["Message-ID"] = "<{MSGID}@demo-partner.test>"
        msg.set_content(text)
        msg.add_attachment(rows.encode(), maintype="text", subtype="csv", filename="order.csv")
        data = msg.as_bytes(policy=email.policy.SMTP)
        if len(data) >= size - 70:
            return data
        text += "Delivery to dock 4, before noon please. Reference on every parcel.\n"


# ---- the client (a separate process; one thread per connection) ----------------------


def _client(args: tuple[int, int, int, float, bytes, str]) -> dict[str, Any]:
    port, conns, count, seconds, template, tag = args
    lock = threading.Lock()
    next_n = [0]
    ok = [0]
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def take() -> int | None:
        with lock:
            if next_n[0] >= count or time.monotonic() > deadline:
                return None
            next_n[0] += 1
            return next_n[0]

    def worker() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                c.ehlo("bench.demo-partner.test")
                while (n := take()) is not None:
                    data = template.replace(b"{MSGID}", f"{tag}-{n}".encode())
                    c.sendmail("orders@demo-partner.test", ["orders@gateway.test"], data)
                    with lock:
                        ok[0] += 1
        except (OSError, smtplib.SMTPException) as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"sent": ok[0], "seconds": elapsed, "errors": errors[:3]}


def send(
    pool: Any, port: int, conns: int, count: int, seconds: float, template: bytes, tag: str
) -> dict[str, Any]:
    result: dict[str, Any] = pool.apply(_client, ((port, conns, count, seconds, template, tag),))
    return result


# ---- the bare server ------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


class BareServer:
    """aiosmtpd with a handler that only counts, on its own loop in a thread."""

    def __init__(self) -> None:
        self.handler = _Counter()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(
                lambda: SMTP(self.handler, data_size_limit=50 * 1024 * 1024, hostname="bare", loop=loop),
                "127.0.0.1",
                0,
            )
        )
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        loop.run_forever()
        server.close()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# ---- the run --------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=3000, help="messages per measurement (20 connections)")
    ap.add_argument("--single", type=int, default=600, help="messages per measurement (1 connection)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound per measurement")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    template = build_message()
    print(f"message: {len(template)} bytes; loopback; clients in a separate process")

    pool = mp.get_context("spawn").Pool(1)
    bare = BareServer()
    bare.start()
    with tempfile.TemporaryDirectory(prefix="bench-smtp-") as tmp:
        config_dir = copy_config(Path(tmp) / "config")
        config, _ = load_config(config_dir)
        pipeline = Pipeline.open(config, Path(tmp) / "data")
        adapter = SmtpAdapter(config, "127.0.0.1", 0)
        adapter.start(pipeline.accept)
        send(pool, bare.port, 1, 20, 10, template, "warm-bare")
        send(pool, adapter.port, 1, 20, 10, template, "warm-gw")
        pipeline.drain("bench")
        rows: list[tuple[int, float, float, float]] = []
        for conns, count in ((1, args.single), (20, args.messages)):
            b = send(pool, bare.port, conns, count, args.seconds, template, f"bare{conns}")
            bare_rate = b["sent"] / b["seconds"]
            g = send(pool, adapter.port, conns, count, args.seconds, template, f"gw{conns}")
            accepted_rate = g["sent"] / g["seconds"]
            for what, r in (("bare", b), ("gateway", g)):
                if r["errors"]:
                    print(f"  {what} client errors: {r['errors']}")
            assert pipeline.store.counts()["received"] == g["sent"], "every 250 must be in the inbox"
            t0 = time.perf_counter()
            processed = pipeline.drain("bench")
            processed_rate = processed / (time.perf_counter() - t0)
            rows.append((conns, bare_rate, accepted_rate, processed_rate))
            print(
                f"{conns:>2} connection(s): bare aiosmtpd {bare_rate:7.0f} msg/s ({b['sent']} msgs); "
                f"gateway accepted {accepted_rate:7.0f} msg/s ({g['sent']} msgs, durable) = "
                f"{accepted_rate / bare_rate:.2f}x bare (target >= {TARGET_VS_BARE}); "
                f"processed {processed_rate:6.0f} msg/s ({processed} msgs, target >= {TARGET_PROCESSED:.0f})"
            )
        counts = pipeline.store.counts()
        print(f"store: {counts}")
        adapter.stop()
        pipeline.close()
    bare.stop()
    pool.close()
    ok = all(acc >= TARGET_VS_BARE * bare and proc >= TARGET_PROCESSED for _, bare, acc, proc in rows)
    print("targets met" if ok else "targets NOT met")


if __name__ == "__main__":
    main()
