"""The station: drivers composed from a station file, procedures, sweeps, store, CLI, service."""

__version__ = "0.1.0"
