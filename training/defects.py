"""Defect maps of a crossbar die, their statistics, and a vectorised sampler of random maps.

A defect map tells, per cell of the array, whether the 1T1MTJ cell is healthy or shorted, open,
stuck in P or stuck in AP (`CellDefect`, the same integer codes as the simulator's ground truth),
and optionally the resistance the cell was measured at. `DefectStatistics` condenses a set of
maps (e.g. the 36 dies of a wafer) into per-type rates, their die-to-die spread, whole failed
row/column lines and the resistances of shorted and open cells; statistics-aware training draws
fresh random maps from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator


class CellDefect(IntEnum):
    """Condition of one cell (codes shared with simulated_hw's ground truth)."""

    OK = 0
    SHORT = 1
    OPEN = 2
    STUCK_P = 3
    STUCK_AP = 4


#: Cell-defect kinds other than OK, in code order (columns of the rate tables).
DEFECT_KINDS: tuple[CellDefect, ...] = (
    CellDefect.SHORT, CellDefect.OPEN, CellDefect.STUCK_P, CellDefect.STUCK_AP,
)


def _make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


@dataclass(frozen=True)
class DefectMap:
    """Per-cell defect codes of one die, with the measured cell resistances if known.

    kinds: int8 (rows, cols) `CellDefect` codes. resistance_ohm: float32 (rows, cols), the
    measured series resistance (access transistor included) of each cell, or None.
    """

    kinds: np.ndarray
    resistance_ohm: np.ndarray | None = None

    def __post_init__(self) -> None:
        kinds = np.asarray(self.kinds)
        if kinds.ndim != 2 or not kinds.size:
            raise ValueError(f"DefectMap kinds must be 2-D (rows, cols) with at least one "
                             f"cell, got shape {kinds.shape}")
        if kinds.dtype.kind not in "iub":  # a float NaN or 1.5 would cast to a valid code
            raise ValueError(f"DefectMap kinds must be integer codes, got {kinds.dtype}")
        if kinds.size and (kinds.min() < 0 or kinds.max() > max(CellDefect)):
            raise ValueError(
                f"DefectMap kinds hold codes outside 0..{int(max(CellDefect))}: "
                f"min {int(kinds.min())}, max {int(kinds.max())}"
            )
        object.__setattr__(self, "kinds", kinds.astype(np.int8, copy=False))
        if self.resistance_ohm is not None:
            r = np.asarray(self.resistance_ohm, dtype=np.float32)
            if r.shape != kinds.shape:
                raise ValueError(
                    f"DefectMap resistance_ohm shape {r.shape} differs from kinds shape "
                    f"{kinds.shape}"
                )
            bad = np.isnan(r) | (r < 0)
            if bad.any():
                i, j = (int(v) for v in np.argwhere(bad)[0])
                raise ValueError(f"DefectMap resistance_ohm holds {int(bad.sum())} NaN or "
                                 f"negative values (first at row {i}, col {j}: {r[i, j]}); "
                                 "use 0 for 'not measured' and inf for an open circuit")
            object.__setattr__(self, "resistance_ohm", r)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.kinds.shape[0]), int(self.kinds.shape[1]))

    def count(self, kind: CellDefect) -> int:
        """Number of cells of one kind."""
        return int((self.kinds == int(kind)).sum())

    def rate(self, kind: CellDefect | None = None) -> float:
        """Fraction of cells of one kind (all defects if kind is None)."""
        if kind is None:
            return float((self.kinds != CellDefect.OK).mean())
        return float((self.kinds == int(kind)).mean())

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Raise a ValueError naming both shapes unless this map is `shape`."""
        if self.shape != tuple(shape):
            raise ValueError(f"defect map has shape {self.shape}, the array is {tuple(shape)}")


def failed_lines(kinds: np.ndarray, threshold: float = 0.9) -> tuple[list[tuple[int, int]],
                                                                     list[tuple[int, int]]]:
    """Whole failed rows and columns: (index, kind) where >= threshold of the line is one kind.

    Columns are judged on the cells outside failed rows, so a cell is never counted for two
    lines (a dead die, every cell open, is 100 failed rows and no failed column: not 300
    lines for 20,000 cells). threshold must be in (0.5, 1]: one kind per line.
    """
    if not 0.5 < threshold <= 1.0:
        raise ValueError(f"line threshold must be in (0.5, 1] (a share of the line's cells), "
                         f"got {threshold}")
    lines: list[list[tuple[int, int]]] = [[], []]
    rest = kinds
    for axis, found in ((1, lines[0]), (0, lines[1])):
        n_line = rest.shape[axis]
        for kind in DEFECT_KINDS:
            if n_line == 0:
                break
            frac = (rest == int(kind)).sum(axis=axis) / n_line
            found.extend((int(i), int(kind)) for i in np.flatnonzero(frac >= threshold))
        found.sort()
        if axis == 1:  # columns: the rows that did not fail
            failed = np.zeros(kinds.shape[0], dtype=bool)
            failed[[i for i, _ in found]] = True
            rest = kinds[~failed]
    return lines[0], lines[1]


def _last_per_key(key: np.ndarray) -> np.ndarray:
    """Indices of the last entry of each distinct key (int64 >= 0), in ascending key order.

    Sorts the values key << shift | index when they fit in int64: a plain value sort, several
    times faster than a stable argsort (the fallback) or torch.unique on this CPU.
    """
    if key.size == 0:
        return np.zeros(0, dtype=np.int64)
    shift = (key.size - 1).bit_length()
    if int(key.max()) < 1 << (63 - shift):
        packed = key << shift
        packed |= np.arange(key.size)
        packed.sort()
        key = packed >> shift
        index = packed
    else:
        index = np.argsort(key, kind="stable")
        key = key[index]
    last = np.empty(key.size, dtype=bool)
    np.not_equal(key[1:], key[:-1], out=last[:-1])
    last[-1] = True
    index = index[last]
    index &= (1 << shift) - 1  # no-op for argsort indices (< 2**shift)
    return index


@dataclass(frozen=True)
class SparseDefects:
    """Defective cells of n sampled maps: map index, flat cell index (row * cols + col), kind,
    resistance (ohm, shorts and opens; 0 otherwise). Later entries override earlier ones."""

    n: int
    rows: int
    cols: int
    die: torch.Tensor
    flat: torch.Tensor
    kind: torch.Tensor
    resistance_ohm: torch.Tensor

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kinds int8 (n, rows, cols) and resistance_ohm float32 (n, rows, cols)."""
        kinds = torch.zeros(self.n, self.rows * self.cols, dtype=torch.int8)
        r = torch.zeros(self.n, self.rows * self.cols)
        kinds[self.die, self.flat] = self.kind
        r[self.die, self.flat] = self.resistance_ohm
        return (kinds.view(self.n, self.rows, self.cols), r.view(self.n, self.rows, self.cols))


class DefectStatistics(BaseModel):
    """Defect statistics of a population of dies, and a sampler of random maps from them.

    Rates are per cell, counted outside whole failed lines. `die_rates` keeps each observed die's
    (short, open, stuck-P, stuck-AP) rates so the sampler can draw a die's rates by bootstrap,
    which keeps the correlation between kinds and the heavy tail of bad dies; `mode="lognormal"`
    draws the die's total rate from a lognormal fit instead and splits it by pooled fractions.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rows: int = Field(gt=0)
    cols: int = Field(gt=0)
    n_maps: int = Field(gt=0)
    rate_mean: list[float] = Field(description="mean rate per kind: short, open, stuck-P, AP")
    rate_std: list[float] = Field(description="die-to-die std of the rate per kind")
    die_rates: list[list[float]] = Field(description="observed rates, one row per die")
    total_rate_log_mean: float
    total_rate_log_std: float
    failed_rows_per_die: float = Field(ge=0, description="mean count of whole failed rows")
    failed_cols_per_die: float = Field(ge=0, description="mean count of whole failed columns")
    line_kind_fractions: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 0.0, 0.0],
        description="kind of failed lines: short, open, stuck-P, stuck-AP",
    )
    short_log_r_mean: float = Field(np.log(1150.0), description="ln(ohm) of shorted cells")
    short_log_r_std: float = Field(0.08, ge=0)
    open_log_r_mean: float = Field(np.log(3e7), description="ln(ohm) of open cells")
    open_log_r_std: float = Field(1.5, ge=0)
    mode: str = Field("empirical", pattern="^(empirical|lognormal)$")

    @model_validator(mode="after")
    def _tables(self) -> DefectStatistics:
        """Each table has one entry per defect kind (and die_rates one row per die), with
        rates in [0, 1]: a statistics file edited by hand fails here, not inside a sampler."""
        kinds = len(DEFECT_KINDS)
        for name in ("rate_mean", "rate_std", "line_kind_fractions"):
            if len(getattr(self, name)) != kinds:
                raise ValueError(f"{name} needs {kinds} values (short, open, stuck-P, "
                                 f"stuck-AP), got {len(getattr(self, name))}")
        if not self.die_rates or any(len(r) != kinds for r in self.die_rates):
            raise ValueError(f"die_rates needs at least one row of {kinds} rates")
        rates = [*self.rate_mean, *(v for r in self.die_rates for v in r)]
        if any(not 0 <= v <= 1 for v in (*rates, *self.line_kind_fractions)):
            raise ValueError("rates and line_kind_fractions must lie in [0, 1]")
        if (self.failed_rows_per_die or self.failed_cols_per_die) \
                and sum(self.line_kind_fractions) <= 0:
            raise ValueError("failed lines need line_kind_fractions that do not all vanish")
        return self

    # ---- fitting --------------------------------------------------------------------------
    @classmethod
    def fit(cls, maps: Sequence[DefectMap], line_threshold: float = 0.9) -> DefectStatistics:
        """Fit statistics from defect maps of equal shape (measured resistances optional)."""
        if len(maps) == 0:
            raise ValueError("DefectStatistics.fit needs at least one defect map")
        shape = maps[0].shape
        for i, m in enumerate(maps):
            if m.shape != shape:
                raise ValueError(f"defect map {i} has shape {m.shape}, map 0 has {shape}")
        die_rates, n_rows_failed, n_cols_failed = [], 0, 0
        line_kinds = np.zeros(4)
        short_r: list[np.ndarray] = []
        open_r: list[np.ndarray] = []
        for m in maps:
            rows, cols = failed_lines(m.kinds, line_threshold)
            mask = np.ones(shape, dtype=bool)
            for i, k in rows:
                mask[i, :] = False
                line_kinds[k - 1] += 1
            for j, k in cols:
                mask[:, j] = False
                line_kinds[k - 1] += 1
            n_rows_failed += len(rows)
            n_cols_failed += len(cols)
            inner = m.kinds[mask]
            n = max(inner.size, 1)
            die_rates.append([float((inner == int(k)).sum() / n) for k in DEFECT_KINDS])
            if m.resistance_ohm is not None:  # measured values only (0: not measured)
                r = m.resistance_ohm
                known = np.isfinite(r) & (r > 0)
                short_r.append(r[known & (m.kinds == CellDefect.SHORT)])
                open_r.append(r[known & (m.kinds == CellDefect.OPEN)])
        rates = np.asarray(die_rates)
        total = np.maximum(rates.sum(axis=1), 0.5 / (shape[0] * shape[1]))
        kw: dict[str, float | list[float]] = {}
        if short_r and sum(a.size for a in short_r):
            lr = np.log(np.maximum(np.concatenate(short_r), 1e-3))
            kw["short_log_r_mean"], kw["short_log_r_std"] = float(lr.mean()), float(lr.std())
        if open_r and sum(a.size for a in open_r):
            lr = np.log(np.maximum(np.concatenate(open_r), 1e-3))
            kw["open_log_r_mean"], kw["open_log_r_std"] = float(lr.mean()), float(lr.std())
        if line_kinds.sum() > 0:
            kw["line_kind_fractions"] = (line_kinds / line_kinds.sum()).tolist()
        return cls(
            rows=shape[0], cols=shape[1], n_maps=len(maps),
            rate_mean=rates.mean(axis=0).tolist(), rate_std=rates.std(axis=0).tolist(),
            die_rates=rates.tolist(),
            total_rate_log_mean=float(np.log(total).mean()),
            total_rate_log_std=float(np.log(total).std()),
            failed_rows_per_die=n_rows_failed / len(maps),
            failed_cols_per_die=n_cols_failed / len(maps),
            **kw,
        )

    @property
    def mean_total_rate(self) -> float:
        return float(sum(self.rate_mean))

    # ---- sampling -------------------------------------------------------------------------
    def _die_rates(self, n: int, g: torch.Generator) -> torch.Tensor:
        """(n, 4) per-kind cell rates of n random dies."""
        if self.mode == "empirical":
            table = torch.from_numpy(np.asarray(self.die_rates, dtype=np.float32))
            idx = torch.randint(0, table.shape[0], (n,), generator=g)
            return table.index_select(0, idx)
        mean = torch.tensor(self.rate_mean, dtype=torch.float32)
        frac = mean / mean.sum().clamp_min(1e-12)
        z = torch.randn(n, generator=g)
        total = torch.exp(self.total_rate_log_mean + self.total_rate_log_std * z)
        return total[:, None].clamp(max=0.5) * frac[None, :]

    def sample_sparse(self, n: int, seed: int | None = None,
                      generator: torch.Generator | None = None,
                      scale: float = 1.0) -> SparseDefects:
        """Draw n random maps as a list of defective cells (fast: defects are rare).

        Per map: its rates (bootstrap or lognormal), a Poisson number of isolated defects at
        uniform positions with kinds drawn by those rates, then whole failed rows/columns (a
        Poisson count, overwriting the cells they cross). `scale` multiplies the rates (used for
        warm-up schedules; line failures are scaled by min(scale, 1)).

        Random numbers come from torch (`generator`); the bookkeeping on them runs in numpy,
        whose per-call overhead is a fraction of torch's on arrays of this size.
        """
        if n < 0:
            raise ValueError(f"cannot sample {n} maps")
        if not 0 <= scale < float("inf"):  # NaN fails this too
            raise ValueError(f"the rate scale must be a finite number >= 0, got {scale}")
        g = _make_generator(seed, generator)
        n_cells = self.rows * self.cols
        rates = (self._die_rates(n, g) * scale).clamp(max=1.0)  # (n, 4)
        total = rates.sum(dim=1)
        counts = torch.poisson(total * n_cells, generator=g).long().numpy()
        die = np.repeat(np.arange(n), counts)
        flat = torch.randint(0, n_cells, (die.size,), generator=g).numpy()
        cum = torch.cumsum(rates / total.clamp_min(1e-12)[:, None], dim=1).numpy()
        u = torch.rand(die.size, 1, generator=g).numpy()[:, 0]
        kind = np.ones(die.size, dtype=np.int8)  # 1 + the number of cumulative rates <= u
        for j in range(3):
            kind += (u >= np.repeat(cum[:, j], counts)).view(np.int8)
        parts_d, parts_f, parts_k = [die], [flat], [kind]
        fr = torch.tensor(self.line_kind_fractions, dtype=torch.float32)
        for per_die, length, along in ((self.failed_rows_per_die, self.rows, self.cols),
                                       (self.failed_cols_per_die, self.cols, self.rows)):
            if per_die <= 0 or n == 0:
                continue
            lc = torch.poisson(torch.full((n,), per_die * min(scale, 1.0)), generator=g)
            lc = lc.numpy().astype(np.int64)
            k = int(lc.sum())
            if k == 0:
                continue
            line = torch.randint(0, length, (k,), generator=g).numpy()
            lkind = torch.multinomial(fr, k, replacement=True, generator=g).numpy() + 1
            pos = np.arange(along)
            if length == self.rows:
                cells = line[:, None] * self.cols + pos[None, :]
            else:
                cells = pos[None, :] * self.cols + line[:, None]
            parts_d.append(np.repeat(np.arange(n), lc * along))
            parts_f.append(cells.reshape(-1))
            parts_k.append(np.repeat(lkind.astype(np.int8), along))
        die, flat, kind = (np.concatenate(p) for p in (parts_d, parts_f, parts_k))
        # keep the last entry of each cell (lines override isolated defects), sorted by cell
        keep = _last_per_key(die * n_cells + flat)
        die, flat, kind = die[keep], flat[keep], kind[keep]
        z = torch.randn(keep.size, generator=g).numpy()
        # ln(R) = mean + std * z of shorts and opens; -inf (R = 0) for stuck cells
        mean, std = self._log_r_tables()
        r = torch.exp(torch.from_numpy(mean.take(kind) + std.take(kind) * z))
        return SparseDefects(n, self.rows, self.cols, torch.from_numpy(die),
                             torch.from_numpy(flat), torch.from_numpy(kind), r)

    def _log_r_tables(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 mean and std of ln(resistance) indexed by `CellDefect` code (-inf, 0 for
        kinds without a resistance, so that exp gives 0)."""
        mean = np.full(len(CellDefect), -np.inf, dtype=np.float32)
        std = np.zeros(len(CellDefect), dtype=np.float32)
        mean[CellDefect.SHORT], std[CellDefect.SHORT] = self.short_log_r_mean, self.short_log_r_std
        mean[CellDefect.OPEN], std[CellDefect.OPEN] = self.open_log_r_mean, self.open_log_r_std
        return mean, std

    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n random maps: int8 kinds and float32 resistance_ohm, both (n, rows, cols).

        The resistance is that of shorted/open cells (lognormal, fitted) and 0 elsewhere.
        """
        return self.sample_sparse(n, seed, generator, scale).dense()

    def sample_maps(self, n: int, seed: int | None = None) -> list[DefectMap]:
        """n random maps as DefectMap objects (convenience for tests and tools)."""
        kinds, r = self.sample(n, seed=seed)
        return [DefectMap(k.numpy(), r_.numpy()) for k, r_ in zip(kinds, r, strict=True)]


def stack_kinds(maps: Sequence[DefectMap], shape: tuple[int, int] | None = None) -> np.ndarray:
    """(n, rows, cols) int8 kinds of several maps, checking they share one shape."""
    if not maps:
        raise ValueError("no defect maps given")
    shape = shape or maps[0].shape
    for i, m in enumerate(maps):
        if m.shape != tuple(shape):
            raise ValueError(f"defect map {i} has shape {m.shape}, expected {tuple(shape)}")
    return np.stack([m.kinds for m in maps])
