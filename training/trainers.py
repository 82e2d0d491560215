"""Trainers: software baseline, hardware-aware (HAT, one or many dies batched), statistics-aware.

All share one loop: Adam on latent weights, clipped to [-1, 1], cosine learning-rate decay,
cross-entropy on class scores (weight units times `logit_scale`) with an optional additive
margin on the true class. They differ only in the conductances of the forward pass:
- baseline: an ideal array;
- HAT: fixed conductances of D dies (defects as overrides), D weight sets trained at once;
- SAT: for every mini-batch, fresh random maps drawn from `DefectStatistics`; the batch is split
  into `maps_per_batch` groups, each seeing its own map, so an SAT step does a baseline step's
  products plus the read-out's checks (not a forward pass per map).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .datasets import BinaryData
from .defects import DefectStatistics
from .mapping import ArrayCells, ArrayLayout, LayerCells, check_readout, dies_layers
from .network import BinaryNetwork, NetworkConfig, check_samples


class TrainConfig(BaseModel):
    """Optimisation settings shared by all trainers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(30, ge=0)
    min_steps: int = Field(0, ge=0, description="at least this many optimiser steps: more "
                           "epochs on a small data set (weights started from binary ones, "
                           "at +-0.5, need updates, not passes, to change)")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    lr_final_fraction: float = Field(0.02, ge=0, le=1, description="cosine decay floor")
    margin_units: float = Field(0.0, ge=0, description="additive margin on the true class")
    noise_std: float = Field(0.0, ge=0, description="pre-activation noise per unit sqrt(input)")
    threads: int | None = Field(None, ge=1, description="torch threads (None: leave as is)")


class SATConfig(TrainConfig):
    """Statistics-aware training: maps per mini-batch and a defect-rate warm-up."""

    maps_per_batch: int = Field(4, ge=1)
    warmup_fraction: float = Field(0.2, ge=0, le=1, description="epochs ramping rate 0 -> 1")
    rate_scale: float = Field(1.0, ge=0, description="multiplier of sampled defect rates")
    prefetch_steps: int = Field(32, ge=1, description="steps whose maps are drawn at once")


@dataclass
class TrainResult:
    """Trained network, its binary weights and timings."""

    network: BinaryNetwork
    weights: list[torch.Tensor]
    epoch_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    @property
    def mean_epoch_s(self) -> float:
        return sum(self.epoch_seconds) / max(len(self.epoch_seconds), 1)


CellsFn = Callable[[int, float], "Sequence[LayerCells] | None"]
#: on_epoch(epochs done, epochs in all, mean loss of the epoch): progress reporting
EpochHook = Callable[[int, int, float], None]


def _loss(scores: torch.Tensor, y: torch.Tensor, cfg: NetworkConfig,
          margin: float) -> torch.Tensor:
    """Mean cross-entropy of (K, b, C) scores against (b,) or (K, b) labels."""
    y = y.expand(scores.shape[:-1]) if y.ndim < scores.ndim - 1 else y
    if margin > 0:  # the true class's score lowered by the margin (one scatter)
        scores = scores.scatter_add(-1, y.unsqueeze(-1), scores.new_full((*y.shape, 1), -margin))
    logits = scores * cfg.logit_scale
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                           reduction="mean") * scores.shape[0]


def epochs_for(config: TrainConfig, steps_per_epoch: int) -> int:
    """`config.epochs`, or more if that many epochs make fewer than `config.min_steps`."""
    return max(config.epochs, math.ceil(config.min_steps / max(steps_per_epoch, 1)))


def fit(net: BinaryNetwork, data: BinaryData, config: TrainConfig, seed: int,
        cells_fn: CellsFn | None = None, groups: int = 1,
        on_epoch: EpochHook | None = None) -> TrainResult:
    """The shared training loop.

    cells_fn(step, progress) returns the layer conductances for one mini-batch (None: ideal);
    progress runs 0 -> 1 over training. groups > 1 splits each batch into that many groups, one
    per conductance set. on_epoch is called after every epoch.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, fused=True)  # one kernel per step
    n = data.x_train.shape[0]
    bs = max(config.batch_size // groups, 1) * groups
    steps_per_epoch = max(n // bs, 1)
    epochs = epochs_for(config, steps_per_epoch)
    total = max(epochs * steps_per_epoch, 1)
    result = TrainResult(net, [])
    step_i = 0
    for _ in range(epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=g)
        epoch_loss = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            x, y = data.x_train[idx], data.y_train[idx]
            progress = step_i / total
            lr = config.lr * (config.lr_final_fraction + (1 - config.lr_final_fraction)
                              * 0.5 * (1 + math.cos(math.pi * progress)))
            for group in opt.param_groups:
                group["lr"] = lr
            cells = cells_fn(step_i, progress) if cells_fn is not None else None
            if groups > 1:
                x, y = x.view(groups, -1, x.shape[-1]), y.view(groups, -1)
            scores = net(x, cells, noise_std=config.noise_std, generator=g)
            loss = _loss(scores, y, net.config, config.margin_units)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            net.clip_()
            epoch_loss += float(loss.detach()) / scores.shape[0]
            step_i += 1
        result.epoch_seconds.append(time.perf_counter() - t0)
        result.losses.append(epoch_loss / steps_per_epoch)
        if on_epoch is not None:
            on_epoch(len(result.losses), epochs, result.losses[-1])
    result.weights = [w.detach().clone() for w in net.binary_weights()]
    return result


def _init_net(net_config: NetworkConfig, replicas: int, seed: int,
              init: Sequence[torch.Tensor] | None) -> BinaryNetwork:
    net = BinaryNetwork(net_config, replicas=replicas, seed=seed)
    if init is not None:
        net.load_binary(init)
    return net


def train_baseline(data: BinaryData, net_config: NetworkConfig | None = None,
                   config: TrainConfig | None = None, seed: int = 0,
                   on_epoch: EpochHook | None = None) -> TrainResult:
    """Defect-free software baseline on an ideal array."""
    net_config = net_config or NetworkConfig()
    _check_inputs(data, net_config)
    net = _init_net(net_config, 1, seed, None)
    return fit(net, data, config or TrainConfig(), seed, on_epoch=on_epoch)


def train_hat(data: BinaryData, layout: ArrayLayout | Sequence[ArrayLayout], cells: ArrayCells,
              net_config: NetworkConfig | None = None, config: TrainConfig | None = None,
              seed: int = 0, init: Sequence[torch.Tensor] | None = None,
              on_epoch: EpochHook | None = None) -> TrainResult:
    """Hardware-aware training for D dies at once (one weight set per die, one batched model).

    cells: the dies' conductances (D, rows, cols), e.g. `cells_from_defect_maps(maps, device)`.
    layout: one layout for all dies, or one per die (e.g. from defect-aware placement).
    init: starting binary weights (e.g. the baseline's), broadcast to every die.
    Returns weights of shape (D, n_in, n_out) per layer.
    """
    net_config = net_config or NetworkConfig()
    _check_inputs(data, net_config)
    check_readout(layout, net_config)
    layer_cells = dies_layers(layout, cells)
    net = _init_net(net_config, cells.n, seed, init)
    return fit(net, data, config or TrainConfig(), seed, lambda _s, _p: layer_cells,
               on_epoch=on_epoch)


def train_sat(data: BinaryData, layout: ArrayLayout, stats: DefectStatistics,
              net_config: NetworkConfig | None = None, config: SATConfig | None = None,
              seed: int = 0, init: Sequence[torch.Tensor] | None = None,
              on_epoch: EpochHook | None = None) -> TrainResult:
    """Statistics-aware training: fresh random defect maps from `stats` for every mini-batch."""
    net_config = net_config or NetworkConfig()
    config = config or SATConfig()
    _check_inputs(data, net_config)
    check_readout(layout, net_config)
    if (stats.rows, stats.cols) != (layout.rows, layout.cols):
        raise ValueError(f"statistics are for a {stats.rows} x {stats.cols} array, the layout "
                         f"is {layout.rows} x {layout.cols}")
    g = torch.Generator().manual_seed(seed + 7919)
    m = config.maps_per_batch
    buffer: list[list[LayerCells]] = []

    def cells_fn(_step: int, progress: float) -> list[LayerCells]:
        # maps for `prefetch_steps` steps are drawn in one vectorised call, then sliced
        if not buffer:
            warm = config.warmup_fraction
            scale = config.rate_scale * (min(progress / warm, 1.0) if warm > 0 else 1.0)
            chunk = layout.sparse_layer_cells(
                stats.sample_sparse(m * config.prefetch_steps, generator=g, scale=scale))
            for k in range(config.prefetch_steps - 1, -1, -1):
                buffer.append([c.slice(k * m, (k + 1) * m) for c in chunk])
        return buffer.pop()

    net = _init_net(net_config, 1, seed, init)
    return fit(net, data, config, seed, cells_fn, groups=config.maps_per_batch,
               on_epoch=on_epoch)


def _check_inputs(data: BinaryData, net_config: NetworkConfig) -> None:
    check_samples(data.x_train, data.y_train, net_config, "training data")
    if len(data.y_test):
        check_samples(data.x_test, data.y_test, net_config, "test data")
