"""Weight-to-device mapping: where each layer sits on the die's array, and what it sees there.

Physics (DESIGN.md): a 1T1MTJ cell conducts G = 1/(R_access + R_mtj). A binary input vector
x in {0,1}^rows is applied as read voltages on the rows; the chip returns every column current
I_c = V_read * sum_r x_r G[r, c]. A binary weight w is a differential column pair: w = +1 puts P
(high G) on the plus device and AP on the minus device, w = -1 the reverse; a layer's output is
I_plus - I_minus per neuron, and a hidden neuron is on iff that difference is > 0.

`ArrayLayout` is what the station needs to program and run a chip without knowing the network:
per layer the array rows its inputs drive and the plus/minus columns of each output, the target
device state of every cell, the row pattern for an input batch, and the layer outputs from the
measured column currents. It also turns a defect map, a measured resistance array or per-device
conductances into the conductances each layer sees (`ArrayCells` -> `LayerCells`).

Conductances inside training are expressed in weight units: divided by the nominal differential
swing u = G_P - G_AP, so a healthy w = +1 pair contributes +1 and a short about +9.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .defects import CellDefect, DefectMap, SparseDefects

if TYPE_CHECKING:
    from .network import NetworkConfig

P_STATE, AP_STATE, UNTOUCHED = 0, 1, 2


class DeviceModel(BaseModel):
    """Nominal conductances of a healthy cell (siemens) and the read voltage.

    Defaults: R_P 5 kOhm, TMR 120 %, R_access 1 kOhm (DESIGN.md), so G_P = 1/6 kOhm and
    G_AP = 1/12 kOhm. `g_short_s` is used for shorted cells whose resistance was not measured.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    g_p_s: float = Field(1.0 / 6000.0, gt=0)
    g_ap_s: float = Field(1.0 / 12000.0, gt=0)
    g_short_s: float = Field(1.0 / 1150.0, gt=0)
    v_read_v: float = Field(0.1, gt=0)

    @classmethod
    def from_resistances(cls, r_p_ohm: float = 5000.0, tmr: float = 1.2,
                         r_access_ohm: float = 1000.0, r_short_ohm: float = 150.0,
                         v_read_v: float = 0.1) -> DeviceModel:
        """Nominal conductances from median device parameters."""
        return cls(g_p_s=1.0 / (r_access_ohm + r_p_ohm),
                   g_ap_s=1.0 / (r_access_ohm + r_p_ohm * (1.0 + tmr)),
                   g_short_s=1.0 / (r_access_ohm + r_short_ohm), v_read_v=v_read_v)

    @classmethod
    def fit(cls, r_all_p_ohm: np.ndarray, r_all_ap_ohm: np.ndarray,
            kinds: np.ndarray | None = None, v_read_v: float = 0.1) -> DeviceModel:
        """Medians of healthy cells from two read-backs (array written all-P, then all-AP)."""
        a, b = np.asarray(r_all_p_ohm, float), np.asarray(r_all_ap_ohm, float)
        if a.shape != b.shape:
            raise ValueError(f"read-backs differ in shape: {a.shape} vs {b.shape}")
        ok = np.ones(a.shape, bool) if kinds is None else np.asarray(kinds) == CellDefect.OK
        if kinds is not None and np.shape(kinds) != a.shape:
            raise ValueError(f"kinds shape {np.shape(kinds)} differs from read-backs {a.shape}")
        if not ok.any():
            raise ValueError("no healthy cell to fit the device's conductances from: every "
                             "cell was classed a defect (dies not contacted? thresholds?)")
        g_short = 1.0 / 1150.0
        if kinds is not None and (np.asarray(kinds) == CellDefect.SHORT).any():
            g_short = float(np.median(1.0 / a[np.asarray(kinds) == CellDefect.SHORT]))
        return cls(g_p_s=float(np.median(1.0 / a[ok])), g_ap_s=float(np.median(1.0 / b[ok])),
                   g_short_s=g_short, v_read_v=v_read_v)

    @property
    def unit_s(self) -> float:
        """Differential swing of one weight, G_P - G_AP: the unit of conductances in training."""
        return self.g_p_s - self.g_ap_s


# ---- per-cell conductances of whole arrays ---------------------------------------------------
@dataclass(frozen=True)
class ArrayCells:
    """Conductance (siemens) each cell of D arrays shows if programmed P and if programmed AP.

    g_p, g_ap: float32 tensors (D, rows, cols). A healthy cell has g_p > g_ap; a shorted, open or
    stuck cell shows the same conductance whatever it is programmed to (g_p == g_ap), which is
    how defects override weights in the forward pass. A measured read-back of a programmed array
    also has g_p == g_ap (the conductance it was read at).
    """

    g_p: torch.Tensor
    g_ap: torch.Tensor

    def __post_init__(self) -> None:
        if self.g_p.ndim != 3 or self.g_p.shape != self.g_ap.shape:
            raise ValueError(f"ArrayCells needs g_p, g_ap of equal shape (D, rows, cols), got "
                             f"{tuple(self.g_p.shape)} and {tuple(self.g_ap.shape)}")

    @property
    def n(self) -> int:
        return int(self.g_p.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.g_p.shape[1]), int(self.g_p.shape[2])

    def __getitem__(self, idx: int | slice) -> ArrayCells:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return ArrayCells(self.g_p[idx], self.g_ap[idx])


def cells_from_kinds(kinds: torch.Tensor | np.ndarray, device: DeviceModel,
                     resistance_ohm: torch.Tensor | np.ndarray | None = None,
                     g_p: torch.Tensor | None = None,
                     g_ap: torch.Tensor | None = None) -> ArrayCells:
    """Conductances of arrays from defect codes (D, rows, cols) or (rows, cols).

    Healthy cells get `g_p`/`g_ap` if given (per-device values, same shape) else the nominal
    ones; shorted/open cells get 1/resistance where a resistance > 0 was measured, else the
    nominal short conductance / 0; stuck cells get the conductance of their stuck state.
    """
    k = torch.as_tensor(kinds)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3:
        raise ValueError(f"kinds must be (rows, cols) or (D, rows, cols), got {tuple(k.shape)}")
    k = k.to(torch.int8)
    shape = k.shape
    gp = torch.full(shape, device.g_p_s) if g_p is None else torch.as_tensor(g_p).float()
    gap = torch.full(shape, device.g_ap_s) if g_ap is None else torch.as_tensor(g_ap).float()
    gp = gp.reshape(shape) if gp.numel() == k.numel() else gp
    gap = gap.reshape(shape) if gap.numel() == k.numel() else gap
    if gp.shape != shape or gap.shape != shape:
        raise ValueError(f"per-device conductances {tuple(gp.shape)} do not match kinds "
                         f"{tuple(shape)}")
    r = torch.zeros(shape)
    if resistance_ohm is not None:
        r = torch.as_tensor(resistance_ohm, dtype=torch.float32)
        r = r.reshape(shape) if r.numel() == k.numel() else r
        if r.shape != shape:
            raise ValueError(f"resistance_ohm shape {tuple(r.shape)} does not match kinds "
                             f"{tuple(shape)}")
    fixed = defect_conductance(k, r, device, stuck_p_s=gp, stuck_ap_s=gap)
    broken = (k >= CellDefect.SHORT) & (k <= CellDefect.STUCK_AP)
    return ArrayCells(torch.where(broken, fixed, gp).float(),
                      torch.where(broken, fixed, gap).float())


def cells_from_defect_maps(maps: Sequence[DefectMap], device: DeviceModel) -> ArrayCells:
    """Conductances of several dies from their defect maps (nominal healthy cells)."""
    if not maps:
        raise ValueError("no defect maps given")
    shape = maps[0].shape
    for i, m in enumerate(maps):
        m.check_shape(shape) if i else None
    kinds = np.stack([m.kinds for m in maps])
    r = None
    if all(m.resistance_ohm is not None for m in maps):
        r = np.stack([m.resistance_ohm for m in maps])  # type: ignore[misc]
        # healthy cells' measured resistance is of whatever state they were in: ignore it
        r = np.where(kinds == CellDefect.OK, 0.0, r).astype(np.float32)
    return cells_from_kinds(kinds, device, r)


def cells_from_resistance(resistance_ohm: np.ndarray | torch.Tensor) -> ArrayCells:
    """Conductances of programmed arrays from a measured read-back (rows, cols) or (D, r, c).

    The read-back already reflects the programmed states and every defect, so g_p == g_ap.
    """
    r = torch.as_tensor(np.asarray(resistance_ohm), dtype=torch.float32)
    if r.ndim == 2:
        r = r[None]
    if r.ndim != 3:
        raise ValueError(f"resistance array must be (rows, cols) or (D, rows, cols), got "
                         f"{tuple(r.shape)}")
    bad = ~(r > 0)  # NaN too
    if bool(bad.any()):
        where = tuple(int(v) for v in bad.nonzero()[0])
        raise ValueError(f"a read-back resistance must be > 0 ohm (inf for an open cell); "
                         f"{int(bad.sum())} cell(s) are not, first at (die, row, col) {where}: "
                         f"{float(r[where])}")
    g = 1.0 / r
    return ArrayCells(g, g.clone())


# ---- layout ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlacement:
    """Where one layer sits: the array row(s) of each input, plus/minus columns of each output.

    rows: (n_in,) or (n_in, rep): with rep > 1 each input drives rep rows carrying the same
    weights (row redundancy: the layer's nominal current grows rep-fold, a single defective
    cell's does not). Conductances a layer sees are averaged over its replicas.
    """

    rows: np.ndarray
    plus_cols: np.ndarray
    minus_cols: np.ndarray

    def __post_init__(self) -> None:
        for name in ("rows", "plus_cols", "minus_cols"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        if self.rows.ndim == 1:
            object.__setattr__(self, "rows", self.rows[:, None])
        if self.rows.ndim != 2 or self.plus_cols.ndim != 1:
            raise ValueError("rows must be (n_in,) or (n_in, rep) and columns 1-D")
        if self.plus_cols.shape != self.minus_cols.shape:
            raise ValueError("plus_cols and minus_cols must have the same length")

    @property
    def n_in(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_out(self) -> int:
        return int(self.plus_cols.size)

    @property
    def replicas(self) -> int:
        """Rows driven by each input."""
        return int(self.rows.shape[1])

    @property
    def row_range(self) -> tuple[int, int]:
        """Bounding rows [start, stop) of the layer on the array."""
        return int(self.rows.min()), int(self.rows.max()) + 1

    @property
    def col_range(self) -> tuple[int, int]:
        """Bounding columns [start, stop) of the layer on the array."""
        return int(self.cols.min()), int(self.cols.max()) + 1

    @property
    def cols(self) -> np.ndarray:
        """All columns the layer reads, plus then minus."""
        return np.concatenate([self.plus_cols, self.minus_cols])

    def flat_index(self, n_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat array indices (row * n_cols + col) of plus and minus cells, (n_in, rep, n_out)."""
        key = "_flat_cache"
        cache = self.__dict__.get(key)
        if cache is None or cache[0] != n_cols:
            base = torch.as_tensor(self.rows)[:, :, None] * n_cols
            cache = (n_cols, base + torch.as_tensor(self.plus_cols),
                     base + torch.as_tensor(self.minus_cols))
            object.__setattr__(self, key, cache)
        return cache[1], cache[2]


@dataclass(frozen=True)
class ArrayLayout:
    """The network's placement on a rows x cols array, and the chip-side helpers of the station.

    Layer l's inputs drive `layers[l].rows`; its output j is I[plus_cols[j]] - I[minus_cols[j]].
    The last layer has `output_copies` copies of each class (output index copy * n_classes + k);
    class scores combine the copies (`copy_combine`: "mean" or "median"). `readout`: "diff"
    (I_plus - I_minus) or "common_mode" (`common_mode_readout`, threshold `readout_tol` weight
    units), the same read-out the training forward pass applies. `output_reads` (common-mode
    only): the last layer's inputs are driven in that many chip reads (`split_reads`), each
    checked on its own and the outputs added, so a check sees fewer defects at once.
    """

    rows: int
    cols: int
    layers: tuple[LayerPlacement, ...]
    output_copies: int = 1
    copy_combine: str = "mean"
    device: DeviceModel = field(default_factory=DeviceModel)
    readout: str = "diff"
    readout_tol: float = 4.0
    output_reads: int = 1

    def __post_init__(self) -> None:
        used = np.zeros((self.rows, self.cols), dtype=np.int32)
        for i, lp in enumerate(self.layers):
            if lp.n_in == 0 or lp.n_out == 0:
                raise ValueError(f"layer {i} is empty")
            if lp.rows.min() < 0 or lp.rows.max() >= self.rows:
                raise ValueError(f"layer {i} uses rows {lp.row_range} outside the array's "
                                 f"{self.rows} rows")
            if lp.cols.min() < 0 or lp.cols.max() >= self.cols:
                raise ValueError(f"layer {i} uses columns {lp.col_range} outside the array's "
                                 f"{self.cols} columns")
            if np.unique(lp.rows).size != lp.rows.size or np.unique(lp.cols).size != 2 * lp.n_out:
                raise ValueError(f"layer {i} uses a row or a column twice")
            used[np.ix_(lp.rows.ravel(), lp.cols)] += 1
            if i > 0 and self.layers[i - 1].n_out != lp.n_in:
                raise ValueError(f"layer {i} has {lp.n_in} inputs but layer {i - 1} has "
                                 f"{self.layers[i - 1].n_out} outputs")
        if (used > 1).any():
            r, c = np.argwhere(used > 1)[0]
            raise ValueError(f"layers overlap on the array (first shared cell: row {r}, col {c})")
        if self.copy_combine not in ("mean", "median"):
            raise ValueError(f"copy_combine must be 'mean' or 'median', got "
                             f"{self.copy_combine!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if self.layers[-1].n_out % self.output_copies:
            raise ValueError("last layer outputs are not a multiple of output_copies")
        check_output_reads(self.output_reads, self.readout, self.layers[-1].n_in)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def default(cls, sizes: Sequence[int] = (100, 90, 10), rows: int = 100, cols: int = 200,
                output_copies: int = 1, copy_combine: str = "mean",
                device: DeviceModel | None = None, row_replicas: Sequence[int] | None = None,
                readout: str = "diff", readout_tol: float = 4.0, output_reads: int = 1
                ) -> ArrayLayout:
        """Layers side by side from column 0, each on rows 0..n_in-1, pairs (2j, 2j+1).

        For (100, 90, 10) on 100 x 200: layer 1 on rows 0-99, cols 0-179; layer 2 on rows 0-89,
        cols 180-199 (DESIGN.md). Raises a ValueError naming the sizes if it does not fit.
        """
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"a network needs at least two sizes (in, out), got {sizes}")
        outs = [*sizes[1:-1], sizes[-1] * output_copies]
        reps = list(row_replicas) if row_replicas is not None else [1] * len(outs)
        if len(reps) != len(outs) or min(reps) < 1:
            raise ValueError(f"row_replicas {reps} must give one count >= 1 per layer")
        need_cols = 2 * sum(outs)
        need_rows = max(n * r for n, r in zip(sizes[:-1], reps, strict=True))
        if need_cols > cols or need_rows > rows:
            raise ValueError(
                f"network {sizes} (output copies {output_copies}, row replicas {reps}) needs "
                f"{need_rows} rows x "
                f"{need_cols} columns, the array is {rows} x {cols}")
        layers, c0 = [], 0
        for n_in, n_out, rep in zip(sizes[:-1], outs, reps, strict=True):
            plus = c0 + 2 * np.arange(n_out)
            rows_ = np.arange(n_in * rep).reshape(rep, n_in).T  # input i on rows i, i + n_in..
            layers.append(LayerPlacement(rows_, plus, plus + 1))
            c0 += 2 * n_out
        return cls(rows, cols, tuple(layers), output_copies, copy_combine,
                   device or DeviceModel(), readout, readout_tol, output_reads)

    def with_layers(self, layers: Sequence[LayerPlacement]) -> ArrayLayout:
        """A copy with other placements (e.g. from defect-aware placement)."""
        return replace(self, layers=tuple(layers))

    def placement_arrays(self) -> dict[str, np.ndarray]:
        """Where each layer sits, as named integer arrays (what a run store keeps)."""
        return {f"L{k}/{name}": getattr(lp, name) for k, lp in enumerate(self.layers)
                for name in ("rows", "plus_cols", "minus_cols")}

    def with_placement_arrays(self, arrays: dict[str, np.ndarray]) -> ArrayLayout:
        """A copy placed as `placement_arrays` described (same sizes, other cells)."""
        layers = []
        for k, old in enumerate(self.layers):
            lp = LayerPlacement(*(arrays[f"L{k}/{n}"] for n in ("rows", "plus_cols",
                                                                 "minus_cols")))
            if (lp.n_in, lp.n_out) != (old.n_in, old.n_out):
                raise ValueError(f"stored placement of layer {k} is {lp.n_in} x {lp.n_out}, "
                                 f"the network's is {old.n_in} x {old.n_out}")
            if lp.rows.max() >= self.rows or lp.cols.max() >= self.cols:
                raise ValueError(f"stored placement of layer {k} leaves the "
                                 f"{self.rows} x {self.cols} array")
            layers.append(lp)
        return self.with_layers(layers)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Logical layer sizes (inputs, hidden..., classes)."""
        s = [self.layers[0].n_in] + [lp.n_out for lp in self.layers]
        s[-1] //= self.output_copies
        return tuple(s)

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out // self.output_copies

    # ---- programming ----------------------------------------------------------------------
    def target_states(self, weights: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
        """Device states to program: uint8 (rows, cols), 0 = P, 1 = AP, 2 = leave untouched.

        weights[l] has shape (n_in, n_out) of layer l (physical outputs, copies included); its
        sign decides: w > 0 puts P on the plus device and AP on the minus device.
        """
        if len(weights) != len(self.layers):
            raise ValueError(f"{len(weights)} weight matrices for {len(self.layers)} layers")
        states = np.full((self.rows, self.cols), UNTOUCHED, dtype=np.uint8)
        for i, (w, lp) in enumerate(zip(weights, self.layers, strict=True)):
            w = np.asarray(w.detach().cpu() if isinstance(w, torch.Tensor) else w)
            if w.shape != (lp.n_in, lp.n_out):
                raise ValueError(f"layer {i} weights have shape {w.shape}, the layout expects "
                                 f"{(lp.n_in, lp.n_out)}")
            pos = w > 0
            for t in range(lp.replicas):
                states[np.ix_(lp.rows[:, t], lp.plus_cols)] = np.where(pos, P_STATE, AP_STATE)
                states[np.ix_(lp.rows[:, t], lp.minus_cols)] = np.where(pos, AP_STATE, P_STATE)
        return states

    # ---- running the chip -----------------------------------------------------------------
    def reads(self, layer: int) -> int:
        """Chip reads per input vector of `layer` (`output_reads` for the last, else 1)."""
        return self.output_reads if layer == len(self.layers) - 1 else 1

    def row_inputs(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Row patterns (n * reads, rows) uint8 that apply the layer's binary inputs x (n, n_in):
        one per chip read (`reads`; sample i's reads are rows i * reads ..)."""
        lp = self.layers[layer]
        x = np.atleast_2d(np.asarray(x))
        if x.shape[1] != lp.n_in:
            raise ValueError(f"layer {layer} takes {lp.n_in} inputs, got shape {x.shape}")
        x = self._read_inputs(layer, x)
        out = np.zeros((x.shape[0], self.rows), dtype=np.uint8)
        for t in range(lp.replicas):
            out[:, lp.rows[:, t]] = (x > 0).astype(np.uint8)
        return out

    def layer_outputs(self, layer: int, currents: np.ndarray,
                      x: np.ndarray | None = None) -> np.ndarray:
        """Outputs (n, n_out) in amperes from column currents (n * reads, cols), the chip's
        reply to `row_inputs(layer, x)`: I_plus - I_minus, or with the common-mode read-out
        (needs the layer's binary inputs x (n, n_in)) that difference checked and repaired by
        `common_mode_readout`, each read on its own."""
        return self.checked_outputs(layer, currents, x)[0]

    def _read_inputs(self, layer: int, x: np.ndarray) -> np.ndarray:
        """x (n, n_in) -> the inputs of each chip read (n * reads, n_in)."""
        reads = self.reads(layer)
        if reads == 1:
            return x
        return split_reads(torch.as_tensor(x), reads).flatten(0, 1).numpy()

    def checked_outputs(self, layer: int, currents: np.ndarray, x: np.ndarray | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
        """`layer_outputs` and which of them the read-out trusts (bool (n, n_out)).

        currents: (n * reads, cols), the chip's reply to `row_inputs(layer, x)`."""
        lp, reads = self.layers[layer], self.reads(layer)
        i = np.atleast_2d(np.asarray(currents, dtype=np.float64))
        if i.shape[1] != self.cols:
            raise ValueError(f"expected currents of all {self.cols} columns, got shape {i.shape}")
        diff = i[:, lp.plus_cols] - i[:, lp.minus_cols]
        if self.readout == "diff":
            return diff, np.ones(diff.shape, dtype=bool)
        if x is None:
            raise ValueError("the common-mode read-out needs the layer's inputs x")
        x = self._read_inputs(layer, np.atleast_2d(x))
        if x.shape[0] != i.shape[0]:
            raise ValueError(f"{i.shape[0]} current vectors for {x.shape[0]} reads of layer "
                             f"{layer} ({reads} per input)")
        dev = self.device
        unit = dev.v_read_v * dev.unit_s * lp.replicas  # amperes per weight unit
        active = torch.as_tensor((x > 0).sum(axis=1, keepdims=True), dtype=torch.float64)
        excess = (i[:, lp.plus_cols] + i[:, lp.minus_cols]) / unit - active.numpy() * (
            dev.g_p_s + dev.g_ap_s) / dev.unit_s
        out, ok = common_mode_readout(torch.as_tensor(diff / unit), torch.as_tensor(excess),
                                      active, self.readout_tol,
                                      output_layer=lp is self.layers[-1])
        out, ok = merge_reads(out.unflatten(0, (-1, reads)), ok.unflatten(0, (-1, reads)))
        return out.numpy() * unit, ok.numpy()

    def class_scores(self, outputs: np.ndarray, reliable: np.ndarray | None = None
                     ) -> np.ndarray:
        """Combine the copies of the last layer's outputs (n, n_out) into (n, n_classes),
        leaving out copies marked unreliable by the common-mode read-out (`reliable`)."""
        from .network import combine_copies

        rel = None if reliable is None else torch.as_tensor(np.asarray(reliable, dtype=bool))
        return combine_copies(torch.as_tensor(np.asarray(outputs, dtype=np.float64)),
                              self.output_copies, self.copy_combine, rel).numpy()

    def infer(self, x: np.ndarray, column_currents: Callable[[np.ndarray], np.ndarray]
              ) -> np.ndarray:
        """Predicted classes (n,) of binary inputs x (n, n_in) on a chip.

        column_currents(row_patterns (m, rows) uint8) -> currents (m, cols) runs the chip (m = n,
        or n * output_reads for the last layer); hidden activations are binarised (on iff
        I_plus > I_minus) between layers.
        """
        h = np.asarray(x)
        for layer in range(len(self.layers)):
            out, ok = self.checked_outputs(layer, column_currents(self.row_inputs(layer, h)), h)
            h = (out > 0).astype(np.uint8)
        return np.argmax(self.class_scores(out, ok), axis=1)

    # ---- what each layer sees ------------------------------------------------------------
    def cell_lookup(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per array cell (flat): layer index (-1 unused), position in the layer's
        (n_in, n_out) weights, side (+1 plus, -1 minus). Cached."""
        cache = self.__dict__.get("_lookup_cache")
        if cache is None:
            layer = torch.full((self.rows * self.cols,), -1, dtype=torch.long)
            pos = torch.zeros(self.rows * self.cols, dtype=torch.long)
            side = torch.zeros(self.rows * self.cols, dtype=torch.long)
            for i, lp in enumerate(self.layers):
                plus, minus = lp.flat_index(self.cols)
                where = (torch.arange(lp.n_in)[:, None, None] * lp.n_out
                         + torch.arange(lp.n_out)[None, None, :]).expand_as(plus)
                for flat, sgn in ((plus, 1), (minus, -1)):
                    layer[flat.reshape(-1)] = i
                    pos[flat.reshape(-1)] = where.reshape(-1)
                    side[flat.reshape(-1)] = sgn
            cache = (layer, pos, side)
            object.__setattr__(self, "_lookup_cache", cache)
        return cache

    def sparse_layer_cells(self, defects: SparseDefects) -> list[LayerCells]:
        """Dense per-layer conductances of sampled maps (nominal healthy cells); equals
        layer_cells(cells_from_sparse(defects, device))."""
        return [d.dense() for d in self.sampled_deviations(defects)]

    def sampled_deviations(self, defects: SparseDefects) -> list[SparseLayerDeviation]:
        """Per-layer deviations of sampled maps (nominal healthy cells) straight from the sparse
        defect list, one entry per defective cell a layer uses. Fast path of statistics-aware
        training and of the loss distribution."""
        if (defects.rows, defects.cols) != (self.rows, self.cols):
            raise ValueError(f"defects of a {defects.rows} x {defects.cols} array for a "
                             f"{self.rows} x {self.cols} layout")
        g = defect_conductance(defects.kind, defects.resistance_ohm, self.device)
        return self._deviations(defects.n, defects.die, defects.flat, g, g)

    def sparse_deviations(self, cells: ArrayCells, max_density: float = 0.05
                          ) -> list[SparseLayerDeviation] | None:
        """Per layer, the cells whose conductances differ from nominal, as additive
        corrections. None when more than `max_density` of the array's cells deviate (e.g.
        per-device variation): use `layer_cells` then. Cost grows with the number of defects,
        not of cells per die. None too when a deviation is so large (a measured resistance
        of a few ohms) that sums in float32 would no longer be exact (`exact_sums`)."""
        if cells.shape != (self.rows, self.cols):
            raise ValueError(f"conductances of shape {cells.shape} for a {self.rows} x "
                             f"{self.cols} layout")
        dev = self.device
        n = cells.n
        gp = cells.g_p.reshape(n, -1)
        gap = cells.g_ap.reshape(n, -1)
        off = (gp != dev.g_p_s) | (gap != dev.g_ap_s)
        if float(off.float().mean()) > max_density:
            return None
        die, flat = off.nonzero(as_tuple=True)
        devs = self._deviations(n, die, flat, gp[die, flat], gap[die, flat])
        return devs if all(d.exact_sums() for d in devs) else None

    def _deviations(self, n: int, die: torch.Tensor, flat: torch.Tensor, g_p: torch.Tensor,
                    g_ap: torch.Tensor) -> list[SparseLayerDeviation]:
        """Per layer, the (a, b, c, e) deviations of devices at (die, flat array index) that
        show g_p if programmed P and g_ap if AP; the same quantized terms as `extract_layer`,
        so dense and sparse paths agree exactly. Entries are grouped by layer (die order
        kept) and gathered once. The index bookkeeping runs in numpy (a fraction of torch's
        per-call overhead on arrays of this size), the conductance arithmetic in torch."""
        dev = self.device
        layer_of, pos_of, side_of = (t.numpy() for t in self.cell_lookup())
        flat_np = flat.numpy()
        layer = layer_of[flat_np]
        groups = [np.flatnonzero(layer == i) for i in range(len(self.layers))]
        counts = [int(gr.size) for gr in groups]
        order_np = np.concatenate(groups)  # unused cells dropped
        cell = flat_np[order_np]
        order = torch.from_numpy(order_np)
        scales = np.array([layer_scale(dev, lp.replicas) for lp in self.layers], np.float32)
        scale = torch.from_numpy(np.repeat(scales, counts))
        g_p_at = g_p.index_select(0, order)
        g_ap_at = g_p_at if g_ap is g_p else g_ap.index_select(0, order)  # sampled: g_p = g_ap
        dgp = device_deviation(g_p_at, dev.g_p_s, scale)
        dgap = device_deviation(g_ap_at, dev.g_ap_s, scale)
        terms = pair_terms(torch.from_numpy(side_of[cell].astype(np.float32)), dgp, dgap)
        parts = [t.split(counts) for t in (die.index_select(0, order), *terms)]
        pos = np.split(pos_of[cell], np.cumsum(counts)[:-1])
        out = []
        for i, lp in enumerate(self.layers):
            d, *layer_terms = (part[i] for part in parts)
            row, col = np.divmod(pos[i], lp.n_out)
            out.append(SparseLayerDeviation(n, lp.n_in, lp.n_out, d, torch.from_numpy(row),
                                            torch.from_numpy(col), *layer_terms))
        return out

    def layer_cells(self, cells: ArrayCells) -> list[LayerCells]:
        """Per-layer conductances (weight units) of D arrays with this layout."""
        if cells.shape != (self.rows, self.cols):
            raise ValueError(f"conductances of shape {cells.shape} for a {self.rows} x "
                             f"{self.cols} layout")
        return [extract_layer(cells, lp, self.device) for lp in self.layers]


@dataclass(frozen=True)
class LayerCells:
    """What one layer sees, in weight units: output = x @ (a + s * b), s = 1 where w > 0.

    a: (D, n_in, n_out) differential conductance if the weight is -1; b: the change when the
    weight is +1 (2 for a healthy pair, 1 if one device is broken, 0 if both are).
    c, e: the pair's common mode I_plus + I_minus minus its nominal value, x @ (c + s * e)
    (zero for healthy cells, ~ +9 for a short, -1..-2 for an open; None: all zero).
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor | None = None
    e: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.a.shape[0])

    def slice(self, start: int, stop: int) -> LayerCells:
        """Cell sets start..stop-1 (the leading dimension)."""
        return LayerCells(*(None if t is None else t[start:stop]
                            for t in (self.a, self.b, self.c, self.e)))

    def differential(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """I_plus - I_minus (weight units) of inputs h for weight bits s: h @ (a + s b)."""
        return torch.matmul(h, torch.addcmul(self.a, s, self.b))

    def excess(self, h: torch.Tensor, s: torch.Tensor) -> torch.Tensor | None:
        """Common-mode excess (weight units) of inputs h for weight bits s (None: c, e unset).

        h: (B, n_in) shared or (n, b, n_in) one group per cell set; s: (n_in, n_out), (1, ..)
        or (n, ..). c and e vanish except at defective cells, so this is a sparse product
        (cost grows with the number of defects, not of cells); returns (n, b, n_out).
        """
        if self.c is None or self.e is None:
            return None
        out = self._sparse_excess(h, s, 1)
        if out is None:  # small, or deviations everywhere (device variation): dense
            return torch.matmul(h, torch.addcmul(self.c, s, self.e))
        # contiguous: the read-out's element-wise work costs ~2x on the transposed view
        return out.transpose(1, 2).contiguous()

    def output_columns(self, h: torch.Tensor, s: torch.Tensor, reads: int
                       ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Each read's part of the differential output and of the excess, output-major:
        (k, reads * n_out, b) each, k the broadcast of cell sets, weight replicas and input
        groups (read r's output j at r * n_out + j), so that single outputs are rows to
        gather (`network.BinaryNetwork` reads out only the outputs that can be flagged).
        None if c, e are unset."""
        if self.c is None or self.e is None:
            return None
        ht = h.transpose(-1, -2)
        diff = torch.matmul(per_read(torch.addcmul(self.a, s, self.b), reads).transpose(-1, -2),
                            ht)
        excess = self._sparse_excess(h, s, reads)
        if excess is None:
            excess = torch.matmul(
                per_read(torch.addcmul(self.c, s, self.e), reads).transpose(-1, -2), ht)
        return diff, excess

    def flaggable(self, reads: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(cell set, column r * n_out + j) of every output part whose common-mode excess can
        exceed tol for some weights and inputs (the sum of |c| + |e| over the read's inputs
        does): the read-out changes no other. Cached."""
        key = f"_flaggable_{reads}_{tol}"
        if key not in self.__dict__:
            assert self.c is not None and self.e is not None
            mag = (self.c.abs() + self.e.abs()).expand_as(self.a)  # (n, n_in, n_out)
            bound = torch.matmul(read_masks(self.a.shape[1], reads).T, mag)  # (n, reads, n_out)
            die, col = (bound.flatten(1) > tol).nonzero(as_tuple=True)
            object.__setattr__(self, key, (die, col))
        return self.__dict__[key]  # type: ignore[no-any-return]

    def _sparse_excess(self, h: torch.Tensor, s: torch.Tensor, reads: int
                       ) -> torch.Tensor | None:
        """The excess as a sparse product, (n, reads * n_out, b), or None where a dense one is
        cheaper (small) or the deviations are everywhere (device variation)."""
        assert self.c is not None and self.e is not None
        n, n_in, n_out = self.a.shape
        if (h.ndim == 3 and h.shape[0] not in (1, n)) or (s.ndim == 3 and s.shape[0] not in
                                                          (1, n)):
            return None  # inputs or weights per replica on shared cells: dense broadcast
        dense_macs = h.numel() * n_out * (n if h.ndim == 2 else 1)
        support = self._excess_support() if dense_macs > SPARSE_MIN_MACS else None
        if support is None:
            return None
        die, row, col, cv, ev = support
        s_at = s[die, row, col] if s.ndim == 3 and s.shape[0] > 1 else s.reshape(
            n_in, n_out)[row, col]
        out_col, width = read_of(row, reads) * n_out + col, n_out * reads
        if h.ndim == 2:
            idx, dense = torch.stack([die * width + out_col, row]), h.T
        else:
            if h.shape[0] != n:
                h = h.expand(n, *h.shape[1:])
            idx = torch.stack([die * width + out_col, die * n_in + row])
            dense = h.transpose(1, 2).reshape(n * n_in, -1)
        mat = torch.sparse_coo_tensor(idx, cv + s_at * ev, (n * width, dense.shape[0]),
                                      check_invariants=False)
        return torch.sparse.mm(mat, dense.to(cv.dtype)).view(n, width, -1)

    def _excess_support(self, max_density: float = 0.05) -> tuple[torch.Tensor, ...] | None:
        """(die, row, col, c, e) where c or e is non-zero (quantized: exactly), None if that
        is more than max_density of the cells. Cached."""
        if "_support" not in self.__dict__:
            assert self.c is not None and self.e is not None
            c, e = self.c.expand_as(self.a), self.e.expand_as(self.a)
            nz = (c != 0) | (e != 0)
            cache = None
            if float(nz.float().mean()) <= max_density:
                die, row, col = nz.nonzero(as_tuple=True)
                cache = (die, row, col, c[die, row, col], e[die, row, col])
            object.__setattr__(self, "_support", cache)
        return self.__dict__["_support"]  # type: ignore[no-any-return]


READOUTS = ("diff", "common_mode")
#: below this many multiply-adds a dense common-mode product beats the sparse one's overhead
SPARSE_MIN_MACS = 4_000_000


def readout_correction(diff: torch.Tensor, excess: torch.Tensor, tol: float) -> torch.Tensor:
    """What the common-mode read-out subtracts from diff: its output is diff - correction.

    A flagged pair (|excess| > tol) takes, of d_plus = diff + excess and d_minus = diff -
    excess, the estimate smaller in magnitude (d_minus on a tie): whenever exactly one
    estimate is possible it is also the smaller one, so the choice needs no threshold on the
    active inputs. |d_plus| < |d_minus| iff diff * excess < 0 (exact on quantized
    conductances). Float arithmetic throughout: on CPU, comparisons and selections with bool
    tensors cost several times more, and each op costs microseconds on small tensors.
    """
    flagged = torch.nn.functional.hardshrink(excess, tol)  # excess where |excess| > tol, else 0
    side = (diff * flagged).sign_().add_(0.5).sign_()  # +1: d_minus (also on a tie), -1: d_plus
    return flagged * side  # not in place: excess may broadcast against diff


def positive(z: torch.Tensor) -> torch.Tensor:
    """1.0 where z > 0, else 0.0 (float arithmetic: on CPU, bool tensors cost several times
    more to make and to convert than sign and clamp)."""
    return z.sign().clamp_(min=0)


def _choice(diff: torch.Tensor, excess: torch.Tensor, active: torch.Tensor,
            tol: float) -> torch.Tensor:
    """+1 where only d_minus = diff - excess is possible (|d| <= n + tol / 2, n = active
    inputs), -1 where only d_plus = diff + excess is, 0 where both or neither are (float).
    |a| - lim > 0 iff |a| > lim, exactly, in IEEE arithmetic."""
    lim = active + 0.5 * tol  # may broadcast to more than diff and excess do
    plus_out = positive((diff + excess).abs_() - lim)
    return plus_out.sub_(positive((diff - excess).abs_() - lim))


def output_readout(diff: torch.Tensor, excess: torch.Tensor, active: torch.Tensor,
                   tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(correction, ok) of the output layer's read-out; ok is 1.0 where it is reliable, 0.0
    where it is ambiguous (flagged, and both estimates or neither are possible).

    A flagged pair with exactly one possible estimate takes that one, which is also the one
    `readout_correction` takes (the smaller in magnitude). An ambiguous pair keeps its plain
    difference (correction 0) besides being marked unreliable: it often has a defect in both
    columns (a short in each: each estimate is off by the sum, the plain difference by their
    difference), and when every copy of a class is ambiguous the class score is then the mean
    of plain differences rather than of guessed repairs: 0.00-0.34 pp better, never worse, on
    every wafer measured (the same weights). Hidden layers keep the smaller estimate (only
    its sign matters). Float arithmetic throughout (see `positive`).
    """
    flagged = torch.nn.functional.hardshrink(excess, tol)  # excess where |excess| > tol, else 0
    choice = _choice(diff, excess, active, tol)
    ambiguous = choice.abs().neg_().add_(1)
    ok = ambiguous.mul_(flagged.abs().sign_()).neg_().add_(1)
    return choice.mul_(flagged), ok


def common_mode_readout(diff: torch.Tensor, excess: torch.Tensor, active: torch.Tensor,
                        tol: float, output_layer: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """A differential pair's output (weight units) checked against its common mode.

    A healthy pair shows I_plus + I_minus = n (G_P + G_AP) whatever its weights, so each
    column alone estimates the output: d_plus = diff + excess, d_minus = diff - excess (excess
    = common mode minus its nominal value, n = active inputs). Where |excess| > tol one column
    carries a defect (a short adds ~9 units, a dead line removes ~1.5 n): the output is the
    estimate that is possible (|d| <= n + tol / 2). If both or neither are possible the pair
    is ambiguous: `reliable` is False there, so the class scores can leave that copy out
    (`combine_copies`), and the output is the estimate smaller in magnitude (the likelier one
    for a hidden neuron, whose sign is all that matters) or, in the output layer, the plain
    difference (`output_readout`). All tensors broadcast; active has a trailing dimension of
    1. Returns (output, reliable); see `readout_correction`.
    """
    correction, ok = output_readout(diff, excess, active, tol)
    if not output_layer:
        correction = readout_correction(diff, excess, tol)
    return diff - correction, ok > 0


def check_output_reads(reads: int, readout: str, n_in: int) -> None:
    """Raise unless the output layer can be read in `reads` chip reads of `n_in` inputs."""
    if reads < 1 or reads > n_in:
        raise ValueError(f"output_reads must be 1..{n_in} (the output layer's inputs), got "
                         f"{reads}")
    if reads > 1 and readout != "common_mode":
        raise ValueError(f"output_reads {reads} only helps the common-mode read-out (plain "
                         f"differences add up to the same outputs); use output_reads 1 with "
                         f"readout {readout!r}")


def read_of(inputs: torch.Tensor, reads: int) -> torch.Tensor:
    """The chip read that drives each input index: i % reads (hidden neurons are
    interchangeable, so which ones share a read is free). The one rule for chip, training
    and evaluation."""
    return inputs % reads


@functools.lru_cache(maxsize=16)
def read_masks(n_in: int, reads: int) -> torch.Tensor:
    """(n_in, reads) 0/1 float: 1 where read r drives input i (`read_of`). Cached: do not
    modify."""
    return (read_of(torch.arange(n_in), reads)[:, None] == torch.arange(reads)).float()


@functools.lru_cache(maxsize=16)
def _read_rows(n_in: int, reads: int) -> torch.Tensor:
    """`read_masks` transposed, contiguous (a strided mask makes the broadcast 4-7x slower)."""
    return read_masks(n_in, reads).T.contiguous()


def split_reads(x: torch.Tensor, reads: int) -> torch.Tensor:
    """(..., n_in) inputs -> (..., reads, n_in): what each chip read drives."""
    return x.unsqueeze(-2) * _read_rows(x.shape[-1], reads).to(x.dtype)


def per_read(w: torch.Tensor, reads: int) -> torch.Tensor:
    """Weights (..., n_in, n_out) -> (..., n_in, reads * n_out), column (r, j) at r * n_out + j
    holding input i's weight only if read r drives i: x @ per_read(w) is every read's part of
    x @ w in one product."""
    if reads == 1:
        return w
    # a contiguous (n_in, reads, 1) mask keeps the product contiguous (no copy to flatten)
    mask = read_masks(w.shape[-2], reads).to(w.dtype).unsqueeze(-1)
    return (w.unsqueeze(-2) * mask).flatten(-2)


def reliable_outputs(at: torch.Tensor, ok: torch.Tensor, n_sets: int, n_out: int
                     ) -> torch.Tensor:
    """(n_sets, samples, n_out) bool from read-outs checked at chosen outputs: False where
    any read-out `ok` (parts, samples; bool or 0/1 float) at flat output index at = set *
    n_out + j was unreliable, True everywhere else (outputs never flagged are reliable)."""
    bad = torch.zeros(n_sets * n_out, ok.shape[-1]).index_add_(0, at, 1 - ok.float())
    return (bad == 0).view(n_sets, n_out, -1).transpose(1, 2)


def merge_reads(outputs: torch.Tensor, reliable: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Outputs (..., reads, n_out) of a layer read in parts -> their sum, and reliable (bool,
    or 0/1 float) where every read was."""
    if outputs.shape[-2] == 1:
        return outputs.squeeze(-2), None if reliable is None else reliable.squeeze(-2)
    if reliable is not None and reliable.dtype == torch.bool:
        # all() over a middle dim costs ~1.5x the min of its bytes
        reliable = reliable.view(torch.uint8).amin(dim=-2).view(torch.bool)
    elif reliable is not None:
        reliable = reliable.amin(dim=-2)
    return outputs.sum(dim=-2), reliable


@dataclass(frozen=True)
class SparseLayerDeviation:
    """A layer's deviations from the ideal array on D dies (or sampled maps): at (die, input,
    output), the layer sees a = -1 + da, b = 2 + db and a common-mode excess dc + s de (weight
    units); everywhere else the ideal a = -1, b = 2 and no excess. Entries are sorted by die
    and add up where they repeat (both devices of a pair, row replicas)."""

    n: int
    n_in: int
    n_out: int
    die: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    da: torch.Tensor
    db: torch.Tensor
    dc: torch.Tensor
    de: torch.Tensor

    def exact_sums(self) -> bool:
        """Whether every column's partial sums stay within `EXACT_UNITS`, so that the sparse
        and dense paths add the same quantized terms to the same float32 results."""
        key = self.die * self.n_out + self.col
        size = self.da.abs() + self.db.abs() + self.dc.abs() + self.de.abs()
        worst = torch.zeros(self.n * self.n_out).index_add_(0, key, size).max() \
            if key.numel() else torch.zeros(())
        return float(worst) + 3 * self.n_in <= EXACT_UNITS  # nominal |a| + |b| = 3 per row

    def dense(self) -> LayerCells:
        """The same deviations as dense `LayerCells`. (On 1-D CPU tensors scatter_add_ adds
        in index order, as index_add_ does, but costs less per entry.)"""
        shape = (self.n, self.n_in, self.n_out)
        idx = (self.die * self.n_in + self.row) * self.n_out + self.col
        parts = [torch.full((math.prod(shape),), v).scatter_add_(0, idx, d).view(shape)
                 for v, d in ((-1.0, self.da), (2.0, self.db), (0.0, self.dc), (0.0, self.de))]
        return LayerCells(*parts)


#: resolution of conductances in weight units (2^-10, about 0.1 % of a weight's swing). Every
#: device's deviation from nominal is rounded to it, so the products of binary inputs with the
#: conductances are exact in float32 whatever the summation order: the dense forward pass and the
#: sparse evaluation paths agree bit for bit, and an output that is exactly zero reads as off.
QUANTUM_UNITS = 2.0 ** -10
#: a bound on any column's partial sums (weight units) for that exactness: float32 holds
#: 2^24 quanta exactly, half of which is kept in reserve. Measured resistances of kilo-ohms
#: stay far below it (a short is ~9 units); one of a few ohms does not.
EXACT_UNITS = 2.0 ** 13


def layer_scale(device: DeviceModel, replicas: int) -> float:
    """Weight units per siemens of one device in a layer with `replicas` row replicas. One
    function for the dense and sparse paths: computed in float32 from a float32 `unit_s`
    instead (as the sparse path once did), it rounded 0.07 % of measured devices to
    another quantum, and the two paths disagreed."""
    return 1.0 / (device.unit_s * replicas)


def device_deviation(g_s: torch.Tensor, nominal_s: float, scale: float | torch.Tensor
                     ) -> torch.Tensor:
    """(g - nominal) * scale rounded to `QUANTUM_UNITS`: one device's share of a layer's
    conductance in weight units (scale = 1 / (unit * row replicas))."""
    return torch.round((g_s - nominal_s) * (scale / QUANTUM_UNITS)) * QUANTUM_UNITS


def pair_terms(side: torch.Tensor, dgp: torch.Tensor, dgap: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What one device adds to its pair's (a, b, c, e), from its deviations if programmed P
    (dgp) and AP (dgap). side: +1 plus device, -1 minus device (nothing else).

    a = g_AP(plus) - g_P(minus), b = (g_P - g_AP)(plus) + (g_P - g_AP)(minus),
    c = g_AP(plus) + g_P(minus) (the common mode at w = -1), e = (g_P - g_AP)(plus) - (minus).
    So a = side * c and e = side * b, exact products (one selection instead of two).
    """
    sign = side.to(dgp.dtype)
    db = dgp - dgap
    c = torch.where(side > 0, dgap, dgp)
    return sign * c, db, c, sign * db


def extract_layer(cells: ArrayCells, lp: LayerPlacement, device: DeviceModel) -> LayerCells:
    """Gather one layer's (a, b, c, e) in weight units from array conductances: nominal values
    (a = -1, b = 2, c = e = 0) plus every device's quantized deviation (`device_deviation`)."""
    n, rows, cols = cells.g_p.shape
    plus, minus = lp.flat_index(cols)
    gp, gap = cells.g_p.reshape(n, rows * cols), cells.g_ap.reshape(n, rows * cols)
    shape = (n, *plus.shape)
    scale = layer_scale(device, lp.replicas)
    terms = [torch.zeros(()) for _ in range(4)]
    for flat, side in ((plus, 1), (minus, -1)):
        f = flat.reshape(-1)
        dgp = device_deviation(gp[:, f].view(shape), device.g_p_s, scale)
        dgap = device_deviation(gap[:, f].view(shape), device.g_ap_s, scale)
        terms = [t + u for t, u in zip(terms, pair_terms(torch.tensor(side), dgp, dgap),
                                       strict=True)]
    a, b, c, e = (t.sum(dim=2) for t in terms)
    return LayerCells((a - 1.0).contiguous(), (b + 2.0).contiguous(), c.contiguous(),
                      e.contiguous())


#: 1.0 for the `CellDefect` codes whose measured resistance sets their conductance.
_MEASURED_KINDS = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0])


def defect_conductance(kind: torch.Tensor, resistance_ohm: torch.Tensor, device: DeviceModel,
                       stuck_p_s: float | torch.Tensor | None = None,
                       stuck_ap_s: float | torch.Tensor | None = None) -> torch.Tensor:
    """Conductance (siemens) of defective cells: 1/resistance where one > 0 was measured, else
    the nominal short conductance or 0 (open); stuck cells that of their stuck state (nominal,
    or the per-device `stuck_p_s` / `stuck_ap_s`). OK cells get 0 (callers keep their own);
    codes outside 0-4 count as the nearest."""
    r = resistance_ohm
    stuck_p = device.g_p_s if stuck_p_s is None else stuck_p_s
    stuck_ap = device.g_ap_s if stuck_ap_s is None else stuck_ap_s
    code = kind.long().clamp(0, len(CellDefect) - 1).reshape(-1)  # index_select: 1-D only
    # r > 0 only counts for shorts and opens: r * 0 is never > 0 (nor is a NaN)
    measured = (r * _MEASURED_KINDS.index_select(0, code).view(kind.shape)) > 0
    # one lookup per code (cheaper than nested selections); per-device stuck values override
    scalar = [0.0 if isinstance(v, torch.Tensor) else float(v) for v in (stuck_p, stuck_ap)]
    g = torch.tensor([0.0, device.g_short_s, 0.0, *scalar]).index_select(0, code).view(kind.shape)
    for stuck_code, value in ((CellDefect.STUCK_P, stuck_p), (CellDefect.STUCK_AP, stuck_ap)):
        if isinstance(value, torch.Tensor):
            g = torch.where((code == stuck_code).view(kind.shape), value, g)
    return torch.where(measured, 1.0 / r.clamp_min(1e-3), g)


def cells_from_sparse(defects: SparseDefects, device: DeviceModel) -> ArrayCells:
    """Conductances of sampled maps (nominal healthy cells, defect overrides), fast path."""
    n, size = defects.n, defects.rows * defects.cols
    g_p = torch.full((n, size), device.g_p_s)
    g_ap = torch.full((n, size), device.g_ap_s)
    fixed = defect_conductance(defects.kind, defects.resistance_ohm, device)
    g_p[defects.die, defects.flat] = fixed
    g_ap[defects.die, defects.flat] = fixed
    shape = (n, defects.rows, defects.cols)
    return ArrayCells(g_p.view(shape), g_ap.view(shape))


def check_readout(layout: ArrayLayout | Sequence[ArrayLayout], net: NetworkConfig) -> None:
    """Raise unless every layout holds the network's layers and output copies and reads its
    pairs as the network does (one code path)."""
    want = (net.readout, net.readout_tol, net.output_reads)
    for lo in [layout] if isinstance(layout, ArrayLayout) else layout:
        if (lo.sizes, lo.output_copies) != (tuple(net.sizes), net.output_copies):
            raise ValueError(f"the layout holds a network of sizes {lo.sizes} with "
                             f"{lo.output_copies} output copies, the weights' network has "
                             f"sizes {tuple(net.sizes)} with {net.output_copies}")
        if (lo.readout, lo.readout_tol, lo.output_reads) != want:
            raise ValueError(f"layout read-out {lo.readout!r} (tol {lo.readout_tol}, "
                             f"{lo.output_reads} output reads) differs from the network's "
                             f"{want[0]!r} (tol {want[1]}, {want[2]} output reads)")


def dies_layers(layout: ArrayLayout | Sequence[ArrayLayout], cells: ArrayCells
                ) -> list[LayerCells]:
    """What each layer sees on D dies, with one layout for all or one per die."""
    if isinstance(layout, ArrayLayout):
        return layout.layer_cells(cells)
    return stack_layer_cells([lo.layer_cells(cells[i]) for i, lo in _per_die(layout, cells)])


def _per_die(layouts: Sequence[ArrayLayout], cells: ArrayCells
             ) -> list[tuple[int, ArrayLayout]]:
    """(die index, layout) pairs of one layout per die; raises if the counts differ."""
    if len(layouts) != cells.n:
        raise ValueError(f"{len(layouts)} layouts for {cells.n} dies")
    return list(enumerate(layouts))


def dies_deviations(layout: ArrayLayout | Sequence[ArrayLayout], cells: ArrayCells
                    ) -> list[SparseLayerDeviation] | None:
    """`ArrayLayout.sparse_deviations` of D dies, with one layout for all or one per die
    (None when the deviations are too dense for the sparse path)."""
    if isinstance(layout, ArrayLayout):
        return layout.sparse_deviations(cells)
    per_die = [lo.sparse_deviations(cells[i]) for i, lo in _per_die(layout, cells)]
    if any(d is None for d in per_die):
        return None
    out = []
    for k, first in enumerate(per_die[0]):  # type: ignore[index]
        parts = [d[k] for d in per_die]  # type: ignore[index]
        out.append(replace(first, n=cells.n, **{
            name: torch.cat([getattr(p, name) + (i if name == "die" else 0)
                             for i, p in enumerate(parts)])
            for name in ("die", "row", "col", "da", "db", "dc", "de")}))
    return out


def stack_layer_cells(per_die: Sequence[Sequence[LayerCells]]) -> list[LayerCells]:
    """Concatenate per-die layer cells (each with D=1 or more) along the die dimension."""
    n_layers = len(per_die[0])
    def cat(name: str, i: int) -> torch.Tensor | None:
        parts = [getattr(d[i], name) for d in per_die]
        return None if any(p is None for p in parts) else torch.cat(parts)

    return [LayerCells(*(cat(name, i) for name in ("a", "b", "c", "e")))  # type: ignore[arg-type]
            for i in range(n_layers)]
