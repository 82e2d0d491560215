"""Shared helpers of the reliability tests: faulty stations, scripted faults, safety audits."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instruments.config import StationConfig
from instruments.station import Station
from instruments.store import RunStore
from instruments.sweep import run_sweep
from simulated_hw import PROBER_RESOURCE, TESTER_RESOURCE
from simulated_hw.faults import FAULT_KINDS

#: A small wafer (4 dies of 20 x 40 cells): every code path of a sweep, in a fraction of the time.
SMALL_WAFER = {"grid_cols": 2, "grid_rows": 2, "rows": 20, "cols": 40}
#: The simulator answers at once; a short timeout keeps injected timeouts cheap.
FAST_TIMEOUTS = {"prober": {"timeout_s": 0.05}, "tester": {"timeout_s": 0.05}}
#: 1 % of each instrument's messages fail, in a mix of every kind that instrument can show.
MIXED_1PCT = {"timeout_rate": 0.003, "drop_rate": 0.0015, "garble_rate": 0.0025,
              "scpi_error_rate": 0.003, "prober_error_rate": 0.003}


def station_config(wafer: dict[str, Any] | None = None, faults: dict[str, float] | None = None,
                   seed: int = 0, **sections: Any) -> StationConfig:
    """A simulated station with fast timeouts, an optional wafer override and fault rates."""
    wafer_cfg = dict(wafer or {})
    if faults:
        wafer_cfg["faults"] = faults
    data: dict[str, Any] = {
        "instruments": {"simulated": {"seed": seed, "wafer": wafer_cfg}, **FAST_TIMEOUTS}}
    data.update(sections)
    return StationConfig.model_validate(data)


def devices(station: Station) -> tuple[Any, Any]:
    """The simulator's prober and tester devices (ground truth, not the station's view)."""
    lib = station.rm.visalib
    return lib.devices[PROBER_RESOURCE], lib.devices[TESTER_RESOURCE]


def assert_safe(station: Station) -> None:
    """Chuck separated and output off, read from the simulator itself."""
    lib = station.rm.visalib
    assert not lib.prober.in_contact, "chuck left in contact"
    assert devices(station)[1].setting("output") == 0, "tester output left on"


def assert_within_limits(station: Station) -> None:
    """No pulse above the station's limits, no cell broken down, settings within limits."""
    wafer = station.rm.visalib.wafer
    limits = station.config.safety
    over = [p for p in wafer.pulses
            if p.amplitude_v > limits.max_pulse_v or p.width_s > limits.max_pulse_width_s]
    assert not over, f"pulses beyond the limits: {over[:5]}"
    assert sum(d.broken_down for d in wafer.dies) == 0
    tester = devices(station)[1]
    assert tester.setting("pulse_amplitude_v") <= limits.max_pulse_v
    assert tester.setting("pulse_width_s") <= limits.max_pulse_width_s
    assert tester.setting("read_voltage_v") <= limits.max_read_v
    assert tester.setting("compliance_a") <= limits.max_compliance_a


class StationRecorder:
    """A `station_factory` for run_sweep that keeps the stations it made."""

    def __init__(self, setup: Callable[[Station], None] | None = None) -> None:
        self.stations: list[Station] = []
        self.setup = setup

    def __call__(self, config: StationConfig) -> Station:
        station = Station(config)
        if self.setup is not None:
            self.setup(station)
        self.stations.append(station)
        return station


def sweep_kinds(store: RunStore, run_id: int) -> dict[str, np.ndarray]:
    """Defect map of every die done in a run."""
    return {d: store.array(run_id, d, "kinds") for d in store.dies_done(run_id)}


def reference_kinds(config: StationConfig, path: Any) -> dict[str, np.ndarray]:
    """Defect maps of a fault-free sweep of the same wafer."""
    clean = config.model_copy(deep=True)
    clean.instruments.simulated.wafer = clean.instruments.simulated.wafer.model_copy(
        update={"faults": type(clean.instruments.simulated.wafer.faults)()})
    with RunStore(path) as store:
        return sweep_kinds(store, run_sweep(clean, store))


@dataclass
class Rule:
    """Inject `kind` into messages matching `pattern` (a regex on the message), `times` times."""

    pattern: str
    kind: str
    times: int = 1
    skip: int = 0  # matching messages to let through first
    seen: int = 0


@dataclass
class ScriptedFaults:
    """A stand-in for the simulator's FaultInjector that faults chosen messages.

    Installed on both devices; `log` records every message with the fault it got.
    """

    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[bytes, str | None]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    armed: bool = True

    def draw(self, message: bytes, applicable: Collection[str] = FAULT_KINDS) -> str | None:
        kind = None
        if self.armed:
            for rule in self.rules:
                if rule.times and re.match(rule.pattern.encode(), message) \
                        and rule.kind in applicable:
                    rule.seen += 1
                    if rule.seen > rule.skip:
                        rule.times -= 1
                        kind = rule.kind
                        break
        if kind:
            self.counts[kind] += 1
        self.log.append((message[:40], kind))
        return kind

    def garble(self, reply: bytes) -> bytes:
        return reply[: len(reply) // 2]

    def install(self, station: Station) -> ScriptedFaults:
        for dev in devices(station):
            dev.faults = self
        return self
