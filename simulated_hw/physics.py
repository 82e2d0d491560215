"""Vectorised physics of a wafer of 1T1MTJ crossbar dies (numpy, deterministic from a seed).

Each die is a rows x cols array. A cell has a true MTJ state (0 = P, 1 = AP), per-device
resistances and possibly a defect. The model keeps state across operations: a written cell stays
written, a broken-down cell stays shorted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from .config import WaferConfig


class Defect(IntEnum):
    """Ground-truth cell condition (training's CellDefect uses the same codes)."""

    OK = 0
    SHORT = 1
    OPEN = 2
    STUCK_P = 3
    STUCK_AP = 4


P, AP, SKIP = 0, 1, 2


@dataclass
class PulseRecord:
    """One write operation as the device received it, for safety audits."""

    die: int
    amplitude_v: float
    width_s: float
    cells: int


@dataclass
class Die:
    """State of one die: per-cell resistances, defects and the stored bit."""

    r_p: np.ndarray  # float64 (rows, cols), MTJ only
    r_ap: np.ndarray
    r_access: np.ndarray
    defect: np.ndarray  # int8 Defect codes
    r_defect: np.ndarray  # MTJ resistance of shorted/open cells
    state: np.ndarray  # uint8 0 = P, 1 = AP
    rng: np.random.Generator  # this die's own stream: read noise, switching draws
    defect_rate: float = 0.0
    broken_down: int = 0

    def mtj_resistance(self) -> np.ndarray:
        """The MTJ resistance each cell presents now, defects included."""
        stored = np.where(self.state == AP, self.r_ap, self.r_p)
        stored = np.where(self.defect == Defect.STUCK_P, self.r_p, stored)
        stored = np.where(self.defect == Defect.STUCK_AP, self.r_ap, stored)
        shorted_or_open = (self.defect == Defect.SHORT) | (self.defect == Defect.OPEN)
        return np.where(shorted_or_open, self.r_defect, stored)

    def cell_resistance(self) -> np.ndarray:
        """Noise-free series resistance: access transistor plus MTJ."""
        return self.r_access + self.mtj_resistance()


@dataclass
class SimulatedWafer:
    """A wafer of dies with the physics of reads, writes and analog inference."""

    config: WaferConfig = field(default_factory=WaferConfig)
    seed: int = 0

    def __post_init__(self) -> None:
        self.dies: list[Die] = [self._make_die(i) for i in range(self.config.n_dies)]
        self.pulses: list[PulseRecord] = []

    # ---- construction -------------------------------------------------------------------
    def _make_die(self, index: int) -> Die:
        cfg, dev, dfc = self.config, self.config.device, self.config.defects
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2, index]))
        shape = (cfg.rows, cfg.cols)
        r_p = dev.r_p_median_ohm * np.exp(dev.r_p_sigma_log * rng.standard_normal(shape))
        tmr = np.maximum(dev.tmr_mean + dev.tmr_sigma * rng.standard_normal(shape), dev.tmr_min)
        r_ap = r_p * (1.0 + tmr)
        r_access = dev.r_access_ohm * (1.0 + dev.r_access_sigma_rel * rng.standard_normal(shape))

        # Die rate: lognormal (mean-preserving) times the bad-die factor, normalised so that
        # the expected rate over the wafer is mean_defect_rate.
        sigma = dfc.rate_sigma_log
        bad_die_boost = 1.0 + dfc.bad_die_probability * (dfc.bad_die_rate_factor - 1.0)
        rate = dfc.mean_defect_rate / bad_die_boost * np.exp(
            sigma * rng.standard_normal() - sigma**2 / 2)
        if rng.random() < dfc.bad_die_probability:
            rate *= dfc.bad_die_rate_factor
        rate = float(min(rate, 0.5))
        defect = np.zeros(shape, dtype=np.int8)
        hit = rng.random(shape) < rate
        kinds = rng.choice(
            [Defect.SHORT, Defect.OPEN, Defect.STUCK_P, Defect.STUCK_AP],
            size=int(hit.sum()), p=np.asarray(dfc.fractions()),
        )
        defect[hit] = kinds
        # Whole failed lines read as open (a broken word or bit line).
        if rng.random() < dfc.failed_row_probability:
            defect[rng.integers(cfg.rows), :] = Defect.OPEN
        if rng.random() < dfc.failed_col_probability:
            defect[:, rng.integers(cfg.cols)] = Defect.OPEN
        r_defect = np.zeros(shape)
        r_defect[defect == Defect.SHORT] = self._loguniform(
            rng, dfc.r_short_min_ohm, dfc.r_short_max_ohm, int((defect == Defect.SHORT).sum()))
        r_defect[defect == Defect.OPEN] = self._loguniform(
            rng, dfc.r_open_min_ohm, dfc.r_open_max_ohm, int((defect == Defect.OPEN).sum()))
        state = rng.integers(0, 2, size=shape, dtype=np.uint8)  # as fabricated: random
        # Operations draw from a per-die stream, so a die's measurements do not depend on
        # which other dies were visited before it (a resumed sweep sees the same noise).
        op_rng = np.random.default_rng(np.random.SeedSequence([self.seed, 3, index]))
        return Die(r_p, r_ap, r_access, defect, r_defect, state, op_rng, defect_rate=rate)

    @staticmethod
    def _loguniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
        return np.exp(rng.uniform(np.log(lo), np.log(hi), n))

    # ---- geometry -----------------------------------------------------------------------
    @property
    def n_dies(self) -> int:
        return len(self.dies)

    @property
    def shape(self) -> tuple[int, int]:
        return self.config.rows, self.config.cols

    def die_index(self, col: int, row: int) -> int:
        """Die number of a grid position (row-major)."""
        if not (0 <= col < self.config.grid_cols and 0 <= row < self.config.grid_rows):
            raise IndexError(f"die ({col}, {row}) is off the {self.config.grid_cols}x"
                             f"{self.config.grid_rows} grid")
        return row * self.config.grid_cols + col

    def die_position(self, index: int) -> tuple[int, int]:
        """Grid (col, row) of a die number."""
        return index % self.config.grid_cols, index // self.config.grid_cols

    # ---- ground truth (tests and benchmarks only; the station never calls these) ---------
    def true_defects(self, die: int) -> tuple[np.ndarray, np.ndarray]:
        """Defect codes (int8) and noise-free cell resistance in ohm (float32) of a die."""
        d = self.dies[die]
        return d.defect.copy(), d.cell_resistance().astype(np.float32)

    def true_states(self, die: int) -> np.ndarray:
        """Stored bits (0 = P, 1 = AP) of a die."""
        return self.dies[die].state.copy()

    # ---- operations ---------------------------------------------------------------------
    def _noise_rel(self, averages: int) -> float:
        """Relative read noise of the mean of `averages` independent readings."""
        return self.config.device.read_noise_rel / np.sqrt(max(int(averages), 1))

    def read(self, die: int, read_v: float, cells: tuple | slice = np.s_[:, :],
             averages: int = 1) -> np.ndarray:
        """Measured resistance (ohm) of the addressed cells, with read noise.

        averages: readings averaged by the instrument (noise falls as 1/sqrt(averages)).
        """
        del read_v  # linear devices at read bias: resistance does not depend on it
        d = self.dies[die]
        r = d.cell_resistance()[cells]
        noise = self._noise_rel(averages) * d.rng.standard_normal(np.shape(r))
        return r * (1.0 + noise)

    def switching_probability(self, amplitude_v: float, width_s: float) -> float:
        """Probability that one pulse switches a healthy cell."""
        w = self.config.write
        if amplitude_v <= 0 or width_s <= 0:
            return 0.0
        rate = np.log(1.0 / w.write_error_rate_nominal) * (width_s / w.nominal_pulse_width_s)
        rate *= np.exp(w.voltage_slope_per_v * (amplitude_v - w.nominal_pulse_v))
        return float(-np.expm1(-rate))

    def write(self, die: int, targets: np.ndarray, amplitude_v: float, width_s: float,
              cells: tuple | slice = np.s_[:, :]) -> None:
        """One pulse towards each target (0 P, 1 AP, 2 skip) on the addressed cells."""
        d = self.dies[die]
        targets = np.asarray(targets, dtype=np.uint8)
        addressed = np.zeros(d.state.shape, dtype=bool)
        addressed[cells] = targets != SKIP
        full_targets = np.full(d.state.shape, SKIP, dtype=np.uint8)
        full_targets[cells] = targets
        n = int(addressed.sum())
        self.pulses.append(PulseRecord(die, float(amplitude_v), float(width_s), n))
        if n == 0:
            return
        if amplitude_v > self.config.write.breakdown_v:
            # an open cell (or a broken line) has no barrier left to break down: it stays open
            fresh = addressed & (d.defect != Defect.SHORT) & (d.defect != Defect.OPEN)
            k = int(fresh.sum())
            dfc = self.config.defects
            d.r_defect[fresh] = self._loguniform(d.rng, dfc.r_short_min_ohm,
                                                 dfc.r_short_max_ohm, k)
            d.defect[fresh] = Defect.SHORT
            d.broken_down += k
            return
        p = self.switching_probability(amplitude_v, width_s)
        flip = addressed & (d.state != full_targets) & (d.rng.random(d.state.shape) < p)
        d.state[flip] = full_targets[flip]

    def column_currents(self, die: int, inputs: np.ndarray, read_v: float,
                        compliance_a: float, averages: int = 1) -> np.ndarray:
        """Currents (A) of every column for each binary input vector applied to the rows.

        Each driven cell's current carries the same relative read noise as a single-cell read,
        independently, so a column's noise is their sum in quadrature.
        """
        d = self.dies[die]
        g = 1.0 / d.cell_resistance()
        x = np.asarray(inputs, dtype=np.float64)
        currents = read_v * (x @ g)
        sigma = self._noise_rel(averages) * read_v * np.sqrt(np.square(x) @ (g * g))
        currents += sigma * d.rng.standard_normal(currents.shape)
        return np.clip(currents, -compliance_a, compliance_a)

    def max_pulse_v(self) -> float:
        """Largest amplitude any write pulse has had (0 if none)."""
        return max((p.amplitude_v for p in self.pulses if p.cells), default=0.0)
