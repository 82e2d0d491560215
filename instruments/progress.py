"""Progress bars for the operator (stderr, off with --quiet): dies of a sweep, training epochs."""

from __future__ import annotations

import sys
from numbers import Integral
from typing import Any

from tqdm import tqdm


def say(quiet: bool, text: str) -> None:
    """A status line on stderr unless quiet."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


class _Bar(tqdm):
    """tqdm, but whole numbers in the postfix shown whole: tqdm's .3g showed a die's 19953
    healthy cells as `ok=2e+4` (numpy integers too; floats keep tqdm's format)."""

    @staticmethod
    def format_num(n: Any) -> str:
        if isinstance(n, Integral) and not isinstance(n, bool):
            return str(int(n))
        return str(tqdm.format_num(n))


def bar(desc: str, quiet: bool, total: int | None = None, unit: str = "die") -> tqdm:
    """A transient bar on stderr (disabled when quiet)."""
    return _Bar(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=False)


class EpochBars:
    """One bar per training stage, fed by training's on_epoch(stage, done, total, loss)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar: tqdm | None = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int, loss: float) -> None:
        if stage != self._stage or self._bar is None:
            self.close()
            self._bar = bar(f"train {stage}", self.quiet, total, unit="epoch")
            self._stage = stage
        self._bar.update(1)
        self._bar.set_postfix(loss=f"{loss:.3f}")
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None

    def __enter__(self) -> EpochBars:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
