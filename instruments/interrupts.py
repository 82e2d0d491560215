"""Ctrl-C policy: a stop request between dies, and no interruption while making safe.

Python delivers SIGINT to the main thread only, so elsewhere (a service worker) these
context managers do nothing; there a stop comes through `StopFlag` alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]


@dataclass
class StopFlag:
    """Set from a signal handler or another thread; checked at safe points.

    A plain attribute, no lock: a second Ctrl-C can arrive while the first one's handler is
    still setting it, and a handler that waits for a lock its own thread holds waits for
    ever (`threading.Event.set` did, and hung the sweep on a double Ctrl-C)."""

    _requested: bool = False

    def request(self) -> None:
        self._requested = True

    @property
    def requested(self) -> bool:
        return self._requested


@contextmanager
def _sigint_handled(make: Callable[[Any], Handler]) -> Iterator[None]:
    """SIGINT handled by make(previous handler) for the block, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, make(previous))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_on_sigint(flag: StopFlag) -> AbstractContextManager[None]:
    """Turn the first Ctrl-C into a stop request (a second one interrupts at once)."""

    def make(previous: Any) -> Handler:
        def handler(signum: int, frame: FrameType | None) -> None:
            if flag.requested:
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            flag.request()
        return handler

    return _sigint_handled(make)


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then hand it to the handler it would have reached (a
    sweep's stop request, or KeyboardInterrupt): making the station safe (output off, chuck
    separated) must not be cut short by the operator's own interrupt."""
    caught: list[Any] = []  # the handler in force before the block, once a Ctrl-C came

    def make(previous: Any) -> Handler:
        def hold(_signum: int, _frame: FrameType | None) -> None:
            caught[:] = [previous]
        return hold

    with _sigint_handled(make):
        yield
    if caught:
        previous = caught[0]
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:  # SIG_DFL (or a C handler): an interrupt
            raise KeyboardInterrupt
