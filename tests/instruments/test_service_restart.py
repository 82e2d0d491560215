"""Stop the service mid-sweep (SIGKILL, SIGTERM) and restart it: queued jobs intact, the running
one marked interrupted, its resume finishes the sweep without repeating or losing a die, no
job starts after the signal, and a client waiting on a job sees its end across a restart."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from instruments.client import ServiceError
from instruments.service import default_jobs_path
from instruments.store import RunStore

from .service_support import REPO_ROOT, client, station_yaml


@contextmanager
def serve_process(station: Path, store: Path, port: int = 0
                  ) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m instruments.cli serve` on loopback (port 0: a free one); yields (proc, url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "instruments.cli", "serve", "--station", str(station),
         "--port", str(port), "--store", str(store)],
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
        with RunStore(store, read_only=True) as rs:  # not `running` forever in the store
            row = rs.run_row(stopped["summary"]["run_id"])
        assert row["status"] == "interrupted", row
        assert f"resume with 'mtjlab jobs --resume {sweep['id']}'" in row["error"]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _follow(url: str, job_id: int, into: list[object]) -> threading.Thread:
    """Wait on a job in a thread (no timeout, as `mtjlab watch`); its views, then the final
    view or the exception, go to `into`."""
    def run() -> None:
        try:
            with client(url) as c:
                for view in c.events(job_id):
                    into.append(view)
        except Exception as err:  # recorded for the test
            into.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _jobs(store: Path) -> dict[int, tuple[str, float | None]]:
    """(state, started) of every job, read from the queue file as the service left it."""
    with sqlite3.connect(default_jobs_path(store)) as db:
        return {i: (st, t) for i, st, t in db.execute("SELECT id, state, started FROM jobs")}


def test_sigterm_starts_no_further_job_while_a_client_waits(tmp_path: Path) -> None:
    """uvicorn waits for open event streams before its shutdown stops the worker; the worker
    used to claim queued jobs meanwhile (six sweeps started after the signal)."""
    station = station_yaml(tmp_path / "st.yaml", cols=6, rows=6)
    store = tmp_path / "run.sqlite"
    with serve_process(station, store) as (proc, url), client(url) as c:
        sweep = c.submit("sweep")
        queued = [c.submit("measure", die=(i, 0))["id"] for i in range(3)]
        running_seen: list[object] = []
        queued_seen: list[object] = []
        followers = [_follow(url, sweep["id"], running_seen),
                     _follow(url, queued[-1], queued_seen)]
        for view in c.events(sweep["id"], timeout_s=60):
            if view["progress"]["done"] >= 2 and running_seen and queued_seen:
                break  # both followers are connected
        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) is not None
    for f in followers:
        f.join(10)
    jobs = _jobs(store)
    assert jobs[sweep["id"]][0] == "interrupted"
    for job_id in queued:  # none started after the signal (or before it)
        assert jobs[job_id] == ("queued", None), jobs[job_id]
    assert isinstance(running_seen[-1], dict) and running_seen[-1]["state"] == "interrupted"
    assert isinstance(queued_seen[-1], ServiceError)
    assert "stays queued" in str(queued_seen[-1])
    assert time.time() - signalled < 20


def test_a_waiting_client_sees_the_end_of_its_job_across_a_restart(tmp_path: Path) -> None:
    """Without a timeout the client reconnects to a restarted service (it used to give up
    at the first refused connection)."""
    station = station_yaml(tmp_path / "st.yaml", cols=6, rows=6)
    store = tmp_path / "run.sqlite"
    port = _free_port()
    seen: list[object] = []
    with serve_process(station, store, port) as (proc, url), client(url) as c:
        sweep = c.submit("sweep")
        follower = _follow(url, sweep["id"], seen)
        for view in c.events(sweep["id"], timeout_s=60):
            if view["progress"]["done"] >= 2 and seen:  # the follower is connected
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(10)
    time.sleep(1.0)  # the follower finds no service for a while
    with serve_process(station, store, port):
        follower.join(30)
    assert not follower.is_alive()
    assert isinstance(seen[-1], dict), seen[-1]
    assert seen[-1]["id"] == sweep["id"] and seen[-1]["state"] == "interrupted"


def test_without_a_timeout_the_client_gives_up_after_the_longest_outage(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import instruments.client as client_module

    monkeypatch.setattr(client_module, "MAX_OUTAGE_S", 1.0)
    with client_module.Client(f"http://127.0.0.1:{_free_port()}", timeout_s=1) as c:
        t0 = time.monotonic()
        with pytest.raises(ServiceError, match="has not answered for 1 s"):
            list(c.events(1))
    assert 1.0 <= time.monotonic() - t0 < 5.0
