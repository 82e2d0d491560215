"""Statistics of the default simulated wafer quoted in docs/hardware-model.md.

python benchmarks/hw_stats.py
"""

import numpy as np

from simulated_hw import DefectConfig, SimulatedWafer, WaferConfig
from simulated_hw.physics import Defect

w = SimulatedWafer(WaferConfig(), seed=0)
n = 100 * 200
codes = np.stack([d.defect for d in w.dies])
real = (codes != 0).reshape(36, -1).mean(axis=1)
rates = np.array([d.defect_rate for d in w.dies])
print(
    f"realised defect fraction, 36 dies seed 0: mean {real.mean():.4%} "
    f"median {np.median(real):.4%} "
    f"min {real.min():.4%} max {real.max():.4%}"
)
print(f"drawn die rates: mean {rates.mean():.4%} min {rates.min():.4%} max {rates.max():.4%}")
lines = sum(
    int((d.defect == Defect.OPEN).all(axis=1).any() or (d.defect == Defect.OPEN).all(axis=0).any())
    for d in w.dies
)
print("dies with a failed row or column:", lines)
k = codes[codes != 0]
print(
    "kind shares:",
    {Defect(i).name: round(float((k == i).mean()), 3) for i in range(1, 5)},
    "defects",
    k.size,
)
d = w.dies[0]
ok = d.defect == 0
rp = np.median((d.r_p + d.r_access)[ok])
rap = np.median((d.r_ap + d.r_access)[ok])
sh = codes == Defect.SHORT
rsh = np.median(
    np.concatenate([(x.r_access + x.r_defect)[x.defect == Defect.SHORT] for x in w.dies])
)
print(f"median cell R: P {rp:.0f} ohm AP {rap:.0f} ohm short {rsh:.0f} ohm")
print(
    f"G: P {1e3 / rp:.3f} mS AP {1e3 / rap:.3f} mS short {1e3 / rsh:.3f} mS; "
    f"G_short/(G_P-G_AP) = {(1 / rsh) / (1 / rp - 1 / rap):.1f}; G_short/G_P = {rp / rsh:.1f}"
)
for v in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
    print(f"P_switch({v} V, 50 ns) = {w.switching_probability(v, 50e-9):.6f}", end="; ")
print()
for t in (5e-9, 10e-9, 20e-9, 50e-9, 100e-9):
    print(f"P_switch(0.9 V, {t * 1e9:.0f} ns) = {w.switching_probability(0.9, t):.6f}", end="; ")
print()
big = SimulatedWafer(
    WaferConfig(
        grid_cols=1, grid_rows=1, rows=1000, cols=1000, defects=DefectConfig(mean_defect_rate=0.0)
    ),
    seed=0,
)
tg = 1 - big.true_states(0)
big.write(0, tg, 0.9, 50e-9)
print("measured WER over 1e6 cells at 0.9 V / 50 ns:", (big.true_states(0) != tg).mean())
many = SimulatedWafer(WaferConfig(grid_cols=40, grid_rows=40, rows=1, cols=1), seed=0)
r = np.array([x.defect_rate for x in many.dies])
print(f"1600 die rates (default config): mean {r.mean():.4%}; expected mean_defect_rate = 1%")
