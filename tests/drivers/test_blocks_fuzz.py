"""Fuzz the block decoder: any input decodes correctly or raises BlockError, nothing else."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.blocks import decode_block, encode_block
from drivers.errors import BlockError

DTYPES = st.sampled_from([np.uint8, np.int16, np.float32, np.float64, ">u4"])
COUNTS = st.none() | st.integers(min_value=0, max_value=64)


def _decode_or_block_error(data: bytes, dtype: object, count: int | None) -> np.ndarray | None:
    try:
        out = decode_block(data, dtype, count)  # type: ignore[arg-type]
    except BlockError as exc:
        assert str(exc)  # a message, always
        return None
    assert isinstance(out, np.ndarray)
    assert out.ndim == 1
    if count is not None:
        assert out.size == count
    return out


@settings(max_examples=400)
@given(st.binary(max_size=64), DTYPES, COUNTS)
def test_random_bytes(data: bytes, dtype: object, count: int | None) -> None:
    _decode_or_block_error(data, dtype, count)


@settings(max_examples=400)
@given(st.binary(max_size=40), DTYPES, COUNTS)
def test_random_bytes_after_hash(tail: bytes, dtype: object, count: int | None) -> None:
    _decode_or_block_error(b"#" + tail, dtype, count)


@st.composite
def mutated_blocks(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A valid block (+ optional terminator) and a mutation of it."""
    payload = draw(st.binary(max_size=48))
    block = encode_block(payload) + draw(st.sampled_from([b"", b"\n"]))
    data = bytearray(block)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "append"]))
        pos = draw(st.integers(min_value=0, max_value=max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "delete" and data:
            del data[pos]
        elif kind == "insert":
            data.insert(pos, draw(st.integers(0, 255)))
        elif kind == "truncate":
            del data[pos:]
        else:
            data += draw(st.binary(min_size=1, max_size=4))
    return payload, bytes(data)


@settings(max_examples=600)
@given(mutated_blocks(), DTYPES, COUNTS)
def test_mutated_blocks(case: tuple[bytes, bytes], dtype: object, count: int | None) -> None:
    _, data = case
    _decode_or_block_error(data, dtype, count)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([b"", b"\n"]))
def test_valid_blocks_decode_exactly(payload: bytes, trailer: bytes) -> None:
    out = decode_block(encode_block(payload) + trailer, np.uint8, len(payload))
    assert out.tobytes() == payload


@settings(max_examples=200)
@given(st.lists(st.floats(width=32, allow_nan=False), max_size=50))
def test_float32_round_trip(values: list[float]) -> None:
    arr = np.array(values, dtype="<f4")
    out = decode_block(encode_block(arr.tobytes()), np.float32, len(values))
    np.testing.assert_array_equal(out, arr)
