"""Station files: the examples load, bad files give operator-readable messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from instruments.config import StationFileError, load_station, parse_station

from .conftest import REPO


@pytest.mark.parametrize("name", ["simulated.yaml", "real.yaml"])
def test_example_station_files_load(name: str) -> None:
    config = load_station(REPO / "docs" / "stations" / name)
    assert config.safety.max_pulse_v <= 1.2


def test_error_names_file_line_key_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "station.yaml"
    path.write_text("name: x\nsafety:\n  max_pulse_v: 3\n")
    with pytest.raises(StationFileError) as info:
        load_station(path)
    text = str(info.value)
    assert f"{path}:3: safety.max_pulse_v" in text
    assert "less than or equal to 2" in text


def test_measurement_beyond_safety_limit_is_refused() -> None:
    with pytest.raises(StationFileError, match=r"measurement\.pulse_v = 1\.3 exceeds safety"):
        parse_station("instruments: {simulated: {}}\nsafety: {max_pulse_v: 1.2}\n"
                      "measurement: {pulse_v: 1.3}\n")


def test_a_rule_across_settings_points_at_the_setting_the_file_sets() -> None:
    """It used to point at line 1, '(top level)', whatever the file said where."""
    text = "name: x\ninstruments: {simulated: {}}\nsafety:\n  max_pulse_v: 0.5\n"
    with pytest.raises(StationFileError, match=r"st\.yaml:4: safety\.max_pulse_v: Value error, "
                       r"measurement\.pulse_v = 0\.9 exceeds safety\.max_pulse_v = 0\.5"):
        parse_station(text, "st.yaml")


def test_unknown_key_and_bad_yaml() -> None:
    with pytest.raises(StationFileError, match="mesurement: Extra inputs"):
        parse_station("mesurement: {}\n")
    with pytest.raises(StationFileError, match="not valid YAML"):
        parse_station("safety: [unclosed\n")
    with pytest.raises(StationFileError, match="mapping of sections"):
        parse_station("- a list\n")


def test_real_station_needs_resources() -> None:
    with pytest.raises(StationFileError, match="prober and tester need a 'resource'"):
        parse_station("instruments: {visa_library: '@py'}\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StationFileError, match="station file not found"):
        load_station(tmp_path / "nope.yaml")
