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
from dataclasses import dataclass, field, replace
from typing import TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .datasets import BinaryData
from .defects import DefectMap, DefectStatistics
from .evaluation import DieErrors, evaluate_on_dies, software_error
from .mapping import ArrayCells, ArrayLayout, DeviceModel, cells_from_defect_maps
from .network import NetworkConfig
from .placement import PlacementConfig, check_placeable, place_all
from .trainers import (
    EpochHook,
    SATConfig,
    TrainConfig,
    TrainResult,
    train_baseline,
    train_hat,
    train_sat,
)

#: on_epoch(stage, epochs done, epochs in all, mean loss), stage "baseline", "hat" or "sat"
StageEpochHook = Callable[[str, int, int, float], None]

T = TypeVar("T")


def for_stage(hook: StageEpochHook | None, stage: str) -> EpochHook | None:
    """`hook` bound to one training stage (None stays None)."""
    if hook is None:
        return None
    return lambda done, total, loss: hook(stage, done, total, loss)

#: unaware: baseline weights read with plain differences (the paper's chip, knowing nothing of
#: defects); unaware_cm: the same weights on the network's own read-out (by default the
#: common-mode check); hat, sat, placed: see `Solutions.programs`.
METHODS = ("unaware", "unaware_cm", "hat", "sat", "placed")
PLAIN_READOUT = "diff"
#: the paper's chip: plain differences, the output layer read whole (layout and network alike)
PLAIN_FIELDS: dict[str, object] = {"readout": PLAIN_READOUT, "output_reads": 1}


def as_method(method: str, layout: ArrayLayout | Sequence[ArrayLayout], net: NetworkConfig
              ) -> tuple[ArrayLayout | list[ArrayLayout], NetworkConfig]:
    """The layout(s) and network `method` runs with: 'unaware' reads plain differences."""
    if method != "unaware":
        return (layout if isinstance(layout, ArrayLayout) else list(layout)), net

    def plain(lo: ArrayLayout) -> ArrayLayout:
        return replace(lo, **PLAIN_FIELDS)  # type: ignore[arg-type]

    lay = plain(layout) if isinstance(layout, ArrayLayout) else [plain(lo) for lo in layout]
    return lay, net.model_copy(update=PLAIN_FIELDS)


class ExperimentConfig(BaseModel):
    """Network, trainers and placement of the experiment (defaults: bench_paper's settings).

    hat_placement: HAT starts from the die-aware placement of the baseline weights and trains on
    that layout (HAT knows the die's map anyway); False trains HAT on the fixed layout (paper).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    network: NetworkConfig = Field(default_factory=lambda: NetworkConfig(
        sizes=(100, 70, 10), output_copies=3, copy_combine="mean", readout="common_mode",
        output_reads=4))
    baseline: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=30, noise_std=0.1))
    # min_steps: on mnist-subset (HAT 62, SAT 31 steps per epoch) the epochs give more; on a
    # small set (the embedded digits, 10 and 5 steps per epoch) they keep HAT and SAT from
    # ending before any weight has moved from the baseline's.
    # SAT takes batches of 256 (4 maps of 64 digits): its step is mostly per-operation
    # overhead (the read-out's small operations), so twice the batch costs 1.2-1.3x per step and
    # makes half the steps; in the same 20 epochs it trained as well or better on seeds 0-6
    # (docs/training.md, "SAT batch size")
    hat: TrainConfig = Field(
        default_factory=lambda: TrainConfig(epochs=10, min_steps=600, lr=0.003, noise_std=0.1))
    sat: SATConfig = Field(
        default_factory=lambda: SATConfig(epochs=20, min_steps=600, batch_size=256, lr=0.003,
                                          noise_std=0.2, margin_units=2.0))
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    hat_placement: bool = True
    init_from_baseline: bool = Field(True, description="HAT and SAT start from the baseline")

    @model_validator(mode="after")
    def _two_layers(self) -> ExperimentConfig:
        if len(self.network.sizes) != 3:
            raise ValueError(f"the experiment's networks have two layers (sizes: inputs, "
                             f"hidden, classes; defect-aware placement needs that), got sizes "
                             f"{self.network.sizes}")
        return self

    @classmethod
    def small(cls) -> ExperimentConfig:
        """A fast preset for tests and `--small` runs (a few epochs each). HAT and SAT take
        200 updates at least, at a higher rate than the default's: weights started from the
        baseline's binary ones (+-0.5) need that many to change at all (with the default
        rate and 2 epochs of the embedded digits they trained nothing)."""
        return cls(baseline=TrainConfig(epochs=4, noise_std=0.1),
                   hat=TrainConfig(epochs=2, min_steps=200, lr=0.01, noise_std=0.1),
                   sat=SATConfig(epochs=2, min_steps=200, lr=0.01, noise_std=0.1,
                                 prefetch_steps=8),
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

        method: 'unaware' (baseline weights, fixed layout, plain read-out), 'unaware_cm' (the
        same on the network's read-out), 'hat' (that die's HAT weights), 'sat' (SAT weights,
        fixed layout), 'placed' (SAT weights, that die's placement).
        """
        if not 0 <= die_index < self.n_dies:
            raise IndexError(f"die index {die_index} outside 0..{self.n_dies - 1}")
        if method in ("unaware", "unaware_cm"):
            layout, _net = as_method(method, self.layout, self.net_config)
            assert isinstance(layout, ArrayLayout)
            return [w[0] for w in self.baseline.weights], layout
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
        if method in ("unaware", "unaware_cm"):
            return self.baseline.weights, as_method(method, self.layout, self.net_config)[0]
        if method == "hat":
            return self.hat.weights, (self.layout if self.hat_layouts is None
                                      else self.hat_layouts)
        if method == "sat":
            return self.sat.weights, self.layout
        if method == "placed":
            return self.sat.weights, self.placed
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")

    def evaluate(self, method: str, x: torch.Tensor, y: torch.Tensor) -> DieErrors:
        """Error of `method` on every die (emulated from the maps), batched over dies."""
        weights, layouts = self.weights_and_layouts(method)
        _layout, net = as_method(method, self.layout, self.net_config)
        return evaluate_on_dies(weights, x, y, layouts, self.cells, net, self.baseline_error_pct)


@dataclass
class Setup:
    """What every method shares: fitted statistics, the fixed layout and the dies' cells."""

    stats: DefectStatistics
    layout: ArrayLayout
    cells: ArrayCells


def experiment_layout(shape: tuple[int, int], device: DeviceModel, net: NetworkConfig
                      ) -> ArrayLayout:
    """The fixed layout of the experiment's network on a rows x cols array."""
    return ArrayLayout.default(net.sizes, *shape, net.output_copies, net.copy_combine, device,
                               readout=net.readout, readout_tol=net.readout_tol,
                               output_reads=net.output_reads)


def prepare(maps: Sequence[DefectMap], device: DeviceModel,
            config: ExperimentConfig | None = None, placement: bool = True) -> Setup:
    """Fit the defect statistics of `maps` and lay the network out on their array; with
    `placement` (SAT's `placed` method, HAT's placement) check that placement can rewire it."""
    config = config or ExperimentConfig()
    if not maps:
        raise ValueError("the experiment needs at least one defect map")
    layout = experiment_layout(maps[0].shape, device, config.network)
    if placement:
        check_placeable(layout)
    return Setup(DefectStatistics.fit(maps), layout, cells_from_defect_maps(maps, device))


def run_baseline(data: BinaryData, config: ExperimentConfig, seed: int,
                 on_epoch: EpochHook | None = None) -> tuple[TrainResult, float]:
    """The software baseline and its error (percent) on an ideal array."""
    base = train_baseline(data, config.network, config.baseline, seed=seed, on_epoch=on_epoch)
    return base, software_error(base.weights, data.x_test, data.y_test, config.network)


def run_hat(data: BinaryData, setup: Setup, baseline: Sequence[torch.Tensor],
            config: ExperimentConfig, seed: int, on_epoch: EpochHook | None = None
            ) -> tuple[TrainResult, list[ArrayLayout] | None]:
    """HAT for every die of `setup` as one batched model, and its per-die layouts (if placed).

    baseline: the software baseline's binary weights (placement and starting point).
    """
    net = config.network
    layouts = None
    if config.hat_placement:
        layouts = place_all(baseline, setup.cells, setup.layout, data.x_train,
                            data.y_train, net, config=config.placement)
    init = baseline if config.init_from_baseline else None
    hat = train_hat(data, layouts or setup.layout, setup.cells, net, config.hat, seed=seed,
                    init=init, on_epoch=on_epoch)
    return hat, layouts


def run_sat(data: BinaryData, setup: Setup, baseline: Sequence[torch.Tensor],
            config: ExperimentConfig, seed: int, on_epoch: EpochHook | None = None
            ) -> TrainResult:
    """SAT from the statistics of `setup` (one weight set for every die), from the baseline."""
    init = baseline if config.init_from_baseline else None
    return train_sat(data, setup.layout, setup.stats, config.network, config.sat, seed=seed,
                     init=init, on_epoch=on_epoch)


def run_placement(data: BinaryData, setup: Setup, weights: Sequence[torch.Tensor],
                  config: ExperimentConfig) -> list[ArrayLayout]:
    """Defect-aware placement of shared weights on every die of `setup`."""
    return place_all(weights, setup.cells, setup.layout, data.x_train, data.y_train,
                     config.network, config=config.placement)


def train_all(data: BinaryData, maps: Sequence[DefectMap], device: DeviceModel,
              config: ExperimentConfig | None = None, seed: int = 0,
              progress: Callable[[str], None] | None = None,
              on_epoch: StageEpochHook | None = None) -> Solutions:
    """Baseline, HAT (every die, batched), SAT (from the maps' statistics) and placement.

    maps: one defect map per die (measured, or the simulator's); device: nominal conductances
    (e.g. `DeviceModel.fit` on read-backs). progress(message) is called between stages,
    on_epoch(stage, done, total, loss) after every training epoch.
    """
    config = config or ExperimentConfig()
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}

    def stage(name: str, message: str | None, run: Callable[[], T]) -> T:
        """Announce a stage, run it and record its wall time under `name`."""
        if message:
            say(message)
        t = time.perf_counter()
        out = run()
        timings[name] = time.perf_counter() - t
        return out

    setup = stage("setup", None, lambda: prepare(maps, device, config))
    base, base_err = stage("baseline", "training the software baseline", lambda: run_baseline(
        data, config, seed, for_stage(on_epoch, "baseline")))
    hat, hat_layouts = stage(
        "hat", f"hardware-aware training for {len(maps)} dies (one batched model)",
        lambda: run_hat(data, setup, base.weights, config, seed, for_stage(on_epoch, "hat")))
    sat = stage("sat", "statistics-aware training", lambda: run_sat(
        data, setup, base.weights, config, seed, for_stage(on_epoch, "sat")))
    placed = stage("placement", f"placing the SAT weights on {len(maps)} dies",
                   lambda: run_placement(data, setup, sat.weights, config))
    return Solutions(config.network, setup.layout, setup.stats, setup.cells, base, hat, sat,
                     placed, base_err, hat_layouts, timings)
