"""20 clients at once: each job runs once, in submission order, instruments never shared."""

from __future__ import annotations

import itertools
import threading
from datetime import datetime
from pathlib import Path

from .service_support import UseGuard, client, live, small_config

N_CLIENTS = 20


def test_concurrent_clients_serialised_in_submission_order(tmp_path: Path) -> None:
    guard = UseGuard()
    config = small_config(3, 3)
    dies = [(c, r) for r in range(3) for c in range(3)]
    with live(tmp_path, config=config, station_factory=guard.factory) as (url, _app):
        barrier = threading.Barrier(N_CLIENTS)
        submitted: list[dict] = []
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                with client(url) as c:
                    barrier.wait(10)
                    job = c.submit("measure", die=dies[i % len(dies)])
                    submitted.append(job)
                    assert c.wait(job["id"], timeout_s=120)["state"] == "succeeded"
            except BaseException as err:  # reported below
                errors.append(err)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(N_CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        with client(url) as c:
            jobs = sorted((c.get(j["id"]) for j in submitted), key=lambda j: j["id"])

    assert len(jobs) == len({j["id"] for j in jobs}) == N_CLIENTS
    assert all(j["state"] == "succeeded" and j["attempts"] == 1 for j in jobs)
    # exactly once: one die contact per job, in submission (id) order
    assert [tuple(j["params"]["die"]) for j in jobs] == [d[:2] for d in guard.dies]
    started = [datetime.fromisoformat(j["started_at"]) for j in jobs]
    finished = [datetime.fromisoformat(j["finished_at"]) for j in jobs]
    assert started == sorted(started)
    assert all(f <= s for f, s in zip(finished, started[1:], strict=False))
    spans = [(s, e) for *_, s, e in guard.dies]
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
    # the instruments: never used concurrently, only ever from the worker thread
    assert not guard.violations, guard.violations[:3]
    assert len(guard.threads) == 1 and guard.calls > 0
