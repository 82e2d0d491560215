"""Measurement in the loop through the client: a die's defect map fetched over HTTP drives
hardware-aware training; the weights are programmed and run on that die, all over HTTP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instruments.store import RunStore
from training.datasets import load_default
from training.defects import DefectMap
from training.mapping import ArrayLayout, cells_from_defect_maps
from training.trainers import TrainConfig, train_hat

from .service_support import client, live

DIE = (1, 0)  # 64 shorts on the seed-0 wafer


def test_hat_for_one_die_over_http(tmp_path: Path) -> None:
    data = load_default()
    layout = ArrayLayout.default()
    with live(tmp_path) as (url, _app), client(url) as c:
        job, arrays = c.run("measure", die=DIE, timeout_s=60)
        assert job["summary"]["counts"]["short"] > 0
        defects = DefectMap(arrays["kinds"], arrays["r_p_ohm"])
        cells = cells_from_defect_maps([defects], layout.device)
        trained = train_hat(data, layout, cells, config=TrainConfig(epochs=3), seed=0)
        targets = layout.target_states([w[0] for w in trained.weights])
        job, _ = c.run("program", die=DIE, targets=targets, timeout_s=60)
        assert job["summary"]["fidelity"] > 0.98
        x, y = data.x_test.numpy().astype(np.uint8), data.y_test.numpy()
        _, out = c.run("infer", die=DIE, inputs=x, timeout_s=60)
    accuracy = float((out["predictions"] == y).mean())
    assert accuracy > 0.6, accuracy


@pytest.mark.slow
def test_train_and_evaluate_jobs_use_the_loop(tmp_path: Path) -> None:
    """Train and evaluate jobs run instruments.offline on the sweep the service measured."""
    with live(tmp_path) as (url, _app), client(url) as c:
        assert c.wait(c.submit("sweep")["id"], timeout_s=120)["state"] == "succeeded"
        done = {}
        for kind, params in (("train", {"method": "baseline"}), ("evaluate", {})):
            job = c.wait(c.submit(kind, **params)["id"], timeout_s=1800)
            assert job["state"] == "succeeded", f"{kind} job: {job['error']}"
            done[kind] = (job["summary"]["result"], c.result(job["id"]))
    trained, _ = done["train"]
    assert trained["method"] == "baseline" and trained["baseline_error_pct"] < 50
    evaluated, _ = done["evaluate"]
    unaware = evaluated["methods"]["unaware"]
    assert len(unaware["per_die"]) == trained["dies"]
    assert unaware["mean"] >= evaluated["baseline_error_pct"]  # defects only hurt on average


@pytest.mark.slow
def test_a_running_train_job_stops_between_epochs_when_cancelled(tmp_path: Path) -> None:
    with live(tmp_path) as (url, _app), client(url) as c:
        assert c.wait(c.submit("sweep")["id"], timeout_s=120)["state"] == "succeeded"
        job = c.submit("train", method="baseline")
        for view in c.events(job["id"], timeout_s=300):
            if "epoch" in view["progress"]["message"]:
                c.cancel(job["id"])
                break
        final = c.wait(job["id"], timeout_s=300)
    assert final["state"] == "cancelled", final
    with RunStore(tmp_path / "run.sqlite", create=False) as store:
        assert not [r for r in store.runs() if r.kind == "train" and r.status == "finished"]
