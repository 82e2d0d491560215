"""Exceptions raised by the drivers.

One hierarchy so the station can catch by intent: the instrument refused a command
(`InstrumentError`), the link failed (`CommunicationError`), the caller asked for something
outside a declared range (`LimitError`, raised before anything is sent), or bytes did not
parse (`BlockError`, `ReplyError`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class DriverError(Exception):
    """Base of every exception raised by drivers/."""


class InstrumentError(DriverError):
    """The instrument reported an error for a command.

    `code` and `message` are the first (oldest) reported error; `errors` holds every error that
    was drained from the instrument's queue, oldest first.
    """

    def __init__(
        self,
        instrument: str,
        command: str,
        code: int,
        message: str,
        errors: Sequence[tuple[int, str]] = (),
    ) -> None:
        self.instrument = instrument
        self.command = command
        self.code = code
        self.message = message
        self.errors: tuple[tuple[int, str], ...] = tuple(errors) or ((code, message),)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.instrument}: {self.command!r} failed: {self.code}, {self.message!r}"
        if len(self.errors) > 1:
            more = "; ".join(f"{c}, {m!r}" for c, m in self.errors[1:])
            text += f" (also queued: {more})"
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.instrument, self.command, self.code, self.message, self.errors))


class ProberError(InstrumentError):
    """The probe station answered a command with a non-zero (error) code."""

    def __init__(self, code: int, message: str, command: str, instrument: str = "prober") -> None:
        super().__init__(instrument, command, code, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.command, self.instrument))


class CommunicationError(DriverError):
    """The VISA link failed while sending `command` (the cause is chained)."""

    def __init__(self, instrument: str, command: str, detail: str) -> None:
        self.instrument = instrument
        self.command = command
        self.detail = detail
        super().__init__(f"{instrument}: {command!r}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.instrument, self.command, self.detail))


class InstrumentTimeout(CommunicationError):
    """No (complete) reply arrived within the resource timeout."""


class ConnectionLost(CommunicationError):
    """The session or the connection to the instrument is gone."""


def shown_value(value: object, limit: int = 40) -> str:
    """repr(value) cut to `limit` characters (a 5,000-digit int cannot even be printed)."""
    try:
        text = repr(value)
    except ValueError:  # int too large for str()
        return f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<value>"
    return text if len(text) <= limit else f"{text[:limit]}..."


class LimitError(DriverError, ValueError):
    """A value outside a declared range; raised before anything is sent to the instrument."""

    def __init__(self, name: str, value: object, allowed: str, units: str = "") -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        self.units = units
        unit = f" {units}" if units else ""
        super().__init__(f"{name} = {shown_value(value)}{unit} rejected: allowed {allowed}; "
                         "nothing was sent")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.value, self.allowed, self.units))


class BlockError(DriverError, ValueError):
    """Malformed IEEE 488.2 definite-length binary block."""


class ReplyError(DriverError, ValueError):
    """A reply that does not have the documented format."""

    def __init__(self, instrument: str, command: str, reply: object, reason: str) -> None:
        self.instrument = instrument
        self.command = command
        self.reply = reply
        self.reason = reason
        shown = reply if not isinstance(reply, (bytes, str)) or len(reply) <= 80 else reply[:80]
        super().__init__(f"{instrument}: {command!r}: unexpected reply {shown!r}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.instrument, self.command, self.reply, self.reason))


def identity_reply(instrument: str, reply: str) -> str:
    """A ``*IDN?`` reply, refused if blank (nothing answered, or a link that returns empty
    lines): a blank identity must not pass for an instrument."""
    if not reply.strip():
        raise ReplyError(instrument, "*IDN?", reply, "no identity: is an instrument there?")
    return reply
