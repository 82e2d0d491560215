"""Measuring a die's defect map: write all P and read, write all AP and read, classify.

A healthy cell reads in the P band after the P write and in the AP band after the AP write.
Shorts read far below the P band and opens far above the AP band whatever was written;
stuck cells stay in one band. Cells close to a threshold, or with an inconsistent pair of
reads, are re-measured before they are classified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers.crossbar import AP, P
from training.defects import CellDefect

from .config import MeasurementConfig
from .programming import program_verified, read_array
from .station import Station

_SHORT, _P, _AP, _OPEN = 0, 1, 2, 3
REMEASURE_READS = 3


@dataclass
class DieMeasurement:
    """A die's measured defect map with the resistances it was classified from."""

    kinds: np.ndarray  # int8 CellDefect codes (rows, cols)
    r_p_ohm: np.ndarray  # float32, read after writing P
    r_ap_ohm: np.ndarray  # float32, read after writing AP
    remeasured: int  # cells re-measured because they were ambiguous
    pulses: int  # programming rounds used

    def counts(self) -> dict[str, int]:
        return {k.name.lower(): int((self.kinds == k).sum()) for k in CellDefect}

    def resistance_ohm(self) -> np.ndarray:
        """The resistance that characterises each cell for training: P read for shorts and
        opens (they do not change), else the read of the state the cell ends in."""
        return self.r_p_ohm


def band(r_ohm: np.ndarray, m: MeasurementConfig) -> np.ndarray:
    """Short / P / AP / open band of each reading."""
    b = np.full(r_ohm.shape, _AP, dtype=np.int8)
    b[r_ohm <= m.p_ap_threshold_ohm] = _P
    b[r_ohm < m.short_max_ohm] = _SHORT
    b[r_ohm > m.open_min_ohm] = _OPEN
    return b


def near_threshold(r_ohm: np.ndarray, m: MeasurementConfig) -> np.ndarray:
    """Readings within the ambiguity band of any threshold."""
    near = np.zeros(r_ohm.shape, dtype=bool)
    for t in (m.short_max_ohm, m.p_ap_threshold_ohm, m.open_min_ohm):
        near |= np.abs(r_ohm - t) < m.ambiguity_band_rel * t
    return near


def classify(r_p: np.ndarray, r_ap: np.ndarray, m: MeasurementConfig
             ) -> tuple[np.ndarray, np.ndarray]:
    """CellDefect codes from the P-write and AP-write reads, and the ambiguous cells."""
    bp, bap = band(r_p, m), band(r_ap, m)
    kinds = np.full(r_p.shape, CellDefect.OK, dtype=np.int8)
    decided = np.zeros(r_p.shape, dtype=bool)
    rules = [
        ((bp == _P) & (bap == _AP), CellDefect.OK),
        ((bp == _SHORT) & (bap == _SHORT), CellDefect.SHORT),
        ((bp == _OPEN) & (bap == _OPEN), CellDefect.OPEN),
        ((bp == _P) & (bap == _P), CellDefect.STUCK_P),
        ((bp == _AP) & (bap == _AP), CellDefect.STUCK_AP),
    ]
    for mask, kind in rules:
        kinds[mask] = kind
        decided |= mask
    # Inconsistent pairs fall back to the band of the P read (documented, rare).
    fallback = {_SHORT: CellDefect.SHORT, _OPEN: CellDefect.OPEN, _P: CellDefect.STUCK_P,
                _AP: CellDefect.STUCK_AP}
    for b, kind in fallback.items():
        kinds[~decided & (bp == b)] = kind
    ambiguous = ~decided | near_threshold(r_p, m) | near_threshold(r_ap, m)
    return kinds, ambiguous


def _write_and_read(station: Station, state: int, cells: np.ndarray) -> np.ndarray:
    targets = np.where(cells, state, 2).astype(np.uint8)
    return program_verified(station, targets).readback_ohm


def measure_defect_map(station: Station) -> DieMeasurement:
    """Defect map of the die in contact."""
    m = station.config.measurement
    everything = np.ones(station.tester.shape, dtype=bool)
    res_p = program_verified(station, np.full(everything.shape, P, dtype=np.uint8))
    res_ap = program_verified(station, np.full(everything.shape, AP, dtype=np.uint8))
    r_p, r_ap = res_p.readback_ohm.copy(), res_ap.readback_ohm.copy()
    kinds, ambiguous = classify(r_p, r_ap, m)
    n_ambiguous = int(ambiguous.sum())
    if n_ambiguous:
        # Re-measure: write and average several reads of the ambiguous cells only.
        r_p[ambiguous] = _average_reads(station, P, ambiguous)
        r_ap[ambiguous] = _average_reads(station, AP, ambiguous)
        kinds2, _ = classify(r_p, r_ap, m)
        kinds[ambiguous] = kinds2[ambiguous]
    return DieMeasurement(kinds, r_p, r_ap, n_ambiguous, res_p.pulses + res_ap.pulses)


def _average_reads(station: Station, state: int, cells: np.ndarray) -> np.ndarray:
    _write_and_read(station, state, cells)
    reads = [read_array(station)[cells] for _ in range(REMEASURE_READS)]
    return np.median(np.stack(reads), axis=0)
