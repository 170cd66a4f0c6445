"""The gateway's error hierarchy.

Every error knows what it means to the caller (``action``: retry, skip or fail),
what it means on the wire (an SMTP reply and an AS2 MDN disposition), and which
pipeline stage raised it. Adapters translate errors with these attributes only,
never by matching on messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    """What the caller should do about an error."""

    RETRY = "retry"  # temporary: the sender or the scheduler should try again later
    SKIP = "skip"  # this item is bad: quarantine it and carry on with the rest
    FAIL = "fail"  # the gateway cannot work (configuration, programming error): stop


class Stage(enum.Enum):
    """Processing stages, in order. Used for quarantine entries and logs."""

    RECEIVE = "receive"
    ARCHIVE = "archive"
    DETECT = "detect"
    PARSE = "parse"
    MAP = "map"
    VALIDATE = "validate"
    RESOLVE = "resolve"
    STORE = "store"
    ACKNOWLEDGE = "acknowledge"


@dataclass(frozen=True)
class SmtpReply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    action: Action = Action.SKIP
    stage: Stage | None = None
    #: RFC 3798/4130 disposition modifier for a negative MDN ("error: <this>").
    mdn_disposition: str = "unexpected-processing-error"
    smtp_code: int = 554
    smtp_enhanced: str = "5.6.0"

    def __init__(self, message: str, *, stage: Stage | None = None) -> None:
        super().__init__(message)
        self.message = message
        if stage is not None:
            self.stage = stage

    @property
    def smtp_reply(self) -> SmtpReply:
        return SmtpReply(self.smtp_code, self.smtp_enhanced, self.message)


# --- retry --------------------------------------------------------------------------


class TemporaryError(GatewayError):
    """Something we depend on is unavailable; nothing was accepted, try again."""

    action = Action.RETRY
    smtp_code = 451
    smtp_enhanced = "4.3.0"


class StoreUnavailable(TemporaryError):
    """The archive or the database could not be written."""

    stage = Stage.STORE


# --- skip (bad input: quarantine, tell the sender) -----------------------------------


class InputError(GatewayError, ValueError):
    """The input is bad; it is kept, quarantined, and the sender told."""

    action = Action.SKIP


class TooLarge(InputError):
    stage = Stage.RECEIVE
    smtp_code = 552
    smtp_enhanced = "5.3.4"


class UnknownFormat(InputError):
    stage = Stage.DETECT
    smtp_enhanced = "5.6.0"


@dataclass(frozen=True)
class Position:
    """Where in a document something went wrong. All fields are optional; 1-based."""

    offset: int | None = None  # byte/character offset into the document, 0-based
    line: int | None = None
    column: int | None = None
    segment: int | None = None  # ordinal of the segment in the interchange, 1-based
    segment_tag: str | None = None
    element: int | None = None  # element position within the segment, 1-based
    component: int | None = None

    def __str__(self) -> str:
        parts: list[str] = []
        if self.segment is not None:
            tag = f" {self.segment_tag}" if self.segment_tag else ""
            parts.append(f"segment {self.segment}{tag}")
        elif self.segment_tag:
            parts.append(f"segment {self.segment_tag}")
        if self.element is not None:
            parts.append(f"element {self.element:02d}")
        if self.component is not None:
            parts.append(f"component {self.component}")
        if self.line is not None:
            parts.append(f"line {self.line}" + (f" column {self.column}" if self.column else ""))
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        return ", ".join(parts) if parts else "unknown position"


class ParseError(InputError):
    """A document could not be parsed. Always carries a position."""

    stage = Stage.PARSE
    mdn_disposition = "unexpected-processing-error"

    def __init__(self, message: str, position: Position | None = None) -> None:
        self.position = position or Position()
        super().__init__(f"{message} ({self.position})")
        self.reason = message


class EnvelopeError(ParseError):
    """Interchange/group/set envelope checks failed (counts, control numbers)."""


class MappingError(InputError):
    """A mapping could not be applied to a document (no match, failing rule)."""

    stage = Stage.MAP


class RecordInvalid(InputError):
    """The interaction record produced by a mapping does not satisfy interaction.xsd."""

    stage = Stage.VALIDATE


class DuplicateMessage(InputError):
    """Not an error for the sender: the message was already received."""

    stage = Stage.STORE


# --- fail (the administrator must act) ---------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem in an administrator-edited file."""

    file: str
    line: int | None
    reason: str
    field: str | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        what = f" [{self.field}]" if self.field else ""
        return f"{where}:{what} {self.reason}"


class AdminError(GatewayError):
    """An administrator-edited file is broken. Carries every problem found."""

    action = Action.FAIL
    smtp_code = 451
    smtp_enhanced = "4.3.5"

    def __init__(self, problems: list[Problem] | Problem) -> None:
        self.problems = problems if isinstance(problems, list) else [problems]
        super().__init__("; ".join(str(p) for p in self.problems))


class ConfigError(AdminError):
    """config/ (gateway settings or partner profiles) is invalid."""


class MappingFileError(AdminError):
    """A mapping file does not validate or does not compile."""
