"""Fuzzing the simulator's command parsers: any bytes give replies or SCPI errors, never a Python
exception, and the device stays usable afterwards."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simulated_hw
from simulated_hw import PROBER_RESOURCE, TESTER_RESOURCE

from .conftest import block, small_config

ROWS, COLS = 4, 6  # small_config(): random blocks are sometimes exactly valid
TESTER_IDN = b"mtjlab,XBAR-4x6-SIM,XB-0001,1.0\n"
PROBER_IDN = b"FormFactor,Velox-SIM,PS-0001,3.6\n"
ERROR_REPLY = re.compile(rb'^-?\d+,"[^"]*"\n$')
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TESTER_COMMANDS = [
    b"*IDN?", b"*RST", b"*CLS", b"*OPC?", b"*ESR?", b"SYST:ERR?", b"SOUR:READ:VOLT 0.1",
    b"SOUR:READ:VOLT?", b"SOUR:PULS:AMPL 0.9", b"SOUR:PULS:AMPL?", b"SOUR:PULS:WIDT 5e-8",
    b"SOUR:PULS:WIDT?", b"SENS:CURR:COMP 0.01", b"SENS:CURR:COMP?", b"OUTP ON", b"OUTP?",
    b"ARR:SIZE?", b"CONT?", b"MEAS:ARR?", b"MEAS:CELL? 1,2", b"PROG:CELL 1,2,1",
    b"PROG:ARR " + block(bytes(ROWS * COLS)), b"INF:CURR? " + block(b"\x01" * ROWS),
]
PROBER_COMMANDS = [
    b"*IDN?", b"ReportSoftwareVersion", b"StepFirstDie", b"StepNextDie", b"StepNextDie 1 1",
    b"MoveChuckContact", b"MoveChuckSeparation", b"ReadChuckIndex", b"ReadChuckStatus",
    b"ReadWaferMap",
]
HEADERS = sorted({c.split(b" ")[0] for c in TESTER_COMMANDS + PROBER_COMMANDS})


@pytest.fixture(scope="module")
def devices():  # type: ignore[no-untyped-def]
    """The pyvisa-sim device objects of a small wafer, prober in contact, output on."""
    rm = simulated_hw.resource_manager(seed=0, config=small_config())
    prober = rm.visalib.devices[PROBER_RESOURCE]
    tester = rm.visalib.devices[TESTER_RESOURCE]
    exchange(prober, b"StepFirstDie")
    exchange(prober, b"MoveChuckContact")
    exchange(tester, b"OUTP ON")
    yield prober, tester
    rm.close()


def exchange(device, message: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Write one terminated message, return every reply it produced."""
    device.write(message + b"\n")
    replies = []
    while True:
        data, _ = device.read()
        if not data:
            return replies
        replies.append(data)


def mutate(command: bytes, data: st.DataObject) -> bytes:
    """A valid command with a few random byte-level edits."""
    out = bytearray(command)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate", "case"]))
        pos = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "insert":
            out[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and out:
            del out[pos : pos + data.draw(st.integers(1, 4))]
        elif op == "replace" and out:
            out[pos] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del out[pos:]
        elif op == "case":
            out = bytearray(bytes(out).swapcase())
    return bytes(out)


def random_block(data: st.DataObject) -> bytes:
    """Blocks with right, wrong or nonsense headers and payloads."""
    payload = data.draw(st.one_of(
        st.binary(max_size=60),
        st.sampled_from([ROWS * COLS, ROWS, 2 * ROWS, ROWS * COLS - 1]).flatmap(
            lambda n: st.binary(min_size=n, max_size=n)),
        st.lists(st.integers(0, 3), min_size=ROWS * COLS, max_size=ROWS * COLS).map(bytes),
    ))
    kind = data.draw(st.sampled_from(["good", "length", "digits", "raw"]))
    if kind == "good":
        return block(payload)
    if kind == "length":
        n = str(data.draw(st.integers(0, 10**6))).encode()
        return b"#" + str(len(n)).encode() + n + payload
    if kind == "digits":
        return b"#" + data.draw(st.binary(min_size=0, max_size=4)) + payload
    return payload


def assert_usable(prober, tester) -> None:  # type: ignore[no-untyped-def]
    """Both devices still answer their identity and the tester's error queue."""
    assert exchange(tester, b"") is not None  # an empty message flushes any partial input
    assert exchange(tester, b"*IDN?") == [TESTER_IDN]
    reply = exchange(tester, b"SYST:ERR?")
    assert len(reply) == 1 and ERROR_REPLY.match(reply[0]), reply
    exchange(tester, b"*CLS")
    assert exchange(tester, b"SYST:ERR?") == [b'0,"No error"\n']
    exchange(prober, b"")
    assert exchange(prober, b"*IDN?") == [PROBER_IDN]


def check_replies(replies: list[bytes], device: str) -> None:
    assert len(replies) <= 1
    for reply in replies:
        assert reply.endswith(b"\n")
        if device == "prober" and reply != PROBER_IDN:
            assert re.match(rb"^\d+:", reply), reply


def send_to_both(devices, tester_message: bytes, prober_message: bytes) -> None:  # type: ignore[no-untyped-def]
    """Each instrument answers its message properly (or not at all) and stays usable."""
    prober, tester = devices
    check_replies(exchange(tester, tester_message), "tester")
    check_replies(exchange(prober, prober_message), "prober")
    assert_usable(prober, tester)


@FUZZ
@given(data=st.binary(max_size=80))
def test_random_bytes(devices, data: bytes) -> None:  # type: ignore[no-untyped-def]
    send_to_both(devices, data, data)


@FUZZ
@given(data=st.data())
def test_mutated_commands(devices, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    t_cmd = mutate(data.draw(st.sampled_from(TESTER_COMMANDS)), data)
    p_cmd = mutate(data.draw(st.sampled_from(PROBER_COMMANDS)), data)
    send_to_both(devices, t_cmd, p_cmd)


@FUZZ
@given(data=st.data())
def test_headers_with_random_arguments(devices, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    header = data.draw(st.sampled_from(HEADERS))
    args = data.draw(st.one_of(
        st.binary(max_size=30),
        st.text(alphabet="0123456789-+.,eE ONFinax", max_size=20).map(str.encode),
        st.builds(random_block, st.data()),
    ))
    message = header + b" " + args
    send_to_both(devices, message, message)


@FUZZ
@given(data=st.data())
def test_random_blocks_to_array_commands(devices, data: st.DataObject) -> None:  # type: ignore[no-untyped-def]
    prober, tester = devices
    wafer = contacted_wafer(devices)
    header = data.draw(st.sampled_from([b"PROG:ARR", b"INF:CURR?"]))
    exchange(tester, b"*CLS")
    exchange(tester, b"SOUR:PULS:AMPL 0.9")  # never break down cells while fuzzing
    before = wafer.true_states(0)
    defects_before = wafer.true_defects(0)[0]
    replies = exchange(tester, header + b" " + random_block(data))
    error = exchange(tester, b"SYST:ERR?")[0]
    assert (wafer.true_defects(0)[0] == defects_before).all()
    if error != b'0,"No error"\n':
        assert error.startswith((b"-160", b"-241", b"-221")), error
        assert (wafer.true_states(0) == before).all()  # a rejected command changes nothing
        if header.endswith(b"?"):
            assert replies == [b"\n"]
    elif header.endswith(b"?"):
        assert replies[0].startswith(b"#") and len(replies) == 1
    assert_usable(prober, tester)


def contacted_wafer(devices):  # type: ignore[no-untyped-def]
    prober, tester = devices
    exchange(prober, b"MoveChuckSeparation")
    exchange(prober, b"StepFirstDie")
    exchange(prober, b"MoveChuckContact")
    exchange(tester, b"OUTP ON")
    return tester.model_handler.__self__.wafer


def test_non_ascii_bytes_are_unknown_commands(devices) -> None:  # type: ignore[no-untyped-def]
    """Regression: pyvisa-sim's setter matching decoded UTF-8 and raised on bytes like 0xff."""
    prober, tester = devices
    exchange(tester, b"*CLS")
    assert exchange(tester, b"\xff") == []
    assert exchange(tester, b"\xff?") == [b"\n"]
    assert exchange(tester, b"SYST:ERR?") == [b'-113,"Undefined header"\n']
    assert exchange(tester, b"SYST:ERR?") == [b'-113,"Undefined header"\n']
    assert exchange(prober, b"\xff")[0].startswith(b"1: Unknown command")
    assert_usable(prober, tester)


def test_through_pyvisa_resources() -> None:
    """The same junk through real pyvisa sessions: the session stays usable."""
    rm = simulated_hw.resource_manager(seed=0, config=small_config())
    tester = rm.open_resource(TESTER_RESOURCE, write_termination="\n", read_termination="\n")
    prober = rm.open_resource(PROBER_RESOURCE, write_termination="\n", read_termination="\n")
    for junk in (b"\x00\xff\xfe", b"#9999999999", b"PROG:ARR #", b"INF:CURR? #1", b"\r\r"):
        tester.write_raw(junk + b"\n")
        if junk.split(b" ")[0].endswith(b"?"):
            assert tester.read_raw() == b"\n"  # a rejected query answers an empty line
        prober.write_raw(junk + b"\n")
        if junk.strip():  # an empty message gets no reply (and queues no error)
            prober.read_raw()
    assert tester.query("SYST:ERR?").startswith("-")  # the junk's errors, not the empty one
    tester.write("*CLS")
    tester.write_raw(b"\r\r\n")
    assert tester.query("SYST:ERR?") == '0,"No error"'
    assert tester.query("*IDN?") == TESTER_IDN.decode().strip()
    assert prober.query("*IDN?") == PROBER_IDN.decode().strip()
    rm.close()
