"""The fast paths of statistics-aware sampling against their straightforward definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training.defects import CellDefect, DefectStatistics, _last_per_key
from training.mapping import DeviceModel, defect_conductance, pair_terms


def _last_per_key_reference(key: np.ndarray) -> np.ndarray:
    last = {int(k): i for i, k in enumerate(key)}
    return np.array([last[k] for k in sorted(last)], dtype=np.int64)


@pytest.mark.parametrize("offset", [0, 2**60])  # 2**60: the keys no longer pack, argsort path
def test_last_per_key_matches_its_definition(offset: int) -> None:
    rng = np.random.default_rng(0)
    for size in (0, 1, 2, 7, 1000):
        key = rng.integers(0, max(size // 3, 1), size) + offset
        np.testing.assert_array_equal(_last_per_key(key), _last_per_key_reference(key))


def test_sampled_cells_are_unique_sorted_and_resistances_follow_kinds() -> None:
    stats = DefectStatistics.fit([random_map(20, 40, 0.05, seed=s, failed_row=s % 20)
                                  for s in range(6)])
    sp = stats.sample_sparse(50, seed=3, scale=2.0)
    key = sp.die * sp.rows * sp.cols + sp.flat
    assert bool((key[1:] > key[:-1]).all())
    assert sp.die.dtype == sp.flat.dtype == torch.long and sp.kind.dtype == torch.int8
    measured = (sp.kind == CellDefect.SHORT) | (sp.kind == CellDefect.OPEN)
    assert bool((sp.resistance_ohm[measured] > 0).all())
    assert bool((sp.resistance_ohm[~measured] == 0).all())


def _conductance_reference(kind: int, r: float, dev: DeviceModel, stuck_p: float,
                           stuck_ap: float) -> float:
    if kind in (CellDefect.SHORT, CellDefect.OPEN) and r > 0:
        return float(np.float32(1.0) / np.float32(max(r, np.float32(1e-3))))
    nearest = min(max(kind, CellDefect.OK), CellDefect.STUCK_AP)  # codes outside 0-4
    return float(np.float32({CellDefect.OK: 0.0, CellDefect.SHORT: dev.g_short_s,
                             CellDefect.OPEN: 0.0, CellDefect.STUCK_P: stuck_p,
                             CellDefect.STUCK_AP: stuck_ap}[nearest]))


def test_defect_conductance_uses_resistance_of_shorts_and_opens_only() -> None:
    dev = DeviceModel()
    rs = [0.0, -5.0, 1e-6, 1.0, 1150.0, 3e7, float("inf"), float("nan")]
    kind = torch.tensor([k for k in range(-1, 6) for _ in rs], dtype=torch.int8)
    r = torch.tensor(rs * 7, dtype=torch.float32)
    per_device = torch.full(r.shape, 1e-4), torch.full(r.shape, 2e-5)
    for stuck in ((None, None), per_device):
        got = defect_conductance(kind, r, dev, *stuck)
        sp = dev.g_p_s if stuck[0] is None else 1e-4
        sap = dev.g_ap_s if stuck[1] is None else 2e-5
        want = [_conductance_reference(int(k), float(x), dev, sp, sap)
                for k, x in zip(kind, r, strict=True)]
        assert got.dtype == torch.float32 and got.tolist() == want


def test_pair_terms_equal_their_selection_form_bit_for_bit() -> None:
    vals = torch.tensor([-2.0, -0.0, 0.0, 1.5])
    dgp, dgap = (t.reshape(-1) for t in torch.meshgrid(vals, vals, indexing="ij"))
    for side in (torch.ones(16), -torch.ones(16), torch.tensor(1), torch.tensor(-1)):
        plus = side > 0
        want = (torch.where(plus, dgap, -dgp), dgp - dgap, torch.where(plus, dgap, dgp),
                side.to(dgp.dtype) * (dgp - dgap))
        for got, ref in zip(pair_terms(side, dgp, dgap), want, strict=True):
            assert torch.equal(got.view(torch.int32), ref.expand_as(got).view(torch.int32))
