"""Interrupt policy: Ctrl-C is a stop request between dies, SIGTERM stops at once, and
neither interrupts making the station safe.

Python delivers signals to the main thread only, so elsewhere (a service worker) these
context managers do nothing; there a stop comes through `StopFlag` alone.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any]
#: the signals these context managers handle: Ctrl-C, and a polite kill (systemd, `kill`,
#: a scheduler's time limit), which the default action would obey with the chuck down
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: stop at once, as a second Ctrl-C does; the clean-up on the way out
    (`Station.safe_state`, the run's status) still runs."""


@dataclass
class StopFlag:
    """Set from a signal handler or another thread; checked at safe points.

    A plain attribute, no lock: a second Ctrl-C can arrive while the first one's handler is
    still setting it, and a handler that waits for a lock its own thread holds waits for
    ever (`threading.Event.set` did, and hung the sweep on a double Ctrl-C)."""

    _requested: bool = False

    def request(self) -> None:
        self._requested = True

    def clear(self) -> None:
        self._requested = False

    @property
    def requested(self) -> bool:
        return self._requested


@contextmanager
def _handled(make: Callable[[int, Any], Handler | None]) -> Iterator[None]:
    """Each signal of SIGNALS handled by make(signal, previous handler) for the block (None:
    left as it is), in the main thread; the previous handlers are restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, before in previous.items():
        handler = make(sig, before)
        if handler is not None:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


#: set once SIGTERM has raised `Terminated`: the process is on its way out, and a further
#: SIGTERM, caught by this handler or by an outer one, must not cut its clean-up short;
#: cleared when the outermost block ends (a Python caller that went on lives on)
_TERMINATING = StopFlag()
_OPEN_BLOCKS: list[None] = []


@contextmanager
def stop_on_interrupt(flag: StopFlag | None = None) -> Iterator[None]:
    """SIGTERM raises `Terminated` (once: later ones are ignored, so they cannot cut the
    clean-up short). With a flag, the first Ctrl-C is a stop request and a second one
    interrupts at once; without one, Ctrl-C is left as it is (KeyboardInterrupt)."""

    def make(sig: int, previous: Any) -> Handler | None:
        if sig == signal.SIGTERM:
            def terminate(_signum: int, _frame: FrameType | None) -> None:
                if not _TERMINATING.requested:  # one per process, nested handlers included
                    _TERMINATING.request()
                    raise Terminated("terminated (SIGTERM)")
            return terminate
        if flag is None:
            return None

        def stop(_signum: int, _frame: FrameType | None) -> None:
            if flag.requested:
                signal.signal(signal.SIGINT, previous)
                raise KeyboardInterrupt
            flag.request()
        return stop

    _OPEN_BLOCKS.append(None)
    try:
        with _handled(make):
            yield
    finally:
        _OPEN_BLOCKS.pop()
        if not _OPEN_BLOCKS:
            _TERMINATING.clear()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then hand each to the handler it would
    have reached (a sweep's stop request, `Terminated`, KeyboardInterrupt, or the default
    action): making the station safe (output off, chuck separated) must not be cut short by
    the operator's own interrupt."""
    caught: dict[int, Any] = {}  # signal -> the handler in force before the block

    def make(sig: int, previous: Any) -> Handler:
        def hold(_signum: int, _frame: FrameType | None) -> None:
            caught[sig] = previous
        return hold

    with _handled(make):
        yield
    for sig, previous in caught.items():
        if callable(previous):
            previous(sig, None)
        elif previous != signal.SIG_IGN:  # the default action (or a C handler's)
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(sig)
