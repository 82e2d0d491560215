"""Seeded injection of communication faults into the simulated instruments."""

from __future__ import annotations

import numpy as np

from .config import FaultConfig

FAULT_KINDS = ("timeout", "drop", "garble", "scpi_error", "prober_error")


class FaultInjector:
    """Draws at most one fault per VISA message, deterministically from the config's seed."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7]))
        self._rates = np.array([config.timeout_rate, config.drop_rate, config.garble_rate,
                                config.scpi_error_rate, config.prober_error_rate])
        if self._rates.sum() > 1:
            raise ValueError("fault rates add up to more than 1")
        self.counts = dict.fromkeys(FAULT_KINDS, 0)

    def draw(self, message: bytes) -> str | None:
        """The fault to apply to this message, or None."""
        u = self._rng.random()
        edges = np.cumsum(self._rates)
        k = int(np.searchsorted(edges, u, side="right"))
        if k >= len(FAULT_KINDS):
            return None
        kind = FAULT_KINDS[k]
        self.counts[kind] += 1
        return kind

    def garble(self, reply: bytes) -> bytes:
        """A truncated or corrupted copy of a reply."""
        if not reply:
            return b"\xff"
        if self._rng.random() < 0.5:
            return reply[: int(self._rng.integers(0, len(reply)))]
        data = bytearray(reply)
        i = int(self._rng.integers(0, len(data)))
        data[i] ^= 0x5A
        return bytes(data)
