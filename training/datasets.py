"""Datasets: MNIST IDX files (folder or download), an embedded offline default, preprocessing.

Inputs of the chip are read voltages, on or off: images are downsampled to the network's input
size (area average) and binarised at a threshold.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_MIRRORS: tuple[str, ...] = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)

#: Published MD5 of the gzipped MNIST files (DESIGN.md).
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(ValueError):
    """A dataset file is missing, corrupt or inconsistent (the message names the file)."""


@dataclass(frozen=True)
class Dataset:
    """Images (n, h, w) float32 in [0, 1] or binary, and integer labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "dataset"

    def __post_init__(self) -> None:
        for x, y, part in ((self.x_train, self.y_train, "train"),
                           (self.x_test, self.y_test, "test")):
            if len(x) != len(y):
                raise DatasetError(f"{self.name} {part}: {len(x)} images but {len(y)} labels")


# ---- IDX ------------------------------------------------------------------------------------
def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (raw or .gz); raise DatasetError naming the file if it is bad."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: a folder, not an IDX file") from None
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DatasetError(f"{path}: corrupt gzip data ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow to a small size
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise DatasetError(f"{path}: IDX header declares shape {dims} ({expected} bytes), file "
                           f"holds {len(body)} bytes (truncated or corrupt)")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder}: no {stem} or {stem}.gz")


def load_mnist(folder: str | Path) -> Dataset:
    """MNIST from a folder of the four standard IDX files (gz or raw); pixels scaled to [0, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: MNIST folder not found")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ipath = _find(folder, f"{prefix}-images-idx3-ubyte")
        lpath = _find(folder, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim != 3 or 0 in images.shape[1:]:
            raise DatasetError(f"{ipath}: expected 3-D images of at least one pixel, got "
                               f"shape {images.shape}")
        if images.dtype != np.uint8:  # MNIST's pixels are bytes; others would not scale by 255
            raise DatasetError(f"{ipath}: expected unsigned-byte pixels (IDX type 0x08), got "
                               f"{images.dtype}")
        if labels.ndim != 1:
            raise DatasetError(f"{lpath}: expected 1-D labels, got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise DatasetError(f"{lpath}: expected integer labels, got {labels.dtype}")
        if len(images) != len(labels):
            raise DatasetError(f"{ipath} has {len(images)} images but {lpath} has "
                               f"{len(labels)} labels")
        if len(images) == 0:
            raise DatasetError(f"{ipath}: no images (the {split} split is empty)")
        lowest, highest = int(labels.min()), int(labels.max())
        if lowest < 0 or highest > 9:
            raise DatasetError(f"{lpath}: label {lowest if lowest < 0 else highest} outside "
                               "0..9")
        parts[split] = (images.astype(np.float32) / 255.0, labels.astype(np.int64))
    return Dataset(*parts["train"], *parts["test"], name=f"mnist:{folder}")


# ---- download -------------------------------------------------------------------------------
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_mnist(cache_dir: str | Path, mirrors: Sequence[str] = DEFAULT_MIRRORS,
                   md5: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> Path:
    """Fetch the four MNIST files into cache_dir (skipping verified ones); return the folder.

    Each file is tried on every mirror in turn, written to a temporary file in cache_dir, its MD5
    checked, then moved into place with os.replace: a failed or corrupted download leaves no
    file behind. Raises DatasetError listing every mirror's failure (e.g. when offline).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    sums = dict(MNIST_MD5 if md5 is None else md5)
    for name, want in sums.items():
        dest = cache / name
        if dest.is_file() and _md5(dest) == want:
            continue
        errors = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            fd, tmp_name = tempfile.mkstemp(dir=cache, prefix=f".{name}.", suffix=".part")
            tmp = Path(tmp_name)
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s
                                                                        ) as resp:
                    while chunk := resp.read(1 << 16):
                        out.write(chunk)
                got = _md5(tmp)
                if got != want:
                    errors.append(f"{url}: MD5 {got} does not match the published {want}")
                    continue
                os.replace(tmp, dest)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as err:
                errors.append(f"{url}: {getattr(err, 'reason', err)}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DatasetError(
                f"could not download {name} into {cache} (offline? use a local MNIST folder or "
                "the embedded digits dataset):\n  " + "\n  ".join(errors))
    return cache


# ---- embedded default -----------------------------------------------------------------------
def load_digits_dataset(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (1,797 real 8x8 images, shipped offline), split by seed."""
    from sklearn.datasets import load_digits

    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1 (exclusive), got "
                         f"{test_fraction}")
    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = round(test_fraction * len(x))
    te, tr = order[:n_test], order[n_test:]
    return Dataset(x[tr], y[tr], x[te], y[te], name="sklearn-digits")


# ---- preprocessing --------------------------------------------------------------------------
def preprocess(images: np.ndarray, side: int = 10, threshold: float = 0.3) -> np.ndarray:
    """Resample (n, h, w) images to side x side (area average or bilinear up) and binarise.

    Returns float32 (n, side * side) in {0, 1}: read voltage on (1) or off (0) per row.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if x.ndim != 3 or 0 in x.shape[1:]:
        raise DatasetError(f"images must be (n, h, w) with h, w >= 1, got shape "
                           f"{tuple(x.shape)}")
    if side < 1:
        raise ValueError(f"the input side must be at least 1 pixel, got {side}")
    x = x[:, None]
    if x.shape[-1] >= side and x.shape[-2] >= side:
        x = F.adaptive_avg_pool2d(x, side)
    else:
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    return (x.flatten(1) > threshold).float().numpy()


@dataclass(frozen=True)
class BinaryData:
    """Binarised inputs (float32 {0,1}, (n, n_in)) and labels, as tensors ready for training."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_inputs(self) -> int:
        return int(self.x_train.shape[1])


def prepare(dataset: Dataset, side: int = 10, threshold: float = 0.3) -> BinaryData:
    """Preprocess both splits of a dataset into `BinaryData`."""
    return BinaryData(
        torch.from_numpy(preprocess(dataset.x_train, side, threshold)),
        torch.from_numpy(np.asarray(dataset.y_train, dtype=np.int64)),
        torch.from_numpy(preprocess(dataset.x_test, side, threshold)),
        torch.from_numpy(np.asarray(dataset.y_test, dtype=np.int64)),
    )


def data_label(data_dir: str | Path | None) -> str:
    """How reports name the data `load_default(data_dir)` reads."""
    return str(data_dir) if data_dir is not None else "embedded (scikit-learn digits)"


def load_default(data_dir: str | Path | None = None, side: int = 10,
                 threshold: float = 0.3, seed: int = 0) -> BinaryData:
    """MNIST from data_dir if given, else the embedded digits; preprocessed."""
    ds = load_mnist(data_dir) if data_dir is not None else load_digits_dataset(seed=seed)
    return prepare(ds, side, threshold)
