"""The crossbar tester's array commands: bulk reads, programming, per-cell access, inference.

Settings (read voltage, pulse amplitude and width, compliance, output) live in the pyvisa-sim
YAML; this model reads them through a callable and serves the commands that need the physics.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .physics import SKIP, SimulatedWafer
from .prober_model import ProberModel


class ScpiError(Exception):
    """A rejected command; `key` names the entry of the YAML error queue to push."""

    def __init__(self, key: str, detail: str = "") -> None:
        super().__init__(f"{key}: {detail}" if detail else key)
        self.key = key


#: A definite-length block's first two bytes and the number of length digits they announce.
_DIGIT_COUNTS = {b"#%d" % n: n for n in range(1, 10)}


def block_span(data: bytes | memoryview) -> tuple[int, int]:
    """(offset, length) of the payload of an IEEE 488.2 definite-length block that makes up
    all of `data`, for reading the payload in place (a die's worth of targets is 20 kB)."""
    head = bytes(data[:11])  # '#', the digit count and up to nine length digits
    n = _DIGIT_COUNTS.get(head[:2])
    if n is None:
        raise ScpiError("block_error", "bad block header")
    digits = head[2 : 2 + n]
    if len(digits) != n or not digits.isdigit():
        raise ScpiError("block_error", "bad block length field")
    length = int(digits)
    carried = len(data) - 2 - n
    if carried != length:
        raise ScpiError("block_error", f"block declares {length} bytes, carries {carried}")
    return 2 + n, length


def encode_block(payload: bytes) -> bytes:
    """An IEEE 488.2 definite-length block around `payload`."""
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload


#: input vectors one INF:CURR? may carry (the physics works in float64 per cell: a larger block
#: would cost gigabytes; the driver splits longer batches, `measurement.infer_batch_rows`)
MAX_INFER_VECTORS = 65_536

#: SCPI numbers (no Python-only forms such as underscores, 'inf' or 'nan')
_INTEGER = re.compile(r"[+-]?[0-9]+")
NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


#: significant digits an integer argument may have (int() of a 5,000-digit string is a
#: Python error; leading zeros do not count)
MAX_DIGITS = 18


def parse_ints(args: bytes, count: int) -> list[int]:
    """Exactly `count` comma-separated integers, or the proper SCPI error."""
    text = args.decode("ascii", errors="replace").strip()
    if not text:
        raise ScpiError("missing_parameter")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < count:
        raise ScpiError("missing_parameter")
    if len(parts) > count:
        raise ScpiError("data_type_error", "too many parameters")
    if not all(_INTEGER.fullmatch(p) for p in parts):
        raise ScpiError("data_type_error", text)
    if any(len(p.lstrip("+-").lstrip("0")) > MAX_DIGITS for p in parts):  # beyond any index
        raise ScpiError("out_of_range", text[:40])
    return [int(p) for p in parts]


@dataclass
class TesterModel:
    """Serves the array commands against the die the prober is in contact with."""

    wafer: SimulatedWafer
    prober: ProberModel
    setting: Callable[[str], float]
    shape: tuple[int, int] = field(init=False)  # (rows, cols): fixed, so looked up once

    def __post_init__(self) -> None:
        self.shape = self.wafer.shape

    def handle(self, header: str, args: bytes) -> bytes | None:
        """Reply bytes (b"" for no reply) or None when the header is not an array command."""
        handler = self._HANDLERS.get(header)
        if handler is None:
            return None
        if header in self._NO_ARGUMENTS and args.strip():
            raise ScpiError("parameter_not_allowed", header)
        return handler(self, args)

    # ---- preconditions -----------------------------------------------------------------
    def _die(self, needs_output: bool = True) -> int:
        die = self.prober.contact_die
        if die is None:
            raise ScpiError("no_contact")
        if needs_output and not int(self.setting("output")):
            raise ScpiError("output_off")
        return die

    def _averages(self) -> int:
        """Readings averaged per measurement (SENS:AVER:COUN)."""
        return int(self.setting("averages"))

    def _cell(self, row: int, col: int) -> tuple[int, int]:
        rows, cols = self.shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise ScpiError("out_of_range", f"cell ({row}, {col}) outside {rows}x{cols}")
        return row, col

    def _uint8_block(self, args: bytes, allowed_max: int, row_length: int) -> np.ndarray:
        """The block in `args` as read-only uint8 rows of `row_length` (a view of `args`, not a
        copy), every value at most `allowed_max`."""
        args = args.strip(b" ")  # the same object when there is nothing to strip
        offset, length = block_span(args)
        if length % row_length:
            raise ScpiError("block_error", f"{length} bytes are not rows of {row_length}")
        values = np.ndarray((length // row_length, row_length), np.uint8, args, offset)
        # argmax, not max(): no ufunc reduction set-up, a fraction of the per-call cost
        if length and values.item(values.argmax()) > allowed_max:
            raise ScpiError("block_error", "value out of range in block")
        return values

    # ---- commands ----------------------------------------------------------------------
    def _size(self, args: bytes) -> bytes:
        rows, cols = self.shape
        return f"{rows},{cols}".encode()

    def _contact(self, args: bytes) -> bytes:
        return b"1" if self.prober.contact_die is not None else b"0"

    def _measure_array(self, args: bytes) -> bytes:
        die = self._die()
        r = self.wafer.read(die, self.setting("read_voltage_v"),
                            averages=self._averages())
        return encode_block(r.astype("<f4").tobytes())

    def _measure_cell(self, args: bytes) -> bytes:
        row, col = self._cell(*parse_ints(args, 2))
        die = self._die()
        r = self.wafer.read(die, self.setting("read_voltage_v"), np.s_[row, col],
                            averages=self._averages())
        return f"{float(r):.6e}".encode()

    def _program_array(self, args: bytes) -> bytes:
        rows, cols = self.shape
        targets = self._uint8_block(args, SKIP, cols)
        if len(targets) != rows:
            raise ScpiError("block_error", f"expected {rows * cols} targets, got {targets.size}")
        die = self._die()
        self.wafer.write(die, targets, self.setting("pulse_amplitude_v"),
                         self.setting("pulse_width_s"))
        return b""

    def _program_cell(self, args: bytes) -> bytes:
        row, col, state = parse_ints(args, 3)
        self._cell(row, col)
        if state not in (0, 1):
            raise ScpiError("out_of_range", f"state {state}")
        die = self._die()
        self.wafer.write(die, np.array([state], dtype=np.uint8),
                         self.setting("pulse_amplitude_v"), self.setting("pulse_width_s"),
                         np.s_[row : row + 1, col])
        return b""

    def _infer(self, args: bytes) -> bytes:
        rows, _ = self.shape
        inputs = self._uint8_block(args, 1, rows)
        if not len(inputs):
            raise ScpiError("block_error", "empty input block")
        if len(inputs) > MAX_INFER_VECTORS:
            raise ScpiError("block_error", f"more than {MAX_INFER_VECTORS} input vectors")
        die = self._die()
        currents = self.wafer.column_currents(
            die, inputs, self.setting("read_voltage_v"),
            self.setting("compliance_a"), averages=self._averages())
        return encode_block(currents.astype("<f4").tobytes())

    _NO_ARGUMENTS: ClassVar[frozenset[str]] = frozenset({"ARR:SIZE?", "CONT?", "MEAS:ARR?"})
    _HANDLERS: ClassVar[dict[str, Callable[[TesterModel, bytes], bytes]]] = {
        "ARR:SIZE?": _size,
        "CONT?": _contact,
        "MEAS:ARR?": _measure_array,
        "MEAS:CELL?": _measure_cell,
        "PROG:ARR": _program_array,
        "PROG:CELL": _program_cell,
        "INF:CURR?": _infer,
    }
