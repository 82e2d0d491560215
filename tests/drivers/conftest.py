"""Fixtures for driver tests against the simulated wafer (a real pyvisa ResourceManager)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pyvisa

from drivers.crossbar import CrossbarTester
from drivers.prober import VeloxProber

# Resource names as documented in docs/scpi.md (the contract, not the simulator's constants).
PROBER_ADDRESS = "TCPIP0::prober.sim::inst0::INSTR"
XBAR_ADDRESS = "TCPIP0::xbar.sim::inst0::INSTR"


@pytest.fixture
def sim_rm() -> Iterator[pyvisa.ResourceManager]:
    """A fresh simulated wafer (seed 0) behind a pyvisa ResourceManager."""
    import simulated_hw

    rm = simulated_hw.resource_manager(seed=0)
    yield rm
    rm.close()


@pytest.fixture
def sim_prober(sim_rm: pyvisa.ResourceManager) -> Iterator[VeloxProber]:
    with VeloxProber.open(sim_rm, PROBER_ADDRESS, timeout_s=2.0) as prober:
        yield prober


@pytest.fixture
def sim_xbar(sim_rm: pyvisa.ResourceManager) -> Iterator[CrossbarTester]:
    with CrossbarTester.open(sim_rm, XBAR_ADDRESS, timeout_s=2.0) as xbar:
        yield xbar


@pytest.fixture
def contacted(sim_prober: VeloxProber, sim_xbar: CrossbarTester) -> CrossbarTester:
    """The tester on the first die, in contact, output on."""
    sim_prober.first_die()
    sim_prober.contact()
    sim_xbar.output_enabled = True
    return sim_xbar
