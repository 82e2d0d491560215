"""Crash safety: Ctrl-C stops at a safe point, SIGKILL at random moments loses nothing.

The ten-kill run and the CLI Ctrl-C run use benchmarks/crash_sweep.py (the real `mtjlab sweep`
in subprocesses); the in-process tests check the same behaviour in a fraction of the time.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from instruments.interrupts import StopFlag, Terminated, stop_on_interrupt
from instruments.store import RunStore
from instruments.sweep import SweepInterrupted, run_sweep

from .conftest import REPO
from .fault_support import (
    SMALL_WAFER,
    ScriptedFaults,
    StationRecorder,
    assert_safe,
    reference_kinds,
    station_config,
    sweep_kinds,
)


def _crash_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("crash_sweep",
                                                  REPO / "benchmarks" / "crash_sweep.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("crash_sweep", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_ctrl_c_stops_at_the_next_safe_point_and_resumes(tmp_path: Path) -> None:
    config = station_config(SMALL_WAFER)
    ref = reference_kinds(config, tmp_path / "ref.sqlite")
    stop = StopFlag()
    recorder = StationRecorder()

    def ctrl_c_after_first(die, m):  # type: ignore[no-untyped-def]
        if m is not None and not stop.requested:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, through the real handler

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, else Python's default
    with RunStore(tmp_path / "run.sqlite") as store:
        with stop_on_interrupt(stop), pytest.raises(SweepInterrupted, match="resume with --resume"):
            run_sweep(config, store, stop=stop, progress=ctrl_c_after_first,
                      station_factory=recorder)
        assert signal.getsignal(signal.SIGINT) is before  # restored
        assert_safe(recorder.stations[0])
        run_id = store.latest_run()
        assert store.run_row(run_id)["status"] == "interrupted"
        assert len(store.dies_done(run_id)) == 1
        run_sweep(config, store, resume=True)
        done = store.dies_done(run_id)
        assert len(done) == len(set(done)) == 4
        got = sweep_kinds(store, run_id)
        assert all(np.array_equal(got[d], ref[d]) for d in ref)


def test_second_ctrl_c_interrupts_at_once_but_still_safely(tmp_path: Path) -> None:
    config = station_config(SMALL_WAFER)
    stop = StopFlag()
    recorder = StationRecorder()
    calls: list[int] = []

    def two_ctrl_c(die, m):  # type: ignore[no-untyped-def]
        calls.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with RunStore(tmp_path / "run.sqlite") as store:
        with stop_on_interrupt(stop), pytest.raises(KeyboardInterrupt):
            run_sweep(config, store, stop=stop, progress=two_ctrl_c, station_factory=recorder)
        assert_safe(recorder.stations[0])
        run_id = store.latest_run()
        assert store.run_row(run_id)["status"] == "failed"
        assert len(store.dies_done(run_id)) == 1  # committed before the progress call
        run_sweep(config, store, resume=True)
        assert len(set(store.dies_done(run_id))) == 4


class SigtermOnPulse(ScriptedFaults):
    """No faults: a SIGTERM to this process as the first write pulse of the sweep is sent
    (mid-die: chuck down, output on), and another while the station makes itself safe."""

    def draw(self, message: bytes, applicable: Any = ()) -> str | None:
        if message.startswith(b"PROG:ARR") and not self.counts["timeout"]:
            self.counts["timeout"] = 1  # (a counter only: no fault is injected)
            os.kill(os.getpid(), signal.SIGTERM)
        elif message.startswith(b"OUTP OFF") and self.counts["timeout"] == 1:
            self.counts["timeout"] = 2
            os.kill(os.getpid(), signal.SIGTERM)
        return None


def test_sigterm_mid_die_stops_at_once_safely_and_resumes(tmp_path: Path) -> None:
    config = station_config(SMALL_WAFER)
    ref = reference_kinds(config, tmp_path / "ref.sqlite")
    stop = StopFlag()
    recorder = StationRecorder(lambda st: SigtermOnPulse().install(st))
    before = signal.getsignal(signal.SIGTERM)
    with RunStore(tmp_path / "run.sqlite") as store:
        with stop_on_interrupt(stop), pytest.raises(Terminated):
            run_sweep(config, store, stop=stop, station_factory=recorder)
        assert signal.getsignal(signal.SIGTERM) is before  # restored
        assert_safe(recorder.stations[0])
        run_id = store.latest_run()
        row = store.run_row(run_id)
        assert (row["status"], row["error"]) == ("interrupted", "terminated (SIGTERM)")
        assert store.dies_done(run_id) == []  # the die it was in is measured again
        run_sweep(config, store, resume=True)
        got = sweep_kinds(store, run_id)
        assert len(got) == 4 and all(np.array_equal(got[d], ref[d]) for d in ref)


def test_a_second_sigterm_during_the_clean_up_is_ignored_by_every_handler() -> None:
    """The CLI nests two handlers (every command's, the sweep's): the outer one raised again
    on a second SIGTERM once the inner block had ended, cutting the store's close short."""
    cleaned: list[bool] = []
    with pytest.raises(Terminated), stop_on_interrupt():
        try:
            with stop_on_interrupt(StopFlag()):
                os.kill(os.getpid(), signal.SIGTERM)
        finally:  # the clean-up on the way out, inside the outer block
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(True)
    assert cleaned
    with pytest.raises(Terminated), stop_on_interrupt():  # a later block counts it again
        os.kill(os.getpid(), signal.SIGTERM)


def test_compare_flags_lost_and_duplicated_dies() -> None:
    """The crash script's comparison is not vacuous."""
    crash = _crash_script()
    kinds = np.zeros((2, 2), np.int8)
    ref = crash.StoreContent([(1, "finished")], ["0,0", "1,0"], {"0,0": kinds, "1,0": kinds})
    same = crash.StoreContent([(1, "finished")], ["1,0", "0,0"], {"0,0": kinds, "1,0": kinds})
    assert crash.compare(ref, same).identical
    lost = crash.StoreContent([(1, "finished")], ["0,0"], {"0,0": kinds})
    assert not crash.compare(ref, lost).identical
    dup = crash.StoreContent([(1, "finished")], ["0,0", "1,0", "0,0"],
                             {"0,0": kinds, "1,0": kinds})
    assert "more than once" in crash.compare(ref, dup).problems[0]
    changed = crash.StoreContent([(1, "finished")], ["0,0", "1,0"],
                                 {"0,0": kinds, "1,0": kinds + 1})
    assert not crash.compare(ref, changed).identical


@pytest.mark.slow
def test_ten_sigkills_each_resumed_give_the_uninterrupted_store(tmp_path: Path) -> None:
    report = _crash_script().crash_run(tmp_path, kills=10, seed=0)
    assert report.kills == 10, report.log
    assert report.comparison.identical, report.comparison.problems
    assert report.dies == 36
    # A fresh simulator per process and per-die noise streams: even the raw reads match.
    assert report.comparison.arrays_identical


@pytest.mark.slow
def test_sigterm_through_the_cli_exits_1_and_resumes(tmp_path: Path) -> None:
    report = _crash_script().signal_run(tmp_path, sig=signal.SIGTERM)
    assert report.exit_code == 1
    assert report.message == "mtjlab sweep: terminated (SIGTERM)"
    assert report.status_after_stop == "interrupted" and 1 <= report.dies_at_stop < 36
    assert report.comparison is not None and report.comparison.identical, report


@pytest.mark.slow
def test_ctrl_c_through_the_cli_exits_1_at_a_safe_point_and_resumes(tmp_path: Path) -> None:
    report = _crash_script().signal_run(tmp_path)
    assert report.exit_code == 1
    assert "interrupted: stopped before die" in report.message
    assert report.status_after_stop == "interrupted" and 1 <= report.dies_at_stop < 36
    assert report.comparison is not None and report.comparison.identical, report
