"""Every number of the simulated wafer, in one validated pydantic model.

The defaults are assumptions (the paper's body could not be read); docs/hardware-model.md gives
the reason for each. Units are in the field names.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Model):
    """A healthy 1T1MTJ cell."""

    r_p_median_ohm: float = Field(5_000.0, gt=0)
    r_p_sigma_log: float = Field(0.05, ge=0, description="lognormal spread of R_P")
    tmr_mean: float = Field(1.2, gt=0, description="R_AP = R_P (1 + TMR)")
    tmr_sigma: float = Field(0.12, ge=0)
    tmr_min: float = Field(0.2, gt=0, description="TMR draws are clipped here")
    r_access_ohm: float = Field(1_000.0, ge=0, description="access transistor in series")
    r_access_sigma_rel: float = Field(0.02, ge=0)
    read_noise_rel: float = Field(0.01, ge=0, description="Gaussian noise on each read")


class WriteConfig(_Model):
    """Pulse-driven switching: WER(V, t) = exp(-(t / t_nom) ln(1/WER_nom) exp(k (V - V_nom)))."""

    nominal_pulse_v: float = Field(0.9, gt=0)
    nominal_pulse_width_s: float = Field(50e-9, gt=0)
    write_error_rate_nominal: float = Field(1e-3, gt=0, lt=1)
    voltage_slope_per_v: float = Field(12.0, gt=0, description="k: steepness vs amplitude")
    breakdown_v: float = Field(1.5, gt=0, description="above it the barrier breaks: a short")


class DefectConfig(_Model):
    """Per-die defect rates drawn from wafer-level distributions."""

    mean_defect_rate: float = Field(0.01, ge=0, lt=0.5,
                                    description="expected wafer mean of the per-die rates "
                                    "(bad dies included, failed lines not), all kinds")
    rate_sigma_log: float = Field(0.5, ge=0, description="die-to-die lognormal spread")
    fraction_short: float = Field(0.5, ge=0)
    fraction_open: float = Field(0.2, ge=0)
    fraction_stuck_p: float = Field(0.15, ge=0)
    fraction_stuck_ap: float = Field(0.15, ge=0)
    bad_die_probability: float = Field(0.06, ge=0, le=1)
    bad_die_rate_factor: float = Field(4.0, ge=1)
    failed_row_probability: float = Field(0.05, ge=0, le=1, description="per die")
    failed_col_probability: float = Field(0.05, ge=0, le=1, description="per die")
    r_short_min_ohm: float = Field(20.0, gt=0)
    r_short_max_ohm: float = Field(300.0, gt=0)
    r_open_min_ohm: float = Field(1e6, gt=0)
    r_open_max_ohm: float = Field(1e9, gt=0)

    @model_validator(mode="after")
    def _check(self) -> DefectConfig:
        total = (
            self.fraction_short + self.fraction_open + self.fraction_stuck_p
            + self.fraction_stuck_ap
        )
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"defect fractions must add up to 1, got {total:g}")
        if self.r_short_min_ohm > self.r_short_max_ohm:
            raise ValueError("r_short_min_ohm must not exceed r_short_max_ohm")
        if self.r_open_min_ohm > self.r_open_max_ohm:
            raise ValueError("r_open_min_ohm must not exceed r_open_max_ohm")
        return self

    def fractions(self) -> tuple[float, float, float, float]:
        """Short, open, stuck-P, stuck-AP shares of all defects."""
        return (self.fraction_short, self.fraction_open, self.fraction_stuck_p,
                self.fraction_stuck_ap)


class FaultConfig(_Model):
    """Injected communication faults, per VISA operation; all zero means a perfect link."""

    timeout_rate: float = Field(0.0, ge=0, le=1)
    drop_rate: float = Field(0.0, ge=0, le=1, description="session lost; reopen needed")
    garble_rate: float = Field(0.0, ge=0, le=1, description="truncated or corrupted reply")
    scpi_error_rate: float = Field(0.0, ge=0, le=1, description="spurious -300 error")
    prober_error_rate: float = Field(0.0, ge=0, le=1, description="prober 710 fault")
    late_rate: float = Field(0.0, ge=0, le=1, description="reply arrives after the read "
                             "timed out (read by the next query unless the client clears)")
    seed: int = 0

    @property
    def rates(self) -> tuple[float, ...]:
        """Per-message probability of each fault kind (faults.FAULT_KINDS order)."""
        return (self.timeout_rate, self.drop_rate, self.garble_rate, self.scpi_error_rate,
                self.prober_error_rate, self.late_rate)

    @property
    def any(self) -> bool:
        return any(r > 0 for r in self.rates)

    @model_validator(mode="after")
    def _one_fault_per_message(self) -> FaultConfig:
        if sum(self.rates) > 1:
            raise ValueError("fault rates add up to more than 1")
        return self


class WaferConfig(_Model):
    """The simulated wafer: geometry, devices, writes, defects and faults."""

    grid_cols: int = Field(6, ge=1)
    grid_rows: int = Field(6, ge=1)
    rows: int = Field(100, ge=1, le=4096)
    cols: int = Field(200, ge=1, le=4096)
    device: DeviceConfig = DeviceConfig()
    write: WriteConfig = WriteConfig()
    defects: DefectConfig = DefectConfig()
    faults: FaultConfig = FaultConfig()

    @property
    def n_dies(self) -> int:
        return self.grid_cols * self.grid_rows
