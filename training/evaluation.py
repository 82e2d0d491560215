"""Error of weights on many dies at once (dies are a tensor dimension), with summary statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .mapping import (
    ArrayCells,
    ArrayLayout,
    LayerCells,
    SparseLayerDeviation,
    check_readout,
    dies_layers,
)
from .network import BinaryNetwork, NetworkConfig, combine_copies


@dataclass(frozen=True)
class DieErrors:
    """Misclassification error (percent) per die and its summary; gap to a baseline in pp."""

    per_die: np.ndarray
    baseline_pct: float | None = None

    @property
    def mean(self) -> float:
        return float(self.per_die.mean())

    @property
    def std(self) -> float:
        return float(self.per_die.std())

    @property
    def median(self) -> float:
        return float(np.median(self.per_die))

    @property
    def min(self) -> float:
        return float(self.per_die.min())

    @property
    def max(self) -> float:
        return float(self.per_die.max())

    @property
    def gap_pp(self) -> float:
        """Mean error minus the software baseline's error, percentage points."""
        if self.baseline_pct is None:
            raise ValueError("no baseline error given")
        return self.mean - self.baseline_pct

    def summary(self) -> dict[str, float]:
        out = {"mean": self.mean, "std": self.std, "median": self.median, "min": self.min,
               "max": self.max}
        if self.baseline_pct is not None:
            out["gap_pp"] = self.gap_pp
        return out


def _network_for(weights: Sequence[torch.Tensor], net_config: NetworkConfig) -> BinaryNetwork:
    net = BinaryNetwork(net_config, replicas=int(weights[0].shape[0]) if weights[0].ndim == 3
                        else 1)
    with torch.no_grad():
        for w, new in zip(net.weights, weights, strict=True):
            new = torch.as_tensor(new, dtype=torch.float32)
            w.copy_((new if new.ndim == 3 else new[None]).expand_as(w))
    return net


@torch.no_grad()
def _sparse_scores(weights: Sequence[torch.Tensor], x: torch.Tensor,
                   cells: Sequence[LayerCells], net_config: NetworkConfig,
                   max_density: float) -> torch.Tensor | None:
    """Scores (D, N, C) of shared weights on D dies as ideal + sparse per-die corrections.

    Defects are rare, so each layer's conductances differ from the ideal +-1 on few weights:
    the ideal product is computed once and the corrections with a sparse matmul. Returns None
    when the deviations are too dense (e.g. per-device variation) for this to pay off.
    """
    n_dies = cells[0].n
    h: torch.Tensor = x  # (N, n_in) shared, later (D, N, n_in)
    z = h
    for i, (w, lc) in enumerate(zip(weights, cells, strict=True)):
        w = torch.as_tensor(w, dtype=torch.float32)
        w = w[0] if w.ndim == 3 else w
        s = (w > 0).float()
        delta = lc.a + s * lc.b - (2 * s - 1)  # (D, n_in, n_out)
        nz = delta.abs() > 1e-6
        if nz.float().mean() > max_density:
            return None
        d_idx, i_idx, j_idx = nz.nonzero(as_tuple=True)
        n_in, n_out = delta.shape[1:]
        z = h @ (2 * s - 1)  # (N, n_out) or (D, N, n_out)
        if z.ndim == 2:
            z = z.expand(n_dies, *z.shape)
            cols = i_idx
            ht = h.T  # (n_in, N)
        else:
            cols = d_idx * n_in + i_idx
            ht = h.transpose(1, 2).reshape(n_dies * n_in, -1)
        rows = d_idx * n_out + j_idx
        corr = torch.sparse_coo_tensor(torch.stack([rows, cols]), delta[nz],
                                       (n_dies * n_out, ht.shape[0]), check_invariants=False)
        z = z + torch.sparse.mm(corr, ht).reshape(n_dies, n_out, -1).transpose(1, 2)
        if i < len(weights) - 1:
            h = (z > 0).float()
    return combine_copies(z, net_config.output_copies, net_config.copy_combine)


@torch.no_grad()
def _deviation_errors(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                      devs: Sequence[SparseLayerDeviation], net_config: NetworkConfig
                      ) -> np.ndarray:
    """Error (percent) per die of shared two-layer weights: the ideal products are computed
    once; per die only the hidden neurons that carry a defect are recomputed (a sparse matmul),
    the hidden activations that flip are scattered into the die's scores, and output-layer
    defects add their row's activation. No dense (dies, samples, hidden) tensor is built.
    """
    d1, d2 = devs
    n_dies, n, hid = d1.n, x.shape[0], d1.n_out
    w1, w2 = (torch.as_tensor(w, dtype=torch.float32) for w in weights)
    w1, w2 = (w[0] if w.ndim == 3 else w for w in (w1, w2))
    s1, s2 = (w1 > 0).float(), (w2 > 0).float()
    xt = x.T.contiguous()  # (n_in, N)
    wt2 = (2 * s2 - 1).T.contiguous()  # (C_phys, H)
    z1 = (2 * s1 - 1).T @ xt  # (H, N) ideal
    h1 = z1 > 0
    c_phys = wt2.shape[0]
    scores = (h1.T.float() @ wt2.T).expand(n_dies, -1, -1).contiguous()  # (D, N, C_phys)
    # layer 1: neurons (die, j) with defects, recomputed from the ideal plus a sparse product
    key1 = d1.die * hid + d1.col
    keys, inv = torch.unique(key1, return_inverse=True)  # sorted
    h_aff = None
    if keys.numel():
        delta = d1.da + s1[d1.row, d1.col] * d1.db
        corr = torch.sparse.mm(torch.sparse_coo_tensor(torch.stack([inv, d1.row]), delta,
                                                       (keys.numel(), xt.shape[0]),
                                                       check_invariants=False), xt)
        jj = keys % hid
        h_aff = corr.add_(z1.index_select(0, jj)) > 0  # (U, N)
        fu, fn = (h_aff != h1.index_select(0, jj)).nonzero(as_tuple=True)
        if fu.numel():
            # flipped activations as a sparse (D*N, H) matrix of +-1 times W2
            sign = h_aff[fu, fn].float() * 2 - 1
            flips = torch.sparse_coo_tensor(torch.stack([(keys[fu] // hid) * n + fn, jj[fu]]),
                                            sign, (n_dies * n, hid), check_invariants=False)
            scores.view(n_dies * n, c_phys).add_(torch.sparse.mm(flips, wt2.T.contiguous()))
    # layer 2: each defect adds (da + s db) x its row's (per-die) activation
    if d2.die.numel():
        src = h1.index_select(0, d2.row).float()  # (nnz2, N)
        if h_aff is not None:
            key2 = d2.die * hid + d2.row
            pos = torch.searchsorted(keys, key2).clamp(max=keys.numel() - 1)
            hit = keys[pos] == key2
            src[hit] = h_aff[pos[hit]].float()
        delta2 = d2.da + s2[d2.row, d2.col] * d2.db
        extra = torch.zeros(n_dies * c_phys, n).index_add_(0, d2.die * c_phys + d2.col,
                                                         src * delta2[:, None])
        scores.add_(extra.view(n_dies, c_phys, n).transpose(1, 2))
    cls = combine_copies(scores, net_config.output_copies,
                         net_config.copy_combine)  # (D, N, C)
    wrong = (cls.argmax(dim=-1) != y).sum(dim=-1)
    return (100.0 * wrong.double() / n).numpy()


@torch.no_grad()
def error_rates(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                net_config: NetworkConfig, cells: Sequence[LayerCells] | None = None,
                chunk: int = 4096, sparse_max_density: float = 0.05) -> np.ndarray:
    """Error (percent) for each die/replica: weights (1 or D, n_in, n_out), cells (D or None).

    Shared weights on dies whose conductances deviate from ideal on few cells (defect maps with
    nominal devices) take the sparse path: cost nearly independent of the number of dies.
    """
    shared = all(torch.as_tensor(w).ndim == 2 or torch.as_tensor(w).shape[0] == 1
                 for w in weights)
    if cells is not None and shared and cells[0].n > 1 and net_config.readout == "diff":
        wrong = None
        for i in range(0, len(x), chunk):
            scores = _sparse_scores(weights, x[i:i + chunk], cells, net_config,
                                    sparse_max_density)
            if scores is None:
                wrong = None
                break
            miss = (scores.argmax(dim=-1) != y[i:i + chunk]).sum(dim=-1)
            wrong = miss if wrong is None else wrong + miss
        if wrong is not None:
            return (100.0 * wrong.double() / len(x)).numpy()
    net = _network_for(weights, net_config)
    wrong = None
    for i in range(0, len(x), chunk):
        scores = net(x[i:i + chunk], cells)
        miss = (scores.argmax(dim=-1) != y[i:i + chunk]).sum(dim=-1)
        wrong = miss if wrong is None else wrong + miss
    assert wrong is not None
    return (100.0 * wrong.double() / len(x)).numpy()


def evaluate_on_dies(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     layout: ArrayLayout | Sequence[ArrayLayout], cells: ArrayCells,
                     net_config: NetworkConfig, baseline_pct: float | None = None) -> DieErrors:
    """Error of weights (shared, or one set per die) on D dies' conductances, batched.

    layout: one layout for all dies, or one per die (defect-aware placement).
    """
    check_readout(layout, net_config.readout, net_config.readout_tol)
    shared = all(torch.as_tensor(w).ndim == 2 or torch.as_tensor(w).shape[0] == 1
                 for w in weights)
    if (isinstance(layout, ArrayLayout) and shared and len(weights) == 2
            and net_config.readout == "diff"):
        devs = layout.sparse_deviations(cells)
        if devs is not None:
            return DieErrors(_deviation_errors(weights, x, y, devs, net_config), baseline_pct)
    return DieErrors(error_rates(weights, x, y, net_config, dies_layers(layout, cells)),
                     baseline_pct)


def software_error(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   net_config: NetworkConfig) -> float:
    """Error (percent) on an ideal array."""
    return float(error_rates(weights, x, y, net_config, None)[0])
