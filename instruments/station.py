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

import pyvisa

import simulated_hw
from drivers.crossbar import CrossbarTester
from drivers.errors import (
    BlockError,
    CommunicationError,
    DriverError,
    InstrumentError,
    ProberError,
    ReplyError,
)
from drivers.prober import DieIndex, Prober, VeloxProber

from .config import StationConfig
from .safety import SafetyPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Error codes that mean "the link hiccuped", not "the request was wrong".
TRANSIENT_SCPI_CODES = frozenset({-300})
TRANSIENT_PROBER_CODES = frozenset({710})


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
        self._connect()
        self.identities = self._verify_identity()
        self.configure()

    # ---- connection --------------------------------------------------------------------
    def _resource_manager(self) -> pyvisa.ResourceManager:
        inst = self.config.instruments
        if inst.simulated is not None:
            return simulated_hw.resource_manager(seed=inst.simulated.seed,
                                                 config=inst.simulated.wafer)
        return pyvisa.ResourceManager(inst.visa_library)

    def _resource_names(self) -> tuple[str, str]:
        inst = self.config.instruments
        prober = inst.prober.resource or simulated_hw.PROBER_RESOURCE
        tester = inst.tester.resource or simulated_hw.TESTER_RESOURCE
        return prober, tester

    def _connect(self) -> None:
        inst = self.config.instruments
        prober_name, tester_name = self._resource_names()
        try:
            prober_res = self.rm.open_resource(prober_name)
            tester_res = self.rm.open_resource(tester_name)
        except pyvisa.errors.VisaIOError as err:
            raise StationError(f"cannot open instrument: {err.description} "
                               f"(prober {prober_name!r}, tester {tester_name!r})") from err
        prober_res.timeout = inst.prober.timeout_s * 1000
        tester_res.timeout = inst.tester.timeout_s * 1000
        self.prober = VeloxProber(prober_res)
        self.tester = CrossbarTester(tester_res, guard=self.policy.check)

    def _verify_identity(self) -> dict[str, str]:
        return {"prober": self.prober.identity(), "tester": self.tester.identity()}

    def reconnect(self) -> None:
        """Reopen both sessions, check they are the same instruments, restore position."""
        self.recoveries += 1
        for drv in (self.prober, self.tester):
            try:
                drv.close()
            except (DriverError, pyvisa.errors.Error, OSError):
                pass
        self._connect()
        identities = self._verify_identity()
        if identities != self.identities:
            raise StationError(f"instrument identity changed after reconnect: "
                               f"{self.identities} -> {identities}")
        self.configure()
        if self._die is not None:
            self._place(self._die)

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
                self._recover(what)
        raise StationError(f"{what}: gave up after {attempts} attempts: {last}") from last

    def _recover(self, what: str) -> None:
        for _ in range(self.config.retry.max_attempts):
            try:
                self.reconnect()
                return
            except Exception as err:
                if not is_transient(err):
                    raise
                log.warning("%s: reconnect failed: %s", what, err)
        raise StationError(f"{what}: could not reconnect to the instruments")

    # ---- settings ----------------------------------------------------------------------
    def configure(self, pulse_v: float | None = None) -> None:
        """Reset the tester's settings to the station file's (all policy-checked)."""
        m = self.config.measurement
        t = self.tester
        t.output_enabled = False
        t.read_voltage_v = m.read_voltage_v
        t.compliance_a = m.compliance_a
        t.pulse_width_s = m.pulse_width_s
        t.pulse_amplitude_v = m.pulse_v if pulse_v is None else pulse_v
        if self._die is not None:
            t.output_enabled = True

    def set_pulse(self, amplitude_v: float) -> None:
        """Change the write amplitude (the driver's guard enforces the safety limit)."""
        self.retry("set pulse amplitude",
                   lambda: setattr(self.tester, "pulse_amplitude_v", amplitude_v))

    def snapshot(self) -> dict[str, Any]:
        """Identities and tester settings, stored with each run."""
        return {"identities": self.identities, "tester": self.tester.snapshot(),
                "safety": self.config.safety.model_dump()}

    # ---- positioning -------------------------------------------------------------------
    def wafer_map(self) -> list[DieIndex]:
        return self.retry("read wafer map", self.prober.wafer_map)

    def _place(self, die: DieIndex) -> None:
        """Idempotently bring `die` into contact with the output on."""
        if self.prober.in_contact() and self.prober.position() == die:
            self.tester.output_enabled = True
            return
        self.tester.output_enabled = False
        self.prober.separate()
        self.prober.goto_die(die)
        self.prober.contact()
        self.tester.output_enabled = True

    @contextmanager
    def at_die(self, die: DieIndex) -> Iterator[None]:
        """Contact `die` for the duration of the block; separate and output off afterwards."""
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
        """Best effort, never raising: output off and chuck separated."""
        for action in (lambda: setattr(self.tester, "output_enabled", False),
                       self.prober.separate):
            for _ in range(2):
                try:
                    action()
                    break
                except Exception as err:
                    log.warning("safe state: %s; reconnecting", err)
                    try:
                        self._connect()
                    except Exception as err2:
                        log.error("safe state: reconnect failed: %s", err2)

    def close(self) -> None:
        self.safe_state()
        for drv in (self.prober, self.tester):
            try:
                drv.close()
            except Exception:
                pass

    def __enter__(self) -> Station:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
