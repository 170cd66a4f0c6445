"""Core pipeline benchmark (issue 2). Not part of the test run.

Measures, on the embedded SQLite store:
  1. 10,000 separate X12 850 interchanges of about 1 KB, each durably accepted
     (archive fsync + inbox commit) and processed: files per second.
  2. One EDIFACT interchange of 10,000 ORDERS messages through the whole pipeline:
     messages per second, with the time per stage.
  3. Reference, same run, same input: pydifact's parse alone of that interchange.
  4. Optionally (--big) a ~50 MB X12 interchange: peak memory (RSS high-water mark).
  5. Accepted durably only (no processing), from 1 and from 16 threads at once (as
     adapters with many connections call it): accepts per second, each one durable
     when it returns (group commit batches the concurrent ones). In-process, bounded
     by --accepts per measurement and --seconds.

    .venv/bin/python bench/pipeline.py [--files N] [--messages N] [--big]
    .venv/bin/python bench/pipeline.py --only-accept [--accepts N] [--seconds S]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import load_config
from gateway.envelope import Channel, Envelope
from gateway.pipeline import Pipeline

REPO = Path(__file__).resolve().parent.parent


def x12_850(n: int) -> bytes:
    isa = (
        f"ISA*00*          *00*          *ZZ*DEMOPARTNER    *ZZ*GATEWAY        "
        f"*240101*1200*U*00401*{n:09d}*0*P*>~"
    )
    segs = [
        "ST*850*0001",
        f"BEG*00*SA*PO{n:07d}**20240101",
        "CUR*BY*USD",
        "REF*DP*038",
        "DTM*002*20240115",
        "N1*ST*DEMO WAREHOUSE*92*0001",
        "N3*1 INDUSTRIAL WAY",
        "N4*SPRINGFIELD*IL*62701*US",
        "N1*BT*DEMO ACCOUNTS*92*0002",
    ]
    for i in range(1, 9):
        segs.append(f"PO1*{i}*{i * 3}*EA*{i}.25**VP*PART-{i:04d}*BP*BUY-{i:04d}")
        segs.append(f"PID*F****WIDGET MODEL {i} STAINLESS")
    segs.append("CTT*8")
    segs.append(f"SE*{len(segs) + 1}*0001")
    body = "~".join(segs) + "~"
    gs = f"GS*PO*DEMOPARTNER*GATEWAY*20240101*1200*{n}*X*004010~"
    ge = f"GE*1*{n}~"
    iea = f"IEA*1*{n:09d}~"
    return (isa + gs + body + ge + iea).encode()


def edifact_orders(count: int) -> bytes:
    # Values vary per message and per line, as in real orders, so that no cache of
    # repeated segments makes the figures look better than real data would.
    out = ["UNB+UNOC:3+DEMOPARTNER:ZZ+GATEWAY:ZZ+240101:1200+BIG1"]
    for m in range(1, count + 1):
        segs = [
            f"UNH+{m}+ORDERS:D:96A:UN:EAN008",
            f"BGM+220+PO{m:07d}+9",
            f"DTM+137:2024{1 + m % 12:02d}{1 + m % 28:02d}:102",
            f"NAD+BY+54123{m % 100000:05d}013::9",
            f"NAD+SU+40123{(m * 7) % 100000:05d}009::9",
            "CUX+2:EUR:9",
        ]
        for i in range(1, 6):
            segs += [
                f"LIN+{i}++4{m % 1000000:06d}{i:05d}:EN",
                f"QTY+21:{(m + i) % 97 + 1}",
                f"PRI+AAA:{(m * i) % 500 + 1}.{i * 7 % 100:02d}",
            ]
        segs += ["UNS+S", "CNT+2:5"]
        segs.append(f"UNT+{len(segs) + 1}+{m}")
        out.extend(segs)
    out.append(f"UNZ+{count}+BIG1")
    return ("UNA:+.? '" + "'".join(out) + "'").encode("latin-1")


def open_pipeline(data: Path) -> Pipeline:
    config, _ = load_config(REPO / "config")
    return Pipeline.open(config, data)


def bench_files(n: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="bench-files-"))
    pipe = open_pipeline(data)
    docs = [x12_850(i + 1) for i in range(n)]
    t0 = time.perf_counter()
    raws = [
        pipe.accept(Envelope(raw=d, channel=Channel.FILE, filename=f"po{i}.edi")) for i, d in enumerate(docs)
    ]
    t_accept = time.perf_counter() - t0
    processed = pipe.drain("bench")
    t_total = time.perf_counter() - t0
    counts = pipe.store.counts()
    pipe.close()
    shutil.rmtree(data)
    size = sum(map(len, docs)) / n
    print(f"[files] {n} X12 850 interchanges of {size:.0f} bytes as separate files")
    print(f"  accepted durably: {n / t_accept:8.0f} files/s  ({t_accept:.2f} s)")
    print(f"  accepted+processed end to end: {n / t_total:8.0f} files/s  ({t_total:.2f} s)")
    print(f"  store counts: {counts}; processed {processed} of {len(raws)}")


def bench_files_running(n: int) -> None:
    """As `gateway run` works: files accepted on one thread (an adapter) while the
    inbox worker processes on another. Each file is still durable before it counts."""
    import threading

    data = Path(tempfile.mkdtemp(prefix="bench-run-"))
    pipe = open_pipeline(data)
    docs = [x12_850(100_000 + i) for i in range(n)]
    stop = threading.Event()
    worker = threading.Thread(target=pipe.run_worker, args=(stop, "bench-worker"))
    t0 = time.perf_counter()
    worker.start()
    for i, d in enumerate(docs):
        pipe.accept(Envelope(raw=d, channel=Channel.FILE, filename=f"po{i}.edi"))
    t_accept = time.perf_counter() - t0
    while pipe.store.counts()["stored"] < n:
        time.sleep(0.01)
    t_total = time.perf_counter() - t0
    stop.set()
    worker.join()
    pipe.close()
    shutil.rmtree(data)
    print(f"[files, running] {n} files accepted on one thread while one worker processes (as gateway run)")
    print(f"  accepted durably: {n / t_accept:8.0f} files/s; all processed: {n / t_total:8.0f} files/s")


def bench_accept_threads(n: int, threads: int, seconds: float) -> None:
    """Only the durable accept, from ``threads`` threads at once; at most ``n`` accepts
    and about ``seconds`` seconds (whichever ends first)."""
    import threading

    data = Path(tempfile.mkdtemp(prefix="bench-accept-"))
    pipe = open_pipeline(data)
    base = 200_000 + threads * 1_000_000
    docs = [x12_850(base + i) for i in range(n)]
    lock = threading.Lock()
    next_doc = 0
    done = 0
    deadline = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def take() -> int | None:
        nonlocal next_doc
        with lock:
            if next_doc >= n or time.perf_counter() > deadline:
                return None
            next_doc += 1
            return next_doc - 1

    def worker() -> None:
        nonlocal done
        while (i := take()) is not None:
            try:
                pipe.accept(Envelope(raw=docs[i], channel=Channel.FILE, filename=f"po{i}.edi"))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            with lock:
                done += 1

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    took = time.perf_counter() - t0
    received = pipe.store.counts()["received"]
    pipe.close()
    shutil.rmtree(data)
    assert received == done, f"{done} accepted but {received} in the inbox"
    print(
        f"[accept] {threads:>2} thread(s): accepted durably {done / took:8.0f} files/s "
        f"({done} files in {took:.2f} s, {took / done * 1e3 * threads:.2f} ms per accept as a caller sees it)"
        + (f"; errors: {errors[:3]}" if errors else "")
    )


def bench_edifact(count: int) -> None:
    payload = edifact_orders(count)
    # Reference first, same input, same process.
    from pydifact.segmentcollection import Interchange

    t0 = time.perf_counter()
    ic = Interchange.from_str(payload.decode("latin-1"))
    n_ref = sum(1 for _ in ic.get_messages())
    t_ref = time.perf_counter() - t0
    data = Path(tempfile.mkdtemp(prefix="bench-edifact-"))
    pipe = open_pipeline(data)
    t0 = time.perf_counter()
    pipe.accept(Envelope(raw=payload, channel=Channel.FILE, filename="big.edi"))
    pipe.drain("bench")
    t_ours = time.perf_counter() - t0
    times = dict(pipe.times.seconds)
    units = pipe.times.units
    counts = pipe.store.counts()
    pipe.close()
    shutil.rmtree(data)
    mb = len(payload) / 1e6
    print(f"[edifact] one interchange of {count} ORDERS messages, {mb:.1f} MB")
    print(f"  pydifact parse only (reference): {n_ref / t_ref:8.0f} messages/s  {mb / t_ref:6.2f} MB/s")
    print(f"  gateway end to end:              {units / t_ours:8.0f} messages/s  {mb / t_ours:6.2f} MB/s")
    print(f"  ratio gateway end-to-end / pydifact parse-only: {(units / t_ours) / (n_ref / t_ref):.2f}x")
    print("  time per stage: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(times.items())))
    print(f"  store counts: {counts}")


def bench_big(target_mb: float) -> None:
    one = x12_850(1).decode()
    head, _, rest = one.partition("GS*")
    body = "GS*" + rest
    st_start = body.index("ST*")
    se_end = body.index("GE*")
    tset = body[st_start:se_end]
    sets = max(1, int(target_mb * 1e6 / len(tset)))
    txt = head + body[:st_start] + "".join(tset.replace("*0001", f"*{i:04d}") for i in range(1, sets + 1))
    txt += f"GE*{sets}*1~IEA*1*000000001~"
    payload = txt.encode()
    del txt
    data = Path(tempfile.mkdtemp(prefix="bench-big-"))
    pipe = open_pipeline(data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    pipe.accept(Envelope(raw=payload, channel=Channel.FILE, filename="big.x12"))
    pipe.drain("bench")
    took = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"[big] one X12 interchange, {len(payload) / 1e6:.1f} MB, {sets} sets: {took:.1f} s, "
        f"{sets / took:.0f} sets/s; peak RSS {peak:.0f} MB (before: {before:.0f} MB)"
    )
    print(f"  store counts: {pipe.store.counts()}")
    pipe.close()
    shutil.rmtree(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument(
        "--big",
        action="store_true",
        help="also the 50 MB memory check (run it alone: RSS is a high-water mark)",
    )
    ap.add_argument("--only-big", action="store_true")
    ap.add_argument("--accepts", type=int, default=5_000, help="accepts per threaded measurement")
    ap.add_argument("--seconds", type=float, default=20.0, help="time bound per threaded measurement")
    ap.add_argument("--only-accept", action="store_true", help="only the 1- and 16-thread accept measurement")
    args = ap.parse_args()
    if args.only_accept:
        for threads in (1, 16):
            bench_accept_threads(args.accepts, threads, args.seconds)
        return
    if not args.only_big:
        bench_files(args.files)
        bench_files_running(args.files)
        bench_edifact(args.messages)
        for threads in (1, 16):
            bench_accept_threads(args.accepts, threads, args.seconds)
    if args.big or args.only_big:
        bench_big(50)


if __name__ == "__main__":
    main()
