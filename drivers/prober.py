"""Probe stations: a neutral `Prober` interface and the FormFactor Velox text dialect.

The station codes against `Prober` only. A dialect subclass maps the verbs onto its command
set and reply format: `VeloxProber` here (``<code>: <data>``, docs/scpi.md); an MPI SENTIO
dialect (``map:step_next_die``, replies ``errc,cmd_id,msg``) would be another subclass with
its own reply parser and the same verbs.
"""

from __future__ import annotations

import numbers
import re
from abc import ABC, abstractmethod
from typing import NamedTuple

from drivers.errors import ProberError, ReplyError, identity_reply, shown_value
from drivers.transport import Closes, Resource, Session, Transport


class DieIndex(NamedTuple):
    """A die's wafer-map index (immutable, hashable, sortable)."""

    col: int
    row: int


def die_index(die: object) -> DieIndex:
    """`die` (a DieIndex, or any pair of integers: a list, numpy ints) as a DieIndex;
    TypeError for anything else (int(2.9) would move to another die; a 5,000-digit int
    cannot be sent), so a die compares equal to the position the prober reads back."""
    try:
        col, row = die  # type: ignore[misc]
    except (TypeError, ValueError):
        col = row = None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
               and abs(int(v)) < MAX_DIE_INDEX for v in (col, row)):
        raise TypeError(f"die index must be two integers below {MAX_DIE_INDEX:,} in "
                        f"magnitude, got {shown_value(die)}")
    return DieIndex(int(col), int(row))  # type: ignore[arg-type]


class Prober(Closes, ABC):
    """The verbs a wafer sweep needs from any probe station."""

    @abstractmethod
    def identity(self) -> str:
        """Manufacturer, model, serial, version."""

    @abstractmethod
    def software_version(self) -> str:
        """The prober control software's version."""

    @abstractmethod
    def first_die(self) -> DieIndex | None:
        """Move to the first die of the wafer map; None if the map is empty."""

    @abstractmethod
    def next_die(self) -> DieIndex | None:
        """Move to the next die in map order; None at the end of the wafer."""

    @abstractmethod
    def goto_die(self, die: DieIndex) -> DieIndex:
        """Move to `die`; returns where the chuck is now."""

    @abstractmethod
    def contact(self) -> None:
        """Bring the probe card into contact with the current die."""

    @abstractmethod
    def separate(self) -> None:
        """Separate the chuck from the probe card (always safe, idempotent)."""

    @abstractmethod
    def position(self) -> DieIndex:
        """The current die."""

    @abstractmethod
    def in_contact(self) -> bool:
        """True while the probe card touches the die."""

    @abstractmethod
    def wafer_map(self) -> list[DieIndex]:
        """The dies of the wafer map in stepping order."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection."""


# -- Velox dialect ----------------------------------------------------------------------------

OK = 0
END_OF_WAFER = 703
#: die indices beyond any wafer map (refused before sending)
MAX_DIE_INDEX = 1_000_000
_REPLY = re.compile(r"^\s*(-?\d+):\s?(.*)$", re.DOTALL)


def parse_velox_reply(reply: str, command: str, instrument: str = "prober") -> str | None:
    """The data of a Velox ``<code>: <data>`` reply.

    Code 0 returns the data; 703 (end of wafer, a status) returns None; any other code raises
    ProberError with the code, the prober's message and the command. Malformed -> ReplyError.
    """
    match = _REPLY.match(reply)
    if match is None:
        raise ReplyError(instrument, command, reply, "expected '<code>: <data>'")
    code, data = int(match.group(1)), match.group(2).strip()
    if code == OK:
        return data
    if code == END_OF_WAFER:
        return None
    raise ProberError(code, data, command, instrument)


class VeloxProber(Session, Prober):
    """FormFactor Velox-style prober over a VISA message resource (docs/scpi.md)."""

    def __init__(self, resource: Resource, name: str = "prober") -> None:
        self.name = name
        self._transport = Transport(resource, name)

    def ask(self, command: str) -> str:
        """Send `command`, return the raw reply text (no code interpretation)."""
        self._transport.write_text(command)
        return self._transport.read_text(command)

    def _command(self, command: str, *, end_allowed: bool = False) -> str | None:
        data = parse_velox_reply(self.ask(command), command, self.name)
        if data is None and not end_allowed:
            raise ProberError(END_OF_WAFER, "End of wafer.", command, self.name)
        return data

    def _data(self, command: str) -> str:
        data = self._command(command)
        assert data is not None  # _command raises on 703 unless end_allowed
        return data

    def _die(self, command: str, data: str) -> DieIndex:
        """``<col> <row> [subdie count]`` -> DieIndex."""
        parts = data.split()
        try:
            return DieIndex(int(parts[0]), int(parts[1]))
        except (IndexError, ValueError):
            raise ReplyError(self.name, command, data, "expected '<col> <row> ...'") from None

    def _step(self, command: str) -> DieIndex | None:
        data = self._command(command, end_allowed=True)
        return None if data is None else self._die(command, data)

    def identity(self) -> str:
        """The ``*IDN?`` text. Velox answers it without a code, so a ``<code>:`` reply is a
        status (e.g. ``710: Prober fault.``): raised as ProberError, or as ReplyError if its
        code is not an error."""
        reply = identity_reply(self.name, self.ask("*IDN?"))
        if _REPLY.match(reply):  # '<code>: ...'
            parse_velox_reply(reply, "*IDN?", self.name)
            raise ReplyError(self.name, "*IDN?", reply, "not an identity")
        return reply

    def software_version(self) -> str:
        return self._data("ReportSoftwareVersion")

    def first_die(self) -> DieIndex | None:
        return self._step("StepFirstDie")

    def next_die(self) -> DieIndex | None:
        return self._step("StepNextDie")

    def goto_die(self, die: DieIndex) -> DieIndex:
        col, row = die_index(die)
        command = f"StepNextDie {col} {row}"
        return self._die(command, self._data(command))

    def contact(self) -> None:
        self._data("MoveChuckContact")

    def separate(self) -> None:
        self._data("MoveChuckSeparation")

    def position(self) -> DieIndex:
        return self._die("ReadChuckIndex", self._data("ReadChuckIndex"))

    def in_contact(self) -> bool:
        state = self._data("ReadChuckStatus")
        if state not in ("C", "S"):
            raise ReplyError(self.name, "ReadChuckStatus", state, "expected 'C' or 'S'")
        return state == "C"

    def wafer_map(self) -> list[DieIndex]:
        command = "ReadWaferMap"
        data = self._data(command)
        head, _, rest = data.partition(" ")
        try:
            count = int(head)
            dies = [DieIndex(*map(int, item.split(","))) for item in rest.split()]
        except (TypeError, ValueError):
            raise ReplyError(self.name, command, data, "expected '<n> <col>,<row> ...'") from None
        if len(dies) != count:
            raise ReplyError(self.name, command, data, f"announced {count} dies, got {len(dies)}")
        return dies

