"""Loss sensitivity: the distribution of the loss of fixed weights over many sampled defect maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .defects import DefectStatistics
from .mapping import ArrayLayout, check_readout
from .network import BinaryNetwork, NetworkConfig, shared_weights


@dataclass(frozen=True)
class LossDistribution:
    """Cross-entropy loss of one set of weights on each of n sampled maps."""

    losses: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.losses.mean())

    @property
    def std(self) -> float:
        return float(self.losses.std())

    @property
    def iqr(self) -> float:
        q75, q25 = np.percentile(self.losses, [75, 25])
        return float(q75 - q25)

    def quantiles(self, qs: Sequence[float] = (0.05, 0.5, 0.95)) -> list[float]:
        return [float(v) for v in np.quantile(self.losses, qs)]


@torch.no_grad()
def loss_distribution(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      layout: ArrayLayout, stats: DefectStatistics, net_config: NetworkConfig,
                      n_maps: int = 200, seed: int = 0, batch_maps: int = 25,
                      max_samples: int = 1000) -> LossDistribution:
    """Loss of shared weights on n_maps random maps drawn from stats, batch_maps at a time
    (the same maps for the same seed and batch_maps)."""
    if n_maps < 1 or batch_maps < 1 or max_samples < 1:
        raise ValueError(f"n_maps, batch_maps and max_samples must be at least 1, got "
                         f"{n_maps}, {batch_maps}, {max_samples}")
    check_readout(layout, net_config)
    net = BinaryNetwork(net_config)
    net.load_binary(shared_weights(weights, net_config))
    g = torch.Generator().manual_seed(seed)
    x, y = x[:max_samples], y[:max_samples]
    out = []
    for start in range(0, n_maps, batch_maps):
        m = min(batch_maps, n_maps - start)
        cells = layout.sparse_layer_cells(stats.sample_sparse(m, generator=g))
        scores = net(x, cells) * net_config.logit_scale  # (m, N, C)
        loss = F.cross_entropy(scores.reshape(-1, scores.shape[-1]), y.repeat(m),
                               reduction="none").view(m, -1).mean(1)
        out.append(loss)
    return LossDistribution(torch.cat(out).numpy())
