"""docs/scpi.md matches the simulator: every documented command is understood, and every command
the simulator serves is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import simulated_hw
from simulated_hw import PROBER_RESOURCE, TESTER_RESOURCE, tester_model
from simulated_hw.prober_model import ProberModel
from simulated_hw.visa import YAML_PATH

from .conftest import NO_ERROR, block, open_instrument

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "scpi.md"


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row; `\\|` is a literal pipe inside a cell."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def documented_commands() -> dict[str, list[str]]:
    """Backticked commands of the first column of every `command` table, per instrument."""
    found: dict[str, list[str]] = {"prober": [], "tester": []}
    instrument = None
    in_command_table = False
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            instrument = ("prober" if "Probe station" in line else
                          "tester" if "Crossbar tester" in line else None)
        if not line.startswith("|"):
            in_command_table = False
            continue
        cells = split_row(line)
        if cells[0] == "command":
            in_command_table = True
            continue
        if not in_command_table or set(cells[0]) <= {"-", ":"}:
            continue
        assert instrument is not None, f"command table outside an instrument section: {line}"
        found[instrument] += re.findall(r"`([^`]+)`", cells[0])
    return found


DOCUMENTED = documented_commands()
ROWS, COLS = 100, 200
PLACEHOLDERS = {
    "<V>": "0.1", "<s>": "5e-8", "<A>": "0.01", "<ON|OFF>": "ON", "<row>": "0", "<col>": "0",
    "<state>": "1", "<n>": "4",
}


def test_tables_were_found() -> None:
    assert len(DOCUMENTED["prober"]) >= 10
    assert len(DOCUMENTED["tester"]) >= 20
    assert "PROG:ARR <block>" in DOCUMENTED["tester"]
    assert "OUTP <ON|OFF>" in DOCUMENTED["tester"]


def example(command: str) -> bytes:
    """The documented command with valid example arguments."""
    header = command.split(" ", 1)[0]
    if "<block>" in command:
        payload = b"\x02" * (ROWS * COLS) if header == "PROG:ARR" else b"\x01" * (2 * ROWS)
        command = command.replace("<block>", "").rstrip()
        return command.encode() + b" " + block(payload)
    if header == "StepNextDie":  # prober positions are `<col> <row>` on the map
        command = command.replace("<col>", "1").replace("<row>", "0")
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value)
    assert "<" not in command, f"unhandled placeholder in {command!r}"
    return command.encode()


def is_query(message: bytes) -> bool:
    return message.split(b" ", 1)[0].endswith(b"?")


@pytest.fixture(scope="module")
def station():  # type: ignore[no-untyped-def]
    rm = simulated_hw.resource_manager(seed=0)
    prober = open_instrument(rm, PROBER_RESOURCE)
    tester = open_instrument(rm, TESTER_RESOURCE)
    tester.read_termination = None
    yield prober, tester
    rm.close()


@pytest.mark.parametrize("command", DOCUMENTED["prober"])
def test_documented_prober_command_is_understood(station, command: str) -> None:  # type: ignore[no-untyped-def]
    prober, _ = station
    prober.query("MoveChuckSeparation")
    prober.query("StepFirstDie")
    reply = prober.query(example(command).decode())
    assert not reply.startswith("1: Unknown command"), reply
    assert command == "*IDN?" or reply.split(":", 1)[0] == "0", reply


@pytest.mark.parametrize("command", DOCUMENTED["tester"])
def test_documented_tester_command_is_understood(station, command: str) -> None:  # type: ignore[no-untyped-def]
    prober, tester = station
    prober.query("MoveChuckSeparation")
    prober.query("StepFirstDie")
    prober.query("MoveChuckContact")
    tester.write("*CLS")
    tester.write("OUTP ON")
    message = example(command)
    tester.write_raw(message + b"\n")
    if is_query(message):
        reply = tester.read_raw()
        assert reply.endswith(b"\n") and len(reply) > 1, reply[:80]
    errors = []
    for _ in range(5):
        err = tester.query("SYST:ERR?").strip()
        if err == NO_ERROR:
            break
        errors.append(err)
    assert not any(e.startswith("-113") for e in errors), (command, errors)
    assert errors == [], (command, errors)


def documented_headers(instrument: str) -> set[str]:
    return {c.split(" ", 1)[0] for c in DOCUMENTED[instrument]}


def yaml_commands(device: str) -> set[str]:
    """Headers of the dialogues, property getters/setters and error queries in the YAML."""
    spec = yaml.safe_load(YAML_PATH.read_text())["devices"][device]
    headers = {d["q"] for d in spec.get("dialogues", [])}
    for prop in spec.get("properties", {}).values():
        headers.add(prop["getter"]["q"])
        headers.add(prop["setter"]["q"].split(" ", 1)[0])
    for kind in ("status_register", "error_queue"):
        headers |= {entry["q"] for entry in spec.get("error", {}).get(kind, [])}
    return {h.split(" ", 1)[0] for h in headers}


def test_every_tester_command_is_documented() -> None:
    served = set(tester_model.TesterModel._HANDLERS) | yaml_commands("xbar") | {"*RST", "*CLS"}
    missing = served - documented_headers("tester")
    assert not missing, f"undocumented tester commands: {sorted(missing)}"


def test_every_prober_command_is_documented() -> None:
    served = set(ProberModel._HANDLERS) | yaml_commands("prober")
    missing = served - documented_headers("prober")
    assert not missing, f"undocumented prober commands: {sorted(missing)}"


def test_documented_error_codes_exist_in_the_simulator() -> None:
    spec = yaml.safe_load(YAML_PATH.read_text())["devices"]["xbar"]["error"]["error_queue"][0]
    messages = {v for k, v in spec.items() if k not in ("q", "default")}
    text = DOC.read_text()
    for message in messages:
        assert f"`{message}`" in text, message
    documented = set(re.findall(r"^\| `(-\d+,\"[^\"]+\")`", text, flags=re.MULTILINE))
    assert documented == messages


def test_documented_setting_ranges_and_defaults_match_the_yaml() -> None:
    props = yaml.safe_load(YAML_PATH.read_text())["devices"]["xbar"]["properties"]
    rows = {}
    for line in DOC.read_text().splitlines():
        if line.startswith("| `") and " / `" in line:
            cells = split_row(line)
            rows[re.findall(r"`([^` ]+)", cells[0])[0]] = cells
    for prop in props.values():
        header = prop["setter"]["q"].split(" ", 1)[0]
        cells = rows[header]
        specs = prop["specs"]
        if "min" in specs:
            low, _, high = cells[2].partition(" to ")
            assert (float(low), float(high)) == (float(specs["min"]), float(specs["max"])), header
        default = float(prop["default"])
        if header == "OUTP":
            assert cells[3] == "off" and default == 0
        else:
            assert float(cells[3]) == default, header


def test_doc_example_session_replies() -> None:
    """The quick-start snippet at the top of docs/scpi.md shows real replies."""
    text = DOC.read_text()
    rm = simulated_hw.resource_manager(seed=0)
    prober = open_instrument(rm, PROBER_RESOURCE)
    shown = dict(re.findall(r'prober\.query\("([^"]+)"\)\s+# \'([^\']*)\'', text))
    assert shown, "no prober examples found"
    for command, reply in shown.items():
        assert prober.query(command) == reply, command
    rm.close()
