"""Kill the service (SIGKILL) mid-sweep and restart it: queued jobs intact, running one
marked interrupted, and its resume finishes the sweep without repeating or losing a die."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from instruments.store import RunStore

from .service_support import REPO_ROOT, client, station_yaml


@contextmanager
def serve_process(station: Path, store: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m instruments.cli serve` on a free loopback port; yields (proc, url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "instruments.cli", "serve", "--station", str(station),
         "--port", "0", "--store", str(store)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MTJLAB_TOKEN": ""})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, f"service did not start: {line}{proc.stdout.read() if not line else ''}"
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_killed_and_restarted(tmp_path: Path) -> None:
    station = station_yaml(tmp_path / "st.yaml", cols=6, rows=6)
    store = tmp_path / "run.sqlite"
    with serve_process(station, store) as (proc, url), client(url) as c:
        sweep = c.submit("sweep")
        queued = [c.submit("measure", die=(i, 0)) for i in range(3)]
        for view in c.events(sweep["id"], timeout_s=60):
            if view["progress"]["done"] >= 3:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(10)
    killed_at = time.time()

    with serve_process(station, store) as (_proc, url), client(url) as c:
        stopped = c.get(sweep["id"])
        assert stopped["state"] == "interrupted", stopped
        assert "stopped while the job was running" in stopped["error"]
        done_before = stopped["progress"]["done"]
        for q in queued:  # intact, and run once after the restart
            final = c.wait(q["id"], timeout_s=60)
            assert final["state"] == "succeeded" and final["attempts"] == 1
            assert final["params"]["die"] == q["params"]["die"]
            assert datetime.fromisoformat(final["started_at"]).timestamp() > killed_at
        again = c.resume(sweep["id"])
        final = c.wait(again["id"], timeout_s=120)
        assert final["state"] == "succeeded", final
        run_id = final["summary"]["run_id"]
        assert run_id == stopped["summary"]["run_id"]
        assert final["summary"]["measured_now"] <= 36 - done_before
    with RunStore(store, create=False) as rs:
        dies = rs.dies_done(run_id)
        assert len(dies) == len(set(dies)) == 36
