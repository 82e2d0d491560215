"""Wafer sweep: visit each die (separate, step, contact, measure, separate) with a journal.

Each die's results are committed atomically with the journal entry that marks it done, so a
sweep killed at any moment resumes without repeating or losing a die. SIGINT (Ctrl-C) asks
the sweep to stop at the next safe point: between dies, chuck separated, output off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from drivers.prober import DieIndex

from . import __version__
from .config import StationConfig, parse_station, station_to_yaml
from .defect_map import DieMeasurement, measure_defect_map
from .interrupts import StopFlag, Terminated
from .station import Station
from .store import SWEEP_KIND, RunStore, die_key


class SweepInterrupted(RuntimeError):
    """The operator asked the sweep to stop; it stopped at a safe point and can resume."""

    def __init__(self, die: str) -> None:
        super().__init__(f"stopped before die {die}; resume with --resume")
        self.die = die


def planned_dies(station: Station) -> list[DieIndex]:
    """Dies to visit, from the station file's wafer plan and the prober's wafer map."""
    plan = station.config.wafer
    wafer_map = station.wafer_map()
    if plan.dies == "all":
        return wafer_map
    wanted = [DieIndex(c, r) for c, r in plan.dies]
    unknown = [d for d in wanted if d not in wafer_map]
    if unknown:
        shown = ", ".join(f"[{d.col}, {d.row}]" for d in unknown[:10])
        cols, rows = [d.col for d in wafer_map], [d.row for d in wafer_map]
        raise ValueError(f"the station file's wafer.dies names {len(unknown)} die(s) not on the "
                         f"prober's wafer map of {len(wafer_map)}: {shown}"
                         + (" ..." if len(unknown) > 10 else "")
                         + f" (its dies span columns {min(cols)}-{max(cols)}, rows "
                           f"{min(rows)}-{max(rows)})")
    if plan.order == "map":
        return [d for d in wafer_map if d in wanted]
    return wanted


#: station-file settings that shape a sweep's data: a resumed sweep must keep them (timeouts,
#: retries, safety limits and the name may change between the two parts)
RESUME_KEYS = ("instruments.simulated", "instruments.visa_library",
               "instruments.prober.resource", "instruments.prober.dialect",
               "instruments.tester.resource", "wafer", "measurement")
#: settings inside those that a sweep never uses (inference only)
RESUME_FREE = ("measurement.infer_batch_rows",)


def check_resume(store: RunStore, run_id: int, station: Station) -> None:
    """Refuse to resume `run_id` with other instruments or another station file than it was
    started with: its remaining dies would be measured on another wafer, plan or settings
    and stored as if they were the same run."""
    stored = parse_station(store.run_row(run_id)["station_yaml"], f"run {run_id}").model_dump()
    now = station.config.model_dump()

    def at(tree: dict[str, Any], key: str) -> Any:
        for part in key.split("."):
            tree = tree[part]
        return tree

    for free in RESUME_FREE:
        section, _, name = free.rpartition(".")
        for tree in (stored, now):
            at(tree, section).pop(name, None)
    changed = [key for key in RESUME_KEYS if at(stored, key) != at(now, key)]
    if changed:
        raise ValueError(f"{store.path}: run {run_id} was started with other settings "
                         f"({', '.join(changed)} differ); resume it with its own station file "
                         f"(mtjlab runs --store {store.path} --station {run_id}) or start a "
                         f"new sweep")
    identities = store.snapshot(run_id).get("identities")
    if identities and identities != station.identities:
        raise ValueError(f"{store.path}: run {run_id} was started on other instruments "
                         f"({identities} then, {station.identities} now)")


def check_resumable(store: RunStore, run_id: int) -> None:
    """ValueError unless `run_id` is an unfinished sweep of the store (StoreError if absent)."""
    row = store.run_row(run_id)
    if row["kind"] != SWEEP_KIND or row["status"] == "finished":
        raise ValueError(f"run {run_id} is a {row['status']} {row['kind']} run, not an "
                         "unfinished sweep")


def begin_sweep_run(store: RunStore, station: Station, resume_run: int | None) -> int:
    """A new sweep run, or `resume_run` checked against this station and marked running."""
    if resume_run is None:
        return start_run(store, station, station.config, SWEEP_KIND)
    check_resumable(store, resume_run)  # also when it finished since the request was made
    check_resume(store, resume_run, station)
    store.set_status(resume_run, "running")
    return resume_run


def die_arrays(m: DieMeasurement) -> dict[str, np.ndarray]:
    return {"kinds": m.kinds, "r_p_ohm": m.r_p_ohm, "r_ap_ohm": m.r_ap_ohm}


def start_run(store: RunStore, station: Station, config: StationConfig, kind: str,
              seeds: dict[str, int] | None = None) -> int:
    """A new run with the station file, instrument snapshot, version and seeds."""
    sim = config.instruments.simulated
    seeds = dict(seeds or {})
    if sim is not None:
        seeds.setdefault("wafer", sim.seed)
    return store.create_run(kind, station_to_yaml(config), station.snapshot(), __version__,
                            seeds)


ProgressFn = Callable[[DieIndex, DieMeasurement | None], None]


def sweep(station: Station, store: RunStore, run_id: int, *,
          stop: StopFlag | None = None, progress: ProgressFn | None = None,
          dies: list[DieIndex] | None = None) -> list[DieIndex]:
    """Measure every planned die not yet done in `run_id`; returns the dies measured now.

    dies: the planned dies if the caller already read them (`planned_dies`), else read here.
    """
    stop = stop or StopFlag()
    done = set(store.dies_done(run_id))
    measured: list[DieIndex] = []
    for die in planned_dies(station) if dies is None else dies:
        key = die_key(die)
        if key in done:
            if progress:
                progress(die, None)
            continue
        if stop.requested:
            raise SweepInterrupted(key)
        store.journal(run_id, key, "die", "started")
        with station.at_die(die):
            store.journal(run_id, key, "measure", "started")
            m = measure_defect_map(station)
        store.commit_die(run_id, key, die_arrays(m),
                         {"counts": m.counts(), "remeasured": m.remeasured, "pulses": m.pulses})
        measured.append(die)
        if progress:
            progress(die, m)
    return measured


def sweep_run(station: Station, store: RunStore, resume_run: int | None, *,
              stop: StopFlag | None = None, progress: ProgressFn | None = None,
              planned: Callable[[int, int], None] | None = None) -> tuple[int, list[DieIndex]]:
    """A whole sweep run on an open station, for the CLI and the service alike: start it (or
    resume `resume_run`), measure the dies not yet done, keep its status honest.

    planned(run_id, n) is called once the run exists and its n planned dies are known (before
    the first die; progress bars get their total). Returns (run_id, dies measured now)."""
    dies = planned_dies(station)  # a bad plan is refused before any run is made
    run_id = begin_sweep_run(store, station, resume_run)
    with store.status_kept(run_id, interrupted=(SweepInterrupted, Terminated)):
        if planned is not None:
            planned(run_id, len(dies))
        measured = sweep(station, store, run_id, stop=stop, progress=progress, dies=dies)
    store.set_status(run_id, "finished")
    return run_id, measured


def run_sweep(config: StationConfig, store: RunStore, *, resume: bool = False,
              resume_run: int | None = None, stop: StopFlag | None = None,
              progress: ProgressFn | None = None,
              station_factory: Callable[[StationConfig], Station] = Station,
              planned: Callable[[int, int], None] | None = None) -> int:
    """Open the station and run `sweep_run` (resume: the latest unfinished sweep, or
    `resume_run`)."""
    if resume_run is None and resume:  # a named run is checked as the sweep begins
        resume_run = store.latest_run(SWEEP_KIND, finished=False)
        if resume_run is None:
            raise ValueError(f"{store.path}: no unfinished sweep to resume")
    with station_factory(config) as station:
        return sweep_run(station, store, resume_run, stop=stop, progress=progress,
                         planned=planned)[0]
