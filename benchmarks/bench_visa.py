"""How much the VISA stack costs: full-die read and program through driver -> pyvisa ->
pyvisa-sim -> model, against the same operations on the bare model.

    python benchmarks/bench_visa.py [--repeats N] [--seed N]

Last line: RESULT read_s=<s> program_s=<s> read_ratio=<x> program_ratio=<x>
(targets: ratios <= 1.5, read_s <= 0.05, program_s <= 0.1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

import simulated_hw
from drivers.crossbar import CrossbarTester
from drivers.prober import VeloxProber


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rm = simulated_hw.resource_manager(seed=args.seed)
    prober = VeloxProber(rm.open_resource(simulated_hw.PROBER_RESOURCE))
    tester = CrossbarTester(rm.open_resource(simulated_hw.TESTER_RESOURCE))
    prober.first_die()
    prober.contact()
    tester.output_enabled = True
    amplitude, width = tester.pulse_amplitude_v, tester.pulse_width_s
    read_v = tester.read_voltage_v

    rng = np.random.default_rng(args.seed)
    targets = rng.integers(0, 2, size=tester.shape, dtype=np.uint8)
    model = simulated_hw.SimulatedWafer(simulated_hw.WaferConfig(), seed=args.seed)

    rows = [
        ("read 20,000 cells", "driver", median_time(tester.read_array, args.repeats)),
        ("read 20,000 cells", "model", median_time(lambda: model.read(0, read_v),
                                                   args.repeats)),
        ("program 20,000 cells", "driver",
         median_time(lambda: tester.program_array(targets), args.repeats)),
        ("program 20,000 cells", "model",
         median_time(lambda: model.write(0, targets, amplitude, width), args.repeats)),
    ]
    print(f"{'operation':<22} {'path':<8} {'median ms':>10}")
    for op, path, t in rows:
        print(f"{op:<22} {path:<8} {t * 1e3:>10.3f}")
    read_s, read_model = rows[0][2], rows[1][2]
    program_s, program_model = rows[2][2], rows[3][2]
    prober.separate()
    print(f"RESULT read_s={read_s:.5f} program_s={program_s:.5f} "
          f"read_ratio={read_s / read_model:.2f} program_ratio={program_s / program_model:.2f}")


if __name__ == "__main__":
    main()
