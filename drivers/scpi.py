"""`SCPIInstrument`: the small SCPI base every SCPI driver builds on.

After every command the error queue (``SYST:ERR?``) is drained by default and any entry raises
`InstrumentError` naming the command and the instrument's text. Per call (``check=False``) or
for a block of calls (`deferred_error_check`) the check can be postponed for speed, but never
dropped: commands sent unchecked are remembered and named by the next check.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from drivers.blocks import decode_block, encode_array
from drivers.controls import HasControls
from drivers.errors import (
    BlockError,
    CommunicationError,
    InstrumentError,
    InstrumentTimeout,
    ReplyError,
    identity_reply,
)
from drivers.transport import TERMINATION, Resource, Session, Transport, text_message

ERROR_QUERY = "SYST:ERR?"
#: Bound on queue reads per check: a SCPI queue holds 32 entries plus the overflow entry.
MAX_QUEUE_READS = 33
_UNCHECKED_SHOWN = 8
_ERROR_REPLY = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$', re.DOTALL)

T = TypeVar("T")


def parse_error_reply(reply: str) -> tuple[int, str]:
    """``-222,"Data out of range"`` -> (-222, 'Data out of range'); ValueError if malformed."""
    match = _ERROR_REPLY.match(reply)
    if match is None:
        raise ValueError("expected <code>,\"<message>\"")
    return int(match.group(1)), match.group(2)


class SCPIInstrument(HasControls, Session):
    """SCPI over any `Resource` (a pyvisa MessageBasedResource or a test double).

    `check_errors` sets the default for the after-command error-queue check.
    """

    def __init__(self, resource: Resource, name: str = "scpi", *, check_errors: bool = True):
        self.name = name
        self.check_errors_default = check_errors
        self._transport = Transport(resource, name)
        self._deferred = 0
        self._unchecked: deque[str] = deque(maxlen=_UNCHECKED_SHOWN)

    # -- plain messages -----------------------------------------------------------------------

    def write(self, command: str, *, check: bool | None = None) -> None:
        """Send a command without reply."""
        self._exchange(command, text_message(command), None, check)

    def query(self, command: str, *, check: bool | None = None) -> str:
        """Send a query and return its text reply (terminator stripped)."""
        return self._exchange(
            command, text_message(command), lambda: self._transport.read_text(command), check
        )

    # -- binary blocks ------------------------------------------------------------------------

    def write_block(
        self,
        header_cmd: str,
        array: ArrayLike,
        dtype: DTypeLike | None = None,
        *,
        check: bool | None = None,
    ) -> None:
        """Send ``<header_cmd> #<n><len><bytes>`` with `array` row-major, little-endian."""
        self._exchange(header_cmd, self._block_message(header_cmd, array, dtype), None, check)

    def query_block(
        self,
        cmd: str,
        dtype: DTypeLike,
        count: int | None = None,
        *,
        data: ArrayLike | None = None,
        data_dtype: DTypeLike | None = None,
        check: bool | None = None,
    ) -> np.ndarray:
        """Query a binary block of `dtype` (exactly `count` elements if given).

        With `data`, the query itself carries a block (e.g. ``INF:CURR? <block>``).
        """
        message = (
            text_message(cmd) if data is None else self._block_message(cmd, data, data_dtype)
        )

        def read() -> np.ndarray:
            return decode_block(self._transport.read_block(cmd), dtype, count)

        return self._exchange(cmd, message, read, check)

    @staticmethod
    def _block_message(cmd: str, array: ArrayLike, dtype: DTypeLike | None) -> bytes:
        """``<cmd> <block>`` with its terminator, built in one copy."""
        return encode_array(array, dtype, prefix=cmd.encode("ascii") + b" ", suffix=TERMINATION)

    # -- error queue --------------------------------------------------------------------------

    def _exchange(
        self,
        command: str,
        message: bytes,
        reader: Callable[[], T] | None,
        check: bool | None,
    ) -> T:
        """Write `message`, read the reply with `reader`, then check the error queue.

        A missing or malformed reply (timeout, bad block) first asks the error queue why: an
        instrument error explains it better than the symptom, which stays chained.
        """
        do_check = self._should_check(check)
        try:
            self._transport.write(message, command)
            result = reader() if reader is not None else None
        except (InstrumentTimeout, BlockError) as symptom:
            if do_check:
                self._raise_if_queued(command, symptom)
            else:
                self._unchecked.append(command)
            raise
        if do_check:
            self.check_errors(command)
        else:
            self._unchecked.append(command)
        return result  # type: ignore[return-value]

    def _should_check(self, check: bool | None) -> bool:
        if check is not None:
            return check
        return self.check_errors_default and not self._deferred

    def _raise_if_queued(self, command: str, symptom: Exception) -> None:
        try:
            errors = self.read_error_queue()
        except CommunicationError:
            return  # the link is the problem; let the caller raise the symptom
        if errors:
            raise self._error(command, errors) from symptom

    def read_error_queue(self) -> list[tuple[int, str]]:
        """Drain the error queue; return its entries oldest first (empty if none)."""
        errors: list[tuple[int, str]] = []
        for _ in range(MAX_QUEUE_READS):
            self._transport.write_text(ERROR_QUERY)
            reply = self._transport.read_text(ERROR_QUERY)
            try:
                code, message = parse_error_reply(reply)
            except ValueError as exc:
                raise ReplyError(self.name, ERROR_QUERY, reply, str(exc)) from None
            if code == 0:
                break
            errors.append((code, message))
        return errors

    def check_errors(self, command: str = "") -> None:
        """Drain the error queue; raise InstrumentError if it held anything.

        The error names `command` and every command sent unchecked since the last check.
        """
        errors = self.read_error_queue()
        if errors:
            raise self._error(command, errors)
        self._unchecked.clear()

    def _error(self, command: str, errors: list[tuple[int, str]]) -> InstrumentError:
        sent = [*self._unchecked, command] if command else list(self._unchecked)
        self._unchecked.clear()
        named = "; ".join(sent) if sent else "<no command>"
        code, message = errors[0]
        return InstrumentError(self.name, named, code, message, errors)

    @contextmanager
    def deferred_error_check(self) -> Iterator[None]:
        """Skip the per-command error check inside the block and check once on exit.

        For bulk sequences of small commands. If the block raises, the queue is still checked
        unless the link itself failed; an instrument error then wins (the original is chained).
        """
        self._deferred += 1
        try:
            yield
        except CommunicationError:
            raise
        except Exception as exc:
            if self._deferred == 1:
                errors = self.read_error_queue()
                if errors:
                    raise self._error("", errors) from exc
            raise
        else:
            if self._deferred == 1:
                self.check_errors()
        finally:
            self._deferred -= 1

    # -- IEEE 488.2 commons -------------------------------------------------------------------

    def identity(self) -> str:
        """``*IDN?``: manufacturer, model, serial, firmware (ReplyError if blank)."""
        return identity_reply(self.name, self.query("*IDN?"))

    def reset(self) -> None:
        """``*RST``: settings to defaults."""
        self.write("*RST")

    def clear(self) -> None:
        """``*CLS``: clear the error queue and the event status register."""
        self.write("*CLS")

    def opc(self) -> bool:
        """``*OPC?``: wait until every pending operation completed."""
        return self.query("*OPC?").strip() == "1"

    def event_status(self) -> int:
        """``*ESR?``: the event status register (cleared on read)."""
        reply = self.query("*ESR?")
        try:
            return int(reply)
        except ValueError:
            raise ReplyError(self.name, "*ESR?", reply, "not an integer") from None

