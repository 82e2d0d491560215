"""Defect-aware placement (rows, pairs, spare rows) and the experiment orchestration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training.datasets import BinaryData
from training.defects import CellDefect
from training.evaluation import error_rates, evaluate_on_dies
from training.experiment import ExperimentConfig, prepare, train_all
from training.mapping import ArrayLayout, DeviceModel, cells_from_defect_maps
from training.network import NetworkConfig
from training.placement import PlacementConfig, place
from training.trainers import SATConfig, TrainConfig, train_baseline

NC = NetworkConfig(sizes=(16, 5, 3))
LAYOUT = ArrayLayout.default((16, 5, 3), rows=20, cols=40)  # 4 spare rows, 12 spare pairs


@pytest.fixture(scope="module")
def base(toy_data: BinaryData) -> list[torch.Tensor]:
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.02)
    return train_baseline(toy_data, NC, cfg, seed=0).weights


def _used_cells(lo: ArrayLayout) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(lp.rows.ravel(), lp.cols) for lp in lo.layers]


def test_placement_is_valid_and_deterministic(toy_data: BinaryData, base) -> None:
    cells = cells_from_defect_maps([random_map(rows=20, cols=40, rate=0.04, seed=3)],
                                   LAYOUT.device)
    x, y = toy_data.x_train, toy_data.y_train
    a = place(base, cells, LAYOUT, x, y, NC)
    b = place(base, cells, LAYOUT, x, y, NC)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(la.rows, lb.rows) and np.array_equal(la.plus_cols, lb.plus_cols)
    l1, l2 = a.layers
    assert np.unique(l1.rows).size == 16 and l1.rows.max() < 20  # one row per input
    assert np.unique(l2.rows).size == 5 and l2.rows.max() < 20
    assert np.unique(np.concatenate([l1.cols, l2.cols])).size == 2 * (5 + 3)
    assert np.array_equal(l1.minus_cols, l1.plus_cols + 1) and (l1.plus_cols % 2 == 0).all()
    assert a.sizes == LAYOUT.sizes  # ArrayLayout.__post_init__ also checked overlaps


def test_weights_of_the_wrong_shape_are_refused_not_reshaped(toy_data: BinaryData,
                                                             base) -> None:
    """Transposed weights have the right number of elements: a reshape would evaluate other
    weights. Placement, the loss distribution and the evaluation name the shapes instead."""
    from pydantic import ValidationError

    from training.defects import DefectStatistics
    from training.sensitivity import loss_distribution

    maps = [random_map(rows=20, cols=40, rate=0.04, seed=3)]
    cells = cells_from_defect_maps(maps, LAYOUT.device)
    stats = DefectStatistics.fit(maps)
    x, y = toy_data.x_test, toy_data.y_test
    flipped = [w[0].T.contiguous() for w in base]  # base: (1, n_in, n_out) per layer
    shapes = r"weights of shapes \[\(5, 16\), \(3, 5\)\] for a network of layers"
    with pytest.raises(ValueError, match=shapes):
        place(flipped, cells, LAYOUT, x, y, NC)
    with pytest.raises(ValueError, match=shapes):
        loss_distribution(flipped, x, y, LAYOUT, stats, NC, n_maps=4)
    with pytest.raises(ValueError, match=shapes):
        evaluate_on_dies(flipped, x, y, LAYOUT, cells, NC)
    with pytest.raises(ValueError, match="at least 1"):
        loss_distribution(base, x, y, LAYOUT, stats, NC, n_maps=0)
    with pytest.raises(ValidationError, match="max_samples"):
        place(base, cells, LAYOUT, x, y, NC, max_samples=0)
    plain = [w[0] for w in base]  # (n_in, n_out) or (1, n_in, n_out): the same set
    assert np.array_equal(loss_distribution(plain, x, y, LAYOUT, stats, NC, n_maps=3).losses,
                          loss_distribution(base, x, y, LAYOUT, stats, NC, n_maps=3).losses)


def test_placement_skips_shorted_rows_when_spare_rows_exist(toy_data: BinaryData,
                                                            base) -> None:
    m = random_map(rows=20, cols=40, rate=0.0)
    # shorts on rows 0-3 in every column: 4 rows are spare, so none of them may be driven
    m.kinds[0:4, :] = CellDefect.SHORT
    m.resistance_ohm[0:4, :] = 1100.0
    cells = cells_from_defect_maps([m], LAYOUT.device)
    lo = place(base, cells, LAYOUT, toy_data.x_train, toy_data.y_train, NC)
    for rows, _cols in _used_cells(lo):
        assert not np.isin(rows, [0, 1, 2, 3]).any()
    xt, yt = toy_data.x_test, toy_data.y_test
    placed = evaluate_on_dies(base, xt, yt, [lo], cells, NC)
    ideal = error_rates(base, xt, yt, NC)
    assert placed.mean == pytest.approx(float(ideal[0]))


def test_inactive_inputs_take_the_worst_rows(toy_data: BinaryData, base) -> None:
    x = toy_data.x_train.clone()
    x[:, 7] = 0.0  # input 7 never on
    m = random_map(rows=20, cols=40, rate=0.0)
    m.kinds[:, :] = CellDefect.OK
    m.kinds[11, :30] = CellDefect.SHORT  # row 11: shorts in many columns
    cells = cells_from_defect_maps([m], LAYOUT.device)
    cfg = PlacementConfig(assign_output_rows=False)
    lo = place(base, cells, LAYOUT, x, toy_data.y_train, NC, config=cfg)
    # with 4 spare rows the shorted row is left undriven; without spares the dead input takes it
    assert 11 not in lo.layers[0].rows
    tight = ArrayLayout.default((16, 5, 3), rows=16, cols=40)
    m16 = random_map(rows=16, cols=40, rate=0.0)
    m16.kinds[11, :30] = CellDefect.SHORT
    lo16 = place(base, cells_from_defect_maps([m16], tight.device), tight, x,
                 toy_data.y_train, NC, config=cfg)
    assert lo16.layers[0].rows[7, 0] == 11


def test_train_all_and_programs(toy_data: BinaryData, small_maps) -> None:
    cfg = ExperimentConfig.small().model_copy(update={
        "network": NC,
        "baseline": TrainConfig(epochs=3, batch_size=32, lr=0.02),
        "hat": TrainConfig(epochs=1, batch_size=32, lr=0.01),
        "sat": SATConfig(epochs=1, batch_size=32, lr=0.01, maps_per_batch=4,
                         prefetch_steps=4)})
    messages: list[str] = []
    sol = train_all(toy_data, small_maps, DeviceModel(), cfg, seed=0, progress=messages.append)
    assert messages and sol.n_dies == len(small_maps)
    assert sol.hat.weights[0].shape == (len(small_maps), 16, 5)
    for method in ("unaware", "hat", "sat", "placed"):
        w, lo = sol.programs(method, 2)
        assert [t.shape for t in w] == [(16, 5), (5, 3)]
        states = lo.target_states(w)
        assert states.shape == (20, 40)
    assert sol.programs("placed", 1)[1] is sol.placed[1]
    with pytest.raises(ValueError, match="unknown method"):
        sol.programs("magic", 0)
    with pytest.raises(IndexError):
        sol.programs("hat", len(small_maps))
    assert 0 <= sol.baseline_error_pct <= 100


def test_an_array_placement_cannot_rewire_is_refused_before_training() -> None:
    """An odd-width array: `train --method sat` trained the baseline and SAT, then failed in
    placement and kept nothing."""
    config = ExperimentConfig(network=NetworkConfig(sizes=(16, 6, 3)))
    maps = [random_map(rows=20, cols=41, rate=0.02, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="needs an even width, it has 41 columns"):
        prepare(maps, DeviceModel(), config)
    assert prepare(maps, DeviceModel(), config, placement=False).layout.cols == 41
