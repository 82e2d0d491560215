"""Defect-aware placement: the same weights placed differently on each die, no retraining.

The station drives rows from software, so which array row carries which input, which column pair
carries which neuron and which rows carry which hidden neuron in the next layer are free per die.
A short only injects current when its row is driven, and a row that is never driven (or driven
by a pixel that is almost always off) costs nothing. For a two-layer network and one die's
measured conductances we choose:
1. the output layer's column pairs: the cleanest pairs of the array (least summed deviation from
   nominal; a shorted output column biases its class whenever its row is on);
2. layer 1's input -> row wiring: pixels sorted by how often they are on go to rows sorted by
   how much defect they carry in the hidden columns (rearrangement: the least active pixels,
   e.g. MNIST's empty border, take the worst rows; with fewer inputs than rows the worst rows are
   never driven);
3. each hidden neuron's layer-1 column pair, spare pairs included (linear assignment on the
   fraction of samples whose activation the pair's defects flip, given the row wiring); steps 2
   and 3 alternate for `rounds` rounds;
4. each hidden neuron's row(s) in the output layer, spare rows included (linear assignment on
   the misclassifications each (neuron, row) combination adds, from a data sample).
Costs assume defects act independently; `scipy.optimize.linear_sum_assignment` solves 3 and 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment

from .mapping import ArrayCells, ArrayLayout, LayerPlacement, extract_layer
from .network import NetworkConfig, check_samples, combine_copies, shared_weights


class PlacementConfig(BaseModel):
    """Options of defect-aware placement (each lever can be switched off for ablations)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clean_output_pairs: bool = Field(True, description="output layer on the cleanest pairs")
    permute_inputs: bool = Field(True, description="per-die pixel -> row wiring of layer 1")
    assign_hidden_pairs: bool = Field(True, description="hidden neuron -> pair assignment")
    assign_output_rows: bool = Field(True, description="hidden neuron -> output-layer rows")
    rounds: int = Field(2, ge=1, description="alternations of input rows and hidden pairs")
    max_samples: int = Field(1000, ge=10, description="data samples used for the costs")


def _cell_deviation(cells: ArrayCells, layout: ArrayLayout) -> torch.Tensor:
    """(rows, cols) summed |deviation| of a cell's P and AP conductance from nominal, units."""
    dev = layout.device
    gp, gap = cells.g_p[0], cells.g_ap[0]
    return ((gp - dev.g_p_s).abs() + (gap - dev.g_ap_s).abs()) / dev.unit_s


def _pair_severity(cells: ArrayCells, layout: ArrayLayout) -> np.ndarray:
    """Per column pair (2q, 2q+1): summed deviation from nominal, weight units."""
    sev = _cell_deviation(cells, layout).sum(0)
    return (sev[0::2] + sev[1::2]).numpy()


def _input_rows(activity: np.ndarray, row_cost: np.ndarray, n_rows: int) -> np.ndarray:
    """Row of each input: most active input on the cleanest row (ties keep index order)."""
    by_activity = np.argsort(-activity, kind="stable")
    by_cost = np.argsort(row_cost, kind="stable")[:activity.size]
    rows = np.empty(activity.size, dtype=np.int64)
    rows[by_activity] = by_cost
    assert rows.max() < n_rows
    return rows


def _hidden_pairs(x: torch.Tensor, s1: torch.Tensor, cells: ArrayCells, layout: ArrayLayout,
                  rows: np.ndarray, free_pairs: np.ndarray, h_ideal: torch.Tensor) -> np.ndarray:
    """Pair of each hidden neuron: linear assignment on the fraction of flipped activations."""
    cand = LayerPlacement(rows, 2 * free_pairs, 2 * free_pairs + 1)
    lc = extract_layer(cells, cand, layout.device)
    a, b = lc.a[0], lc.b[0]  # (n_in, Q)
    za = x @ a  # (N, Q)
    zb = torch.einsum("nr,rj,rq->njq", x, s1, b)  # (N, H, Q)
    flips = ((za[:, None, :] + zb > 0) != h_ideal[:, :, None]).float().mean(0).numpy()
    jj, qq = linear_sum_assignment(flips)
    out = np.empty(s1.shape[1], dtype=np.int64)
    out[jj] = free_pairs[qq]
    return out


def check_placeable(layout: ArrayLayout) -> None:
    """Raise unless `place` can rewire this layout (checked before training, too, so a run
    does not fail in placement after its training): two layers, one row per input in
    layer 1, an even array width (pairs are columns 2q, 2q+1), rows and pairs enough."""
    if len(layout.layers) != 2:
        raise NotImplementedError("placement is implemented for two-layer networks")
    l1, l2 = layout.layers
    if l1.replicas != 1:
        raise NotImplementedError("placement needs one row per input in layer 1")
    if layout.cols % 2:
        raise ValueError(f"placement pairs columns (2q, 2q+1): the array needs an even width, "
                         f"it has {layout.cols} columns")
    n_pairs = layout.cols // 2
    if l1.n_out + l2.n_out > n_pairs:
        raise ValueError(f"{l1.n_out} hidden + {l2.n_out} output pairs exceed {n_pairs} pairs")
    if l1.n_out * l2.replicas > layout.rows or l1.n_in > layout.rows:
        raise ValueError("the network needs more rows than the array has")


@torch.no_grad()
def place(weights: Sequence[torch.Tensor], cells: ArrayCells, layout: ArrayLayout,
          x: torch.Tensor, y: torch.Tensor, net_config: NetworkConfig,
          max_samples: int | None = None, config: PlacementConfig | None = None) -> ArrayLayout:
    """A layout for one die (cells: its conductances, D = 1) that keeps defects out of harm's way.

    weights: the shared binary weights (n_in, n_out) per layer; x, y: a data sample (e.g. the
    training set) used to estimate how often each input and neuron is on and what a defect costs.
    Column pairs are (2q, 2q+1) of the array; layer 1 uses one row per input. Only two-layer
    networks are supported. Deterministic for given inputs.
    """
    config = config or PlacementConfig()
    if max_samples is not None:  # validated as the config's own field is
        config = PlacementConfig.model_validate({**config.model_dump(),
                                                 "max_samples": max_samples})
    check_placeable(layout)
    if cells.n != 1:
        raise ValueError(f"place() takes one die's conductances, got {cells.n}")
    if cells.shape != (layout.rows, layout.cols):
        raise ValueError(f"conductances of shape {cells.shape} for a {layout.rows} x "
                         f"{layout.cols} layout")
    w1, w2 = shared_weights(weights, net_config)
    l1, l2 = layout.layers
    n_hidden, n_out = l1.n_out, l2.n_out
    rep2 = l2.replicas
    x, y = x[:config.max_samples], y[:config.max_samples]
    check_samples(x, y, net_config, "placement sample")
    n_pairs = layout.cols // 2
    deviation = _cell_deviation(cells, layout).numpy()  # (rows, cols)

    # 1. output pairs: the cleanest ones (or where the template put them)
    fixed_hidden = None if config.assign_hidden_pairs else l1.plus_cols // 2
    if config.clean_output_pairs:
        severity = _pair_severity(cells, layout)
        if fixed_hidden is not None:
            severity[fixed_hidden] = np.inf
        out_pairs = np.sort(np.argsort(severity, kind="stable")[:n_out])
    else:
        out_pairs = l2.plus_cols // 2
    free_pairs = np.setdiff1d(np.arange(n_pairs), out_pairs)

    # 2./3. layer-1 input rows and hidden pairs, alternating
    s1 = (w1 > 0).float()  # (n_in, H)
    h_ideal = x @ (2 * s1 - 1) > 0  # (N, H)
    activity = x.mean(0).numpy()
    rows = l1.rows[:, 0].copy()
    hidden_pair = fixed_hidden
    for _ in range(config.rounds):
        if config.permute_inputs:
            used = (free_pairs if hidden_pair is None else hidden_pair)
            cols = np.concatenate([2 * used, 2 * used + 1])
            rows = _input_rows(activity, deviation[:, cols].sum(1), layout.rows)
        if config.assign_hidden_pairs:
            hidden_pair = _hidden_pairs(x, s1, cells, layout, rows, free_pairs, h_ideal)
        if not config.permute_inputs:
            break
    assert hidden_pair is not None
    new_l1 = LayerPlacement(rows, 2 * hidden_pair, 2 * hidden_pair + 1)

    # actual hidden activations on this die with that placement
    lc1 = extract_layer(cells, new_l1, layout.device)
    h = (x @ (lc1.a[0] + s1 * lc1.b[0]) > 0).float()  # (N, H)

    # 4. hidden neuron j -> output rows: cost = added misclassifications
    out_plus, out_minus = 2 * out_pairs, 2 * out_pairs + 1
    if not config.assign_output_rows:
        return layout.with_layers((new_l1, LayerPlacement(l2.rows, out_plus, out_minus)))
    all_rows = LayerPlacement(np.arange(layout.rows), out_plus, out_minus)
    lc2 = extract_layer(cells, all_rows, layout.device)  # per single row
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
              max_samples: int | None = None,
              config: PlacementConfig | None = None) -> list[ArrayLayout]:
    """One placement per die of `cells` (D dies)."""
    return [place(weights, cells[i], layout, x, y, net_config, max_samples, config)
            for i in range(cells.n)]
