"""The common-mode read-out: one code path for the chip (ArrayLayout.infer) and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training import mapping
from training.defects import CellDefect
from training.mapping import (
    P_STATE,
    ArrayCells,
    ArrayLayout,
    cells_from_defect_maps,
    cells_from_kinds,
    common_mode_readout,
)
from training.network import BinaryNetwork, NetworkConfig, combine_copies


def _programmed_currents(layout: ArrayLayout, cells: ArrayCells, weights: list[np.ndarray]):
    """Column currents of die 0 of `cells` programmed with `weights` (a software chip)."""
    st = layout.target_states(weights)
    g = np.where(st == P_STATE, cells.g_p[0].numpy(), cells.g_ap[0].numpy()).astype(np.float64)
    return lambda rows: layout.device.v_read_v * rows.astype(np.float64) @ g


def test_readout_repairs_a_short_and_a_dead_column() -> None:
    # pair outputs with n = 10 active inputs, true value 4
    active = torch.tensor([[10.0]])
    true = torch.tensor([[4.0, 4.0, 4.0]])
    # a short of +9 units on the plus column, on the minus column, no defect
    diff = true + torch.tensor([[9.0, -9.0, 0.0]])
    excess = torch.tensor([[9.0, 9.0, 0.3]])
    out, ok = common_mode_readout(diff, excess, active, tol=4.0)
    # plus short: d_minus = 4 possible, d_plus = 22 impossible (> n): repaired
    assert out[0, 0] == pytest.approx(4.0) and ok[0, 0]
    # minus short: d_plus = 4, d_minus = -14 impossible: repaired
    assert out[0, 1] == pytest.approx(4.0) and ok[0, 1]
    assert out[0, 2] == pytest.approx(4.0) and ok[0, 2]
    # dead plus column: I_plus = 0, minus column alone still tells the value
    n, val = 10.0, 2.0
    i_minus = (n + val) / 2 * 1.0 + (n - val) / 2 * 2.0  # G_AP = 1, G_P = 2 units
    out, ok = common_mode_readout(torch.tensor([[-i_minus]]), torch.tensor([[i_minus - 3 * n]]),
                                  torch.tensor([[n]]), tol=4.0)
    assert out[0, 0] == pytest.approx(val) and ok[0, 0]
    # ambiguous (both estimates possible): flagged unreliable
    out, ok = common_mode_readout(torch.tensor([[9.0]]), torch.tensor([[9.0]]),
                                  torch.tensor([[30.0]]), tol=4.0)
    assert not ok[0, 0] and out[0, 0] == pytest.approx(0.0)


def test_readout_follows_the_rule_it_states() -> None:
    """The arithmetic read-out equals its rule written with comparisons: a flagged pair takes
    the possible estimate if exactly one is possible, else the smaller one (d_minus on a tie);
    ties, the flag threshold and the possibility limit are all hit on quantized values."""
    g = torch.Generator().manual_seed(3)
    q = mapping.QUANTUM_UNITS
    diff = torch.randint(-24, 25, (4000,), generator=g) * 0.5
    excess = torch.randint(-24, 25, (4000,), generator=g) * 0.5 + q * torch.randint(
        -1, 2, (4000,), generator=g)
    active = torch.randint(0, 12, (4000,), generator=g).float()
    tol = 4.0
    d_plus, d_minus = diff + excess, diff - excess
    lim = active + tol / 2
    plus_ok, minus_ok = d_plus.abs() <= lim, d_minus.abs() <= lim
    take_plus = torch.where(plus_ok != minus_ok, plus_ok, d_plus.abs() < d_minus.abs())
    flagged = excess.abs() > tol
    want = torch.where(flagged, torch.where(take_plus, d_plus, d_minus), diff)
    out, reliable = common_mode_readout(diff, excess, active, tol)
    assert torch.equal(out, want)
    assert torch.equal(reliable, ~(flagged & (plus_ok == minus_ok)))
    out_last, reliable_last = common_mode_readout(diff, excess, active, tol, output_layer=True)
    assert torch.equal(out_last, torch.where(reliable, want, diff))  # output layer: ambiguous
    assert torch.equal(reliable_last, reliable)                       # pairs keep diff
    assert (flagged & (diff == 0)).any() and (excess.abs() == tol).any()
    assert ((d_plus.abs() == lim) | (d_minus.abs() == lim)).any()


def test_combine_copies_leaves_out_unreliable() -> None:
    s = torch.tensor([[1.0, 10.0, 3.0, 20.0, 5.0, 30.0]])  # 3 copies x 2 classes
    ok = torch.tensor([[True, False, False, False, True, True]])
    got = combine_copies(s, 3, "mean", ok)
    torch.testing.assert_close(got, torch.tensor([[3.0, 30.0]]))  # copies 0, 2 | copy 2
    torch.testing.assert_close(combine_copies(s, 3, "median", ok), torch.tensor([[1.0, 30.0]]))


@pytest.mark.parametrize(("copies", "reads"), [(1, 1), (3, 1), (3, 4)])
def test_chip_inference_equals_training_forward(copies: int, reads: int) -> None:
    """layout.infer on a defective chip's currents gives the forward pass's decisions (the
    output layer read whole or in parts), and the read-out changes decisions (a test that
    fails if it were a no-op)."""
    rng = np.random.default_rng(1)
    sizes = (24, 8, 3)
    net_cfg = NetworkConfig(sizes=sizes, output_copies=copies, readout="common_mode",
                            output_reads=reads)
    lo = ArrayLayout.default(sizes, 24, 40, copies, readout="common_mode", output_reads=reads)
    kinds = np.where(rng.random((24, 40)) < 0.04, rng.integers(1, 5, (24, 40)), 0)
    kinds[rng.random(kinds.shape) < 0.03] = CellDefect.SHORT
    kinds[:, 3] = CellDefect.OPEN  # a dead column
    dev = lo.device  # per-device variation: no exact ties between the two code paths
    g_p = torch.tensor(dev.g_p_s * rng.lognormal(0, 0.03, kinds.shape), dtype=torch.float32)
    g_ap = torch.tensor(dev.g_ap_s * rng.lognormal(0, 0.03, kinds.shape), dtype=torch.float32)
    cells = cells_from_kinds(kinds.astype(np.int8), dev, g_p=g_p, g_ap=g_ap)
    net = BinaryNetwork(net_cfg, seed=3)
    w = [wi[0].numpy() for wi in net.binary_weights()]
    x = rng.integers(0, 2, (300, sizes[0]))
    chip = lo.infer(x, _programmed_currents(lo, cells, w))
    with torch.no_grad():
        scores = net(torch.as_tensor(x, dtype=torch.float32), lo.layer_cells(cells))[0]
    top2 = scores.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()
    assert clear.mean() > 0.5
    np.testing.assert_array_equal(chip[clear], scores.argmax(-1).numpy()[clear])
    plain = ArrayLayout.default(sizes, 24, 40, copies).infer(x, _programmed_currents(lo, cells, w))
    assert (plain != chip).mean() > 0.05


def test_sparse_excess_equals_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping, "SPARSE_MIN_MACS", 0)  # take the sparse product
    maps = [random_map(seed=s, rate=0.02) for s in range(3)]
    lo = ArrayLayout.default((20, 8, 3), rows=20, cols=40, output_copies=2)
    cells = lo.layer_cells(cells_from_defect_maps(maps, lo.device))
    g = torch.Generator().manual_seed(0)
    for lc in cells:
        n, n_in, n_out = lc.a.shape
        assert lc._excess_support(max_density=1.0) is not None  # cached: the sparse product
        assert lc.c is not None and lc.e is not None
        for h, s in (((torch.rand(5, n_in, generator=g) > 0.5).float(),
                      (torch.rand(1, n_in, n_out, generator=g) > 0.5).float()),
                     ((torch.rand(n, 5, n_in, generator=g) > 0.5).float(),
                      (torch.rand(n, n_in, n_out, generator=g) > 0.5).float())):
            want = torch.matmul(h, lc.c + s * lc.e)
            torch.testing.assert_close(lc.excess(h, s), want, atol=1e-4, rtol=1e-5)


def test_network_and_layout_must_read_alike() -> None:
    from training.evaluation import evaluate_on_dies

    lo = ArrayLayout.default((6, 4, 3), rows=8, cols=16, readout="common_mode")
    cells = cells_from_kinds(np.zeros((8, 16), np.int8), lo.device)
    w = [torch.ones(6, 4), torch.ones(4, 3)]
    x, y = torch.ones(2, 6), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"read-out 'common_mode'.*'diff'"):
        evaluate_on_dies(w, x, y, lo, cells, NetworkConfig(sizes=(6, 4, 3)))
    ok = evaluate_on_dies(w, x, y, lo, cells,
                          NetworkConfig(sizes=(6, 4, 3), readout="common_mode"))
    assert ok.per_die.shape == (1,)


@pytest.mark.parametrize("reads", [1, 2])
def test_output_reads_repair_shorts_in_both_columns(reads: int) -> None:
    """A short in each column of an output pair: read whole, the check cannot tell which
    column to trust (unreliable, plain difference); in two reads, each sees one short and
    repairs it exactly."""
    sizes = (4, 4, 2)
    lo = ArrayLayout.default(sizes, 4, 16, readout="common_mode", output_reads=reads)
    kinds = np.zeros((4, 16), np.int8)
    plus, minus = lo.layers[1].plus_cols[0], lo.layers[1].minus_cols[0]
    kinds[0, plus] = CellDefect.SHORT  # hidden input 0: read 0
    kinds[1, minus] = CellDefect.SHORT  # hidden input 1: read 1 (of two)
    cells = cells_from_kinds(kinds, lo.device)
    w = [np.ones((4, 4)), np.ones((4, 2))]
    h = np.ones((1, 4), np.uint8)
    rows = lo.row_inputs(1, h)
    assert rows.shape == (reads, 4)
    out, ok = lo.checked_outputs(1, _programmed_currents(lo, cells, w)(rows), h)
    unit = lo.device.v_read_v * lo.device.unit_s
    if reads == 1:
        assert not ok[0, 0]
        # plain difference: rows 0 and 1 give (g_short - G_AP) + (G_P - g_short) = 1 unit
        assert out[0, 0] / unit == pytest.approx(3.0)
    else:
        assert ok[0, 0]
        assert out[0, 0] / unit == pytest.approx(4.0)


def test_output_reads_need_the_common_mode_readout() -> None:
    with pytest.raises(ValueError, match="output_reads 2 only helps the common-mode"):
        NetworkConfig(sizes=(6, 4, 3), output_reads=2)
    with pytest.raises(ValueError, match=r"output_reads must be 1\.\.4"):
        ArrayLayout.default((6, 4, 3), rows=8, cols=16, readout="common_mode", output_reads=5)


@pytest.mark.parametrize(("sizes", "reads", "replicas", "n_cells", "sparse"), [
    ((16, 6, 3), 1, 3, 3, False), ((16, 6, 3), 3, 3, 3, False), ((16, 6, 3), 3, 3, 1, False),
    ((16, 6, 3), 3, 3, 3, True), ((16, 6, 3), 3, 3, 1, True), ((16, 3), 2, 1, 2, True)])
def test_row_readout_equals_dense(monkeypatch: pytest.MonkeyPatch, sizes: tuple[int, ...],
                                  reads: int, replicas: int, n_cells: int,
                                  sparse: bool) -> None:
    """Large batches read out only the output parts that can be flagged, gathered as rows;
    scores and gradients equal the element-wise path's bit for bit (training noise
    included), per die or one cell set shared by the replicas, with the excess as a dense or
    a sparse product; a one-layer network takes the element-wise path."""
    from training import network

    if sparse:
        monkeypatch.setattr(mapping, "SPARSE_MIN_MACS", 0)
    nc = NetworkConfig(sizes=sizes, output_copies=2, readout="common_mode", output_reads=reads)
    lo = ArrayLayout.default(sizes, rows=20, cols=40, output_copies=2, readout="common_mode",
                             output_reads=reads)
    maps = [random_map(rows=20, cols=40, rate=0.05, seed=s) for s in range(n_cells)]
    for m in maps:
        m.kinds[1:4, 24:36:3] = CellDefect.SHORT  # output pairs, several reads
    cells = lo.layer_cells(cells_from_defect_maps(maps, lo.device))
    x = (torch.rand(50, 16, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    taken = []
    rows_path = network.BinaryNetwork._correction_rows
    monkeypatch.setattr(network.BinaryNetwork, "_correction_rows",
                        lambda self, *a: taken.append(rows_path(self, *a)) or taken[-1])
    results = []
    for threshold in (10**12, 0):  # element-wise, rows
        monkeypatch.setattr(network, "ROW_READOUT_MIN", threshold)
        net = BinaryNetwork(nc, replicas=replicas, seed=2)
        scores = net(x, cells, noise_std=0.3, generator=torch.Generator().manual_seed(3))
        scores.square().sum().backward()
        results.append((scores.detach(), [w.grad for w in net.weights]))
    (dense, dense_grads), (rows, rows_grads) = results
    assert torch.equal(dense, rows)
    assert all(torch.equal(a, b) for a, b in zip(dense_grads, rows_grads, strict=True))
    assert dense_grads[-1].abs().sum() > 0
    assert taken and all((t is None) == (len(sizes) == 2) for t in taken)
