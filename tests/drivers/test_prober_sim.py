"""VeloxProber against the simulated probe station through a real ResourceManager."""

from __future__ import annotations

import pytest
import pyvisa

from drivers.errors import ProberError
from drivers.prober import DieIndex, VeloxProber


def test_resources_are_listed(sim_rm: pyvisa.ResourceManager) -> None:
    assert set(sim_rm.list_resources()) >= {"TCPIP0::prober.sim::inst0::INSTR",
                                            "TCPIP0::xbar.sim::inst0::INSTR"}


def test_identity_and_version(sim_prober: VeloxProber) -> None:
    assert sim_prober.identity().startswith("FormFactor,Velox-SIM,")
    assert sim_prober.software_version() == "3.6.0"


def test_walks_all_36_dies_then_none(sim_prober: VeloxProber) -> None:
    wafer_map = sim_prober.wafer_map()
    assert len(wafer_map) == 36
    assert len(set(wafer_map)) == 36
    assert all(0 <= d.col < 6 and 0 <= d.row < 6 for d in wafer_map)
    visited = [sim_prober.first_die()]
    assert sim_prober.position() == visited[0]
    while (die := sim_prober.next_die()) is not None:
        assert sim_prober.position() == die
        visited.append(die)
        assert len(visited) <= 36
    assert visited == wafer_map
    assert sim_prober.next_die() is None  # stays at the end


def test_contact_and_separation(sim_prober: VeloxProber) -> None:
    sim_prober.first_die()
    assert sim_prober.in_contact() is False
    sim_prober.contact()
    assert sim_prober.in_contact() is True
    sim_prober.separate()
    sim_prober.separate()  # idempotent
    assert sim_prober.in_contact() is False


def test_goto_die(sim_prober: VeloxProber) -> None:
    target = sim_prober.wafer_map()[7]
    assert sim_prober.goto_die(target) == target
    assert sim_prober.position() == target


def test_stepping_in_contact_is_refused(sim_prober: VeloxProber) -> None:
    first = sim_prober.first_die()
    sim_prober.contact()
    for call in (sim_prober.next_die, sim_prober.first_die):
        with pytest.raises(ProberError) as info:
            call()
        assert info.value.code == 705
    assert sim_prober.position() == first  # nothing moved
    assert sim_prober.in_contact() is True


def test_errors_before_any_die(sim_prober: VeloxProber) -> None:
    for call, command in ((sim_prober.next_die, "StepNextDie"),
                          (sim_prober.position, "ReadChuckIndex"),
                          (sim_prober.contact, "MoveChuckContact")):
        with pytest.raises(ProberError) as info:
            call()
        assert (info.value.code, info.value.command) == (706, command)


def test_die_off_the_map(sim_prober: VeloxProber) -> None:
    start = sim_prober.first_die()
    with pytest.raises(ProberError, match="not on wafer map") as info:
        sim_prober.goto_die(DieIndex(9, 9))
    assert info.value.code == 704
    assert sim_prober.position() == start


def test_unknown_command(sim_prober: VeloxProber) -> None:
    reply = sim_prober.ask("Frobnicate")
    assert reply.startswith("1:")
