from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training.defects import CellDefect, DefectStatistics
from training.mapping import (
    AP_STATE,
    P_STATE,
    UNTOUCHED,
    ArrayLayout,
    DeviceModel,
    cells_from_defect_maps,
    cells_from_kinds,
    cells_from_resistance,
    cells_from_sparse,
)


def test_default_layout_matches_design() -> None:
    lo = ArrayLayout.default()
    l1, l2 = lo.layers
    assert l1.row_range == (0, 100) and l1.col_range == (0, 180)
    assert l2.row_range == (0, 90) and l2.col_range == (180, 200)
    assert lo.sizes == (100, 90, 10)


def test_layout_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match=r"\[100, 120, 10\].*100 x 200"):
        ArrayLayout.default((100, 120, 10))
    with pytest.raises(ValueError, match="rows"):
        ArrayLayout.default((100, 60, 10), row_replicas=(1, 2))


def test_target_states() -> None:
    lo = ArrayLayout.default((4, 3, 2), rows=5, cols=12)
    w1 = np.array([[1, -1, 1]] * 4, float)
    w2 = np.array([[1, -1]] * 3, float)
    st = lo.target_states([w1, w2])
    assert st.dtype == np.uint8 and st.shape == (5, 12)
    assert st[0, 0] == P_STATE and st[0, 1] == AP_STATE  # w=+1: P on plus, AP on minus
    assert st[0, 2] == AP_STATE and st[0, 3] == P_STATE
    assert st[4, 0] == UNTOUCHED and st[2, 6] == P_STATE and st[2, 8] == AP_STATE
    assert st[3, 6] == UNTOUCHED
    assert (st[:, 10:] == UNTOUCHED).all()
    with pytest.raises(ValueError, match=r"layer 0 weights have shape \(3, 3\)"):
        lo.target_states([w1[:3], w2])


def _chip(g: np.ndarray, v: float = 0.1):
    return lambda rows: v * rows.astype(float) @ g


def test_physics_roundtrip_on_ideal_chip() -> None:
    """Programming the target states and running the chip reproduces the network's decision."""
    rng = np.random.default_rng(0)
    lo = ArrayLayout.default((6, 4, 3), rows=8, cols=16)
    w1 = rng.choice([-1.0, 1.0], (6, 4))
    w2 = rng.choice([-1.0, 1.0], (4, 3))
    st = lo.target_states([w1, w2])
    dev = lo.device
    g = np.where(st == P_STATE, dev.g_p_s, np.where(st == AP_STATE, dev.g_ap_s, dev.g_ap_s))
    x = rng.integers(0, 2, (50, 6))
    h = (x @ w1 > 0).astype(float)
    want = np.argmax(h @ w2 + 1e-9 * np.arange(3), axis=1)
    got = lo.infer(x, _chip(g))
    scores = h @ w2
    clear = np.sort(scores, axis=1)[:, -1] > np.sort(scores, axis=1)[:, -2]
    assert (got[clear] == want[clear]).all()
    out = lo.layer_outputs(0, _chip(g)(lo.row_inputs(0, x)))
    np.testing.assert_allclose(out / (0.1 * dev.unit_s), x @ w1, atol=1e-6)


def test_cells_from_kinds_overrides() -> None:
    dev = DeviceModel()
    kinds = np.zeros((2, 3), np.int8)
    kinds[0, 0], kinds[0, 1], kinds[0, 2], kinds[1, 0] = 1, 2, 3, 4
    r = np.zeros((2, 3), np.float32)
    r[0, 0] = 1100.0
    c = cells_from_kinds(kinds, dev, r)
    assert c.g_p[0, 0, 0] == c.g_ap[0, 0, 0] == pytest.approx(1 / 1100)
    assert c.g_p[0, 0, 1] == c.g_ap[0, 0, 1] == 0
    assert c.g_p[0, 0, 2] == c.g_ap[0, 0, 2] == pytest.approx(dev.g_p_s)
    assert c.g_p[0, 1, 0] == c.g_ap[0, 1, 0] == pytest.approx(dev.g_ap_s)
    assert c.g_p[0, 1, 1] == pytest.approx(dev.g_p_s) and c.g_ap[0, 1, 1] == pytest.approx(
        dev.g_ap_s)
    with pytest.raises(ValueError, match="resistance_ohm shape"):
        cells_from_kinds(kinds, dev, np.zeros((3, 3)))


def test_short_dominates_column() -> None:
    """A short is a large fixed conductance whatever the weight, not a zeroed weight."""
    lo = ArrayLayout.default((4, 2, 2), rows=4, cols=8)
    kinds = np.zeros((4, 8), np.int8)
    kinds[1, 0] = CellDefect.SHORT  # plus device of neuron 0, input 1
    lc = lo.layer_cells(cells_from_kinds(kinds, lo.device))[0]
    assert lc.b[0, 1, 0] == pytest.approx(1.0)  # only the minus device still follows w
    diff_if_minus = lc.a[0, 1, 0].item()
    assert diff_if_minus > 7  # about 9 weight units
    assert lc.a[0, 0, 0] == pytest.approx(-1.0) and lc.b[0, 0, 0] == pytest.approx(2.0)


def test_sparse_path_equals_dense(small_maps) -> None:
    st = DefectStatistics.fit(small_maps)
    lo = ArrayLayout.default((20, 8, 3), rows=20, cols=40, output_copies=2, row_replicas=(1, 2))
    sp = st.sample_sparse(7, seed=5)
    dense = lo.layer_cells(cells_from_sparse(sp, lo.device))
    fast = lo.sparse_layer_cells(sp)
    for a, b in zip(dense, fast, strict=True):
        torch.testing.assert_close(a.a, b.a, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.b, b.b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.c, b.c, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(a.e, b.e, atol=1e-5, rtol=1e-5)


def test_measured_resistance_and_maps() -> None:
    m = random_map(rows=10, cols=24, seed=2)
    lo = ArrayLayout.default((10, 6, 3), rows=10, cols=24)
    c = cells_from_defect_maps([m, m], lo.device)
    assert c.n == 2 and c.shape == (10, 24)
    r = np.full((10, 24), 6000.0)
    cr = cells_from_resistance(r)
    assert torch.equal(cr.g_p, cr.g_ap)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 5\)"):
        cells_from_resistance(np.ones((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="conductances of shape"):
        ArrayLayout.default().layer_cells(c)


def test_device_model_fit() -> None:
    a = np.full((4, 4), 6000.0)
    b = np.full((4, 4), 12000.0)
    kinds = np.zeros((4, 4), np.int8)
    kinds[0, 0] = CellDefect.SHORT
    a[0, 0] = b[0, 0] = 1100.0
    d = DeviceModel.fit(a, b, kinds)
    assert d.g_p_s == pytest.approx(1 / 6000) and d.g_ap_s == pytest.approx(1 / 12000)
    assert d.g_short_s == pytest.approx(1 / 1100)
    # no healthy cell (dies never contacted read open everywhere): a message, not NaN
    with pytest.raises(ValueError, match="no healthy cell to fit the device"):
        DeviceModel.fit(a, b, np.full((4, 4), CellDefect.OPEN, np.int8))
