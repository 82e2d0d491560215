"""`mtjlab demo`: the closed loop on the simulated wafer.

Sweep every die to measure its defect map, fit defect statistics from the measurements, train
baseline, HAT (every die, one batched model) and SAT, place the SAT weights per die, program
every die with every solution, run inference on the chip, and report.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import BinaryData, data_label, load_default
from training.experiment import METHODS, ExperimentConfig, train_all
from training.sensitivity import loss_distribution

from .config import StationConfig
from .locking import hold_exclusively
from .loop import DieInference, load_measurements, program_and_infer, summarize
from .offline import WHOLE_RUN, report_from_store
from .progress import EpochBars, bar, say
from .report import check_results_folder, table
from .station import Station
from .store import DEMO_KIND, RunStore, StoreError, die_key
from .sweep import planned_dies, start_run, sweep


def demo_station(seed: int, dies: int | None = None) -> StationConfig:
    """The simulated station of the demo (all 36 dies, or the first `dies`)."""
    plan: dict[str, Any] = {"dies": "all"}
    if dies is not None:
        plan = {"dies": [[i % 6, i // 6] for i in range(dies)]}
    return StationConfig.model_validate(
        {"name": "demo", "instruments": {"simulated": {"seed": seed}}, "wafer": plan})


def run_demo(out: Path, seed: int = 0, data_dir: str | None = None, quiet: bool = False,
             small: bool = False) -> dict[str, Any]:
    """Run the closed loop; writes out/summary.json, out/report.md, plots and the run store."""
    t0 = time.perf_counter()
    check_results_folder(out, "the demo writes a folder of results")
    # all that can refuse the input comes first: nothing in `out` is touched before
    config = demo_station(seed, dies=6 if small else None)
    exp_config = ExperimentConfig.small() if small else ExperimentConfig()
    data = load_default(data_dir, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    try:  # a second demo would delete this one's store under it
        held = hold_exclusively(out / ".demo.lock")
    except OSError as err:  # a file system without locks: run, as the demo did before
        print(f"warning: {out}: cannot lock the folder ({err}); do not start a second demo "
              "there until this one ends", file=sys.stderr, flush=True)
        held = contextlib.nullcontext()  # type: ignore[assignment]
    if held is None:
        raise ValueError(f"{out}: another demo is writing there; wait for it to end or "
                         "choose another --out")
    with held:
        store_path = out / "run.sqlite"
        _replaceable(store_path)
        for suffix in ("", "-wal", "-shm"):
            Path(str(store_path) + suffix).unlink(missing_ok=True)
        with RunStore(store_path) as store, Station(config) as station:
            run_id = start_run(store, station, config, DEMO_KIND, {"training": seed})
            with store.status_kept(run_id):
                summary = _run(store, station, run_id, data, data_dir, exp_config, seed,
                               small, quiet, t0)
        report_from_store(store_path, out)
    if not quiet:
        print(table(summary))
        print(f"\nreport: {out / 'report.md'}  (total {summary['timing_s']['total']:.0f} s)")
    return summary


def _replaceable(store_path: Path) -> None:
    """Refuse to replace a store that holds anything but earlier demo runs (a demo starts
    from an empty store in its folder; an operator's sweeps must not go with it)."""
    if not store_path.exists():
        return
    try:
        with RunStore(store_path, create=False) as store:
            kinds = {r.kind for r in store.runs()}
    except StoreError:
        kinds = {"unreadable"}
    if kinds - {DEMO_KIND}:
        raise ValueError(f"{store_path} holds other runs ({', '.join(sorted(kinds))}); the demo "
                       "starts a new store there: choose another --out")


def _run(store: RunStore, station: Station, run_id: int, data: BinaryData,
         data_dir: str | None, exp_config: ExperimentConfig, seed: int, small: bool,
         quiet: bool, t0: float) -> dict[str, Any]:
    """The demo's loop on an open store and station; returns the summary (also stored)."""
    timing: dict[str, float] = {}
    planned = planned_dies(station)
    with bar("sweep", quiet, len(planned)) as dies:
        sweep(station, store, run_id, progress=lambda d, m: dies.update(1), dies=planned)
    timing["sweep"] = time.perf_counter() - t0
    measured = load_measurements(store, run_id)
    device = measured.device_model()
    say(quiet, f"measured {len(measured.dies)} dies; training baseline, HAT, SAT ...")

    t1 = time.perf_counter()
    with EpochBars(quiet) as epochs:
        sol = train_all(data, measured.maps, device, exp_config, seed,
                        progress=lambda msg: say(quiet, msg),
                        on_epoch=epochs)
    timing["training"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    x, y = data.x_test.numpy(), data.y_test.numpy()
    results: dict[str, dict[str, DieInference]] = {m: {} for m in METHODS}
    jobs = [(m, i, d) for m in METHODS for i, d in enumerate(measured.dies)]
    with bar("program+infer", quiet, len(jobs), unit="job") as done:
        for method, i, die in jobs:
            weights, layout = sol.programs(method, i)
            known = measured.maps[i].kinds != 0
            results[method][die_key(die)] = program_and_infer(station, die, weights,
                                                              layout, x, y, known)
            done.update(1)
    timing["program_and_infer"] = time.perf_counter() - t2
    for method, per_die in results.items():
        for die, r in per_die.items():
            store.put(run_id, die, arrays={f"predictions/{method}": r.predictions},
                      records={f"inference/{method}": {
                          "error_pct": r.error_pct, "agreement_pct": r.agreement_pct,
                          "emulated_error_pct": r.emulated_error_pct,
                          "fidelity": r.fidelity}})

    losses = {
        name: loss_distribution(w, data.x_test, data.y_test, sol.layout, sol.stats,
                                sol.net_config, n_maps=50 if small else 200,
                                seed=seed).losses
        for name, w in (("baseline", sol.baseline.weights), ("SAT", sol.sat.weights))
    }
    timing["total"] = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "seed": seed,
        "data": data_label(data_dir),
        "dies": len(measured.dies),
        "baseline_error_pct": sol.baseline_error_pct,
        "methods": {m: summarize({d: r.error_pct for d, r in results[m].items()},
                                 sol.baseline_error_pct) for m in METHODS},
        "agreement_pct": {m: min(r.agreement_pct for r in results[m].values())
                          for m in METHODS},
        "agreement_all_pct": {m: float(np.mean([r.agreement_pct
                                                for r in results[m].values()]))
                              for m in METHODS},
        "write_fidelity_min": {m: min(r.fidelity for r in results[m].values())
                               for m in METHODS},
        "loss_std": {k: float(v.std()) for k, v in losses.items()},
        "timing_s": timing,
    }
    store.put(run_id, WHOLE_RUN, records={"summary": summary},
              arrays={f"losses/{k}": v for k, v in losses.items()})
    store.set_status(run_id, "finished")
    return summary

