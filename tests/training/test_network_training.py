from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training.datasets import BinaryData
from training.defects import CellDefect, DefectMap, DefectStatistics
from training.evaluation import (
    _deviation_scores,
    error_rates,
    evaluate_on_dies,
    software_error,
)
from training.experiment import ExperimentConfig
from training.mapping import (
    ArrayLayout,
    cells_from_defect_maps,
    cells_from_kinds,
    dies_deviations,
    dies_layers,
)
from training.network import BinaryNetwork, NetworkConfig, binarize, step
from training.placement import place, place_all
from training.sensitivity import loss_distribution
from training.trainers import SATConfig, TrainConfig, train_baseline, train_hat, train_sat

NC = NetworkConfig(sizes=(16, 6, 3))
LAYOUT = ArrayLayout.default((16, 6, 3), rows=20, cols=40)


def test_ste_gradients() -> None:
    w = torch.tensor([-2.0, -0.5, 0.5, 2.0], requires_grad=True)
    binarize(w).sum().backward()
    assert w.grad.tolist() == [0.0, 0.5, 0.5, 0.0]
    z = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    h = step(z, 1.0)
    assert h.tolist() == [0, 0, 0, 1, 1]
    h.sum().backward()
    assert z.grad.tolist() == [0.0, 0.5, 0.5, 0.5, 0.0]


def test_ideal_forward_is_crossbar_physics() -> None:
    net = BinaryNetwork(NC, seed=1)
    x = (torch.rand(20, 16) > 0.5).float()
    w1, w2 = (w[0] for w in net.binary_weights())
    want = ((x @ w1) > 0).float() @ w2
    torch.testing.assert_close(net(x)[0], want)
    cells = LAYOUT.layer_cells(cells_from_kinds(np.zeros((20, 40), np.int8), LAYOUT.device))
    assert torch.equal(net(x, cells)[0], want)  # exact: an output of exactly 0 reads as off


def test_training_noise_is_per_sample_and_shared_by_replicas() -> None:
    net = BinaryNetwork(NC, replicas=3, seed=1)
    net.load_binary([w[0] for w in BinaryNetwork(NC, seed=2).binary_weights()])
    x = torch.ones(8, 16)
    g = torch.Generator().manual_seed(0)
    a, b = net(x, noise_std=1.0, generator=g), net(x, noise_std=1.0, generator=g)
    assert a.shape == (3, 8, 3)
    assert torch.equal(a[0], a[1]) and torch.equal(a[0], a[2])  # one draw for all dies
    assert not torch.equal(a[0, 0], a[0, 1])  # per sample
    assert not torch.equal(a, b)  # fresh noise at every call


def test_baseline_learns_and_is_seeded(toy_data: BinaryData) -> None:
    cfg = TrainConfig(epochs=8, batch_size=32, lr=0.02)
    a = train_baseline(toy_data, NC, cfg, seed=3)
    b = train_baseline(toy_data, NC, cfg, seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights, strict=True))
    assert software_error(a.weights, toy_data.x_test, toy_data.y_test, NC) < 30  # chance: 67
    with pytest.raises(ValueError, match=r"shape \(n >= 1, 10\) for the network, got \(\d+, 16"):
        train_baseline(toy_data, NetworkConfig(sizes=(10, 4, 3)), cfg)


# the resistances where the float32 and double scales round a device differently (found by
# search; with one replica the two scales agree: a control case)
@pytest.mark.parametrize(("replicas", "ohm"), [(1, 1141.0001220703125),
                                               (3, 1141.0001220703125),
                                               (6, 1100.385009765625)])
def test_both_paths_quantize_a_measured_device_alike(replicas: int, ohm: float) -> None:
    """With 3 row replicas the sparse path once rounded 1/(unit x replicas) in float32, the
    dense path in double: a short measured at 1141.0001 ohm then read 2.1729 on one path and
    2.1719 on the other, and the die's error was 100 % on one, 0 % on the other."""
    nc = NetworkConfig(sizes=(1, 1, 2))
    lay = ArrayLayout.default((1, 1, 2), rows=6, cols=40, row_replicas=[1, replicas])
    kinds, r = np.zeros((6, 40), np.int8), np.zeros((6, 40), np.float32)
    kinds[0, 2], r[0, 2] = CellDefect.SHORT, ohm  # class 0's plus device
    kinds[0, 4], r[0, 4] = CellDefect.SHORT, 1141.0  # class 1's
    cells = cells_from_defect_maps([DefectMap(kinds, r)], lay.device)
    w = [torch.ones(1, 1), -torch.ones(1, 2)]
    x, y = torch.ones(1, 1), torch.zeros(1, dtype=torch.long)
    dense = BinaryNetwork(nc)
    dense.load_binary(w)
    assert torch.equal(_deviation_scores(w, x, dies_deviations(lay, cells), nc),
                       dense(x, dies_layers(lay, cells)))
    np.testing.assert_array_equal(evaluate_on_dies(w, x, y, lay, cells, nc).per_die,
                                  error_rates(w, x, y, nc, dies_layers(lay, cells)))


def test_resistances_of_ohms_take_the_dense_path() -> None:
    """Shorts read at fractions of an ohm (thousands of weight units) would make float32 sums
    inexact: the sparse path declines them, so both evaluations give the dense result."""
    kw = {"output_copies": 2, "copy_combine": "median", "readout": "common_mode",
          "output_reads": 3}
    nc = NetworkConfig(sizes=(7, 9, 2), **kw)
    lay = ArrayLayout.default((7, 9, 2), rows=16, cols=44, row_replicas=[2, 1], **kw)
    kinds, r = np.zeros((16, 44), np.int8), np.zeros((16, 44), np.float32)
    kinds[[0, 3, 5, 8], 20] = CellDefect.SHORT
    r[[0, 3, 5, 8], 20] = [0.559, 0.0508, 0.060, 0.263]
    cells = cells_from_defect_maps([DefectMap(kinds, r)], lay.device)
    assert dies_deviations(lay, cells) is None
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(64, 7, generator=g) > 0.5).float(), torch.randint(0, 2, (64,), generator=g)
    w = [torch.where(torch.rand(7, 9, generator=g) > 0.5, 1.0, -1.0),
         torch.where(torch.rand(9, 4, generator=g) > 0.5, 1.0, -1.0)]
    np.testing.assert_array_equal(evaluate_on_dies(w, x, y, lay, cells, nc).per_die,
                                  error_rates(w, x, y, nc, dies_layers(lay, cells)))
    r[[0, 3, 5, 8], 20] = 1150.0
    assert dies_deviations(lay, cells_from_defect_maps([DefectMap(kinds, r)], lay.device))


def test_evaluation_and_placement_name_bad_shapes() -> None:
    """Each was a shape error from deep inside torch (or, for labels beyond the classes and a
    layout of another network without defects, a silent 100 % or 0 %)."""
    nc = NetworkConfig(sizes=(16, 6, 3))
    cells = cells_from_defect_maps([random_map(rows=20, cols=40, rate=0.02, seed=0)],
                                   LAYOUT.device)
    lay = ArrayLayout.default((16, 6, 3), rows=20, cols=40)
    w = [torch.ones(16, 6), torch.ones(6, 3)]
    x, y = torch.ones(4, 16), torch.zeros(4, dtype=torch.long)
    for xx, yy, message in (
            (torch.ones(4, 15), y, r"inputs must have shape \(n >= 1, 16\).*got \(4, 15\)"),
            (x[:0], y[:0], r"got \(0, 16\)"),
            (x, y[:3], r"4 inputs need 4 labels, got labels of shape \(3,\)"),
            (x, y + 7, r"labels span 7..7, the network has 3 classes")):
        with pytest.raises(ValueError, match=message):
            evaluate_on_dies(w, xx, yy, lay, cells, nc)
        with pytest.raises(ValueError, match=message):
            place(w, cells, lay, xx, yy, nc)
    other = ArrayLayout.default((16, 5, 3), rows=20, cols=40)
    with pytest.raises(ValueError, match=r"layout holds a network of sizes \(16, 5, 3\)"):
        evaluate_on_dies(w, x, y, other, cells, nc)


def _shorted_output_maps(n: int) -> list:
    maps = []
    for s in range(n):
        m = random_map(rows=20, cols=40, rate=0.01, seed=s)
        m.kinds[:6, 12 + 2 * (s % 3)] = CellDefect.SHORT  # plus column of one class
        maps.append(m)
    return maps


def test_hat_batched_recovers(toy_data: BinaryData) -> None:
    base = train_baseline(toy_data, NC, TrainConfig(epochs=8, batch_size=32, lr=0.02), seed=0)
    maps = _shorted_output_maps(3)
    cells = cells_from_defect_maps(maps, LAYOUT.device)
    xt, yt = toy_data.x_test, toy_data.y_test
    unaware = evaluate_on_dies(base.weights, xt, yt, LAYOUT, cells, NC)
    hat = train_hat(toy_data, LAYOUT, cells, NC, TrainConfig(epochs=8, batch_size=32, lr=0.02),
                    seed=0, init=base.weights)
    assert hat.weights[0].shape == (3, 16, 6)
    per_die = error_rates(hat.weights, xt, yt, NC, LAYOUT.layer_cells(cells))
    assert per_die.shape == (3,)
    assert per_die.mean() < unaware.mean - 5


@pytest.mark.parametrize(("readout", "reads"), [("diff", 1), ("common_mode", 1),
                                               ("common_mode", 3)])
def test_evaluation_sparse_path_equals_dense_forward(readout: str, reads: int) -> None:
    """The sparse evaluation path gives bit-identical class scores to the network's dense
    forward pass, for one layout and for one layout per die, on dense random defects (the
    output layer read whole or in parts)."""
    nc = NetworkConfig(sizes=(16, 6, 3), output_copies=2, readout=readout, output_reads=reads)
    lay = ArrayLayout.default((16, 6, 3), rows=20, cols=40, output_copies=2, readout=readout,
                              output_reads=reads)
    g = torch.Generator().manual_seed(0)
    maps = [random_map(rows=20, cols=40, rate=0.04, seed=s) for s in range(5)]
    for m in maps[:2]:
        m.kinds[:5, 3] = CellDefect.SHORT  # hidden neuron 1's plus column
        m.kinds[2, 26:30] = CellDefect.OPEN  # output pairs
    cells = cells_from_defect_maps(maps, lay.device)
    x = (torch.rand(300, 16, generator=g) > 0.5).float()
    y = torch.randint(0, 3, (300,), generator=g)
    w = [torch.where(torch.rand(16, 6, generator=g) > 0.5, 1.0, -1.0),
         torch.where(torch.rand(6, 6, generator=g) > 0.5, 1.0, -1.0)]
    shifted = lay.with_layers([replace(lay.layers[0], plus_cols=lay.layers[0].plus_cols + 1,
                                       minus_cols=lay.layers[0].minus_cols - 1),
                               lay.layers[1]])
    for layout in (lay, [lay, shifted, lay, shifted, lay]):
        devs = dies_deviations(layout, cells)
        assert devs is not None
        fast = _deviation_scores(w, x, devs, nc)
        dense = BinaryNetwork(nc)
        dense.load_binary(w)
        want = dense(x, dies_layers(layout, cells))
        assert torch.equal(fast, want)
        e = evaluate_on_dies(w, x, y, layout, cells, nc, 1.0)
        np.testing.assert_array_equal(
            e.per_die, 100.0 * (want.argmax(-1) != y).sum(-1).double().numpy() / 300)
        assert e.min <= e.median <= e.max and e.gap_pp == pytest.approx(e.mean - 1.0)


def test_sat_and_sensitivity(toy_data: BinaryData) -> None:
    stats = DefectStatistics.fit(_shorted_output_maps(6))
    base = train_baseline(toy_data, NC, TrainConfig(epochs=6, batch_size=32, lr=0.02), seed=0)
    cfg = SATConfig(epochs=6, batch_size=32, lr=0.02, maps_per_batch=4, prefetch_steps=4)
    sat = train_sat(toy_data, LAYOUT, stats, NC, cfg, seed=0, init=base.weights)
    again = train_sat(toy_data, LAYOUT, stats, NC, cfg, seed=0, init=base.weights)
    assert all(torch.equal(u, v) for u, v in zip(sat.weights, again.weights, strict=True))
    xt, yt = toy_data.x_test, toy_data.y_test
    ld = loss_distribution(sat.weights, xt, yt, LAYOUT, stats, NC, n_maps=20, batch_maps=7)
    assert ld.losses.shape == (20,) and ld.std >= 0 and ld.iqr >= 0
    bad = stats.model_copy(update={"rows": 10})
    with pytest.raises(ValueError, match="10 x 40"):
        train_sat(toy_data, LAYOUT, bad, NC, cfg)


def test_placement_avoids_shorted_output_column(toy_data: BinaryData) -> None:
    base = train_baseline(toy_data, NC, TrainConfig(epochs=8, batch_size=32, lr=0.02), seed=0)
    m = random_map(rows=20, cols=40, rate=0.0)
    m.kinds[:, 12] = CellDefect.SHORT  # whole plus column of output 0 shorted
    cells = cells_from_defect_maps([m], LAYOUT.device)
    xt, yt = toy_data.x_test, toy_data.y_test
    lo = place(base.weights, cells, LAYOUT, toy_data.x_train, toy_data.y_train, NC)
    assert 12 not in lo.layers[1].cols and 12 not in lo.layers[1].cols
    assert lo.layers[0].n_out == 6 and lo.layers[1].n_in == 6
    placed = evaluate_on_dies(base.weights, xt, yt, [lo], cells, NC)
    unaware = evaluate_on_dies(base.weights, xt, yt, LAYOUT, cells, NC)
    assert placed.mean < unaware.mean
    assert placed.mean <= software_error(base.weights, xt, yt, NC) + 2
    assert len(place_all(base.weights, cells, LAYOUT, xt, yt, NC)) == 1
    # the placed layout still programs and runs as a layout
    states = lo.target_states([w[0] for w in base.weights])
    assert (states[:, 12] == 2).all()


def test_labels_beyond_the_networks_classes_are_refused(toy_data: BinaryData) -> None:
    net = NetworkConfig(sizes=(toy_data.n_inputs, 8, 2))  # toy labels are 0..2
    with pytest.raises(ValueError, match=r"training data: labels span 0\.\.\d, the network has 2 "
                                         r"classes"):
        train_baseline(toy_data, net, TrainConfig(epochs=1))


def test_network_and_experiment_shapes_are_refused_up_front() -> None:
    with pytest.raises(ValueError, match="at least 2 items"):
        NetworkConfig(sizes=(100,))
    with pytest.raises(ValueError, match="two layers"):
        ExperimentConfig(network=NetworkConfig(sizes=(100, 40, 30, 10)))


def test_min_steps_adds_epochs_on_a_small_data_set(toy_data: BinaryData) -> None:
    """600 digits in batches of 128 are 4 steps an epoch: 2 epochs would be 8 updates."""
    net = NetworkConfig(sizes=(toy_data.n_inputs, 8, 3))
    short = train_baseline(toy_data, net, TrainConfig(epochs=2), seed=0)
    long = train_baseline(toy_data, net, TrainConfig(epochs=2, min_steps=40), seed=0)
    assert (len(short.losses), len(long.losses)) == (2, 10)
    big = train_baseline(toy_data, net, TrainConfig(epochs=2, min_steps=5), seed=0)
    assert len(big.losses) == 2  # the epochs already give more steps
