"""benchmarks/eval_floor.py runs end to end and reports the floor it measures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_eval_floor_reports_the_hidden_layers_share(mnist_dir: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "eval_floor.py"),
                          "--data-dir", str(mnist_dir), "--repeat", "1"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    pairs = re.search(r"pairs with a defect: (\d+) of (\d+); activations that flip: (\d+)", out)
    assert pairs is not None, out
    affected, total, flips = map(int, pairs.groups())
    assert total == 36 * 70 and 0 < affected < total and flips > 0
    result = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])
    assert set(result) == {"eval36_ratio", "hidden36_per_eval1", "eval1_ms", "eval36_ms",
                           "hidden36_ms"}
    assert all(float(v) > 0 for v in result.values())
