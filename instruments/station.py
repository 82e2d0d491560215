"""The station: prober and crossbar tester composed from a validated station file.

It owns the VISA sessions, applies the safety policy to the tester, retries idempotent
operations after communication faults (reconnecting and re-verifying identity and position),
and always leaves the hardware safe: chuck separated, output off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pyvisa

import simulated_hw
from drivers.crossbar import CrossbarTester
from drivers.errors import (
    BlockError,
    CommunicationError,
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    ProberError,
    ReplyError,
)
from drivers.prober import DieIndex, Prober, VeloxProber, die_index

from .config import StationConfig
from .interrupts import signals_deferred
from .safety import SafetyPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Error codes that mean "the link hiccuped", not "the request was wrong".
TRANSIENT_SCPI_CODES = frozenset({-300})
TRANSIENT_PROBER_CODES = frozenset({710})
#: Attempts at re-establishing a session, per recovery, as a multiple of retry.max_attempts:
#: a reconnect sends some thirty messages, each of which may itself hit a fault.
RECONNECT_FACTOR = 3


class StationError(RuntimeError):
    """An operation that failed for good (retries exhausted or a real instrument error)."""


def is_transient(err: BaseException) -> bool:
    """True for faults worth retrying after a reconnect."""
    if isinstance(err, CommunicationError | BlockError | ReplyError):
        return True
    if isinstance(err, ProberError):
        return err.code in TRANSIENT_PROBER_CODES
    if isinstance(err, InstrumentError):
        return err.code in TRANSIENT_SCPI_CODES
    return False


class Station:
    """A connected probe station and crossbar tester."""

    def __init__(self, config: StationConfig) -> None:
        self.config = config
        self.policy = SafetyPolicy(config.safety)
        self.recoveries = 0
        self.rm = self._resource_manager()
        self.prober: Prober
        self.tester: CrossbarTester
        self._die: DieIndex | None = None  # die we intend to be in contact with
        self._pulse_v = config.measurement.pulse_v  # write amplitude to restore on reconnect
        self._shape: tuple[int, int] | None = None
        self.identities: dict[str, str] = {}
        attempts = self._session_attempts
        for attempt in range(attempts):
            try:
                self._connect()
                self.identities = self._read_identities()
                self.configure()
                return
            except Exception as err:
                if not is_transient(err) or attempt + 1 == attempts:
                    self._close_drivers()
                    if is_transient(err):
                        prober, tester = self._resource_names()
                        raise StationError(
                            f"cannot talk to the instruments (prober {prober!r}, tester "
                            f"{tester!r}): gave up after {attempts} attempts: {err}") from err
                    raise
                log.warning("connect: attempt %d/%d failed: %s", attempt + 1, attempts, err)
                self._close_drivers()
                time.sleep(self.config.retry.backoff_s)

    # ---- connection --------------------------------------------------------------------
    def _resource_manager(self) -> pyvisa.ResourceManager:
        inst = self.config.instruments
        if inst.simulated is not None:
            return simulated_hw.resource_manager(seed=inst.simulated.seed,
                                                 config=inst.simulated.wafer)
        try:
            return pyvisa.ResourceManager(inst.visa_library)
        except ValueError as err:  # pyvisa: "Wrapper not found: No package named pyvisa_py"
            if "pyvisa_py" not in str(err):
                raise
            raise ValueError(f"{err}: the station file's visa_library '@py' needs the "
                             "pyvisa-py backend: pip install pyvisa-py (or leave "
                             "visa_library empty for the system VISA library)") from None

    def _resource_names(self) -> tuple[str, str]:
        inst = self.config.instruments
        prober = inst.prober.resource or simulated_hw.PROBER_RESOURCE
        tester = inst.tester.resource or simulated_hw.TESTER_RESOURCE
        return prober, tester

    def _connect(self) -> None:
        """Open fresh sessions and wrap them; checks the tester's array size is stable."""
        inst = self.config.instruments
        prober_name, tester_name = self._resource_names()
        opened: list[Any] = []
        try:
            for name, timeout_s in ((prober_name, inst.prober.timeout_s),
                                    (tester_name, inst.tester.timeout_s)):
                res = self.rm.open_resource(name)
                opened.append(res)
                if not all(hasattr(res, a) for a in ("write_raw", "read_raw")):
                    raise ValueError(f"{name!r} is not a message-based instrument")
                res.timeout = timeout_s * 1000
        except (pyvisa.errors.Error, ValueError, OSError) as err:
            for res in opened:
                _quietly(res.close)
            detail = getattr(err, "description", None) or str(err)
            raise StationError(f"cannot open instrument: {detail} "
                               f"(prober {prober_name!r}, tester {tester_name!r})") from err
        self.prober = VeloxProber(opened[0])
        try:
            self.tester = CrossbarTester(opened[1], guard=self.policy.check)
            shape = self.tester.confirm_shape()
        except Exception:
            _quietly(opened[1].close)
            raise
        if self._shape and shape != self._shape:
            raise ReplyError(self.tester.name, "ARR:SIZE?", f"{shape[0]},{shape[1]}",
                             f"array size disagrees with {self._shape} before reconnecting")
        self._shape = self.tester.shape

    def _read_identities(self) -> dict[str, str]:
        """Both *IDN? replies, read until two reads agree (`agreed`): a garbled reply must
        not pass for an identity."""
        return self.agreed("read identities", lambda: {"prober": self.prober.identity(),
                                                       "tester": self.tester.identity()})

    def _close_drivers(self) -> None:
        for name in ("prober", "tester"):
            drv = getattr(self, name, None)
            if drv is not None:
                _quietly(drv.close)

    def reconnect(self) -> None:
        """Reopen both sessions, check they are the same instruments, restore the settings
        (the current write amplitude included) and the die in contact."""
        self.recoveries += 1
        self._close_drivers()
        self._connect()
        identities = self._steady(self._read_identities)
        for _ in range(self.config.retry.max_attempts - 1):  # a fault that repeats itself
            if identities == self.identities:
                break
            identities = self._steady(self._read_identities)
        if identities != self.identities:
            raise StationError(f"instrument identity changed after reconnect: "
                               f"{self.identities} -> {identities}")
        self._steady(self.tester.clear)  # errors queued by the failed exchange are stale now
        self._steady(lambda: self.configure(self._pulse_v))
        if self._die is not None:
            die = self._die
            self._steady(lambda: self._place(die))

    def _steady(self, op: Callable[[], T]) -> T:
        """One idempotent step of a reconnect, repeated on the open sessions after a timeout,
        garbled reply or spurious error; a lost connection restarts the whole reconnect."""
        attempts = self.config.retry.max_attempts
        for attempt in range(attempts):
            try:
                return op()
            except ConnectionLost:
                raise
            except Exception as err:
                if not is_transient(err) or attempt + 1 == attempts:
                    raise
                log.info("reconnect step failed (%s); repeating it", err)
        raise AssertionError("unreachable")

    @property
    def _session_attempts(self) -> int:
        """Attempts at (re-)establishing the session in one recovery."""
        return self.config.retry.max_attempts * RECONNECT_FACTOR

    def retry(self, what: str, op: Callable[[], T]) -> T:
        """Run an idempotent operation, reconnecting between bounded attempts."""
        attempts = self.config.retry.max_attempts
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                return op()
            except Exception as err:
                if not is_transient(err):
                    raise
                last = err
                log.warning("%s: attempt %d/%d failed: %s", what, attempt + 1, attempts, err)
                if attempt + 1 == attempts:
                    break
                time.sleep(self.config.retry.backoff_s)
                self.recover(what)
        raise StationError(f"{what}: gave up after {attempts} attempts: {last}") from last

    def column_currents(self, rows: np.ndarray, before_each: Callable[[], None] | None = None
                        ) -> np.ndarray:
        """Column currents (n, cols) in A of row patterns (n, rows) on the die under the
        probes, in queries of at most `measurement.infer_batch_rows` vectors, each retried
        on its own (an output layer read in parts sends n x output_reads patterns).
        before_each() runs before every query (e.g. to honour a stop request)."""
        step = self.config.measurement.infer_batch_rows
        parts = []
        for i in range(0, len(rows), step):
            if before_each is not None:
                before_each()
            part = rows[i:i + step]
            parts.append(self.retry("inference", lambda part=part: self.tester.infer(part)))
        return np.concatenate(parts)

    def recover(self, what: str) -> None:
        """Reconnect after a transient fault, with bounded attempts; StationError if none
        succeeds. Non-transient errors (e.g. a changed identity) propagate at once."""
        attempts = self._session_attempts
        for attempt in range(attempts):
            try:
                self.reconnect()
                return
            except Exception as err:
                if not is_transient(err):
                    raise
                log.warning("%s: reconnect %d/%d failed: %s", what, attempt + 1, attempts, err)
                time.sleep(self.config.retry.backoff_s)
        raise StationError(f"{what}: could not reconnect to the instruments "
                           f"({attempts} attempts)")

    # ---- settings ----------------------------------------------------------------------
    def configure(self, pulse_v: float | None = None) -> None:
        """Reset the tester's settings to the station file's (all policy-checked); the write
        amplitude to `pulse_v` if given. Leaves the output off: only `_place` switches it
        on, once the die is confirmed in contact."""
        m = self.config.measurement
        t = self.tester
        amplitude = m.pulse_v if pulse_v is None else pulse_v
        t.output_enabled = False
        t.read_voltage_v = m.read_voltage_v
        t.compliance_a = m.compliance_a
        t.averages = m.averages
        t.pulse_width_s = m.pulse_width_s
        t.pulse_amplitude_v = amplitude
        self._pulse_v = amplitude

    def set_pulse(self, amplitude_v: float) -> None:
        """Change the write amplitude (the driver's guard enforces the safety limit); kept
        across reconnects."""

        def apply() -> None:
            self.tester.pulse_amplitude_v = amplitude_v
            self._pulse_v = amplitude_v

        self.retry("set pulse amplitude", apply)

    def snapshot(self) -> dict[str, Any]:
        """Identities and tester settings, stored with each run.

        The whole set is read until two passes agree (`agreed`), so neither a fault nor a
        garbled but parseable reply ends up in the store.
        """
        controls = self.tester.controls()
        values = self.agreed("read tester settings", lambda: {
            name: self.retry(f"read {name}", lambda name=name: getattr(self.tester, name))
            for name in controls})
        return {"identities": self.identities, "tester": self.tester.snapshot(values=values),
                "safety": self.config.safety.model_dump()}

    def agreed(self, what: str, read: Callable[[], T]) -> T:
        """`read()` (which retries as it needs) until two results in a row agree: a garbled
        reply that still parses (a digit cut off a die index, a setting) must not pass for
        the instrument's."""
        previous: list[T] = []
        for _ in range(self._session_attempts):
            value = read()
            if previous and value == previous[0]:
                return value
            previous = [value]
        raise StationError(f"{what}: two reads in a row never agreed")

    # ---- positioning -------------------------------------------------------------------
    def wafer_map(self) -> list[DieIndex]:
        """The prober's wafer map, read until two reads agree (`agreed`)."""
        return self.agreed("read wafer map",
                           lambda: self.retry("read wafer map", lambda: self.prober.wafer_map()))

    def _place(self, die: DieIndex) -> None:
        """Idempotently bring `die` into contact with the output on; the position is read
        back before the output goes on."""
        if self.prober.in_contact() and self.prober.position() == die:
            self.tester.output_enabled = True
            return
        self.tester.output_enabled = False
        self.prober.separate()
        self.prober.goto_die(die)
        self.prober.contact()
        where = self.prober.position()
        if where != die:
            raise ReplyError(self.prober.name, "ReadChuckIndex", where,
                             f"expected die {die} after stepping")
        self.tester.output_enabled = True

    @contextmanager
    def at_die(self, die: DieIndex) -> Iterator[None]:
        """Contact `die` for the duration of the block; separate and output off afterwards.
        TypeError, nothing sent, unless `die` is a pair of integers (`die_index`)."""
        die = die_index(die)
        self._die = die
        try:
            self.retry(f"contact die {die}", lambda: self._place(die))
            yield
        except BaseException:
            self._die = None
            self.safe_state()
            raise
        self._die = None
        self.retry(f"separate from die {die}", self._leave)

    def _leave(self) -> None:
        self.tester.output_enabled = False
        self.prober.separate()

    def safe_state(self) -> None:
        """Best effort: output off, then chuck separated, reopening the sessions (without
        re-contacting any die) as often as recovery would. The chuck is lifted only once the
        output is confirmed off, unless the tester has gone silent (a timeout, or sessions
        that cannot be reopened: a dead tester must not keep the chuck down) or
        `max(2, retry.max_attempts)` rounds have passed. Ctrl-C and SIGTERM wait until it is
        done (and are handled then: the only way this raises)."""
        output_off = separated = silent = False
        attempts = self._session_attempts
        patience = max(2, self.config.retry.max_attempts)
        with signals_deferred():
            for attempt in range(attempts):
                if not output_off:
                    err = self._safely("output off", lambda: setattr(
                        self.tester, "output_enabled", False))
                    output_off = err is None
                    silent = silent or isinstance(err, InstrumentTimeout)
                if not separated and (output_off or silent or attempt + 1 >= patience):
                    if not output_off:
                        log.error("safe state: separating with the output not confirmed off")
                    separated = self._safely("separate", self.prober.separate) is None
                if output_off and separated:
                    return
                if attempt + 1 == attempts:
                    break
                log.warning("safe state: reopening the sessions")
                self._close_drivers()
                try:
                    self._connect()
                except Exception as err:
                    silent = True
                    log.error("safe state: reconnect failed: %s", err)
            log.error("safe state not confirmed after %d attempts: %s", attempts, ", ".join(
                name for name, done in (("output off", output_off), ("separate", separated))
                if not done))

    @staticmethod
    def _safely(name: str, action: Callable[[], object]) -> Exception | None:
        """action() for the safe state: None if it succeeded, else its error (logged)."""
        try:
            action()
            return None
        except Exception as err:
            log.warning("safe state: %s: %s", name, err)
            return err

    def close(self) -> None:
        """Safe state, then release the sessions (also when a signal held while making safe
        is raised at its end)."""
        try:
            self.safe_state()
        finally:
            self._close_drivers()

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quietly(action: Callable[[], object]) -> None:
    """Run a clean-up action, ignoring any failure (the session may be gone already)."""
    try:
        action()
    except Exception as err:
        log.debug("ignored during clean-up: %s", err)
