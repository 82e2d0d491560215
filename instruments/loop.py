"""The measurement loop between station and trainer.

Measurements become plain arrays training consumes (defect maps, device conductances);
training's weights become device states the station programs; on-chip inference is
cross-checked against an emulation from the die's own read-back resistances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from drivers.crossbar import KEEP
from drivers.prober import DieIndex
from training.defects import CellDefect, DefectMap
from training.mapping import ArrayLayout, DeviceModel

from .config import parse_station
from .programming import program_verified
from .station import Station
from .store import MEASURING_KINDS, SWEEP_KIND, RunStore, StoreError, die_key, parse_die_key


@dataclass
class MeasuredWafer:
    """Every measured die of a sweep run, in journal order."""

    run_id: int
    dies: list[DieIndex]
    maps: list[DefectMap]
    r_p_ohm: np.ndarray  # (D, rows, cols) read after writing all P
    r_ap_ohm: np.ndarray  # (D, rows, cols) read after writing all AP
    read_voltage_v: float  # the sweep's read voltage (from its station file)

    def device_model(self) -> DeviceModel:
        """Nominal conductances fitted from the healthy cells of every die."""
        kinds = np.stack([m.kinds for m in self.maps])
        try:
            return DeviceModel.fit(self.r_p_ohm, self.r_ap_ohm, kinds,
                                   v_read_v=self.read_voltage_v)
        except ValueError as err:
            raise ValueError(f"sweep run {self.run_id} ({len(self.dies)} dies): {err}") from None

    @property
    def keys(self) -> list[str]:
        """Die keys ('col,row') in journal order."""
        return [die_key(d) for d in self.dies]

    @property
    def grid(self) -> tuple[int, int]:
        """(columns, rows) of the smallest grid holding every measured die."""
        return (max(d.col for d in self.dies) + 1, max(d.row for d in self.dies) + 1)

    def defect_rates(self) -> dict[str, float]:
        """Share of defective cells per die key."""
        return {key: float((m.kinds != CellDefect.OK).mean())
                for key, m in zip(self.keys, self.maps, strict=True)}


def latest_measurement_run(store: RunStore) -> int:
    """The latest finished run that measured dies (a sweep, or the sweep inside a demo).

    An unfinished sweep is never used by accident: resume it (`mtjlab sweep --resume`) first.
    """
    finished = store.latest_run(MEASURING_KINDS, finished=True)
    if finished is not None:
        return finished
    last = store.latest_run(MEASURING_KINDS)
    if last is not None:
        row = store.run_row(last)
        if row["kind"] == SWEEP_KIND:
            what = row["status"]
            advice = "finish it first ('mtjlab sweep --resume', or a sweep job with resume_run)"
        else:
            what = f"a {row['status']} {row['kind']}"
            advice = ("it cannot be resumed: sweep again ('mtjlab sweep' or a sweep job, or "
                      "the demo)")
        raise StoreError(f"{store.path}: no finished sweep in this store (run {last} is "
                         f"{what}); {advice}")
    raise StoreError(f"{store.path}: no sweep in this store; sweep first ('mtjlab sweep' or a "
                     "sweep job)")


def skipped_sweeps_note(store: RunStore, used: int) -> str | None:
    """A warning when measuring runs newer than the one used exist (unfinished, so not
    used): training or evaluating on older maps is then worth saying."""
    newer = [r for r in store.runs() if r.kind in MEASURING_KINDS and r.run_id > used]
    if not newer:
        return None
    which = ", ".join(f"run {r.run_id} ({r.status})" for r in newer)
    return (f"warning: using sweep run {used}, the latest finished one; not used: {which} "
            "(finish a sweep with 'mtjlab sweep --resume RUN')")


def load_measurements(store: RunStore, run_id: int | None = None) -> MeasuredWafer:
    """The defect maps of a sweep run (default: the latest measuring run in the store)."""
    run_id = run_id if run_id is not None else latest_measurement_run(store)
    keys = store.dies_done(run_id)
    if not keys:
        raise StoreError(f"{store.path}: sweep run {run_id} has no measured die")
    maps, r_p, r_ap = [], [], []
    for key in keys:
        kinds = store.array(run_id, key, "kinds")
        rp = store.array(run_id, key, "r_p_ohm")
        maps.append(DefectMap(kinds, np.where(kinds != CellDefect.OK, rp, 0.0)))
        r_p.append(rp)
        r_ap.append(store.array(run_id, key, "r_ap_ohm"))
    dies = [DieIndex(*parse_die_key(k)) for k in keys]
    station = parse_station(store.run_row(run_id)["station_yaml"], f"{store.path} run {run_id}")
    return MeasuredWafer(run_id, dies, maps, np.stack(r_p), np.stack(r_ap),
                         station.measurement.read_voltage_v)


@dataclass
class DieInference:
    """One die programmed with one solution and run on the chip."""

    error_pct: float  # on-chip inference
    emulated_error_pct: float  # the same weights, from the die's read-back resistances
    agreement_pct: float  # predictions equal on chip and in emulation
    fidelity: float  # share of programmed cells that read back as their target
    predictions: np.ndarray


def emulated_currents(readback_ohm: np.ndarray, read_v: float):  # type: ignore[no-untyped-def]
    """Column currents a die with these resistances would give (software emulation)."""
    g = 1.0 / np.asarray(readback_ohm, dtype=np.float64)
    return lambda rows: read_v * (np.asarray(rows, dtype=np.float64) @ g)


def program_and_infer(station: Station, die: DieIndex, weights: list[torch.Tensor],
                      layout: ArrayLayout, x: np.ndarray, y: np.ndarray,
                      known_defects: np.ndarray | None = None) -> DieInference:
    """Program `weights` with write-verify on `die`, then infer `x` on chip and in emulation."""
    states = layout.target_states(weights)
    with station.at_die(die):
        result = program_verified(station, states, give_up=known_defects)
        chip = layout.infer(x, station.column_currents)
    emulated = layout.infer(x, emulated_currents(result.readback_ohm,
                                                 station.config.measurement.read_voltage_v))
    used = states != KEEP
    if known_defects is not None:
        used &= ~known_defects
    return DieInference(
        error_pct=float(100.0 * (chip != y).mean()),
        emulated_error_pct=float(100.0 * (emulated != y).mean()),
        agreement_pct=float(100.0 * (chip == emulated).mean()),
        fidelity=result.fidelity(used),
        predictions=chip,
    )


def summarize(per_die: dict[str, float], baseline_pct: float) -> dict[str, Any]:
    """Mean, std, median, min, max over dies, per-die values and the gap to the baseline."""
    v = np.array(list(per_die.values()), dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max()),
            "gap_pp": float(v.mean() - baseline_pct), "per_die": per_die}

