"""CrossbarTester against recorded exchanges (docs/scpi.md, crossbar tester)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import pytest

from drivers.blocks import encode_array
from drivers.crossbar import AP, KEEP, CrossbarTester, P
from drivers.errors import InstrumentError, LimitError, ReplyError
from drivers.protocol import (
    NO_ERROR,
    Exchange,
    ProtocolResource,
    checked,
    expected_protocol,
    failed,
)

ROWS, COLS = 2, 3
CONNECT = checked("ARR:SIZE?", f"{ROWS},{COLS}")


def connected(*exchanges: list[Exchange]) -> AbstractContextManager[CrossbarTester]:
    """expected_protocol for a 2 x 3 tester: the connect exchange, then `exchanges`."""
    return expected_protocol(CrossbarTester, [*CONNECT, *(e for ex in exchanges for e in ex)])


def offline() -> tuple[CrossbarTester, ProtocolResource]:
    """A connected tester whose resource expects nothing more."""
    resource = ProtocolResource(CONNECT)
    return CrossbarTester(resource), resource


def test_connect_reads_and_caches_array_size() -> None:
    with connected() as xbar:
        assert xbar.array_size == (ROWS, COLS)
        assert xbar.shape == (ROWS, COLS)
        assert (xbar.rows, xbar.cols) == (ROWS, COLS)


def test_confirm_shape_reads_the_size_again() -> None:
    with connected(checked("ARR:SIZE?", f"{ROWS},{COLS}")) as xbar:
        assert xbar.confirm_shape() == (ROWS, COLS)


@pytest.mark.parametrize(("reply", "fragment"), [("2,4", r"disagrees with \(2, 3\)"),
                                                 ("2;3", "not 'rows,cols'"),
                                                 ("0,3", "not 'rows,cols'")])
def test_confirm_shape_refuses_a_changed_or_garbled_size(reply: str, fragment: str) -> None:
    with connected(checked("ARR:SIZE?", reply)) as xbar, pytest.raises(ReplyError,
                                                                        match=fragment):
        xbar.confirm_shape()


def test_blank_identity_is_refused() -> None:
    with connected(checked("*IDN?", "")) as xbar, pytest.raises(ReplyError,
                                                                 match="no identity"):
        xbar.identity()


def test_identity_and_reset() -> None:
    with connected(checked("*IDN?", "mtjlab,XBAR-2x3-SIM,XB-0001,1.0"), checked("*RST")) as xbar:
        assert xbar.identity().startswith("mtjlab,XBAR-2x3")
        xbar.reset()


def test_settings_get_and_set() -> None:
    with connected(
        checked("SOUR:READ:VOLT?", "0.1"), checked("SOUR:READ:VOLT 0.2"),
        checked("SOUR:PULS:AMPL?", "0.9"), checked("SOUR:PULS:AMPL 1.2"),
        checked("SOUR:PULS:WIDT?", "5e-08"), checked("SOUR:PULS:WIDT 1e-07"),
        checked("SENS:CURR:COMP?", "0.01"), checked("SENS:CURR:COMP 0.001"),
        checked("OUTP?", "0"), checked("OUTP ON"), checked("OUTP OFF"),
        checked("CONT?", "1"),
    ) as xbar:
        assert xbar.read_voltage_v == 0.1
        xbar.read_voltage_v = 0.2
        assert xbar.pulse_amplitude_v == 0.9
        xbar.pulse_amplitude_v = 1.2
        assert xbar.pulse_width_s == 5e-8
        xbar.pulse_width_s = 1e-7
        assert xbar.compliance_a == 0.01
        xbar.compliance_a = 1e-3
        assert xbar.output_enabled is False
        xbar.output_enabled = True
        xbar.output_enabled = False
        assert xbar.in_contact is True


def test_settings_are_sent_exactly_as_given() -> None:
    """No rounding on the wire: 1.1999999 V rounded to 6 digits is 1.2 V, which a guard whose
    limit is 1.1999999 V refuses (a valid station file failed mid-die)."""
    guarded: list[tuple[str, float]] = []
    with expected_protocol(
        CrossbarTester, [*CONNECT, *checked("SOUR:PULS:AMPL 1.1999999"),
                         *checked("SOUR:PULS:WIDT 1.2345678e-07")],
        guard=lambda setting, value: guarded.append((setting, value)),
    ) as xbar:
        xbar.pulse_amplitude_v = 1.1999999
        xbar.pulse_width_s = 1.2345678e-7
    assert guarded == [("pulse_amplitude_v", 1.1999999), ("pulse_width_s", 1.2345678e-07)]


@pytest.mark.parametrize(
    ("name", "value", "allowed", "units"),
    [
        ("read_voltage_v", 0.6, "0.01 to 0.5", "V"),
        ("read_voltage_v", 0.001, "0.01 to 0.5", "V"),
        ("pulse_amplitude_v", 2.5, "0 to 2", "V"),
        ("pulse_amplitude_v", -0.1, "0 to 2", "V"),
        ("pulse_width_s", 1e-2, "1e-09 to 0.001", "s"),
        ("pulse_width_s", 1e-10, "1e-09 to 0.001", "s"),
        ("compliance_a", 0.5, "1e-06 to 0.1", "A"),
        ("output_enabled", "maybe", "True or False", ""),
    ],
)
def test_out_of_range_setting_sends_nothing(name: str, value: object, allowed: str,
                                            units: str) -> None:
    xbar, resource = offline()
    sent_before = list(resource.sent)
    with pytest.raises(LimitError) as info:
        setattr(xbar, name, value)
    assert (info.value.name, info.value.allowed, info.value.units) == (name, allowed, units)
    assert resource.sent == sent_before
    resource.assert_consumed()


def test_instrument_rejecting_a_setting() -> None:
    with connected(failed("SOUR:READ:VOLT 0.3", -222, "Data out of range")) as xbar, \
            pytest.raises(InstrumentError) as info:
        xbar.read_voltage_v = 0.3
    assert (info.value.code, info.value.message) == (-222, "Data out of range")
    assert info.value.command == "SOUR:READ:VOLT 0.3"


def test_snapshot_lists_values_units_and_ranges() -> None:
    with connected(
        checked("SOUR:READ:VOLT?", "0.1"), checked("SOUR:PULS:AMPL?", "0.9"),
        checked("SOUR:PULS:WIDT?", "5e-08"), checked("SENS:CURR:COMP?", "0.01"),
        checked("SENS:AVER:COUN?", "16"), checked("OUTP?", "1"), checked("CONT?", "0"),
    ) as xbar:
        snap = xbar.snapshot()
    assert snap["averages"]["value"] == 16 and snap["averages"]["allowed"] == "1 to 1024"
    assert snap["read_voltage_v"] == {"value": 0.1, "doc": "read voltage", "units": "V",
                                      "allowed": "0.01 to 0.5", "settable": True}
    assert snap["array_size"]["value"] == (ROWS, COLS)
    assert snap["output_enabled"]["value"] is True
    assert snap["in_contact"]["value"] is False


def test_read_array_is_one_query() -> None:
    ohms = np.arange(ROWS * COLS, dtype=np.float32) * 1000 + 6000
    with connected(checked("MEAS:ARR?", encode_array(ohms))) as xbar:
        got = xbar.read_array()
    assert got.shape == (ROWS, COLS)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ohms.reshape(ROWS, COLS))


def test_read_array_without_contact_raises_instrument_error() -> None:
    with connected(failed("MEAS:ARR?", -241, "Hardware missing; no die in contact", "")) as xbar, \
            pytest.raises(InstrumentError, match="no die in contact") as info:
        xbar.read_array()
    assert info.value.code == -241
    assert info.value.command == "MEAS:ARR?"


def test_read_array_wrong_element_count() -> None:
    with connected(checked("MEAS:ARR?", encode_array(np.zeros(5, np.float32)))) as xbar, \
            pytest.raises(ValueError, match="expected 6"):
        xbar.read_array()


def test_program_array_is_one_command_with_exact_bytes() -> None:
    targets = np.array([[P, AP, KEEP], [AP, P, KEEP]])
    with connected([(b"PROG:ARR #16\x00\x01\x02\x01\x00\x02", None)]) as xbar:
        xbar.program_array(targets)


def test_program_array_checked_at_once_on_request() -> None:
    targets = np.array([[P, AP, KEEP], [AP, P, KEEP]])
    with connected(checked(b"PROG:ARR #16\x00\x01\x02\x01\x00\x02")) as xbar:
        xbar.program_array(targets, check=True)


def test_program_array_error_surfaces_at_the_next_check_naming_it() -> None:
    targets = np.zeros((ROWS, COLS), np.uint8)
    exchanges = [(b"PROG:ARR #16" + bytes(6), None),
                 *failed("MEAS:ARR?", -241, "Hardware missing; no die in contact", "")]
    with connected(exchanges) as xbar, pytest.raises(InstrumentError) as info:
        xbar.program_array(targets)
        xbar.read_array()
    assert "PROG:ARR" in str(info.value) and info.value.code == -241


def test_program_array_accepts_bool_targets() -> None:
    targets = np.array([[True, False, True], [False, False, False]])
    with connected([(b"PROG:ARR #16\x01\x00\x01\x00\x00\x00", None)]) as xbar:
        xbar.program_array(targets)


@pytest.mark.parametrize(
    ("targets", "fragment"),
    [
        (np.zeros((3, 2), np.uint8), r"shape \(2, 3\), got \(3, 2\)"),
        (np.zeros(6, np.uint8), r"shape \(2, 3\), got \(6,\)"),
        (np.full((2, 3), 3), r"values must be in \(0, 1, 2\), got \[3\]"),
        (np.full((2, 3), -1), r"got \[-1\]"),
        (np.zeros((2, 3)), "integer or bool array, got dtype float64"),
    ],
)
def test_program_array_validates_before_sending(targets: np.ndarray, fragment: str) -> None:
    xbar, resource = offline()
    with pytest.raises(ValueError, match=fragment):
        xbar.program_array(targets)
    resource.assert_consumed()


def test_infer_sends_inputs_block_and_returns_currents() -> None:
    inputs = np.array([[1, 0], [1, 1]], np.uint8)
    currents = np.array([1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5], np.float32)
    with connected(checked(b"INF:CURR? #14\x01\x00\x01\x01", encode_array(currents))) as xbar:
        got = xbar.infer(inputs)
    assert got.shape == (2, COLS)
    np.testing.assert_allclose(got, currents.reshape(2, COLS))


@pytest.mark.parametrize(
    ("inputs", "fragment"),
    [
        (np.zeros((1, 3), np.uint8), r"shape \(n >= 1, 2\), got \(1, 3\)"),
        (np.zeros(2, np.uint8), r"got \(2,\)"),
        (np.zeros((0, 2), np.uint8), r"got \(0, 2\)"),
        (np.full((1, 2), 2), r"values must be in \(0, 1\)"),
    ],
)
def test_infer_validates_before_sending(inputs: np.ndarray, fragment: str) -> None:
    xbar, resource = offline()
    with pytest.raises(ValueError, match=fragment):
        xbar.infer(inputs)
    resource.assert_consumed()


def test_infer_with_output_off() -> None:
    with connected(failed(b"INF:CURR? #12\x01\x01", -221, "Settings conflict; output off",
                       "")) as xbar, pytest.raises(InstrumentError, match="output off"):
        xbar.infer(np.ones((1, 2), np.uint8))


def test_cell_operations() -> None:
    with connected(checked("MEAS:CELL? 1,2", "12000.5"), checked("PROG:CELL 0,1,1")) as xbar:
        assert xbar.read_cell(1, 2) == 12000.5
        xbar.write_cell(0, 1, AP)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda x: x.read_cell(2, 0), "row"),
        (lambda x: x.read_cell(-1, 0), "row"),
        (lambda x: x.read_cell(0, 3), "col"),
        (lambda x: x.read_cell(0.5, 0), "row"),
        (lambda x: x.write_cell(0, 0, 2), "state"),
        (lambda x: x.write_cell(0, 0, True), "state"),
        (lambda x: x.write_cell(5, 0, 1), "row"),
    ],
)
def test_cell_arguments_validated_before_sending(call, name: str) -> None:
    xbar, resource = offline()
    with pytest.raises(LimitError) as info:
        call(xbar)
    assert info.value.name == name
    resource.assert_consumed()


def test_numpy_integers_are_valid_cell_indices() -> None:
    with connected(checked("PROG:CELL 1,2,0", None)) as xbar:
        xbar.write_cell(np.int64(1), np.uint8(2), np.int32(0))  # type: ignore[arg-type]


def test_error_on_cell_write_names_command() -> None:
    rejected = failed("PROG:CELL 0,0,1", -241, "Hardware missing; no die in contact")
    with connected(rejected) as xbar, pytest.raises(InstrumentError, match="PROG:CELL 0,0,1"):
        xbar.write_cell(0, 0, 1)


def test_bulk_cell_writes_with_one_error_check() -> None:
    commands = [("PROG:CELL 0,0,1", None), ("PROG:CELL 0,1,1", None), ("PROG:CELL 0,2,1", None),
                ("SYST:ERR?", NO_ERROR)]
    with connected(commands, checked("MEAS:CELL? 0,0", "11000")) as xbar:
        with xbar.deferred_error_check():
            for c in range(COLS):
                xbar.write_cell(0, c, AP)
        assert xbar.read_cell(0, 0) == 11000  # the batch's check happened before this
