"""The SMTP server: aiosmtpd on its own event loop in a thread.

SMTP only: the session checks the envelope (recipients we accept, address syntax,
size, sender rules) and the sender headers, then hands the message, exactly the bytes
received with a ``Received:`` header prepended, to ``accept`` (archive fsync + inbox
commit) and answers ``250`` only once that returned. The message is parsed later by
the pipeline, never in the session. ``accept`` runs in a thread pool so the event loop
keeps serving other connections while one waits for its fsync.

Replies carry RFC 3463 enhanced status codes; docs/email.md lists every one.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import re
import ssl
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from email.utils import format_datetime, getaddresses
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from adapters import Accept, Adapter, RunOptions
from gateway.config import Config, SmtpSettings, address_matches, email_syntax_error, parse_address
from gateway.envelope import Channel, Envelope
from gateway.errors import GatewayError, TemporaryError, TooLarge
from gateway.logs import for_message
from gateway.partners import PartnerDirectory

log = logging.getLogger(__name__)

#: header fields whose addresses must be valid mailboxes (RFC 5322 originator fields)
SENDER_HEADERS = ("From", "Sender", "Reply-To")

# aiosmtpd's own replies that lack an enhanced status code, as we send them instead.
_SIZE_REPLY = "552 5.3.4 Message size exceeds the fixed maximum message size"
_REWRITES: dict[bytes, bytes] = {
    b"552 Error: message size exceeds fixed maximum message size": _SIZE_REPLY.encode(),
    b"552 Error: Too much mail data": _SIZE_REPLY.encode(),
    b"500 Line too long (see RFC5321 4.5.3.1.6)": b"500 5.5.6 Line too long (RFC 5321 4.5.3.1.6: 1000 octets)",
    b"530 Must issue a STARTTLS command first": b"530 5.7.0 Must issue a STARTTLS command first",
    b"500 Command line too long": b"500 5.5.2 Command line too long",
    b"500 Error: bad syntax": b"500 5.5.2 Syntax error",
    b"503 Error: nested MAIL command": b"503 5.5.1 Nested MAIL command",
    b"503 Error: need MAIL command": b"503 5.5.1 Need MAIL command",
    b"503 Error: need RCPT command": b"503 5.5.1 Need RCPT command",
    b"454 TLS not available": b"454 4.7.0 TLS not available",
}
_BAD_MAIL_FROM = b"501 5.1.7 Bad sender address syntax"


def default_workers() -> int:
    """Threads that run ``accept``. Most of an accept is waiting on fsync, and concurrent
    accepts share one commit (the pipeline's group commit), so more threads than cores
    let the messages of many connections be committed together."""
    return max(4, 4 * (os.cpu_count() or 1))


class GatewaySMTP(SMTP):
    """aiosmtpd's session with enhanced status codes where aiosmtpd has none, and
    ``501 5.1.7`` (not ``553 5.1.3``) for a MAIL FROM address it cannot parse."""

    _in_mail = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._in_mail = True
        try:
            await super().smtp_MAIL(arg)
        finally:
            self._in_mail = False

    async def push(self, status: AnyStr) -> None:
        raw = (
            status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") if isinstance(status, str) else status
        )
        assert isinstance(raw, bytes)
        if self._in_mail and raw.startswith(b"553 5.1.3"):
            raw = _BAD_MAIL_FROM
        await super().push(_REWRITES.get(raw, raw))


@functools.lru_cache(maxsize=8192)
def _syntax_error(address: str) -> str | None:
    """:func:`email_syntax_error` without DNS, remembered: partners send from few addresses."""
    return email_syntax_error(address)


def _null_sender(address: str) -> bool:
    return address in {"", "<>"}


def _clean(text: str, limit: int = 255) -> str:
    """Printable ASCII without spaces, parentheses or semicolons (safe in a header)."""
    return re.sub(r"[^\x21-\x7e]|[();]", "?", text)[:limit] or "unknown"


def _peer_literal(peer: Any) -> str:
    host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
    return f"[IPv6:{host}]" if ":" in host else f"[{host}]"


def received_header(
    *,
    helo: str | None,
    peer: Any,
    hostname: str,
    esmtp: bool,
    tls: bool,
    auth: bool,
    envelope_id: str,
    rcpt_tos: Sequence[str],
    when: datetime,
) -> bytes:
    """The trace field RFC 5321 4.4 asks a receiving server to prepend (RFC 3848 protocol)."""
    proto = ("ESMTP" if esmtp else "SMTP") + ("S" if tls else "") + ("A" if auth else "")
    if not esmtp and (tls or auth):
        proto = "ESMTP" + ("S" if tls else "") + ("A" if auth else "")
    recipient = f" for <{_clean(rcpt_tos[0], 320)}>" if len(rcpt_tos) == 1 else ""
    text = (
        f"Received: from {_clean(helo or 'unknown')} ({_peer_literal(peer)})\r\n"
        f"\tby {_clean(hostname)} with {proto} id {envelope_id}{recipient};\r\n"
        f"\t{format_datetime(when)}\r\n"
    )
    return text.encode("ascii", "replace")


def _header_block(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
    return content if end < 0 else content[: end + 2]


#: an originator header field with its continuation lines (RFC 5322 2.2.3 folding)
_SENDER_FIELD = re.compile(
    rb"^(from|sender|reply-to)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
_FIELD_NAMES = {name.lower(): name for name in SENDER_HEADERS}


def sender_fields(content: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of the originator fields in the header block, in order.

    A scan, not a MIME parse: the session stays fast; the pipeline parses the message.
    8-bit values are read as UTF-8 (RFC 6532), else Latin-1.
    """
    out: list[tuple[str, str]] = []
    for match in _SENDER_FIELD.finditer(_header_block(content)):
        raw = re.sub(rb"\r?\n(?=[ \t])", b"", match.group(2)).strip()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = raw.decode("latin-1")
        out.append((_FIELD_NAMES[match.group(1).decode("ascii").lower()], value))
    return out


class SmtpHandler:
    """The aiosmtpd handler: the gateway's rules for each SMTP command."""

    def __init__(
        self,
        config: Config,
        accept: Accept,
        executor: ThreadPoolExecutor | None,
        *,
        hostname: str,
        passwords: dict[str, bytes] | None = None,
    ) -> None:
        self.config = config
        self.settings: SmtpSettings = config.settings.smtp_settings
        self.accept = accept
        self.executor = executor
        self.hostname = hostname
        self.passwords = passwords or {}
        self.partners = PartnerDirectory(config.partners)

    # ---- sender rules ---------------------------------------------------------------

    def sender_refused(self, address: str) -> str | None:
        """The partner ``address`` claims to be, when its ``[email] senders`` exclude it."""
        ref = self.partners.resolve({"email": address.lower()})
        if ref is None:
            return None
        profile = self.partners.get(ref.id)
        if profile is None or profile.email is None or not profile.email.senders:
            return None
        if address_matches(address, profile.email.senders):
            return None
        return ref.id

    async def _syntax_error(self, address: str, *, dns: bool) -> str | None:
        if dns and self.settings.check_dns:
            # a DNS lookup blocks: not on the event loop
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.executor, lambda: email_syntax_error(address, check_dns=True)
            )
        return _syntax_error(address)

    # ---- aiosmtpd hooks -------------------------------------------------------------

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, mail_options: list[str]
    ) -> str:
        del server
        if not _null_sender(address):
            reason = await self._syntax_error(address, dns=True)
            if reason is not None:
                log.info("MAIL FROM refused from %s: bad syntax", _peer_literal(session.peer))
                return f"501 5.1.7 Bad sender address syntax: {reason}"
            partner = self.sender_refused(address)
            if partner is not None:
                log.warning(
                    "MAIL FROM refused from %s: not among partner %s's senders",
                    _peer_literal(session.peer),
                    partner,
                )
                return "550 5.7.1 Sender not authorised to send as this partner"
        # "<>" (not ""): aiosmtpd wants a true value before it takes RCPT
        envelope.mail_from = "<>" if _null_sender(address) else address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        del server
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        reason = _syntax_error(address)
        if reason is not None:
            return f"553 5.1.3 Bad recipient address syntax: {reason}"
        if not address_matches(address, self.settings.accept):
            log.info("RCPT refused from %s: not a recipient we accept mail for", _peer_literal(session.peer))
            return "550 5.7.1 Relaying denied: we accept mail for configured recipients only"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    def check_headers(self, content: bytes) -> str | None:
        """A refusal when an originator header holds an address that is not a mailbox,
        or one its partner's sender rules exclude. A missing From: is left to the
        pipeline (the message is still kept: a partner's broken mailer must not lose
        an order)."""
        for name, value in sender_fields(content):
            pairs = getaddresses([value])
            if not pairs or any(not addr for _, addr in pairs):
                return f"550 5.1.7 Bad address syntax in the {name}: header"
            for _, addr in pairs:
                reason = _syntax_error(addr)
                if reason is not None:
                    return f"550 5.1.7 Bad address syntax in the {name}: header: {reason}"
                if name == "From" and self.sender_refused(addr) is not None:
                    return "550 5.7.1 Sender not authorised to send as this partner"
        return None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        content = envelope.original_content or b""
        envelope_id = uuid.uuid4().hex
        mlog = for_message(log, envelope_id, Channel.EMAIL.value)
        refusal = self.check_headers(content)
        if refusal is not None:
            mlog.warning("refused from %s: %s", _peer_literal(session.peer), refusal)
            return refusal
        mail_from = "" if _null_sender(envelope.mail_from or "") else envelope.mail_from or ""
        tls = session.ssl is not None
        auth_data: object = session.auth_data  # what authenticate() returned: the user name
        auth_user = auth_data if session.authenticated and isinstance(auth_data, str) else None
        now = datetime.now(UTC)
        trace = received_header(
            helo=session.host_name,
            peer=session.peer,
            hostname=self.hostname,
            esmtp=session.extended_smtp,
            tls=tls,
            auth=auth_user is not None,
            envelope_id=envelope_id,
            rcpt_tos=envelope.rcpt_tos,
            when=now,
        )
        transport = {
            "mail_from": mail_from,
            "rcpt_to": ",".join(envelope.rcpt_tos),
            "peer": _peer_literal(session.peer).strip("[]"),
            "helo": session.host_name or "",
            "tls": "true" if tls else "false",
        }
        if auth_user is not None:
            transport["auth_user"] = auth_user
        message = Envelope(
            raw=trace + content,
            channel=Channel.EMAIL,
            received_at=now,
            transport=transport,
            sender={"email": mail_from.lower()} if mail_from else {},
            id=envelope_id,
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.executor, self.accept, message)
        except TooLarge as exc:
            mlog.warning("refused: %s", exc.message)
            return _SIZE_REPLY
        except TemporaryError as exc:
            mlog.error("not accepted, the client will retry: %s", exc.message)
            return "451 4.3.0 Temporarily unable to store the message, please try again later"
        except GatewayError as exc:
            mlog.error("not accepted: %s", exc.message)
            return f"{exc.smtp_code} {exc.smtp_enhanced} Message not accepted"
        except Exception:  # noqa: BLE001 - whatever else failed, the message is not accepted: say so
            mlog.exception("not accepted: internal error")
            return "451 4.3.0 Temporary failure, please try again later"
        return f"250 2.0.0 OK: queued as {envelope_id}"

    # ---- AUTH -----------------------------------------------------------------------

    def authenticate(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        del server, envelope, mechanism
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.passwords.get(user)
        # compare even for an unknown user, so timing tells nothing about user names
        ok = hmac.compare_digest(auth_data.password, expected if expected is not None else b"\0" * 32)
        if not ok or expected is None:
            log.warning("AUTH failed from %s for user %r", _peer_literal(session.peer), _clean(user, 64))
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)


class SmtpAdapter:
    name = "smtp"

    def __init__(self, config: Config, host: str, port: int, *, workers: int | None = None) -> None:
        self.config = config
        self.settings = config.settings.smtp_settings
        self.host = host
        self.port = port
        self.workers = workers or default_workers()
        self.hostname = self.settings.hostname or _local_hostname()
        limit = config.settings.limits.max_message_bytes
        self.data_size_limit = min(self.settings.max_message_bytes or limit, limit)
        self.handler: SmtpHandler | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def tls(self) -> bool:
        return self.settings.tls_certificate is not None and self.settings.tls_key is not None

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        extras = []
        if self.tls:
            extras.append("STARTTLS required" if self.settings.require_starttls else "STARTTLS")
        if self.settings.auth is not None:
            extras.append("AUTH required" if self.settings.auth.required else "AUTH")
        extra = f" ({', '.join(extras)})" if extras else ""
        return f"smtp on {host}:{self.port}{extra}, accepting mail for {', '.join(self.settings.accept)}"

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        assert self.settings.tls_certificate is not None
        assert self.settings.tls_key is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.settings.tls_certificate), str(self.settings.tls_key))
        return context

    def _passwords(self) -> dict[str, bytes]:
        auth = self.settings.auth
        if auth is None:
            return {}
        # read now: a missing variable or file stops the start, not the first login
        return {user: ref.read().encode("utf-8") for user, ref in auth.users.items()}

    def start(self, accept: Accept) -> None:
        # aiosmtpd logs every command at INFO (addresses included): keep to warnings
        logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="smtp-accept")
        self.handler = SmtpHandler(
            self.config, accept, self._executor, hostname=self.hostname, passwords=self._passwords()
        )
        tls_context = self._tls_context()
        self._thread = threading.Thread(target=self._serve, args=(tls_context,), name="smtp", daemon=True)
        self._thread.start()
        if not self._ready.wait(15) or self._error is not None:
            self.stop()
            raise RuntimeError(f"SMTP server could not listen on {self.host}:{self.port}: {self._error}")
        log.info("SMTP server listening: %s", self.describe())

    def _factory(self, tls_context: ssl.SSLContext | None) -> GatewaySMTP:
        assert self.handler is not None
        assert self._loop is not None
        auth = self.settings.auth
        return GatewaySMTP(
            self.handler,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=self.hostname,
            ident="B2B gateway",
            tls_context=tls_context,
            require_starttls=self.settings.require_starttls,
            timeout=self.settings.timeout,
            auth_required=auth is not None and auth.required,
            auth_require_tls=True,
            auth_exclude_mechanism=None if auth is not None else ["LOGIN", "PLAIN"],
            authenticator=self.handler.authenticate if auth is not None else None,
            loop=self._loop,
        )

    def _serve(self, tls_context: ssl.SSLContext | None) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = loop.run_until_complete(
                loop.create_server(
                    lambda: self._factory(tls_context), self.host, self.port, reuse_address=True
                )
            )
        except OSError as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        if self.port == 0:
            self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        if self._executor is not None:
            # messages already handed to accept finish (durable); their clients may
            # not hear the 250 and resend: the resend is recognised as a duplicate
            self._executor.shutdown(wait=True)
            self._executor = None


def _local_hostname() -> str:
    import socket

    return socket.gethostname() or "localhost"  # no DNS lookup (getfqdn would do one)


def factory(config: Config, options: RunOptions) -> Adapter | None:
    listener = config.settings.smtp
    if options.no_smtp or (not listener.enabled and not options.smtp):
        return None
    if not config.settings.smtp_settings.accept:
        log.warning("SMTP: no recipients configured (smtp.accept): the SMTP server is not started")
        return None
    host, port = listener.host, listener.port
    if options.smtp:
        host, port = parse_address(options.smtp, listener.port)
    return SmtpAdapter(config, host, port)


__all__ = ["GatewaySMTP", "SmtpAdapter", "SmtpHandler", "factory", "received_header"]
