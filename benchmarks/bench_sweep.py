"""A 36-die defect-map sweep over VISA on the simulated wafer, into a fresh run store.

    python benchmarks/bench_sweep.py [--seed N]

Last line: RESULT sweep_s=<s> per_die_s=<s> (target per_die_s <= 1).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from instruments.config import StationConfig
from instruments.store import RunStore
from instruments.sweep import run_sweep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    config = StationConfig.model_validate({"instruments": {"simulated": {"seed": args.seed}}})
    times: list[float] = []
    last = [time.perf_counter()]

    def progress(die, m):  # type: ignore[no-untyped-def]
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    with tempfile.TemporaryDirectory() as tmp, RunStore(Path(tmp) / "run.sqlite") as store:
        t0 = time.perf_counter()
        last[0] = t0
        run_id = run_sweep(config, store, progress=progress)
        total = time.perf_counter() - t0
        n = len(store.dies_done(run_id))
    print(f"{'dies':>5} {'total s':>9} {'per die s':>10} {'slowest die s':>14}")
    print(f"{n:>5} {total:>9.2f} {total / n:>10.3f} {max(times):>14.3f}")
    print(f"RESULT sweep_s={total:.2f} per_die_s={total / n:.3f}")


if __name__ == "__main__":
    main()
