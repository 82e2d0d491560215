"""Crash-safe run store: one SQLite file (WAL) holding runs, a step journal and dense arrays.

Every die's results are committed in one transaction together with the journal entry that
marks the die done, so a killed process leaves either the whole die or none of it.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    created_utc TEXT NOT NULL,
    finished_utc TEXT,
    station_yaml TEXT NOT NULL,
    snapshot_json TEXT NOT NULL,
    software_version TEXT NOT NULL,
    seeds_json TEXT NOT NULL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    die TEXT NOT NULL,
    step TEXT NOT NULL,
    status TEXT NOT NULL,
    at_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS arrays (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    die TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, die, name)
);
CREATE TABLE IF NOT EXISTS records (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    die TEXT NOT NULL,
    name TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (run_id, die, name)
);
CREATE INDEX IF NOT EXISTS journal_run ON journal(run_id, die);
"""

RUN_LEVEL = "-"  # the `die` key of arrays and records that belong to the run, not a die
#: run kinds whose dies carry measured defect maps (a sweep; a demo run sweeps first)
SWEEP_KIND, DEMO_KIND = "sweep", "demo"
MEASURING_KINDS = (SWEEP_KIND, DEMO_KIND)


class StoreError(RuntimeError):
    """A store that cannot be used: locked, corrupted, from a newer version, disk full."""


class StoreMissing(StoreError, FileNotFoundError):
    """The named store file does not exist (a bad argument, not a failed run)."""


class RunMissing(StoreError, LookupError):
    """The store holds no run of the id asked for (a bad argument, not a failed run)."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def die_key(die: tuple[int, int]) -> str:
    """Text key of a die position, e.g. '3,4'."""
    return f"{die[0]},{die[1]}"


def parse_die_key(key: str) -> tuple[int, int]:
    col, row = key.split(",")
    return int(col), int(row)


def array_to_bytes(array: np.ndarray) -> bytes:
    """Self-describing .npy bytes (dtype and shape included)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


@dataclass(frozen=True)
class RunInfo:
    run_id: int
    kind: str
    status: str
    created_utc: str
    finished_utc: str | None
    dies_done: int
    error: str | None


class RunStore:
    """An open store file. Use as a context manager; one writer at a time."""

    def __init__(self, path: str | Path, *, create: bool = True, timeout_s: float = 5.0,
                 read_only: bool = False) -> None:
        """read_only: for listing, exporting and reporting; works on a store the user may not
        write (an archive, another user's files, read-only media). Implies create=False."""
        self.path = Path(path)
        if (read_only or not create) and not self.path.exists():
            raise StoreMissing(f"{self.path}: no such store")
        if not self.path.parent.is_dir():
            raise StoreMissing(f"{self.path}: no folder {self.path.parent} to create the store "
                               "in")
        try:
            if read_only:
                self.db = self._connect_read_only(timeout_s)
                self._check_version(create_schema=False)
                return
            self.db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
            self._refuse_other_databases(create)  # before anything is written
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._check_version()
        except sqlite3.DatabaseError as err:
            raise self._explain(err) from err

    def _connect_read_only(self, timeout_s: float) -> sqlite3.Connection:
        """mode=ro; where even that cannot open a WAL store (its -shm file cannot be made,
        e.g. a folder the user may not write), immutable=1: no writer can be at work there,
        since a writer needs that file too."""
        uri = self.path.resolve().as_uri()
        last: sqlite3.Error | None = None
        for flags in ("mode=ro", "mode=ro&immutable=1"):
            if "immutable" in flags:
                self._refuse_unmerged_wal()
            db = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=timeout_s,
                                 isolation_level=None)
            try:
                db.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return db
            except sqlite3.OperationalError as err:
                db.close()
                last = err
        assert last is not None
        raise last

    def _refuse_unmerged_wal(self) -> None:
        """An immutable open reads the main file only: writes still in the -wal file (a
        writer that was killed) would be silently missing from what is listed or exported."""
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise StoreError(
                f"{self.path}: its latest writes are still in {wal.name} (the process that "
                f"wrote them did not close the store), and they cannot be read without "
                f"writing next to the store, which this folder does not allow: copy "
                f"{self.path.name} and {wal.name} to a folder you may write, and use the copy")

    def _explain(self, err: sqlite3.Error) -> StoreError:
        text = str(err)
        if "locked" in text or "busy" in text:
            return StoreError(f"{self.path}: store is locked by another process ({text})")
        if "not a database" in text or "malformed" in text:
            return StoreError(f"{self.path}: not a valid mtjlab store (corrupted?): {text}")
        if "full" in text:
            return StoreError(f"{self.path}: disk full while writing the store: {text}")
        return StoreError(f"{self.path}: {text}")

    def _what_file(self) -> tuple[str, tuple[str] | None]:
        """('store', its schema_version row), ('empty', None) or ('other', None): another
        program's database (a table named meta alone does not make a store)."""
        tables = {r[0] for r in self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return "empty", None
        if "meta" in tables:
            try:
                row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'"
                                      ).fetchone()
            except sqlite3.OperationalError:  # a meta table of other columns
                row = None
            if row is not None:
                return "store", row
        return "other", None

    def _refuse_other_databases(self, create: bool) -> tuple[str] | None:
        """Never add the store's tables to another program's database, nor (create=False:
        train, evaluate; read-only) to an empty file that was named by mistake. Returns the
        store's schema_version row (None for an empty file)."""
        what, row = self._what_file()
        if what == "store" or (what == "empty" and create):
            return row
        self.db.close()
        shown = "an empty file" if what == "empty" else "a database of another program"
        raise StoreError(f"{self.path}: not an mtjlab store ({shown}); name the store a sweep "
                         "wrote" + (" or a new file" if create else ""))

    def _check_version(self, create_schema: bool = True) -> None:
        if not create_schema:  # read-only: the tables must be there already
            self._newer_refused(self._refuse_other_databases(create=False))
            return
        with self.transaction():
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    self.db.execute(statement)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            self._newer_refused(row)

    def _newer_refused(self, row: tuple[str] | None) -> None:
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: written by a newer mtjlab (store schema {row[0]}, this "
                f"version reads up to {SCHEMA_VERSION}); upgrade mtjlab to open it")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:
            raise self._explain(err) from err
        try:
            yield self.db
        except sqlite3.DatabaseError as err:  # e.g. disk full during an INSERT
            self._rollback()
            raise self._explain(err) from err
        except BaseException:
            self._rollback()
            raise
        try:
            self.db.execute("COMMIT")
        except sqlite3.DatabaseError as err:
            self._rollback()
            raise self._explain(err) from err

    def _rollback(self) -> None:
        """Roll back if a transaction is still open (SQLite ends some on its own errors)."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- runs --------------------------------------------------------------------------
    def create_run(self, kind: str, station_yaml: str, snapshot: dict[str, Any],
                   software_version: str, seeds: dict[str, Any]) -> int:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO runs (kind, status, created_utc, station_yaml, snapshot_json, "
                "software_version, seeds_json) VALUES (?, 'running', ?, ?, ?, ?, ?)",
                (kind, _now(), station_yaml, json.dumps(snapshot), software_version,
                 json.dumps(seeds)))
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        finished = _now() if status in ("finished", "failed") else None
        with self.transaction() as db:
            db.execute("UPDATE runs SET status=?, finished_utc=?, error=? WHERE run_id=?",
                       (status, finished, error, run_id))

    @contextmanager
    def status_kept(self, run_id: int, interrupted: tuple[type[BaseException], ...] = (
            KeyboardInterrupt,)) -> Iterator[None]:
        """If the block does not finish, mark the run `interrupted` (for `interrupted`
        exceptions) or `failed`, with the reason, and re-raise: no run is left `running` by a
        process that went on to do something else."""
        try:
            yield
        except BaseException as err:
            status = "interrupted" if isinstance(err, interrupted) else "failed"
            reason = str(err) if status == "interrupted" and str(err) else \
                f"{type(err).__name__}: {err}".removesuffix(": ")
            with suppress(StoreError, sqlite3.Error):
                self.set_status(run_id, status, reason)
            raise

    def run_row(self, run_id: int) -> dict[str, Any]:
        cur = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,))
        row = cur.fetchone()
        if row is None:
            raise RunMissing(f"{self.path}: no run {run_id}")
        return dict(zip([c[0] for c in cur.description], row, strict=True))

    def snapshot(self, run_id: int) -> dict[str, Any]:
        """The snapshot a run was created with, as a dict."""
        return dict(json.loads(self.run_row(run_id)["snapshot_json"]))

    def latest_run(self, kinds: str | Collection[str] | None = None, *,
                   finished: bool | None = None) -> int | None:
        """The newest run of these kinds (one or several; None: any), finished or not
        (None: either); None if there is none."""
        sql = "SELECT run_id FROM runs WHERE 1=1"
        args: list[Any] = []
        if kinds:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            sql += f" AND kind IN ({', '.join('?' * len(kinds))})"
            args.extend(kinds)
        if finished is not None:
            sql += " AND status " + ("=" if finished else "!=") + " 'finished'"
        row = self.db.execute(sql + " ORDER BY run_id DESC LIMIT 1", args).fetchone()
        return None if row is None else int(row[0])

    def runs(self) -> list[RunInfo]:
        rows = self.db.execute(
            "SELECT r.run_id, r.kind, r.status, r.created_utc, r.finished_utc, r.error, "
            "(SELECT COUNT(DISTINCT die) FROM journal j WHERE j.run_id=r.run_id "
            " AND j.step='die' AND j.status='done') FROM runs r ORDER BY r.run_id").fetchall()
        return [RunInfo(r[0], r[1], r[2], r[3], r[4], r[6], r[5]) for r in rows]

    # ---- journal -----------------------------------------------------------------------
    def journal(self, run_id: int, die: str, step: str, status: str) -> None:
        with self.transaction() as db:
            self._journal(db, run_id, die, step, status)

    @staticmethod
    def _journal(db: sqlite3.Connection, run_id: int, die: str, step: str, status: str) -> None:
        db.execute("INSERT INTO journal (run_id, die, step, status, at_utc) VALUES (?,?,?,?,?)",
                   (run_id, die, step, status, _now()))

    def dies_done(self, run_id: int) -> list[str]:
        rows = self.db.execute(
            "SELECT die FROM journal WHERE run_id=? AND step='die' AND status='done' "
            "ORDER BY seq", (run_id,)).fetchall()
        return [r[0] for r in rows]

    def journal_rows(self, run_id: int) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self.db.execute(
            "SELECT die, step, status FROM journal WHERE run_id=? ORDER BY seq", (run_id,))]

    # ---- results -----------------------------------------------------------------------
    def commit_die(self, run_id: int, die: str, arrays: dict[str, np.ndarray],
                   records: dict[str, Any]) -> None:
        """Store a die's arrays and records and mark it done, atomically; refused if the die is
        already done in this run (another process measuring the same run)."""
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM journal WHERE run_id=? AND die=? AND step='die' AND "
                          "status='done'", (run_id, die)).fetchone():
                raise StoreError(f"{self.path}: die {die} of run {run_id} is already stored: "
                                 "is another process measuring this run?")
            self._put(db, run_id, die, arrays, records)
            self._journal(db, run_id, die, "die", "done")

    def put(self, run_id: int, die: str, arrays: dict[str, np.ndarray] | None = None,
            records: dict[str, Any] | None = None) -> None:
        with self.transaction() as db:
            self._put(db, run_id, die, arrays or {}, records or {})

    @staticmethod
    def _put(db: sqlite3.Connection, run_id: int, die: str, arrays: dict[str, np.ndarray],
             records: dict[str, Any]) -> None:
        for name, array in arrays.items():
            db.execute("INSERT OR REPLACE INTO arrays VALUES (?,?,?,?)",
                       (run_id, die, name, array_to_bytes(array)))
        for name, value in records.items():
            db.execute("INSERT OR REPLACE INTO records VALUES (?,?,?,?)",
                       (run_id, die, name, json.dumps(value)))

    def array(self, run_id: int, die: str, name: str) -> np.ndarray:
        row = self.db.execute("SELECT data FROM arrays WHERE run_id=? AND die=? AND name=?",
                              (run_id, die, name)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: run {run_id} has no array {name!r} for die {die}")
        try:
            return array_from_bytes(row[0])
        except (ValueError, OSError, EOFError) as err:  # what np.load raises on bad bytes
            raise StoreError(f"{self.path}: run {run_id}: array {name!r} of die {die} is "
                             f"corrupted ({err})") from err

    def record(self, run_id: int, die: str, name: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT json FROM records WHERE run_id=? AND die=? AND name=?",
                              (run_id, die, name)).fetchone()
        return default if row is None else json.loads(row[0])

    def records(self, run_id: int) -> dict[str, dict[str, Any]]:
        """Every record of a run: {die: {name: value}} (die `RUN_LEVEL` for the run's own)."""
        out: dict[str, dict[str, Any]] = {}
        for die, name, text in self.db.execute(
                "SELECT die, name, json FROM records WHERE run_id=? ORDER BY die, name",
                (run_id,)):
            out.setdefault(die, {})[name] = json.loads(text)
        return out

    def array_names(self, run_id: int) -> list[tuple[str, str]]:
        return [tuple(r) for r in self.db.execute(
            "SELECT die, name FROM arrays WHERE run_id=? ORDER BY die, name", (run_id,))]
