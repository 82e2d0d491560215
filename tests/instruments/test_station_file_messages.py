"""Station-file mistakes an operator makes, each with one message that says what to write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from instruments.config import StationConfig, StationFileError, load_station, parse_station
from instruments.progress import bar

SIM = "name: x\ninstruments: {simulated: {seed: 0}}\n"


def _refusal(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = tmp_path / "station.yaml"
    path.write_text(text)
    with pytest.raises(StationFileError) as info:
        load_station(path)
    return path, str(info.value)


def test_a_die_without_its_brackets_gets_one_message_saying_what_to_write(
        tmp_path: Path) -> None:
    """`dies: [2, 0]` gave three pydantic lines ('all', 2 not a tuple, 0 not a tuple)."""
    path, text = _refusal(tmp_path, f"{SIM}wafer:\n  dies: [2, 0]\n")
    assert "(1 problem(s))" in text
    assert f"{path}:4: wafer.dies: " in text
    assert "a list of [col, row] pairs" in text
    assert "dies: [[2, 0]]" in text
    assert "valid tuple" not in text and "Input should be 'all'" not in text


@pytest.mark.parametrize("dies", ["[[2, 0], 3]", "'2,0'", "5"])
def test_other_dies_that_are_not_pairs_get_one_message(dies: str) -> None:
    with pytest.raises(StationFileError) as info:
        parse_station(f"{SIM}wafer: {{dies: {dies}}}\n", "st.yaml")
    text = str(info.value)
    assert "(1 problem(s))" in text
    assert "st.yaml:3: wafer.dies: " in text and "[col, row] pairs" in text


def test_die_pairs_and_all_still_load() -> None:
    assert parse_station(f"{SIM}wafer: {{dies: [[2, 0]]}}\n").wafer.dies == [(2, 0)]
    assert parse_station(f"{SIM}wafer: {{dies: all}}\n").wafer.dies == "all"


def test_a_pulse_step_in_millivolts_is_refused_naming_field_value_limit_and_volts(
        tmp_path: Path) -> None:
    """`pulse_step_v: 50` was taken as 50 V: the first failed write jumped to max_pulse_v."""
    path, text = _refusal(tmp_path, f"{SIM}measurement:\n  pulse_v: 0.9\n  pulse_step_v: 50\n")
    assert f"{path}:5: measurement.pulse_step_v: 50 V is not smaller than " \
           "safety.max_pulse_v = 1.2 V: the first failed write would jump straight" in text
    assert "in volts" in text


@pytest.mark.parametrize(("measurement", "refused"), [
    ("{pulse_v: 0.9, pulse_step_v: 1.2}", True),   # the step is the whole limit
    ("{pulse_v: 0.9, pulse_step_v: 0.5}", False),  # reaches the limit: capped there
    ("{pulse_v: 0.9, pulse_step_v: 0}", False),    # no escalation
    ("{pulse_v: 1.18}", False),                    # near the limit, the default step
])
def test_pulse_step_against_its_limit(tmp_path: Path, measurement: str, refused: bool) -> None:
    path = tmp_path / "station.yaml"
    path.write_text(f"{SIM}measurement: {measurement}\n")
    if refused:
        with pytest.raises(StationFileError, match=r"measurement\.pulse_step_v: "):
            load_station(path)
    else:
        load_station(path)


def test_the_step_rule_spares_stored_runs_and_job_overrides() -> None:
    """A stored run's station (parse_station) was accepted when its run was made, and a job
    raising pulse_v cannot change the step: neither is refused for it."""
    text = f"{SIM}measurement: {{pulse_step_v: 50}}\n"
    assert parse_station(text).measurement.pulse_step_v == 50
    StationConfig.model_validate({"instruments": {"simulated": {}},
                                  "measurement": {"pulse_v": 1.18}})


def test_a_tab_in_the_station_file_names_the_file_and_line(tmp_path: Path) -> None:
    """PyYAML's text said `in "<unicode string>", line 3` and quoted the line."""
    path, text = _refusal(tmp_path, "name: x\nsafety:\n\tmax_pulse_v: 1.0\n")
    assert text.startswith(f"{path}:3: not valid YAML: ")
    assert "tab" in text and "column 1" in text
    assert "<unicode string>" not in text and "\n" not in text


def test_a_yaml_error_points_at_the_line_and_where_it_started() -> None:
    with pytest.raises(StationFileError) as info:
        parse_station("name: x\nsafety: [1, 2\n", "st.yaml")
    assert str(info.value) == ("st.yaml:3: not valid YAML: while parsing a flow sequence "
                               "(started at line 2), expected ',' or ']', but got "
                               "'<stream end>' (column 1)")


def test_progress_bar_shows_whole_counts_whole(capsys: pytest.CaptureFixture[str]) -> None:
    """tqdm's .3g showed a die's 19953 healthy cells as `ok=2e+4`."""
    with bar("sweep", False, total=1) as dies:
        dies.set_postfix(die="1,4", ok=19953, open=np.int64(123456), short=9, rate=0.123456)
        postfix = dies.postfix
    assert "ok=19953" in postfix and "open=123456" in postfix and "short=9" in postfix
    assert "rate=0.123" in postfix  # fractions keep tqdm's short form
    assert "ok=19953" in capsys.readouterr().err
