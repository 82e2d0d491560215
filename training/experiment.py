"""The paper's experiment as one reusable function: baseline, HAT, SAT and placement from maps.

`train_all` is what benchmarks/bench_paper.py runs on the simulated wafer's defect maps and what
the closed loop (`mtjlab demo`) runs on MEASURED maps: it fits the defect statistics, trains the
software baseline, HAT for every die (one batched model), SAT from the statistics, and places
the SAT weights on every die. `Solutions.programs(method, die)` gives the station what to
program for each method: binary weights per layer and the die's `ArrayLayout`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field

from .datasets import BinaryData
from .defects import DefectMap, DefectStatistics
from .evaluation import software_error
from .mapping import ArrayCells, ArrayLayout, DeviceModel, cells_from_defect_maps
from .network import NetworkConfig
from .placement import PlacementConfig, place_all
from .trainers import SATConfig, TrainConfig, TrainResult, train_baseline, train_hat, train_sat

METHODS = ("unaware", "hat", "sat", "placed")


class ExperimentConfig(BaseModel):
    """Network, trainers and placement of the experiment (defaults: bench_paper's settings).

    hat_placement: HAT starts from the die-aware placement of the baseline weights and trains on
    that layout (HAT knows the die's map anyway); False trains HAT on the fixed layout (paper).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: NetworkConfig = Field(default_factory=lambda: NetworkConfig(sizes=(100, 80, 10)))
    baseline: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=30, noise_std=0.1))
    hat: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=10, lr=0.003, noise_std=0.1))
    sat: SATConfig = Field(
        default_factory=lambda: SATConfig(epochs=20, lr=0.001, noise_std=0.1))
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    hat_placement: bool = True
    init_from_baseline: bool = Field(True, description="HAT and SAT start from the baseline")

    @classmethod
    def small(cls) -> ExperimentConfig:
        """A fast preset for tests and `mtjlab demo --small` (a few epochs each)."""
        return cls(baseline=TrainConfig(epochs=4, noise_std=0.1),
                   hat=TrainConfig(epochs=2, lr=0.003, noise_std=0.1),
                   sat=SATConfig(epochs=2, lr=0.003, noise_std=0.1, prefetch_steps=8),
                   placement=PlacementConfig(max_samples=300, rounds=1))


@dataclass
class Solutions:
    """Everything `train_all` produced; `programs(method, die)` is what the station programs."""

    net_config: NetworkConfig
    layout: ArrayLayout
    stats: DefectStatistics
    cells: ArrayCells
    baseline: TrainResult
    hat: TrainResult
    sat: TrainResult
    placed: list[ArrayLayout]
    baseline_error_pct: float
    hat_layouts: list[ArrayLayout] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def n_dies(self) -> int:
        return len(self.placed)

    def hat_layout(self, die_index: int) -> ArrayLayout:
        return self.layout if self.hat_layouts is None else self.hat_layouts[die_index]

    def programs(self, method: str, die_index: int) -> tuple[list[torch.Tensor], ArrayLayout]:
        """(weights (n_in, n_out) per layer, layout) of `method` for die `die_index`.

        method: 'unaware' (baseline weights, fixed layout), 'hat' (that die's HAT weights),
        'sat' (SAT weights, fixed layout), 'placed' (SAT weights, that die's placement).
        """
        if not 0 <= die_index < self.n_dies:
            raise IndexError(f"die index {die_index} outside 0..{self.n_dies - 1}")
        if method == "unaware":
            return [w[0] for w in self.baseline.weights], self.layout
        if method == "hat":
            return [w[die_index] for w in self.hat.weights], self.hat_layout(die_index)
        if method == "sat":
            return [w[0] for w in self.sat.weights], self.layout
        if method == "placed":
            return [w[0] for w in self.sat.weights], self.placed[die_index]
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")

    def weights_and_layouts(self, method: str
                            ) -> tuple[list[torch.Tensor], ArrayLayout | list[ArrayLayout]]:
        """Batched form for `evaluate_on_dies`: weights (1 or D, n_in, n_out), layout(s)."""
        if method == "unaware":
            return self.baseline.weights, self.layout
        if method == "hat":
            return self.hat.weights, (self.layout if self.hat_layouts is None
                                      else self.hat_layouts)
        if method == "sat":
            return self.sat.weights, self.layout
        if method == "placed":
            return self.sat.weights, self.placed
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def train_all(data: BinaryData, maps: Sequence[DefectMap], device: DeviceModel,
              config: ExperimentConfig | None = None, seed: int = 0,
              progress: Callable[[str], None] | None = None) -> Solutions:
    """Baseline, HAT (every die, batched), SAT (from the maps' statistics) and placement.

    maps: one defect map per die (measured, or the simulator's); device: nominal conductances
    (e.g. `DeviceModel.fit` on read-backs). progress(message) is called between stages.
    """
    config = config or ExperimentConfig()
    if not maps:
        raise ValueError("train_all needs at least one defect map")
    say = progress or (lambda _msg: None)
    net = config.network
    rows, cols = maps[0].shape
    timings: dict[str, float] = {}
    t = time.perf_counter()
    stats = DefectStatistics.fit(maps)
    layout = ArrayLayout.default(net.sizes, rows, cols, net.output_copies, net.copy_combine,
                                 device)
    cells = cells_from_defect_maps(maps, device)
    timings["setup"] = time.perf_counter() - t

    say("training the software baseline")
    t = time.perf_counter()
    base = train_baseline(data, net, config.baseline, seed=seed)
    base_err = software_error(base.weights, data.x_test, data.y_test, net)
    timings["baseline"] = time.perf_counter() - t
    init = base.weights if config.init_from_baseline else None

    say(f"hardware-aware training for {len(maps)} dies (one batched model)")
    t = time.perf_counter()
    hat_layouts = None
    if config.hat_placement:
        hat_layouts = place_all(base.weights, cells, layout, data.x_train, data.y_train, net,
                                config=config.placement)
    hat = train_hat(data, hat_layouts or layout, cells, net, config.hat, seed=seed, init=init)
    timings["hat"] = time.perf_counter() - t

    say("statistics-aware training")
    t = time.perf_counter()
    sat = train_sat(data, layout, stats, net, config.sat, seed=seed, init=init)
    timings["sat"] = time.perf_counter() - t

    say(f"placing the SAT weights on {len(maps)} dies")
    t = time.perf_counter()
    placed = place_all(sat.weights, cells, layout, data.x_train, data.y_train, net,
                       config=config.placement)
    timings["placement"] = time.perf_counter() - t
    return Solutions(net, layout, stats, cells, base, hat, sat, placed, base_err, hat_layouts,
                     timings)
