"""The station file: instruments, safety limits, wafer plan and measurement settings.

A YAML file validated once, at the edge, by pydantic. Errors name the file, the line, the key
and what was expected, in words a lab operator understands.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drivers.crossbar import CrossbarTester
from simulated_hw import MAX_INFER_VECTORS, WaferConfig


class StationFileError(ValueError):
    """A station file that cannot be used; the message is meant for the operator."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulatedInstruments(_Model):
    """Both instruments on one simulated wafer."""

    seed: int = 0
    wafer: WaferConfig = WaferConfig()


class InstrumentConfig(_Model):
    resource: str | None = Field(None, description="VISA resource string")
    timeout_s: float = Field(5.0, gt=0, le=600)


class ProberConfig(InstrumentConfig):
    dialect: Literal["velox"] = "velox"


class InstrumentsConfig(_Model):
    simulated: SimulatedInstruments | None = None
    visa_library: str = Field("", description="pyvisa backend for real hardware, e.g. '@py'")
    prober: ProberConfig = ProberConfig()
    tester: InstrumentConfig = InstrumentConfig()

    @model_validator(mode="after")
    def _resources_known(self) -> InstrumentsConfig:
        if self.simulated is None:
            missing = [n for n, c in (("prober", self.prober), ("tester", self.tester))
                       if not c.resource]
            if missing:
                raise ValueError(
                    f"{' and '.join(missing)} need a 'resource' (a VISA address) unless "
                    "'simulated' is set")
        return self


class SafetyLimits(_Model):
    """Hard limits no command may exceed, whatever the caller asks."""

    max_pulse_v: float = Field(1.2, gt=0, le=2.0)
    max_pulse_width_s: float = Field(1e-6, gt=0, le=1e-3)
    max_read_v: float = Field(0.3, gt=0, le=0.5)
    max_compliance_a: float = Field(0.05, gt=0, le=0.1)


class WaferPlan(_Model):
    """Which dies to visit, in which order."""

    dies: Literal["all"] | Annotated[list[tuple[int, int]], Field(min_length=1)] = "all"
    order: Literal["map", "listed"] = "map"

    @field_validator("dies", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        """One message for a die written without its own brackets (`dies: [2, 0]`), where
        pydantic gave three (not 'all', 2 not a tuple, 0 not a tuple) and no hint."""
        example = "[[2, 0]] for die 2,0, or [[0, 0], [1, 0]] for two dies"
        if isinstance(value, list) and any(not isinstance(d, list | tuple) for d in value):
            if len(value) == 2 and all(isinstance(x, int) for x in value):
                example = f"[[{value[0]}, {value[1]}]] for die {value[0]},{value[1]}"
            raise ValueError(f"a list of [col, row] pairs, each in its own brackets: write "
                             f"dies: {example} (got {value!r})")
        if not isinstance(value, list | tuple) and value != "all":
            raise ValueError(f"'all' or a list of [col, row] pairs, e.g. dies: {example}")
        return value

    @model_validator(mode="after")
    def _each_die_once(self) -> WaferPlan:
        if self.dies != "all":
            twice = sorted(d for d, n in Counter(self.dies).items() if n > 1)
            if twice:
                raise ValueError(f"dies listed more than once: {twice} (a die is measured "
                                 "once per sweep)")
        return self


#: measurement setting -> (the tester control it is written to, the safety limit guarding it)
TESTER_SETTINGS = {"pulse_v": ("pulse_amplitude_v", "max_pulse_v"),
                   "pulse_width_s": ("pulse_width_s", "max_pulse_width_s"),
                   "read_voltage_v": ("read_voltage_v", "max_read_v"),
                   "compliance_a": ("compliance_a", "max_compliance_a")}


class MeasurementConfig(_Model):
    """Read and write settings and the defect-classification thresholds."""

    read_voltage_v: float = Field(0.1, gt=0)
    pulse_v: float = Field(0.9, gt=0)
    pulse_width_s: float = Field(5e-8, gt=0)
    compliance_a: float = Field(0.01, gt=0)
    averages: int = Field(256, ge=1, le=1024, description="readings the tester averages per "
                          "array read and per inference (noise falls as 1/sqrt)")
    infer_batch_rows: int = Field(1024, ge=1, le=MAX_INFER_VECTORS, description="input "
                                  "vectors per inference query (at most what the tester "
                                  "takes in one); longer batches are split, each part "
                                  "retried on its own")
    max_write_pulses: int = Field(6, ge=1, le=50, description="write-verify attempts")
    # finite: a step of .inf made the write-verify amplitude NaN mid-die (elsewhere .inf can
    # mean something, e.g. open_min_ohm: .inf classes no cell open, and stored runs hold it)
    pulse_step_v: float = Field(0.05, ge=0, allow_inf_nan=False,
                                description="escalation per failed attempt")
    # at least 100 ohm: an MTJ cell reads kilo-ohms even shorted (its access transistor), so a
    # smaller threshold is a value written in kilo-ohms
    short_max_ohm: float = Field(2_500.0, ge=100, description="below: shorted cell")
    open_min_ohm: float = Field(100_000.0, ge=100, description="above: open cell")
    p_ap_threshold_ohm: float = Field(8_500.0, ge=100, description="P below, AP above")
    ambiguity_band_rel: float = Field(0.05, ge=0, lt=0.5,
                                      description="re-measure cells this close to a threshold")

    @field_validator("read_voltage_v", "pulse_v", "pulse_width_s", "compliance_a")
    @classmethod
    def _within_the_testers_range(cls, value: float, info: ValidationInfo) -> float:
        """The tester's declared range (its driver's control), checked here rather than
        when the setting is first sent, mid-sweep or mid-job."""
        control = getattr(CrossbarTester, TESTER_SETTINGS[str(info.field_name)][0])
        try:
            control.validator(value)
        except (TypeError, ValueError):
            raise ValueError(f"outside the tester's range, {control.validator.describe()} "
                             f"{control.units}") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> MeasurementConfig:
        if not self.short_max_ohm < self.p_ap_threshold_ohm < self.open_min_ohm:
            raise ValueError("thresholds must satisfy short_max_ohm < p_ap_threshold_ohm "
                             "< open_min_ohm")
        return self


class RetryConfig(_Model):
    """Bounded retries of idempotent operations after communication faults."""

    max_attempts: int = Field(4, ge=1, le=20)
    backoff_s: float = Field(0.0, ge=0, le=10)


class StationConfig(_Model):
    """A whole station file."""

    name: str = "station"
    # required: a station file that forgot its instruments must not silently measure the
    # simulated wafer and store that as measured data ('simulated: {seed: 0}' asks for it)
    instruments: InstrumentsConfig
    safety: SafetyLimits = SafetyLimits()
    wafer: WaferPlan = WaferPlan()
    measurement: MeasurementConfig = MeasurementConfig()
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _within_limits(self) -> StationConfig:
        for key, (_control, limit_key) in TESTER_SETTINGS.items():
            value, limit = getattr(self.measurement, key), getattr(self.safety, limit_key)
            if value > limit:
                raise ValueError(f"measurement.{key} = {value} exceeds safety.{limit_key} = "
                                 f"{limit}")
        return self


def _step_problems(config: StationConfig) -> list[tuple[tuple[Any, ...], str]]:
    """A write-pulse step as large as the safety limit on the amplitude: millivolts written
    as volts (`pulse_step_v: 50` was taken as 50 V: the first failed write jumped straight
    to the limit). A step that merely reaches the limit from a pulse_v near it is fine (the
    escalation is capped there)."""
    m, limit = config.measurement, config.safety.max_pulse_v
    if m.pulse_step_v < limit:
        return []
    return [(("measurement", "pulse_step_v"),
             f"{m.pulse_step_v:g} V is not smaller than safety.max_pulse_v = {limit:g} V: "
             "the first failed write would jump straight to the limit. The step is in volts "
             "(0.05 is 50 mV); give a smaller one, or 0 for no escalation")]


def _yaml_error(err: yaml.YAMLError, source: str) -> str:
    """`FILE:LINE: not valid YAML: what`, as the other station-file errors (PyYAML's own text
    named '<unicode string>' and quoted the line over three more)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if not isinstance(err, yaml.MarkedYAMLError) or mark is None:
        return f"{source}: not valid YAML: {err}"
    context, problem = err.context or "", err.problem or ""
    start = err.context_mark
    if context and start is not None and start.line != mark.line:
        context += f" (started at line {start.line + 1})"
    what = ", ".join(x for x in (context, problem) if x) or "syntax error"
    what += f" (column {mark.column + 1})"
    if "'\\t'" in problem:
        what += "; indent with spaces: YAML does not allow tabs"
    return f"{source}:{mark.line + 1}: not valid YAML: {what}"


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest YAML node on a pydantic error location."""
    line = None
    for key in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(key)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(
                node.value):
            node = node.value[key]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _named_setting(root: yaml.Node | None, message: str) -> tuple[str, ...]:
    """The first setting a message names (`section.key`) that the file sets, else ()."""
    for name in re.findall(r"\b[a-z_]+(?:\.[a-z_]+)+\b", message):
        path = tuple(name.split("."))
        node = root
        for key in path:
            node = next((v for k, v in node.value if k.value == key), None) if isinstance(
                node, yaml.MappingNode) else None
        if node is not None:
            return path
    return ()


def _problems(source: str, root: yaml.Node | None,
              found: list[tuple[tuple[Any, ...], str]]) -> str:
    """The operator's message: one line per (key path, what was expected), with its line."""
    lines = [f"{source}: invalid station file ({len(found)} problem(s))"]
    for loc, text in found:
        line = _line_of(root, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"  {where}: {'.'.join(map(str, loc)) or '(top level)'}: {text}")
    return "\n".join(lines)


def format_validation_error(err: ValidationError, source: str, root: yaml.Node | None) -> str:
    """One line per problem: file:line: key: what was expected."""
    found: list[tuple[tuple[Any, ...], str]] = []
    for e in err.errors():
        # Drop pydantic's union-branch tags ("literal['all']", "list[...]") from the key path.
        loc = tuple(x for x in e["loc"]
                    if not (isinstance(x, str) and ("[" in x or x.startswith("function"))))
        if not loc:  # a rule across settings: point at the first one the file sets
            loc = _named_setting(root, str(e["msg"]))
        got = e.get("input")
        got_text = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        msg = e["msg"]
        if loc == ("instruments",) and e["type"] == "missing":
            msg, got_text = ("missing: give the prober's and tester's VISA addresses "
                             "(resource), or 'simulated: {seed: N}' for the simulated wafer"), ""
        found.append((loc, f"{msg}{got_text}"))
    return _problems(source, root, found)


def _yes_no(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where YAML read yes/no/on/off (or true/false): no setting of a station file is one,
    and pydantic would take true for 1 (`averages: yes` meant 1 average, `[on, 0]` die 1,0)."""
    if isinstance(data, bool):
        yield path
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from _yes_no(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _yes_no(value, (*path, i))


def parse_station(text: str, source: str = "<station>", *, new_run: bool = False
                  ) -> StationConfig:
    """Validate station YAML text; raise StationFileError with an operator's message.

    `new_run`: the file is about to be used (load_station), so also refuse settings that are
    valid but almost surely a mistake (a write-pulse step as large as the pulse limit). Not for a
    stored run's copy (accepted when its run was made) nor a job's overrides (a job sets
    pulse_v, not the step).
    """
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StationFileError(_yaml_error(err, source)) from err
    if data is None:
        raise StationFileError(f"{source}: the station file is empty; it needs at least an "
                               "'instruments' section (see docs/stations/*.yaml)")
    if not isinstance(data, dict):
        raise StationFileError(f"{source}: expected a mapping of sections at the top level")
    yes_no = [(path, "expected a number or a name (YAML reads yes, no, on and off as true "
                     "and false)") for path in _yes_no(data)]
    if yes_no:
        raise StationFileError(_problems(source, root, yes_no))
    try:
        config = StationConfig.model_validate(data)
    except ValidationError as err:
        raise StationFileError(format_validation_error(err, source, root)) from err
    step = _step_problems(config) if new_run else []
    if step:
        raise StationFileError(_problems(source, root, step))
    return config


def load_station(path: str | Path) -> StationConfig:
    """Read and validate a station file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise StationFileError(f"{path}: station file not found") from err
    except (OSError, UnicodeDecodeError) as err:
        raise StationFileError(f"{path}: cannot read station file: {err}") from err
    return parse_station(text, str(path), new_run=True)


def station_to_yaml(config: StationConfig) -> str:
    """The station as YAML text (stored with each run)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
