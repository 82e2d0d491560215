"""Link faults: every injected kind is recovered, results match the fault-free run, pulses are
never repeated blindly, and exhausted retries stop safely with a resumable journal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.errors import ConnectionLost
from drivers.prober import DieIndex
from instruments.config import parse_station
from instruments.programming import program_verified
from instruments.station import Station, StationError
from instruments.store import RunStore
from instruments.sweep import run_sweep

from .fault_support import (
    MIXED_1PCT,
    SMALL_WAFER,
    Rule,
    ScriptedFaults,
    StationRecorder,
    assert_safe,
    assert_within_limits,
    devices,
    reference_kinds,
    station_config,
    sweep_kinds,
)

# Each kind alone, at a rate that hits a 4-die sweep a few dozen times (prober messages are
# fewer, so the prober's own kind gets a higher rate).
SINGLE_KINDS = {
    "timeout": {"timeout_rate": 0.05},
    "drop": {"drop_rate": 0.02},
    "garble": {"garble_rate": 0.05},
    "scpi_error": {"scpi_error_rate": 0.05},
    "prober_error": {"prober_error_rate": 0.2},
    "late": {"late_rate": 0.05},
}


def _sweep(config, path: Path, recorder: StationRecorder | None = None):  # type: ignore[no-untyped-def]
    recorder = recorder or StationRecorder()
    with RunStore(path) as store:
        run_id = run_sweep(config, store, station_factory=recorder)
        done = store.dies_done(run_id)
        assert len(done) == len(set(done)), "a die was committed twice"
        assert store.run_row(run_id)["status"] == "finished"
        return sweep_kinds(store, run_id), recorder.stations[0]


def _assert_same_maps(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(ref)
    for die, kinds in ref.items():
        assert np.array_equal(got[die], kinds), f"defect map of die {die} differs"


@pytest.mark.parametrize("kind", sorted(SINGLE_KINDS))
def test_each_fault_kind_is_recovered(kind: str, tmp_path: Path) -> None:
    config = station_config(SMALL_WAFER, {**SINGLE_KINDS[kind], "seed": 3})
    ref = reference_kinds(config, tmp_path / "ref.sqlite")
    got, station = _sweep(config, tmp_path / "run.sqlite")
    counts = devices(station)[1].faults.counts
    assert counts[kind] >= 3 and sum(counts.values()) == counts[kind], counts
    assert station.recoveries >= 1
    _assert_same_maps(got, ref)
    assert_safe(station)
    assert_within_limits(station)


def test_fault_injection_from_the_station_file_is_deterministic(tmp_path: Path) -> None:
    text = """
instruments:
  simulated:
    seed: 1
    wafer: {grid_cols: 2, grid_rows: 2, rows: 20, cols: 40,
            faults: {timeout_rate: 0.01, drop_rate: 0.01, garble_rate: 0.01,
                     scpi_error_rate: 0.01, prober_error_rate: 0.02, seed: 5}}
  prober: {timeout_s: 0.05}
  tester: {timeout_s: 0.05}
"""
    config = parse_station(text)
    a, sa = _sweep(config, tmp_path / "a.sqlite")
    b, sb = _sweep(config, tmp_path / "b.sqlite")
    counts = devices(sa)[1].faults.counts
    assert counts == devices(sb)[1].faults.counts and sum(counts.values()) > 0
    assert sa.recoveries == sb.recoveries
    _assert_same_maps(a, b)


@pytest.mark.slow
def test_36_die_sweep_with_1pct_mixed_faults_matches_the_fault_free_run(tmp_path: Path) -> None:
    config = station_config(faults={**MIXED_1PCT, "seed": 0})
    ref = reference_kinds(config, tmp_path / "ref.sqlite")
    got, station = _sweep(config, tmp_path / "run.sqlite")
    assert len(got) == 36
    faults = devices(station)[1].faults
    assert sum(faults.counts.values()) >= 10 and all(
        faults.counts[k] > 0 for k in ("timeout", "drop", "garble", "scpi_error")), faults.counts
    _assert_same_maps(got, ref)
    assert_safe(station)
    assert_within_limits(station)


def test_exhausted_retries_stop_safely_and_the_sweep_resumes(tmp_path: Path) -> None:
    """The tester stops answering MEAS:ARR? on the third die: the run stops with a clear error,
    chuck separated and output off; the journal holds the first two dies; --resume ends it."""
    config = station_config(SMALL_WAFER)
    ref = reference_kinds(config, tmp_path / "ref.sqlite")
    faults = ScriptedFaults([Rule(r"MEAS:ARR\?", "timeout", times=10**6)], armed=False)
    recorder = StationRecorder(faults.install)
    seen: list[DieIndex] = []

    def arm_after_two(die, m):  # type: ignore[no-untyped-def]
        seen.append(die)
        faults.armed = len(seen) >= 2

    with RunStore(tmp_path / "run.sqlite") as store:
        with pytest.raises(StationError, match=r"read array: gave up after 4 attempts.*MEAS:ARR"):
            run_sweep(config, store, progress=arm_after_two, station_factory=recorder)
        station = recorder.stations[0]
        assert_safe(station)
        run_id = store.latest_run()
        row = store.run_row(run_id)
        assert row["status"] == "failed" and "gave up after 4 attempts" in row["error"]
        assert len(store.dies_done(run_id)) == 2
        assert run_sweep(config, store, resume=True) == run_id
        done = store.dies_done(run_id)
        assert len(done) == len(set(done)) == 4
        _assert_same_maps(sweep_kinds(store, run_id), ref)


def test_a_lost_pulse_is_read_back_before_any_new_pulse() -> None:
    """The link drops as PROG:ARR is sent: the station reconnects, reads back, and pulses only
    the cells still wrong. Between any two pulses there is a successful read."""
    with Station(station_config(SMALL_WAFER)) as station:
        faults = ScriptedFaults([Rule(r"PROG:ARR", "drop", skip=1)]).install(station)
        with station.at_die(DieIndex(1, 0)):
            wafer = station.rm.visalib.wafer
            targets = np.ones(station.tester.shape, dtype=np.uint8)
            before = len(wafer.pulses)
            result = program_verified(station, targets)
        assert faults.counts["drop"] == 1 and station.recoveries == 1
        truth = wafer.true_defects(1)[0] == 0
        assert result.verified[truth].all()
        sent = [(m.split(b" ")[0], k) for m, k in faults.log if m.startswith((b"PROG", b"MEAS"))]
        last_pulse_ok = True
        for header, kind in sent:
            if header == b"PROG:ARR":
                assert last_pulse_ok, "a pulse followed a pulse without a read-back between"
                last_pulse_ok = False
            elif kind is None:
                last_pulse_ok = True
        # The second pulse was lost (never executed); the one after it only addresses the
        # cells the read-back found still wrong.
        pulses = wafer.pulses[before:]
        assert pulses[0].cells == targets.size
        assert all(p.cells < targets.size // 10 for p in pulses[1:])


def test_a_pulse_whose_fate_is_unknown_is_not_repeated_blindly(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The pulse reaches the cells but the link fails before it is acknowledged."""
    from drivers.crossbar import CrossbarTester

    original = CrossbarTester.program_array
    calls = []

    def executed_then_lost(self, targets, **kw):  # type: ignore[no-untyped-def]
        original(self, targets, **kw)
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionLost(self.name, "PROG:ARR", "connection lost after sending")

    monkeypatch.setattr(CrossbarTester, "program_array", executed_then_lost)
    with Station(station_config(SMALL_WAFER)) as station:
        wafer = station.rm.visalib.wafer
        with station.at_die(DieIndex(0, 0)):
            targets = np.zeros(station.tester.shape, dtype=np.uint8)
            before = len(wafer.pulses)
            result = program_verified(station, targets)
        pulses = wafer.pulses[before:]
        assert station.recoveries == 1
        assert pulses[0].cells == targets.size
        # Healthy cells switched with the first pulse; the retry addresses only the rest.
        assert all(p.cells <= (~result.verified).sum() + 50 for p in pulses[1:])
        assert all(p.cells < targets.size // 10 for p in pulses[1:])


def test_reconnect_restores_position_settings_and_amplitude() -> None:
    with Station(station_config(SMALL_WAFER)) as station:
        prober_dev, tester_dev = devices(station)
        with station.at_die(DieIndex(1, 1)):
            station.set_pulse(1.0)
            tester_dev.dropped = prober_dev.dropped = True  # both links lost
            r = station.retry("read array", lambda: station.tester.read_array())
            assert r.shape == (20, 40) and station.recoveries == 1
            lib = station.rm.visalib
            assert lib.prober.in_contact and lib.prober.contact_die == lib.wafer.die_index(1, 1)
            assert tester_dev.setting("output") == 1
            assert tester_dev.setting("pulse_amplitude_v") == pytest.approx(1.0)
        assert_safe(station)


def test_a_changed_identity_after_reconnect_is_not_retried() -> None:
    with Station(station_config(SMALL_WAFER)) as station:
        _, tester_dev = devices(station)
        with pytest.raises(StationError, match="identity changed after reconnect"), \
                station.at_die(DieIndex(0, 0)):
            tester_dev._dialogues[b"*IDN?"] = b"othervendor,XBAR,0002,9.9"
            tester_dev.dropped = True
            station.retry("read array", lambda: station.tester.read_array())
        assert station.recoveries == 1
        assert_safe(station)


def test_garbled_identity_and_array_size_at_connect_are_not_kept(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from simulated_hw import visa

    faults = ScriptedFaults([Rule(r"\*IDN\?", "garble"), Rule(r"ARR:SIZE\?", "garble")])
    original = visa.WaferVisaLibrary.bind

    def bind(self, wafer, injector):  # type: ignore[no-untyped-def]
        original(self, wafer, faults)

    monkeypatch.setattr(visa.WaferVisaLibrary, "bind", bind)
    with Station(station_config(SMALL_WAFER)) as station:
        assert faults.counts["garble"] == 2
        assert station.tester.shape == (20, 40)
        assert station.identities["tester"].startswith("mtjlab,XBAR")
        assert station.identities["prober"] == devices(station)[0]._dialogues[b"*IDN?"].decode()


def test_prober_fault_while_stepping_is_retried_without_losing_the_die() -> None:
    with Station(station_config(SMALL_WAFER)) as station:
        faults = ScriptedFaults([Rule(r"StepNextDie 1 0", "prober_error"),
                                 Rule(r"MoveChuckContact", "timeout")]).install(station)
        with station.at_die(DieIndex(1, 0)):
            lib = station.rm.visalib
            assert lib.prober.contact_die == lib.wafer.die_index(1, 0)
        assert faults.counts["prober_error"] == 1 and faults.counts["timeout"] == 1
        assert_safe(station)


def test_inference_is_split_into_queries_each_retried_on_its_own(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Long inference batches (an output layer read in parts sends n x 4 patterns) go out in
    queries of at most `measurement.infer_batch_rows`; a link lost before one of them costs
    that query only."""
    from drivers.crossbar import CrossbarTester

    sizes: list[int] = []
    infer = CrossbarTester.infer

    def counted(self: CrossbarTester, rows: np.ndarray) -> np.ndarray:
        sizes.append(len(rows))
        return infer(self, rows)

    monkeypatch.setattr(CrossbarTester, "infer", counted)  # survives the reconnect
    config = station_config(SMALL_WAFER, measurement={"infer_batch_rows": 3})
    with Station(config) as station:
        _, tester_dev = devices(station)
        rows = np.random.default_rng(0).integers(0, 2, (7, 20)).astype(np.uint8)
        with station.at_die(DieIndex(0, 0)):
            tester_dev.dropped = True
            currents = station.column_currents(rows)
        assert currents.shape == (7, 40) and (currents > 0).all()
        assert sizes == [3, 3, 3, 1] and station.recoveries == 1  # the first query twice
        assert_safe(station)
