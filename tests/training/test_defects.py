from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.conftest import random_map
from training.defects import CellDefect, DefectMap, DefectStatistics, failed_lines


def test_codes_match_contract() -> None:
    assert [int(c) for c in CellDefect] == [0, 1, 2, 3, 4]
    assert CellDefect.SHORT == 1 and CellDefect.STUCK_AP == 4


def test_defect_map_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        DefectMap(np.zeros((2, 3, 4), np.int8))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)|differs"):
        DefectMap(np.zeros((2, 4), np.int8), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="codes outside"):
        DefectMap(np.full((2, 2), 7, np.int8))
    with pytest.raises(ValueError, match="integer codes, got float64"):
        DefectMap(np.array([[0.0, np.nan], [1.5, 2.0]]))  # NaN would cast to OK
    m = DefectMap(np.zeros((2, 4), np.int8))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(100, 200\)"):
        m.check_shape((100, 200))
    for bad in (np.nan, -5.0):  # a reading that is no resistance: refused, with its place
        r = np.zeros((2, 4), np.float32)
        r[1, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or negative.*row 1, col 2"):
            DefectMap(np.zeros((2, 4), np.int8), r)
    DefectMap(np.full((2, 4), int(CellDefect.OPEN), np.int8), np.full((2, 4), np.inf))


def test_failed_lines_detected() -> None:
    m = random_map(failed_row=3, seed=1)
    rows, cols = failed_lines(m.kinds)
    assert rows == [(3, int(CellDefect.OPEN))] and cols == []
    kinds = m.kinds.copy()
    kinds[:, 7] = int(CellDefect.SHORT)  # a failed column crossing the failed row
    assert failed_lines(kinds) == ([(3, int(CellDefect.OPEN))], [(7, int(CellDefect.SHORT))])
    for bad in (0.5, 0.0, 1.5):  # at or below half a line could be two kinds at once
        with pytest.raises(ValueError, match=r"\(0.5, 1\]"):
            failed_lines(kinds, bad)


def test_a_dead_die_counts_each_cell_for_one_line_only(small_maps: list[DefectMap]) -> None:
    """An all-open die is 20 failed rows, not 20 rows and 40 columns (which the sampler would
    then put on every die, doubling the wafer's open cells)."""
    dead = DefectMap(np.full((20, 40), int(CellDefect.OPEN), np.int8))
    assert failed_lines(dead.kinds) == ([(i, int(CellDefect.OPEN)) for i in range(20)], [])
    maps = [*small_maps, dead]
    st = DefectStatistics.fit(maps)
    assert st.failed_cols_per_die == 0
    observed = np.mean([(m.kinds == CellDefect.OPEN).mean() for m in maps])
    kinds, _ = st.sample_sparse(400, seed=0).dense()
    sampled = float((kinds == int(CellDefect.OPEN)).float().mean())
    assert sampled == pytest.approx(observed, rel=0.35), (sampled, observed)


def test_fit_uses_measured_resistances_only(small_maps: list[DefectMap]) -> None:
    """Unmeasured (0) or open-circuit (inf) readings do not enter the fitted resistances."""
    kinds = np.zeros((20, 40), np.int8)
    kinds[0, :10] = int(CellDefect.SHORT)
    r = np.where(kinds == CellDefect.SHORT, 1150.0, 0.0).astype(np.float32)
    r[0, 0], r[0, 1] = 0.0, np.inf
    st = DefectStatistics.fit([DefectMap(kinds, r)])
    assert st.short_log_r_mean == pytest.approx(np.log(1150.0))
    assert st.short_log_r_std == pytest.approx(0.0, abs=1e-6)


def test_fit_rates_and_lines(small_maps: list[DefectMap]) -> None:
    st = DefectStatistics.fit(small_maps)
    assert st.n_maps == 6 and (st.rows, st.cols) == (20, 40)
    assert st.failed_rows_per_die == pytest.approx(0.5)
    assert st.failed_cols_per_die == 0
    # rates exclude the failed rows: about 5 % spread over 4 kinds
    assert 0.03 < sum(st.rate_mean) < 0.07
    assert all(s >= 0 for s in st.rate_std)
    assert 1020 < np.exp(st.short_log_r_mean) < 1300
    with pytest.raises(ValueError, match="shape"):
        DefectStatistics.fit([small_maps[0], DefectMap(np.zeros((5, 5), np.int8))])
    with pytest.raises(ValueError, match="at least one"):
        DefectStatistics.fit([])


def test_sampler_reproduces_statistics(small_maps: list[DefectMap]) -> None:
    st = DefectStatistics.fit(small_maps)
    kinds, r = st.sample(400, seed=3)
    assert kinds.shape == (400, 20, 40) and kinds.dtype == torch.int8
    assert r.shape == kinds.shape
    full_rows = (kinds == CellDefect.OPEN).all(dim=2).sum().item() / 400
    assert 0.35 < full_rows < 0.65  # Poisson(0.5) failed rows per die
    inner = kinds[~(kinds == CellDefect.OPEN).all(dim=2)[:, :, None].expand_as(kinds)]
    rate = (inner > 0).float().mean().item()
    assert rate == pytest.approx(sum(st.rate_mean), rel=0.15)
    shorts = r[kinds == CellDefect.SHORT]
    assert shorts.numel() > 0 and (shorts > 500).all() and (shorts < 3000).all()
    assert (r[kinds == CellDefect.OK] == 0).all()


def test_sampler_seeded(small_maps: list[DefectMap]) -> None:
    st = DefectStatistics.fit(small_maps)
    a, _ = st.sample(5, seed=1)
    b, _ = st.sample(5, seed=1)
    c, _ = st.sample(5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for mode in ("empirical", "lognormal"):
        st2 = st.model_copy(update={"mode": mode})
        k, _ = st2.sample(50, seed=0, scale=0.0)
        assert (k[~(k == CellDefect.OPEN).all(dim=2)[:, :, None].expand_as(k)] == 0).all()


def test_statistics_json_roundtrip(small_maps: list[DefectMap]) -> None:
    st = DefectStatistics.fit(small_maps)
    again = DefectStatistics.model_validate_json(st.model_dump_json())
    assert again == st


def test_unusable_maps_and_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one cell, got shape"):
        DefectMap(np.zeros((0, 5), np.int8))  # fit() divided by zero on it
    stats = DefectStatistics.fit([random_map(rows=10, cols=10, rate=0.05, seed=0)])
    data = stats.model_dump()
    for change, message in (
            ({"die_rates": []}, "die_rates needs at least one row of 4 rates"),
            ({"die_rates": [[0.1, 0.0]]}, "die_rates needs at least one row of 4 rates"),
            ({"line_kind_fractions": [1.0]}, "line_kind_fractions needs 4 values"),
            ({"rate_mean": [0.1, 0.0, 0.0]}, "rate_mean needs 4 values"),
            ({"die_rates": [[-0.1, 0.0, 0.0, 0.0]]}, r"must lie in \[0, 1\]"),
            ({"failed_rows_per_die": 1.0, "line_kind_fractions": [0.0] * 4},
             "do not all vanish"),
            ({"short_log_r_mean": float("nan")}, "finite number")):
        with pytest.raises(ValueError, match=message):
            DefectStatistics.model_validate({**data, **change})
    for scale in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rate scale must be a finite number >= 0"):
            stats.sample_sparse(2, seed=0, scale=scale)
