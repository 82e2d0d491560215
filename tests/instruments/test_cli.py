"""The operator CLI: exit codes, messages, export."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from drivers.errors import InstrumentTimeout, LimitError, ReplyError
from instruments.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main, run_command
from instruments.store import RunStore

REPO_STATION = Path(__file__).resolve().parents[2] / "docs" / "stations" / "simulated.yaml"
SMALL_STATION = """
name: cli-test
instruments: {simulated: {seed: 3}}
wafer: {dies: [[0, 0], [1, 0]]}
"""


@pytest.fixture
def station_file(tmp_path: Path) -> Path:
    path = tmp_path / "station.yaml"
    path.write_text(SMALL_STATION)
    return path


def test_sweep_runs_and_export(tmp_path: Path, station_file: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "run.sqlite"
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store)]) == EXIT_OK
    assert main(["runs", "--store", str(store)]) == EXIT_OK
    listing = capsys.readouterr().out
    assert "sweep" in listing and "finished" in listing and "   2  " in listing

    npz = tmp_path / "run.npz"
    assert main(["-q", "export", "--store", str(store), "--format", "npz",
                 "--out", str(npz)]) == EXIT_OK
    with np.load(npz) as data:
        assert data["0,0__kinds"].shape == (100, 200)
        assert "run_json" in data
        records = json.loads(str(data["records_json"]))
    with RunStore(store) as rs:
        assert records == rs.records(1)
        assert records["1,0"]["counts"] == rs.record(1, "1,0", "counts")
    h5 = tmp_path / "run.h5"
    assert main(["-q", "export", "--store", str(store), "--format", "hdf5",
                 "--out", str(h5)]) == EXIT_OK
    with h5py.File(h5) as f:
        assert f["1,0/r_p_ohm"].shape == (100, 200)
        assert f.attrs["kind"] == "sweep"
        assert json.loads(f["1,0"].attrs["counts"]) == records["1,0"]["counts"]
        assert json.loads(f["0,0"].attrs["pulses"]) == records["0,0"]["pulses"]


def test_bad_station_file_is_exit_2_with_location(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("safety:\n  max_pulse_v: -1\n")
    code = main(["sweep", "--station", str(bad), "--store", str(tmp_path / "s.sqlite")])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{bad}:2: safety.max_pulse_v" in err


def test_missing_store_and_bad_arguments_are_exit_2(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--store", str(tmp_path / "none.sqlite")]) == EXIT_BAD_INPUT
    store = tmp_path / "empty.sqlite"
    RunStore(store).close()
    capsys.readouterr()
    for argv in (["runs", "--station", "7"], ["export", "--format", "npz", "--run", "7"]):
        assert main([*argv, "--store", str(store)]) == EXIT_BAD_INPUT  # a run id not stored
        assert capsys.readouterr().err.endswith(f"{store}: no run 7\n")
    assert main(["train", "--store", "x", "--method", "magic"]) == EXIT_BAD_INPUT
    capsys.readouterr()
    nowhere = tmp_path / "no-such-folder" / "run.sqlite"  # was exit 1, "unable to open"
    assert main(["-q", "sweep", "--station", str(REPO_STATION), "--store", str(nowhere)]
                ) == EXIT_BAD_INPUT
    assert f"no folder {nowhere.parent} to create the store in" in capsys.readouterr().err
    assert main(["nonsense"]) == EXIT_BAD_INPUT


def test_console_script_help() -> None:
    out = subprocess.run([sys.executable, "-m", "instruments.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("demo", "sweep", "train", "evaluate", "report", "runs", "export"):
        assert command in out


@pytest.mark.parametrize(("error", "code", "word"), [
    (ReplyError("xbar", "ARR:SIZE?", "2;3", "not 'rows,cols'"), EXIT_FAILED, "failed"),
    (InstrumentTimeout("xbar", "MEAS:ARR?", "timed out"), EXIT_FAILED, "failed"),
    (LimitError("pulse_amplitude_v", 3.0, "[0, 2]", "V"), EXIT_BAD_INPUT, "error"),
    (ValueError("dies must be on the wafer map"), EXIT_BAD_INPUT, "error"),
])
def test_exit_code_tells_instrument_faults_from_bad_input(
        error: Exception, code: int, word: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An instrument's bad reply or silence is a failure (1), even where the exception is
    also a ValueError; the operator's out-of-range value is bad input (2)."""
    def fail(_args: argparse.Namespace) -> int:
        raise error

    assert run_command(argparse.Namespace(fn=fail, command="sweep")) == code
    assert capsys.readouterr().err.startswith(f"mtjlab sweep: {word}: ")


def test_the_sweep_bar_knows_its_total_and_an_early_error_prints_none(
        tmp_path: Path, station_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "run.sqlite")
    assert main(["sweep", "--station", str(station_file), "--store", store,
                 "--resume"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err.startswith("mtjlab sweep: error: ")  # no empty bar first
    assert main(["sweep", "--station", str(station_file), "--store", store]) == EXIT_OK
    assert "2/2" in capsys.readouterr().err  # the bar's total: the planned dies


def test_a_bad_plan_makes_no_run_and_any_unfinished_sweep_can_be_resumed(
        tmp_path: Path, station_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A die off the wafer map used to be found after the run was made: the failed run then
    stood between `--resume` and the interrupted sweep before it. `--resume RUN` picks one."""
    store = tmp_path / "run.sqlite"
    off_map = tmp_path / "off.yaml"
    off_map.write_text(SMALL_STATION.replace("[1, 0]]", "[1, 0], [99, 99]]"))
    with RunStore(store) as rs:  # an interrupted sweep of the small station
        from instruments.config import load_station
        from instruments.station import Station
        from instruments.sweep import start_run
        with Station(load_station(station_file)) as station:
            first = start_run(rs, station, station.config, "sweep")
        rs.set_status(first, "interrupted")
    assert main(["-q", "sweep", "--station", str(off_map), "--store", str(store)]
                ) == EXIT_BAD_INPUT
    assert "names 1 die(s) not on the prober's wafer map of 36: [99, 99]" in capsys.readouterr().err
    with RunStore(store) as rs:
        assert [r.run_id for r in rs.runs()] == [first]  # no run for the bad plan
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store),
                 "--resume", str(first + 1)]) == EXIT_BAD_INPUT  # not in the store
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store),
                 "--resume", str(first)]) == EXIT_OK
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store),
                 "--resume", str(first)]) == EXIT_BAD_INPUT  # finished now
    assert "run 1 is a finished sweep run, not an unfinished sweep" in capsys.readouterr().err
    with RunStore(store) as rs:
        assert sorted(rs.dies_done(first)) == ["0,0", "1,0"]


def test_one_process_drives_the_station_of_a_store(tmp_path: Path, station_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Two sweeps of one store (or a sweep of a store a service is serving) stepped one
    prober from two processes: the second is refused, and the store gets no run from it."""
    from instruments.locking import hold_station

    store = tmp_path / "run.sqlite"
    held = hold_station(store)  # as a running service or sweep holds it
    assert held is not None
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store)]
                ) == EXIT_FAILED
    assert "another mtjlab process (a service or a sweep) is driving" in capsys.readouterr().err
    with RunStore(store) as rs:
        assert rs.runs() == []
    held.close()
    assert main(["-q", "sweep", "--station", str(station_file), "--store", str(store)]) == EXIT_OK
    missing = tmp_path / "no_such_dir" / "run.sqlite"
    with pytest.raises(ValueError, match="no_such_dir: no such folder"):
        hold_station(missing)
