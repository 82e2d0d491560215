"""`mtjlab serve | submit | jobs | watch` against a live service: output and exit codes."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from instruments.cli import main
from instruments.job_kinds import encode_array
from instruments.jobs import AlreadyResumedError, JobStore
from instruments.service import default_jobs_path

from .service_support import live


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    with live(tmp_path_factory.mktemp("cli")) as (base, _app):
        yield base


def test_submit_wait_and_save(url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.npz"
    assert main(["submit", "measure", "--die", "0,1", "--server", url, "--out", str(out)]) == 0
    assert '"counts"' in capsys.readouterr().out
    assert np.load(out)["kinds"].shape == (100, 200)


def test_submit_then_watch_and_list(url: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["-q", "submit", "sweep", "--server", url]) == 0
    job_id = int(capsys.readouterr().out.strip())
    assert main(["watch", str(job_id), "--server", url]) == 0
    captured = capsys.readouterr()
    assert "succeeded" in captured.err and '"dies": 4' in captured.out
    assert main(["jobs", "--server", url]) == 0
    listing = capsys.readouterr().out
    assert "sweep" in listing and "succeeded" in listing
    assert main(["jobs", str(job_id), "--json", "--server", url]) == 0
    assert f'"id": {job_id}' in capsys.readouterr().out


def test_program_from_npy_file(url: str, tmp_path: Path) -> None:
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((100, 200), np.uint8))
    args = ["submit", "program", "--die", "1,1", "--targets", str(path), "--server", url]
    assert main([*args, "--wait"]) == 0
    assert main([*args, "--pulse-v", "1.9"]) == 2  # above the safety limit: refused


@pytest.mark.parametrize("argv", [
    ["submit", "measure", "--die", "9,9"],
    ["submit", "measure", "--die", "x"],
    ["submit", "measure", "--params", "[1]"],
    ["jobs", "424242"],
    ["jobs", "--cancel", "424242"],
])
def test_bad_input_exits_2(url: str, argv: list[str]) -> None:
    assert main([*argv, "--server", url]) == 2


def test_unreachable_service_exits_1() -> None:
    assert main(["jobs", "--server", "http://127.0.0.1:9"]) == 1


def test_serve_with_instruments_that_do_not_answer_exits_1_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    station = tmp_path / "station.yaml"
    station.write_text("instruments: {simulated: {seed: 0},\n"
                       "  prober: {resource: 'TCPIP0::nowhere.sim::inst0::INSTR', "
                       "timeout_s: 0.05}}\n")
    assert main(["serve", "--station", str(station), "--port", "0",
                 "--store", str(tmp_path / "run.sqlite")]) == 1
    err = capsys.readouterr().err
    assert "cannot talk to the instruments" in err and "Traceback" not in err
    JobStore(default_jobs_path(tmp_path / "run.sqlite")).close()  # the queue lock is free


def test_the_queue_keeps_only_the_newest_finished_jobs(tmp_path: Path) -> None:
    """Finished jobs beyond keep_finished go, with their results (a bounded queue file);
    queued, running and interrupted jobs stay (an interrupted one can still be resumed)."""
    path = tmp_path / "q.jobs.sqlite"
    jobs = JobStore(path, keep_finished=3)
    ids = [jobs.submit("measure", {"die": [0, i]})["id"] for i in range(6)]
    for i in ids[:5]:
        jobs.claim_next()
        jobs.finish(i, "succeeded", npz=b"PK")
    assert [j["id"] for j in jobs.list()] == ids[2:]  # 3 finished + the queued one
    assert jobs.result(ids[1]) is None and jobs.result(ids[4]) == b"PK"
    jobs.claim_next()  # running when the service dies: interrupted at the next start
    jobs.close()
    jobs = JobStore(path, keep_finished=1)
    try:
        assert {j["id"]: j["state"] for j in jobs.list()} == {ids[4]: "succeeded",
                                                               ids[5]: "interrupted"}
    finally:
        jobs.close()
    assert main(["serve", "--station", "x.yaml", "--keep-jobs", "0"]) == 2


def test_the_job_that_just_finished_is_never_pruned(tmp_path: Path) -> None:
    """Jobs queued after a running one and cancelled finish first: the running job, when it
    ends, is still the newest finished and keeps its result."""
    jobs = JobStore(tmp_path / "q.jobs.sqlite", keep_finished=2)
    try:
        first = jobs.submit("sweep", {})["id"]
        jobs.claim_next()
        later = [jobs.submit("measure", {"die": [0, i]})["id"] for i in range(2)]
        for job_id in later:
            assert jobs.cancel(job_id) == (True, "cancelled")
        jobs.finish(first, "succeeded", npz=b"PK")
        assert jobs.get(first)["state"] == "succeeded" and jobs.result(first) == b"PK"
        assert [j["id"] for j in jobs.list()] == [first, later[1]]
    finally:
        jobs.close()


def test_a_job_is_resumed_once_and_cancelled_or_resumed_jobs_are_pruned(tmp_path: Path
                                                                       ) -> None:
    """Resuming the same job twice queued it twice; cancelled queued jobs waited for some job
    to finish before they were pruned, and an interrupted job that was resumed never was."""
    jobs = JobStore(tmp_path / "q.jobs.sqlite", keep_finished=2)
    try:
        stopped = jobs.submit("sweep", {})["id"]
        jobs.claim_next()
        jobs.finish(stopped, "interrupted", error="stopped")
        again = jobs.submit("sweep", {"resume_run": 1}, resumed_from=stopped)["id"]
        with pytest.raises(AlreadyResumedError, match=f"already resumed as job {again}"):
            jobs.submit("sweep", {"resume_run": 1}, resumed_from=stopped)
        cancelled = [jobs.submit("measure", {"die": [0, i]})["id"] for i in range(4)]
        for job_id in cancelled:
            jobs.cancel(job_id)
        # pruned as they were cancelled: the two that ended last are kept
        assert [j["id"] for j in jobs.list()] == [again, *cancelled[2:]]
    finally:
        jobs.close()


def test_a_queue_file_from_before_stored_descriptions_opens_and_lists(tmp_path: Path) -> None:
    """Queue files written before job views were stored get the column, filled, on open."""
    path = tmp_path / "q.jobs.sqlite"
    inputs = encode_array(np.zeros((3, 100), np.uint8))
    with closing(sqlite3.connect(path)) as db:  # the earlier schema: no `described` column
        db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT "
                   "NULL, params TEXT NOT NULL, state TEXT NOT NULL, submitted REAL NOT NULL, "
                   "started REAL, finished REAL, attempts INTEGER NOT NULL DEFAULT 0, done "
                   "INTEGER NOT NULL DEFAULT 0, total INTEGER, message TEXT NOT NULL DEFAULT "
                   "'', summary TEXT NOT NULL DEFAULT '{}', error TEXT, cancel_requested "
                   "INTEGER NOT NULL DEFAULT 0, resumed_from INTEGER, version INTEGER NOT NULL "
                   "DEFAULT 0)")
        db.execute("INSERT INTO jobs (kind, params, state, submitted) VALUES (?, ?, 'queued', 0)",
                   ("infer", json.dumps({"die": [0, 0], "inputs": inputs})))
        db.commit()
    jobs = JobStore(path)
    try:
        (job,) = jobs.list()
        assert job["params"] == {"die": [0, 0], "inputs": {"dtype": "uint8", "shape": [3, 100]}}
        assert jobs.params(job["id"])["inputs"] == inputs  # the request itself is kept
    finally:
        jobs.close()
