"""IEEE 488.2 definite-length binary blocks: ``#<n><len><payload>``.

Our own codec (rather than pyvisa's helpers) so that every malformed reply raises one
exception type, `BlockError`, with a message saying what was wrong. Numbers inside blocks are
little-endian (docs/scpi.md).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from drivers.errors import BlockError

__all__ = ["BlockError", "block_extent", "decode_block", "encode_array", "encode_block"]

_MAX_DIGITS = 9
_DIGITS = frozenset(b"0123456789")


def encode_block(payload: bytes | bytearray | memoryview) -> bytes:
    """Wrap `payload` in a definite-length block header (no message terminator)."""
    view = memoryview(payload)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return _framed(view, b"", b"")


def encode_array(array: ArrayLike, dtype: DTypeLike | None = None, prefix: bytes = b"",
                 suffix: bytes = b"") -> bytes:
    """Encode an array row-major as a block of little-endian `dtype` (default: its own dtype),
    between `prefix` and `suffix`."""
    arr = np.asarray(array)
    arr = np.ascontiguousarray(arr, dtype=_little_endian(arr.dtype if dtype is None else dtype))
    return _framed(arr, prefix, suffix)


def _framed(payload: memoryview | np.ndarray, prefix: bytes, suffix: bytes) -> bytes:
    """``<prefix>#<n><len><payload><suffix>`` in one copy; `payload` is C-contiguous."""
    nbytes = payload.nbytes
    length = b"%d" % nbytes
    if len(length) > _MAX_DIGITS:
        raise BlockError(f"payload of {nbytes} bytes does not fit a definite-length block")
    return b"".join((prefix, b"#%d" % len(length), length, payload, suffix))


def block_extent(data: bytes | bytearray | memoryview) -> int | None:
    """Total size (header + payload) of the block at the start of `data`.

    Returns None while the header itself is still incomplete; raises BlockError if what is
    there cannot be the start of a definite-length block.
    """
    header_len, length = _parse_header(memoryview(data), incomplete_ok=True)
    return None if header_len < 0 else header_len + length


def decode_block(
    data: bytes | bytearray | memoryview, dtype: DTypeLike, count: int | None = None
) -> np.ndarray:
    """Decode one block into a writable 1-D array of native-order `dtype`.

    `data` must hold exactly one block, optionally followed by a single ``\\n`` terminator.
    If `count` is given the block must hold exactly that many elements.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BlockError(f"block data must be bytes, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    try:
        dt = _little_endian(dtype)
    except TypeError as exc:
        raise BlockError(f"invalid element dtype {dtype!r}") from exc
    if dt.itemsize == 0 or dt.hasobject:
        raise BlockError(f"invalid element dtype {dtype!r}")
    header_len, length = _parse_header(view, incomplete_ok=False)
    end = header_len + length
    if len(view) < end:
        raise BlockError(
            f"block declares {length} payload bytes but only {len(view) - header_len} arrived"
        )
    trailer = bytes(view[end:])
    if trailer not in (b"", b"\n"):
        raise BlockError(f"{len(trailer)} unexpected bytes after the block: {trailer[:16]!r}")
    if length % dt.itemsize:
        raise BlockError(
            f"payload of {length} bytes is not a whole number of {dt.itemsize}-byte {dt.name}"
        )
    n = length // dt.itemsize
    if count is not None and n != count:
        raise BlockError(f"block holds {n} {dt.name} elements, expected {count}")
    values = np.frombuffer(view, dtype=dt, count=n, offset=header_len)
    return values.astype(dt.newbyteorder("="), copy=True)


def _little_endian(dtype: DTypeLike) -> np.dtype:
    """`dtype` as stored in a block: always little-endian (docs/scpi.md)."""
    return np.dtype(dtype).newbyteorder("<")


def _parse_header(view: memoryview, *, incomplete_ok: bool) -> tuple[int, int]:
    """Return (header length, payload length); (-1, -1) if incomplete and that is allowed."""
    need_more = (-1, -1)
    if not view:
        if incomplete_ok:
            return need_more
        raise BlockError("empty reply where a binary block was expected")
    if view[0] != ord("#"):
        raise BlockError(f"block must start with '#', got {bytes(view[:16])!r}")
    if len(view) < 2:
        if incomplete_ok:
            return need_more
        raise BlockError("block header truncated after '#'")
    n_char = view[1]
    if n_char == ord("0"):
        raise BlockError("indefinite-length blocks ('#0') are not supported")
    if n_char not in _DIGITS:
        raise BlockError(f"block header digit count must be 1-9, got {bytes([n_char])!r}")
    n = n_char - ord("0")
    digits = bytes(view[2 : 2 + n])
    if len(digits) < n:
        if incomplete_ok and all(d in _DIGITS for d in digits):
            return need_more
        raise BlockError(f"block header truncated: expected {n} length digits, got {digits!r}")
    if not all(d in _DIGITS for d in digits):
        raise BlockError(f"block length field must be {n} decimal digits, got {digits!r}")
    return 2 + n, int(digits)
