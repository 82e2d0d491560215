"""Whole-wafer sweeps: measured maps against the simulator's truth, interrupt and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from drivers.prober import DieIndex
from instruments.interrupts import StopFlag
from instruments.station import Station
from instruments.store import RunStore, die_key
from instruments.sweep import SweepInterrupted, run_sweep

from .conftest import station_config
from .fault_support import devices


class Crash(Exception):
    pass


def assert_safe(station: Station) -> None:
    """Chuck separated and output off, read from the simulator itself."""
    lib = station.rm.visalib
    assert not lib.prober.in_contact
    assert lib.devices["TCPIP0::xbar.sim::inst0::INSTR"].setting("output") == 0


def _kinds(store: RunStore, run_id: int) -> dict[str, np.ndarray]:
    return {d: store.array(run_id, d, "kinds") for d in store.dies_done(run_id)}


def test_whole_wafer_sweep_matches_ground_truth(tmp_path: Path) -> None:
    stations: list[Station] = []

    def factory(cfg):  # type: ignore[no-untyped-def]
        stations.append(Station(cfg))
        return stations[-1]

    with RunStore(tmp_path / "run.sqlite") as store:
        run_id = run_sweep(station_config(), store, station_factory=factory)
        wafer = stations[0].rm.visalib.wafer
        assert len(store.dies_done(run_id)) == wafer.n_dies == 36
        worst = 1.0
        for i in range(wafer.n_dies):
            truth, _ = wafer.true_defects(i)
            measured = store.array(run_id, die_key(wafer.die_position(i)), "kinds")
            worst = min(worst, float((measured == truth).mean()))
        assert worst >= 0.999
        row = store.run_row(run_id)
        assert row["status"] == "finished"
        assert "mtjlab,XBAR" in row["snapshot_json"] and "seed: 0" in row["station_yaml"]
        assert_safe(stations[0])


def test_crashed_sweep_resumes_without_loss_or_repeat(tmp_path: Path) -> None:
    config = station_config(wafer={"dies": [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]],
                                   "order": "listed"})
    with RunStore(tmp_path / "ref.sqlite") as ref:
        ref_kinds = _kinds(ref, run_sweep(config, ref))

    seen: list[str] = []

    def crash_after_two(die, m):  # type: ignore[no-untyped-def]
        seen.append(die_key(die))
        if len(seen) == 2:
            raise Crash

    stations: list[Station] = []

    def factory(cfg):  # type: ignore[no-untyped-def]
        stations.append(Station(cfg))
        return stations[-1]

    with RunStore(tmp_path / "run.sqlite") as store:
        with pytest.raises(Crash):
            run_sweep(config, store, progress=crash_after_two, station_factory=factory)
        assert_safe(stations[0])
        run_id = store.latest_run()
        assert store.run_row(run_id)["status"] == "failed"
        assert len(store.dies_done(run_id)) == 2
        assert run_sweep(config, store, resume=True) == run_id
        done = store.dies_done(run_id)
        assert sorted(done) == sorted(ref_kinds) and len(done) == len(set(done))
        for die, kinds in _kinds(store, run_id).items():
            assert np.array_equal(kinds, ref_kinds[die]), die


def test_stop_request_ends_at_a_safe_point_and_resumes(tmp_path: Path) -> None:
    config = station_config(wafer={"dies": [[0, 0], [1, 0], [2, 0]]})
    stop = StopFlag()

    def stop_after_first(die, m):  # type: ignore[no-untyped-def]
        stop.request()

    with RunStore(tmp_path / "run.sqlite") as store:
        with pytest.raises(SweepInterrupted, match="resume with --resume"):
            run_sweep(config, store, stop=stop, progress=stop_after_first)
        run_id = store.latest_run()
        assert store.run_row(run_id)["status"] == "interrupted"
        assert len(store.dies_done(run_id)) == 1
        run_sweep(config, store, resume=True)
        assert len(store.dies_done(run_id)) == 3


def test_resume_without_unfinished_run_is_bad_input(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run.sqlite") as store, pytest.raises(ValueError, match="no unfin"):
        run_sweep(station_config(), store, resume=True)


def test_unknown_die_in_plan_is_refused(tmp_path: Path) -> None:
    config = station_config(wafer={"dies": [[9, 9]]})
    with RunStore(tmp_path / "run.sqlite") as store, pytest.raises(ValueError, match="not on"):
        run_sweep(config, store)


def test_station_sets_the_testers_averaging_from_the_station_file() -> None:
    with Station(station_config(measurement={"averages": 32})) as station:
        tester_device = devices(station)[1]
        assert b"SENS:AVER:COUN 32" in tester_device.received
        assert station.tester.averages == 32
        with station.at_die(DieIndex(0, 0)):
            quiet = [station.tester.read_array() for _ in range(2)]
            station.tester.averages = 1
            noisy = [station.tester.read_array() for _ in range(2)]
    # read-to-read scatter falls as 1 / sqrt(averages): sqrt(32) ~ 5.7
    ratio = np.std(noisy[0] - noisy[1]) / np.std(quiet[0] - quiet[1])
    assert 4.0 < ratio < 8.0
