"""Declarative controls: validation before sending, casting, caching, snapshots."""

from __future__ import annotations

import math

import pytest

from drivers.controls import (
    Choices,
    Control,
    HasControls,
    control,
    in_range,
    measurement,
    on_off,
    one_of,
    parse_bool,
    parse_ints,
    validate,
)
from drivers.errors import LimitError, ReplyError
from drivers.protocol import ProtocolResource, checked, expected_protocol
from drivers.scpi import SCPIInstrument


class Box(SCPIInstrument):
    """A toy SCPI instrument with one of each kind of control."""

    level_v = control("LEV?", "LEV {:.6g}", "level", units="V", validator=in_range(-1, 1))
    mode = control("MODE?", "MODE {}", "mode", validator=one_of("A", "B"), cast=str)
    enabled = control("EN?", "EN {}", "enabled", validator=in_range(0, 1, integer=True),
                      cast=parse_bool, encode=lambda v: on_off(bool(v)))
    size = measurement("SIZE?", "size", cast=parse_ints, cached=True)
    temp_c = measurement("TEMP?", "temperature", units="C")


def test_get_and_set() -> None:
    exchanges = [*checked("LEV?", "0.25"), *checked("LEV 0.125"), *checked("MODE B"),
                 *checked("EN ON"), *checked("EN?", "0")]
    with expected_protocol(Box, exchanges) as box:
        assert box.level_v == 0.25
        box.level_v = 0.125
        box.mode = "B"
        box.enabled = 1
        assert box.enabled is False


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("level_v", 1.5, "level_v = 1.5 V rejected: allowed -1 to 1"),
        ("level_v", -1.0001, "allowed -1 to 1"),
        ("level_v", math.nan, "nan"),
        ("level_v", "high", "'high'"),
        ("level_v", True, "True"),
        ("mode", "C", "one of 'A', 'B'"),
        ("enabled", 2, "allowed 0 to 1"),
        ("enabled", 0.5, "0.5"),
        ("level_v", 10**400, "level_v = 1000000000000000000000000000000000000000..."),
        pytest.param("level_v", 10**5000, "<int of 16610 bits>", id="int-too-long-to-print"),
    ],
)
def test_limit_error_before_anything_is_sent(name: str, value: object, fragment: str) -> None:
    resource = ProtocolResource([])
    box = Box(resource)
    with pytest.raises(LimitError, match=fragment) as info:
        setattr(box, name, value)
    assert info.value.name == name
    assert "nothing was sent" in str(info.value)
    assert resource.sent == []


def test_limit_error_carries_units_and_range() -> None:
    with expected_protocol(Box, []) as box, pytest.raises(LimitError) as info:
        box.level_v = 2
    err = info.value
    assert (err.name, err.value, err.allowed, err.units) == ("level_v", 2, "-1 to 1", "V")
    assert isinstance(err, ValueError)


def test_bounds_are_inclusive() -> None:
    with expected_protocol(Box, [*checked("LEV -1"), *checked("LEV 1")]) as box:
        box.level_v = -1
        box.level_v = 1


def test_read_only_measurement() -> None:
    with expected_protocol(Box, []) as box, pytest.raises(AttributeError, match="read-only"):
        box.temp_c = 3


def test_cached_measurement_queried_once() -> None:
    with expected_protocol(Box, checked("SIZE?", "4,5")) as box:
        assert box.size == (4, 5)
        assert box.size == (4, 5)


def test_unparseable_reply_is_reply_error() -> None:
    with expected_protocol(Box, checked("TEMP?", "warm")) as box, \
            pytest.raises(ReplyError, match=r"TEMP\?.*warm"):
        _ = box.temp_c


def test_describe_and_snapshot() -> None:
    described = Box.describe_controls()
    assert list(described) == ["level_v", "mode", "enabled", "size", "temp_c"]
    assert described["level_v"] == {"doc": "level", "units": "V", "allowed": "-1 to 1",
                                     "settable": True}
    assert described["temp_c"]["settable"] is False
    with expected_protocol(Box, [*checked("LEV?", "0.5"), *checked("TEMP?", "21")]) as box:
        snap = box.snapshot(["level_v", "temp_c"])
    assert snap["level_v"]["value"] == 0.5
    assert snap["temp_c"] == {"value": 21.0, "doc": "temperature", "units": "C",
                              "allowed": None, "settable": False}


def test_class_access_returns_descriptor() -> None:
    assert isinstance(Box.level_v, Control)
    assert Box.level_v.name == "level_v"
    assert "[V]" in (Box.level_v.__doc__ or "")


def test_controls_inherit() -> None:
    class Bigger(Box):
        extra = measurement("X?", "extra")

    assert list(Bigger.controls())[-1] == "extra"
    assert "level_v" in Bigger.controls()
    assert issubclass(Bigger, HasControls)


def test_helpers() -> None:
    assert parse_bool(" ON ") is True and parse_bool("0") is False
    with pytest.raises(ValueError):
        parse_bool("maybe")
    assert parse_ints("100,200") == (100, 200)
    assert on_off(True) == "ON" and on_off(False) == "OFF"
    assert validate("row", 3, in_range(0, 9, integer=True)) == 3
    with pytest.raises(LimitError, match="row = 10 rejected: allowed 0 to 9"):
        validate("row", 10, in_range(0, 9, integer=True))
    with pytest.raises(ValueError):
        in_range(2, 1)
    with pytest.raises(TypeError):
        Choices(0, 1)(True)
