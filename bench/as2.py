"""AS2 receiving benchmark (issue 3). Not part of the test run.

Signed + encrypted 10 KB X12 messages (AES-256-CBC, RSA-2048, SHA-256) posted over
HTTP to the AS2 endpoint, each answered with a signed synchronous MDN, on the
embedded SQLite store. The endpoint (Starlette on uvicorn, the real receiver, the
real pipeline's durable accept: archive fsync + inbox commit) runs in this process on
loopback with a temporary data directory; the clients run in separate processes so
they do not share the endpoint's interpreter. Messages are built beforehand with our
own sender, as the demo partner.

Measured in the same run, beside it:
  (a) the crypto ceiling for such a message on one core: two RSA-2048 private-key
      operations (unwrap the content key, sign the MDN), one public-key operation
      (verify the signature), AES-256-CBC and SHA-256 over 10 KB;
  (b) pyas2lib's own parse + signed MDN of the same messages, on one core.

Targets (issue 3): at least 4x pyas2lib's rate on one core; at least 400 messages
per second end to end on the 2-core machine.

    .venv/bin/python bench/as2.py [--messages N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import pickle
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from adapters.as2 import As2Adapter
from gateway.as2 import sender
from gateway.as2.profiles import PartnerAs2Runtime, load_key_pair, load_profiles
from gateway.config import PartnerAs2, load_certificates, load_config
from gateway.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "config" / "demo"

TARGET_VS_PYAS2LIB = 4.0
TARGET_END_TO_END = 400.0


def x12_payload(n: int, size: int) -> bytes:
    """An X12 850 of about ``size`` bytes (enough PO1 lines)."""
    isa = (
        f"ISA*00*          *00*          *ZZ*DEMOPARTNER    *ZZ*GATEWAY        "
        f"*240101*1200*U*00401*{n:09d}*0*P*>~"
    )
    segs = ["ST*850*0001", f"BEG*00*SA*PO{n:07d}**20240101", "N1*ST*DEMO WAREHOUSE*92*0001"]
    i = 0
    while sum(len(s) + 1 for s in segs) + len(isa) + 120 < size:
        i += 1
        segs.append(f"PO1*{i}*{i % 50 + 1}*EA*{i % 90 + 1}.25**VP*PART-{i:05d}*BP*BUY-{i:05d}")
        segs.append(f"PID*F****WIDGET MODEL {i} STAINLESS STEEL")
    segs.append(f"CTT*{i}")
    segs.append(f"SE*{len(segs) + 1}*0001")
    gs = f"GS*PO*DEMOPARTNER*GATEWAY*20240101*1200*{n}*X*004010~"
    return (isa + gs + "~".join(segs) + f"~GE*1*{n}~IEA*1*{n:09d}~").encode()


def build_messages(count: int, size: int) -> list[tuple[list[tuple[str, str]], bytes]]:
    """Signed + encrypted messages from the demo partner to the gateway."""
    partner_key = load_key_pair(DEMO / "partner.crt", DEMO / "partner.key", None)
    gateway = PartnerAs2Runtime(
        id="gateway",
        name="gateway",
        as2_ids=("GATEWAY",),
        settings=replace(PartnerAs2(), sign=True, encrypt=True, mdn_mode="sync", mdn_signed=True),
        encrypt_certs=tuple(load_certificates(DEMO / "gateway.crt")),
    )
    out = []
    for n in range(count):
        msg = sender.build_message(
            x12_payload(n + 1, size),
            our_id="DEMOPARTNER",
            partner=gateway,
            signer=partner_key,
            filename="po.edi",
        )
        out.append((list(msg.headers), msg.body))
    return out


# --- (a) crypto ceiling -----------------------------------------------------------------------


def crypto_ceiling(size: int, seconds: float = 2.0) -> float:
    ours = load_key_pair(DEMO / "gateway.crt", DEMO / "gateway.key", None)
    theirs = load_key_pair(DEMO / "partner.crt", DEMO / "partner.key", None)
    cek = os.urandom(32)
    iv = os.urandom(16)
    wrapped = ours.cert.public_key().encrypt(cek, asym_padding.PKCS1v15())  # type: ignore[union-attr]
    data = os.urandom(size)
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(data) + enc.finalize()
    signature = theirs.key.sign(b"attrs" * 20, asym_padding.PKCS1v15(), hashes.SHA256())
    public = theirs.cert.public_key()
    n = 0
    start = time.process_time()
    while time.process_time() - start < seconds:
        key = ours.key.decrypt(wrapped, asym_padding.PKCS1v15())  # private op 1
        dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        plain = dec.update(ciphertext) + dec.finalize()  # AES over 10 KB
        hashlib.sha256(plain).digest()  # SHA over 10 KB
        public.verify(signature, b"attrs" * 20, asym_padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg,arg-type]
        ours.key.sign(b"mdn attrs" * 10, asym_padding.PKCS1v15(), hashes.SHA256())  # private op 2
        n += 1
    return n / (time.process_time() - start)


# --- (b) pyas2lib --------------------------------------------------------------------------------


def pyas2lib_rate(messages: list[tuple[list[tuple[str, str]], bytes]]) -> float | None:
    try:
        import pyas2lib
    except ImportError:
        return None

    def pem(name: str) -> bytes:
        return (DEMO / f"{name}.key").read_bytes() + (DEMO / f"{name}.crt").read_bytes()

    org = pyas2lib.Organization(
        as2_name="GATEWAY",
        sign_key=pem("gateway"),
        sign_key_pass="",
        decrypt_key=pem("gateway"),
        decrypt_key_pass="",
    )
    partner = pyas2lib.Partner(
        as2_name="DEMOPARTNER",
        verify_cert=(DEMO / "partner.crt").read_bytes(),
        validate_certs=False,
        sign=True,
        encrypt=True,
        mdn_mode="SYNC",
        mdn_digest_alg="sha256",
    )
    raws = [b"".join(f"{k}: {v}\r\n".encode() for k, v in h) + b"\r\n" + b for h, b in messages]
    start = time.process_time()
    for raw in raws:
        msg = pyas2lib.Message()
        status, exc, mdn = msg.parse(raw, find_org_cb=lambda _i: org, find_partner_cb=lambda _i: partner)
        if status != "processed" or mdn is None:
            raise SystemExit(f"pyas2lib did not process a bench message: {exc[0]!r}")
        _ = mdn.headers, mdn.content
    return len(raws) / (time.process_time() - start)


# --- the endpoint ----------------------------------------------------------------------------------


def _client(url: str, path: str, lo: int, hi: int, ready: Any, go: Any, results: Any) -> None:
    import httpx

    with open(path, "rb") as fh:
        messages = pickle.load(fh)[lo:hi]
    bad = 0
    with httpx.Client(timeout=60) as client:
        ready.release()
        go.wait()
        for headers, body in messages:
            r = client.post(url, content=body, headers=dict(headers))
            if (
                r.status_code != 200
                or b"; processed" not in r.content
                or b"multipart/signed" not in r.headers.get("content-type", "").encode()
            ):
                bad += 1
    results.put(bad)


def run_endpoint(url: str, path: str, total: int, clients: int) -> tuple[float, float, int]:
    """(messages per second, server CPU-seconds per message, failures)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    share = total // clients
    procs = [
        ctx.Process(target=_client, args=(url, path, i * share, (i + 1) * share, ready, go, results))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    go.set()
    bad = sum(results.get() for _ in procs)
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    for p in procs:
        p.join()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    done = share * clients
    return done / elapsed, cpu / done, bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=800, help="messages per endpoint run (default 800)")
    ap.add_argument("--size", type=int, default=10 * 1024, help="payload bytes (default 10240)")
    ap.add_argument("--pyas2lib-messages", type=int, default=200)
    args = ap.parse_args()

    print(f"building {args.messages * 2} signed+encrypted messages of {args.size} bytes ...", flush=True)
    messages = build_messages(args.messages * 2, args.size)
    print(f"one message on the wire: {len(messages[0][1])} bytes", flush=True)

    ceiling = crypto_ceiling(args.size)
    print(f"(a) crypto ceiling: {ceiling:,.0f} messages/s per core", flush=True)
    ref = pyas2lib_rate(messages[: args.pyas2lib_messages])
    print(
        "(b) pyas2lib parse + signed MDN: " + (f"{ref:,.1f} messages/s per core" if ref else "not installed"),
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="gateway-bench-as2-") as tmp:
        config, _ = load_config(REPO / "config")
        load_profiles(config)
        pipeline = Pipeline.open(config, Path(tmp) / "data")
        adapter = As2Adapter(config, "127.0.0.1", 0, data_dir=Path(tmp) / "data")
        adapter.start(pipeline.accept)
        try:
            figures: dict[int, tuple[float, float, int]] = {}
            for clients in (1, 8):
                batch = messages[: args.messages] if clients == 1 else messages[args.messages :]
                path = str(Path(tmp) / f"messages-{clients}.pickle")
                with open(path, "wb") as fh:
                    pickle.dump(batch, fh)
                figures[clients] = run_endpoint(adapter.url, path, len(batch), clients)
                rate, cpu, bad = figures[clients]
                print(
                    f"endpoint, {clients} client(s): {rate:,.1f} messages/s"
                    f" ({1 / cpu:,.1f} per server CPU-second){'' if not bad else f', {bad} FAILED'}",
                    flush=True,
                )
            counts = pipeline.store.counts()
            print(f"inbox after the runs: {counts['received']} messages received and durable")
        finally:
            adapter.stop()
            pipeline.close()

    one_rate, one_cpu, _ = figures[1]
    eight_rate, _, _ = figures[8]
    per_core = 1 / one_cpu
    print()
    print("summary")
    print(f"  crypto ceiling (a)               {ceiling:10,.0f} msg/s per core")
    print(f"  pyas2lib (b)                     {ref or 0:10,.1f} msg/s per core")
    print(
        f"  ours, 1 client                   {one_rate:10,.1f} msg/s  ({per_core:,.1f} per server CPU-second)"
    )
    print(f"  ours, 8 clients                  {eight_rate:10,.1f} msg/s")
    if ref:
        ratio = per_core / ref
        verdict = "meets" if ratio >= TARGET_VS_PYAS2LIB else "MISSES"
        print(
            f"  ours per core / pyas2lib         {ratio:10,.1f}x  (target >= {TARGET_VS_PYAS2LIB:.0f}x: {verdict})"
        )
    verdict = "meets" if eight_rate >= TARGET_END_TO_END else "MISSES"
    print(f"  8 clients / target 400 msg/s     {eight_rate / TARGET_END_TO_END:10,.2f}   ({verdict})")
    print(f"  per core / crypto ceiling        {per_core / ceiling:10,.2f}")


if __name__ == "__main__":
    main()
