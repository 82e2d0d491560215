"""Advisory file locks: one writer per job queue (the service) or per demo folder."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


def hold_exclusively(path: Path) -> IO[bytes] | None:
    """`path` opened and held with an exclusive advisory lock until it is closed (or the
    process ends, so a killed holder never leaves it stuck); None if another process holds
    it. OSError if the file system cannot lock at all (e.g. NFS without a lock daemon,
    ENOLCK): that is not "someone else holds it", and each caller decides what to do."""
    handle = open(path, "ab")  # noqa: SIM115 (held open for the holder's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # EWOULDBLOCK: held by another open file
        handle.close()
        return None
    except OSError:
        handle.close()
        raise
    return handle
