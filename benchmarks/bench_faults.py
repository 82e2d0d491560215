"""Link faults vs time and results: a 36-die sweep at rising fault rates, and ten SIGKILLs.

    python benchmarks/bench_faults.py [--seed N] [--timeout-s 0.1] [--kills 10]

Each row sweeps the whole simulated wafer with a share of VISA messages failing, in a mix of
every kind (timeouts, dropped sessions, garbled replies, spurious SCPI errors, prober faults;
each instrument sees the given rate of its own kinds), and compares the defect maps with the
fault-free sweep of the same wafer. Extra time is mostly injected timeouts: each one costs
the station's I/O timeout (`--timeout-s`; the simulator answers at once, so a short timeout is
enough here; on real hardware the timeout, and so the overhead, is larger). Then
benchmarks/crash_sweep.py kills `mtjlab sweep` with SIGKILL `--kills` times and resumes it.

Last line: RESULT fault_rate=0.01 identical=<true|false> overhead_ratio=<x> kills=10
kill_identical=<true|false>
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from instruments.config import StationConfig
from instruments.station import Station
from instruments.store import RunStore
from instruments.sweep import run_sweep
from simulated_hw import TESTER_RESOURCE

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crash_sweep  # the sibling script

RATES = (0.0, 0.001, 0.003, 0.01, 0.03, 0.05)
#: Share of each kind in the mix; per instrument the applicable kinds add up to 1.
MIX = {"timeout_rate": 0.3, "drop_rate": 0.15, "garble_rate": 0.25, "scpi_error_rate": 0.3,
       "prober_error_rate": 0.3}


def config_for(rate: float, seed: int, timeout_s: float) -> StationConfig:
    faults = {k: rate * share for k, share in MIX.items()} | {"seed": seed}
    return StationConfig.model_validate({"instruments": {
        "simulated": {"seed": seed, "wafer": {"faults": faults}},
        "prober": {"timeout_s": timeout_s}, "tester": {"timeout_s": timeout_s}}})


def sweep(config: StationConfig, tmp: Path) -> tuple[dict[str, np.ndarray], float, Station]:
    stations: list[Station] = []

    def factory(cfg: StationConfig) -> Station:
        stations.append(Station(cfg))
        return stations[-1]

    path = tmp / f"run-{len(list(tmp.iterdir()))}.sqlite"
    with RunStore(path) as store:
        t0 = time.perf_counter()
        run_id = run_sweep(config, store, station_factory=factory)
        seconds = time.perf_counter() - t0
        done = store.dies_done(run_id)
        if len(done) != len(set(done)):
            raise RuntimeError("a die was committed twice")
        kinds = {d: store.array(run_id, d, "kinds") for d in done}
    return kinds, seconds, stations[0]


def same_maps(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[d], b[d]) for d in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="wafer and fault seed")
    ap.add_argument("--timeout-s", type=float, default=0.1, help="station I/O timeout")
    ap.add_argument("--kills", type=int, default=10)
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # retries are expected here; the table counts them
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sweep(config_for(0.0, args.seed, args.timeout_s), tmp)  # warm-up, not timed
        ref, ref_s, _ = sweep(config_for(0.0, args.seed, args.timeout_s), tmp)
        for rate in RATES:
            if rate == 0.0:
                rows.append((rate, 0, 0, 0, ref_s, True))
                continue
            try:
                kinds, seconds, station = sweep(config_for(rate, args.seed, args.timeout_s),
                                                tmp)
            except Exception as err:  # a failed run is a result too
                rows.append((rate, None, None, None, None, f"failed: {err}"))
                continue
            faults = station.rm.visalib.devices[TESTER_RESOURCE].faults
            injected = sum(faults.counts.values()) if faults else 0
            messages = faults.messages if faults else 0
            rows.append((rate, injected, messages, station.recoveries, seconds,
                         same_maps(kinds, ref)))
        (tmp / "crash").mkdir()
        crash = crash_sweep.crash_run(tmp / "crash", kills=args.kills, seed=args.seed)
    print(f"36-die sweeps, fault mix {MIX}, I/O timeout {args.timeout_s:g} s, "
          f"fault-free sweep {ref_s:.2f} s")
    print(f"{'fault rate':>10} {'faults':>7} {'messages':>8} {'recoveries':>10} "
          f"{'time s':>7} {'extra s':>8} {'overhead':>8}  identical maps")
    result = None
    for rate, injected, messages, recoveries, seconds, identical in rows:
        if seconds is None:
            print(f"{rate:>10g} {'-':>7} {'-':>8} {'-':>10} {'-':>7} {'-':>8} {'-':>8}  "
                  f"{identical}")
            continue
        overhead = seconds / ref_s
        print(f"{rate:>10g} {injected:>7} {messages:>8} {recoveries:>10} {seconds:>7.2f} "
              f"{seconds - ref_s:>8.2f} {overhead:>8.2f}  {identical}")
        if rate == 0.01:
            result = (identical, overhead)
    print(f"crash test: {crash.kills} SIGKILLs in {crash.attempts} processes, "
          f"{crash.dies} dies, defect maps identical: {crash.comparison.identical}, "
          f"all arrays bit-identical: {crash.comparison.arrays_identical}, "
          f"{crash.seconds:.1f} s")
    for problem in crash.comparison.problems:
        print("  PROBLEM:", problem)
    identical, overhead = result if result else (False, float("nan"))
    print(f"RESULT fault_rate=0.01 identical={str(identical).lower()} "
          f"overhead_ratio={overhead:.2f} kills={crash.kills} "
          f"kill_identical={str(crash.comparison.identical).lower()}")


if __name__ == "__main__":
    main()
