"""`expected_protocol`: test a driver against recorded (command, reply) exchanges.

After PyMeasure's ``expected_protocol``: the driver is built on a `ProtocolResource` that
checks each written message, binary blocks included, against the next expected command and
answers with the recorded reply. No VISA backend is involved. Usage::

    with expected_protocol(VeloxProber, [("StepNextDie", "703: End of wafer.")]) as prober:
        assert prober.next_die() is None
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from pyvisa import constants
from pyvisa.errors import VisaIOError

T = TypeVar("T")
Message = str | bytes


class _Timeout:
    """Reply marker: the instrument stays silent and the read times out."""

    def __repr__(self) -> str:
        return "TIMEOUT"


TIMEOUT: Any = _Timeout()
Reply = Message | BaseException | _Timeout | None
Exchange = tuple[Message, Reply]


NO_ERROR = '0,"No error"'


def checked(command: Message, reply: Reply = None) -> list[Exchange]:
    """`command` followed by the SCPI base's error-queue check finding it empty."""
    return [(command, reply), ("SYST:ERR?", NO_ERROR)]


def failed(command: Message, code: int, message: str, reply: Reply = None) -> list[Exchange]:
    """`command` rejected by the instrument: one queued error, then the queue is empty."""
    return [(command, reply), ("SYST:ERR?", f'{code},"{message}"'), ("SYST:ERR?", NO_ERROR)]


def _as_bytes(message: Message) -> bytes:
    return message.encode("ascii") if isinstance(message, str) else bytes(message)


def _show(message: bytes, limit: int = 60) -> str:
    return repr(message) if len(message) <= limit else f"{message[:limit]!r}... ({len(message)} B)"


class ProtocolResource:
    """A fake message resource replaying `exchanges` in order.

    Each exchange is (command, reply): the command without terminator (str or bytes); the
    reply str/bytes (the terminator is appended), None for a command without reply, `TIMEOUT`
    for a silent instrument, or an exception instance raised when the driver reads.
    """

    def __init__(self, exchanges: Iterable[Exchange], termination: bytes = b"\n") -> None:
        self._pending: deque[tuple[bytes, Reply]] = deque(
            (_as_bytes(command), reply) for command, reply in exchanges
        )
        self._termination = termination
        self._reply: Reply = None
        self._last = b""
        self.timeout: float | None = 2000.0
        self.closed = False
        self.sent: list[bytes] = []
        self.clears = 0  # device clears (viClear) the driver asked for

    def write_raw(self, message: bytes) -> int:
        if not message.endswith(self._termination):
            raise AssertionError(f"unterminated message {_show(message)}")
        body = bytes(message[: -len(self._termination)])
        if self._reply is not None:
            raise AssertionError(
                f"sent {_show(body)} before reading the reply to {_show(self._last)}")
        if not self._pending:
            raise AssertionError(f"unexpected command {_show(body)}: all exchanges were consumed")
        expected, reply = self._pending.popleft()
        if body != expected:
            raise AssertionError(f"expected command {_show(expected)}, got {_show(body)}"
                                 f"{_first_difference(expected, body)}")
        self.sent.append(body)
        self._last = body
        self._reply = reply
        return len(message)

    def read_raw(self, size: int | None = None) -> bytes:
        reply, self._reply = self._reply, None
        if reply is None:
            raise AssertionError(f"read, but no reply is expected after {_show(self._last)}")
        if isinstance(reply, _Timeout):
            raise VisaIOError(constants.StatusCode.error_timeout)
        if isinstance(reply, BaseException):
            raise reply
        return _as_bytes(reply) + self._termination

    def clear(self) -> None:
        """A device clear: counted; a reply not yet read is discarded."""
        self.clears += 1
        self._reply = None

    def close(self) -> None:
        self.closed = True

    @property
    def remaining(self) -> list[tuple[bytes, Reply]]:
        """Exchanges not yet consumed."""
        return list(self._pending)

    def assert_consumed(self) -> None:
        """Every exchange was sent and every reply read."""
        if self._pending:
            left = ", ".join(_show(c) for c, _ in self._pending)
            raise AssertionError(f"{len(self._pending)} expected exchanges not sent: {left}")
        if self._reply is not None:
            raise AssertionError(f"the reply to {_show(self._last)} was never read")


def _first_difference(expected: bytes, got: bytes) -> str:
    limit = min(len(expected), len(got))
    index = next((i for i in range(limit) if expected[i] != got[i]), limit)
    return f" (first difference at byte {index})"


@contextmanager
def expected_protocol(
    cls: type[T], exchanges: Sequence[Exchange], **kwargs: Any
) -> Iterator[T]:
    """Build ``cls(resource, **kwargs)`` on a ProtocolResource replaying `exchanges`.

    Exchanges made by the constructor count. On a clean exit every exchange must have been
    consumed; if the body raises, that exception propagates unchanged.
    """
    resource = ProtocolResource(exchanges)
    instrument = cls(resource, **kwargs)  # type: ignore[call-arg]
    yield instrument
    resource.assert_consumed()
