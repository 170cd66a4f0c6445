"""The ``gateway`` command line. Command and option names are fixed: scripts rely on them.

Every failure is one clear line on stderr and a non-zero exit; a traceback is shown
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway import __version__
from gateway.config import Config, load_config, parse_address
from gateway.envelope import Channel, Envelope
from gateway.errors import AdminError, GatewayError, Problem
from gateway.record import InteractionRecord, Kind, Status

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_REJECTED = 1  # some input was quarantined or refused
EXIT_ERROR = 2  # the command could not run (bad arguments, broken configuration)
EXIT_INTERNAL = 70


class UsageError(Exception):
    pass


# ---- helpers ----------------------------------------------------------------------


def _config_dir(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("GATEWAY_CONFIG") or "config")


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data or os.environ.get("GATEWAY_DATA") or "data")


def _load(args: argparse.Namespace) -> Config:
    config, _ = load_config(_config_dir(args))
    return config


def _open_pipeline(args: argparse.Namespace) -> Any:
    from gateway.pipeline import Pipeline

    return Pipeline.open(_load(args), _data_dir(args))


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty() and total > 1
        self.done = 0

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, sort_keys=False) + "\n")


def _summary(rec: InteractionRecord) -> str:
    partner = rec.partner.id if rec.partner else "(unresolved)"
    doc = " ".join(x for x in (rec.document.standard, rec.document.type, rec.document.control_number) if x)
    refs = " ".join(f"{k}={v}" for k, v in rec.references.items())
    when = rec.received_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    subject = f" {rec.subject!r}" if rec.subject else ""
    return f"{rec.id}  {when}  {rec.channel:<5} {rec.kind.value:<15} {partner:<14} {doc}  {refs}{subject}".rstrip()


def _show(rec: InteractionRecord) -> str:
    data = rec.to_json()
    out: list[str] = []
    for key, value in data.items():
        if key in {"lines", "parties", "attachments"}:
            out.append(f"{key}: {len(value)}")
            for item in value:
                out.append("  - " + ", ".join(f"{k}={v}" for k, v in item.items() if v is not None))
        elif isinstance(value, dict):
            shown = ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
            out.append(f"{key}: {shown}")
        else:
            out.append(f"{key}: {value if value is not None else ''}")
    if rec.body:
        out.append("body:")
        out.extend("  " + line for line in rec.body.splitlines()[:40])
    return "\n".join(out)


def _iter_paths(paths: Sequence[str]) -> Iterator[Path]:
    for text in paths:
        path = Path(text)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise UsageError(f"{text}: no such file or directory")


def _parse_since(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError(
            f"--since {text!r}: use an ISO 8601 date or time, e.g. 2024-05-01 or 2024-05-01T12:00"
        ) from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# ---- commands ---------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from gateway.pipeline import ProcessResult

    paths = list(_iter_paths(args.paths))
    pipeline = _open_pipeline(args)
    rejected = 0
    progress = Progress(len(paths), "ingest")
    try:
        for path in paths:
            channel = (
                Channel(args.channel)
                if args.channel
                else (Channel.EMAIL if path.suffix.lower() == ".eml" else Channel.FILE)
            )
            if _refused_as_too_large(path, pipeline.config, args.json):
                rejected += 1
                progress.step()
                continue
            raw = pipeline.accept(
                Envelope(
                    raw=path.read_bytes(),
                    channel=channel,
                    filename=path.name,
                    transport={"path": str(path.resolve())},
                )
            )
            claimed = pipeline.store.claim_id(raw.id, "ingest")
            result: ProcessResult = pipeline.process(claimed or raw)
            rejected += _report(result, path, args.json)
            progress.step()
    finally:
        progress.close()
        pipeline.close()
    return EXIT_REJECTED if rejected else EXIT_OK


def _refused_as_too_large(path: Path, config: Config, as_json: bool) -> bool:
    """Refuse a file over the size limit before reading it (and say so)."""
    limit = config.settings.limits.max_message_bytes
    size = path.stat().st_size
    if size <= limit:
        return False
    reason = f"{size} bytes exceeds limits.max_message_bytes ({limit})"
    if as_json:
        _emit({"refused": {"reason": reason}, "file": str(path)})
    else:
        print(f"{path}: refused: {reason}")
    return True


def _report(result: Any, path: Path | None, as_json: bool) -> int:
    from gateway.store import RawState

    name = str(path) if path is not None else (result.raw.filename or result.raw.id)
    if result.state == RawState.QUARANTINED and result.quarantine is not None:
        q = result.quarantine
        if as_json:
            _emit({"quarantine": _quarantine_json(q), "file": name})
        else:
            print(f"{name}: quarantined {q.id} at {q.stage}: {q.reason}")
        return 1
    if result.state == RawState.DUPLICATE and not result.records:
        if as_json:
            _emit(
                {
                    "duplicate": {
                        "raw_id": result.raw.id,
                        "duplicate_of_raw": result.duplicate_of_raw,
                        "duplicate_of": list(result.duplicate_records),
                    },
                    "file": name,
                }
            )
        else:
            print(f"{name}: duplicate of {result.duplicate_of_raw} (nothing new stored)")
        return 0
    if result.stored_count and not result.records:
        # A large interchange: its records went to the store in batches, not kept here.
        if as_json:
            _emit(
                {
                    "stored": {
                        "raw_id": result.raw.id,
                        "interactions": result.stored_count,
                        "duplicates": result.duplicate_count,
                    },
                    "file": name,
                }
            )
        else:
            print(
                f"{name}: stored {result.stored_count} interaction(s), {result.duplicate_count} duplicate(s);"
                f" list them with: gateway interactions"
            )
        return 0
    for rec in result.records:
        if as_json:
            _emit(rec.to_json())
        else:
            print(_summary(rec))
    for dup in result.duplicate_records:
        if as_json:
            _emit({"duplicate": {"raw_id": result.raw.id, "duplicate_of": [dup]}, "file": name})
        else:
            print(f"{name}: one document is a duplicate of interaction {dup}")
    return 0


def _quarantine_json(q: Any) -> dict[str, Any]:
    return {
        "id": q.id,
        "raw_id": q.raw_id,
        "stage": q.stage,
        "reason": q.reason,
        "created_at": q.created_at.isoformat(),
        "channel": q.channel,
        "filename": q.filename,
        "raw_sha256": q.raw_sha256,
        "replays": q.replays,
        "resolved_at": q.resolved_at.isoformat() if q.resolved_at else None,
    }


def cmd_interactions(args: argparse.Namespace) -> int:
    from gateway.store import Store

    config = _load(args)
    store = _store(config, args)
    try:
        if args.action == "show":
            rec = store.get_interaction(args.id)
            if rec is None:
                raise UsageError(f"no interaction {args.id}")
            entry = _as2_entry(store, rec.id) if rec.channel == Channel.AS2.value else None
            if args.json:
                data = rec.to_json()
                if entry is not None:
                    data["as2"] = _as2_json(entry)
                _emit(data)
            else:
                print(_show(rec))
                if entry is not None:
                    print(_show_as2(entry))
            return EXIT_OK
        if args.kind and args.kind not in {k.value for k in Kind}:
            raise UsageError(f"--kind {args.kind!r}: one of {', '.join(k.value for k in Kind)}")
        records = store.list_interactions(
            partner=args.partner,
            channel=args.channel,
            kind=args.kind,
            since=_parse_since(args.since) if args.since else None,
            limit=args.limit,
        )
        for rec in records:
            if args.json:
                _emit(rec.to_json())
            else:
                print(_summary(rec))
        return EXIT_OK
    finally:
        Store.close(store)


def _as2_entry(store: Any, interaction_id: str) -> Any:
    """The AS2 ledger entry (Message-ID, MDN, send state) of an interaction's raw message."""
    from gateway.as2.ledger import mdn_for_raw, raw_id_for_interaction

    raw_id = raw_id_for_interaction(store, interaction_id)
    return None if raw_id is None else mdn_for_raw(store, raw_id)


def _as2_json(entry: Any) -> dict[str, Any]:
    from gateway.as2.outbound import entry_json

    data = entry_json(entry)
    mdn = entry.mdn_bytes()
    data["mdn"] = None if mdn is None else mdn.decode("latin-1")
    return data


def _show_as2(entry: Any) -> str:
    from gateway.as2.outbound import entry_json

    data = entry_json(entry)
    out = ["as2:"]
    for key, value in data.items():
        if key != "mdn" and value not in (None, ""):
            out.append(f"  {key}: {value}")
    mdn = entry.mdn_bytes()
    if mdn is not None:
        out.append("  mdn:")
        out.extend("    " + line for line in mdn.decode("latin-1").splitlines()[:80])
    return "\n".join(out)


def _default_mdn_url(config: Config) -> str:
    listener = config.settings.as2
    tls = config.settings.as2_settings
    scheme = "https" if tls.tls_certificate is not None and tls.tls_key is not None else "http"
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    return f"{scheme}://{host}:{listener.port}{tls.path}"


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.as2.outbound import OutboundSender, SendError, entry_json
    from gateway.as2.profiles import load_profiles
    from gateway.errors import TooLarge

    if args.status:
        return _send_status(args)
    if not args.partner:
        raise UsageError("--partner ID is required (or --status to list sends)")
    if not args.paths:
        raise UsageError("give at least one FILE to send")
    paths = list(_iter_paths(args.paths))
    pipeline = _open_pipeline(args)
    profile = pipeline.config.partner(args.partner)
    via = args.via
    if via is None and profile is not None:
        has_as2_url = bool(getattr(getattr(profile, "as2", None), "url", None))
        via = "sftp" if profile.sftp_deliver is not None and not has_as2_url else "as2"
    if via == "sftp":
        try:
            return _send_sftp(args, pipeline, paths)
        finally:
            pipeline.close()
    outbound = OutboundSender(
        pipeline.config,
        load_profiles(pipeline.config),
        pipeline.store,
        pipeline.archive,
        pipeline.registry,
        mdn_url=args.mdn_url or _default_mdn_url(pipeline.config),
    )
    failed = 0
    progress = Progress(len(paths), "send")
    try:
        try:
            outbound.partner(args.partner)
        except SendError as exc:
            raise UsageError(exc.message) from None
        for path in paths:
            try:
                result = outbound.send_file(args.partner, path)
            except (TooLarge, SendError) as exc:
                if args.json:
                    _emit({"refused": {"reason": exc.message}, "file": str(path)})
                else:
                    print(f"{path}: refused: {exc.message}")
                failed += 1
                progress.step()
                continue
            entry = result.entry
            if not result.ok:
                failed += 1
            if args.json:
                _emit(
                    {
                        "file": str(path),
                        "as2": entry_json(entry),
                        "interactions": [rec.to_json() for rec in result.records],
                    }
                )
            else:
                line = f"{path}: {entry.async_state} ({entry.status}) message <{entry.message_id}>"
                if entry.async_error:
                    line += f": {entry.async_error}"
                if entry.async_state == "pending" and entry.async_next_at is not None:
                    line += f"; next attempt {entry.async_next_at:%Y-%m-%d %H:%M:%S} UTC by `gateway run`"
                print(line)
                for rec in result.records:
                    print("  " + _summary(rec))
            progress.step()
    finally:
        progress.close()
        outbound.close()
        pipeline.close()
    return EXIT_REJECTED if failed else EXIT_OK


def _send_sftp(args: argparse.Namespace, pipeline: Any, paths: list[Path]) -> int:
    """Upload each file to the partner's SFTP inbox and record it as an outbound interaction."""
    from adapters.sftp_poll import DeliveryError, SftpDeliverer
    from gateway.outbound import outbound_records
    from gateway.record import PartnerRef

    deliverer = SftpDeliverer(pipeline.config, pipeline.store, _data_dir(args))
    try:
        deliverer.target(args.partner)
    except DeliveryError as exc:
        raise UsageError(str(exc)) from None
    profile = pipeline.config.partner(args.partner)
    partner = PartnerRef(profile.id, profile.name)
    failed = 0
    for path in paths:
        if _refused_as_too_large(path, pipeline.config, args.json):
            failed += 1
            continue
        data = path.read_bytes()
        envelope = Envelope(
            raw=data,
            channel=Channel.SFTP,
            filename=path.name,
            transport={"direction": "outbound", "sftp_deliver": args.partner},
        )
        sha = pipeline.archive.put(data)
        # born claimed: an inbox worker must never read our own outbound file as inbound
        raw = pipeline.store.add_raw(envelope, sha, claimed_by="send")
        delivery = deliverer.deliver(args.partner, path.name, data)
        refs = {"sftp_delivery": delivery.id, "sftp_state": delivery.state}
        if delivery.path:
            refs["sftp_path"] = delivery.path
        records = outbound_records(
            raw,
            data,
            channel=Channel.SFTP.value,
            partner=partner,
            our_ids={"sftp": "gateway"},
            references=refs,
            registry=pipeline.registry,
        )
        pipeline.store.store_interactions(
            raw.id, [(rec, f"OUT|sftp|{args.partner}|{delivery.id}|{i}") for i, rec in enumerate(records)]
        )
        if delivery.state != "delivered":
            failed += 1
        if args.json:
            _emit(
                {
                    "file": str(path),
                    "sftp": {
                        "id": delivery.id,
                        "state": delivery.state,
                        "path": delivery.path,
                        "error": delivery.error,
                        "next_at": delivery.next_at.isoformat() if delivery.next_at else None,
                    },
                    "interactions": [rec.to_json() for rec in records],
                }
            )
        else:
            line = f"{path}: {delivery.state} over SFTP"
            line += (
                f" to {delivery.path}" if delivery.path else f": {delivery.error}; retried by `gateway run`"
            )
            print(line)
            for rec in records:
                print("  " + _summary(rec))
    return EXIT_REJECTED if failed else EXIT_OK


def _send_status(args: argparse.Namespace) -> int:
    from gateway.as2.ledger import OUT_STATES, Ledger
    from gateway.as2.outbound import entry_json

    states: tuple[str, ...] = ()
    if args.state:
        states = tuple(s.strip() for s in args.state.split(",") if s.strip())
        unknown = [s for s in states if s not in OUT_STATES]
        if unknown:
            raise UsageError(f"--state {','.join(unknown)}: one of {', '.join(OUT_STATES)}")
    store = _store(_load(args), args)
    try:
        for entry in Ledger(store).list_outbound(partner_id=args.partner, states=states, limit=args.limit):
            interactions = store.interactions_for_raw(entry.raw_id) if entry.raw_id else []
            if args.json:
                _emit({**entry_json(entry), "interactions": interactions})
                continue
            line = (
                f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.partner_id:<14} <{entry.message_id}>  "
                f"{entry.async_state} ({entry.status}) attempts={entry.async_attempts}"
            )
            if entry.async_state == "pending" and entry.async_next_at is not None:
                line += f" next={entry.async_next_at:%Y-%m-%d %H:%M:%S}"
            if entry.async_error:
                line += f"  last error: {entry.async_error}"
            if interactions:
                line += f"  interactions: {' '.join(interactions)}"
            print(line)
        return EXIT_OK
    finally:
        store.close()


def _store(config: Config, args: argparse.Namespace) -> Any:
    from gateway.store import Store

    url = config.settings.store_url
    if config.settings.store_url_secret is not None:
        url = config.settings.store_url_secret.read()
    data = _data_dir(args)
    data.mkdir(parents=True, exist_ok=True)
    store = Store(url) if url else Store.for_data_dir(data)
    store.migrate()
    return store


def cmd_quarantine(args: argparse.Namespace) -> int:
    store = _store(_load(args), args)
    try:
        entries = store.list_quarantine(include_resolved=args.all)
        for q in entries:
            if args.json:
                _emit(_quarantine_json(q))
            else:
                name = q.filename or q.raw_id
                print(
                    f"{q.id}  {q.created_at:%Y-%m-%d %H:%M:%S}  {q.channel:<5} {name}  [{q.stage}] {q.reason}"
                )
        return EXIT_OK
    finally:
        store.close()


def cmd_replay(args: argparse.Namespace) -> int:
    if not args.all and not args.id:
        raise UsageError("give a quarantine id (or raw message id), or --all")
    pipeline = _open_pipeline(args)
    try:
        if args.all:
            raw_ids = [q.raw_id for q in pipeline.store.list_quarantine()]
        else:
            entry = pipeline.store.get_quarantine(args.id)
            raw_ids = [entry.raw_id if entry is not None else args.id]
            if entry is None and pipeline.store.get_raw(args.id) is None:
                raise UsageError(f"no quarantine entry or raw message {args.id}")
        rejected = 0
        progress = Progress(len(raw_ids), "replay")
        for raw_id in raw_ids:
            result = pipeline.replay(raw_id)
            rejected += _report(result, None, args.json)
            progress.step()
        progress.close()
        if not raw_ids and not args.json:
            print("quarantine is empty")
        return EXIT_REJECTED if rejected else EXIT_OK
    finally:
        pipeline.close()


def cmd_mapping_check(args: argparse.Namespace) -> int:
    from gateway.mapping import check_mapping_files

    if args.files:
        files = [Path(f) for f in args.files]
    else:
        files = sorted(_load(args).settings.mappings_dir.glob("*.xml"))
    problems = check_mapping_files(files)
    for problem in problems:
        print(str(problem), file=sys.stderr)
    if not problems:
        print(f"{len(files)} mapping file(s) OK")
    return EXIT_REJECTED if problems else EXIT_OK


def cmd_mapping_test(args: argparse.Namespace) -> int:
    from gateway.mapping import load_mapping
    from gateway.parsers.detect import parse_document
    from gateway.pipeline import _flatten

    sample = Path(args.sample)
    data = sample.read_bytes()
    channel = args.channel or ("email" if sample.suffix.lower() == ".eml" else "file")
    mapping = load_mapping(Path(args.mapping))
    units = [unit for unit, _ in _flatten(parse_document(data, channel=channel, filename=sample.name))]
    matching = [u for u in units if mapping.score(u, channel, args.partner) is not None]
    if not matching:
        found = ", ".join(sorted({f"{u.standard} {u.doc_type}" for u in units})) or "nothing"
        raise UsageError(f"{args.mapping} matches none of the documents in {args.sample} (found: {found})")
    for unit in units:
        if unit not in matching:
            print(
                f"unit {unit.index} ({unit.standard} {unit.doc_type}): not matched by this mapping, skipped",
                file=sys.stderr,
            )
    for unit in matching:
        try:
            result = mapping.apply(unit)
        except GatewayError as exc:
            raise UsageError(f"unit {unit.index} ({unit.standard} {unit.doc_type}): {exc.message}") from None
        preview = result.to_record(
            id="(preview)",
            channel=channel,
            received_at=datetime.now(UTC),
            raw_sha256="0" * 64,
            status=Status.UNRESOLVED,
            sender=dict(unit.sender),
        )
        if args.json:
            _emit(preview.to_json())
        else:
            print(_show(preview))
            print()
    return EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.mapping import check_mapping_files

    directory = _config_dir(args)
    config, problems = load_config(directory, strict=False)
    problems = list(problems)
    if config.settings.mappings_dir.is_dir():
        problems.extend(check_mapping_files(sorted(config.settings.mappings_dir.glob("*.xml"))))
    for problem in problems:
        print(str(problem), file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return EXIT_REJECTED
    print(f"{directory}: OK ({len(config.partners)} partner profile(s))")
    return EXIT_OK


def _parse_sftp_url(text: str) -> tuple[str, str, int, str]:
    """``sftp://USER@HOST:PORT/PATH`` as (user, host, port, folder)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(text)
    if parts.scheme != "sftp" or not parts.hostname or not parts.username:
        raise UsageError(f"{text!r}: write sftp://USER@HOST:PORT/PATH")
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise UsageError(f"{text!r}: {exc}") from None
    path = unquote(parts.path) or "/"
    if path.startswith("/~/"):
        path = path[3:] or "."  # relative to the login directory
    elif path == "/~":
        path = "."
    return unquote(parts.username), parts.hostname, port, path


def cmd_fetch(args: argparse.Namespace) -> int:
    from adapters.sftp_poll import DropPoller, RemoteFile
    from gateway.config import SftpConnection, SftpDrop, check_host_key
    from gateway.store import RawMessage

    user, host, port, folder = _parse_sftp_url(args.url)
    reason = check_host_key(args.host_key)
    if reason is not None:
        raise UsageError(f"--host-key: {reason}")
    identity = Path(args.identity)
    if not identity.is_file():
        raise UsageError(f"--identity {args.identity}: no such file")
    after = args.after
    if after != "delete" and not (after.startswith("move:") and after[5:].strip()):
        raise UsageError(f'--after {after!r}: use "delete" or "move:DIR"')
    drop = SftpDrop(
        partner="",
        name="fetch",
        connection=SftpConnection(
            host=host,
            user=user,
            port=port,
            host_key=" ".join(args.host_key.split()[:2]),
            key=identity.resolve(),
        ),
        folder=folder,
        patterns=tuple(args.pattern or ["*"]),
        after=after,
        settle=args.settle,
    )
    pipeline = _open_pipeline(args)
    done: list[tuple[RawMessage, RemoteFile]] = []
    try:
        poller = DropPoller(
            drop,
            pipeline.store,
            data_dir=_data_dir(args),
            max_bytes=pipeline.config.settings.limits.max_message_bytes,
            holder=f"fetch-{os.getpid()}",
            record_status=False,
        )
        poller.on_done = lambda raw, remote: done.append((raw, remote))
        result = poller.poll(pipeline.accept, force=True)
        if result.error is not None:
            raise UsageError(f"fetch {user}@{host}:{port}{folder}: {result.error}")
        rejected = result.refused
        for raw, remote in done:
            claimed = pipeline.store.claim_id(raw.id, "fetch")
            if claimed is None:
                if not args.json:
                    print(f"{remote.name}: already processed (raw message {raw.id})")
                continue
            rejected += _report(pipeline.process(claimed), Path(remote.path), args.json)
        if not args.json:
            print(
                f"fetched {result.taken} file(s), {result.recognised} already in the inbox, "
                f"{result.refused} refused, {result.waiting} not complete yet",
                file=sys.stderr,
            )
        return EXIT_REJECTED if rejected else EXIT_OK
    finally:
        pipeline.close()


def cmd_drops(args: argparse.Namespace) -> int:
    from adapters.sftp_poll import configured_drops, load_status

    config = _load(args)
    store = _store(config, args)
    try:
        for drop in configured_drops(config):
            st = load_status(store, drop)
            c = drop.connection
            if args.json:
                _emit(
                    {
                        "drop": drop.key,
                        "partner": drop.partner,
                        "name": drop.name,
                        "host": c.host,
                        "port": c.port,
                        "user": c.user,
                        "folder": drop.folder,
                        "schedule": f"cron {drop.cron}" if drop.cron else f"every {drop.interval:g}s",
                        **{k: v for k, v in st.to_json().items() if k != "name"},
                    }
                )
                continue
            when = f"{st.last_run:%Y-%m-%d %H:%M:%S}" if st.last_run else "never"
            line = (
                f"{drop.key:<24} {c.user}@{c.host}:{c.port}:{drop.folder}  last run {when}  "
                f"taken={st.taken} recognised={st.recognised} refused={st.refused}"
            )
            if st.last_error:
                line += f"  last error: {st.last_error} (failures={st.failures})"
            print(line)
        return EXIT_OK
    finally:
        store.close()


def cmd_run(args: argparse.Namespace) -> int:
    from adapters import Adapter, RunOptions, factories
    from gateway.pipeline import Pipeline

    for flag in ("as2", "smtp", "sftp"):
        value = getattr(args, flag)
        if value:

            def bad(reason: str, flag: str = flag) -> None:
                raise UsageError(f"--{flag}: {reason}")

            parse_address(value, 0, bad)
    config = _load(args)
    data = _data_dir(args)
    pipeline = Pipeline.open(config, data)
    options = RunOptions(
        data_dir=str(data),
        as2=args.as2,
        smtp=args.smtp,
        sftp=args.sftp,
        no_as2=args.no_as2,
        no_smtp=args.no_smtp,
        no_sftp=args.no_sftp,
    )
    stop = threading.Event()
    started: list[Adapter] = []

    def _stop(signum: int, frame: object) -> None:
        del frame
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        pipeline.recover()
        adapters = [(name, factory(config, options)) for name, factory in factories().items()]
        if args.once:
            # One pass, in the foreground: what is in the drop folder now, then the inbox.
            for _, adapter in adapters:
                poll = getattr(adapter, "poll_once", None)
                if poll is not None:
                    poll(pipeline.accept, force=True)
            done = pipeline.drain("once")
            print(f"gateway ran once: processed {done} message(s)", flush=True)
            return EXIT_OK
        for name, adapter in adapters:
            if adapter is None:
                continue
            adapter.start(pipeline.accept)
            started.append(adapter)
            print(f"started {name}: {adapter.describe()}", flush=True)
        workers = [
            threading.Thread(target=pipeline.run_worker, args=(stop, f"worker-{i}"), daemon=True)
            for i in range(config.settings.processing.workers)
        ]
        for worker in workers:
            worker.start()
        print(f"gateway running: config {config.directory}, data {data.resolve()}; Ctrl-C stops", flush=True)
        while not stop.wait(0.5):
            pass
        for worker in workers:
            worker.join(timeout=30)
    finally:
        for adapter in started:
            adapter.stop()
        pipeline.close()
    return EXIT_OK


# ---- argument parsing -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="B2B channel gateway")
    p.add_argument("--version", action="version", version=f"gateway {__version__}")
    p.add_argument(
        "--config", metavar="DIR", help="configuration directory (env GATEWAY_CONFIG, default ./config)"
    )
    p.add_argument("--data", metavar="DIR", help="data directory (env GATEWAY_DATA, default ./data)")
    p.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "WARNING"))
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="start everything configured and process the inbox")
    for flag in ("as2", "smtp", "sftp"):
        run.add_argument(
            f"--{flag}", metavar="HOST:PORT", help=f"override the configured {flag} listener address"
        )
        run.add_argument(f"--no-{flag}", action="store_true", help=f"do not start the {flag} listener")
    run.add_argument("--once", action="store_true", help="process what is in the inbox, then exit")
    run.set_defaults(func=cmd_run, log_default="INFO")

    ingest = sub.add_parser("ingest", help="take files in as if they arrived on a channel")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.add_argument("--channel", choices=[c.value for c in Channel])
    ingest.add_argument("--json", action="store_true")
    ingest.set_defaults(func=cmd_ingest)

    inter = sub.add_parser("interactions", help="list interactions, or show one")
    inter.add_argument("--partner")
    inter.add_argument("--channel", choices=[c.value for c in Channel])
    inter.add_argument("--kind")
    inter.add_argument("--since", metavar="T", help="ISO 8601 date or time")
    inter.add_argument("--limit", type=int, metavar="N")
    inter.add_argument("--json", action="store_true")
    inter.set_defaults(func=cmd_interactions, action="list")
    inter_sub = inter.add_subparsers(dest="action", metavar="ACTION")
    show = inter_sub.add_parser("show", help="one interaction in full")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    quar = sub.add_parser("quarantine", help="list quarantined messages")
    quar.add_argument("--all", action="store_true", help="include resolved entries")
    quar.add_argument("--json", action="store_true")
    quar.set_defaults(func=cmd_quarantine)

    replay = sub.add_parser("replay", help="process quarantined messages again")
    replay.add_argument("id", nargs="?")
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_replay)

    send = sub.add_parser("send", help="send files to a partner over AS2 or SFTP")
    send.add_argument(
        "--via",
        choices=["as2", "sftp"],
        help="the channel (default: AS2 when the profile has as2.url, else its [sftp.deliver])",
    )
    send.add_argument("paths", nargs="*", metavar="FILE")
    send.add_argument("--partner", metavar="ID", help="the partner profile id")
    send.add_argument(
        "--mdn-url", metavar="URL", help="our endpoint for asynchronous MDNs (default: as2.listen)"
    )
    send.add_argument("--status", action="store_true", help="list outbound AS2 messages and their state")
    send.add_argument(
        "--state", metavar="S[,S]", help="with --status: only these states (pending, failed ...)"
    )
    send.add_argument("--limit", type=int, metavar="N", help="with --status: at most N, newest first")
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=cmd_send)

    fetch = sub.add_parser("fetch", help="pick up the files of a partner's SFTP folder once")
    fetch.add_argument("url", metavar="sftp://USER@HOST:PORT/PATH")
    fetch.add_argument("--identity", required=True, metavar="KEYFILE", help="our SSH private key")
    fetch.add_argument(
        "--host-key", required=True, metavar='"TYPE BASE64"', help="the server's host key (ssh-keyscan)"
    )
    fetch.add_argument("--pattern", action="append", metavar="GLOB", help="file name pattern (repeatable)")
    fetch.add_argument("--after", default="delete", metavar="delete|move:DIR")
    fetch.add_argument(
        "--settle", type=float, default=2.0, metavar="SECONDS", help="size and mtime unchanged this long"
    )
    fetch.add_argument("--json", action="store_true")
    fetch.set_defaults(func=cmd_fetch)

    drops = sub.add_parser("drops", help="the configured SFTP drops: last run, last error, counts")
    drops.add_argument("--json", action="store_true")
    drops.set_defaults(func=cmd_drops)

    mapping = sub.add_parser("mapping", help="check and try mapping files")
    msub = mapping.add_subparsers(dest="action", metavar="ACTION", required=True)
    mcheck = msub.add_parser("check", help="validate mapping files (all shipped ones by default)")
    mcheck.add_argument("files", nargs="*", metavar="FILE")
    mcheck.set_defaults(func=cmd_mapping_check)
    mtest = msub.add_parser("test", help="the record a mapping would produce from a sample")
    mtest.add_argument("mapping", metavar="MAPPING")
    mtest.add_argument("sample", metavar="SAMPLE")
    mtest.add_argument("--channel", choices=[c.value for c in Channel])
    mtest.add_argument("--partner", help="preview as if the sample came from this partner")
    mtest.add_argument("--json", action="store_true")
    mtest.set_defaults(func=cmd_mapping_test)

    config = sub.add_parser("config", help="check the configuration")
    csub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    ccheck = csub.add_parser("check", help="report every problem in the configuration at once")
    ccheck.set_defaults(func=cmd_config_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (
        args.log_level
        if "--log-level" in (argv or sys.argv)
        else getattr(args, "log_default", args.log_level)
    )
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except AdminError as exc:
        for problem in exc.problems:
            print(f"gateway: {problem}", file=sys.stderr)
        return EXIT_ERROR
    except (GatewayError, UsageError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"gateway: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # the last line of defence: never a traceback to a user
        if args.debug:
            raise
        print(
            f"gateway: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def problems_text(problems: Sequence[Problem]) -> str:
    return "\n".join(str(p) for p in problems)
