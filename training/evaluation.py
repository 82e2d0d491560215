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
    common_mode_readout,
    dies_deviations,
    dies_layers,
    merge_reads,
    per_read,
    read_masks,
    read_of,
    readout_correction,
    reliable_outputs,
)
from .network import (
    BinaryNetwork,
    NetworkConfig,
    check_samples,
    combine_copies,
    shared_weights,
)


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


def _sparse_product(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                    n_rows: int, dense: torch.Tensor) -> torch.Tensor:
    """(n_rows, N): the sparse matrix with `values` at (rows, cols) times dense (k, N)."""
    mat = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (n_rows, dense.shape[0]),
                                  check_invariants=False)
    return torch.sparse.mm(mat, dense)


def _may_flag(inv: torch.Tensor, excess_terms: torch.Tensor, n_keys: int, tol: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs (keys) whose common-mode excess can exceed tol (the sum of their entries'
    |excess| does), the compact key index of each of their entries, and those entries (a
    mask): the read-out leaves every other output unchanged."""
    bound = torch.zeros(n_keys).index_add_(0, inv, excess_terms.abs())
    flag = (bound > tol).nonzero().flatten()
    compact = torch.full((n_keys,), -1, dtype=torch.long)
    compact[flag] = torch.arange(flag.numel())
    sub = compact[inv]
    w = sub >= 0
    return flag, sub[w], w


def ideal_hidden(w1: torch.Tensor, x: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What every die shares in the hidden layer of shared weights w1 (n_in, H) on inputs x
    (N, n_in): s1 (1.0 where a weight is +1), the inputs transposed (n_in, N) and the ideal
    currents z1 (H, N), the inputs of `defective_neurons`."""
    s1 = (w1 > 0).float()
    xt = x.T.contiguous()
    return s1, xt, (2 * s1 - 1).T @ xt


@dataclass(frozen=True)
class DefectiveNeurons:
    """The hidden neurons that carry a defect on some die, read out on every sample."""

    keys: torch.Tensor  # (U,) die * hidden + neuron, sorted
    on: torch.Tensor  # (U, N) bool: each one's activation on each sample
    flips: tuple[torch.Tensor, torch.Tensor]  # (key index, sample) where it differs from ideal


@torch.no_grad()
def defective_neurons(s1: torch.Tensor, xt: torch.Tensor, z1: torch.Tensor,
                      d1: SparseLayerDeviation, net_config: NetworkConfig) -> DefectiveNeurons:
    """The hidden layer's per-die work: every (die, neuron) with a defect recomputed from the
    ideal currents z1 (H, N) plus a sparse product of its deviations with the inputs xt
    (n_in, N), read out as the network does; s1 is 1.0 where a weight is +1.
    `benchmarks/eval_floor.py` times it alone (the floor of the 36-die evaluation)."""
    keys, inv = torch.unique(d1.die * d1.n_out + d1.col, return_inverse=True)  # sorted
    if not keys.numel():
        empty = torch.zeros(0, dtype=torch.long)
        return DefectiveNeurons(keys, torch.zeros(0, xt.shape[1], dtype=torch.bool),
                                (empty, empty))
    z1_at = z1.index_select(0, keys % d1.n_out)  # their ideal currents
    s_at = s1[d1.row, d1.col]
    z = _sparse_product(inv, d1.row, d1.da + s_at * d1.db, keys.numel(), xt)
    z.add_(z1_at)
    if net_config.readout == "common_mode":
        tol = net_config.readout_tol
        terms = d1.dc + s_at * d1.de
        flag, sub, w = _may_flag(inv, terms, keys.numel(), tol)
        excess = _sparse_product(sub, d1.row[w], terms[w], flag.numel(), xt)
        zf = z[flag]
        z[flag] = zf - readout_correction(zf, excess, tol)
    on = z > 0
    return DefectiveNeurons(keys, on, (on != (z1_at > 0)).nonzero(as_tuple=True))


@torch.no_grad()
def _deviation_scores(weights: Sequence[torch.Tensor], x: torch.Tensor,
                      devs: Sequence[SparseLayerDeviation], net_config: NetworkConfig
                      ) -> torch.Tensor:
    """Class scores (D, N, C) of shared two-layer weights on D dies, from their deviations.

    The ideal products are computed once. Per die, only the hidden neurons that carry a
    defect are recomputed (a sparse product, read out as the network does); the activations
    that flip are scattered into the die's scores (each output read's part on its own, as
    a column of its own: `per_read`); output-layer defects add their row's activation and,
    with the common-mode read-out, the parts they touch are read out again.
    No dense (dies, samples, hidden) tensor is built. Exact: equals the dense forward pass
    (conductances are quantized, `mapping.QUANTUM_UNITS`).
    """
    d1, d2 = devs
    n_dies, n, hid = d1.n, x.shape[0], d1.n_out
    common = net_config.readout == "common_mode"
    tol = net_config.readout_tol
    reads = net_config.output_reads if common else 1
    w1, w2 = shared_weights(weights, net_config)
    s1, xt, z1 = ideal_hidden(w1, x)  # z1 (H, N): the ideal currents
    s2 = (w2 > 0).float()
    c_phys = s2.shape[1]
    # The output layer's reads as virtual columns (read, c) of (H, reads * C) (`per_read`);
    # with one read this is the layer itself.
    read_j = read_of(torch.arange(hid), reads)
    pm2 = 2 * s2 - 1  # (H, C) weights +-1
    n_out2 = reads * c_phys
    h1 = z1 > 0
    scores = (h1.T.float() @ per_read(pm2, reads)).expand(n_dies, -1, -1).contiguous()
    # the output layer's inputs that are on, per die, read and sample (the read-out's n)
    active = (read_masks(hid, reads).T @ h1.float()).expand(n_dies, -1, -1).contiguous()
    # layer 1: neurons (die, j) with defects, recomputed from the ideal plus a sparse product
    hidden = defective_neurons(s1, xt, z1, d1, net_config)
    keys, h_aff = hidden.keys, None
    if keys.numel():
        h_aff, jj = hidden.on, keys % hid
        fu, fn = hidden.flips
        if fu.numel():
            sign = h_aff[fu, fn].float() * 2 - 1
            die_f, j_f = keys[fu] // hid, jj[fu]
            # each flip adds +-its weights to its read's part of the scores (integers: exact
            # in any order; cheaper than a sparse product, which densifies its operand)
            scores.view(-1, c_phys).index_add_(0, (die_f * n + fn) * reads + read_j[j_f],
                                               sign[:, None] * pm2[j_f])
            active.view(-1).index_add_(0, (die_f * reads + read_j[j_f]) * n + fn, sign)
    # the read-outs checked at (die, output), and whether they were reliable (common mode)
    checked_at, checked_ok = torch.zeros(0, dtype=torch.long), torch.ones(0, n, dtype=torch.bool)
    if d2.die.numel():
        # each defect adds (da + s db) x its row's activation on that die
        src = h1.index_select(0, d2.row).float()  # (nnz2, N)
        if h_aff is not None:
            key2 = d2.die * hid + d2.row
            pos = torch.searchsorted(keys, key2).clamp(max=keys.numel() - 1)
            hit = keys[pos] == key2
            src[hit] = h_aff[pos[hit]].float()
        s_at = s2[d2.row, d2.col]
        keys2, inv2 = torch.unique(d2.die * n_out2 + read_j[d2.row] * c_phys + d2.col,
                                   return_inverse=True)
        extra = torch.zeros(keys2.numel(), n).index_add_(0, inv2, src * (d2.da + s_at * d2.db)
                                                         [:, None])
        die2, col2 = keys2 // n_out2, keys2 % n_out2
        out = scores[die2, :, col2] + extra  # (U2, N)
        if common:
            terms = d2.dc + s_at * d2.de
            flag, sub, w = _may_flag(inv2, terms, keys2.numel(), tol)
            excess = torch.zeros(flag.numel(), n).index_add_(0, sub, src[w] * terms[w][:, None])
            df, cf = die2[flag], col2[flag]
            out[flag], ok = common_mode_readout(out[flag], excess, active[df, cf // c_phys], tol,
                                                output_layer=True)
            checked_at, checked_ok = df * c_phys + cf % c_phys, ok
        scores[die2, :, col2] = out
    scores = merge_reads(scores.unflatten(-1, (reads, c_phys)), None)[0]
    reliable = reliable_outputs(checked_at, checked_ok, n_dies, c_phys) if common else None
    return combine_copies(scores, net_config.output_copies, net_config.copy_combine, reliable)


@torch.no_grad()
def error_rates(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                net_config: NetworkConfig, cells: Sequence[LayerCells] | None = None,
                chunk: int = 4096) -> np.ndarray:
    """Error (percent) for each die/replica: weights (1 or D, n_in, n_out), cells (D or None);
    the network's dense forward pass, in chunks of samples."""
    check_samples(x, y, net_config, "evaluation data")
    net = _network_for(weights, net_config)
    wrong = torch.zeros(())
    for i in range(0, len(x), chunk):
        scores = net(x[i:i + chunk], cells)
        wrong = wrong + (scores.argmax(dim=-1) != y[i:i + chunk]).sum(dim=-1)
    return _percent(wrong, len(x))


def _percent(wrong: torch.Tensor, n: int) -> np.ndarray:
    """Misclassified counts per die as percent of n samples."""
    return (100.0 * wrong.double() / n).numpy()


def evaluate_on_dies(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     layout: ArrayLayout | Sequence[ArrayLayout], cells: ArrayCells,
                     net_config: NetworkConfig, baseline_pct: float | None = None) -> DieErrors:
    """Error of weights (shared, or one set per die) on D dies' conductances, batched.

    layout: one layout for all dies, or one per die (defect-aware placement). Shared weights
    of a two-layer network on dies with few deviating cells (defect maps with nominal devices)
    take the sparse path, whose cost grows with the number of defects rather than of dies;
    anything else runs the network's dense forward pass. Both give the same result.
    """
    check_readout(layout, net_config)
    shared = all(torch.as_tensor(w).ndim == 2 or torch.as_tensor(w).shape[0] == 1
                 for w in weights)
    devs = dies_deviations(layout, cells) if shared and len(weights) == 2 else None
    if devs is None:  # (error_rates checks the samples)
        return DieErrors(error_rates(weights, x, y, net_config, dies_layers(layout, cells)),
                         baseline_pct)
    check_samples(x, y, net_config, "evaluation data")
    scores = _deviation_scores(weights, x, devs, net_config)
    return DieErrors(_percent((scores.argmax(dim=-1) != y).sum(dim=-1), len(x)), baseline_pct)


def software_error(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   net_config: NetworkConfig) -> float:
    """Error (percent) on an ideal array."""
    return float(error_rates(weights, x, y, net_config, None)[0])
