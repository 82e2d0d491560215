"""`mtjlab serve | submit | jobs | watch` against a live service: output and exit codes."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from instruments.cli import main
from instruments.client import Client, Problem, RequestRejectedError
from instruments.job_kinds import encode_array
from instruments.jobs import AlreadyResumedError, JobStore
from instruments.service import default_jobs_path

from .service_support import TOKEN, client, live, station_yaml


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


# ---- messages: what went wrong, in the command line's terms ---------------------------------
def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_cancel_it(
        url: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stops following, not the job: the message says so and how to cancel it."""
    followed = Client.events

    def interrupted(self: Client, job_id: int, timeout_s: float | None = None
                    ) -> Iterator[dict[str, Any]]:
        for view in followed(self, job_id, timeout_s):
            yield view
            raise KeyboardInterrupt  # Ctrl-C after the first view

    monkeypatch.setattr(Client, "events", interrupted)
    assert main(["submit", "sweep", "--wait", "--server", url]) == 1
    err = capsys.readouterr().err
    job_id = int(re.search(r"job (\d+) \(sweep\) queued", err).group(1))
    assert f"stopped following job {job_id}, which" in err
    assert f"`mtjlab jobs --cancel {job_id} --server {url}`" in err
    monkeypatch.undo()
    with client(url) as c:
        assert c.wait(job_id, timeout_s=60)["state"] == "succeeded"  # it went on


@pytest.mark.parametrize(("argv", "message"), [
    (["submit", "measure"], "mtjlab submit: error: 422: --die is required\n"),
    (["submit", "program", "--die", "0,0"], "mtjlab submit: error: 422: a program job needs "
                                            "targets or a method (--targets or --method)\n"),
    (["submit", "program", "--die", "0,0", "--method", "hat", "--pulse-v", "0"],
     "--pulse-v: Input should be greater than 0"),
    (["submit", "infer", "--die", "0,0", "--params", '{"sizes": [1]}'],
     "--inputs is required; sizes (in --params): Tuple should have at least 2 items"),
    (["jobs", "--limit", "0"], "mtjlab jobs: error: 422: --limit: Input should be greater"),
])
def test_refused_fields_are_named_by_their_options(url: str, capsys: pytest.CaptureFixture,
                                                   argv: list[str], message: str) -> None:
    assert main([*argv, "--server", url]) == 2
    err = capsys.readouterr().err
    assert message in err and "body." not in err and "Value error" not in err


def test_the_client_reports_refused_fields_without_the_apis_internals(url: str) -> None:
    with client(url) as c, pytest.raises(RequestRejectedError) as err:
        c.submit("measure")
    assert str(err.value) == "422: die: Field required"
    assert err.value.problems == (Problem(("die",), "Field required", "missing"),)


@pytest.mark.parametrize(("content", "message"), [
    (b"not npy\n", "junk.npy: not a .npy array file"),
    (b"PK\x03\x04 an archive", "junk.npy: a .npz archive (numpy.savez), not a .npy array file"),
])
def test_a_file_that_is_not_npy_is_named_so(url: str, tmp_path: Path, content: bytes,
                                            message: str, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "junk.npy"
    path.write_bytes(content)
    for option in ("--targets", "--inputs"):
        assert main(["submit", "program", "--die", "0,0", option, str(path),
                     "--server", url]) == 2
        err = capsys.readouterr().err
        assert message in err and "pickle" not in err


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--server", "127.0.0.1:18904"], None,
     "--server: the service URL '127.0.0.1:18904' does not start with http:// or https:// "
     "(write http://127.0.0.1:18904)"),
    ([], "localhost:8000", "MTJLAB_SERVER: the service URL 'localhost:8000' does not start "
                           "with http:// or https:// (write http://localhost:8000)"),
])
def test_a_server_address_without_a_scheme_is_bad_input(
        argv: list[str], env: str | None, message: str, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if env is not None:
        monkeypatch.setenv("MTJLAB_SERVER", env)
    assert main(["jobs", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_or_wrong_token_says_how_to_give_one(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTJLAB_TOKEN", raising=False)
    with live(tmp_path, token=TOKEN) as (base, _app):
        assert main(["jobs", "--server", base]) == 2
        assert ("401: missing bearer token (give it with --token or MTJLAB_TOKEN)"
                in capsys.readouterr().err)
        assert main(["jobs", "--server", base, "--token", "not-the-token"]) == 2
        assert "403: wrong token (check the one given with --token or MTJLAB_TOKEN)" in (
            capsys.readouterr().err)
        assert main(["jobs", "--server", base, "--token", TOKEN]) == 0


@pytest.mark.parametrize("port", ["99999", "-1", "65536", "http"])
def test_serve_refuses_a_port_out_of_range(tmp_path: Path, port: str,
                                           capsys: pytest.CaptureFixture) -> None:
    station = station_yaml(tmp_path / "station.yaml")
    assert main(["serve", "--station", str(station), "--port", port,
                 "--store", str(tmp_path / "run.sqlite")]) == 2
    err = capsys.readouterr().err
    assert "argument --port: expected a port number from 0 to 65535" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("params", "message"), [
    ('{"kind": "sweep"}', "--params cannot set the job's kind"),
    ("{kind", "--params is not valid JSON"),
])
def test_params_that_cannot_be_used_are_bad_input(url: str, params: str, message: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["submit", "measure", "--die", "0,0", "--params", params,
                 "--server", url]) == 2
    assert message in capsys.readouterr().err


def test_out_writes_exactly_the_file_it_names(url: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "die.dat"
    assert main(["-q", "submit", "measure", "--die", "0,0", "--out", str(out),
                 "--server", url]) == 0
    assert f"written to {out}\n" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["die.dat"]
    with np.load(out) as npz:
        assert npz["kinds"].shape == (100, 200)
    with client(url) as c:
        job_id = c.list(kind="measure")[-1]["id"]
    again = tmp_path / "again"
    assert main(["jobs", "--result", str(job_id), "--out", str(again), "--server", url]) == 0
    assert again.is_file() and again.read_bytes() == out.read_bytes()


def test_the_listing_says_a_job_was_resumed_instead_of_how_to_resume_it() -> None:
    from instruments.service_cli import _outcome

    stopped = {"error": "stopped before die 3,0; resume with 'mtjlab jobs --resume 3' (run 2)",
               "summary": {"run_id": 2}, "resumed_as": None}
    assert _outcome(stopped) == stopped["error"]
    assert _outcome({**stopped, "resumed_as": 5}) == ("resumed as job 5; stopped before die "
                                                      "3,0")
    assert _outcome({"error": None, "summary": {"run_id": 2}, "resumed_as": None}) == \
        '{"run_id": 2}'
