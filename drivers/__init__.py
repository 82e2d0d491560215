"""VISA/SCPI drivers: a probe station interface with a Velox dialect and a crossbar tester.

Drivers know nothing of training or of the station; they turn instrument commands into
Python calls, numpy arrays and exceptions.
"""

from drivers.blocks import decode_block, encode_array, encode_block
from drivers.controls import HasControls, control, in_range, measurement, one_of
from drivers.crossbar import AP, KEEP, CrossbarTester, P
from drivers.errors import (
    BlockError,
    CommunicationError,
    ConnectionLost,
    DriverError,
    InstrumentError,
    InstrumentTimeout,
    LimitError,
    ProberError,
    ReplyError,
)
from drivers.prober import DieIndex, Prober, VeloxProber
from drivers.scpi import SCPIInstrument

__all__ = [
    "AP",
    "KEEP",
    "BlockError",
    "CommunicationError",
    "ConnectionLost",
    "CrossbarTester",
    "DieIndex",
    "DriverError",
    "HasControls",
    "InstrumentError",
    "InstrumentTimeout",
    "LimitError",
    "P",
    "Prober",
    "ProberError",
    "ReplyError",
    "SCPIInstrument",
    "VeloxProber",
    "control",
    "decode_block",
    "encode_array",
    "encode_block",
    "in_range",
    "measurement",
    "one_of",
]
