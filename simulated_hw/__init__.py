"""A simulated wafer of MTJ crossbar dies, reachable through pyvisa-sim."""

from .config import DefectConfig, DeviceConfig, FaultConfig, WaferConfig, WriteConfig
from .physics import Defect, SimulatedWafer
from .tester_model import MAX_INFER_VECTORS
from .visa import PROBER_RESOURCE, TESTER_RESOURCE, resource_manager

__all__ = [
    "MAX_INFER_VECTORS",
    "PROBER_RESOURCE",
    "TESTER_RESOURCE",
    "Defect",
    "DefectConfig",
    "DeviceConfig",
    "FaultConfig",
    "SimulatedWafer",
    "WaferConfig",
    "WriteConfig",
    "resource_manager",
]
