"""Job life cycle over real HTTP on loopback: submit, progress, result, cancel, resume, refuse."""

from __future__ import annotations

import base64
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from instruments.client import Client, RequestRejectedError, ServiceError
from instruments.job_kinds import array_summary, encode_array
from instruments.jobs import JobStore, StoreInUseError
from instruments.locking import LockBusyError
from instruments.service import create_app, default_jobs_path
from instruments.station import Station
from instruments.store import RunStore
from training.defects import CellDefect
from training.mapping import ArrayLayout

from .fault_support import assert_safe
from .service_support import client, live, small_config


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    with live(tmp_path_factory.mktemp("svc")) as (url, app):
        yield url, app


@pytest.fixture
def c(service) -> Client:
    with client(service[0]) as cl:
        yield cl


def test_measure_job_life_cycle(c: Client) -> None:
    job = c.submit("measure", die=(1, 0))
    assert job["state"] in ("queued", "running") and job["kind"] == "measure"
    seen = list(c.events(job["id"], timeout_s=30))
    states = [v["state"] for v in seen]
    assert states[-1] == "succeeded" and "running" in states
    assert [v["version"] for v in seen] == sorted({v["version"] for v in seen})
    final = c.get(job["id"])
    assert final["progress"] == {"done": 1, "total": 1, "message": "measuring die 1,0: done"}
    assert final["attempts"] == 1 and final["run_s"] > 0
    arrays = c.result(job["id"])
    assert set(arrays) == {"kinds", "r_p_ohm", "r_ap_ohm"}
    assert arrays["kinds"].shape == (100, 200) and arrays["kinds"].dtype == np.int8
    counts = final["summary"]["counts"]
    assert counts["ok"] == int((arrays["kinds"] == CellDefect.OK).sum())
    assert job["id"] in [j["id"] for j in c.list(kind="measure")]


def test_result_is_npz_bytes(service, c: Client) -> None:
    job = c.wait(c.submit("measure", die=(0, 1))["id"], timeout_s=30)
    r = httpx.get(f"{service[0]}/jobs/{job['id']}/result")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.content[:2] == b"PK"  # a zip archive (.npz), not JSON


def test_station_health_and_openapi(service, c: Client) -> None:
    assert c.health()["status"] == "ok"
    st = c.station()
    assert st["wafer_map"] == [[0, 0], [1, 0], [0, 1], [1, 1]]
    assert st["array_shape"] == [100, 200] and "tester" in st["identities"]
    assert st["safety"]["max_pulse_v"] == pytest.approx(1.2)
    paths = httpx.get(f"{service[0]}/openapi.json").json()["paths"]
    for p in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/jobs/{job_id}/events",
              "/health", "/station"):
        assert p in paths


def test_program_then_infer(c: Client) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, (100, 200)).astype(np.uint8)
    job, arrays = c.run("program", die=(1, 1), targets=targets, pulse_v=1.0, timeout_s=30)
    assert job["summary"]["fidelity"] > 0.95
    assert arrays["readback_ohm"].shape == (100, 200) and arrays["verified"].dtype == bool
    x = rng.integers(0, 2, (32, 100)).astype(np.uint8)
    job, arrays = c.run("infer", die=(1, 1), inputs=x, timeout_s=30)
    assert arrays["predictions"].shape == (32,)
    assert set(np.unique(arrays["predictions"])) <= set(range(10))
    assert arrays["currents_0"].shape == (32, 200) and arrays["currents_1"].shape == (32, 200)
    # the experiment's network: 3 output copies, common-mode read-out in 4 reads
    job, arrays = c.run("infer", die=(1, 1), inputs=x, sizes=[100, 70, 10], output_copies=3,
                        readout="common_mode", output_reads=4, timeout_s=30)
    assert arrays["predictions"].shape == (32,) and job["summary"]["n"] == 32
    assert arrays["currents_1"].shape == (4 * 32, 200)  # one row per read
    # the copies combined by their median: the same currents, the median of the 3 copies
    job, med = c.run("infer", die=(1, 1), inputs=x, sizes=[100, 70, 10], output_copies=3,
                     copy_combine="median", readout="common_mode", output_reads=4,
                     device="nominal", timeout_s=30)
    layout = ArrayLayout.default((100, 70, 10), 100, 200, 3, "median",
                                 readout="common_mode", output_reads=4)
    hidden = (layout.layer_outputs(0, med["currents_0"], x) > 0).astype(np.uint8)
    outputs, reliable = layout.checked_outputs(1, med["currents_1"], hidden)
    assert np.array_equal(med["predictions"],
                          layout.class_scores(outputs, reliable).argmax(axis=-1))
    mean = ArrayLayout.default((100, 70, 10), 100, 200, 3, "mean", readout="common_mode",
                               output_reads=4).class_scores(outputs, reliable).argmax(axis=-1)
    assert (mean != med["predictions"]).sum() >= 1  # the job combined by median, not mean


@pytest.mark.parametrize(("body", "needle"), [
    ({"kind": "measure", "die": [7, 7]}, "not on the wafer map"),
    ({"kind": "program", "die": [0, 0], "targets": encode_array(np.zeros((100, 200), np.uint8)),
      "pulse_v": 1.4}, "pulse_v = 1.4 exceeds safety.max_pulse_v = 1.2"),
    # below the tester's range: accepted before, then failed with the die in contact
    ({"kind": "program", "die": [0, 0], "targets": encode_array(np.zeros((100, 200), np.uint8)),
      "pulse_width_s": 1e-12}, "pulse_width_s = 1e-12: outside the tester's range, 1e-09 to"),
    ({"kind": "program", "die": [0, 0], "targets": encode_array(np.zeros((10, 20), np.uint8))},
     "shape (100, 200)"),
    ({"kind": "program", "die": [0, 0], "targets": encode_array(np.full((100, 200), 5, np.uint8))},
     "0 (P), 1 (AP) or 2"),
    ({"kind": "program", "die": [0, 0], "targets": "not base64!"}, "base64"),
    ({"kind": "program", "die": [0, 0],
      "targets": base64.b64encode(b"\x93NUMPY garbage").decode()}, ".npy"),
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.full((3, 100), 2, np.uint8))},
     "binary"),
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.zeros((3, 7), np.uint8))},
     "(n, 100)"),
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.zeros((3, 100), np.uint8)),
      "output_copies": 3}, "needs 100 rows x 240 columns"),
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.zeros((3, 100), np.uint8)),
      "output_reads": 2}, "only helps the common-mode read-out"),
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.zeros((3, 100), np.uint8)),
      "copy_combine": "mode"}, "median"),
    # 64 output reads of 10,000 inputs would return 496 MiB of currents
    ({"kind": "infer", "die": [0, 0], "inputs": encode_array(np.zeros((10_000, 100), np.uint8)),
      "readout": "common_mode", "output_reads": 64}, "send at most 1290 inputs per job"),
    ({"kind": "sweep", "resume_run": 999}, "run.sqlite"),
    ({"kind": "teleport"}, "kind"),
    # no kind: refused, not guessed (an empty body used to start a sweep of the whole wafer)
    ({}, "a job needs a 'kind', one of: sweep, measure"),
    ({"die": [0, 0]}, "a job needs a 'kind'"),
])
def test_refused_before_queueing(service, body: dict, needle: str) -> None:
    before = len(httpx.get(f"{service[0]}/jobs", params={"limit": 1000}).json())
    r = httpx.post(f"{service[0]}/jobs", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.text
    assert len(httpx.get(f"{service[0]}/jobs", params={"limit": 1000}).json()) == before


def test_body_too_large_is_413(service) -> None:
    r = httpx.post(f"{service[0]}/jobs", content=b"{" + b" " * (9 * 1024 * 1024) + b"}",
                   headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_job_and_unfinished_result(c: Client) -> None:
    with pytest.raises(RequestRejectedError) as err:
        c.get(123456)
    assert err.value.status == 404


def test_cancel_queued_then_run_in_order(tmp_path: Path) -> None:
    with live(tmp_path, paused=True) as (url, app), client(url) as c:
        a = c.submit("measure", die=(0, 0))
        b = c.submit("measure", die=(1, 0))
        with pytest.raises(RequestRejectedError) as err:
            c.result(b["id"])
        assert err.value.status == 409
        assert c.cancel(b["id"])["state"] == "cancelled"
        with pytest.raises(RequestRejectedError) as err:
            c.cancel(b["id"])
        assert err.value.status == 409
        app.state.service.worker.set_paused(False)
        assert c.wait(a["id"], timeout_s=30)["state"] == "succeeded"
        assert c.get(b["id"])["attempts"] == 0


def test_cancel_running_sweep_then_resume(tmp_path: Path) -> None:
    with live(tmp_path, config=small_config(6, 6)) as (url, _app), client(url) as c:
        job = c.submit("sweep")
        for view in c.events(job["id"], timeout_s=60):
            if view["progress"]["done"] >= 2 and not view["cancel_requested"]:
                assert c.cancel(job["id"])["cancel_requested"]
        stopped = c.get(job["id"])
        assert stopped["state"] == "cancelled", stopped
        assert f"resume with 'mtjlab jobs --resume {job['id']}'" in stopped["error"]
        done = stopped["progress"]["done"]
        assert 2 <= done < 36
        run_id = stopped["summary"]["run_id"]
        again = c.resume(job["id"])
        assert again["resumed_from"] == job["id"] and again["resumed_as"] is None
        assert c.get(job["id"])["resumed_as"] == again["id"]
        assert again["params"]["resume_run"] == run_id
        with pytest.raises(RequestRejectedError, match=f"already resumed as job {again['id']}"):
            c.resume(job["id"])  # once: a second resume queued the sweep twice
        final = c.wait(again["id"], timeout_s=60)
        assert final["state"] == "succeeded", final
        assert final["summary"] == {"run_id": run_id, "dies": 36, "measured_now": 36 - done}
        with pytest.raises(RequestRejectedError, match=f"already resumed as job {again['id']}"
                           ) as err:  # not "run 1 is a finished sweep run" (422)
            c.resume(job["id"])
        assert err.value.status == 409
        with RunStore(tmp_path / "run.sqlite", create=False) as store:
            dies = store.dies_done(run_id)
            assert len(dies) == len(set(dies)) == 36
            assert store.run_row(run_id)["status"] == "finished"
        assert c.result(again["id"])["kinds"].shape == (36, 100, 200)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # meant
def test_a_dead_worker_is_reported_not_waited_for(tmp_path: Path) -> None:
    """If the worker thread dies, waiting clients get an error and submissions a 503."""
    with live(tmp_path, paused=True) as (url, app), client(url) as c:
        queued = c.submit("measure", die=(0, 0))
        svc = app.state.service

        def broken() -> None:
            raise sqlite3.OperationalError("disk I/O error")

        svc.jobs.claim_next = broken  # the worker's next claim kills it
        svc.worker.set_paused(False)
        svc.worker._thread.join(10)
        assert c.health()["worker"] == "stopped"
        with pytest.raises(ServiceError, match="worker has stopped"):
            c.wait(queued["id"], timeout_s=30)
        with pytest.raises(ServiceError,
                           match=r"worker has stopped \(disk I/O error\); restart") as err:
            c.submit("measure", die=(1, 0))
        assert err.value.status == 503


def test_a_job_whose_bookkeeping_fails_is_marked_failed_and_the_worker_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with live(tmp_path, paused=True) as (url, app), client(url) as c:
        worker = app.state.service.worker
        first = c.submit("measure", die=(0, 0))
        second = c.submit("measure", die=(1, 0))
        real = worker._execute
        calls = []

        def flaky(station, row):  # type: ignore[no-untyped-def]
            calls.append(row["id"])
            if len(calls) == 1:
                raise RuntimeError("store hiccup outside the job")
            return real(station, row)

        monkeypatch.setattr(worker, "_execute", flaky)
        worker.set_paused(False)
        assert c.wait(first["id"], timeout_s=30)["state"] == "failed"
        assert c.wait(second["id"], timeout_s=30)["state"] == "succeeded"
        assert c.health()["worker"] == "running"


def test_a_chunked_body_too_large_is_413(service) -> None:
    """No Content-Length to refuse up front: the limit counts the streamed body."""
    def chunks():  # type: ignore[no-untyped-def]
        yield b"{"
        for _ in range(9):
            yield b" " * (1024 * 1024)
        yield b"}"

    r = httpx.post(f"{service[0]}/jobs", content=chunks(),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "request body exceeds" in r.text


def test_a_second_service_on_the_same_queue_is_refused(tmp_path: Path) -> None:
    with live(tmp_path):
        # the same store, with its queue or another: the same station (a CLI sweep, test_cli)
        for jobs_path in (None, tmp_path / "other.jobs.sqlite"):
            with pytest.raises(LockBusyError, match="driving the station of this store"):
                create_app(small_config(), tmp_path / "run.sqlite", jobs_path=jobs_path)
        with pytest.raises(StoreInUseError, match="another mtjlab service"):  # the same queue
            create_app(small_config(), tmp_path / "other.sqlite",
                       jobs_path=tmp_path / "run.jobs.sqlite")
    for path in ("run.sqlite", "other.sqlite"):  # the refused services let their locks go
        create_app(small_config(), tmp_path / path).state.service.stop()


def test_runs_of_interrupted_jobs_are_marked_at_the_first_start_that_can(
        tmp_path: Path) -> None:
    """A sweep's run stayed `running` forever if the first start after a kill was refused
    (a CLI sweep held the station) or could not write the store: every start tries."""
    from instruments.locking import hold_station
    from instruments.store import RunStore

    store = tmp_path / "run.sqlite"
    with RunStore(store) as rs:
        run_id = rs.create_run("sweep", "name: x\n", {}, "test", {})
    jobs = JobStore(tmp_path / "run.jobs.sqlite")
    job_id = jobs.submit("sweep", {})["id"]
    jobs.claim_next()
    jobs.note(job_id, run_id=run_id)
    jobs.close()  # as a killed service leaves it: the job `running`
    held = hold_station(store)  # a CLI sweep of the store at the first restart
    with pytest.raises(LockBusyError):
        create_app(small_config(), store)
    assert held is not None
    held.close()
    create_app(small_config(), store).state.service.stop()
    with RunStore(store, read_only=True) as rs:
        row = rs.run_row(run_id)
    assert row["status"] == "interrupted"
    assert f"resume with 'mtjlab jobs --resume {job_id}'" in row["error"]


def test_a_queue_locked_at_start_is_not_called_corrupted(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    import instruments.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "BUSY_WAIT_S", 0.1)
    path = tmp_path / "q.jobs.sqlite"
    JobStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(jobs_module.QueueFileError, match="locked by another process") as err:
        JobStore(path)
    assert "corrupted" not in str(err.value)
    other.execute("ROLLBACK")
    other.close()
    create_app(small_config(), tmp_path / "run.sqlite").state.service.jobs.close()  # free again


def test_listing_jobs_reads_array_headers_only() -> None:
    for a in (np.zeros((3, 100), np.uint8), np.ones((2, 4, 5), np.float32), np.arange(7)):
        assert array_summary(encode_array(a)) == {"dtype": str(a.dtype), "shape": list(a.shape)}


def test_stopping_the_service_waits_for_the_job_to_reach_a_safe_point(tmp_path: Path) -> None:
    """A long inference (many queries) is stopped between two queries when the service
    stops: the job is interrupted, the chuck separated and the output off."""
    stations: list[Station] = []

    def factory(config):  # type: ignore[no-untyped-def]
        stations.append(Station(config))
        return stations[-1]

    config = small_config().model_copy(update={"measurement": small_config().measurement
                                               .model_copy(update={"infer_batch_rows": 2})})
    with live(tmp_path, config=config, station_factory=factory) as (url, app), \
            client(url) as c:
        x = (np.random.default_rng(0).random((2000, 100)) > 0.5).astype(np.uint8)
        job = c.submit("infer", die=(0, 0), inputs=x)  # 5,000 queries: seconds of work
        for view in c.events(job["id"], timeout_s=60):
            if view["progress"]["message"].startswith("inferring on"):
                break
        app.state.service.worker.stop()  # what the shutdown does first
    # read the queue file as the stopped service left it (reopening it as a JobStore would
    # mark a job left running as interrupted)
    with closing(sqlite3.connect(default_jobs_path(tmp_path / "run.sqlite"))) as db:
        state, error = db.execute("SELECT state, error FROM jobs WHERE id=?",
                                  (job["id"],)).fetchone()
    assert state == "interrupted", (state, error)
    assert "between inference queries" in error
    assert_safe(stations[0])


def test_waiting_on_a_service_that_does_not_answer_backs_off(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with Client("http://127.0.0.1:9", timeout_s=1) as c:  # nothing listens on port 9
        attempts: list[int] = []
        stream = c._stream

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            attempts.append(1)
            return stream(*args, **kwargs)

        monkeypatch.setattr(c, "_stream", counted)
        with pytest.raises(TimeoutError, match="the service did not answer"):
            list(c.events(1, timeout_s=1.0))
    assert 2 <= len(attempts) <= 8  # 0.1, 0.2, 0.4 ... s apart, not a busy loop


def test_the_service_lifts_a_chuck_left_down_before_it_idles(tmp_path: Path) -> None:
    """A service killed mid-job leaves the chuck on a die with the output on; the next one
    makes the station safe as it opens, not at the end of its first job."""
    stations: list[Station] = []

    def factory(config):  # type: ignore[no-untyped-def]
        station = Station(config)
        station._place((0, 0))  # as the killed service left it
        assert station.prober.in_contact() and station.tester.output_enabled
        stations.append(station)
        return station

    with live(tmp_path, station_factory=factory) as (url, _app):
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert_safe(stations[0])


def test_a_job_claimed_as_the_signal_lands_stays_queued(tmp_path: Path) -> None:
    """A halt between the worker's last look at its stop flag and its claim of the next job:
    that job used to end 'interrupted' ('stopped before touching the instruments')."""
    with live(tmp_path, paused=True) as (url, app), client(url) as c:
        svc = app.state.service
        job = c.submit("measure", die=(0, 0))
        claim = svc.jobs.claim_next

        def claim_as_the_signal_lands():  # type: ignore[no-untyped-def]
            svc.worker.halt()
            return claim()

        svc.jobs.claim_next = claim_as_the_signal_lands
        svc.worker.set_paused(False)
        svc.worker._thread.join(10)
        view = c.get(job["id"])
        assert (view["state"], view["started_at"], view["attempts"]) == ("queued", None, 0)


def test_a_queue_locked_by_another_process_delays_bookkeeping_but_fails_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's sqlite3 session holding the queue file stopped the worker for good
    ("database is locked"), or failed the sweep it was running at its next progress report.
    Progress is best effort; the idle worker waits; a damaged queue file is named as such."""
    import sqlite3

    import instruments.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "BUSY_WAIT_S", 0.2)
    path = tmp_path / "q.jobs.sqlite"
    jobs = JobStore(path)
    job_id = jobs.submit("measure", {"die": [0, 0]})["id"]
    assert jobs.claim_next() is not None
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a write transaction left open elsewhere
    jobs.progress(job_id, 1, 2, "half way")  # skipped, not raised
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        jobs.claim_next()  # what the idle worker's loop now waits out
    other.execute("ROLLBACK")
    jobs.progress(job_id, 2, 2, "done")
    assert jobs.get(job_id)["progress"]["message"] == "done"
    jobs.close()
    other.close()
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(jobs_module.QueueFileError, match=r"q.jobs.sqlite: the job queue cannot "
                       r"be opened .*move it aside .*run store is not affected"):
        JobStore(path)
    path.unlink()
    JobStore(path).close()  # the lock was let go


def test_the_idle_worker_outlives_a_locked_queue(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3
    import time

    import instruments.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "BUSY_WAIT_S", 0.1)
    with live(tmp_path) as (_url, app):
        worker = app.state.service.worker
        other = sqlite3.connect(tmp_path / "run.jobs.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        worker.wake()  # it polls the queue now, and finds it locked
        time.sleep(1.5)
        other.execute("ROLLBACK")
        other.close()
        assert worker.alive and worker.error is None


def test_pinned_to_is_the_services_to_set(tmp_path: Path) -> None:
    """An infer's pin to a program job is set when the service checks it; a client giving
    one would skip the start's check that the die still holds that program."""
    with live(tmp_path) as (url, _app), client(url) as c, \
            pytest.raises(RequestRejectedError, match="pinned_to is set by the service"):
        c.submit("infer", die=(0, 0), method="sat", train_run=2, pinned_to=1,
                 inputs=np.zeros((1, 100), np.uint8))
