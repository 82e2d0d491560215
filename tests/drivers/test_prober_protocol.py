"""VeloxProber against recorded exchanges (docs/scpi.md, probe station)."""

from __future__ import annotations

import pickle

import pytest
from pyvisa import constants
from pyvisa.errors import VisaIOError

from drivers.errors import (
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    ProberError,
    ReplyError,
)
from drivers.prober import DieIndex, Prober, VeloxProber, parse_velox_reply
from drivers.protocol import TIMEOUT, expected_protocol


def test_identity_and_version() -> None:
    exchanges = [("*IDN?", "FormFactor,Velox-SIM,PS-0001,3.6"),
                 ("ReportSoftwareVersion", "0: 3.6.0")]
    with expected_protocol(VeloxProber, exchanges) as prober:
        assert prober.identity() == "FormFactor,Velox-SIM,PS-0001,3.6"
        assert prober.software_version() == "3.6.0"


@pytest.mark.parametrize(("reply", "error", "fragment"), [
    ("710: Prober fault.", ProberError, "710"),
    ("0: 3.6.0", ReplyError, "not an identity"),
    ("", ReplyError, "no identity: is an instrument there?"),
])
def test_identity_refuses_a_status_or_blank_reply(reply: str, error: type[Exception],
                                                  fragment: str) -> None:
    with expected_protocol(VeloxProber, [("*IDN?", reply)]) as prober, pytest.raises(
            error, match=fragment):
        prober.identity()


def test_stepping_until_end_of_wafer() -> None:
    exchanges = [("StepFirstDie", "0: 2 0 0 1"), ("StepNextDie", "0: 3 0 0 1"),
                 ("StepNextDie", "703: End of wafer.")]
    with expected_protocol(VeloxProber, exchanges) as prober:
        assert prober.first_die() == DieIndex(2, 0)
        assert prober.next_die() == DieIndex(col=3, row=0)
        assert prober.next_die() is None


def test_goto_contact_separate_position_status() -> None:
    exchanges = [("StepNextDie 4 5", "0: 4 5 0 1"), ("MoveChuckContact", "0:"),
                 ("ReadChuckStatus", "0: C"), ("ReadChuckIndex", "0: 4 5"),
                 ("MoveChuckSeparation", "0:"), ("ReadChuckStatus", "0: S")]
    with expected_protocol(VeloxProber, exchanges) as prober:
        assert prober.goto_die(DieIndex(4, 5)) == (4, 5)
        prober.contact()
        assert prober.in_contact() is True
        assert prober.position() == DieIndex(4, 5)
        prober.separate()
        assert prober.in_contact() is False


def test_goto_accepts_plain_tuple_and_rejects_bools() -> None:
    with expected_protocol(VeloxProber, [("StepNextDie 1 2", "0: 1 2 0 1")]) as prober:
        assert prober.goto_die((1, 2)) == DieIndex(1, 2)  # type: ignore[arg-type]
        for bad in (DieIndex(True, 2), (2.9, 0), ("3", "1"), (10**5000, 0)):  # int(2.9): die 2
            with pytest.raises(TypeError, match="two integers"):
                prober.goto_die(bad)  # type: ignore[arg-type]


def test_wafer_map() -> None:
    with expected_protocol(VeloxProber, [("ReadWaferMap", "0: 3 2,0 3,0 1,1")]) as prober:
        assert prober.wafer_map() == [DieIndex(2, 0), DieIndex(3, 0), DieIndex(1, 1)]


@pytest.mark.parametrize("reply", ["0: 3 2,0 3,0", "0: x 2,0", "0: 1 2,0,7", "0: 1 2;0"])
def test_bad_wafer_map_is_reply_error(reply: str) -> None:
    with expected_protocol(VeloxProber, [("ReadWaferMap", reply)]) as prober, \
            pytest.raises(ReplyError, match="ReadWaferMap"):
        prober.wafer_map()


@pytest.mark.parametrize(
    ("command", "call", "code", "text"),
    [
        ("StepFirstDie", lambda p: p.first_die(), 705, "Chuck in contact; separate first."),
        ("StepNextDie", lambda p: p.next_die(), 706, "No die selected."),
        ("StepNextDie 9 9", lambda p: p.goto_die(DieIndex(9, 9)), 704,
         "Die not on wafer map."),
        ("MoveChuckContact", lambda p: p.contact(), 706, "No die selected."),
        ("ReadChuckIndex", lambda p: p.position(), 706, "No die selected."),
        ("MoveChuckSeparation", lambda p: p.separate(), 710, "Prober fault."),
    ],
)
def test_error_codes_raise_prober_error(command: str, call, code: int, text: str) -> None:
    with expected_protocol(VeloxProber, [(command, f"{code}: {text}")]) as prober, \
            pytest.raises(ProberError) as info:
        call(prober)
    err = info.value
    assert (err.code, err.message, err.command) == (code, text, command)
    assert str(code) in str(err) and text in str(err) and command in str(err)
    assert isinstance(err, InstrumentError)


def test_end_of_wafer_outside_stepping_is_an_error() -> None:
    with expected_protocol(VeloxProber, [("ReadChuckIndex", "703: End of wafer.")]) as prober, \
            pytest.raises(ProberError) as info:
        prober.position()
    assert info.value.code == 703


def test_unknown_command_reply() -> None:
    with expected_protocol(VeloxProber, [("ReportSoftwareVersion", "1: Unknown command X")]) as p, \
            pytest.raises(ProberError, match="Unknown command"):
        p.software_version()


@pytest.mark.parametrize("reply", ["", "garbage", "OK 2 0", "0: 2"])
def test_malformed_step_reply_is_reply_error(reply: str) -> None:
    with expected_protocol(VeloxProber, [("StepFirstDie", reply)]) as prober, \
            pytest.raises(ReplyError, match="StepFirstDie"):
        prober.first_die()


def test_bad_chuck_status() -> None:
    with expected_protocol(VeloxProber, [("ReadChuckStatus", "0: X")]) as prober, \
            pytest.raises(ReplyError):
        prober.in_contact()


def test_parse_velox_reply() -> None:
    assert parse_velox_reply("0: 2 0 0 1", "c") == "2 0 0 1"
    assert parse_velox_reply("0:", "c") == ""
    assert parse_velox_reply("703: End of wafer.", "c") is None
    with pytest.raises(ProberError) as info:
        parse_velox_reply("2: Bad argument x", "StepNextDie x", "p1")
    assert (info.value.code, info.value.instrument) == (2, "p1")


def test_timeout_and_lost_connection() -> None:
    lost = VisaIOError(constants.StatusCode.error_connection_lost)
    with expected_protocol(VeloxProber, [("StepNextDie", TIMEOUT), ("StepNextDie", lost)]) as p:
        with pytest.raises(InstrumentTimeout, match="StepNextDie"):
            p.next_die()
        with pytest.raises(ConnectionLost, match="StepNextDie"):
            p.next_die()


def test_close_and_context_manager() -> None:
    with expected_protocol(VeloxProber, []) as prober:
        with prober:
            assert isinstance(prober, Prober)
        assert prober._transport.resource.closed  # type: ignore[attr-defined]


def test_prober_interface_is_abstract() -> None:
    with pytest.raises(TypeError):
        Prober()  # type: ignore[abstract]


def test_errors_pickle() -> None:
    err = ProberError(705, "Chuck in contact; separate first.", "StepFirstDie")
    again = pickle.loads(pickle.dumps(err))
    assert (again.code, again.message, again.command, str(again)) == (
        err.code, err.message, err.command, str(err))
