"""Fixtures and helpers for the simulated wafer, talked to through a real pyvisa ResourceManager."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import pyvisa

import simulated_hw
from simulated_hw import PROBER_RESOURCE, TESTER_RESOURCE, WaferConfig
from simulated_hw.physics import SimulatedWafer

TERM = {"write_termination": "\n", "read_termination": "\n"}
NO_ERROR = '0,"No error"'


def open_instrument(rm: pyvisa.ResourceManager, name: str, timeout_ms: int = 2000):
    """A message-based resource with the simulator's `\\n` terminations."""
    res = rm.open_resource(name, **TERM)
    res.timeout = timeout_ms
    return res


def error_code(tester) -> int:  # type: ignore[no-untyped-def]
    """Code of the oldest queued SCPI error (0 when the queue is empty)."""
    return int(tester.query("SYST:ERR?").split(",", 1)[0])


def drain_errors(tester) -> list[int]:  # type: ignore[no-untyped-def]
    """Every queued error code, oldest first; leaves the queue empty."""
    codes = []
    for _ in range(100):
        code = error_code(tester)
        if code == 0:
            return codes
        codes.append(code)
    raise AssertionError("error queue never emptied")


def block(payload: bytes) -> bytes:
    """An IEEE 488.2 definite-length block."""
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload


def classify(resistance: np.ndarray, wafer: SimulatedWafer, die: int) -> np.ndarray:
    """0 (P) / 1 (AP) from a read-back, thresholded half-way (geometric) between the states."""
    d = wafer.dies[die]
    r_p = float(np.median(d.r_p + d.r_access))
    r_ap = float(np.median(d.r_ap + d.r_access))
    return (resistance > np.sqrt(r_p * r_ap)).astype(np.uint8)


def healthy(wafer: SimulatedWafer, die: int) -> np.ndarray:
    """Mask of the cells without any defect."""
    return wafer.true_defects(die)[0] == 0


@pytest.fixture
def rm() -> Iterator[pyvisa.ResourceManager]:
    manager = simulated_hw.resource_manager(seed=0)
    yield manager
    manager.close()


@pytest.fixture
def wafer(rm: pyvisa.ResourceManager) -> SimulatedWafer:
    """The model behind `rm` (ground truth for assertions only)."""
    return rm.visalib.wafer


@pytest.fixture
def prober(rm: pyvisa.ResourceManager):  # type: ignore[no-untyped-def]
    res = open_instrument(rm, PROBER_RESOURCE)
    yield res
    res.close()


@pytest.fixture
def tester(rm: pyvisa.ResourceManager):  # type: ignore[no-untyped-def]
    res = open_instrument(rm, TESTER_RESOURCE)
    yield res
    res.close()


@pytest.fixture
def contact(prober, tester):  # type: ignore[no-untyped-def]
    """Die 0 (0, 0) in contact, tester output on; yields the tester."""
    assert prober.query("StepFirstDie") == "0: 0 0 0 1"
    assert prober.query("MoveChuckContact") == "0:"
    tester.write("OUTP ON")
    assert tester.query("SYST:ERR?") == NO_ERROR
    return tester


def small_config(**overrides: object) -> WaferConfig:
    """A 2 x 2 wafer of 4 x 6 arrays (fast; fuzzing can produce valid blocks by chance)."""
    base: dict[str, object] = {"grid_cols": 2, "grid_rows": 2, "rows": 4, "cols": 6}
    base.update(overrides)
    return WaferConfig(**base)
