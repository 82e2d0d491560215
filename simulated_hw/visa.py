"""Glue between pyvisa-sim and the Python wafer model.

pyvisa-sim parses instruments.yaml into Device objects (dialogues, properties, error queue,
status register). We re-class those devices as `ModelDevice`, which
- serves commands the YAML cannot (stepping, bulk binary transfers, physics) from the models,
- follows SCPI conventions pyvisa-sim lacks (errors queue instead of replying, ON/OFF booleans,
  *RST and *CLS), and
- hands replies over whole instead of one byte per read call, as raw bytes (pyvisa-sim's own
  replies are UTF-8 strings, which corrupt binary blocks).
Each `resource_manager()` call gets its own library instance, hence its own wafer.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyvisa
from pyvisa import constants, errors
from pyvisa_sim.component import NoResponse
from pyvisa_sim.devices import Device
from pyvisa_sim.highlevel import SimVisaLibrary

from .config import WaferConfig
from .faults import PROBER_KINDS, TESTER_KINDS, FaultInjector
from .physics import SimulatedWafer
from .prober_model import ProberModel
from .tester_model import NUMBER, ScpiError, TesterModel

YAML_PATH = Path(__file__).with_name("instruments.yaml")
PROBER_RESOURCE = "TCPIP0::prober.sim::inst0::INSTR"
TESTER_RESOURCE = "TCPIP0::xbar.sim::inst0::INSTR"
ERROR_QUEUE_DEPTH = 32
PROBER_FAULT_REPLY = b"710: Prober fault."

Handler = Callable[[str, bytes], bytes | None]


def _split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header, arguments) of a program message: split at the first white space, a space or
    a tab (IEEE 488.2 white space), as the drivers' guard reads it."""
    parts = message.strip().split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (message.strip(), b"")


class ModelDevice(Device):
    """A pyvisa-sim device whose unmatched commands go to a Python model."""

    model_handler: Handler | None
    faults: FaultInjector | None
    received: collections.deque[bytes]
    dropped: bool

    def attach(self, handler: Handler | None, faults: FaultInjector | None, scpi: bool) -> None:
        """Plug a model in; `scpi` selects SCPI error conventions (the tester)."""
        self.model_handler = handler
        self.faults = faults
        self.scpi = scpi
        self.dropped = False
        self.late: bytes | None = None  # a reply held back by a `late` fault
        self.received = collections.deque(maxlen=100_000)
        self._defaults = {name: p.get_value() for name, p in self._properties.items()}
        # SCPI: a setting's command is its query without the "?".
        self._setting_headers = {
            query.decode().rstrip("?"): name for query, (name, _) in self._getters.items()
        }

    # ---- transport ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.dropped:
            raise errors.VisaIOError(constants.StatusCode.error_connection_lost)
        if self.late is not None:  # a held reply arrived after its read gave up: ahead of this
            self._output_buffers.append(self.late)
            self.late = None
        if self._input_buffer or not data.endswith(self._query_eom):
            self._input_buffer.extend(data)
            if not self._input_buffer.endswith(self._query_eom):
                return
            data = bytes(self._input_buffer)
            self._input_buffer = bytearray()
        message = data[: -len(self._query_eom)]
        fault = self._draw_fault(message)
        if fault == "drop":  # lost before it arrived; every operation fails until reopened
            self.dropped = True
            raise errors.VisaIOError(constants.StatusCode.error_connection_lost)
        if fault == "scpi_error":  # refused, not executed; a query gets an empty reply
            self.push_error("device_error")
            if _split_header(message)[0].endswith(b"?"):
                self._output_buffers.append(self._response_eom)
            return
        if fault == "prober_error":  # refused, not executed
            self._output_buffers.append(PROBER_FAULT_REPLY + self._response_eom)
            return
        self.received.append(message[:200])
        response = self._respond(message)
        if response is NoResponse:
            return
        if fault == "timeout":
            return  # executed, reply lost
        if fault == "late":  # executed; the reply comes after the read waiting for it gave up
            self.late = response + self._response_eom
            return
        if fault == "garble":
            response = self.faults.garble(response)  # type: ignore[union-attr]
        self._output_buffers.append(response + self._response_eom)

    def device_clear(self) -> None:
        """IEEE 488.2 device clear (viClear): pending input and output, a late reply
        included, are discarded; the error queue and settings are kept."""
        self._output_buffers.clear()
        self._input_buffer = bytearray()
        self.late = None

    def _draw_fault(self, message: bytes) -> str | None:
        """This message's injected fault, limited to the kinds this instrument can show."""
        if self.faults is None:
            return None
        return self.faults.draw(message, TESTER_KINDS if self.scpi else PROBER_KINDS)

    def read(self) -> tuple[bytes, bool]:
        """The whole pending reply at once (pyvisa-sim returns one byte per call)."""
        if self.dropped:
            raise errors.VisaIOError(constants.StatusCode.error_connection_lost)
        if not self._output_buffers:
            return b"", False
        return self._output_buffers.popleft(), True

    # ---- command dispatch ----------------------------------------------------------------
    def _respond(self, message: bytes) -> Any:
        message = message.strip()  # the same object when there is nothing to strip
        if not message:  # an empty program message (IEEE 488.2): nothing to do, no error
            return NoResponse
        header, args = _split_header(message)
        is_query = header.endswith(b"?")
        if self.scpi and not header.isupper():  # SCPI headers are case-insensitive
            header = header.upper()
            message = header + (b" " + args if args else b"")
        try:
            reply = self._dispatch(message, header.decode("ascii", "replace"), args)
        except ScpiError as err:
            self.push_error(err.key)
            return b"" if is_query else NoResponse
        if reply is None:
            if not self.scpi:
                return f"1: Unknown command {message.decode('ascii', 'replace')}".encode()
            self.push_error("command_error")
            return b"" if is_query else NoResponse
        if reply == b"" and not is_query:
            return NoResponse
        return reply

    def _dispatch(self, message: bytes, header: str, args: bytes) -> bytes | None:
        if self.model_handler is not None:
            reply = self.model_handler(header, args)
            if reply is not None:
                return reply
        if self.scpi and header == "*RST":
            for name, value in self._defaults.items():
                self._properties[name]._value = value
            self._clear_status()
            return b""
        if self.scpi and header == "*CLS":
            self._clear_status()
            return b""
        if self.scpi and not header.endswith("?") and header in self._setting_headers:
            if not args.strip():
                raise ScpiError("missing_parameter", header)
            return self._set(header, args)
        response = self._match(message) if message.isascii() else None  # SCPI is ASCII
        return None if response is None or response is NoResponse else response

    def _set(self, header: str, args: bytes) -> bytes | None:
        """Apply a YAML setter with SCPI errors (pyvisa-sim would reply instead)."""
        value = args.decode("ascii", "replace").strip()
        value = {"ON": "1", "OFF": "0"}.get(value.upper(), value)
        name = self._setting_headers.get(header)
        if name is None:
            return None
        prop = self._properties[name]
        if prop.specs and prop.specs.type in (int, float) and not NUMBER.fullmatch(value):
            raise ScpiError("data_type_error", value)  # Python would also take 1_6 or 'inf'
        try:
            typed = prop.specs.type(value) if prop.specs else value
        except ValueError as err:
            raise ScpiError("data_type_error", value) from err
        if isinstance(typed, float) and typed != typed:
            raise ScpiError("out_of_range", value)  # NaN passes pyvisa-sim's min/max checks
        try:
            prop.set_value(str(typed))
        except ValueError as err:
            raise ScpiError("out_of_range", value) from err
        return b""

    # ---- error queue -------------------------------------------------------------------
    def push_error(self, key: str) -> None:
        """Queue an error (bounded, -350 on overflow) and flag it in *ESR?."""
        for queue in self._error_queues.values():
            if len(queue._queue) >= ERROR_QUEUE_DEPTH:
                # SCPI: the newest entry is replaced by -350 and further errors are lost.
                queue._queue[-1] = queue._error_map["queue_overflow"]
                self._error_map["queue_overflow"].set("queue_overflow")
                continue
            queue.append(key)
        if key in self._error_map:
            self._error_map[key].set(key)

    def _clear_status(self) -> None:
        for queue in self._error_queues.values():
            queue.clear()
        for register in self._status_registers.values():
            register.clear()

    def setting(self, name: str) -> float:
        """Current value of a YAML property."""
        return self._properties[name].get_value()  # type: ignore[return-value]


class WaferVisaLibrary(SimVisaLibrary):
    """pyvisa-sim library whose devices are backed by one SimulatedWafer."""

    wafer: SimulatedWafer
    prober: ProberModel

    def bind(self, wafer: SimulatedWafer, faults: FaultInjector | None) -> None:
        """Attach the models to the parsed devices."""
        self.wafer = wafer
        self.prober = ProberModel(wafer)
        prober_dev = self.devices[PROBER_RESOURCE]
        tester_dev = self.devices[TESTER_RESOURCE]
        for dev in (prober_dev, tester_dev):
            dev.__class__ = ModelDevice  # same layout, richer behaviour
        prober_dev.attach(lambda h, a: _text_reply(self.prober.handle(_join(h, a))), faults,
                          scpi=False)
        tester = TesterModel(wafer, self.prober, tester_dev.setting)
        tester_dev.attach(tester.handle, faults, scpi=True)
        idn = tester_dev._dialogues[b"*IDN?"].decode()
        rows, cols = wafer.shape
        tester_dev._dialogues[b"*IDN?"] = idn.format(rows=rows, cols=cols).encode()

    def open(self, session, resource_name, access_mode=constants.AccessModes.no_lock,
             open_timeout=constants.VI_TMO_IMMEDIATE):  # type: ignore[no-untyped-def]
        """Opening a resource again is how a client recovers a dropped connection."""
        result = super().open(session, resource_name, access_mode, open_timeout)
        try:
            device = self.devices[str(pyvisa.rname.parse_resource_name(resource_name))]
        except (KeyError, pyvisa.rname.InvalidResourceName):
            return result
        if isinstance(device, ModelDevice):
            device.dropped = False
            device.device_clear()
        return result

    def clear(self, session):  # type: ignore[no-untyped-def]
        """viClear: a device clear of the session's instrument (pyvisa-sim has none)."""
        try:
            device = self.sessions[session].device
        except (KeyError, AttributeError):
            return constants.StatusCode.error_invalid_object
        if isinstance(device, ModelDevice):
            if device.dropped:
                raise errors.VisaIOError(constants.StatusCode.error_connection_lost)
            device.device_clear()
        return constants.StatusCode.success


def _join(header: str, args: bytes) -> str:
    return f"{header} {args.decode('ascii', 'replace')}".strip()


def _text_reply(reply: str | None) -> bytes | None:
    return None if reply is None else reply.encode()


def resource_manager(seed: int = 0, config: WaferConfig | None = None) -> pyvisa.ResourceManager:
    """A pyvisa ResourceManager whose resources are a freshly made simulated wafer.

    The prober and the crossbar tester share the wafer; `rm.visalib.wafer` is the model (for
    tests and benchmarks: ground truth the station itself must never read).
    """
    config = config or WaferConfig()
    lib = WaferVisaLibrary(f"{YAML_PATH}")
    # pyvisa caches libraries by path; drop ours from the cache so the next call is fresh.
    pyvisa.highlevel.VisaLibraryBase._registry.pop((WaferVisaLibrary, lib.library_path), None)
    wafer = SimulatedWafer(config, seed)
    faults = FaultInjector(config.faults) if config.faults.any else None
    lib.bind(wafer, faults)
    return pyvisa.ResourceManager(lib)


__all__ = ["PROBER_RESOURCE", "TESTER_RESOURCE", "ModelDevice", "resource_manager"]
