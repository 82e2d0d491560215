"""Fixtures of the training tests: small synthetic maps and data, the mnist-subset folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from training.datasets import BinaryData
from training.defects import CellDefect, DefectMap

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The mnist-subset folder: $MTJLAB_MNIST_DIR or ../shared/data/mnist-subset (fails loudly)."""
    env = os.environ.get("MTJLAB_MNIST_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "mnist-subset"
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"mnist-subset not found at {path}: set MTJLAB_MNIST_DIR or place it at "
                    "../shared/data/mnist-subset beside the repository")
    return path


def random_map(rows: int = 20, cols: int = 40, rate: float = 0.05, seed: int = 0,
               failed_row: int | None = None) -> DefectMap:
    rng = np.random.default_rng(seed)
    kinds = np.where(rng.random((rows, cols)) < rate,
                     rng.integers(1, 5, (rows, cols)), 0).astype(np.int8)
    if failed_row is not None:
        kinds[failed_row, :] = CellDefect.OPEN
    r = np.zeros((rows, cols), np.float32)
    r[kinds == CellDefect.SHORT] = rng.uniform(1020, 1300, int((kinds == 1).sum()))
    r[kinds == CellDefect.OPEN] = 1e7
    return DefectMap(kinds, r)


@pytest.fixture
def small_maps() -> list[DefectMap]:
    return [random_map(seed=s, failed_row=3 if s % 2 else None) for s in range(6)]


@pytest.fixture(scope="session")
def toy_data() -> BinaryData:
    """A separable 16-input, 3-class toy problem."""
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(3, 16, generator=g) > 0.5).float()

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 3, (n,), generator=g)
        flip = torch.rand(n, 16, generator=g) < 0.08
        x = torch.where(flip, 1 - protos[y], protos[y])
        return x, y

    xtr, ytr = make(600)
    xte, yte = make(300)
    return BinaryData(xtr, ytr, xte, yte)
