"""The persistent job queue (SQLite, WAL) and the one worker thread that owns the Station.

The worker is the only code that touches the instruments: it opens the Station, runs queued
jobs strictly in submission order and closes the Station on shutdown. HTTP threads only read
and write the queue. Jobs survive a restart; a job that was running when the process died is
marked `interrupted` and can be resumed (a sweep continues its run from the journal).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import StationConfig
from .job_kinds import (
    ARRAY_FIELDS,
    REQUEST,
    RUNNERS,
    DieWriter,
    JobContext,
    StationInfo,
    StopRequestedError,
    array_summary,
    npz_bytes,
    warm_up,
)
from .locking import hold_exclusively

log = logging.getLogger(__name__)

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
#: terminal states whose oldest jobs are deleted beyond `JobStore.keep_finished` (an interrupted
#: job is kept while it can still be resumed: until it has been)
PRUNED = ("succeeded", "failed", "cancelled")


# ---- the persistent queue ----------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    total INTEGER,
    message TEXT NOT NULL DEFAULT '',
    summary TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resumed_from INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    described TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS results (job_id INTEGER PRIMARY KEY, npz BLOB NOT NULL);
"""
#: what a job's view shows: `described` (params with arrays as dtype and shape), not the
#: params themselves (megabytes of base64 for an infer job, decoded only to run it)
_COLUMNS = ("id", "kind", "described", "state", "submitted", "started", "finished",
            "attempts", "done", "total", "message", "summary", "error", "cancel_requested",
            "resumed_from", "version", "resumed_as")
#: the select list of _COLUMNS: resumed_as is the job that resumed this one, if any
_SELECT = ",".join(_COLUMNS[:-1]) + (",(SELECT r.id FROM jobs AS r WHERE "
                                     "r.resumed_from=jobs.id) AS resumed_as")


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(
        timespec="microseconds")


def _describe_params(params: dict[str, Any]) -> str:
    """Params for display (JSON): arrays replaced by their dtype and shape."""
    out = dict(params)
    for name in ARRAY_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = array_summary(out[name])
    return json.dumps(out)


def _describe_old_jobs(db: sqlite3.Connection) -> None:
    """Queues written before views were stored: add and fill the `described` column."""
    if "described" not in {row[1] for row in db.execute("PRAGMA table_info(jobs)")}:
        db.execute("ALTER TABLE jobs ADD COLUMN described TEXT")
    for job_id, params in db.execute("SELECT id, params FROM jobs WHERE described IS NULL"
                                     ).fetchall():
        db.execute("UPDATE jobs SET described=? WHERE id=?",
                   (_describe_params(json.loads(params)), job_id))


class QueueFullError(RuntimeError):
    """Too many queued jobs (HTTP 503)."""


class AlreadyResumedError(RuntimeError):
    """A job resumed a second time (HTTP 409)."""


class StoreInUseError(RuntimeError):
    """Another service holds the job queue (and so the instruments)."""


class QueueFileError(RuntimeError):
    """The job queue file cannot be opened (corrupted, or not a queue)."""


#: how long a write to the queue waits for another process's lock before failing
BUSY_WAIT_S = 60.0
#: the same for what is retried or may be skipped: the idle worker's poll, progress reports
QUICK_WAIT_S = 0.5


def _busy(err: sqlite3.Error) -> bool:
    """A lock held by another connection (transient), rather than a damaged file."""
    return isinstance(err, sqlite3.OperationalError) and ("locked" in str(err)
                                                          or "busy" in str(err))


def _check_not_resumed(db: sqlite3.Connection, job_id: int) -> None:
    again = db.execute("SELECT id FROM jobs WHERE resumed_from=?", (job_id,)).fetchone()
    if again is not None:
        raise AlreadyResumedError(f"job {job_id} was already resumed as job {again[0]}; follow "
                                  "or resume that one")


class JobStore:
    """Jobs and their results in one SQLite file (WAL); safe to share between threads."""

    def __init__(self, path: str | Path, *, max_queued: int = 1000,
                 keep_finished: int = 1000) -> None:
        if keep_finished < 1:
            raise ValueError(f"keep_finished must be at least 1, got {keep_finished}")
        self.path = Path(path)
        self.max_queued = max_queued
        self.keep_finished = keep_finished
        self._lock = threading.Lock()
        lock = self.path.with_name(self.path.name + ".lock")
        try:  # one service per queue: two workers never share a station
            held = hold_exclusively(lock)
        except OSError as err:
            raise StoreInUseError(f"{lock}: cannot lock the job queue ({err}); the service "
                                  "needs a file system with locks, so that two services "
                                  "never drive one station: put --store elsewhere") from None
        if held is None:
            raise StoreInUseError(f"{lock}: another mtjlab service is using this job queue and "
                                  "its instruments; stop it first")
        self._held = held
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        try:
            # another process may hold the file a while (an operator's sqlite3 session):
            # bookkeeping waits for it rather than fail a measurement
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                      timeout=BUSY_WAIT_S)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            with self._tx() as db:
                _describe_old_jobs(db)
                db.execute("UPDATE jobs SET state='interrupted', finished=?, version=version+1, "
                           "error='the service stopped while the job was running' "
                           "WHERE state='running'", (time.time(),))
                self._prune(db)
        except sqlite3.Error as err:
            self._held.close()
            if _busy(err):
                raise QueueFileError(f"{self.path}: the job queue is locked by another process "
                                     f"({err}); end that (an sqlite3 session?) and start again"
                                     ) from None
            raise QueueFileError(f"{self.path}: the job queue cannot be opened ({err}; "
                                 "corrupted, or another program's database?); move it aside "
                                 "to start with an empty queue (the run store is not "
                                 "affected)") from None

    def _prune(self, db: sqlite3.Connection, just_finished: int = 0) -> None:
        """Delete finished jobs (and their results) beyond the `keep_finished` that finished
        last (not the highest ids: queued jobs cancelled while an older one ran have higher
        ids), so a service that runs for months keeps a bounded queue file. The job that has
        just finished is always kept; measured data lives in the run store, never pruned."""
        old = (f"SELECT id FROM jobs WHERE (state IN ({','.join('?' * len(PRUNED))}) OR "
               "(state='interrupted' AND id IN (SELECT resumed_from FROM jobs))) "
               "AND id != ? ORDER BY finished DESC, id DESC LIMIT -1 OFFSET ?")
        args = (*PRUNED, just_finished, max(self.keep_finished - (just_finished > 0), 0))
        db.execute(f"DELETE FROM results WHERE job_id IN ({old})", args)
        db.execute(f"DELETE FROM jobs WHERE id IN ({old})", args)

    @contextmanager
    def _tx(self, quick: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction; waits up to BUSY_WAIT_S for another process's lock on the
        file, or QUICK_WAIT_S if `quick` (polls and progress: retried or skipped)."""
        with self._lock:
            if quick:
                self.db.execute(f"PRAGMA busy_timeout={int(QUICK_WAIT_S * 1000)}")
            try:
                self.db.execute("BEGIN IMMEDIATE")
            finally:
                if quick:
                    self.db.execute(f"PRAGMA busy_timeout={int(BUSY_WAIT_S * 1000)}")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self.db.close()
            self._held.close()

    def _row(self, db: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
        row = db.execute(f"SELECT {_SELECT} FROM jobs WHERE id=?",
                         (job_id,)).fetchone()
        return None if row is None else dict(zip(_COLUMNS, row, strict=True))

    def _changed(self, db: sqlite3.Connection, job_id: int) -> dict[str, Any]:
        row = self._row(db, job_id)
        assert row is not None
        return row

    def _publish(self, row: dict[str, Any]) -> None:
        view = self.view(row)
        for listener in list(self.listeners):
            try:
                listener(view)
            except Exception:  # a broken listener must not break the queue
                log.exception("job listener failed")

    def _update(self, job_id: int, sql: str, args: tuple[Any, ...], where: str = "",
                quick: bool = False) -> bool:
        """Apply `UPDATE jobs SET <sql>` to one job, bump its version, publish it."""
        with self._tx(quick) as db:
            cur = db.execute(f"UPDATE jobs SET {sql}, version=version+1 WHERE id=? {where}",
                             (*args, job_id))
            row = self._changed(db, job_id) if cur.rowcount else None
        if row is not None:
            self._publish(row)
        return row is not None

    # ---- views -----------------------------------------------------------------------------
    @staticmethod
    def view(row: dict[str, Any]) -> dict[str, Any]:
        """The public JSON form of a job row."""
        started, finished = row["started"], row["finished"]
        return {
            "id": row["id"], "kind": row["kind"], "state": row["state"],
            "params": json.loads(row["described"]),
            "submitted_at": _iso(row["submitted"]), "started_at": _iso(started),
            "finished_at": _iso(finished),
            "run_s": None if started is None or finished is None else finished - started,
            "attempts": row["attempts"],
            "progress": {"done": row["done"], "total": row["total"], "message": row["message"]},
            "summary": json.loads(row["summary"]), "error": row["error"],
            "cancel_requested": bool(row["cancel_requested"]),
            "resumed_from": row["resumed_from"], "resumed_as": row["resumed_as"],
            "version": row["version"],
        }

    def get(self, job_id: int) -> dict[str, Any] | None:
        with self._lock:
            row = self._row(self.db, job_id)
        return None if row is None else self.view(row)

    def params(self, job_id: int) -> dict[str, Any]:
        """The job's request as submitted (kind included), arrays as base64 .npy."""
        with self._lock:
            row = self.db.execute("SELECT kind, params FROM jobs WHERE id=?",
                                  (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return {"kind": row[0], **json.loads(row[1])}

    def last_writer(self, die: Any, before: int | None = None) -> DieWriter | None:
        """(id, kind, state, params) of the newest job that writes `die`'s cells: a program
        or measure job on it, or any sweep (measuring a die rewrites every cell). Jobs
        cancelled before they started are left out; with `before` (a job id), only the jobs
        queued before it that started: what the die holds when that job runs (the queue runs
        in id order). Arrays are shown as dtype and shape. None if there is none (or it was
        pruned)."""
        args: list[int] = [int(die[0]), int(die[1])]
        if before is None:
            which = "NOT (state='cancelled' AND started IS NULL)"
        else:
            which = "started IS NOT NULL AND id<?"
            args.append(before)
        sql = ("SELECT id, kind, state, described FROM jobs WHERE (kind='sweep' OR (kind IN "
               "('program', 'measure') AND json_extract(described, '$.die[0]')=? AND "
               f"json_extract(described, '$.die[1]')=?)) AND {which}")
        with self._lock:
            row = self.db.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
        return None if row is None else (int(row[0]), row[1], row[2], json.loads(row[3]))

    def list(self, state: str | None = None, kind: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` jobs (optionally of one state or kind), oldest first."""
        sql, args = f"SELECT {_SELECT} FROM jobs WHERE 1=1", []
        for col, value in (("state", state), ("kind", kind)):
            if value is not None:
                sql += f" AND {col}=?"
                args.append(value)
        with self._lock:
            rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [self.view(dict(zip(_COLUMNS, r, strict=True))) for r in reversed(rows)]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return dict(rows)

    def result(self, job_id: int) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT npz FROM results WHERE job_id=?", (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    # ---- transitions -----------------------------------------------------------------------
    def interrupted_runs(self) -> list[tuple[int, int]]:
        """(job id, run id) of the interrupted jobs that wrote to a run (sweeps), not yet
        resumed: their runs may still read `running` in the run store."""
        with self._lock:
            rows = self.db.execute(
                "SELECT id, json_extract(summary, '$.run_id') FROM jobs WHERE "
                "state='interrupted' AND json_extract(summary, '$.run_id') IS NOT NULL AND "
                "id NOT IN (SELECT resumed_from FROM jobs WHERE resumed_from IS NOT NULL)"
            ).fetchall()
        return [(int(job_id), int(run_id)) for job_id, run_id in rows]

    def check_not_resumed(self, job_id: int) -> None:
        """AlreadyResumedError naming the job that resumed `job_id`, if one did."""
        with self._lock:
            _check_not_resumed(self.db, job_id)

    def submit(self, kind: str, params: dict[str, Any], resumed_from: int | None = None
               ) -> dict[str, Any]:
        with self._tx() as db:
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state='queued'").fetchone()[0]
            if queued >= self.max_queued:
                raise QueueFullError(f"{queued} jobs are queued (limit {self.max_queued}); "
                                "try again later")
            if resumed_from is not None:  # once: a second resume would queue the job twice
                _check_not_resumed(db, resumed_from)
            cur = db.execute("INSERT INTO jobs (kind, params, described, state, submitted, "
                             "resumed_from) VALUES (?, ?, ?, 'queued', ?, ?)",
                             (kind, json.dumps(params), _describe_params(params), time.time(),
                              resumed_from))
            row = self._changed(db, int(cur.lastrowid))  # type: ignore[arg-type]
        self._publish(row)
        return self.view(row)

    def claim_next(self) -> dict[str, Any] | None:
        """Mark the oldest queued job running and return its params (None if none); waits
        QUICK_WAIT_S for another process's lock (the idle worker polls again)."""
        with self._tx(quick=True) as db:
            row = db.execute("SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1"
                             ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='running', started=?, attempts=attempts+1, "
                       "version=version+1 WHERE id=?", (time.time(), row[0]))
            job = self._changed(db, row[0])
        self._publish(job)
        return job

    def unclaim(self, job_id: int) -> None:
        """Put a job claimed but never started back in the queue, as it was."""
        self._update(job_id, "state='queued', started=NULL, attempts=attempts-1",
                     (), "AND state='running'")

    def progress(self, job_id: int, done: int, total: int | None, message: str = "") -> None:
        """Report progress; best effort: a queue locked by another process for more than
        QUICK_WAIT_S skips this report rather than hold up or fail the measurement."""
        try:
            self._update(job_id, "done=?, total=?, message=?", (done, total, message),
                         quick=True)
        except sqlite3.OperationalError as err:
            if not _busy(err):
                raise
            log.warning("job %d: progress not recorded (%s: %s)", job_id, self.path, err)

    def note(self, job_id: int, **summary: Any) -> None:
        """Merge keys into a job's summary (e.g. the run a sweep writes to)."""
        with self._lock:
            row = self._row(self.db, job_id)
        merged = {**json.loads(row["summary"]), **summary} if row else summary
        self._update(job_id, "summary=?", (json.dumps(merged),))

    def finish(self, job_id: int, state: str, *, summary: dict[str, Any] | None = None,
               npz: bytes | None = None, error: str | None = None) -> None:
        with self._lock:
            row = self._row(self.db, job_id)
        merged = {**json.loads(row["summary"]), **(summary or {})} if row else {}
        with self._tx() as db:
            if npz is not None:
                db.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (job_id, npz))
            db.execute("UPDATE jobs SET state=?, finished=?, summary=?, error=?, "
                       "version=version+1 WHERE id=?",
                       (state, time.time(), json.dumps(merged), error, job_id))
            changed = self._changed(db, job_id)
            self._prune(db, just_finished=job_id)
        self._publish(changed)

    def cancel(self, job_id: int) -> tuple[bool, str]:
        """Cancel a queued job now, or flag a running one to stop.

        Returns (acted, state): state is 'cancelled', 'running' (stop requested) or, when
        nothing was done, the job's final state. KeyError for an unknown job.
        """
        if self._update(job_id, "state='cancelled', finished=?, cancel_requested=1",
                        (time.time(),), "AND state='queued'"):
            with self._tx() as db:  # a finished job now, pruned as the others
                self._prune(db, just_finished=job_id)
            return True, "cancelled"
        if self._update(job_id, "cancel_requested=1", (), "AND state='running'"):
            return True, "running"
        job = self.get(job_id)
        if job is None:
            raise KeyError(job_id)
        return False, str(job["state"])


class Worker:
    """The single thread that owns the Station and runs queued jobs in submission order."""

    def __init__(self, config: StationConfig, jobs: JobStore, store_path: Path, *,
                 station_factory: Callable[[StationConfig], Any] | None = None,
                 paused: bool = False) -> None:
        from .station import Station

        self.config = config
        self.jobs = jobs
        self.store_path = Path(store_path)
        self.station_factory = station_factory or Station
        self.info: StationInfo | None = None
        self.snapshot: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.current: tuple[int, Any] | None = None  # (job id, StopFlag)
        self._paused = paused
        self._stopping = False
        self._wake = threading.Condition()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="mtjlab-worker", daemon=True)

    # ---- control (any thread) ----------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> StationInfo:
        """Start the thread, wait until the Station is open; raise what opening raised. Once
        started, later calls only report the outcome."""
        if self._thread.ident is None:
            self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the station did not open within {timeout_s:g} s")
        if self.error is not None:
            raise self.error
        assert self.info is not None
        return self.info

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def paused(self) -> bool:
        return self._paused

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self.wake()

    def request_stop(self, job_id: int) -> bool:
        """Ask the running job to stop at its next safe point."""
        current = self.current
        if current is not None and current[0] == job_id:
            current[1].request()
            return True
        return False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def halt(self) -> None:
        """Take no further job and ask the running one to stop at its next safe point; returns
        at once and takes no lock, so a signal handler may call it (the worker notices
        within a second)."""
        self._stopping = True
        current = self.current
        if current is not None:
            current[1].request()

    def stop(self, report_every_s: float = 30.0) -> None:
        """Stop after the current job reaches a safe point; close the Station.

        Waits for as long as that takes (each instrument call is bounded by its timeout and
        retries): leaving earlier would kill the worker with the chuck down or the output on."""
        self.halt()
        self.wake()
        while self._thread.is_alive():
            self._thread.join(report_every_s)
            if self._thread.is_alive():
                log.warning("still waiting for job %s to reach a safe point",
                            self.current[0] if self.current else "?")

    # ---- the thread ------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            warm_up()
            station = self.station_factory(self.config)
            # a service killed mid-job leaves the chuck down: lift it before idling
            station.safe_state()
            self.info = StationInfo(self.config, tuple(station.wafer_map()),
                                    tuple(station.tester.shape), dict(station.identities))
            self.snapshot = station.snapshot()
        except BaseException as err:  # reported to start()
            self.error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while (job := self._next()) is not None:
                try:
                    self._execute(station, job)
                except Exception as err:  # bookkeeping or safe_state failed: keep serving
                    log.exception("job %d: the worker could not finish it cleanly", job["id"])
                    self._fail_quietly(station, job["id"], err)
        except BaseException as err:
            self.error = err
            log.exception("the worker stopped")
            raise
        finally:
            station.close()

    def _fail_quietly(self, station: Any, job_id: int, err: BaseException) -> None:
        """Best effort after an unexpected error: instruments safe, job marked failed."""
        with suppress(Exception):
            station.safe_state()
        with suppress(Exception):
            self.jobs.finish(job_id, "failed", error=f"{type(err).__name__}: {err}")

    def _next(self) -> dict[str, Any] | None:
        with self._wake:
            while not self._stopping:
                try:
                    if not self._paused and (job := self.jobs.claim_next()) is not None:
                        return job
                except sqlite3.OperationalError as err:  # idle: wait for the lock to go
                    if not _busy(err):
                        raise
                    log.warning("%s: job queue locked by another process (%s); waiting",
                                self.jobs.path, err)
                self._wake.wait(1.0)
        return None

    def _execute(self, station: Any, row: dict[str, Any]) -> None:
        from .interrupts import StopFlag

        job_id = row["id"]
        stop = StopFlag()
        self.current = (job_id, stop)  # from now on a halt reaches this job's stop flag
        if self._stopping:  # halted between the claim and now: the job never started
            self.current = None
            self.jobs.unclaim(job_id)
            return
        if (self.jobs.get(job_id) or {}).get("cancel_requested"):
            stop.request()  # cancelled between claim and now
        ctx = JobContext(station, self.store_path, stop,
                         lambda d, t, m="": self.jobs.progress(job_id, d, t, m),
                         lambda **kw: self.jobs.note(job_id, **kw), job_id,
                         lambda die: self.jobs.last_writer(die, before=job_id))
        try:
            job = REQUEST.validate_python(self.jobs.params(job_id))
            outcome = RUNNERS[job.kind](ctx, job)
        except StopRequestedError as err:
            state = "interrupted" if self._stopping else "cancelled"
            self.jobs.finish(job_id, state, error=str(err))
        except Exception as err:
            log.exception("job %d failed", job_id)
            station.safe_state()
            self.jobs.finish(job_id, "failed", error=f"{type(err).__name__}: {err}")
        else:
            self.jobs.finish(job_id, "succeeded", summary=outcome.summary,
                             npz=npz_bytes(outcome.arrays))
        finally:
            self.current = None

