"""Raw message I/O over a VISA resource, with VISA failures mapped to driver exceptions.

Both drivers talk through `Transport`: it appends the ``\\n`` terminator, reads replies with
``read_raw`` (so binary blocks are ours to decode) and turns pyvisa timeouts and lost sessions
into `InstrumentTimeout` and `ConnectionLost` naming the instrument and the command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from pyvisa import constants
from pyvisa import errors as visa_errors

from drivers.blocks import block_extent
from drivers.errors import CommunicationError, ConnectionLost, InstrumentTimeout

TERMINATION = b"\n"
#: Large enough that a whole array (20,000 float32 = 80 kB) arrives in one read call.
CHUNK_SIZE = 4 * 1024 * 1024

_LOST_CODES = frozenset({
    constants.StatusCode.error_connection_lost,
    constants.StatusCode.error_invalid_object,
    constants.StatusCode.error_io,
    constants.StatusCode.error_resource_not_found,
    constants.StatusCode.error_no_listeners,
    constants.StatusCode.error_closing_failed,
})

R = TypeVar("R")


@runtime_checkable
class Resource(Protocol):
    """What a driver needs of a VISA message-based resource (or a test double)."""

    timeout: Any

    def write_raw(self, message: bytes) -> int: ...

    def read_raw(self, size: int | None = None) -> bytes: ...

    def close(self) -> None: ...


def open_resource(rm: Any, address: str, timeout_s: float = 5.0) -> Resource:
    """Open `address` on a pyvisa ResourceManager with our terminations and timeout."""
    try:
        return rm.open_resource(
            address, write_termination="\n", read_termination="\n", timeout=timeout_s * 1000
        )
    except (visa_errors.Error, OSError) as exc:
        raise ConnectionLost(address, "open", f"cannot open resource: {exc}") from exc


def map_io_error(instrument: str, command: str, exc: BaseException) -> CommunicationError:
    """The driver exception for a VISA or socket failure (the caller chains `exc`)."""
    if isinstance(exc, TimeoutError) or (
        isinstance(exc, visa_errors.VisaIOError)
        and exc.error_code == constants.StatusCode.error_timeout
    ):
        return InstrumentTimeout(instrument, command, "timed out waiting for the instrument")
    if isinstance(exc, visa_errors.InvalidSession):
        return ConnectionLost(instrument, command, "session is closed or invalid")
    if isinstance(exc, visa_errors.VisaIOError) and exc.error_code in _LOST_CODES:
        return ConnectionLost(instrument, command, f"connection lost: {exc}")
    if isinstance(exc, OSError):
        return ConnectionLost(instrument, command, f"connection lost: {exc}")
    return CommunicationError(instrument, command, f"VISA error: {exc}")


def text_message(command: str) -> bytes:
    """A text command as sent: ASCII plus the terminator."""
    return command.encode("ascii") + TERMINATION


class Transport:
    """Terminated messages to and from one resource; one owner (VISA is not thread-safe)."""

    def __init__(self, resource: Resource, name: str) -> None:
        self.resource = resource
        self.name = name
        if hasattr(resource, "chunk_size"):
            resource.chunk_size = max(int(resource.chunk_size), CHUNK_SIZE)

    def _io(self, command: str, action: Callable[..., R], *args: Any) -> R:
        """`action(*args)` with VISA and socket failures mapped to driver exceptions."""
        try:
            return action(*args)
        except (visa_errors.Error, OSError) as exc:
            raise map_io_error(self.name, command, exc) from exc

    def write(self, message: bytes, command: str) -> None:
        """Send one complete message (terminator included, e.g. from `text_message`);
        `command` names it in errors."""
        self._io(command, self.resource.write_raw, message)

    def write_text(self, command: str) -> None:
        """Send a text command (`text_message`)."""
        self.write(text_message(command), command)

    def read(self, command: str) -> bytes:
        """One reply as raw bytes, terminator included if the device sent it.

        On a timeout the instrument is cleared (`device_clear`) before the error is raised:
        a reply that comes late must never be read as the answer to the next query.
        """
        try:
            return self._io(command, self.resource.read_raw)
        except InstrumentTimeout:
            self.device_clear()
            raise

    def device_clear(self) -> None:
        """IEEE 488.2 device clear (viClear): the instrument discards pending input and
        output. Best effort: a resource without it (a raw socket) is left as it is, and the
        station's reconnect reopens the session in any case."""
        clear = getattr(self.resource, "clear", None)
        if clear is not None:
            with suppress(visa_errors.Error, OSError, NotImplementedError):
                clear()

    def read_text(self, command: str) -> str:
        """One text reply without its terminator."""
        return self.read(command).decode("ascii", errors="replace").rstrip("\r\n")

    def read_block(self, command: str) -> bytes:
        """A reply holding one binary block; keeps reading until the declared length arrived.

        Termination-character detection is switched off meanwhile (a payload byte may be 0x0A);
        the message then ends at the END indicator, or when the block is complete.
        """
        with self._termchar_disabled():
            data = self.read(command)
            extent = block_extent(data)
            while extent is None or len(data) < extent:
                data += self.read(command)
                extent = block_extent(data)
        return data

    @contextmanager
    def _termchar_disabled(self) -> Iterator[None]:
        previous = getattr(self.resource, "read_termination", None)
        if previous is None:
            yield
            return
        self._io("<set read_termination>", setattr, self.resource, "read_termination", None)
        try:
            yield
        finally:
            self._io("<set read_termination>", setattr, self.resource, "read_termination",
                     previous)

    @property
    def timeout_s(self) -> float | None:
        """Resource I/O timeout in seconds (None: wait forever)."""
        ms = self.resource.timeout
        return None if ms is None else float(ms) / 1000

    @timeout_s.setter
    def timeout_s(self, seconds: float | None) -> None:
        self.resource.timeout = None if seconds is None else seconds * 1000

    def close(self) -> None:
        """Close the resource; closing twice is harmless."""
        with suppress(visa_errors.Error, OSError):
            self.resource.close()


SessionT = TypeVar("SessionT", bound="Session")
ClosesT = TypeVar("ClosesT", bound="Closes")


class Closes:
    """A context manager that calls `close()` on exit."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: ClosesT) -> ClosesT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Session(Closes):
    """What every driver that owns a `Transport` shares: opening, timeout, closing, repr."""

    name: str
    _transport: Transport

    @classmethod
    def open(cls: type[SessionT], rm: Any, address: str, *, timeout_s: float = 5.0,
             **kwargs: Any) -> SessionT:
        """Open `address` on pyvisa ResourceManager `rm` and wrap it; the session is closed
        again if the driver's constructor fails (e.g. on a query it makes)."""
        resource = open_resource(rm, address, timeout_s)
        try:
            return cls(resource, **kwargs)  # type: ignore[call-arg]
        except BaseException:
            with suppress(Exception):
                resource.close()
            raise

    @property
    def timeout_s(self) -> float | None:
        """I/O timeout in seconds."""
        return self._transport.timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float | None) -> None:
        self._transport.timeout_s = seconds

    def close(self) -> None:
        """Close the VISA session."""
        self._transport.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
