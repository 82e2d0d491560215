"""The numpy wafer model: reads, writes, breakdown, defect statistics, seeding, config."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from simulated_hw import DefectConfig, DeviceConfig, SimulatedWafer, WaferConfig, WriteConfig
from simulated_hw.physics import AP, SKIP, Defect, P

from .conftest import classify, healthy

NOMINAL_V = WriteConfig().nominal_pulse_v
NOMINAL_W = WriteConfig().nominal_pulse_width_s
Z = 5.0  # tolerance in binomial standard deviations


def binomial_tol(p: float, n: int) -> float:
    """Z standard deviations of a binomial proportion, plus one count for discreteness."""
    return Z * np.sqrt(p * (1 - p) / n) + 1.0 / n


def no_lines(**defects: float) -> DefectConfig:
    """Defect config without failed rows/columns (they would bias per-cell statistics)."""
    return DefectConfig(failed_row_probability=0.0, failed_col_probability=0.0, **defects)


def program(wafer: SimulatedWafer, die: int, targets: np.ndarray, pulses: int = 4) -> None:
    for _ in range(pulses):
        wafer.write(die, targets, NOMINAL_V, NOMINAL_W)


# ---- reads and writes ---------------------------------------------------------------------
@pytest.mark.parametrize("state", [P, AP])
def test_uniform_state_reads_back(state: int) -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    program(wafer, 3, np.full(wafer.shape, state, dtype=np.uint8))
    ok = healthy(wafer, 3)
    assert (wafer.true_states(3)[ok] == state).all()
    read = classify(wafer.read(3, 0.1), wafer, 3)
    assert (read[ok] == wafer.true_states(3)[ok]).all()


def test_random_pattern_reads_back_on_every_die() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=1)
    rng = np.random.default_rng(5)
    for die in range(0, wafer.n_dies, 7):
        targets = rng.integers(0, 2, wafer.shape, dtype=np.uint8)
        program(wafer, die, targets)
        ok = healthy(wafer, die)
        assert (wafer.true_states(die)[ok] == targets[ok]).all()
        read = classify(wafer.read(die, 0.1), wafer, die)
        assert (read[ok] == targets[ok]).all(), f"die {die}"


def test_state_is_kept_and_skip_leaves_cells_alone() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    program(wafer, 0, np.zeros(wafer.shape, dtype=np.uint8))
    targets = np.full(wafer.shape, SKIP, dtype=np.uint8)
    targets[:, :50] = AP
    program(wafer, 0, targets)
    states = wafer.true_states(0)
    assert (states[:, :50] == AP).all()
    assert (states[:, 50:] == P).all()
    # Reads do not disturb the stored state.
    for _ in range(3):
        wafer.read(0, 0.1)
    assert (wafer.true_states(0) == states).all()


def test_read_noise_is_the_configured_relative_gaussian() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    _, true_r = wafer.true_defects(0)
    rel = wafer.read(0, 0.1) / true_r.astype(np.float64) - 1.0
    assert abs(rel.std() - 0.01) < 0.0005
    assert abs(rel.mean()) < 0.0005


def test_healthy_resistances_follow_the_device_config() -> None:
    dev = DeviceConfig()
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    d = wafer.dies[0]
    assert np.median(d.r_p) == pytest.approx(dev.r_p_median_ohm, rel=0.01)
    assert np.log(d.r_p).std() == pytest.approx(dev.r_p_sigma_log, rel=0.05)
    tmr = d.r_ap / d.r_p - 1
    assert tmr.mean() == pytest.approx(dev.tmr_mean, rel=0.01)
    assert tmr.min() >= dev.tmr_min
    assert np.mean(d.r_access) == pytest.approx(dev.r_access_ohm, rel=0.01)


# ---- switching ----------------------------------------------------------------------------
def test_write_error_rate_at_nominal_pulse() -> None:
    cfg = WaferConfig(grid_cols=1, grid_rows=1, rows=1000, cols=1000,
                      defects=DefectConfig(mean_defect_rate=0.0))
    wafer = SimulatedWafer(cfg, seed=0)
    n = cfg.rows * cfg.cols
    failures = 0
    for _ in range(2):  # 2 million switching attempts, each cell needs to flip
        targets = 1 - wafer.true_states(0)
        wafer.write(0, targets, NOMINAL_V, NOMINAL_W)
        failures += int((wafer.true_states(0) != targets).sum())
    wer = cfg.write.write_error_rate_nominal
    assert abs(failures / (2 * n) - wer) <= binomial_tol(wer, 2 * n)
    assert wafer.switching_probability(NOMINAL_V, NOMINAL_W) == pytest.approx(1 - wer)


def test_write_error_rate_follows_a_configured_value() -> None:
    cfg = WaferConfig(grid_cols=1, grid_rows=1, rows=500, cols=1000,
                      write=WriteConfig(write_error_rate_nominal=0.02),
                      defects=DefectConfig(mean_defect_rate=0.0))
    wafer = SimulatedWafer(cfg, seed=4)
    targets = 1 - wafer.true_states(0)
    wafer.write(0, targets, NOMINAL_V, NOMINAL_W)
    n = cfg.rows * cfg.cols
    assert abs((wafer.true_states(0) != targets).mean() - 0.02) <= binomial_tol(0.02, n)


def measured_switching(amplitude_v: float, width_s: float, seed: int) -> tuple[float, float]:
    """(fraction of cells that switched, model's probability) for one pulse on 200k cells."""
    cfg = WaferConfig(grid_cols=1, grid_rows=1, rows=400, cols=500,
                      defects=DefectConfig(mean_defect_rate=0.0))
    wafer = SimulatedWafer(cfg, seed=seed)
    targets = 1 - wafer.true_states(0)
    wafer.write(0, targets, amplitude_v, width_s)
    return float((wafer.true_states(0) == targets).mean()), wafer.switching_probability(
        amplitude_v, width_s)


def test_switching_probability_rises_with_amplitude() -> None:
    amplitudes = [0.4, 0.5, 0.6, 0.7, 0.8]
    measured, model = zip(*(measured_switching(v, NOMINAL_W, i) for i, v in
                            enumerate(amplitudes)), strict=True)
    assert all(np.diff(measured) > 0), measured
    for m, p in zip(measured, model, strict=True):
        assert abs(m - p) <= binomial_tol(p, 200_000)
    assert measured[0] < 0.05 < 0.5 < measured[-1]


def test_switching_probability_rises_with_width() -> None:
    widths = [2e-9, 5e-9, 10e-9, 20e-9, 50e-9]
    measured, model = zip(*(measured_switching(0.6, w, 10 + i) for i, w in enumerate(widths)),
                          strict=True)
    assert all(np.diff(measured) > 0), measured
    for m, p in zip(measured, model, strict=True):
        assert abs(m - p) <= binomial_tol(p, 200_000)


def test_no_pulse_no_switching() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    assert wafer.switching_probability(0.0, NOMINAL_W) == 0.0
    assert wafer.switching_probability(NOMINAL_V, 0.0) == 0.0
    before = wafer.true_states(0)
    wafer.write(0, 1 - before, 0.0, NOMINAL_W)
    assert (wafer.true_states(0) == before).all()


# ---- breakdown ----------------------------------------------------------------------------
def test_pulse_above_breakdown_makes_permanent_shorts() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    cfg = wafer.config
    before = wafer.true_defects(0)[0]
    was_short = before == Defect.SHORT
    targets = np.full(wafer.shape, SKIP, dtype=np.uint8)
    targets[10:20, 30:40] = AP
    targets[10:20, 40:50] = P
    wafer.write(0, targets, cfg.write.breakdown_v + 0.05, NOMINAL_W)

    defects, true_r = wafer.true_defects(0)
    hit = targets != SKIP
    assert (defects[hit] == Defect.SHORT).all()
    assert wafer.dies[0].broken_down == int((hit & ~was_short).sum())
    assert (defects[~hit] == before[~hit]).all()
    r_access = wafer.dies[0].r_access[hit]
    assert (true_r[hit] <= r_access + cfg.defects.r_short_max_ohm + 1).all()
    assert (true_r[hit] >= r_access + cfg.defects.r_short_min_ohm - 1).all()
    assert wafer.max_pulse_v() == pytest.approx(cfg.write.breakdown_v + 0.05)

    # Later ordinary writes, in both directions, do not heal them.
    for state in (P, AP, P):
        program(wafer, 0, np.full(wafer.shape, state, dtype=np.uint8), pulses=2)
    assert (wafer.true_defects(0)[0][hit] == Defect.SHORT).all()
    read = wafer.read(0, 0.1)
    assert (read[hit] < 1.5 * cfg.device.r_access_ohm).all()
    # Other dies are unaffected.
    assert wafer.dies[1].broken_down == 0


def test_breakdown_counts_fresh_cells_only() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    v = wafer.config.write.breakdown_v + 0.1
    targets = np.full(wafer.shape, SKIP, dtype=np.uint8)
    targets[0, :] = P
    row = wafer.true_defects(0)[0][0]
    barrier_gone = int(np.isin(row, (Defect.SHORT, Defect.OPEN)).sum())
    wafer.write(0, targets, v, NOMINAL_W)
    assert wafer.dies[0].broken_down == wafer.config.cols - barrier_gone
    wafer.write(0, targets, v, NOMINAL_W)
    assert wafer.dies[0].broken_down == wafer.config.cols - barrier_gone


def test_breakdown_leaves_open_cells_and_broken_lines_open() -> None:
    """An open cell has no barrier left to break down: an over-voltage pulse must not make a
    broken line conduct."""
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    opens = wafer.true_defects(0)[0] == Defect.OPEN
    assert opens.any()
    targets = np.where(opens, P, SKIP).astype(np.uint8)
    before = wafer.true_defects(0)[1][opens]
    wafer.write(0, targets, wafer.config.write.breakdown_v + 0.1, NOMINAL_W)
    defects, r = wafer.true_defects(0)
    assert (defects[opens] == Defect.OPEN).all()
    np.testing.assert_array_equal(r[opens], before)
    assert wafer.dies[0].broken_down == 0


def test_at_breakdown_voltage_cells_survive() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    before = wafer.true_defects(0)[0]
    wafer.write(0, np.zeros(wafer.shape, np.uint8), wafer.config.write.breakdown_v, NOMINAL_W)
    assert (wafer.true_defects(0)[0] == before).all()


# ---- defect kinds -------------------------------------------------------------------------
def rich_wafer(seed: int = 0) -> SimulatedWafer:
    """Many defects of every kind (10 % per die)."""
    return SimulatedWafer(WaferConfig(defects=DefectConfig(mean_defect_rate=0.1)), seed=seed)


@pytest.mark.parametrize(("kind", "state"), [(Defect.STUCK_P, P), (Defect.STUCK_AP, AP)])
def test_stuck_cells_ignore_writes(kind: Defect, state: int) -> None:
    wafer = rich_wafer()
    defects = wafer.true_defects(0)[0]
    stuck = defects == kind
    ok = defects == Defect.OK
    assert stuck.sum() > 50
    for target in (P, AP, 1 - state):
        program(wafer, 0, np.full(wafer.shape, target, dtype=np.uint8))
        read = classify(wafer.read(0, 0.1), wafer, 0)
        assert (read[stuck] == state).all()
        assert (read[ok] == target).all()


def test_open_cells_read_at_least_a_megaohm() -> None:
    wafer = rich_wafer()
    cfg = wafer.config.defects
    for die in range(0, wafer.n_dies, 5):
        defects, true_r = wafer.true_defects(die)
        opened = defects == Defect.OPEN
        assert opened.sum() > 50
        assert (true_r[opened] >= cfg.r_open_min_ohm).all()
        read = wafer.read(die, 0.1)[opened]
        # Read noise (1 %) can take a cell at the range's lower edge a few % below 1 MOhm.
        assert (read >= cfg.r_open_min_ohm * (1 - Z * 0.01)).all()
        assert np.median(read) > 10 * cfg.r_open_min_ohm
        assert (read <= 1.06 * (cfg.r_open_max_ohm + 2e3)).all()


def test_shorts_read_close_to_the_access_resistance() -> None:
    wafer = rich_wafer()
    cfg = wafer.config
    d = wafer.dies[0]
    short = d.defect == Defect.SHORT
    assert short.sum() > 100
    read = wafer.read(0, 0.1)[short]
    r_acc = d.r_access[short]
    assert (read >= (r_acc + cfg.defects.r_short_min_ohm) * (1 - Z * 0.01)).all()
    assert (read <= (r_acc + cfg.defects.r_short_max_ohm) * (1 + Z * 0.01)).all()
    assert read.max() < 0.5 * (d.r_p + d.r_access).min()


def test_short_conductance_dwarfs_healthy_cells() -> None:
    """A short passes several times a P cell's current (the reason HAT/SAT exist)."""
    wafer = rich_wafer()
    d = wafer.dies[0]
    short = d.defect == Defect.SHORT
    ok = d.defect == Defect.OK
    g = 1.0 / d.cell_resistance()
    assert np.median(g[short]) > 4 * np.median(g[ok & (d.state == P)])
    assert np.median(g[ok & (d.state == P)]) > 1.5 * np.median(g[ok & (d.state == AP)])


# ---- defect statistics ---------------------------------------------------------------------
def test_realised_defect_fraction_matches_each_die_rate() -> None:
    wafer = SimulatedWafer(WaferConfig(defects=no_lines()), seed=0)
    n = wafer.config.rows * wafer.config.cols
    for i, die in enumerate(wafer.dies):
        realised = float((die.defect != Defect.OK).mean())
        assert abs(realised - die.defect_rate) <= binomial_tol(die.defect_rate, n), f"die {i}"


def test_die_rates_spread_lognormally_around_the_wafer_mean() -> None:
    dfc = no_lines(bad_die_probability=0.0)
    cfg = WaferConfig(grid_cols=40, grid_rows=40, rows=1, cols=1, defects=dfc)
    rates = np.array([d.defect_rate for d in SimulatedWafer(cfg, seed=3).dies])
    # Mean preserving: E[rate] = mean_defect_rate; sd of the mean of 1600 lognormal draws.
    sd = dfc.mean_defect_rate * np.sqrt(np.exp(dfc.rate_sigma_log**2) - 1) / np.sqrt(rates.size)
    assert abs(rates.mean() - dfc.mean_defect_rate) <= Z * sd
    assert np.log(rates).std() == pytest.approx(dfc.rate_sigma_log, rel=0.1)
    assert rates.max() / rates.min() > 5  # wide die-to-die spread


def test_wafer_mean_over_many_dies_and_seeds_without_bad_dies() -> None:
    dfc = no_lines(bad_die_probability=0.0)
    cfg = WaferConfig(defects=dfc)
    total, n = 0, 0
    for seed in range(4):
        wafer = SimulatedWafer(cfg, seed=seed)
        total += sum(int((d.defect != Defect.OK).sum()) for d in wafer.dies)
        n += wafer.n_dies * cfg.rows * cfg.cols
    # Die-to-die spread dominates: 144 dies of lognormal(sigma=0.5) rates.
    sd = dfc.mean_defect_rate * np.sqrt(np.exp(dfc.rate_sigma_log**2) - 1) / np.sqrt(144)
    assert abs(total / n - dfc.mean_defect_rate) <= Z * sd


def test_bad_dies_multiply_the_rate() -> None:
    dfc = no_lines(rate_sigma_log=0.0, bad_die_probability=0.25, bad_die_rate_factor=4.0)
    cfg = WaferConfig(grid_cols=20, grid_rows=20, rows=1, cols=1, defects=dfc)
    rates = np.array([d.defect_rate for d in SimulatedWafer(cfg, seed=0).dies])
    base = 0.01 / (1 + 0.25 * 3.0)  # normalised so the expected wafer mean stays 1 %
    assert set(np.round(rates, 12)) == {round(base, 12), round(4 * base, 12)}
    bad = float((rates > 2 * base).mean())
    assert abs(bad - 0.25) <= binomial_tol(0.25, rates.size)


def test_default_wafer_mean_matches_mean_defect_rate() -> None:
    dfc = DefectConfig(failed_row_probability=0.0, failed_col_probability=0.0)
    cfg = WaferConfig(grid_cols=40, grid_rows=40, rows=1, cols=1, defects=dfc)
    rates = np.array([d.defect_rate for d in SimulatedWafer(cfg, seed=3).dies])
    assert rates.mean() == pytest.approx(dfc.mean_defect_rate, rel=0.05)


def test_defect_kind_fractions_match_the_config() -> None:
    dfc = no_lines(mean_defect_rate=0.05, fraction_short=0.4, fraction_open=0.3,
                   fraction_stuck_p=0.2, fraction_stuck_ap=0.1)
    wafer = SimulatedWafer(WaferConfig(defects=dfc), seed=2)
    codes = np.concatenate([d.defect.ravel() for d in wafer.dies])
    kinds = codes[codes != Defect.OK]
    assert kinds.size > 20_000
    for kind, expected in zip((Defect.SHORT, Defect.OPEN, Defect.STUCK_P, Defect.STUCK_AP),
                              dfc.fractions(), strict=True):
        share = float((kinds == kind).mean())
        assert abs(share - expected) <= binomial_tol(expected, kinds.size), kind.name


def test_default_kind_fractions_and_resistance_ranges() -> None:
    wafer = SimulatedWafer(WaferConfig(defects=no_lines()), seed=0)
    dfc = wafer.config.defects
    codes = np.concatenate([d.defect.ravel() for d in wafer.dies])
    r_def = np.concatenate([d.r_defect.ravel() for d in wafer.dies])
    kinds = codes[codes != Defect.OK]
    shares = [float((kinds == k).mean()) for k in (1, 2, 3, 4)]
    for share, expected in zip(shares, dfc.fractions(), strict=True):
        assert abs(share - expected) <= binomial_tol(expected, kinds.size)
    assert shares[0] == max(shares)  # shorts are the most common kind
    shorts, opens = r_def[codes == Defect.SHORT], r_def[codes == Defect.OPEN]
    assert dfc.r_short_min_ohm <= shorts.min() and shorts.max() <= dfc.r_short_max_ohm
    assert dfc.r_open_min_ohm <= opens.min() and opens.max() <= dfc.r_open_max_ohm
    # Log-uniform: the median sits near the geometric mean of the range.
    assert np.median(shorts) == pytest.approx(np.sqrt(20 * 300), rel=0.1)


def test_failed_rows_and_columns_read_open() -> None:
    dfc = DefectConfig(failed_row_probability=1.0, failed_col_probability=1.0)
    wafer = SimulatedWafer(WaferConfig(grid_cols=3, grid_rows=2, defects=dfc), seed=0)
    for die in range(wafer.n_dies):
        defects, true_r = wafer.true_defects(die)
        assert (defects == Defect.OPEN).all(axis=1).sum() >= 1
        assert (defects == Defect.OPEN).all(axis=0).sum() >= 1
        row = int(np.flatnonzero((defects == Defect.OPEN).all(axis=1))[0])
        assert (true_r[row] >= dfc.r_open_min_ohm).all()


def test_failed_lines_absent_when_disabled() -> None:
    wafer = SimulatedWafer(WaferConfig(defects=no_lines(mean_defect_rate=0.3)), seed=0)
    for d in wafer.dies:
        assert not (d.defect == Defect.OPEN).all(axis=1).any()
        assert not (d.defect == Defect.OPEN).all(axis=0).any()


def test_zero_defect_rate_gives_clean_dies() -> None:
    wafer = SimulatedWafer(WaferConfig(defects=no_lines(mean_defect_rate=0.0)), seed=0)
    assert all((d.defect == Defect.OK).all() for d in wafer.dies)


# ---- seeding ------------------------------------------------------------------------------
ARRAYS = ("r_p", "r_ap", "r_access", "defect", "r_defect", "state")


def test_same_seed_same_wafer() -> None:
    a, b = SimulatedWafer(WaferConfig(), seed=7), SimulatedWafer(WaferConfig(), seed=7)
    for da, db in zip(a.dies, b.dies, strict=True):
        for name in ARRAYS:
            assert np.array_equal(getattr(da, name), getattr(db, name)), name
        assert da.defect_rate == db.defect_rate
    # Operations too: same reads, same switching draws.
    assert np.array_equal(a.read(5, 0.1), b.read(5, 0.1))
    for w in (a, b):
        w.write(5, np.ones(w.shape, np.uint8), 0.6, NOMINAL_W)
    assert np.array_equal(a.true_states(5), b.true_states(5))


def test_different_seed_different_wafer() -> None:
    a, b = SimulatedWafer(WaferConfig(), seed=0), SimulatedWafer(WaferConfig(), seed=1)
    for da, db in zip(a.dies, b.dies, strict=True):
        for name in ("r_p", "r_ap", "r_access", "defect", "state"):
            assert not np.array_equal(getattr(da, name), getattr(db, name)), name
    assert [d.defect_rate for d in a.dies] != [d.defect_rate for d in b.dies]


def test_dies_of_one_wafer_differ() -> None:
    wafer = SimulatedWafer(WaferConfig(), seed=0)
    assert not np.array_equal(wafer.dies[0].r_p, wafer.dies[1].r_p)
    assert not np.array_equal(wafer.dies[0].defect, wafer.dies[1].defect)


def test_die_measurements_do_not_depend_on_visit_order() -> None:
    a, b = SimulatedWafer(WaferConfig(), seed=0), SimulatedWafer(WaferConfig(), seed=0)
    a.read(0, 0.1)
    a.write(1, np.zeros(a.shape, np.uint8), NOMINAL_V, NOMINAL_W)
    assert np.array_equal(a.read(2, 0.1), b.read(2, 0.1))


# ---- geometry and config ------------------------------------------------------------------
def test_geometry_follows_the_config() -> None:
    cfg = WaferConfig(grid_cols=3, grid_rows=2, rows=7, cols=11)
    wafer = SimulatedWafer(cfg, seed=0)
    assert wafer.n_dies == cfg.n_dies == 6
    assert wafer.shape == (7, 11) == wafer.read(5, 0.1).shape
    assert [wafer.die_position(i) for i in range(6)] == [(c, r) for r in range(2) for c in
                                                          range(3)]
    assert all(wafer.die_index(*wafer.die_position(i)) == i for i in range(6))
    with pytest.raises(IndexError):
        wafer.die_index(3, 0)
    with pytest.raises(IndexError):
        wafer.die_index(0, -1)


def test_default_config_matches_design() -> None:
    cfg = WaferConfig()
    assert (cfg.grid_cols, cfg.grid_rows, cfg.rows, cfg.cols) == (6, 6, 100, 200)
    assert cfg.n_dies == 36
    assert cfg.write.breakdown_v == 1.5
    assert cfg.write.write_error_rate_nominal == 1e-3
    assert cfg.defects.mean_defect_rate == 0.01
    assert sum(cfg.defects.fractions()) == pytest.approx(1.0)


def test_fractions_not_summing_to_one_are_rejected() -> None:
    with pytest.raises(ValidationError, match=r"defect fractions must add up to 1, got 1\.1"):
        DefectConfig(fraction_short=0.6)
    with pytest.raises(ValidationError, match="add up to 1"):
        WaferConfig(defects={"fraction_open": 0.0})


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        (DefectConfig, {"r_short_min_ohm": 500.0}, "r_short_min_ohm must not exceed"),
        (DefectConfig, {"r_open_min_ohm": 1e10}, "r_open_min_ohm must not exceed"),
        (DefectConfig, {"mean_defect_rate": -0.1}, "greater than or equal to 0"),
        (DefectConfig, {"bad_die_rate_factor": 0.5}, "greater than or equal to 1"),
        (WriteConfig, {"write_error_rate_nominal": 0.0}, "greater than 0"),
        (WriteConfig, {"write_error_rate_nominal": 1.0}, "less than 1"),
        (DeviceConfig, {"r_p_median_ohm": 0.0}, "greater than 0"),
        (WaferConfig, {"rows": 0}, "greater than or equal to 1"),
        (WaferConfig, {"cols": 5000}, "less than or equal to 4096"),
        (WaferConfig, {"colums": 5}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_config_values_are_rejected(model: type, kwargs: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        model(**kwargs)


def test_config_is_frozen() -> None:
    cfg = WaferConfig()
    with pytest.raises(ValidationError):
        cfg.rows = 5  # type: ignore[misc]
