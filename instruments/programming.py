"""Write-verify programming of a die: pulse, read back, re-pulse only what did not switch.

A write pulse is not idempotent, so it is never repeated blindly: after any pulse (or a fault
during one) the array is read back first and only the cells still wrong are pulsed again, with
the amplitude stepped up inside the safety limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.crossbar import KEEP, check_targets

from .config import MeasurementConfig
from .station import Station, is_transient


@dataclass
class ProgramResult:
    """Outcome of programming one die."""

    readback_ohm: np.ndarray  # float32 (rows, cols), last read
    verified: np.ndarray  # bool (rows, cols): addressed cell reads as its target
    pulses: int  # programming rounds used
    final_pulse_v: float

    def fidelity(self, addressed: np.ndarray) -> float:
        """Share of addressed cells that read back as their target."""
        n = int(addressed.sum())
        return float(self.verified[addressed].sum() / n) if n else 1.0


def read_array(station: Station) -> np.ndarray:
    """One full-array resistance read (idempotent, retried)."""
    # A lambda, not the bound method: a reconnect replaces station.tester.
    return station.retry("read array", lambda: station.tester.read_array())


def states_from_resistance(r_ohm: np.ndarray, m: MeasurementConfig) -> np.ndarray:
    """0 (P) or 1 (AP) per cell by the P/AP threshold (meaningless for shorts and opens)."""
    return (r_ohm > m.p_ap_threshold_ohm).astype(np.uint8)


def program_verified(station: Station, targets: np.ndarray,
                     give_up: np.ndarray | None = None) -> ProgramResult:
    """Program `targets` (0 P, 1 AP, 2 leave) with write-verify.

    `give_up`, a bool mask, marks cells known not to respond (shorts, opens): they are never
    pulsed. ValueError, nothing sent, for a mask of another shape or type (numpy would take
    0/1 integers for row indices).
    """
    m = station.config.measurement
    limit = station.config.safety.max_pulse_v
    targets = check_targets(targets, station.tester.shape)  # before anything is sent
    if give_up is not None:
        give_up = np.asarray(give_up)
        if give_up.dtype != np.bool_ or give_up.shape != targets.shape:
            raise ValueError(f"give_up must be a bool mask of shape {targets.shape}, got "
                             f"{give_up.dtype} of shape {give_up.shape}")
    addressed = targets != KEEP
    pending = targets.copy()
    if give_up is not None:
        pending[give_up] = KEEP
    readback = None
    verified = np.zeros(targets.shape, dtype=bool)
    pulse_v = m.pulse_v
    rounds = 0
    for attempt in range(m.max_write_pulses):
        # rounded to 1 nV: 0.9 + 0.05 is 0.9500000000000001 V, 18 characters on the wire
        pulse_v = min(round(m.pulse_v + attempt * m.pulse_step_v, 9), limit)
        station.set_pulse(pulse_v)
        try:
            station.tester.program_array(pending)
        except Exception as err:
            if not is_transient(err):
                raise
            # Fate of the pulse unknown: never repeat it blindly; the read below decides.
            station.recover("program array")
        rounds += 1
        readback = read_array(station)
        verified = addressed & (states_from_resistance(readback, m) == targets)
        pending = np.where(addressed & ~verified, targets, KEEP).astype(np.uint8)
        if give_up is not None:
            pending[give_up] = KEEP
        if not (pending != KEEP).any():
            break
    station.set_pulse(m.pulse_v)
    assert readback is not None
    return ProgramResult(readback.astype(np.float32), verified, rounds, pulse_v)
