"""CrossbarTester against the simulated wafer through a real ResourceManager."""

from __future__ import annotations

import re

import numpy as np
import pytest
import pyvisa

from drivers.crossbar import AP, KEEP, CrossbarTester, P
from drivers.errors import InstrumentError, LimitError
from drivers.prober import VeloxProber

#: Between R_P + R_access (~6 kOhm) and R_AP + R_access (~12 kOhm) of the default model.
R_THRESHOLD = 8_500.0


def _states(ohms: np.ndarray) -> np.ndarray:
    return (ohms > R_THRESHOLD).astype(np.uint8)


def _write_verify(xbar: CrossbarTester, targets: np.ndarray, rounds: int = 6) -> None:
    """Pulse, read back, re-pulse only the cells that are still wrong."""
    pending = targets.copy()
    for _ in range(rounds):
        xbar.program_array(pending)
        wrong = _states(xbar.read_array()) != targets
        pending = np.where(wrong, targets, KEEP).astype(np.uint8)


def test_identity_size_and_defaults(sim_xbar: CrossbarTester) -> None:
    assert re.fullmatch(r"mtjlab,XBAR-100x200-SIM,[^,]+,1\.0", sim_xbar.identity())
    assert sim_xbar.shape == (100, 200)
    sim_xbar.reset()
    snap = sim_xbar.snapshot()
    assert snap["read_voltage_v"]["value"] == pytest.approx(0.1)
    assert snap["pulse_amplitude_v"]["value"] == pytest.approx(0.9)
    assert snap["pulse_width_s"]["value"] == pytest.approx(5e-8)
    assert snap["compliance_a"]["value"] == pytest.approx(0.01)
    assert snap["output_enabled"]["value"] is False
    assert snap["in_contact"]["value"] is False
    assert sim_xbar.opc() is True


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("read_voltage_v", (0.01, 0.5, 0.2)),
        ("pulse_amplitude_v", (0.0, 2.0, 1.1)),
        ("pulse_width_s", (1e-9, 1e-3, 2e-8)),
        ("compliance_a", (1e-6, 0.1, 5e-3)),
    ],
)
def test_settings_round_trip_at_limits(sim_xbar: CrossbarTester, name: str,
                                       values: tuple[float, ...]) -> None:
    for value in values:
        setattr(sim_xbar, name, value)
        assert getattr(sim_xbar, name) == pytest.approx(value)


def test_output_switch(sim_xbar: CrossbarTester) -> None:
    sim_xbar.output_enabled = True
    assert sim_xbar.output_enabled is True
    sim_xbar.output_enabled = False
    assert sim_xbar.output_enabled is False


def test_out_of_range_rejected_by_driver_and_by_instrument(sim_xbar: CrossbarTester) -> None:
    with pytest.raises(LimitError, match="pulse_amplitude_v"):
        sim_xbar.pulse_amplitude_v = 2.5
    with pytest.raises(InstrumentError) as info:  # bypassing the driver's validation
        sim_xbar.write("SOUR:PULS:AMPL 2.5")
    assert (info.value.code, info.value.command) == (-222, "SOUR:PULS:AMPL 2.5")
    assert sim_xbar.pulse_amplitude_v == pytest.approx(0.9)  # unchanged


def test_array_operations_without_contact(sim_xbar: CrossbarTester) -> None:
    sim_xbar.output_enabled = True
    assert sim_xbar.in_contact is False
    for call, command in (
        (sim_xbar.read_array, "MEAS:ARR?"),
        (lambda: sim_xbar.program_array(np.zeros(sim_xbar.shape, np.uint8), check=True),
             "PROG:ARR"),
        (lambda: sim_xbar.infer(np.ones((1, sim_xbar.rows), np.uint8)), "INF:CURR?"),
        (lambda: sim_xbar.read_cell(0, 0), "MEAS:CELL? 0,0"),
        (lambda: sim_xbar.write_cell(0, 0, AP), "PROG:CELL 0,0,1"),
    ):
        with pytest.raises(InstrumentError) as info:
            call()
        assert info.value.code == -241, command
        assert info.value.command == command
        assert "no die in contact" in str(info.value)


def test_read_with_output_off(sim_prober: VeloxProber, sim_xbar: CrossbarTester) -> None:
    sim_prober.first_die()
    sim_prober.contact()
    with pytest.raises(InstrumentError) as info:
        sim_xbar.read_array()
    assert info.value.code == -221


def test_program_array_and_read_back(contacted: CrossbarTester, sim_rm: pyvisa.ResourceManager,
                                     sim_prober: VeloxProber) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, contacted.shape, dtype=np.uint8)
    _write_verify(contacted, targets)
    read = _states(contacted.read_array())
    assert (read == targets).mean() > 0.95  # the rest are defects
    wafer = sim_rm.visalib.wafer  # ground truth, for the test only
    first = sim_prober.position()
    die = wafer.die_index(first.col, first.row)
    healthy = wafer.true_defects(die)[0] == 0
    np.testing.assert_array_equal(wafer.true_states(die)[healthy], targets[healthy])


def test_keep_leaves_cells_alone(contacted: CrossbarTester) -> None:
    _write_verify(contacted, np.zeros(contacted.shape, np.uint8))
    before = _states(contacted.read_array())
    targets = np.full(contacted.shape, KEEP, np.uint8)
    targets[:10] = AP
    contacted.program_array(targets)
    after = _states(contacted.read_array())
    np.testing.assert_array_equal(after[10:], before[10:])
    assert after[:10].mean() > 0.9


def test_cell_write_and_read(contacted: CrossbarTester) -> None:
    for state in (AP, P, AP):
        for _ in range(5):  # a pulse may fail to switch
            contacted.write_cell(3, 4, state)
        ohms = contacted.read_cell(3, 4)
        assert _states(np.array(ohms)) == state
        assert contacted.read_array()[3, 4] == pytest.approx(ohms, rel=0.1)


def test_inference_shapes_and_physics(contacted: CrossbarTester) -> None:
    rows, cols = contacted.shape
    inputs = np.zeros((4, rows), np.uint8)
    inputs[1, :10] = 1
    inputs[2] = 1
    inputs[3, ::2] = 1
    currents = contacted.infer(inputs)
    assert currents.shape == (4, cols)
    assert currents.dtype == np.float64
    assert np.all(np.abs(currents[0]) < 1e-9)  # no row driven
    assert np.all(currents[2] >= currents[1])  # more rows on, more current
    assert np.all(currents <= contacted.compliance_a * (1 + 1e-6))
    single = contacted.infer(inputs[2:3])
    assert single.shape == (1, cols)


def test_bad_blocks_and_unknown_commands(contacted: CrossbarTester) -> None:
    before = _states(contacted.read_array())
    bad = [
        ("PROG:ARR #15abc", -160),  # length mismatch
        ("PROG:ARR 12", -160),  # not a block
        ("FROB 1", -113),
        ("MEAS:CELL? 100,0", -222),
        ("MEAS:CELL? a,b", -104),
    ]
    for command, code in bad:
        with pytest.raises(InstrumentError) as info:
            if "?" in command:
                contacted.query(command)
            else:
                contacted.write(command)
        assert info.value.code == code, command
    with pytest.raises(InstrumentError) as info:  # valid block, wrong element count
        contacted.write_block("PROG:ARR", np.zeros(10, np.uint8))
    assert info.value.code == -160
    with pytest.raises(InstrumentError) as info:  # a target value outside 0..2
        contacted.write_block("PROG:ARR", np.full(contacted.shape, 3, np.uint8))
    assert info.value.code == -160
    after = _states(contacted.read_array())
    assert (after == before).mean() > 0.99  # nothing was written (read noise aside)


def test_error_queue_is_empty_after_errors(contacted: CrossbarTester) -> None:
    with pytest.raises(InstrumentError):
        contacted.write("FROB")
    assert contacted.read_error_queue() == []
    contacted.clear()
    assert contacted.event_status() == 0


def test_a_late_reply_never_answers_the_next_query(sim_rm: pyvisa.ResourceManager,
                                                   sim_xbar: CrossbarTester) -> None:
    """The instrument answers after the driver gave up waiting (a `late` fault): the
    driver clears the device on the timeout, so the late reply is not read as the error
    queue's answer nor as the next setting's value (it was: 0.9 V read as the read voltage
    and a SYST:ERR? reply of '0.1' refused as garbled)."""
    from drivers.errors import InstrumentTimeout
    from simulated_hw import TESTER_RESOURCE

    class LateOnce:
        done = False

        def draw(self, message: bytes, applicable: object = ()) -> str | None:
            if self.done or not message.startswith(b"SOUR:READ:VOLT?"):
                return None
            self.done = True
            return "late"

    sim_xbar.timeout_s = 0.05
    sim_rm.visalib.devices[TESTER_RESOURCE].faults = LateOnce()
    with pytest.raises(InstrumentTimeout, match="SOUR:READ:VOLT"):
        _ = sim_xbar.read_voltage_v
    assert sim_xbar.pulse_amplitude_v == pytest.approx(0.9)
    assert sim_xbar.read_voltage_v == pytest.approx(0.1)
