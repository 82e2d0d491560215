"""Station fixtures on the simulated wafer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from instruments.config import StationConfig
from instruments.station import Station

REPO = Path(__file__).resolve().parents[2]


def station_config(**overrides: object) -> StationConfig:
    """The default simulated station, with top-level sections overridden."""
    return StationConfig.model_validate({"instruments": {"simulated": {}}, **overrides})


@pytest.fixture
def config() -> StationConfig:
    return station_config()


@pytest.fixture
def station(config: StationConfig) -> Iterator[Station]:
    with Station(config) as st:
        yield st
