"""Defect-aware placement: the same weights placed differently on each die, no retraining.

Hidden neurons are interchangeable, and which column pairs carry which layer is free, so for a
two-layer network and one die's measured conductances we choose:
1. the column pairs of the output layer: the pairs with the least defect severity (a shorted
   output column would bias its class whenever the row is on);
2. the column pair of each hidden neuron in layer 1 (linear assignment on the fraction of
   samples whose hidden activation a pair's defects flip);
3. the rows of each hidden neuron in the output layer, spare rows included (linear assignment
   on the misclassifications each (neuron, row) combination adds, from a data sample).
Each step is a `scipy.optimize.linear_sum_assignment`; costs assume defects act independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .mapping import ArrayCells, ArrayLayout, LayerPlacement, extract_layer
from .network import NetworkConfig, combine_copies


def _pair_severity(cells: ArrayCells, layout: ArrayLayout) -> np.ndarray:
    """Per column pair (2q, 2q+1): summed deviation from nominal, weight units."""
    dev = layout.device
    gp = cells.g_p[0] / dev.unit_s
    gap = cells.g_ap[0] / dev.unit_s
    sev = ((gp - dev.g_p_s / dev.unit_s).abs() + (gap - dev.g_ap_s / dev.unit_s).abs()).sum(0)
    return (sev[0::2] + sev[1::2]).numpy()


def _as_single(w: torch.Tensor) -> torch.Tensor:
    w = torch.as_tensor(w, dtype=torch.float32)
    return w[0] if w.ndim == 3 else w


@torch.no_grad()
def place(weights: Sequence[torch.Tensor], cells: ArrayCells, layout: ArrayLayout,
          x: torch.Tensor, y: torch.Tensor, net_config: NetworkConfig,
          max_samples: int = 1000) -> ArrayLayout:
    """A layout for one die (cells: its conductances, D = 1) that keeps defects out of harm's way.

    weights: the shared binary weights (n_in, n_out) per layer; x, y: a data sample (e.g. the
    training set) used to estimate how often each neuron fires and what a defect costs.
    Column pairs are (2q, 2q+1) of the array. Only two-layer networks are supported.
    """
    if len(layout.layers) != 2:
        raise NotImplementedError("placement is implemented for two-layer networks")
    if cells.n != 1:
        raise ValueError(f"place() takes one die's conductances, got {cells.n}")
    if cells.shape != (layout.rows, layout.cols):
        raise ValueError(f"conductances of shape {cells.shape} for a {layout.rows} x "
                         f"{layout.cols} layout")
    if layout.cols % 2:
        raise ValueError("placement pairs columns (2q, 2q+1): the array needs an even width")
    w1, w2 = (_as_single(w) for w in weights)
    l1, l2 = layout.layers
    n_hidden, n_out = l1.n_out, l2.n_out
    rep2 = l2.replicas
    x, y = x[:max_samples], y[:max_samples]
    n_pairs = layout.cols // 2
    if n_hidden + n_out > n_pairs:
        raise ValueError(f"{n_hidden} hidden + {n_out} output pairs exceed {n_pairs} pairs")
    if n_hidden * rep2 > layout.rows:
        raise ValueError("output layer needs more rows than the array has")

    # 1. output pairs: the cleanest ones
    severity = _pair_severity(cells, layout)
    order = np.argsort(severity, kind="stable")
    out_pairs = np.sort(order[:n_out])
    free_pairs = np.setdiff1d(np.arange(n_pairs), out_pairs)

    # 2. hidden neuron j -> column pair q in layer 1: cost = fraction of flipped activations
    cand = LayerPlacement(l1.rows, 2 * free_pairs, 2 * free_pairs + 1)
    lc = extract_layer(cells, cand, layout.device.unit_s)  # a, b: (1, n_in, Q)
    s1 = (w1 > 0).float()  # (n_in, H)
    z_ideal = x @ (2 * s1 - 1)  # (N, H)
    h_ideal = z_ideal > 0
    a, b = lc.a[0], lc.b[0]  # (n_in, Q)
    # z for neuron j at pair q: x @ (a[:, q] + s1[:, j] * b[:, q])
    za = x @ a  # (N, Q)
    zb = torch.einsum("nr,rj,rq->njq", x, s1, b)  # (N, H, Q)
    z = za[:, None, :] + zb
    flips = ((z > 0) != h_ideal[:, :, None]).float().mean(0).numpy()  # (H, Q)
    rows_j, cols_q = linear_sum_assignment(flips)
    hidden_pair = np.empty(n_hidden, dtype=np.int64)
    hidden_pair[rows_j] = free_pairs[cols_q]
    new_l1 = LayerPlacement(l1.rows, 2 * hidden_pair, 2 * hidden_pair + 1)

    # actual hidden activations on this die with that placement
    lc1 = extract_layer(cells, new_l1, layout.device.unit_s)
    h = (x @ (lc1.a[0] + s1 * lc1.b[0]) > 0).float()  # (N, H)

    # 3. hidden neuron j -> output rows: cost = added misclassifications
    out_plus, out_minus = 2 * out_pairs, 2 * out_pairs + 1
    all_rows = LayerPlacement(np.arange(layout.rows), out_plus, out_minus)
    lc2 = extract_layer(cells, all_rows, layout.device.unit_s)  # per single row
    a2, b2 = lc2.a[0] / rep2, lc2.b[0] / rep2  # (R, n_out): per-row share of one replica
    s2 = (w2 > 0).float()  # (H, n_out)
    nominal = (2 * s2 - 1) / rep2  # each replica row carries 1/rep of the weight
    scores = h @ (2 * s2 - 1)  # (N, n_out) ideal physical outputs
    base_wrong = combine_copies(scores, layout.output_copies, layout.copy_combine).argmax(-1) != y
    # deviation of row r holding neuron j: (H, R, n_out)
    dev = a2[None] + s2[:, None, :] * b2[None] - nominal[:, None, :]
    bad_rows = torch.nonzero(dev.abs().amax(dim=(0, 2)) > 1e-3).flatten()
    cost = np.zeros((n_hidden, layout.rows))
    if bad_rows.numel():
        d = dev[:, bad_rows]  # (H, Rb, n_out)
        added = torch.zeros(d.shape[:2])
        for i in range(0, len(x), 128):  # chunks bound memory: (n, H, Rb, n_out)
            sl = slice(i, i + 128)
            pert = scores[sl, None, None, :] + h[sl, :, None, None] * d[None]
            cls = combine_copies(pert, layout.output_copies, layout.copy_combine)
            wrong = (cls.argmax(-1) != y[sl, None, None]).float()
            added += (wrong - base_wrong[sl].float()[:, None, None]).sum(0)
        added /= len(x)  # (H, Rb)
        cost[:, bad_rows.numpy()] = added.numpy() + 1e-3 * d.abs().sum(-1).numpy()
    slot_cost = np.repeat(cost, rep2, axis=0)  # each neuron needs rep2 rows
    slots, rows_r = linear_sum_assignment(slot_cost)
    hidden_rows = np.empty((n_hidden, rep2), dtype=np.int64)
    hidden_rows[slots // rep2, slots % rep2] = rows_r
    new_l2 = LayerPlacement(hidden_rows, out_plus, out_minus)
    return layout.with_layers((new_l1, new_l2))


def place_all(weights: Sequence[torch.Tensor], cells: ArrayCells, layout: ArrayLayout,
              x: torch.Tensor, y: torch.Tensor, net_config: NetworkConfig,
              max_samples: int = 1000) -> list[ArrayLayout]:
    """One placement per die of `cells` (D dies)."""
    return [place(weights, cells[i], layout, x, y, net_config, max_samples)
            for i in range(cells.n)]
