"""Why eval36_ratio (36 dies evaluated in one batch vs one die) stays above 4: the floor.

Evaluates the software baseline's weights on the default simulated wafer (the bench_paper
set-up, 36 dies) and times, fastest of repeats: the whole evaluation of one die and of 36,
and the hidden layer's per-die part alone for 36 dies (`training.evaluation.
defective_neurons`: every hidden neuron that carries a defect on a die, recomputed and read
out on every test digit), given the shared ideal products. That part is work no batching
shares (each die's defects are its own), so if it alone costs several one-die evaluations,
no arrangement of the rest brings the ratio to 4. Last line: RESULT eval36_ratio=<x>
hidden36_per_eval1=<x> ...

Usage: python benchmarks/eval_floor.py [--data-dir DIR] [--seed N] [--threads N] [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_paper import best_time, wafer_maps

from simulated_hw import SimulatedWafer, WaferConfig
from training.datasets import load_default
from training.evaluation import defective_neurons, evaluate_on_dies, ideal_hidden
from training.experiment import ExperimentConfig, prepare, run_baseline
from training.mapping import DeviceModel, dies_deviations
from training.network import shared_weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: embedded)")
    ap.add_argument("--seed", type=int, default=0, help="wafer and training seed")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--repeat", type=int, default=20, help="timed repeats (fastest counts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_default(args.data_dir, seed=args.seed)
    wcfg = WaferConfig()
    maps, _ = wafer_maps(SimulatedWafer(wcfg, seed=args.seed))
    dv = wcfg.device
    device = DeviceModel.from_resistances(dv.r_p_median_ohm, dv.tmr_mean, dv.r_access_ohm)
    cfg = ExperimentConfig()
    net = cfg.network
    setup = prepare(maps, device, cfg, placement=False)
    base, _ = run_baseline(data, cfg, args.seed)
    w, x, y = base.weights, data.x_test, data.y_test

    t1 = best_time(lambda: evaluate_on_dies(w, x, y, setup.layout, setup.cells[0], net),
                   args.repeat)
    t36 = best_time(lambda: evaluate_on_dies(w, x, y, setup.layout, setup.cells, net),
                    args.repeat)
    # the hidden layer's per-die part, its shared inputs made beforehand
    s1, xt, z1 = ideal_hidden(shared_weights(w, net)[0], x)
    d1 = dies_deviations(setup.layout, setup.cells)[0]  # type: ignore[index]
    hidden = defective_neurons(s1, xt, z1, d1, net)
    t_hidden = best_time(lambda: defective_neurons(s1, xt, z1, d1, net), args.repeat)

    n_hid = d1.n_out
    print(f"# {len(maps)} dies, {x.shape[0]} test digits, hidden width {n_hid}, "
          f"{args.threads} threads")
    print(f"# (die, hidden neuron) pairs with a defect: {hidden.keys.numel()} of "
          f"{len(maps) * n_hid}; activations that flip: {hidden.flips[0].numel()}")
    print(f"{'what':<52} {'ms':>8}")
    print(f"{'evaluation, 1 die':<52} {t1 * 1e3:8.2f}")
    print(f"{'evaluation, 36 dies':<52} {t36 * 1e3:8.2f}")
    print(f"{'hidden layer per-die part alone, 36 dies':<52} {t_hidden * 1e3:8.2f}")
    print(f"RESULT eval36_ratio={t36 / t1:.2f} hidden36_per_eval1={t_hidden / t1:.2f} "
          f"eval1_ms={t1 * 1e3:.2f} eval36_ms={t36 * 1e3:.2f} hidden36_ms={t_hidden * 1e3:.2f}")


if __name__ == "__main__":
    main()
