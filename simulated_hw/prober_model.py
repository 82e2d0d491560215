"""The probe station's stepping logic, in the FormFactor Velox text dialect (docs/scpi.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from .physics import SimulatedWafer

#: a die index argument: an optional minus and decimal digits
_INDEX = re.compile(r"-?0*[0-9]{1,18}")  # longer: no die, and int() of 5,000 digits fails


class ProberReply(Exception):
    """A non-zero Velox reply code with its message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class ProberModel:
    """Chuck position and contact state over a wafer map of (col, row) dies."""

    wafer: SimulatedWafer
    wafer_map: list[tuple[int, int]] = field(default_factory=list)
    position: int | None = None  # index into wafer_map
    in_contact: bool = False
    _die_numbers: list[int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.wafer_map:
            self.wafer_map = [self.wafer.die_position(i) for i in range(self.wafer.n_dies)]
        # The die number of each map position (the map is fixed once made), looked up once:
        # every array command of the tester asks which die is in contact.
        self._die_numbers = [self.wafer.die_index(col, row) for col, row in self.wafer_map]

    @property
    def contact_die(self) -> int | None:
        """Die number under the probes, or None when separated."""
        if not self.in_contact or self.position is None:
            return None
        return self._die_numbers[self.position]

    def handle(self, command: str) -> str | None:
        """Reply to one Velox command, or None if the command is not a stepping command."""
        name, _, arg = command.strip().partition(" ")
        handler = self._HANDLERS.get(name)
        if handler is None:
            return None
        try:
            return "0:" + handler(self, arg.strip())
        except ProberReply as reply:
            return f"{reply.code}: {reply.message}"

    # ---- commands ----------------------------------------------------------------------
    def _die_reply(self) -> str:
        col, row = self.wafer_map[self.position]  # type: ignore[index]
        return f" {col} {row} 0 1"

    def _require_separated(self) -> None:
        if self.in_contact:
            raise ProberReply(705, "Chuck in contact; separate first.")

    def _require_die(self) -> int:
        if self.position is None:
            raise ProberReply(706, "No die selected.")
        return self.position

    def _no_args(self, arg: str) -> None:
        if arg:
            raise ProberReply(2, f"Bad argument {arg}")

    def _step_first(self, arg: str) -> str:
        self._no_args(arg)
        self._require_separated()
        self.position = 0
        return self._die_reply()

    def _step_next(self, arg: str) -> str:
        if arg:
            return self._step_to(arg)
        current = self._require_die()
        self._require_separated()
        if current + 1 >= len(self.wafer_map):
            raise ProberReply(703, "End of wafer.")
        self.position = current + 1
        return self._die_reply()

    def _step_to(self, arg: str) -> str:
        parts = arg.split()
        if len(parts) != 2 or not all(_INDEX.fullmatch(p) for p in parts):
            raise ProberReply(2, f"Bad argument {arg[:40]}")
        die = (int(parts[0]), int(parts[1]))
        if die not in self.wafer_map:
            raise ProberReply(704, "Die not on wafer map.")
        self._require_separated()
        self.position = self.wafer_map.index(die)
        return self._die_reply()

    def _contact(self, arg: str) -> str:
        self._no_args(arg)
        self._require_die()
        self.in_contact = True
        return ""

    def _separate(self, arg: str) -> str:
        self._no_args(arg)
        self.in_contact = False
        return ""

    def _read_index(self, arg: str) -> str:
        self._no_args(arg)
        col, row = self.wafer_map[self._require_die()]
        return f" {col} {row}"

    def _read_status(self, arg: str) -> str:
        self._no_args(arg)
        return " C" if self.in_contact else " S"

    def _read_map(self, arg: str) -> str:
        self._no_args(arg)
        return f" {len(self.wafer_map)} " + " ".join(f"{c},{r}" for c, r in self.wafer_map)

    _HANDLERS: ClassVar[dict[str, Callable[[ProberModel, str], str]]] = {
        "StepFirstDie": _step_first,
        "StepNextDie": _step_next,
        "MoveChuckContact": _contact,
        "MoveChuckSeparation": _separate,
        "ReadChuckIndex": _read_index,
        "ReadChuckStatus": _read_status,
        "ReadWaferMap": _read_map,
    }
