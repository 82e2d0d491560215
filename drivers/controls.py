"""Declarative instrument properties with units and validated ranges.

In the style of PyMeasure's ``Instrument.control``: a driver class declares its settings as
class attributes, so it reads like a register map::

    read_voltage_v = control("SOUR:READ:VOLT?", "SOUR:READ:VOLT {}", "read voltage",
                             units="V", validator=in_range(0.01, 0.5))

Reading the attribute queries the instrument; assigning validates first and raises
`LimitError` (nothing sent) when the value is outside the declared range. The owner must
provide ``name``, ``query(cmd) -> str`` and ``write(cmd)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, overload

from drivers.errors import LimitError, ReplyError

T = TypeVar("T")


class _Owner(Protocol):
    name: str

    def query(self, command: str) -> str: ...

    def write(self, command: str) -> None: ...


class Validator(Protocol):
    """Checks (and normalises) a value; raises ValueError or TypeError if it is not allowed."""

    def __call__(self, value: Any) -> Any: ...

    def describe(self) -> str: ...


class Range:
    """Closed interval [low, high]; `integer` demands an int (bools refused)."""

    def __init__(self, low: float, high: float, *, integer: bool = False) -> None:
        if not low <= high:
            raise ValueError(f"empty range {low}..{high}")
        self.low = low
        self.high = high
        self.integer = integer

    def __call__(self, value: Any) -> float | int:
        if isinstance(value, bool):
            raise TypeError("a bool is not a number here")
        if self.integer:
            if not isinstance(value, numbers.Integral):
                raise TypeError("an integer is required")
            number: float | int = int(value)
        else:
            number = float(value)
            if math.isnan(number):
                raise ValueError("NaN")
        if not self.low <= number <= self.high:
            raise ValueError("out of range")
        return number

    def describe(self) -> str:
        return f"{self.low:g} to {self.high:g}"


class Choices:
    """One of a fixed set of values."""

    def __init__(self, *choices: Any) -> None:
        self.choices = tuple(choices)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in self.choices):
            raise TypeError("a bool is not one of the choices")
        if value not in self.choices:
            raise ValueError("not one of the choices")
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)


class Boolean:
    """True/False (or the ints 1/0)."""

    def __call__(self, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        raise TypeError("a bool is required")

    def describe(self) -> str:
        return "True or False"


def in_range(low: float, high: float, *, integer: bool = False) -> Range:
    """Validator for a closed interval."""
    return Range(low, high, integer=integer)


def one_of(*choices: Any) -> Choices:
    """Validator for a fixed set of values."""
    return Choices(*choices)


boolean = Boolean()


def validate(name: str, value: Any, validator: Validator, units: str = "") -> Any:
    """Run `validator` on `value`; raise LimitError naming `name`, value, range and units."""
    try:
        return validator(value)
    except (TypeError, ValueError, ArithmeticError):  # 10**400 overflows float()
        raise LimitError(name, value, validator.describe(), units) from None


def parse_bool(text: str) -> bool:
    """SCPI boolean reply: 1/0/ON/OFF."""
    word = text.strip().upper()
    if word in ("1", "ON"):
        return True
    if word in ("0", "OFF"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def on_off(value: bool) -> str:
    """Python bool to the SCPI words ON/OFF."""
    return "ON" if value else "OFF"


def parse_ints(text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. ``100,200``."""
    return tuple(int(part) for part in text.split(","))


class Control(Generic[T]):
    """A queried (and, with `set_fmt`, settable) instrument property; see module docstring."""

    def __init__(
        self,
        get_cmd: str,
        set_fmt: str | None,
        doc: str,
        *,
        units: str = "",
        validator: Validator | None = None,
        cast: Callable[[str], T] = float,  # type: ignore[assignment]
        encode: Callable[[Any], Any] | None = None,
        cached: bool = False,
    ) -> None:
        self.get_cmd = get_cmd
        self.set_fmt = set_fmt
        self.doc = doc
        self.__doc__ = f"{doc} [{units}]" if units else doc
        self.units = units
        self.validator = validator
        self.cast = cast
        self.encode = encode
        self.cached = cached
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def settable(self) -> bool:
        return self.set_fmt is not None

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Control[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | Control[T]:
        if obj is None:
            return self
        cache_key = f"_control_cache_{self.name}"
        if self.cached and cache_key in obj.__dict__:
            return obj.__dict__[cache_key]
        owner: _Owner = obj  # type: ignore[assignment]
        reply = owner.query(self.get_cmd)
        try:
            value = self.cast(reply)
        except (TypeError, ValueError) as exc:
            raise ReplyError(owner.name, self.get_cmd, reply, str(exc)) from None
        if self.cached:
            obj.__dict__[cache_key] = value
        return value

    def __set__(self, obj: object, value: Any) -> None:
        if self.set_fmt is None:
            raise AttributeError(f"{self.name} is read-only")
        if self.validator is not None:
            value = validate(self.name, value, self.validator, self.units)
        wire = self.encode(value) if self.encode is not None else value
        owner: _Owner = obj  # type: ignore[assignment]
        owner.write(self.set_fmt.format(wire))

    def describe(self) -> dict[str, Any]:
        """Static description: doc, units, allowed values, settable."""
        return {
            "doc": self.doc,
            "units": self.units,
            "allowed": self.validator.describe() if self.validator is not None else None,
            "settable": self.settable,
        }


def control(
    get_cmd: str,
    set_fmt: str,
    doc: str,
    *,
    units: str = "",
    validator: Validator | None = None,
    cast: Callable[[str], Any] = float,
    encode: Callable[[Any], Any] | None = None,
) -> Any:
    """A read/write property: query `get_cmd`, write `set_fmt.format(value)` after validation."""
    return Control(get_cmd, set_fmt, doc, units=units, validator=validator, cast=cast,
                   encode=encode)


def measurement(
    get_cmd: str,
    doc: str,
    *,
    units: str = "",
    cast: Callable[[str], Any] = float,
    cached: bool = False,
) -> Any:
    """A read-only property; `cached` reads it once per instance (e.g. fixed array size)."""
    return Control(get_cmd, None, doc, units=units, cast=cast, cached=cached)


class HasControls:
    """Mixin listing a class's controls and snapshotting their current values."""

    @classmethod
    def controls(cls) -> dict[str, Control[Any]]:
        """Every declared control by attribute name, base classes first."""
        found: dict[str, Control[Any]] = {}
        for klass in reversed(cls.__mro__):
            found.update((k, v) for k, v in vars(klass).items() if isinstance(v, Control))
        return found

    @classmethod
    def describe_controls(cls) -> dict[str, dict[str, Any]]:
        """Doc, units and allowed range of every control, without touching the instrument."""
        return {name: c.describe() for name, c in cls.controls().items()}

    def snapshot(self, names: Iterable[str] | None = None,
                 values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Current value of each control (all by default) with its units and allowed range;
        `values` gives values already read (e.g. with retries), else each is read now."""
        table = type(self).controls()
        selected = table if names is None else {n: table[n] for n in names}
        return {name: {"value": values[name] if values is not None else getattr(self, name),
                       **c.describe()} for name, c in selected.items()}
