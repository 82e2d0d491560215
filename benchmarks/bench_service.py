"""Job round-trip overhead of the station service vs calling the station directly.

    python benchmarks/bench_service.py [--jobs N] [--seed N]

Direct: `with station.at_die(die): measure_defect_map(station)` in this process. Service: the
same one-die measurement as a `measure` job, submitted with the client to `mtjlab serve` in a
separate process on 127.0.0.1 and waited for through server-sent events (no polling). Both
cycle over the same dies of the simulated wafer.

overhead_ms = mean round trip - mean direct call; p99_ms = 99th percentile of the per-job
overhead (round trip - median direct call). Target overhead_ms <= 50.
Last line: RESULT jobs=<n> overhead_ms=<ms> p99_ms=<ms>
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from instruments.client import Client
from instruments.config import StationConfig
from instruments.defect_map import measure_defect_map
from instruments.station import Station

REPO = Path(__file__).resolve().parents[1]
WARMUP = 3


def direct(config: StationConfig, dies: list[tuple[int, int]], n: int) -> np.ndarray:
    from drivers.prober import DieIndex

    times = []
    with Station(config) as station:
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            with station.at_die(DieIndex(*dies[i % len(dies)])):
                measure_defect_map(station)
            times.append(time.perf_counter() - t0)
    return np.array(times[WARMUP:])


def via_service(url: str, dies: list[tuple[int, int]], n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round trips (submit + wait), worker run times and result downloads, in seconds."""
    trips, runs, fetches = [], [], []
    with Client(url) as client:
        for i in range(n + WARMUP):
            t0 = time.perf_counter()
            job = client.wait(client.submit("measure", die=dies[i % len(dies)])["id"], 60)
            t1 = time.perf_counter()
            client.result(job["id"])
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job['id']} {job['state']}: {job['error']}")
            trips.append(t1 - t0)
            runs.append(job["run_s"])
            fetches.append(time.perf_counter() - t1)
    return tuple(np.array(x[WARMUP:]) for x in (trips, runs, fetches))  # type: ignore[return-value]


def start_service(station_file: Path, store: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "instruments.cli", "serve", "--station",
         str(station_file), "--port", "0", "--store", str(store)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"listening on (\S+)", proc.stdout.readline())
    if not match:
        proc.kill()
        raise RuntimeError("the service did not start")
    return proc, match.group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = StationConfig.model_validate({"instruments": {"simulated": {"seed": args.seed}}})
    with Station(config) as station:
        dies = [tuple(d) for d in station.wafer_map()]
    direct_s = direct(config, dies, args.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        station_file = Path(tmp) / "station.yaml"
        station_file.write_text(f"instruments:\n  simulated:\n    seed: {args.seed}\n",
                                encoding="utf-8")
        proc, url = start_service(station_file, Path(tmp) / "run.sqlite")
        try:
            trip_s, run_s, fetch_s = via_service(url, dies, args.jobs)
        finally:
            proc.terminate()
            proc.wait(30)
    ms = 1e3
    overhead = (trip_s - np.median(direct_s)) * ms
    rows = [("direct at_die + measure", direct_s), ("job: worker run_s", run_s),
            ("job: submit + wait (SSE)", trip_s), ("result download (.npz)", fetch_s)]
    print(f"{'':<26} {'mean ms':>8} {'median':>8} {'p99':>8} {'max':>8}")
    for name, t in rows:
        print(f"{name:<26} {t.mean() * ms:>8.1f} {np.median(t) * ms:>8.1f} "
              f"{np.percentile(t, 99) * ms:>8.1f} {t.max() * ms:>8.1f}")
    mean_overhead = (trip_s.mean() - direct_s.mean()) * ms
    p99 = float(np.percentile(overhead, 99))
    print(f"RESULT jobs={args.jobs} overhead_ms={mean_overhead:.1f} p99_ms={p99:.1f}")


if __name__ == "__main__":
    main()
