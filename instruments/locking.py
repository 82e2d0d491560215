"""Advisory file locks: one process drives the station of a run store (a service, or a CLI
sweep), one service per job queue, one demo per folder."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class LockBusyError(RuntimeError):
    """Another process holds the lock."""


def hold_exclusively(path: Path) -> IO[bytes] | None:
    """`path` opened and held with an exclusive advisory lock until it is closed (or the
    process ends, so a killed holder never leaves it stuck); None if another process holds
    it. OSError if the file system cannot lock at all (e.g. NFS without a lock daemon,
    ENOLCK): that is not "someone else holds it", and each caller decides what to do.
    ValueError naming the folder if it is missing or may not be written (an operator's
    typo in --store or --out, not a file system without locks)."""
    try:
        handle = open(path, "ab")  # noqa: SIM115 (held open for the holder's lifetime)
    except FileNotFoundError:
        raise ValueError(f"{path.parent}: no such folder") from None
    except PermissionError:
        raise ValueError(f"{path.parent}: permission denied (cannot write {path.name} "
                         "there)") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: held by another open file
        handle.close()
        return None
    except OSError:
        handle.close()
        raise
    return handle


def station_lock(store_path: Path) -> Path:
    """The lock of the station that writes to run store `store_path`: STORE.station.lock."""
    return store_path.with_name(store_path.name + ".station.lock")


def hold_station(store_path: Path) -> IO[bytes] | None:
    """Hold the station lock of a run store: one process drives a store's station at a time
    (the service for its whole life, a CLI sweep while it runs), so two never step one
    prober. LockBusyError if another holds it; None if the file system cannot lock at all
    (the caller warns), ValueError for a missing or read-only folder."""
    lock = station_lock(Path(store_path))
    try:
        held = hold_exclusively(lock)
    except OSError:  # (a missing folder is a ValueError, raised)
        return None
    if held is None:
        raise LockBusyError(f"{lock}: another mtjlab process (a service or a sweep) is driving "
                            "the station of this store; wait for it to end or stop it")
    return held


def unlocked_station_warning(store_path: Path) -> str:
    """What to tell the operator when `hold_station` could not lock at all."""
    return (f"{store_path}: cannot lock the station (no file locks here); do not drive it "
            "from another process meanwhile")
