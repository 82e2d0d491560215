"""How much the VISA stack costs: full-die read and program through driver -> pyvisa ->
pyvisa-sim -> model, against the same operations on the bare model.

    python benchmarks/bench_visa.py [--repeats N] [--seed N]

Last line: RESULT read_s=<s> program_s=<s> read_ratio=<x> program_ratio=<x>
(targets: ratios <= 1.5, read_s <= 0.05, program_s <= 0.1).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import simulated_hw
from drivers.crossbar import CrossbarTester
from drivers.prober import VeloxProber


def paired_times(a: Callable[[], object], b: Callable[[], object], repeats: int
                 ) -> tuple[float, float]:
    """Best-of-`repeats` wall times of `a` and `b`, interleaved so that load from other
    processes hits both alike (the minimum is the least disturbed measurement)."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a()
        t1 = time.perf_counter()
        b()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return min(ta), min(tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
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

    read_s, read_model = paired_times(tester.read_array, lambda: model.read(0, read_v),
                                      args.repeats)
    program_s, program_model = paired_times(
        lambda: tester.program_array(targets),
        lambda: model.write(0, targets, amplitude, width), args.repeats)
    rows = [
        ("read 20,000 cells", "driver", read_s),
        ("read 20,000 cells", "model", read_model),
        ("program 20,000 cells", "driver", program_s),
        ("program 20,000 cells", "model", program_model),
    ]
    print(f"{'operation':<22} {'path':<8} {'best ms':>10}")
    for op, path, t in rows:
        print(f"{op:<22} {path:<8} {t * 1e3:>10.3f}")
    prober.separate()
    print(f"RESULT read_s={read_s:.5f} program_s={program_s:.5f} "
          f"read_ratio={read_s / read_model:.2f} program_ratio={program_s / program_model:.2f}")


if __name__ == "__main__":
    main()
