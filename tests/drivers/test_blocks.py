"""IEEE 488.2 definite-length block codec."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.blocks import block_extent, decode_block, encode_array, encode_block
from drivers.errors import BlockError


def test_encode_block_header() -> None:
    assert encode_block(b"abc") == b"#13abc"
    assert encode_block(b"") == b"#10"
    assert encode_block(b"x" * 20000) == b"#520000" + b"x" * 20000


def test_encode_array_is_little_endian_row_major() -> None:
    arr = np.array([[1, 2], [3, 258]], dtype=">u2")
    assert encode_array(arr) == b"#18" + bytes([1, 0, 2, 0, 3, 0, 2, 1])
    assert encode_array([0, 1, 2], np.uint8) == b"#13\x00\x01\x02"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, np.float64])
def test_round_trip(dtype: type) -> None:
    values = (np.arange(24).reshape(4, 6) - 5).astype(dtype)
    block = encode_array(values)
    decoded = decode_block(block + b"\n", dtype, values.size)
    np.testing.assert_array_equal(decoded, values.ravel())
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.flags.writeable


def test_decode_float32_from_literal_bytes() -> None:
    data = b"#18" + np.array([1.5, -2.0], "<f4").tobytes()
    np.testing.assert_array_equal(decode_block(data, np.float32), [1.5, -2.0])


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode_block(b"\x01\x02")
    for form in (bytearray(data), memoryview(data)):
        np.testing.assert_array_equal(decode_block(form, np.uint8), [1, 2])


def test_payload_may_contain_newlines() -> None:
    assert decode_block(b"#13\n\n\n\n", np.uint8).tolist() == [10, 10, 10]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"\n", "must start with '#'"),
        (b"1,2,3", "must start with '#'"),
        (b"#", "truncated"),
        (b"#0abc\n", "indefinite"),
        (b"#x3abc", "digit count"),
        (b"#3", "truncated"),
        (b"#31", "truncated"),
        (b"#2a4abcd", "decimal digits"),
        (b"#15abc", "declares 5 payload bytes but only 3"),
        (b"#13abcd", "unexpected bytes after"),
        (b"#13abc\r\n", "unexpected bytes after"),
        (b"#13abc\n\n", "unexpected bytes after"),
    ],
)
def test_malformed_blocks_raise_block_error(data: bytes, fragment: str) -> None:
    with pytest.raises(BlockError, match=fragment):
        decode_block(data, np.uint8)


def test_itemsize_and_count_are_checked() -> None:
    with pytest.raises(BlockError, match="whole number of 4-byte"):
        decode_block(b"#16abcdef", np.float32)
    with pytest.raises(BlockError, match="holds 6 uint8 elements, expected 5"):
        decode_block(b"#16abcdef", np.uint8, count=5)


def test_non_bytes_and_bad_dtype_raise_block_error() -> None:
    with pytest.raises(BlockError, match="must be bytes"):
        decode_block("#13abc", np.uint8)  # type: ignore[arg-type]
    with pytest.raises(BlockError, match="dtype"):
        decode_block(b"#13abc", object)
    with pytest.raises(BlockError, match="dtype"):
        decode_block(b"#13abc", "not-a-dtype")


def test_block_error_is_a_value_error() -> None:
    assert issubclass(BlockError, ValueError)


def test_block_extent() -> None:
    block = encode_block(b"x" * 123)
    assert block_extent(block) == len(block)
    assert block_extent(block[:20]) == len(block)
    for partial in (b"", b"#", b"#3", b"#31"):
        assert block_extent(partial) is None
    with pytest.raises(BlockError):
        block_extent(b"ERR")
