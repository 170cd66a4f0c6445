"""Logging set-up and the per-message logger.

Every log line about a message carries its envelope id, channel and partner, and
never its payload: raw business documents may hold personal or commercial data.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class MessageLogger(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        ctx = " ".join(f"{k}={extra[k]}" for k in ("envelope", "channel", "partner") if extra.get(k))
        kwargs.setdefault("extra", {}).update(extra)
        return (f"[{ctx}] {msg}" if ctx else msg), kwargs


def for_message(
    logger: logging.Logger, envelope: str, channel: str, partner: str | None = None
) -> MessageLogger:
    return MessageLogger(logger, {"envelope": envelope, "channel": channel, "partner": partner or ""})


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
