"""Channel adapters.

An adapter speaks one protocol and nothing else: it turns what arrives into an
:class:`~gateway.envelope.Envelope`, hands it to ``accept`` (which returns only once
the message is durable) and only then acknowledges the sender. Built-in adapters
are registered explicitly below; third-party ones through the ``gateway.adapters``
entry-point group, each entry point naming a factory with the :data:`Factory` shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from gateway.config import Config
from gateway.envelope import Envelope
from gateway.store import RawMessage

log = logging.getLogger(__name__)

Accept = Callable[[Envelope], RawMessage]


@dataclass(frozen=True)
class RunOptions:
    """Command-line overrides of the configured listeners (``gateway run``)."""

    data_dir: str
    as2: str | None = None
    smtp: str | None = None
    sftp: str | None = None
    no_as2: bool = False
    no_smtp: bool = False
    no_sftp: bool = False


@runtime_checkable
class Adapter(Protocol):
    name: str

    def start(self, accept: Accept) -> None:
        """Start listening or polling; return once started (work happens in threads)."""
        ...

    def stop(self) -> None:
        """Stop taking new messages; messages already accepted stay in the inbox."""
        ...

    def describe(self) -> str:
        """One line for the start-up banner, e.g. ``as2 on http://127.0.0.1:4080/as2``."""
        ...


#: builds the adapter, or returns None when the configuration disables it
Factory = Callable[[Config, RunOptions], Adapter | None]


def _builtin() -> dict[str, Factory]:
    from adapters import as2, filedrop, imap, sftp_poll, sftp_server, smtp

    return {
        "filedrop": filedrop.factory,
        "as2": as2.factory,
        "smtp": smtp.factory,
        "imap": imap.factory,
        "sftp-poll": sftp_poll.factory,
        "sftp": sftp_server.factory,
    }


def factories() -> dict[str, Factory]:
    found = _builtin()
    for ep in entry_points(group="gateway.adapters"):
        if ep.name in found:
            log.warning("adapter plugin %s ignored: a built-in adapter has that name", ep.name)
            continue
        found[ep.name] = ep.load()
    return found
