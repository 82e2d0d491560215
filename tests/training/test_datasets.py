from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from training.datasets import (
    DatasetError,
    download_mnist,
    load_digits_dataset,
    load_mnist,
    prepare,
    preprocess,
    read_idx,
)


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(
        f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                          ("labels-idx1", rng.integers(0, 10, n))):
            data = idx_bytes(arr)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_folder(tmp_path: Path, gz: bool) -> None:
    write_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x_train.shape == (30, 28, 28) and ds.y_test.shape == (10,)
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1


def test_bad_idx_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match=r"bad-magic.*magic"):
        read_idx(bad)
    trunc = tmp_path / "trunc"
    trunc.write_bytes(idx_bytes(np.zeros((4, 3, 3)))[:-5])
    with pytest.raises(DatasetError, match=r"trunc.*truncated"):
        read_idx(trunc)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 3))))[:-6])
    with pytest.raises(DatasetError, match=r"corrupt.gz"):
        read_idx(corrupt)
    with pytest.raises(DatasetError, match="not found"):
        read_idx(tmp_path / "missing")
    with pytest.raises(DatasetError, match="a folder, not an IDX file"):  # was "corrupt gzip"
        read_idx(tmp_path)
    huge = tmp_path / "huge"  # 2^32-1 cubed bytes: np.prod wrapped round to a small size
    huge.write_bytes(struct.pack(">BBBB3I", 0, 0, 0x08, 3, *[2**32 - 1] * 3) + b"\0" * 8)
    with pytest.raises(DatasetError, match=r"huge: IDX header declares shape"):
        read_idx(huge)


def test_degenerate_images_and_settings_are_refused(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    write_mnist(tmp_path / "flat")
    (tmp_path / "flat" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((30, 0, 0)))))
    with pytest.raises(DatasetError, match=r"train-images.*at least one pixel.*\(30, 0, 0\)"):
        load_mnist(tmp_path / "flat")
    with pytest.raises(ValueError, match="side must be at least 1 pixel, got 0"):
        preprocess(np.zeros((2, 8, 8)), side=0)
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="test_fraction must be between 0 and 1"):
            load_digits_dataset(test_fraction=fraction)


def test_label_image_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(7))))
    with pytest.raises(DatasetError, match=r"10 images.*7 labels"):
        load_mnist(tmp_path)


def test_corrupt_deflate_stream_names_the_file(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(idx_bytes(np.zeros((4, 3)))))
    data[10] = 0xFF  # the first byte of the deflate stream: an invalid block type
    path = tmp_path / "bad-deflate.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bad-deflate.gz: corrupt gzip data"):
        read_idx(path)


def _idx_typed(arr: np.ndarray, code: int) -> bytes:
    """IDX bytes of arr with type code (0x08 ubyte, 0x09 sbyte, 0x0D float32, big-endian)."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0D: ">f4"}[code]
    return struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(
        f">{arr.ndim}I", *arr.shape) + np.asarray(arr, dtype).tobytes()


@pytest.mark.parametrize(("name", "data", "fragment"), [
    ("train-images-idx3-ubyte", _idx_typed(np.zeros((30, 28, 28)), 0x0D),
     "expected unsigned-byte pixels"),
    ("train-labels-idx1-ubyte", _idx_typed(np.full(30, -1), 0x09), "label -1 outside 0..9"),
    ("train-labels-idx1-ubyte", _idx_typed(np.full(30, 3.0), 0x0D), "expected integer labels"),
])
def test_bad_pixel_and_label_types_name_the_file(tmp_path: Path, name: str, data: bytes,
                                                 fragment: str) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DatasetError, match=rf"{name}.*{fragment}|{fragment}"):
        load_mnist(tmp_path)


def test_an_empty_split_is_refused(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=0, gz=False)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: no images"):
        load_mnist(tmp_path)


def test_preprocess_binarises_and_resamples() -> None:
    img = np.zeros((2, 28, 28), np.float32)
    img[0, :14] = 1.0
    x = preprocess(img, side=10)
    assert x.shape == (2, 100) and set(np.unique(x)) <= {0.0, 1.0}
    assert x[0, :40].all() and not x[0, 60:].any() and not x[1].any()
    up = preprocess(np.ones((1, 8, 8), np.float32), side=10)
    assert up.shape == (1, 100) and up.all()


def test_embedded_digits_offline() -> None:
    ds = load_digits_dataset(seed=1)
    assert len(ds.x_train) + len(ds.x_test) == 1797
    again = load_digits_dataset(seed=1)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    data = prepare(ds)
    assert data.x_train.shape[1] == 100


def test_mnist_subset(mnist_dir: Path) -> None:
    ds = load_mnist(mnist_dir)
    assert ds.x_train.shape == (8000, 28, 28) and ds.x_test.shape == (2000, 28, 28)
    assert np.bincount(ds.y_test).tolist()[:3] == [209, 226, 182]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "srv"
    write_mnist(root)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root
    httpd.shutdown()


def _sums(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in root.glob("*.gz")}


def test_download_verifies_and_caches(server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = server
    cache = tmp_path / "cache"
    dead = "http://127.0.0.1:9/"  # first mirror refuses: the second is used
    out = download_mnist(cache, [dead, url], md5=_sums(root))
    assert load_mnist(out).x_train.shape == (30, 28, 28)
    assert not list(cache.glob(".*part"))


def test_download_checksum_mismatch_caches_nothing(server: tuple[str, Path],
                                                   tmp_path: Path) -> None:
    url, root = server
    sums = _sums(root)
    sums["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="MD5"):
        download_mnist(cache, [url], md5=sums)
    assert not (cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(cache.glob(".*part"))


def test_download_offline_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="offline"):
        download_mnist(tmp_path, ["http://127.0.0.1:9/"], md5={"x.gz": "0" * 32},
                       timeout_s=2)
