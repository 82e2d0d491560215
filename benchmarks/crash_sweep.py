"""Crash safety of `mtjlab sweep`: SIGKILL it at random moments, resume, compare with a clean run.

    python benchmarks/crash_sweep.py [--kills 10] [--seed 0] [--wafer-seed 0] [--sigint] [--sigterm]

Runs the real CLI (`python -m instruments.cli sweep`) as a subprocess. An uninterrupted run of
the same station file (same wafer seed) is the reference. The crash run is started, killed
with SIGKILL at a random (seeded) moment once it is working, resumed with ``--resume``, killed
again, ... `kills` times, then resumed to the end. The two stores must then hold the same
dies, each committed exactly once in the journal, with identical defect maps. With
``--sigint`` a sweep is also stopped with Ctrl-C (SIGINT): it must end at a safe point with
exit code 1 and resume to the same result; with ``--sigterm`` one is stopped with SIGTERM,
which ends it at once (mid-die), safely, with exit code 1, and resumes to the same result.

Last line: RESULT kills=<n> kill_identical=<true|false> dies=<n> [sigint_ok=<true|false>]
[sigterm_ok=<true|false>]
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: A die takes a few tens of ms on the simulated wafer; the kill window adapts to what is seen.
FIRST_DIE_TIME_S = 0.05
POLL_S = 0.005


def station_yaml(wafer_seed: int) -> str:
    """The station file of both runs: the whole simulated 6 x 6 wafer."""
    return (f"name: crash-test\ninstruments:\n  simulated:\n    seed: {wafer_seed}\n"
            "wafer: {dies: all}\n")


def sweep_command(station: Path, store: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "instruments.cli", "-q", "sweep", "--station", str(station),
           "--store", str(store)]
    return [*cmd, "--resume"] if resume else cmd


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def spawn(station: Path, store: Path, resume: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(sweep_command(station, store, resume), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _query(store: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Read-only look at a store another process may be writing (WAL: readers never block)."""
    if not store.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1.0)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []


def journal_length(store: Path) -> int:
    rows = _query(store, "SELECT COUNT(*) FROM journal")
    return int(rows[0][0]) if rows else 0


def dies_done(store: Path) -> int:
    rows = _query(store, "SELECT COUNT(*) FROM journal WHERE step='die' AND status='done'")
    return int(rows[0][0]) if rows else 0


def has_run(store: Path) -> bool:
    return bool(_query(store, "SELECT run_id FROM runs WHERE kind='sweep'"))


@dataclass
class StoreContent:
    """What a sweep store holds, for comparison."""

    runs: list[tuple[int, str]]
    done: list[str]  # dies marked done, journal order
    kinds: dict[str, np.ndarray] = field(default_factory=dict)
    arrays: dict[tuple[str, str], bytes] = field(default_factory=dict)
    records: dict[tuple[str, str], str] = field(default_factory=dict)


def read_store(store: Path) -> StoreContent:
    from instruments.store import RunStore

    with RunStore(store, create=False) as rs:
        runs = [(r.run_id, r.status) for r in rs.runs()]
        run_id = runs[-1][0]
        done = rs.dies_done(run_id)
        content = StoreContent(runs, done)
        finished = set(done)
        for die, name in rs.array_names(run_id):
            array = rs.array(run_id, die, name)
            content.arrays[(die, name)] = array.tobytes()
            if name == "kinds" and die in finished:
                content.kinds[die] = array
        for die, name, text in rs.db.execute(
                "SELECT die, name, json FROM records WHERE run_id=?", (run_id,)):
            content.records[(die, name)] = text
    return content


@dataclass
class Comparison:
    identical: bool  # same dies, each done once, identical defect maps (kinds)
    arrays_identical: bool  # every stored array and record bit-identical as well
    problems: list[str]


def compare(ref: StoreContent, got: StoreContent) -> Comparison:
    problems: list[str] = []
    if len(got.runs) != 1 or got.runs[0][1] != "finished":
        problems.append(f"expected one finished run, got {got.runs}")
    dups = sorted({d for d in got.done if got.done.count(d) > 1})
    if dups:
        problems.append(f"dies done more than once in the journal: {dups}")
    if sorted(set(got.done)) != sorted(set(ref.done)):
        missing = sorted(set(ref.done) - set(got.done))
        extra = sorted(set(got.done) - set(ref.done))
        problems.append(f"die sets differ: missing {missing}, extra {extra}")
    for die, kinds in ref.kinds.items():
        other = got.kinds.get(die)
        if other is None or not np.array_equal(kinds, other):
            problems.append(f"defect map of die {die} differs")
    arrays_identical = got.arrays == ref.arrays and got.records == ref.records
    return Comparison(not problems, arrays_identical, problems)


@dataclass
class CrashReport:
    kills: int
    attempts: int
    comparison: Comparison
    dies: int
    seconds: float
    log: list[str]


def crash_run(workdir: Path, kills: int = 10, seed: int = 0, wafer_seed: int = 0,
              timeout_s: float = 120.0) -> CrashReport:
    """Reference run and crash run (in parallel); returns how they compare."""
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    station = workdir / "station.yaml"
    station.write_text(station_yaml(wafer_seed))
    ref_store, store = workdir / "reference.sqlite", workdir / "crashed.sqlite"
    reference = spawn(station, ref_store, resume=False)
    log: list[str] = []
    die_time = FIRST_DIE_TIME_S
    done_kills = attempts = 0
    while True:
        attempts += 1
        before_rows, before_dies = journal_length(store), dies_done(store)
        proc = spawn(station, store, resume=has_run(store))
        if done_kills >= kills:
            _, err = proc.communicate(timeout=timeout_s)
            if proc.returncode != 0:
                raise RuntimeError(f"final resume failed ({proc.returncode}): {err.strip()}")
            log.append(f"attempt {attempts}: resumed to the end")
            break
        # Wait until this process is working (a new journal row), then kill at a random
        # moment within a window of about two dies' time, shrunk so dies remain for later kills.
        deadline = time.monotonic() + timeout_s
        while journal_length(store) <= before_rows and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("sweep made no progress")
            time.sleep(POLL_S)
        started = time.monotonic()
        remaining = 36 - before_dies
        window = min(2.5 * die_time, remaining / (kills - done_kills + 1) * die_time)
        delay = float(rng.uniform(0.0, max(window, 0.0)))
        while time.monotonic() - started < delay and proc.poll() is None:
            time.sleep(min(POLL_S, delay))
        if proc.poll() is not None:
            proc.communicate()
            log.append(f"attempt {attempts}: finished (exit {proc.returncode}) before the kill")
            if proc.returncode == 0:
                break
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        done_kills += 1
        progressed = dies_done(store) - before_dies
        if progressed > 0:
            die_time = 0.5 * die_time + 0.5 * (time.monotonic() - started) / progressed
        log.append(f"attempt {attempts}: SIGKILL after {delay * 1000:.0f} ms of work, "
                   f"{progressed} die(s) committed, {dies_done(store)} done in all")
    _, ref_err = reference.communicate(timeout=timeout_s)
    if reference.returncode != 0:
        raise RuntimeError(f"reference run failed ({reference.returncode}): {ref_err.strip()}")
    got = read_store(store)
    comparison = compare(read_store(ref_store), got)
    return CrashReport(done_kills, attempts, comparison, len(set(got.done)),
                       time.monotonic() - t0, log)


@dataclass
class SignalReport:
    ok: bool
    exit_code: int
    message: str
    status_after_stop: str
    dies_at_stop: int
    comparison: Comparison | None


#: what the sweep says on stderr when stopped by each signal
SIGNAL_MESSAGES = {signal.SIGINT: "resume with --resume", signal.SIGTERM: "terminated (SIGTERM)"}


def signal_run(workdir: Path, wafer_seed: int = 0, reference: Path | None = None,
               timeout_s: float = 120.0, sig: signal.Signals = signal.SIGINT) -> SignalReport:
    """`sig` once a die is done (Ctrl-C: a stop at the next safe point; SIGTERM: at once):
    exit 1, status 'interrupted', resumable to the uninterrupted result."""
    station = workdir / "station.yaml"
    station.write_text(station_yaml(wafer_seed))
    store = workdir / f"{sig.name.lower()}.sqlite"
    ref_proc = None
    if reference is None:
        reference = workdir / f"{sig.name.lower()}-reference.sqlite"
        ref_proc = spawn(station, reference, resume=False)
    proc = spawn(station, store, resume=False)
    deadline = time.monotonic() + timeout_s
    while dies_done(store) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout_s)
    status = _query(store, "SELECT status FROM runs ORDER BY run_id DESC LIMIT 1")
    status_text = status[0][0] if status else "<none>"
    at_stop = dies_done(store)
    resumed = spawn(station, store, resume=True)
    _, err2 = resumed.communicate(timeout=timeout_s)
    if ref_proc is not None:
        ref_proc.communicate(timeout=timeout_s)
    comparison = compare(read_store(reference), read_store(store)) if resumed.returncode == 0 \
        else None
    ok = (proc.returncode == 1 and SIGNAL_MESSAGES[sig] in err
          and status_text == "interrupted" and 1 <= at_stop < 36
          and comparison is not None and comparison.identical)
    message = err.strip().splitlines()[-1] if err.strip() else ""
    if resumed.returncode != 0:
        message += f" | resume failed: {err2.strip()}"
    return SignalReport(ok, proc.returncode, message, status_text, at_stop, comparison)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--wafer-seed", type=int, default=0)
    ap.add_argument("--sigint", action="store_true", help="also test Ctrl-C")
    ap.add_argument("--sigterm", action="store_true", help="also test SIGTERM")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = crash_run(Path(tmp), args.kills, args.seed, args.wafer_seed)
        for line in report.log:
            print(line)
        for problem in report.comparison.problems:
            print("PROBLEM:", problem)
        print(f"{report.kills} kills, {report.attempts} processes, {report.dies} dies, "
              f"defect maps identical: {report.comparison.identical}, every array and record "
              f"bit-identical: {report.comparison.arrays_identical}, {report.seconds:.1f} s")
        tail = ""
        for sig, wanted in ((signal.SIGINT, args.sigint), (signal.SIGTERM, args.sigterm)):
            if not wanted:
                continue
            s = signal_run(Path(tmp), args.wafer_seed, reference=Path(tmp) / "reference.sqlite",
                           sig=sig)
            print(f"{sig.name}: exit {s.exit_code}, status {s.status_after_stop!r} with "
                  f"{s.dies_at_stop} dies done, message {s.message!r}")
            tail += f" {sig.name.lower()}_ok={str(s.ok).lower()}"
    print(f"RESULT kills={report.kills} kill_identical={str(report.comparison.identical).lower()}"
          f" dies={report.dies}{tail}")


if __name__ == "__main__":
    main()
