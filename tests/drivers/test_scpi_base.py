"""SCPIInstrument: error-queue checks, blocks, timeouts, lost connections."""

from __future__ import annotations

import numpy as np
import pytest
from pyvisa import constants
from pyvisa.errors import InvalidSession, VisaIOError

from drivers.blocks import encode_array
from drivers.errors import (
    BlockError,
    CommunicationError,
    ConnectionLost,
    InstrumentError,
    InstrumentTimeout,
    ReplyError,
)
from drivers.protocol import (
    NO_ERROR,
    TIMEOUT,
    ProtocolResource,
    checked,
    expected_protocol,
    failed,
)
from drivers.scpi import SCPIInstrument, parse_error_reply
from drivers.transport import CHUNK_SIZE, map_io_error


def test_write_and_query_check_the_error_queue() -> None:
    with expected_protocol(SCPIInstrument, [*checked("A 1"), *checked("B?", "42")]) as inst:
        inst.write("A 1")
        assert inst.query("B?") == "42"


def test_instrument_error_names_command_and_text() -> None:
    with expected_protocol(SCPIInstrument, failed("VOLT 9", -222, "Data out of range"),
                           name="box") as inst, pytest.raises(InstrumentError) as info:
        inst.write("VOLT 9")
    err = info.value
    assert (err.instrument, err.command, err.code, err.message) == (
        "box", "VOLT 9", -222, "Data out of range")
    assert "box" in str(err) and "VOLT 9" in str(err) and "Data out of range" in str(err)
    assert "-222" in str(err)


def test_error_queue_is_drained_and_all_errors_reported() -> None:
    exchanges = [("X", None), ("SYST:ERR?", '-113,"Undefined header"'),
                 ("SYST:ERR?", '-350,"Queue overflow"'), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(SCPIInstrument, exchanges) as inst, \
            pytest.raises(InstrumentError) as info:
        inst.write("X")
    assert info.value.errors == ((-113, "Undefined header"), (-350, "Queue overflow"))
    assert "Queue overflow" in str(info.value)


def test_unchecked_commands_are_named_by_the_next_check() -> None:
    exchanges = [("A 1", None), ("B 2", None), *failed("C 3", -222, "Data out of range")]
    with expected_protocol(SCPIInstrument, exchanges) as inst, \
            pytest.raises(InstrumentError) as info:
        inst.write("A 1", check=False)
        inst.write("B 2", check=False)
        inst.write("C 3")
    assert info.value.command == "A 1; B 2; C 3"


def test_check_disabled_by_default_then_explicit_check() -> None:
    exchanges = [("A", None), ("B?", "1"), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(SCPIInstrument, exchanges, check_errors=False) as inst:
        inst.write("A")
        assert inst.query("B?") == "1"
        inst.check_errors()


def test_deferred_error_check_reads_the_queue_once() -> None:
    exchanges = [("A 1", None), ("A 2", None), ("A 3", None), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(SCPIInstrument, exchanges) as inst, inst.deferred_error_check():
        for i in (1, 2, 3):
            inst.write(f"A {i}")


def test_deferred_error_check_raises_on_exit_naming_the_batch() -> None:
    exchanges = [("A 1", None), ("A 2", None), ("SYST:ERR?", '-222,"Data out of range"'),
                 ("SYST:ERR?", NO_ERROR)]
    with (
        expected_protocol(SCPIInstrument, exchanges) as inst,
        pytest.raises(InstrumentError, match="A 1; A 2") as info,
        inst.deferred_error_check(),
        inst.deferred_error_check(),  # nested: still one check, on the outer exit
    ):
        inst.write("A 1")
        inst.write("A 2")
    assert info.value.code == -222


def test_deferred_error_check_prefers_instrument_error_over_body_exception() -> None:
    exchanges = [("A 1", None), ("SYST:ERR?", '-222,"Data out of range"'),
                 ("SYST:ERR?", NO_ERROR)]
    with (
        expected_protocol(SCPIInstrument, exchanges) as inst,
        pytest.raises(InstrumentError) as info,
        inst.deferred_error_check(),
    ):
        inst.write("A 1")
        raise RuntimeError("caller failed")
    assert isinstance(info.value.__cause__, RuntimeError)


def test_deferred_error_check_reraises_body_exception_when_queue_empty() -> None:
    exchanges = [("A 1", None), ("SYST:ERR?", NO_ERROR)]
    with (
        expected_protocol(SCPIInstrument, exchanges) as inst,
        pytest.raises(RuntimeError),
        inst.deferred_error_check(),
    ):
        inst.write("A 1")
        raise RuntimeError("caller failed")


def test_empty_reply_of_failed_query_becomes_instrument_error() -> None:
    with expected_protocol(SCPIInstrument, failed("MEAS?", -241, "Hardware missing", "")) as inst, \
            pytest.raises(InstrumentError, match="Hardware missing"):
        inst.query("MEAS?")


def test_silent_query_with_queued_error_becomes_instrument_error() -> None:
    exchanges = failed("MEAS?", -241, "Hardware missing", TIMEOUT)
    with expected_protocol(SCPIInstrument, exchanges) as inst, \
            pytest.raises(InstrumentError) as info:
        inst.query("MEAS?")
    assert isinstance(info.value.__cause__, InstrumentTimeout)


def test_silent_query_without_error_is_a_timeout() -> None:
    """...and the instrument is cleared first, so that a reply arriving late is never read
    as the answer to the error query or to the next command."""
    exchanges = [("MEAS?", TIMEOUT), ("SYST:ERR?", NO_ERROR)]
    with expected_protocol(SCPIInstrument, exchanges, name="box") as inst:
        with pytest.raises(InstrumentTimeout, match=r"box.*MEAS"):
            inst.query("MEAS?")
        assert inst._transport.resource.clears == 1


def test_timeout_while_asking_why_raises_the_original_timeout() -> None:
    exchanges = [("MEAS?", TIMEOUT), ("SYST:ERR?", TIMEOUT)]
    with expected_protocol(SCPIInstrument, exchanges) as inst, \
            pytest.raises(InstrumentTimeout, match="MEAS"):
        inst.query("MEAS?")


@pytest.mark.parametrize(
    "exc",
    [VisaIOError(constants.StatusCode.error_connection_lost),
     VisaIOError(constants.StatusCode.error_invalid_object),
     ConnectionResetError("peer reset"),
     InvalidSession()],
)
def test_lost_connection(exc: BaseException) -> None:
    with expected_protocol(SCPIInstrument, [("B?", exc)]) as inst, \
            pytest.raises(ConnectionLost, match="B\\?") as info:
        inst.query("B?")
    assert info.value.__cause__ is exc


def test_map_io_error() -> None:
    assert isinstance(map_io_error("x", "c", TimeoutError()), InstrumentTimeout)
    other = map_io_error("x", "c", VisaIOError(constants.StatusCode.error_resource_busy))
    assert type(other) is CommunicationError


def test_malformed_error_reply_is_reply_error() -> None:
    with expected_protocol(SCPIInstrument, [("A", None), ("SYST:ERR?", "garbage")]) as inst, \
            pytest.raises(ReplyError, match="SYST:ERR"):
        inst.write("A")


def test_parse_error_reply() -> None:
    assert parse_error_reply('0,"No error"') == (0, "No error")
    assert parse_error_reply('-222,"Data out of range"\r') == (-222, "Data out of range")
    assert parse_error_reply("+5, plain") == (5, "plain")
    with pytest.raises(ValueError):
        parse_error_reply("No error")


def test_block_write_and_query() -> None:
    sent = np.array([[0, 1], [2, 1]], np.uint8)
    back = np.array([1.0, 2.5, -3.0], np.float32)
    exchanges = [*checked(b"PROG #14\x00\x01\x02\x01"),
                 *checked(b"INF? #12\x01\x00", encode_array(back)),
                 *checked("DATA?", encode_array(back))]
    with expected_protocol(SCPIInstrument, exchanges) as inst:
        inst.write_block("PROG", sent)
        got = inst.query_block("INF?", np.float32, 3, data=[1, 0], data_dtype=np.uint8)
        np.testing.assert_array_equal(got, back)
        np.testing.assert_array_equal(inst.query_block("DATA?", np.float32), back)


def test_malformed_block_without_queued_error_is_block_error() -> None:
    with expected_protocol(SCPIInstrument, checked("DATA?", b"#13abcXY")) as inst, \
            pytest.raises(BlockError, match="unexpected bytes"):
        inst.query_block("DATA?", np.uint8)


def test_malformed_block_with_queued_error_is_instrument_error() -> None:
    exchanges = failed("DATA?", -160, "Block data error", b"")
    with expected_protocol(SCPIInstrument, exchanges) as inst, \
            pytest.raises(InstrumentError, match="Block data error") as info:
        inst.query_block("DATA?", np.uint8)
    assert isinstance(info.value.__cause__, BlockError)


def test_block_count_mismatch() -> None:
    with expected_protocol(SCPIInstrument, checked("D?", encode_array(np.zeros(3, "u1")))) as i, \
            pytest.raises(BlockError, match="expected 4"):
        i.query_block("D?", np.uint8, 4)


class _SplitResource(ProtocolResource):
    """Hands a reply over in pieces, as a VISA read stopping at a 0x0A payload byte would."""

    def __init__(self, pieces: list[bytes]) -> None:
        super().__init__([("D?", None), ("SYST:ERR?", NO_ERROR)])
        self.pieces = pieces
        self.read_termination: str | None = "\n"
        self.terminations_seen: list[str | None] = []
        self.chunk_size = 1024

    def read_raw(self, size: int | None = None) -> bytes:
        if self.pieces:
            self.terminations_seen.append(self.read_termination)
            return self.pieces.pop(0)
        return super().read_raw(size)


def test_block_read_continues_until_complete_with_termchar_off() -> None:
    payload = bytes([1, 10, 2, 10, 3])
    resource = _SplitResource([b"#", b"15\x01\n", b"\x02\n\x03\n"])
    inst = SCPIInstrument(resource)
    np.testing.assert_array_equal(inst.query_block("D?", np.uint8), list(payload))
    assert resource.terminations_seen == [None, None, None]
    assert resource.read_termination == "\n"
    assert resource.chunk_size == CHUNK_SIZE
    resource.assert_consumed()


def test_commons() -> None:
    exchanges = [*checked("*IDN?", "mtjlab,XBAR-2x3-SIM,XB-1,1.0"), *checked("*RST"),
                 *checked("*CLS"), *checked("*OPC?", "1"), *checked("*ESR?", "32")]
    with expected_protocol(SCPIInstrument, exchanges) as inst:
        assert inst.identity() == "mtjlab,XBAR-2x3-SIM,XB-1,1.0"
        inst.reset()
        inst.clear()
        assert inst.opc() is True
        assert inst.event_status() == 32


def test_timeout_property_and_close() -> None:
    resource = ProtocolResource([])
    with SCPIInstrument(resource) as inst:
        inst.timeout_s = 0.25
        assert resource.timeout == 250
        assert inst.timeout_s == 0.25
    assert resource.closed


def test_protocol_double_reports_mismatches() -> None:
    with pytest.raises(AssertionError, match="expected command b'A', got b'B'"), \
            expected_protocol(SCPIInstrument, [("A", None)], check_errors=False) as inst:
        inst.write("B")
    with pytest.raises(AssertionError, match="not sent"), \
            expected_protocol(SCPIInstrument, [("A", None)]):
        pass
    with pytest.raises(AssertionError, match="all exchanges were consumed"), \
            expected_protocol(SCPIInstrument, []) as inst:
        inst.write("A")


def test_a_session_whose_driver_fails_to_start_is_closed() -> None:
    """Session.open closes the VISA resource if the driver's constructor raises (a query it
    makes times out): a retry loop that keeps its errors must not keep sessions open."""
    closed: list[str] = []

    class Resource:
        def close(self) -> None:
            closed.append("closed")

    class Manager:
        def open_resource(self, address: str, **_kw: object) -> Resource:
            return Resource()

    class Failing(SCPIInstrument):
        def __init__(self, resource: object) -> None:
            raise TimeoutError("no reply to ARR:SIZE?")

    with pytest.raises(TimeoutError):
        Failing.open(Manager(), "TCPIP0::x::INSTR")
    assert closed == ["closed"]
