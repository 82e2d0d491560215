"""A binary network whose forward pass is the crossbar's physics.

Latent real weights in [-1, 1]; the forward pass uses their sign (straight-through estimator
with clipping). Each layer computes differential column currents x @ (a + s * b) from the
conductances the layer sees (`LayerCells`, in weight units, s = 1 where the weight is +1), so
the same code evaluates an ideal array (a = -1, b = 2, i.e. x @ sign(W)), a defective one (a
short is a large fixed conductance, whatever the weight) and a measured one (b = 0). Hidden
activations are binary on/off (neuron on iff I_plus > I_minus), as the station applies them to
the next layer's rows. Weights can carry a leading replica dimension (one set per die for
batched hardware-aware training).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .mapping import (
    LayerCells,
    check_output_reads,
    merge_reads,
    output_readout,
    positive,
    read_masks,
    readout_correction,
    reliable_outputs,
    split_reads,
)


class NetworkConfig(BaseModel):
    """Architecture and surrogate-gradient settings of the binary network."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (100, 90, 10), min_length=2, description="inputs, hidden..., classes")
    output_copies: int = Field(1, ge=1, description="redundant copies of each output neuron")
    copy_combine: str = Field("mean", pattern="^(mean|median)$")
    ste_window: float = Field(0.5, gt=0, description="hidden STE window, units of sqrt(n_in)")
    readout: str = Field("diff", pattern="^(diff|common_mode)$",
                         description="pair read-out (mapping.common_mode_readout)")
    readout_tol: float = Field(4.0, gt=0, description="common-mode threshold, weight units")
    output_reads: int = Field(1, ge=1, description="chip reads of the output layer per input "
                              "(common-mode read-out: each checked alone, outputs added)")
    logit_scale: float = Field(0.25, gt=0, description="softmax logits per weight unit")

    @model_validator(mode="after")
    def _reads_fit(self) -> NetworkConfig:
        check_output_reads(self.output_reads, self.readout, self.physical_sizes[-2])
        return self

    @property
    def physical_sizes(self) -> tuple[int, ...]:
        """Layer widths on the chip (output copies included)."""
        return (*self.sizes[:-1], self.sizes[-1] * self.output_copies)


def check_samples(x: torch.Tensor, y: torch.Tensor, config: NetworkConfig,
                  what: str = "data") -> None:
    """Raise ValueError, naming the shapes, unless x is (n >= 1, inputs) and y holds n labels
    of the network's classes: caught here, not as a shape error deep inside torch (or, for
    labels out of range, not at all: they counted as errors)."""
    n_in, classes = config.sizes[0], config.sizes[-1]
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != n_in:
        raise ValueError(f"{what}: inputs must have shape (n >= 1, {n_in}) for the network, "
                         f"got {tuple(x.shape)}")
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"{what}: {x.shape[0]} inputs need {x.shape[0]} labels, got labels "
                         f"of shape {tuple(y.shape)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise ValueError(f"{what}: labels span {low}..{high}, the network has {classes} classes "
                         f"(labels 0..{classes - 1})")


def within(z: torch.Tensor, width: float) -> torch.Tensor:
    """1.0 where |z| <= width, else 0.0 (float arithmetic, as `positive`)."""
    return z.abs().neg_().add_(width).sign_().add_(1).clamp_(max=1)


#: output-layer values (samples x outputs x reads x cell sets) from which only the outputs
#: that can be flagged are read out (`BinaryNetwork._correction_rows`)
ROW_READOUT_MIN = 100_000


class _SignSTE(torch.autograd.Function):
    """s = 1[w > 0] forward; ds/dw = 1/2 on |w| <= 1 backward (clipped straight-through)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w)
        return positive(w)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * within(w, 1.0).mul_(0.5)


class _StepSTE(torch.autograd.Function):
    """h = 1[z > 0] forward; dh/dz = 1/(2 width) on |z| <= width backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: torch.Tensor,
                width: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.width = width  # type: ignore[attr-defined]
        return positive(z)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors  # type: ignore[attr-defined]
        width = ctx.width  # type: ignore[attr-defined]
        return (grad * within(z, width)).div_(2 * width), None


def binarize(w: torch.Tensor) -> torch.Tensor:
    """Weight bits s in {0, 1} (1 = +1 weight) with a clipped straight-through gradient."""
    return _SignSTE.apply(w)  # type: ignore[no-any-return]


def step(z: torch.Tensor, width: float) -> torch.Tensor:
    """Binary neuron (on iff z > 0) with a box straight-through gradient of half-width width."""
    return _StepSTE.apply(z, width)  # type: ignore[no-any-return]


def combine_copies(scores: torch.Tensor, copies: int, how: str,
                   reliable: torch.Tensor | None = None) -> torch.Tensor:
    """(..., copies * n_classes) physical outputs -> (..., n_classes) class scores.

    reliable (bool or 0/1 float, like scores): copies to use; a class whose copies are all
    unreliable combines all of them.
    """
    if copies == 1:
        return scores
    s = scores.unflatten(-1, (copies, scores.shape[-1] // copies))
    if reliable is not None:  # 0/1 weights in float (faster than bool arithmetic on CPU)
        ok = reliable.unflatten(-1, s.shape[-2:]).to(s.dtype)
        ok = ok + (1 - ok.amax(dim=-2, keepdim=True))  # none reliable: all count
        if how == "mean":
            return (s * ok).sum(dim=-2) / ok.sum(dim=-2)
        return torch.where(ok > 0, s, torch.nan).nanmedian(dim=-2).values
    return s.mean(dim=-2) if how == "mean" else s.median(dim=-2).values


def shared_weights(weights: Sequence[torch.Tensor], config: NetworkConfig
                   ) -> list[torch.Tensor]:
    """One weight set for every die, as float (n_in, n_out) per layer; accepts (1, n_in,
    n_out) too. ValueError naming the shapes for anything else (transposed, per-die sets,
    the wrong number of layers): a silent reshape would evaluate other weights."""
    want = list(itertools.pairwise(config.physical_sizes))
    got = [tuple(torch.as_tensor(w).shape) for w in weights]
    if len(got) != len(want) or any(g not in (s, (1, *s))
                                    for g, s in zip(got, want, strict=True)):
        raise ValueError(f"weights of shapes {got} for a network of layers {want} (one shared "
                         "set: (n_in, n_out) or (1, n_in, n_out) per layer)")
    return [torch.as_tensor(w, dtype=torch.float32).reshape(s)
            for w, s in zip(weights, want, strict=True)]


class BinaryNetwork(nn.Module):
    """Binary MLP on crossbar physics; `replicas` independent weight sets (dies) share a forward.

    Weights are nn.Parameters of shape (replicas, n_in, n_out) per layer.
    """

    def __init__(self, config: NetworkConfig | None = None, replicas: int = 1,
                 seed: int = 0) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        g = torch.Generator().manual_seed(seed)
        sizes = self.config.physical_sizes
        self.weights = nn.ParameterList(
            nn.Parameter(0.1 * (2 * torch.rand(replicas, n_in, n_out, generator=g) - 1))
            for n_in, n_out in itertools.pairwise(sizes)
        )

    @property
    def replicas(self) -> int:
        return int(self.weights[0].shape[0])

    def clip_(self) -> None:
        """Keep latent weights in [-1, 1] (after each optimiser step)."""
        with torch.no_grad():
            for w in self.weights:
                w.clamp_(-1.0, 1.0)

    def binary_weights(self) -> list[torch.Tensor]:
        """Weights in {-1, +1} as float tensors (replicas, n_in, n_out), no gradient."""
        return [torch.where(w > 0, 1.0, -1.0).detach() for w in self.weights]

    def load_binary(self, weights: Sequence[torch.Tensor]) -> None:
        """Set latent weights from {-1, +1} (or real) weights, broadcasting over replicas."""
        with torch.no_grad():
            for w, new in zip(self.weights, weights, strict=True):
                w.copy_(torch.as_tensor(new, dtype=w.dtype).expand_as(w) * 0.5)

    def forward(self, x: torch.Tensor, cells: Sequence[LayerCells] | None = None,
                noise_std: float = 0.0, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Class scores in weight units.

        x: (B, n_in) or (G, b, n_in) in {0, 1}; cells: per layer (a, b) with a leading dim of 1,
        G (one conductance set per group of x) or replicas, or None for an ideal array.
        noise_std: Gaussian noise per weight unit and sqrt(active input), mimicking device
        variation during training; drawn per data sample and neuron (and output read, each
        scaled by that read's active inputs) and shared by the replicas (dies), which all see
        the same samples (each replica trains its own weights, so it still sees independent
        noise at every step). Returns (K, B, n_classes) with K the
        broadcast of replicas and cell sets (or (G, b, n_classes)).
        """
        h = x
        n_layers = len(self.weights)
        common = self.config.readout == "common_mode" and cells is not None
        reliable = None
        for i, w in enumerate(self.weights):
            s = binarize(w)
            last = i == n_layers - 1
            reads = self.config.output_reads if last and common else 1
            z = torch.matmul(h, 2.0 * s - 1.0) if cells is None else cells[i].differential(h, s)
            # active inputs of each chip read, (..., b, reads, 1): no gradient (the noise's
            # scale and the read-out's limit are not functions to train through)
            hd = h.detach()
            active = (hd.sum(dim=-1, keepdim=True) if reads == 1
                      else hd @ read_masks(h.shape[-1], reads)).unsqueeze(-1)
            noise = None
            if noise_std > 0:  # one draw per data sample (and read), shared by the replicas
                noise = noise_std * active.clamp_min(1.0).sqrt() * torch.randn(
                    (*x.shape[:-1], reads, z.shape[-1]), generator=generator)
                z = z + (noise.squeeze(-2) if reads == 1 else noise.sum(dim=-2))
            if common:
                z, reliable = self._read_out(z, hd, s, cells[i], active, noise, last, reads)
            if not last:
                h = step(z, self.config.ste_window * math.sqrt(w.shape[1]))
        return combine_copies(z, self.config.output_copies, self.config.copy_combine,
                              reliable)

    def _read_out(self, diff: torch.Tensor, h: torch.Tensor, s: torch.Tensor,
                  cells: LayerCells, active: torch.Tensor, noise: torch.Tensor | None,
                  last: bool, reads: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The common-mode read-out of one layer (and, for the last, which outputs it trusts).

        With reads > 1 (the output layer driven in parts, `split_reads`) each read is checked
        on its own (its part of diff, with its share of the training noise) and the
        corrections add up. The repair is a constant offset for the gradient (straight
        through): the excess carries no gradient (and no training noise: the threshold
        absorbs read noise), only diff does."""
        with torch.no_grad():
            s = s.detach()
            out: tuple[torch.Tensor, torch.Tensor | None] | None = None
            if last and reads * diff.numel() >= ROW_READOUT_MIN:
                out = self._correction_rows(diff, h, s, cells, active, noise, reads)
            if out is None:
                out = self._correction(diff.detach(), h, s, cells, active, noise, last, reads)
        if out is None:
            return diff, None
        return diff - out[0], out[1]

    def _correction(self, diff: torch.Tensor, h: torch.Tensor, s: torch.Tensor,
                    cells: LayerCells, active: torch.Tensor, noise: torch.Tensor | None,
                    last: bool, reads: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """What the read-out subtracts from diff, and (last layer) which outputs it trusts;
        None if the cells carry no common mode. With reads > 1 the parts' differences are
        products of the split inputs (diff is their sum plus noise, and is not used)."""
        flat = h if reads == 1 else split_reads(h, reads).flatten(-3, -2)  # a row per read
        excess = cells.excess(flat, s)
        if excess is None:
            return None
        excess = excess.unflatten(-2, (-1, reads))
        if reads == 1:
            d = diff.unsqueeze(-2)
        else:
            d = cells.differential(flat, s).unflatten(-2, (-1, reads))
            if noise is not None:
                d = d + noise
        tol = self.config.readout_tol
        reliable = None
        if last:
            correction, reliable = output_readout(d, excess, active, tol)
        else:
            correction = readout_correction(d, excess, tol)
        return merge_reads(correction, reliable)

    def _correction_rows(self, diff: torch.Tensor, h: torch.Tensor, s: torch.Tensor,
                         cells: LayerCells, active: torch.Tensor, noise: torch.Tensor | None,
                         reads: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`_correction` of the output layer for large batches (HAT's dies): the same rule, applied
        only to the output parts that can be flagged (`LayerCells.flaggable`, gathered as
        rows) instead of element-wise passes over every part (memory-bound on CPU). Equal to
        the dense path; None where it does not apply (c, e unset; cell sets neither one nor
        one per replica)."""
        if diff.ndim != 3 or h.ndim != 3 or cells.n not in (1, diff.shape[0]):
            return None  # a one-layer network (shared 2-D inputs): the element-wise path
        lead, b, n_out = diff.shape
        columns = cells.output_columns(h, s, reads)
        if columns is None:
            return None
        die, col = cells.flaggable(reads, self.config.readout_tol)
        if cells.n != lead:  # one cell set for every replica
            die, col = torch.arange(lead).repeat_interleave(die.numel()), col.repeat(lead)
        read, j = col // n_out, col % n_out
        zero = torch.zeros_like(die)

        def rows(t: torch.Tensor) -> torch.Tensor:  # t's leading dim is 1 or lead
            return die if t.shape[0] == lead else zero

        d, e = (t[rows(t), col] for t in columns)  # (parts, b)
        if noise is not None:  # (lead or 1, b, reads, n_out)
            d = d + noise[rows(noise), :, read, j]
        act = active[rows(active), :, read, 0]
        correction, reliable = output_readout(d, e, act, self.config.readout_tol)
        at = die * n_out + j
        total = torch.zeros(lead * n_out, b).index_add_(0, at, correction)
        return (total.view(lead, n_out, b).transpose(1, 2),
                reliable_outputs(at, reliable, lead, n_out))
