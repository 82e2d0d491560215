"""Seeded injection of communication faults into the simulated instruments.

One draw per VISA message, from one stream shared by both instruments, so a run is
reproducible from `FaultConfig.seed` as long as the same messages are sent in the same order.
Each instrument applies only the kinds that exist for it: `scpi_error` (a spurious -300) on the
SCPI tester, `prober_error` (a ``710: Prober fault.`` reply) on the prober; a drawn kind that
does not apply to the addressed instrument is no fault (and is not counted).
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .config import FaultConfig

FAULT_KINDS = ("timeout", "drop", "garble", "scpi_error", "prober_error", "late")
LINK_KINDS = frozenset({"timeout", "drop", "garble", "late"})
TESTER_KINDS = LINK_KINDS | {"scpi_error"}
PROBER_KINDS = LINK_KINDS | {"prober_error"}


class FaultInjector:
    """Draws at most one fault per VISA message, deterministically from the config's seed."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng(np.random.SeedSequence([config.seed, 7]))
        self._rates = np.array(config.rates)  # they add up to at most 1 (FaultConfig)
        self._edges = np.cumsum(self._rates)
        self.counts = dict.fromkeys(FAULT_KINDS, 0)
        self.messages = 0  # messages seen, faulted or not

    def draw(self, message: bytes, applicable: Collection[str] = FAULT_KINDS) -> str | None:
        """The fault to apply to this message, or None.

        Exactly one random number is consumed per message whatever the outcome, so which
        instrument a message went to never shifts the fault stream of later messages.
        """
        self.messages += 1
        u = self._rng.random()
        k = int(np.searchsorted(self._edges, u, side="right"))
        if k >= len(FAULT_KINDS) or FAULT_KINDS[k] not in applicable:
            return None
        kind = FAULT_KINDS[k]
        self.counts[kind] += 1
        return kind

    def garble(self, reply: bytes) -> bytes:
        """A truncated or corrupted copy of a reply.

        Half the time the reply is cut short (a transfer that stopped); otherwise one byte is
        corrupted. In a binary block only the header is corrupted: a flipped payload byte
        would be undetectable (IEEE 488.2 blocks carry no checksum; the transports below,
        TCP, USB and GPIB, guard payload integrity themselves), so it is not a fault a
        driver could be expected to handle.
        """
        if not reply:
            return b"\xff"
        if self._rng.random() < 0.5:
            return reply[: int(self._rng.integers(0, len(reply)))]
        data = bytearray(reply)
        span = len(data)
        if data[:1] == b"#" and len(data) > 2 and data[1:2].isdigit():
            span = min(span, 2 + int(data[1:2]))  # '#', the digit count, the length digits
        i = int(self._rng.integers(0, span))
        data[i] ^= 0x5A
        return bytes(data)
