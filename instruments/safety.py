"""The safety policy: the station's limits, checked before any voltage leaves the driver."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import TESTER_SETTINGS, SafetyLimits

#: tester control -> the safety limit (a `SafetyLimits` field) guarding it
LIMIT_OF_CONTROL = dict(TESTER_SETTINGS.values())


class SafetyViolation(ValueError):
    """A request that would exceed the station's safety limits; nothing was sent."""


@dataclass(frozen=True)
class SafetyPolicy:
    """Maps each voltage- or current-bearing setting to its limit and checks values."""

    limits: SafetyLimits

    def limit_of(self, setting: str) -> float | None:
        """The limit guarding a driver setting, or None for a setting that applies no bias."""
        limit_key = LIMIT_OF_CONTROL.get(setting)
        return None if limit_key is None else float(getattr(self.limits, limit_key))

    def check(self, setting: str, value: float) -> None:
        """Raise SafetyViolation unless `value` is finite, non-negative and within the limit."""
        limit = self.limit_of(setting)
        if limit is None:
            return
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise SafetyViolation(f"{setting} = {value!r} is not a valid non-negative number")
        if value > limit:
            raise SafetyViolation(
                f"{setting} = {value} exceeds the station's safety limit {limit}; "
                "nothing was sent")

    def check_settings(self, settings: dict[str, float]) -> None:
        """Check a set of current instrument settings before a pulse or read is issued."""
        for name, value in settings.items():
            self.check(name, value)
