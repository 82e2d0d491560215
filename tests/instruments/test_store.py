"""The run store: atomic die commits, versioning, clear errors."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from instruments.cli import EXIT_FAILED, main
from instruments.export import export_store
from instruments.store import SCHEMA_VERSION, RunStore, StoreError


def _run(store: RunStore) -> int:
    return store.create_run("sweep", "name: x\n", {"id": "sim"}, "0.1.0", {"wafer": 0})


def test_arrays_round_trip_dense_with_dtype(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        run = _run(store)
        kinds = np.arange(20000, dtype=np.int8).reshape(100, 200)
        store.commit_die(run, "1,2", {"kinds": kinds}, {"counts": {"short": 3}})
        out = store.array(run, "1,2", "kinds")
        assert out.dtype == np.int8 and np.array_equal(out, kinds)
        assert store.record(run, "1,2", "counts") == {"short": 3}
        assert store.dies_done(run) == ["1,2"]


def test_failed_commit_leaves_no_partial_die(tmp_path: Path) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        run = _run(store)
        with pytest.raises(TypeError):
            store.commit_die(run, "0,0", {"kinds": np.zeros(3)}, {"bad": object()})
        assert store.dies_done(run) == []
        assert store.array_names(run) == []


def test_wal_mode_and_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer mtjlab"):
        RunStore(path)


def test_corrupted_store_is_named(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a valid mtjlab store"):
        RunStore(path)


def test_locked_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    RunStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            store = RunStore(path, timeout_s=0.1)
            _run(store)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_latest_run_by_kinds_and_status(tmp_path: Path) -> None:
    from instruments.loop import latest_measurement_run

    with RunStore(tmp_path / "s.sqlite") as store:
        with pytest.raises(StoreError, match="no sweep in this store"):
            latest_measurement_run(store)
        sweep = _run(store)
        with pytest.raises(StoreError, match=f"run {sweep} is running"):
            latest_measurement_run(store)
        store.set_status(sweep, "finished")
        demo = store.create_run("demo", "name: x\n", {"id": "sim"}, "0.1.0", {"wafer": 0})
        train = store.create_run("train", "name: x\n", {"id": "sim"}, "0.1.0", {})
        assert store.latest_run() == train
        assert store.latest_run("sweep") == sweep
        assert store.latest_run(("sweep", "demo")) == demo
        assert store.latest_run(("sweep", "demo"), finished=True) == sweep
        assert store.latest_run("sweep", finished=False) is None
        assert latest_measurement_run(store) == sweep


def test_a_die_is_stored_once_per_run(tmp_path: Path) -> None:
    """A second process measuring the same run cannot store a die twice."""
    with RunStore(tmp_path / "s.sqlite") as store:
        run = _run(store)
        store.commit_die(run, "0,0", {"kinds": np.zeros((2, 2), np.int8)}, {})
        with pytest.raises(StoreError, match="die 0,0 of run 1 is already stored"):
            store.commit_die(run, "0,0", {"kinds": np.ones((2, 2), np.int8)}, {})
        assert store.dies_done(run) == ["0,0"]
        assert not store.array(run, "0,0", "kinds").any()  # the first measurement is kept


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt(), "interrupted"),
                                               (RuntimeError("lost"), "failed")])
def test_a_run_that_does_not_finish_is_never_left_running(tmp_path: Path, error: BaseException,
                                                          status: str) -> None:
    with RunStore(tmp_path / "s.sqlite") as store:
        run = _run(store)
        with pytest.raises(type(error)), store.status_kept(run):
            raise error
        assert store.run_row(run)["status"] == status


def _exportable(tmp_path: Path) -> Path:
    path = tmp_path / "s.sqlite"
    with RunStore(path) as store:
        run = _run(store)
        store.commit_die(run, "0,0", {"kinds": np.zeros((2, 2), np.int8)}, {})
        store.set_status(run, "finished")
        _run(store)  # a later sweep that failed
        store.set_status(2, "failed", "RuntimeError: lost")
    return path


def test_a_read_only_open_never_misses_writes_left_in_the_wal(tmp_path: Path, monkeypatch
                                                               ) -> None:  # type: ignore[no-untyped-def]
    """Where the folder cannot be written (mode=ro fails), the store is opened immutable, which
    reads the main file only: a killed writer's last dies, still in the -wal file, used to be
    missing from `runs` and `export` (68 of 70 dies, exit 0). Refused with what to do."""
    path = _exportable(tmp_path)
    writer = RunStore(path)  # left open, as a killed sweep leaves it: its writes stay in -wal
    writer.db.execute("PRAGMA wal_autocheckpoint=0")
    writer.commit_die(1, "1,0", {"kinds": np.zeros((2, 2), np.int8)}, {})
    assert (tmp_path / "s.sqlite-wal").stat().st_size > 0
    connect = sqlite3.connect

    class Unreadable:  # what mode=ro gives where the -shm file cannot be made
        def execute(self, *_args):  # type: ignore[no-untyped-def]
            raise sqlite3.OperationalError("unable to open database file")

        def close(self) -> None:
            pass

    def unwritable_folder(target: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if "mode=ro" in str(target) and "immutable" not in str(target):
            return Unreadable()
        return connect(target, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", unwritable_folder)
    with pytest.raises(StoreError, match=r"latest writes are still in s\.sqlite-wal"):
        RunStore(path, read_only=True)
    monkeypatch.undo()
    writer.close()  # the WAL is merged: the immutable open sees everything
    monkeypatch.setattr(sqlite3, "connect", unwritable_folder)
    with RunStore(path, read_only=True) as store:
        assert len(store.dies_done(1)) == 2


def test_export_takes_the_latest_finished_run_and_protects_files(tmp_path: Path) -> None:
    path = _exportable(tmp_path)
    out = export_store(path, None, "npz")
    assert out.name == "s-run1.npz"  # not the failed run 2
    with pytest.raises(ValueError, match="is the store itself"):
        export_store(path, path, "npz")
    with pytest.raises(ValueError, match="exists; pass --force"):
        export_store(path, out, "npz")
    assert export_store(path, out, "npz", force=True) == out
    with pytest.raises(ValueError, match="is a folder"):
        export_store(path, tmp_path, "npz")
    # the default name is protected too (it used to be replaced without a word)
    out.write_text("notes")
    with pytest.raises(ValueError, match=r"s-run1\.npz exists; pass --force"):
        export_store(path, None, "npz")
    assert out.read_text() == "notes"
    assert export_store(path, None, "npz", force=True) == out
    with pytest.raises(ValueError, match="no folder"):
        export_store(path, tmp_path / "none" / "x.npz", "npz")
    assert not (tmp_path / "none").exists()
    with RunStore(path) as store:
        assert [r.status for r in store.runs()] == ["finished", "failed"]


def test_a_store_damaged_after_opening_fails_in_one_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    path = tmp_path / "s.sqlite"
    with RunStore(path) as store:
        run = _run(store)
        for i in range(40):  # enough pages that the header survives the damage below
            store.commit_die(run, f"{i},0", {"kinds": np.full((64, 64), i, np.int8)}, {})
        store.set_status(run, "finished")
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4 * 4096] = b"\xff" * (4 * 4096)
    path.write_bytes(bytes(data))
    assert main(["export", "--store", str(path), "--format", "npz", "--out",
                 str(tmp_path / "x.npz")]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "failed:" in err and "Traceback" not in err


def test_listing_and_exporting_open_the_store_read_only(tmp_path: Path) -> None:
    """`runs` and `export` never write the store (they work where the user may not write it:
    an archive, read-only media; checked by hand as an unprivileged user, for a read-only file
    and a read-only folder, which the tests, run as root, cannot reproduce)."""
    path = _exportable(tmp_path)
    before = path.read_bytes()
    assert main(["runs", "--store", str(path)]) == 0
    assert main(["-q", "export", "--store", str(path), "--format", "npz", "--out",
                 str(tmp_path / "x.npz")]) == 0
    assert path.read_bytes() == before
    with RunStore(path, read_only=True) as store:
        assert [r.status for r in store.runs()] == ["finished", "failed"]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.db.execute("DELETE FROM runs")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not an mtjlab store"):
        RunStore(other, read_only=True)
    with pytest.raises(FileNotFoundError):
        RunStore(tmp_path / "none.sqlite", read_only=True)


def test_no_store_tables_are_added_to_other_files(tmp_path: Path) -> None:
    """`evaluate --store other.db` used to add the store's tables to an unrelated database,
    and turn an empty file into a store while `runs` called it not a store."""
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as db:  # shaped as a browser's history file
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        db.execute("INSERT INTO meta VALUES ('version', '53')")
        db.execute("CREATE TABLE urls (url TEXT)")
        db.commit()
    for create, read_only in ((True, False), (False, False), (False, True)):
        with pytest.raises(StoreError, match="not an mtjlab store \\(a database of another"):
            RunStore(other, create=create, read_only=read_only)
    with closing(sqlite3.connect(other)) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ] == ["meta", "urls"]
        assert db.execute("SELECT * FROM meta").fetchall() == [("version", "53")]
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(StoreError, match="not an mtjlab store \\(an empty file\\)"):
        RunStore(empty, create=False)
    assert empty.stat().st_size == 0
    RunStore(empty).close()  # a new store may start from an empty file
    with RunStore(empty, create=False) as store:
        assert store.runs() == []
