"""The simulated prober and tester through a real pyvisa ResourceManager (raw SCPI, no drivers)."""

from __future__ import annotations

import numpy as np
import pytest
import pyvisa
from pyvisa import constants
from pyvisa.errors import VisaIOError

import simulated_hw
from simulated_hw import PROBER_RESOURCE, TESTER_RESOURCE, FaultConfig, WaferConfig, tester_model
from simulated_hw.physics import SKIP, Defect

from .conftest import (
    NO_ERROR,
    block,
    classify,
    drain_errors,
    error_code,
    healthy,
    open_instrument,
    small_config,
)

N_CELLS = 100 * 200


def read_array(tester) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = tester.query_binary_values("MEAS:ARR?", datatype="f", container=np.array)
    return r.reshape(100, 200)


def program_array(tester, targets: np.ndarray, pulses: int = 4) -> None:  # type: ignore[no-untyped-def]
    for _ in range(pulses):
        tester.write_binary_values("PROG:ARR ", targets.astype(np.uint8).ravel(), datatype="B")
    assert tester.query("SYST:ERR?") == NO_ERROR


# ---- resources and identity ---------------------------------------------------------------
def test_list_resources_lists_both(rm: pyvisa.ResourceManager) -> None:
    assert set(rm.list_resources()) == {PROBER_RESOURCE, TESTER_RESOURCE}


def test_identities(prober, tester) -> None:  # type: ignore[no-untyped-def]
    assert prober.query("*IDN?") == "FormFactor,Velox-SIM,PS-0001,3.6"
    assert prober.query("ReportSoftwareVersion") == "0: 3.6.0"
    assert tester.query("*IDN?") == "mtjlab,XBAR-100x200-SIM,XB-0001,1.0"
    assert tester.query("*OPC?") == "1"
    assert tester.query("ARR:SIZE?") == "100,200"


def test_identity_follows_array_size() -> None:
    rm = simulated_hw.resource_manager(seed=0, config=small_config())
    tester = open_instrument(rm, TESTER_RESOURCE)
    assert tester.query("*IDN?") == "mtjlab,XBAR-4x6-SIM,XB-0001,1.0"
    assert tester.query("ARR:SIZE?") == "4,6"
    rm.close()


# ---- prober -------------------------------------------------------------------------------
def test_prober_steps_over_all_36_dies_then_703(prober, tester) -> None:  # type: ignore[no-untyped-def]
    seen = [prober.query("StepFirstDie")]
    for _ in range(35):
        seen.append(prober.query("StepNextDie"))
    assert seen == [f"0: {c} {r} 0 1" for r in range(6) for c in range(6)]
    assert prober.query("StepNextDie") == "703: End of wafer."
    assert prober.query("ReadChuckIndex") == "0: 5 5"  # still on the last die
    assert prober.query("StepNextDie") == "703: End of wafer."
    assert prober.query("StepFirstDie") == "0: 0 0 0 1"


def test_wafer_map_lists_the_stepping_order(prober) -> None:  # type: ignore[no-untyped-def]
    reply = prober.query("ReadWaferMap").split()
    assert reply[:2] == ["0:", "36"]
    assert reply[2:] == [f"{c},{r}" for r in range(6) for c in range(6)]


def test_prober_705_when_stepping_in_contact(prober, tester) -> None:  # type: ignore[no-untyped-def]
    prober.query("StepNextDie 2 3")
    assert prober.query("MoveChuckContact") == "0:"
    assert prober.query("ReadChuckStatus") == "0: C"
    for cmd in ("StepFirstDie", "StepNextDie", "StepNextDie 4 4"):
        assert prober.query(cmd) == "705: Chuck in contact; separate first."
    assert prober.query("ReadChuckIndex") == "0: 2 3"
    assert tester.query("CONT?") == "1"
    assert prober.query("MoveChuckSeparation") == "0:"
    assert prober.query("MoveChuckSeparation") == "0:"  # idempotent
    assert prober.query("ReadChuckStatus") == "0: S"
    assert tester.query("CONT?") == "0"
    assert prober.query("StepNextDie") == "0: 3 3 0 1"


@pytest.mark.parametrize("die", ["6 0", "0 6", "-1 0", "99 99"])
def test_prober_704_die_not_on_map(prober, die: str) -> None:  # type: ignore[no-untyped-def]
    prober.query("StepNextDie 1 1")
    assert prober.query(f"StepNextDie {die}") == "704: Die not on wafer map."
    assert prober.query("ReadChuckIndex") == "0: 1 1"


def test_an_oversized_inference_block_is_160(contact, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(tester_model, "MAX_INFER_VECTORS", 4)
    x = np.zeros((5, 100), np.uint8)
    contact.write_binary_values("INF:CURR? ", x.ravel(), datatype="B")
    assert contact.read_raw() == b"\n"
    assert contact.query("SYST:ERR?") == '-160,"Block data error"'


def test_huge_integers_and_tab_separators(prober, contact) -> None:  # type: ignore[no-untyped-def]
    """A 5,000-digit index is an SCPI / prober error (int() of it raised a Python error),
    and a tab separates header and arguments as a space does (IEEE 488.2 white space)."""
    big = "9" * 5000
    assert contact.query(f"MEAS:CELL? {big},0") == ""
    assert contact.query("SYST:ERR?") == '-222,"Data out of range"'
    assert prober.query(f"StepNextDie {big} 0").startswith("2: Bad argument 999")
    zeros = "0" * 30 + "1"  # leading zeros are no digits: NR1 1
    assert float(contact.query(f"MEAS:CELL? {zeros},0")) > 0
    assert prober.query(f"StepNextDie {zeros} 0").startswith("705: Chuck in contact")
    assert float(contact.query("MEAS:CELL?\t0,0")) > 0
    assert contact.query("SYST:ERR?") == NO_ERROR


def test_prober_706_and_bad_arguments(prober) -> None:  # type: ignore[no-untyped-def]
    assert prober.query("StepNextDie") == "706: No die selected."
    assert prober.query("MoveChuckContact") == "706: No die selected."
    assert prober.query("ReadChuckIndex") == "706: No die selected."
    assert prober.query("ReadChuckStatus") == "0: S"
    assert prober.query("StepNextDie a b") == "2: Bad argument a b"
    assert prober.query("StepNextDie 1") == "2: Bad argument 1"
    assert prober.query("StepFirstDie now") == "2: Bad argument now"
    assert prober.query("StepNextDie --1 0") == "2: Bad argument --1 0"
    assert prober.query("Teleport") == "1: Unknown command Teleport"
    assert prober.query("stepfirstdie").startswith("1: Unknown command")


def test_tester_talks_to_the_die_in_contact(prober, tester, wafer) -> None:  # type: ignore[no-untyped-def]
    tester.write("OUTP ON")
    for col, row in [(4, 1), (0, 5)]:
        prober.query(f"StepNextDie {col} {row}")
        prober.query("MoveChuckContact")
        die = wafer.die_index(col, row)
        measured = read_array(tester)
        _, true_r = wafer.true_defects(die)
        assert np.allclose(measured, true_r, rtol=0.06)
        other = wafer.true_defects((die + 1) % 36)[1]
        assert not np.allclose(measured, other, rtol=0.06)
        prober.query("MoveChuckSeparation")


# ---- tester: array operations -------------------------------------------------------------
def test_measure_array_matches_the_model(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    measured = read_array(contact)
    _, true_r = wafer.true_defects(0)
    assert measured.dtype == np.float32
    rel = measured / true_r - 1
    assert abs(rel.std() - 0.01) < 0.001  # the configured read noise
    assert np.abs(rel).max() < 0.06


def test_program_and_read_back_over_visa(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    targets = np.random.default_rng(3).integers(0, 2, (100, 200)).astype(np.uint8)
    program_array(contact, targets)
    ok = healthy(wafer, 0)
    assert (wafer.true_states(0)[ok] == targets[ok]).all()
    read = classify(read_array(contact), wafer, 0)
    assert (read[ok] == wafer.true_states(0)[ok]).all()


def test_program_skip_value_leaves_cells(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    program_array(contact, np.zeros((100, 200), np.uint8))
    targets = np.full((100, 200), SKIP, np.uint8)
    targets[5] = 1
    program_array(contact, targets)
    states = wafer.true_states(0)
    assert (states[5] == 1).all() and (np.delete(states, 5, axis=0) == 0).all()


def test_cell_operations(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    ok = healthy(wafer, 0)
    row, col = map(int, np.argwhere(ok)[0])
    for state in (1, 0, 1):
        for _ in range(4):
            contact.write(f"PROG:CELL {row},{col},{state}")
        assert wafer.true_states(0)[row, col] == state
        r = float(contact.query(f"MEAS:CELL? {row},{col}"))
        assert classify(np.array(r), wafer, 0) == state
        assert r == pytest.approx(wafer.true_defects(0)[1][row, col], rel=0.06)
    assert contact.query("SYST:ERR?") == NO_ERROR


def test_program_cell_touches_one_cell(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    before = wafer.true_states(0)
    contact.write(f"PROG:CELL 7,9,{1 - before[7, 9]}")
    after = wafer.true_states(0)
    changed = np.argwhere(after != before)
    assert changed.tolist() in ([[7, 9]], [])  # one pulse: switched with p = 0.999 or not


def test_inference_currents(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    x = np.random.default_rng(0).integers(0, 2, (8, 100)).astype(np.uint8)
    x[0] = 0
    contact.write_binary_values("INF:CURR? ", x.ravel(), datatype="B")
    currents = contact.read_binary_values(datatype="f", container=np.array)
    assert currents.dtype == np.float32 and currents.size == 8 * 200
    currents = currents.reshape(8, 200)
    _, true_r = wafer.true_defects(0)
    expected = 0.1 * (x.astype(np.float64) @ (1.0 / true_r.astype(np.float64)))
    assert (currents[0] == 0).all()
    # each driven cell carries 1 % read noise, independently: a column's relative noise is
    # 1 % * sqrt(sum g^2) / sum g
    g = 1.0 / true_r.astype(np.float64)
    sigma_rel = 0.01 * np.sqrt(x[1:].astype(np.float64) @ g**2) / (x[1:] @ g)
    z = (currents[1:] / expected[1:] - 1) / sigma_rel
    assert np.abs(z).max() < 6
    assert 0.8 < z.std() < 1.2


def test_sense_averaging_reduces_noise_by_sqrt_n(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    _, true_r = wafer.true_defects(0)
    spread = {}
    for n in (1, 16):
        contact.write(f"SENS:AVER:COUN {n}")
        assert contact.query("SENS:AVER:COUN?") == str(n)
        contact.write("MEAS:ARR?")
        r = contact.read_binary_values(datatype="f", container=np.array).reshape(true_r.shape)
        spread[n] = float((r / true_r - 1).std())
    assert contact.query("SYST:ERR?") == NO_ERROR
    assert 3.0 < spread[1] / spread[16] < 5.0  # sqrt(16) = 4


def test_inference_follows_read_voltage_and_compliance(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    x = np.ones((1, 100), np.uint8)
    contact.write("SOUR:READ:VOLT 0.2")
    contact.write_binary_values("INF:CURR? ", x.ravel(), datatype="B")
    currents = contact.read_binary_values(datatype="f", container=np.array)
    g = (1.0 / wafer.true_defects(0)[1].astype(np.float64)).sum(axis=0)
    assert np.allclose(currents, 0.2 * g, rtol=0.06)
    contact.write("SENS:CURR:COMP 1e-5")
    contact.write_binary_values("INF:CURR? ", x.ravel(), datatype="B")
    clipped = contact.read_binary_values(datatype="f", container=np.array)
    assert np.allclose(clipped, 1e-5, rtol=1e-6)
    assert contact.query("SYST:ERR?") == NO_ERROR


def test_breakdown_over_visa_makes_a_short(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    ok = healthy(wafer, 0)
    row, col = map(int, np.argwhere(ok)[3])
    contact.write("SOUR:PULS:AMPL 1.6")
    contact.write(f"PROG:CELL {row},{col},1")
    assert contact.query("SYST:ERR?") == NO_ERROR  # the instrument allows it: physics punishes
    contact.write("SOUR:PULS:AMPL 0.9")
    for state in (0, 1):
        contact.write(f"PROG:CELL {row},{col},{state}")
    assert wafer.true_defects(0)[0][row, col] == Defect.SHORT
    assert float(contact.query(f"MEAS:CELL? {row},{col}")) < 1500
    assert wafer.max_pulse_v() == pytest.approx(1.6)


# ---- tester: preconditions and errors -----------------------------------------------------
@pytest.mark.parametrize(
    "query", ["MEAS:ARR?", "MEAS:CELL? 0,0", "INF:CURR? " + "#3100" + "\x01" * 100])
def test_no_contact_gives_241_and_an_empty_line(prober, tester, query: str) -> None:  # type: ignore[no-untyped-def]
    tester.write("OUTP ON")
    prober.query("StepFirstDie")  # selected but separated
    assert tester.query(query) == ""
    assert tester.query("SYST:ERR?") == '-241,"Hardware missing; no die in contact"'
    assert tester.query("SYST:ERR?") == NO_ERROR


def test_program_without_contact_changes_nothing(prober, tester, wafer) -> None:  # type: ignore[no-untyped-def]
    tester.write("OUTP ON")
    before = [wafer.true_states(i) for i in range(36)]
    tester.write_binary_values("PROG:ARR ", np.ones(N_CELLS, np.uint8), datatype="B")
    tester.write("PROG:CELL 0,0,1")
    assert drain_errors(tester) == [-241, -241]
    assert all((wafer.true_states(i) == before[i]).all() for i in range(36))
    assert wafer.pulses == []


def test_output_off_gives_221_and_changes_nothing(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    contact.write("OUTP OFF")
    before = wafer.true_states(0)
    assert contact.query("MEAS:ARR?") == ""
    assert contact.query("MEAS:CELL? 1,1") == ""
    contact.write_binary_values("PROG:ARR ", 1 - before.ravel(), datatype="B")
    contact.write("PROG:CELL 1,1,1")
    assert drain_errors(contact) == [-221] * 4
    assert (wafer.true_states(0) == before).all()
    assert wafer.pulses == []


@pytest.mark.parametrize("command", ["FOO", "FOO?", "MEAS:ARRAY?", "SOUR:READ:VOLTAGE 0.1",
                                     "SYST:ERR? 1", "SOUR:READ:VOLT? 3", "MEAS:ARR", "*IDN"])
def test_unknown_command_is_113(contact, command: str) -> None:  # type: ignore[no-untyped-def]
    if "?" in command:
        assert contact.query(command) == ""
    else:
        contact.write(command)
    assert contact.query("SYST:ERR?") == '-113,"Undefined header"'
    assert contact.query("SYST:ERR?") == NO_ERROR


@pytest.mark.parametrize("message", ["", "   ", "\r"])
def test_an_empty_message_is_ignored(contact, message: str) -> None:  # type: ignore[no-untyped-def]
    """IEEE 488.2 allows an empty program message: no error, no reply."""
    contact.write(message)
    assert contact.query("SYST:ERR?") == NO_ERROR


@pytest.mark.parametrize(("command", "detail"), [("SENS:AVER:COUN 1_6", "averages"),
                                                 ("MEAS:CELL? 1_0,2", "cell index"),
                                                 ("SOUR:READ:VOLT inf", "read voltage")])
def test_python_only_number_forms_are_data_type_errors(contact, command: str,  # type: ignore[no-untyped-def]
                                                       detail: str) -> None:
    """SCPI numbers have no underscores and no 'inf' (Python's int() and float() take them)."""
    before = contact.query("SENS:AVER:COUN?")
    if command.split()[0].endswith("?"):
        assert contact.query(command) == ""
    else:
        contact.write(command)
    assert contact.query("SYST:ERR?") == '-104,"Data type error"', detail
    assert contact.query("SENS:AVER:COUN?") == before


@pytest.mark.parametrize(
    ("setting", "default", "bad"),
    [("SOUR:READ:VOLT", "0.1", ["0.6", "0.001", "-0.1", "1e400"]),
     ("SOUR:PULS:AMPL", "0.9", ["2.5", "-0.1"]),
     ("SOUR:PULS:WIDT", "5e-08", ["1e-10", "0.01"]),
     ("SENS:CURR:COMP", "0.01", ["1e-7", "0.2"]),
     ("OUTP", "0", ["2", "-1"])],
)
def test_out_of_range_setting_is_222_and_unchanged(tester, setting: str, default: str,  # type: ignore[no-untyped-def]
                                                   bad: list[str]) -> None:
    for value in bad:
        tester.write(f"{setting} {value}")
        assert tester.query("SYST:ERR?") == '-222,"Data out of range"', value
        assert tester.query(f"{setting}?") == default


@pytest.mark.parametrize("command", ["SOUR:READ:VOLT abc", "SOUR:PULS:AMPL 1,2", "OUTP maybe",
                                     "OUTP 0.5", "MEAS:CELL? a,b", "PROG:CELL 0,0,x",
                                     "MEAS:CELL? 0,0,0"])
def test_bad_number_is_104(contact, command: str) -> None:  # type: ignore[no-untyped-def]
    if "?" in command:
        assert contact.query(command) == ""
    else:
        contact.write(command)
    assert drain_errors(contact) == [-104]
    assert contact.query("SOUR:READ:VOLT?") == "0.1"
    assert contact.query("OUTP?") == "1"


@pytest.mark.parametrize("command", ["MEAS:CELL?", "MEAS:CELL? 3", "PROG:CELL 1,2"])
def test_missing_cell_arguments_are_109(contact, command: str) -> None:  # type: ignore[no-untyped-def]
    if "?" in command:
        assert contact.query(command) == ""
    else:
        contact.write(command)
    assert drain_errors(contact) == [-109]


@pytest.mark.parametrize("setting", ["SOUR:READ:VOLT", "SOUR:PULS:AMPL", "OUTP"])
def test_setting_without_value_is_109(tester, setting: str) -> None:  # type: ignore[no-untyped-def]
    tester.write(setting)
    assert drain_errors(tester) == [-109]
    assert tester.query("OUTP?") == "0"


@pytest.mark.parametrize("query", ["ARR:SIZE? 1", "CONT? x", "MEAS:ARR? 0,0"])
def test_argument_after_a_bare_query_is_108(contact, query: str) -> None:  # type: ignore[no-untyped-def]
    assert contact.query(query) == ""
    assert drain_errors(contact) == [-108]


def test_headers_are_case_insensitive(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    assert contact.query("arr:size?") == "100,200"
    contact.write("sour:read:volt 0.2")
    assert contact.query("Sour:Read:Volt?") == "0.2"
    r = contact.query_binary_values("meas:arr?", datatype="f", container=np.array)
    assert r.size == N_CELLS
    assert contact.query("syst:err?") == NO_ERROR


@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_nan_setting_is_rejected(tester, value: str) -> None:  # type: ignore[no-untyped-def]
    tester.write(f"SOUR:READ:VOLT {value}")
    assert drain_errors(tester) in ([-222], [-104])
    assert tester.query("SOUR:READ:VOLT?") == "0.1"


@pytest.mark.parametrize("command", ["MEAS:CELL? 100,0", "MEAS:CELL? 0,200", "MEAS:CELL? -1,0",
                                     "PROG:CELL 0,0,2", "PROG:CELL 0,200,1"])
def test_cell_out_of_array_is_222(contact, wafer, command: str) -> None:  # type: ignore[no-untyped-def]
    before = wafer.true_states(0)
    if "?" in command:
        assert contact.query(command) == ""
    else:
        contact.write(command)
    assert drain_errors(contact) == [-222]
    assert (wafer.true_states(0) == before).all()


BAD_PROG_BLOCKS = [
    b"",  # no block at all
    b"#",  # header cut short
    b"#0",  # indefinite-length blocks are not accepted
    b"#5200",  # length field shorter than declared
    b"#15abc",  # declares 5 bytes, carries 3
    b"#x20000",
    b"#520000" + b"\x01" * 19_999,  # one byte short
    b"#520001" + b"\x01" * 20_001,  # the right header, one byte too many -> length mismatch
    block(b"\x01" * 19_999),  # a well-formed block with the wrong element count
    block(b"\x01" * 20_100),
    block(b"\x01" * 19_999 + b"\x03"),  # value outside 0, 1, 2
    block(b"\x01" * 20_000) + b"junk",
]


@pytest.mark.parametrize("payload", BAD_PROG_BLOCKS, ids=range(len(BAD_PROG_BLOCKS)))
def test_bad_program_block_is_160_and_state_unchanged(contact, wafer, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    before = wafer.true_states(0)
    defects_before = wafer.true_defects(0)[0]
    contact.write_raw(b"PROG:ARR " + payload + b"\n")
    assert drain_errors(contact) == [-160]
    assert (wafer.true_states(0) == before).all()
    assert (wafer.true_defects(0)[0] == defects_before).all()
    assert wafer.pulses == []


BAD_INF_BLOCKS = [
    b"", b"#10", block(b"\x01" * 99), block(b"\x01" * 150), block(b"\x02" * 100),
    b"#3100" + b"\x01" * 50,
]


@pytest.mark.parametrize("payload", BAD_INF_BLOCKS, ids=range(len(BAD_INF_BLOCKS)))
def test_bad_inference_block_is_160_with_empty_reply(contact, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    contact.write_raw(b"INF:CURR? " + payload + b"\n")
    assert contact.read_raw() == b"\n"
    assert drain_errors(contact) == [-160]


def test_rst_restores_defaults_and_keeps_the_array(contact, wafer) -> None:  # type: ignore[no-untyped-def]
    program_array(contact, np.ones((100, 200), np.uint8))
    states = wafer.true_states(0)
    for cmd in ("SOUR:READ:VOLT 0.2", "SOUR:PULS:AMPL 1.1", "SOUR:PULS:WIDT 1e-7",
                "SENS:CURR:COMP 0.001", "FOO"):
        contact.write(cmd)
    contact.write("*RST")
    assert contact.query("SOUR:READ:VOLT?") == "0.1"
    assert contact.query("SOUR:PULS:AMPL?") == "0.9"
    assert contact.query("SOUR:PULS:WIDT?") == "5e-08"
    assert contact.query("SENS:CURR:COMP?") == "0.01"
    assert contact.query("OUTP?") == "0"
    assert contact.query("*ESR?") == "0"
    assert contact.query("SYST:ERR?") == NO_ERROR
    assert (wafer.true_states(0) == states).all()
    assert contact.query("CONT?") == "1"  # *RST does not move the prober


def test_cls_clears_queue_and_esr(tester) -> None:  # type: ignore[no-untyped-def]
    tester.write("FOO")
    tester.write("SOUR:READ:VOLT 9")
    tester.write("*CLS")
    assert tester.query("SYST:ERR?") == NO_ERROR
    assert tester.query("*ESR?") == "0"


@pytest.mark.parametrize(
    ("command", "bit"),
    [("FOO", 32), ("SOUR:READ:VOLT abc", 32), ("MEAS:CELL?", 32), ("PROG:ARR #15abc", 32),
     ("CONT? 1", 32),
     ("SOUR:READ:VOLT 9", 16), ("MEAS:ARR?", 16), ("MEAS:CELL? 0,999", 16)],
)
def test_esr_bits(tester, command: str, bit: int) -> None:  # type: ignore[no-untyped-def]
    assert tester.query("*ESR?") == "0"
    if "?" in command:
        tester.query(command)
    else:
        tester.write(command)
    assert tester.query("*ESR?") == str(bit)
    assert tester.query("*ESR?") == "0"  # cleared on read
    assert error_code(tester) != 0  # reading *ESR? leaves the queue alone


def test_esr_accumulates_bits(tester) -> None:  # type: ignore[no-untyped-def]
    tester.write("FOO")
    tester.query("MEAS:ARR?")
    assert tester.query("*ESR?") == "48"


def test_error_queue_overflow_350(tester) -> None:  # type: ignore[no-untyped-def]
    for _ in range(40):
        tester.write("FOO")
    codes = drain_errors(tester)
    assert len(codes) == 32
    assert codes[:31] == [-113] * 31
    assert codes[31] == -350
    assert tester.query("SYST:ERR?") == NO_ERROR


def test_error_queue_overflow_sets_esr_bit(tester) -> None:  # type: ignore[no-untyped-def]
    for _ in range(40):
        tester.write("FOO")
    assert int(tester.query("*ESR?")) == 32 | 8


def test_error_queue_holds_exactly_32(tester) -> None:  # type: ignore[no-untyped-def]
    for _ in range(32):
        tester.write("FOO")
    assert drain_errors(tester) == [-113] * 32


def test_errors_come_out_oldest_first(contact) -> None:  # type: ignore[no-untyped-def]
    contact.write("FOO")
    contact.write("SOUR:READ:VOLT 9")
    contact.write("PROG:ARR #1")
    contact.write("OUTP OFF")
    contact.query("MEAS:ARR?")
    assert drain_errors(contact) == [-113, -222, -160, -221]


def test_boolean_spellings(tester) -> None:  # type: ignore[no-untyped-def]
    for value, expected in [("ON", "1"), ("OFF", "0"), ("1", "1"), ("0", "0"), ("on", "1")]:
        tester.write(f"OUTP {value}")
        assert tester.query("OUTP?") == expected
    assert tester.query("SYST:ERR?") == NO_ERROR


def test_settings_round_trip(tester) -> None:  # type: ignore[no-untyped-def]
    for setting, value in [("SOUR:READ:VOLT", "0.25"), ("SOUR:PULS:AMPL", "1.2"),
                           ("SOUR:PULS:WIDT", "1e-07"), ("SENS:CURR:COMP", "0.001")]:
        tester.write(f"{setting} {value}")
        assert float(tester.query(f"{setting}?")) == float(value)
    assert tester.query("SYST:ERR?") == NO_ERROR


# ---- sessions and independence ------------------------------------------------------------
def test_state_survives_closing_and_reopening(rm, contact, prober, wafer) -> None:  # type: ignore[no-untyped-def]
    targets = np.random.default_rng(1).integers(0, 2, (100, 200)).astype(np.uint8)
    program_array(contact, targets)
    contact.write("SOUR:READ:VOLT 0.2")
    contact.close()
    prober.close()
    prober = open_instrument(rm, PROBER_RESOURCE)
    tester = open_instrument(rm, TESTER_RESOURCE)
    assert prober.query("ReadChuckStatus") == "0: C"
    assert prober.query("ReadChuckIndex") == "0: 0 0"
    assert tester.query("SOUR:READ:VOLT?") == "0.2"
    ok = healthy(wafer, 0)
    read = classify(read_array(tester), wafer, 0)
    assert (read[ok] == targets[ok]).all()


def test_resource_managers_are_independent() -> None:
    rms = [simulated_hw.resource_manager(seed=s) for s in (0, 0, 1)]
    wafers = [rm.visalib.wafer for rm in rms]
    assert rms[0].visalib is not rms[1].visalib
    assert np.array_equal(wafers[0].dies[0].r_p, wafers[1].dies[0].r_p)  # same seed
    assert not np.array_equal(wafers[0].dies[0].r_p, wafers[2].dies[0].r_p)
    # Programming and stepping on one leaves the others alone.
    p0, t0 = open_instrument(rms[0], PROBER_RESOURCE), open_instrument(rms[0], TESTER_RESOURCE)
    p0.query("StepFirstDie")
    p0.query("MoveChuckContact")
    t0.write("OUTP ON")
    before = wafers[1].true_states(0)
    program_array(t0, 1 - before)
    assert not np.array_equal(wafers[0].true_states(0), before)
    assert np.array_equal(wafers[1].true_states(0), before)
    p1 = open_instrument(rms[1], PROBER_RESOURCE)
    assert p1.query("ReadChuckStatus") == "0: S"
    assert p1.query("ReadChuckIndex") == "706: No die selected."
    t1 = open_instrument(rms[1], TESTER_RESOURCE)
    assert t1.query("OUTP?") == "0"
    for rm in rms:
        rm.close()


def test_resource_manager_accepts_a_config() -> None:
    cfg = small_config(rows=3, cols=5)
    rm = simulated_hw.resource_manager(seed=2, config=cfg)
    assert rm.visalib.wafer.config == cfg and rm.visalib.wafer.seed == 2
    prober = open_instrument(rm, PROBER_RESOURCE)
    assert prober.query("ReadWaferMap") == "0: 4 0,0 1,0 0,1 1,1"
    rm.close()


# ---- faults -------------------------------------------------------------------------------
def faulty(**rates: float) -> pyvisa.ResourceManager:
    return simulated_hw.resource_manager(seed=0, config=small_config(faults=FaultConfig(**rates)))


def test_timeouts() -> None:
    rm = faulty(timeout_rate=1.0)
    tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=50)
    prober = open_instrument(rm, PROBER_RESOURCE, timeout_ms=50)
    for res, query in ((tester, "*IDN?"), (prober, "StepFirstDie")):
        with pytest.raises(VisaIOError) as info:
            res.query(query)
        assert info.value.error_code == constants.StatusCode.error_timeout
    # The command ran, only its reply was lost: the prober did step.
    assert rm.visalib.prober.position == 0
    assert rm.visalib.devices[TESTER_RESOURCE].faults.counts["timeout"] >= 2
    rm.close()


class _LateOnce:
    """Makes the first message matching `header` a `late` fault, nothing else."""

    def __init__(self, header: bytes) -> None:
        self.header, self.done = header, False

    def draw(self, message: bytes, applicable: object = ()) -> str | None:
        if self.done or not message.startswith(self.header):
            return None
        self.done = True
        return "late"


@pytest.mark.parametrize("clear", [False, True])
def test_a_late_reply_is_read_by_the_next_query_unless_the_device_is_cleared(
        clear: bool) -> None:
    rm = faulty()
    tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=50)
    rm.visalib.devices[TESTER_RESOURCE].faults = _LateOnce(b"SOUR:READ:VOLT?")
    with pytest.raises(VisaIOError) as info:
        tester.query("SOUR:READ:VOLT?")
    assert info.value.error_code == constants.StatusCode.error_timeout
    if clear:
        tester.clear()  # viClear: the late reply is discarded
    reply = tester.query("SOUR:PULS:AMPL?")
    assert reply == ("0.9" if clear else "0.1")  # uncleared: the read voltage's late reply
    rm.close()


def test_late_faults_come_from_the_seeded_stream() -> None:
    rm = faulty(late_rate=1.0)
    tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=30)
    with pytest.raises(VisaIOError):
        tester.query("*IDN?")
    assert rm.visalib.devices[TESTER_RESOURCE].faults.counts["late"] == 1
    rm.close()


def test_dropped_connection_until_reopened() -> None:
    rm = faulty(drop_rate=0.3)
    tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=200)
    for _ in range(100):
        try:
            assert tester.query("*IDN?").startswith("mtjlab")
        except VisaIOError as err:
            assert err.error_code == constants.StatusCode.error_connection_lost
            break
    else:
        pytest.fail("no drop in 100 queries at drop_rate=0.3")
    for _ in range(5):  # every operation fails until the resource is reopened
        with pytest.raises(VisaIOError) as info:
            tester.query("*IDN?")
        assert info.value.error_code == constants.StatusCode.error_connection_lost
    tester.close()
    for _ in range(20):  # a fresh session works again (each query may drop anew)
        tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=200)
        try:
            assert tester.query("*IDN?").startswith("mtjlab")
            break
        except VisaIOError:
            tester.close()
    else:
        pytest.fail("reopening never recovered the session")
    rm.close()


def test_spurious_scpi_errors_are_300() -> None:
    rm = faulty(scpi_error_rate=1.0)
    tester = open_instrument(rm, TESTER_RESOURCE)
    assert tester.query("*IDN?") == ""
    rm.visalib.devices[TESTER_RESOURCE].faults = None
    assert tester.query("SYST:ERR?") == '-300,"Device-specific error"'
    assert tester.query("*ESR?") == "8"
    rm.close()


def test_garbled_replies_differ() -> None:
    rm = faulty(garble_rate=1.0)
    tester = open_instrument(rm, TESTER_RESOURCE)
    tester.read_termination = None
    replies = []
    for _ in range(20):
        tester.write("*IDN?")
        replies.append(tester.read_raw())
    assert all(r != b"mtjlab,XBAR-4x6-SIM,XB-0001,1.0\n" for r in replies)
    rm.close()


def test_prober_fault_710() -> None:
    rm = faulty(prober_error_rate=1.0)
    prober = open_instrument(rm, PROBER_RESOURCE)
    tester = open_instrument(rm, TESTER_RESOURCE)
    assert prober.query("StepFirstDie") == "710: Prober fault."
    assert rm.visalib.prober.position is None  # refused, not executed
    # A prober fault is the prober's kind only: the tester is not affected.
    assert tester.query("*IDN?").startswith("mtjlab")
    assert rm.visalib.devices[PROBER_RESOURCE].faults.counts["prober_error"] == 1
    rm.close()


def fault_trace(fault_seed: int) -> list[str]:
    rm = simulated_hw.resource_manager(seed=0, config=small_config(
        faults=FaultConfig(timeout_rate=0.2, garble_rate=0.2, scpi_error_rate=0.1,
                           seed=fault_seed)))
    tester = open_instrument(rm, TESTER_RESOURCE, timeout_ms=30)
    tester.read_termination = None
    trace = []
    for _ in range(30):
        tester.write("*IDN?")
        try:
            trace.append(tester.read_raw().decode("latin-1"))
        except VisaIOError:
            trace.append("timeout")
    rm.close()
    return trace


def test_fault_draws_are_seeded() -> None:
    a, b, c = fault_trace(1), fault_trace(1), fault_trace(2)
    assert a == b
    assert a != c
    assert "timeout" in a and "mtjlab,XBAR-4x6-SIM,XB-0001,1.0\n" in a


def test_fault_rates_adding_above_one_are_rejected() -> None:
    with pytest.raises(ValueError, match="more than 1"):
        simulated_hw.resource_manager(config=WaferConfig(
            faults=FaultConfig(timeout_rate=0.6, drop_rate=0.6)))
