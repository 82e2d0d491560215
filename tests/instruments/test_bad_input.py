"""The bad-input catalogue of docs/reliability.md: each case, the message and the exit code.

CLI cases run `mtjlab` in-process in the fast suite and all together, as real subprocesses
(`python -m instruments.cli`), in the slow suite. API cases check the refusal and that nothing
reached the instrument.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from drivers.errors import LimitError, ProberError
from drivers.prober import DieIndex
from instruments.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, main
from instruments.programming import program_verified
from instruments.safety import SafetyViolation
from instruments.station import Station
from instruments.store import SCHEMA_VERSION, RunStore

from .conftest import REPO
from .fault_support import assert_safe, devices, station_config

FAST = "instruments: {simulated: {seed: 0}, prober: {timeout_s: 0.05}, tester: {timeout_s: 0.05}}"
TWO_DIES = f"{FAST}\nwafer: {{dies: [[0, 0], [1, 0]]}}\n"
FOUR_DIES = f"{FAST}\nwafer: {{dies: [[0, 0], [1, 0], [2, 0], [3, 0]]}}\n"

#: Run before the CLI: the store cannot grow by more than ~2 dies, as on a nearly full disk.
DISK_FULL_PRELUDE = """
import instruments.store as _store
_init = _store.RunStore.__init__
def _tiny_disk(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    pages = self.db.execute("PRAGMA page_count").fetchone()[0]
    self.db.execute(f"PRAGMA max_page_count={pages + 120}")
_store.RunStore.__init__ = _tiny_disk
"""


@dataclass
class Case:
    """One catalogue entry: prepare files in a folder, run argv, expect code and message."""

    name: str
    prepare: Callable[[Path], list[str]]
    code: int
    messages: tuple[str, ...]
    prelude: str = ""
    check: Callable[[Path], None] | None = None
    slow_only: bool = False


def _station(text: str, name: str = "station.yaml") -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        (tmp / name).write_text(text)
        return ["sweep", "--station", str(tmp / name), "--store", str(tmp / "run.sqlite")]
    return prepare


def _store_file(make: Callable[[Path], None], command: str = "runs"
                ) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        make(tmp / "run.sqlite")
        return [command, "--store", str(tmp / "run.sqlite")]
    return prepare


def _filled_store(path: Path) -> None:
    with RunStore(path) as store:
        run = store.create_run("sweep", "name: x\n", {}, "0.1.0", {"wafer": 0})
        for i in range(6):
            store.commit_die(run, f"{i},0", {"r": np.random.default_rng(i).random((100, 200))},
                             {"counts": {}})
        store.set_status(run, "finished")


def _corrupt(path: Path) -> None:
    path.write_bytes(b"this is not a database" * 500)


def _truncated(path: Path) -> None:
    _filled_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _newer(path: Path) -> None:
    RunStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()


def _bad_array(path: Path) -> None:
    _filled_store(path)
    db = sqlite3.connect(path)
    db.execute("UPDATE arrays SET data=? WHERE die='0,0'", (b"\x93NUMPY garbage",))
    db.commit()
    db.close()


def _resume_without_run(tmp: Path) -> list[str]:
    return [*_station(TWO_DIES)(tmp), "--resume"]


def _export_bad_array(tmp: Path) -> list[str]:
    _bad_array(tmp / "run.sqlite")
    return ["export", "--store", str(tmp / "run.sqlite"), "--format", "npz",
            "--out", str(tmp / "out.npz")]


def _resumes_after_disk_full(tmp: Path) -> None:
    """Space freed: --resume completes the run, every die once."""
    argv = ["-q", "sweep", "--station", str(tmp / "station.yaml"), "--store",
            str(tmp / "run.sqlite"), "--resume"]
    assert main(argv) == EXIT_OK
    with RunStore(tmp / "run.sqlite") as store:
        run = store.latest_run()
        done = store.dies_done(run)
        assert len(done) == len(set(done)) == 4
        assert store.run_row(run)["status"] == "finished"


CASES = [
    Case("station file missing", lambda tmp: ["sweep", "--station", str(tmp / "nope.yaml"),
                                              "--store", str(tmp / "s.sqlite")],
         EXIT_BAD_INPUT, ("nope.yaml: station file not found",)),
    Case("station file malformed YAML", _station("safety: [1, 2\n"), EXIT_BAD_INPUT,
         ("station.yaml:2: not valid YAML: while parsing a flow sequence (started at line 1)",)),
    Case("tab in the station file", _station("name: x\nsafety:\n\tmax_pulse_v: 1.0\n"),
         EXIT_BAD_INPUT, ("station.yaml:3: not valid YAML: ", "YAML does not allow tabs")),
    Case("station file not a mapping", _station("- 1\n- 2\n"), EXIT_BAD_INPUT,
         ("expected a mapping of sections at the top level",)),
    Case("station file invalid value", _station("safety:\n  max_pulse_v: -1\n"), EXIT_BAD_INPUT,
         ("station.yaml:2: safety.max_pulse_v: Input should be greater than 0 (got -1)",)),
    Case("station file unknown key", _station("safty: {}\n"), EXIT_BAD_INPUT,
         ("safty: Extra inputs are not permitted",)),
    Case("empty station file", _station(""), EXIT_BAD_INPUT,
         ("the station file is empty; it needs at least an 'instruments' section",)),
    Case("station file without instruments", _station("name: fab-probe-3\n"), EXIT_BAD_INPUT,
         ("instruments: missing: give the prober's and tester's VISA addresses",)),
    Case("empty die list", _station(f"{FAST}\nwafer: {{dies: []}}\n"), EXIT_BAD_INPUT,
         ("wafer.dies: List should have at least 1 item",)),
    Case("die without its brackets", _station(f"{FAST}\nwafer:\n  dies: [2, 0]\n"),
         EXIT_BAD_INPUT, ("station.yaml:3: wafer.dies: Value error, a list of [col, row] pairs, "
                          "each in its own brackets: write dies: [[2, 0]]",)),
    Case("yes for a number", _station(
        f"{FAST}\nmeasurement: {{averages: yes}}\nwafer: {{dies: [[on, 0]]}}\n"),
         EXIT_BAD_INPUT, ("measurement.averages: expected a number or a name (YAML reads yes, "
                          "no, on and off as true and false)", "wafer.dies.0.0: expected a")),
    Case("thresholds in kilo-ohms", _station(
        f"{FAST}\nmeasurement: {{short_max_ohm: 2.5, p_ap_threshold_ohm: 8.5}}\n"),
         EXIT_BAD_INPUT, ("measurement.short_max_ohm: Input should be greater than or equal to "
                          "100 (got 2.5)",)),
    Case("setting beyond the safety limit", _station(f"{FAST}\nmeasurement: {{pulse_v: 1.4}}\n"),
         EXIT_BAD_INPUT, ("measurement.pulse_v = 1.4 exceeds safety.max_pulse_v = 1.2",)),
    Case("limit beyond the instrument's range", _station(f"{FAST}\nsafety: {{max_pulse_v: 3}}\n"),
         EXIT_BAD_INPUT, ("safety.max_pulse_v: Input should be less than or equal to 2",)),
    Case("setting outside the tester's range", _station(
        f"{FAST}\nmeasurement: {{pulse_width_s: 1.0e-12}}\n"), EXIT_BAD_INPUT,
         ("measurement.pulse_width_s: Value error, outside the tester's range, 1e-09 to 0.001 s",)),
    Case("infinite setting", _station(f"{FAST}\nmeasurement: {{pulse_step_v: .inf}}\n"),
         EXIT_BAD_INPUT, ("measurement.pulse_step_v: Input should be a finite number (got inf)",)),
    Case("pulse step in millivolts", _station(f"{FAST}\nmeasurement:\n  pulse_step_v: 50\n"),
         EXIT_BAD_INPUT, ("station.yaml:3: measurement.pulse_step_v: 50 V is not smaller than "
                          "safety.max_pulse_v = 1.2 V",)),
    Case("fault rates above one", _station(
        "instruments: {simulated: {wafer: {faults: {timeout_rate: 0.7, drop_rate: 0.7}}}}\n"),
         EXIT_BAD_INPUT, ("fault rates add up to more than 1",)),
    Case("real station without addresses", _station("instruments: {visa_library: '@py'}\n"),
         EXIT_BAD_INPUT, ("prober and tester need a 'resource' (a VISA address)",)),
    Case("unknown resource", _station(
        "instruments: {simulated: {seed: 0},\n"
        "  prober: {resource: 'TCPIP0::nowhere.sim::inst0::INSTR', timeout_s: 0.05}}\n"),
         EXIT_FAILED,
         ("cannot talk to the instruments (prober 'TCPIP0::nowhere.sim::inst0::INSTR'",
          "no identity: is an instrument there?")),
    Case("resource that is not an instrument", _station(
        "instruments: {simulated: {seed: 0}, tester: {resource: 'not a resource'}}\n"),
         EXIT_FAILED, ("cannot open instrument: 'not a resource' is not a message-based "
                       "instrument",)),
    Case("dead link: retries exhausted", _station(
        f"{FAST}\n".replace("seed: 0}", "seed: 0, wafer: {faults: {timeout_rate: 1.0}}}")),
         EXIT_FAILED, ("cannot talk to the instruments", "gave up after 12 attempts",
                       "timed out waiting for the instrument")),
    Case("unknown die", _station(f"{FAST}\nwafer: {{dies: [[9, 9]]}}\n"), EXIT_BAD_INPUT,
         ("wafer.dies names 1 die(s) not on the prober's wafer map of 36: [9, 9] (its dies "
          "span columns 0-5, rows 0-5)",)),
    Case("VISA backend missing", _station((REPO / "docs" / "stations" / "real.yaml").read_text()),
         EXIT_BAD_INPUT, ("No package named pyvisa_py: the station file's visa_library '@py' "
                          "needs the pyvisa-py backend: pip install pyvisa-py",)),
    Case("resume with nothing to resume", _resume_without_run, EXIT_BAD_INPUT,
         ("no unfinished sweep to resume",)),
    Case("store missing", lambda tmp: ["runs", "--store", str(tmp / "none.sqlite")],
         EXIT_BAD_INPUT, ("none.sqlite: no such store",)),
    Case("store corrupted", _store_file(_corrupt), EXIT_FAILED,
         ("not a valid mtjlab store (corrupted?)",)),
    Case("store truncated", _store_file(_truncated), EXIT_FAILED,
         ("not a valid mtjlab store (corrupted?)",)),
    Case("store from a newer version", _store_file(_newer), EXIT_FAILED,
         (f"written by a newer mtjlab (store schema {SCHEMA_VERSION + 1}",
          "upgrade mtjlab to open it")),
    Case("corrupted array in a store", _export_bad_array, EXIT_FAILED,
         ("array 'r' of die 0,0 is corrupted",)),
    Case("disk full while writing", _station(FOUR_DIES), EXIT_FAILED,
         ("disk full while writing the store",), prelude=DISK_FULL_PRELUDE,
         check=_resumes_after_disk_full),
    Case("unknown command", lambda tmp: ["frobnicate"], EXIT_BAD_INPUT, ("invalid choice",)),
    Case("bad option value", lambda tmp: ["train", "--store", "x", "--method", "magic"],
         EXIT_BAD_INPUT, ("invalid choice: 'magic'",)),
    Case("missing option", lambda tmp: ["sweep", "--store", "x"], EXIT_BAD_INPUT,
         ("the following arguments are required: --station",)),
]


def _locked_case() -> Case:
    """The store's writer lock is held by another process (5 s busy timeout, so slow only)."""
    return Case("store locked", _station(TWO_DIES), EXIT_FAILED,
                ("store is locked by another process",), slow_only=True)


def _apply_prelude_in_process(prelude: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if prelude == DISK_FULL_PRELUDE:
        init = RunStore.__init__

        def tiny_disk(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            init(self, *args, **kwargs)
            pages = self.db.execute("PRAGMA page_count").fetchone()[0]
            self.db.execute(f"PRAGMA max_page_count={pages + 120}")

        monkeypatch.setattr(RunStore, "__init__", tiny_disk)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_bad_input_in_process(case: Case, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    argv = case.prepare(tmp_path)
    with monkeypatch.context() as patch:
        _apply_prelude_in_process(case.prelude, patch)
        code = main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    for message in case.messages:
        assert message in err
    assert "Traceback" not in err
    if case.check is not None:
        case.check(tmp_path)


def _run_subprocess(case: Case, tmp: Path) -> tuple[Case, Path, subprocess.CompletedProcess]:
    argv = case.prepare(tmp)
    holder = None
    if case.name == "store locked":
        RunStore(tmp / "run.sqlite").close()
        holder = sqlite3.connect(tmp / "run.sqlite", isolation_level=None,
                                 check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
    code = (f"{case.prelude}\nimport sys\nfrom instruments.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              text=True, cwd=REPO, timeout=120)
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    return case, tmp, proc


@pytest.mark.slow
def test_cli_bad_input_catalogue_in_subprocesses(tmp_path: Path) -> None:
    """Every case through a real interpreter, as an operator would meet it."""
    cases = [*CASES, _locked_case()]
    dirs = []
    for i, _ in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        dirs.append(tmp_path / str(i))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_run_subprocess, cases, dirs))
    failures = []
    for case, tmp, proc in results:
        problems = [m for m in case.messages if m not in proc.stderr]
        if proc.returncode != case.code or problems or "Traceback" in proc.stderr:
            failures.append(f"{case.name}: exit {proc.returncode} (want {case.code}), "
                            f"missing {problems}: {proc.stderr[-400:]}")
        elif case.check is not None:
            case.check(tmp)
    assert not failures, "\n".join(failures)


# ---- the same refusals at the API: nothing reaches the instrument ---------------------------
@pytest.fixture
def small_station() -> Station:
    with Station(station_config({"grid_cols": 2, "grid_rows": 1, "rows": 10, "cols": 20})) as st:
        yield st


def _sent(station: Station) -> tuple[int, int]:
    return len(devices(station)[1].received), len(station.rm.visalib.wafer.pulses)


@pytest.mark.parametrize(("action", "error", "message"), [
    (lambda s: setattr(s.tester, "pulse_amplitude_v", 3.0), LimitError,
     "pulse_amplitude_v = 3.0 V rejected: allowed 0 to 2; nothing was sent"),
    (lambda s: s.set_pulse(1.3), SafetyViolation,
     "pulse_amplitude_v = 1.3 exceeds the station's safety limit 1.2; nothing was sent"),
    (lambda s: s.tester.write("SOUR:PULS:AMPL 1.6"), SafetyViolation, "safety limit 1.2"),
    (lambda s: setattr(s.tester, "pulse_width_s", 2e-6), SafetyViolation, "limit 1e-06"),
    (lambda s: s.tester.write("SOUR:PULS:AMPL abc"), LimitError, "checked by the safety guard"),
    (lambda s: s.tester.write_cell(10, 0, 1), LimitError, "row = 10 rejected: allowed 0 to 9"),
    (lambda s: s.tester.write_cell(0, 0, 2), LimitError, "state = 2 rejected"),
    (lambda s: s.tester.program_array(np.zeros((3, 3), np.uint8)), ValueError,
     "targets must have shape (10, 20), got (3, 3)"),
    (lambda s: s.tester.program_array(np.full((10, 20), 7)), ValueError,
     "targets values must be in (0, 1, 2), got [7]"),
    (lambda s: s.tester.program_array(np.zeros((10, 20))), ValueError,
     "must be an integer or bool array"),
    (lambda s: program_verified(s, np.zeros((20, 10), np.uint8)), ValueError,
     "targets must have shape (10, 20), got (20, 10)"),
    (lambda s: program_verified(s, np.full((10, 20), -1)), ValueError,
     "targets values must be in (0, 1, 2), got [-1]"),
    # a 0/1 integer mask: numpy took it for row indices (rows 0-1 never programmed)
    (lambda s: program_verified(s, np.zeros((10, 20), np.uint8), np.eye(10, 20, dtype=int)),
     ValueError, "give_up must be a bool mask of shape (10, 20), got int64 of shape (10, 20)"),
    (lambda s: s.tester.infer(np.zeros((2, 5), np.uint8)), ValueError,
     "inputs must have shape (n >= 1, 10), got (2, 5)"),
])
def test_api_refusals_send_nothing(small_station: Station, action, error, message) -> None:  # type: ignore[no-untyped-def]
    with small_station.at_die(DieIndex(0, 0)):
        before = _sent(small_station)
        with pytest.raises(error) as info:
            action(small_station)
        assert message in str(info.value)
        assert _sent(small_station) == before
    assert_safe(small_station)


def test_unknown_die_at_the_api_is_refused_safely(small_station: Station) -> None:
    with pytest.raises(ProberError, match=r"704, 'Die not on wafer map\.'"), \
            small_station.at_die(DieIndex(9, 9)):
        pass
    assert_safe(small_station)
    assert small_station.recoveries == 0  # a refusal is not a link fault: not retried
