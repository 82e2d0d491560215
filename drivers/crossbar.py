"""`CrossbarTester`: the 1T1MTJ crossbar array tester of docs/scpi.md.

Settings are declared controls with the instrument's hard limits; whole-array reads, writes
and inference move one binary block each. Shapes and values are checked before sending.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from drivers.controls import (
    boolean,
    control,
    in_range,
    measurement,
    on_off,
    one_of,
    parse_bool,
    parse_ints,
    validate,
)
from drivers.errors import LimitError, ReplyError
from drivers.scpi import SCPIInstrument
from drivers.transport import Resource

#: A safety check of one bias setting (name, value); raises to stop the command being sent.
Guard = Callable[[str, float], None]

#: Cell states of docs/scpi.md; KEEP only in PROG:ARR targets.
P, AP, KEEP = 0, 1, 2

#: How the safety guard treats one header: (it resets the instrument, the bias settings the
#: operation applies, the bias setting it changes or None).
_Rule = tuple[bool, tuple[str, ...], str | None]


def parse_array_size(text: str) -> tuple[int, int]:
    """(rows, cols) from an ``ARR:SIZE?`` reply 'rows,cols' (ValueError if malformed)."""
    rows, cols = parse_ints(text)
    if rows <= 0 or cols <= 0:
        raise ValueError("array size must be positive")
    return rows, cols


#: what the guard refuses in a message: ';' (chaining) and control characters other than a
#: tab (an embedded terminator, or whitespace the guard's header split would not see)
_UNPOLICED = re.compile(r"[;\x00-\x08\x0a-\x1f\x7f]")

class _Codes:
    """The integer codes an array may hold (cell states, input bits).

    Whether the codes form a gapless range is worked out once here, so checking a whole array
    is a pass for its maximum (and its minimum if signed; none if bool), not a set lookup.
    """

    def __init__(self, *allowed: int) -> None:
        self.allowed = allowed
        self.low, self.high = min(allowed), max(allowed)
        self.contiguous = set(allowed) == set(range(self.low, self.high + 1))

    def check(self, name: str, array: ArrayLike, shape: tuple[int, ...]) -> np.ndarray:
        """`array` as uint8 after checking its shape and that every value is allowed."""
        arr = np.asarray(array)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
        kind = arr.dtype.kind
        if kind not in "biu":
            raise ValueError(f"{name} must be an integer or bool array, got dtype {arr.dtype}")
        if arr.size and not self._in_range(arr, kind) and not np.isin(arr, self.allowed).all():
            bad = np.unique(arr[~np.isin(arr, self.allowed)])[:5].tolist()
            raise ValueError(f"{name} values must be in {self.allowed}, got {bad}")
        return arr if arr.dtype is _UINT8 else arr.astype(np.uint8, copy=False)

    def _in_range(self, arr: np.ndarray, kind: str) -> bool:
        """True if the codes have no gaps and every value of non-empty `arr` is in [low, high];
        False leaves the decision to the exact (slower) set test.

        The extremes are found with argmin/argmax, which skip the ufunc reduction set-up that
        makes min()/max() cost several times more per call on a die-sized array.
        """
        if not self.contiguous:
            return False
        if kind == "b":
            return self.low <= 0 and self.high >= 1
        if not (kind == "u" and self.low <= 0) and arr.item(arr.argmin()) < self.low:
            return False
        return arr.item(arr.argmax()) <= self.high


_UINT8 = np.dtype(np.uint8)
_TARGETS = _Codes(P, AP, KEEP)
_INPUTS = _Codes(0, 1)


def check_targets(targets: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    """PROG:ARR targets as uint8 after checking shape, integer dtype and values (P, AP or
    KEEP): what `CrossbarTester.program_array` accepts, for callers that check before they
    start (write-verify)."""
    return _TARGETS.check("targets", targets, shape)


class CrossbarTester(SCPIInstrument):
    """Crossbar array tester; the array size is read once at connect and cached."""

    read_voltage_v = control(
        "SOUR:READ:VOLT?", "SOUR:READ:VOLT {}", "read voltage",
        units="V", validator=in_range(0.01, 0.5))
    pulse_amplitude_v = control(
        "SOUR:PULS:AMPL?", "SOUR:PULS:AMPL {}", "write pulse amplitude",
        units="V", validator=in_range(0.0, 2.0))
    pulse_width_s = control(
        "SOUR:PULS:WIDT?", "SOUR:PULS:WIDT {}", "write pulse width",
        units="s", validator=in_range(1e-9, 1e-3))
    compliance_a = control(
        "SENS:CURR:COMP?", "SENS:CURR:COMP {}", "current compliance",
        units="A", validator=in_range(1e-6, 0.1))
    averages = control(
        "SENS:AVER:COUN?", "SENS:AVER:COUN {:d}", "readings averaged per read or inference",
        validator=in_range(1, 1024, integer=True), cast=int)
    output_enabled = control(
        "OUTP?", "OUTP {}", "source output on", validator=boolean, cast=parse_bool,
        encode=on_off)
    array_size = measurement("ARR:SIZE?", "array (rows, cols)", cast=parse_array_size, cached=True)
    in_contact = measurement("CONT?", "a die is in contact", cast=parse_bool)

    #: Settings whose values bias the devices, and the operations that apply each of them.
    BIAS_SETTINGS: ClassVar[dict[str, str]] = {
        "SOUR:READ:VOLT": "read_voltage_v",
        "SOUR:PULS:AMPL": "pulse_amplitude_v",
        "SOUR:PULS:WIDT": "pulse_width_s",
        "SENS:CURR:COMP": "compliance_a",
    }
    #: Operations that bias the devices, by header prefix, and the settings each applies.
    BIAS_OPERATIONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "PROG:": ("pulse_amplitude_v", "pulse_width_s", "compliance_a"),
        "MEAS:": ("read_voltage_v", "compliance_a"),
        "INF:": ("read_voltage_v", "compliance_a"),
    }

    def __init__(self, resource: Resource, name: str = "xbar", *, check_errors: bool = True,
                 guard: Guard | None = None):
        super().__init__(resource, name, check_errors=check_errors)
        self.guard = guard
        self._bias: dict[str, float] = {}  # last value known to be set on the instrument
        self.rows, self.cols = self.array_size

    # -- safety guard: every message passes here, whoever composed it ---------------------------

    @classmethod
    @functools.lru_cache(maxsize=256)
    def _rule(cls, header: str) -> _Rule:
        """What policing `header` involves, worked out once per header and class (a bulk
        command is sent again and again; the cache is bounded in case of free-form headers)."""
        applied = tuple(name for prefix, settings in cls.BIAS_OPERATIONS.items()
                        if header.startswith(prefix) for name in settings)
        return (header == "*RST", applied, cls.BIAS_SETTINGS.get(header))

    def _police(self, command: str) -> str | None:
        """Guard a message before it is sent; returns the bias setting it changes, if any.

        The instrument takes one command per message (docs/scpi.md), so a message that could
        carry a second one (';', an embedded terminator) or hide its header behind other
        whitespace (CR, VT, FF, any control character) is refused rather than parsed. A tab
        separates like a space; a leading colon (SCPI's root) is ignored for the lookup."""
        if _UNPOLICED.search(command):
            raise LimitError("message", command, "one command per message (no ';' chaining, "
                             "no control characters but a tab)")
        header, _, arg = command.strip().replace("\t", " ").partition(" ")
        resets, applied, setting = self._rule(header.upper().lstrip(":"))
        if resets:
            self._bias.clear()
        if applied:
            self._check_bias(applied)
        if setting is not None and self.guard is not None:
            try:
                value = float(arg)
            except ValueError:
                raise LimitError(setting, arg, "a number checked by the safety guard") from None
            self.guard(setting, value)
        return setting

    def write(self, command: str, *, check: bool | None = None) -> None:
        setting = self._police(command)
        super().write(command, check=check)
        if setting is not None:
            self._bias[setting] = float(command.split(None, 1)[1])

    def query(self, command: str, *, check: bool | None = None) -> str:
        self._police(command)
        return super().query(command, check=check)

    def write_block(self, header_cmd: str, array: ArrayLike, dtype: DTypeLike | None = None,
                    *, check: bool | None = None) -> None:
        self._police(header_cmd)
        super().write_block(header_cmd, array, dtype, check=check)

    def query_block(self, cmd: str, dtype: DTypeLike, count: int | None = None, *,
                    data: ArrayLike | None = None, data_dtype: DTypeLike | None = None,
                    check: bool | None = None) -> np.ndarray:
        self._police(cmd)
        return super().query_block(cmd, dtype, count, data=data, data_dtype=data_dtype,
                                   check=check)

    def _check_bias(self, settings: tuple[str, ...]) -> None:
        """Before a pulse or a read: the instrument's current bias settings pass the guard."""
        if self.guard is None:
            return
        for name in settings:
            if name not in self._bias:
                self._bias[name] = float(getattr(self, name))
            self.guard(name, self._bias[name])

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the array."""
        return self.rows, self.cols

    def confirm_shape(self) -> tuple[int, int]:
        """Read ``ARR:SIZE?`` again and check it matches the size cached at connect: a garbled
        first reply must not stick (ReplyError if malformed or different)."""
        reply = self.query("ARR:SIZE?")
        try:
            shape = parse_array_size(reply)
        except ValueError:
            raise ReplyError(self.name, "ARR:SIZE?", reply, "not 'rows,cols'") from None
        if shape != self.shape:
            raise ReplyError(self.name, "ARR:SIZE?", reply,
                             f"array size disagrees with {self.shape} read at connect")
        return shape

    # -- whole array ----------------------------------------------------------------------------

    def read_array(self) -> np.ndarray:
        """Every cell's resistance in ohm, float32 as transferred, shape (rows, cols), in one
        ``MEAS:ARR?``."""
        values = self.query_block("MEAS:ARR?", np.float32, self.rows * self.cols)
        return values.reshape(self.shape)

    def program_array(self, targets: ArrayLike, *, check: bool | None = False) -> None:
        """One write pulse towards `targets` (rows, cols) of 0 = P, 1 = AP, 2 = keep.

        The error check is deferred by default: programming is always followed by a read-back
        (write-verify), whose check names this command if the instrument refused it, so the
        bulk write costs one round trip instead of two. Pass check=True to check at once.
        """
        arr = check_targets(targets, self.shape)
        self.write_block("PROG:ARR", arr, np.uint8, check=check)

    def infer(self, inputs: ArrayLike) -> np.ndarray:
        """Column currents in A, shape (n, cols), for binary input vectors of shape (n, rows)."""
        arr = np.asarray(inputs)
        if arr.ndim != 2 or arr.shape[1] != self.rows or arr.shape[0] < 1:
            raise ValueError(f"inputs must have shape (n >= 1, {self.rows}), got {arr.shape}")
        arr = _INPUTS.check("inputs", arr, arr.shape)
        n = arr.shape[0]
        currents = self.query_block(
            "INF:CURR?", np.float32, n * self.cols, data=arr, data_dtype=np.uint8
        )
        return currents.reshape(n, self.cols).astype(np.float64)

    # -- single cells ---------------------------------------------------------------------------

    def _cell(self, row: int, col: int) -> tuple[int, int]:
        return (validate("row", row, in_range(0, self.rows - 1, integer=True)),
                validate("col", col, in_range(0, self.cols - 1, integer=True)))

    def read_cell(self, row: int, col: int) -> float:
        """One cell's resistance in ohm (``MEAS:CELL?``)."""
        r, c = self._cell(row, col)
        command = f"MEAS:CELL? {r},{c}"
        reply = self.query(command)
        try:
            return float(reply)
        except ValueError:
            raise ReplyError(self.name, command, reply, "not a number") from None

    def write_cell(self, row: int, col: int, state: int) -> None:
        """One write pulse on one cell towards `state` (0 = P, 1 = AP)."""
        r, c = self._cell(row, col)
        s = validate("state", state, one_of(P, AP))
        self.write(f"PROG:CELL {r},{c},{int(s)}")
