"""Job kinds: the pydantic request of each job, its station checks and the code that runs it.

Arrays travel as base64 of .npy bytes inside JSON (parsed header first, no pickles, bounded
size); results leave as .npz. Every request is checked against the station (wafer map, array
shape, safety limits) before it is queued, so a bad job is refused with a message, not run.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from drivers.prober import DieIndex

from .config import StationConfig

if TYPE_CHECKING:
    from training.mapping import ArrayLayout, DeviceModel

log = logging.getLogger(__name__)

MAX_ARRAY_BYTES = 4 * 1024 * 1024
MAX_INFER_BATCH = 10_000
#: an infer job's result (its float32 currents) is held in memory and kept in the queue file
MAX_INFER_RESULT_BYTES = 64 * 1024 * 1024


class RejectedJobError(ValueError):
    """A request that is well formed but not acceptable for this station (HTTP 422)."""


class StopRequestedError(RuntimeError):
    """A job stopped at a safe point on request (cancel or shutdown)."""


# ---- arrays in JSON: base64 of .npy bytes ------------------------------------------------------
def encode_array(array: np.ndarray) -> str:
    """Base64 text of an array's .npy bytes (dtype and shape included)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _npy_header(buf: io.BytesIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy bytes in buf, which is left at the data."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(buf)
        header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return header(buf)  # type: ignore[no-any-return]
    except Exception as err:  # any parse failure is the sender's fault
        raise ValueError(f"not a valid .npy array: {err}") from None


def array_summary(value: str) -> dict[str, Any]:
    """dtype and shape of base64 .npy text (as stored for a job) from its header alone: listing
    jobs must not decode megabytes of inputs."""
    try:
        shape, _fortran, dtype = _npy_header(io.BytesIO(base64.b64decode(value[:1024])))
    except (ValueError, binascii.Error):  # a header longer than the prefix: decode it all
        a = to_array(value)
        shape, dtype = a.shape, a.dtype
    return {"dtype": str(dtype), "shape": list(shape)}


def decode_npy(data: bytes, max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """Parse .npy bytes safely: header checked before any allocation, no pickles."""
    buf = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(buf)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"array dtype {dtype} not allowed (use integer, bool or float)")
    count = math.prod(shape)
    payload = data[buf.tell():]
    if count * dtype.itemsize > max_bytes:
        raise ValueError(f"array of {count * dtype.itemsize} bytes exceeds {max_bytes}")
    if len(payload) != count * dtype.itemsize:
        raise ValueError(f".npy header announces {count} values of {dtype}, the data holds "
                         f"{len(payload)} bytes")
    array = np.frombuffer(payload, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def to_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if not isinstance(value, str):
        raise ValueError("expected base64 text of .npy bytes")
    if len(value) > MAX_ARRAY_BYTES * 4 // 3 + 1024:
        raise ValueError(f"array text longer than the limit ({MAX_ARRAY_BYTES} bytes of data)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None
    return decode_npy(raw)


NpyArray = Annotated[
    np.ndarray,
    BeforeValidator(to_array),
    PlainSerializer(encode_array, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64",
                    "contentMediaType": "application/x-npy",
                    "description": "base64 of numpy .npy bytes (np.save, allow_pickle=False)"}),
]


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---- job requests ------------------------------------------------------------------------------
SmallInt = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
Die = tuple[SmallInt, SmallInt]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    def unused_fields(self) -> set[str]:
        """Fields this request does not use (left out of what the queue stores and shows)."""
        return set()

    def stored_params(self) -> dict[str, Any]:
        """The request as the queue keeps it (kind apart), arrays as base64 .npy."""
        return self.model_dump(mode="json", exclude={"kind", *self.unused_fields()})


class SweepJob(_Job):
    """Measure the defect map of every planned die (the station file's wafer plan)."""

    kind: Literal["sweep"] = "sweep"
    resume_run: Annotated[int, Field(ge=1, le=2**31)] | None = Field(
        None, description="continue this unfinished sweep run of the store")


class MeasureJob(_Job):
    """Measure one die's defect map."""

    kind: Literal["measure"] = "measure"
    die: Die


class WriteOverrides(_Job):
    """Write settings for one job; checked against the station's safety limits."""

    pulse_v: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="starting pulse amplitude")
    pulse_width_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_write_pulses: int | None = Field(None, ge=1, le=50)


#: trained methods a program or infer job can take from the store (instruments.offline's
#: TRAINED_BY: baseline weights read plainly or by common mode, HAT, SAT, SAT placed per die)
ProgramMethod = Literal["unaware", "unaware_cm", "hat", "sat", "placed"]


class _TrainedSolution(_Job):
    """A trained method's weights and layout, from the run store, instead of raw values."""

    die: Die
    method: ProgramMethod | None = Field(
        None, description="a trained method: its weights and layout for the die, from the "
        "store (hat and placed: the dies its sweep measured)")
    train_run: Annotated[int, Field(ge=1, le=2**31)] | None = Field(
        None, description="the training run (default: the latest of the method's kind on "
        "the latest finished sweep)")

    def unused_fields(self) -> set[str]:
        """With a method, the raw fields it replaces (the queue keeps no network that was
        never used, and a stored job reads back as it was given)."""
        raw = set(type(self).model_fields) & (NETWORK_FIELDS | {"targets"})
        return raw if self.method is not None else set()

    def _one_source(self, fields: set[str], what: str) -> None:
        """Raise unless either `method` or the raw `fields` describe the job: with a method,
        none of those may be given (even at its default: the method's may differ)."""
        if self.method is None and self.train_run is not None:
            raise ValueError("train_run goes with a method")
        given = fields & self.model_fields_set
        if self.method is not None and given:
            raise ValueError(f"give a method or {what}, not both (the method brings its "
                             f"own: {', '.join(sorted(given))})")

    def program(self, store_path: Path, read_voltage_v: float, shape: tuple[int, int]) -> Any:
        """The method's `instruments.offline.TrainedProgram` for the die, read at the station's
        read voltage (RejectedJobError if the store cannot provide it, or it was trained for
        an array of another shape than the station's). Pins `train_run` to the run found, so
        a job checked at submission runs with the same training whatever is trained since."""
        from .offline import trained_program
        from .store import StoreError

        assert self.method is not None
        try:
            prog = trained_program(store_path, self.method, DieIndex(*self.die), self.train_run,
                                   read_voltage_v)
        except (StoreError, ValueError, FileNotFoundError) as err:
            raise RejectedJobError(str(err)) from None
        if (prog.layout.rows, prog.layout.cols) != tuple(shape):
            raise RejectedJobError(f"training run {prog.train_run} is for a {prog.layout.rows} "
                                   f"x {prog.layout.cols} array, the station's is {shape}")
        self.train_run = prog.train_run
        return prog


class ProgramJob(WriteOverrides, _TrainedSolution):
    """Program device states (0 P, 1 AP, 2 leave), or a trained method, into one die with
    write-verify."""

    kind: Literal["program"] = "program"
    targets: NpyArray | None = Field(None, description="uint8 (rows, cols) of 0/1/2, as "
                                     "base64 .npy (or a method)")

    @model_validator(mode="after")
    def _targets_or_method(self) -> ProgramJob:
        self._one_source({"targets"}, "targets")
        if self.method is None and self.targets is None:
            raise ValueError("a program job needs targets or a method")
        return self


#: an infer job's network: given, or brought by a method
NETWORK_FIELDS = {"sizes", "output_copies", "copy_combine", "readout", "output_reads", "device"}


class InferJob(_TrainedSolution):
    """Run binary inputs through the network programmed on a die (described by the network
    fields, or by a trained method)."""

    kind: Literal["infer"] = "infer"
    inputs: NpyArray = Field(description="(n, n_in) of 0/1, as base64 .npy")
    sizes: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (100, 90, 10), min_length=2, max_length=8, description="network layer sizes")
    output_copies: int = Field(1, ge=1, le=64, description="copies of each output neuron")
    copy_combine: Literal["mean", "median"] = Field(
        "mean", description="how a class's copies make its score (with output_copies > 1)")
    readout: Literal["diff", "common_mode"] = Field("diff", description="pair read-out")
    output_reads: int = Field(1, ge=1, le=64, description="chip reads of the output layer "
                              "per input (common_mode only)")
    device: Literal["auto", "measured", "nominal"] = Field(
        "auto", description="healthy-cell conductances the common-mode check expects: "
        "'measured' (fitted from the store's latest finished sweep, as training uses), "
        "'nominal' (the design's), 'auto' (measured if the store holds a finished sweep)")
    pinned_to: Annotated[int, Field(ge=1, le=2**31)] | None = Field(
        None, description="set by the service, not given: the program job whose training a "
        "method's infer took (train_run not given), checked again when the infer starts")

    @model_validator(mode="after")
    def _network_or_method(self) -> InferJob:
        self._one_source(NETWORK_FIELDS, "a network")
        return self

    def unused_fields(self) -> set[str]:
        return super().unused_fields() | ({"pinned_to"} if self.pinned_to is None else set())

    def layout(self, rows: int, cols: int, read_voltage_v: float,
               device: DeviceModel | None = None) -> ArrayLayout:
        """`ArrayLayout.default` of this network on a rows x cols array (same defaults;
        ValueError if it does not fit), read at the station's read voltage (the common-mode
        check compares currents with the expected ones at that voltage) with `device`'s
        conductances (default: nominal). The experiment's network is sizes (100, 70, 10),
        output_copies 3, readout "common_mode", output_reads 4."""
        from training.mapping import ArrayLayout, DeviceModel

        device = (device or DeviceModel()).model_copy(update={"v_read_v": read_voltage_v})
        return ArrayLayout.default(self.sizes, rows, cols, self.output_copies,
                                   self.copy_combine, device=device, readout=self.readout,
                                   output_reads=self.output_reads)

    def device_model(self, store_path: Path, *, fit: bool = True
                     ) -> tuple[str, DeviceModel | None]:
        """(which, conductances) for this job: see `device`. RejectedJobError if 'measured'
        is asked for and the store holds no finished sweep. fit=False only checks that (no
        conductances: the check at submission does not load the sweep's arrays)."""
        from training.mapping import DeviceModel

        from .loop import latest_measurement_run, load_measurements
        from .store import RunStore, StoreError

        if self.device == "nominal":
            return "nominal", DeviceModel()
        try:
            with RunStore(store_path, read_only=True) as store:
                run_id = latest_measurement_run(store)
                measured = load_measurements(store, run_id) if fit else None
        except (StoreError, FileNotFoundError) as err:
            if self.device == "auto":
                return "nominal", DeviceModel()
            raise RejectedJobError(f"device 'measured' needs a finished sweep: {err}") from None
        return f"measured (run {run_id})", None if measured is None else measured.device_model()


class TrainJob(_Job):
    """Train on the store's measured maps (instruments.offline.train_from_store)."""

    kind: Literal["train"] = "train"
    method: Literal["baseline", "hat", "sat"]
    seed: Seed = 0
    data_dir: str | None = Field(None, max_length=4096)


class EvaluateJob(_Job):
    """Evaluate the store's trained weights (instruments.offline.evaluate_from_store)."""

    kind: Literal["evaluate"] = "evaluate"
    seed: Seed | None = None  # default: the training's
    data_dir: str | None = Field(None, max_length=4096)


JobRequest = Annotated[SweepJob | MeasureJob | ProgramJob | InferJob | TrainJob | EvaluateJob,
                       Field(discriminator="kind")]
REQUEST = TypeAdapter(JobRequest)
ARRAY_FIELDS = ("targets", "inputs")


@dataclass(frozen=True)
class StationInfo:
    """What request validation needs to know of the station (read once by the worker)."""

    config: StationConfig
    wafer_map: tuple[DieIndex, ...]
    shape: tuple[int, int]
    identities: dict[str, str]


def _write_config(config: StationConfig, job: WriteOverrides) -> StationConfig:
    """The station config with a job's write overrides, re-validated against safety limits."""
    overrides = {k: v for k, v in job.model_dump(include=set(WriteOverrides.model_fields))
                 .items() if v is not None}
    if not overrides:
        return config
    data = config.model_dump()
    data["measurement"].update(overrides)
    try:
        return StationConfig.model_validate(data)
    except ValidationError as err:
        msgs = "; ".join(_problem(e) for e in err.errors())
        raise RejectedJobError(msgs) from None


def _problem(error: Any) -> str:
    """One pydantic error of a job's station settings, naming the setting if it has one."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    loc = ".".join(map(str, error["loc"]))
    return f"{loc} = {error['input']!r}: {msg}" if loc else msg


#: (id, kind, state, params) of the job that last wrote a die (`JobStore.last_writer`)
DieWriter = tuple[int, str, str, dict[str, Any]]


def pin_to_programmed(job: InferJob, writer: DieWriter | None, starting: bool = False) -> None:
    """An infer job by method reads the training its die holds: `writer` is the newest job
    that wrote the die's cells, checked when the job is queued (a program still queued or
    running counts) and again when it starts (`starting`: the program must have succeeded).
    A die read with another training's layout gives nonsense (88 % error), so a die last
    written by a measurement, by a program that did not succeed, or by another method or
    training is refused; without train_run the job takes the program's (and `pinned_to`
    records it: at the start a missing or raw-targets writer is refused, not trusted). A
    train_run the user gave is trusted for a die with no program on record, or one
    programmed with raw targets (outside the service, or from targets computed outside)."""
    if job.method is None:
        return
    die = f"{job.die[0]},{job.die[1]}"
    given = job.train_run is not None and job.pinned_to is None  # by the user, not the pin
    if writer is None:
        if job.pinned_to is not None:  # its program was cancelled before it started
            raise RejectedJobError(f"program job {job.pinned_to}, whose training this infer "
                                   f"reads, never wrote die {die}; program the die first")
        if not given:
            raise RejectedJobError(f"no program job on record puts a trained method on die "
                                   f"{die}; program it first (or give train_run)")
        return
    job_id, kind, state, params = writer
    if kind != "program":
        raise RejectedJobError(f"{kind} job {job_id} ({state}) rewrites the cells of die {die} "
                               "after its last program (a measurement writes every cell); "
                               "program the die again first")
    if state not in (("succeeded",) if starting else ("queued", "running", "succeeded")):
        raise RejectedJobError(f"die {die}'s last program job {job_id} is {state}: the die "
                               "holds at most part of it; program the die again first")
    held, held_run = params.get("method"), params.get("train_run")
    if held is None:
        if not given:
            raise RejectedJobError(f"die {die} was last programmed with raw targets (job "
                                   f"{job_id}); give train_run to read it as a trained method")
        return
    from .offline import PER_DIE_LAYOUTS, TRAINED_BY

    def programmed(method: str) -> tuple[str, bool]:  # the weights' trainer, the layout kind
        return TRAINED_BY[method], method in PER_DIE_LAYOUTS

    if programmed(held) != programmed(job.method):  # unaware and unaware_cm read one program
        raise RejectedJobError(f"die {die} holds {held!r} (training run {held_run}, job "
                               f"{job_id}), not {job.method!r}")
    if job.train_run is not None and job.train_run != held_run:
        raise RejectedJobError(f"die {die} holds training run {held_run} of {held!r} (job "
                               f"{job_id}), not training run {job.train_run}")
    if not given:  # pinned: the start checks against this program, never trusts the run
        job.train_run, job.pinned_to = held_run, job.pinned_to or job_id


def validate_job(job: JobRequest, info: StationInfo, store_path: Path,
                 last_writer: Callable[[Die], DieWriter | None] | None = None) -> None:
    """Station-dependent checks before queueing; raise RejectedJobError with a clear message.
    last_writer (`JobStore.last_writer`): an infer by method is pinned to what its die holds
    (`pin_to_programmed`)."""
    die = getattr(job, "die", None)
    if die is not None and DieIndex(*die) not in info.wafer_map:
        raise RejectedJobError(f"die {die[0]},{die[1]} is not on the wafer map "
                          f"({len(info.wafer_map)} dies)")
    if isinstance(job, InferJob) and last_writer is not None:
        pin_to_programmed(job, last_writer(job.die))
    if isinstance(job, WriteOverrides):
        _write_config(info.config, job)
    if isinstance(job, ProgramJob) and job.method is not None:
        job.program(store_path, info.config.measurement.read_voltage_v, info.shape)
    elif isinstance(job, ProgramJob):
        t = job.targets
        assert t is not None
        if t.shape != info.shape:
            raise RejectedJobError(f"targets must have the array's shape {info.shape}, "
                                   f"got {t.shape}")
        if t.dtype.kind not in "biu" or not np.isin(t, (0, 1, 2)).all():
            raise RejectedJobError("targets must be integers 0 (P), 1 (AP) or 2 (leave)")
    if isinstance(job, InferJob):
        _check_inputs(job, info, store_path)
        if job.device == "measured":
            job.device_model(store_path, fit=False)
    if isinstance(job, SweepJob) and job.resume_run is not None:
        _check_resumable(store_path, job.resume_run)
    if getattr(job, "data_dir", None) and not Path(job.data_dir).is_dir():  # type: ignore[arg-type]
        raise RejectedJobError(f"data_dir {job.data_dir!r} is not a folder on the server")


def _check_inputs(job: InferJob, info: StationInfo, store_path: Path) -> None:
    x = job.inputs
    read_v = info.config.measurement.read_voltage_v
    if job.method is not None:
        layout = job.program(store_path, read_v, info.shape).layout
    else:
        try:
            layout = job.layout(*info.shape, read_v)
        except ValueError as err:
            raise RejectedJobError(str(err)) from None
    if x.ndim != 2 or x.shape[1] != layout.sizes[0] or not 1 <= x.shape[0] <= MAX_INFER_BATCH:
        raise RejectedJobError(f"inputs must have shape (n, {layout.sizes[0]}) with 1 <= n <= "
                          f"{MAX_INFER_BATCH}, got {x.shape}")
    if x.dtype.kind not in "biuf" or not np.isin(x, (0, 1)).all():
        raise RejectedJobError("inputs must be binary (0 or 1)")
    reads = sum(layout.reads(i) for i in range(len(layout.layers)))  # per input vector
    per_input = reads * info.shape[1] * 4  # float32 currents of every column
    if x.shape[0] * per_input > MAX_INFER_RESULT_BYTES:
        raise RejectedJobError(
            f"{x.shape[0]} inputs would return {x.shape[0] * per_input / 2**20:.0f} MiB of "
            f"currents ({reads} chip reads of {info.shape[1]} columns per input; at most "
            f"{MAX_INFER_RESULT_BYTES // 2**20} MiB): send at most "
            f"{MAX_INFER_RESULT_BYTES // per_input} inputs per job")


def _check_resumable(store_path: Path, run_id: int) -> None:
    from .store import RunStore, StoreError
    from .sweep import check_resumable

    try:
        with RunStore(store_path, read_only=True) as store:
            check_resumable(store, run_id)
    except (StoreError, ValueError) as err:
        raise RejectedJobError(str(err)) from None


# ---- running jobs ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a job produced: small JSON facts and arrays (served as .npz)."""

    summary: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class JobContext:
    """Everything a job runner may use; only ever built inside the worker thread."""

    station: Any  # instruments.station.Station (or a test wrapper of one)
    store_path: Path
    stop: Any  # instruments.interrupts.StopFlag
    progress: Callable[[int, int | None, str], None]
    note: Callable[..., None]
    job_id: int = 0
    #: the job that last wrote a die before this one (`JobStore.last_writer`), if known
    last_writer: Callable[[Die], DieWriter | None] | None = None

    def check_stop(self, where: str = "before touching the instruments") -> None:
        if self.stop.requested:
            raise StopRequestedError(f"stopped {where}")


@contextmanager
def _overridden(station: Any, job: WriteOverrides) -> Iterator[None]:
    """The station's write settings overridden for one job (safety re-checked) and applied
    to the tester, then restored: the job runs with its settings whether or not a reconnect
    happens (which re-applies the station's), and none of them outlives it."""
    original = station.config
    station.config = _write_config(original, job)
    succeeded = False
    try:
        station.retry("apply the job's write settings", station.configure)
        yield
        succeeded = True
    finally:
        station.config = original
        try:
            station.retry("restore the write settings", station.configure)
        except Exception as err:
            if succeeded:
                raise
            # the link may be what failed the job; any reconnect re-applies the settings
            log.warning("write settings not restored after a failed job: %s", err)


@contextmanager
def _at_die(ctx: JobContext, die: Die, what: str) -> Iterator[DieIndex]:
    """Contact one die for a job, with progress 0/1 -> 1/1 (stop honoured before contact)."""
    ctx.check_stop()
    ctx.progress(0, 1, f"{what} die {die[0]},{die[1]}")
    index = DieIndex(*die)
    with ctx.station.at_die(index):
        yield index
    ctx.progress(1, 1, f"{what} die {die[0]},{die[1]}: done")


def run_measure(ctx: JobContext, job: MeasureJob) -> Outcome:
    from .defect_map import measure_defect_map
    from .sweep import die_arrays

    with _at_die(ctx, job.die, "measuring"):
        m = measure_defect_map(ctx.station)
    return Outcome({"die": list(job.die), "counts": m.counts(), "remeasured": m.remeasured,
                    "pulses": m.pulses}, die_arrays(m))


def run_program(ctx: JobContext, job: ProgramJob) -> Outcome:
    from drivers.crossbar import KEEP

    from .programming import program_verified

    st, source = ctx.station, {}
    targets = job.targets
    if job.method is not None:  # train_run pinned at submission
        prog = job.program(ctx.store_path, st.config.measurement.read_voltage_v,
                           st.tester.shape)
        targets = prog.layout.target_states(prog.weights)
        source = {"method": job.method, "train_run": prog.train_run}
    assert targets is not None
    with _overridden(st, job), _at_die(ctx, job.die, "programming"):
        r = program_verified(st, targets.astype(np.uint8))
    addressed = targets != KEEP
    return Outcome({"die": list(job.die), **source, "pulses": r.pulses,
                    "final_pulse_v": r.final_pulse_v, "fidelity": r.fidelity(addressed)},
                   {"readback_ohm": r.readback_ohm, "verified": r.verified})


def run_infer(ctx: JobContext, job: InferJob) -> Outcome:
    st = ctx.station
    read_v = st.config.measurement.read_voltage_v
    if job.method is not None:
        if ctx.last_writer is not None:  # what the queue did since this job was queued
            pin_to_programmed(job, ctx.last_writer(job.die), starting=True)
        prog = job.program(ctx.store_path, read_v, st.tester.shape)
        layout, device = prog.layout, prog.layout.device
        which = f"{job.method} (training run {prog.train_run}, sweep run {prog.sweep_run})"
    else:
        which, fitted = job.device_model(ctx.store_path)
        assert fitted is not None
        device = fitted
        layout = job.layout(*st.tester.shape, read_v, device)
    currents: list[np.ndarray] = []

    def column_currents(rows: np.ndarray) -> np.ndarray:
        currents.append(st.column_currents(
            rows, lambda: ctx.check_stop("between inference queries")).astype(np.float32))
        return currents[-1]

    with _at_die(ctx, job.die, "inferring on"):
        predictions = layout.infer(job.inputs.astype(np.uint8), column_currents)
    arrays = {"predictions": predictions.astype(np.int64)}
    arrays.update({f"currents_{i}": c for i, c in enumerate(currents)})
    return Outcome({"die": list(job.die), "n": len(predictions), "device": which,
                    "g_p_s": device.g_p_s, "g_ap_s": device.g_ap_s}, arrays)


def run_sweep_job(ctx: JobContext, job: SweepJob) -> Outcome:
    from .store import RunStore, parse_die_key
    from .sweep import SweepInterrupted, sweep_run

    run: dict[str, int] = {}  # the run's id and its planned dies, once known

    def planned(run_id: int, n: int) -> None:
        run.update(id=run_id, total=n, done=0)
        ctx.note(run_id=run_id)
        ctx.progress(0, n, "starting")

    def progress(die: DieIndex, _m: object) -> None:
        run["done"] += 1
        ctx.progress(run["done"], run["total"], f"die {die.col},{die.row}")

    with RunStore(ctx.store_path) as store:
        try:
            run_id, measured = sweep_run(ctx.station, store, job.resume_run, stop=ctx.stop,
                                         progress=progress, planned=planned)
        except SweepInterrupted as err:
            raise StopRequestedError(f"stopped before die {err.die}; resume with 'mtjlab jobs "
                                     f"--resume {ctx.job_id}' (run {run['id']})") from err
        keys = store.dies_done(run_id)
        kinds = np.stack([store.array(run_id, k, "kinds") for k in keys])
    return Outcome({"run_id": run_id, "dies": len(keys), "measured_now": len(measured)},
                   {"dies": np.array([parse_die_key(k) for k in keys], dtype=np.int32),
                    "kinds": kinds})


def _plain(value: Any, arrays: dict[str, np.ndarray], name: str) -> Any:
    """JSON-able form of a loop function's result; arrays and tensors go to `arrays`."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        arrays[name] = value
        return {"array": name, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v, arrays, f"{name}.{k}" if name else str(k))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, arrays, f"{name}.{i}") for i, v in enumerate(value)]
    if hasattr(value, "__dataclass_fields__"):
        return _plain(vars(value), arrays, name)
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(), arrays, name)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _run_offline(fn: Callable[..., Any], ctx: JobContext, **kwargs: Any) -> Outcome:
    """Run a store-based training or evaluation function as a job."""
    name = fn.__name__
    ctx.check_stop()
    ctx.progress(0, None, f"{name} running")
    result = fn(str(ctx.store_path), **kwargs, quiet=True)
    arrays: dict[str, np.ndarray] = {}
    summary = _plain(result, arrays, "")
    ctx.progress(1, 1, f"{name} done")
    return Outcome({"result": summary}, arrays)


def run_train(ctx: JobContext, job: TrainJob) -> Outcome:
    from .offline import train_from_store

    def each_epoch(stage: str, done: int, total: int, loss: float) -> None:
        # cancel / shutdown: stop between epochs; this method is not stored
        ctx.check_stop(f"after {stage} epoch {done}/{total}; {job.method} not stored")
        ctx.progress(done, total, f"{stage}: epoch {done}/{total}, loss {loss:.3f}")

    def each_step(what: str) -> None:  # after the last epoch: placement, then storing
        ctx.check_stop(f"before {what}; {job.method} not stored")
        ctx.progress(1, 1, what)

    return _run_offline(train_from_store, ctx, method=job.method, seed=job.seed,
                        data_dir=job.data_dir, on_epoch=each_epoch, on_step=each_step)


def run_evaluate(ctx: JobContext, job: EvaluateJob) -> Outcome:
    from .offline import evaluate_from_store

    return _run_offline(evaluate_from_store, ctx, seed=job.seed, data_dir=job.data_dir)


def warm_up() -> None:
    """Import what the runners import, so the first job does not pay for torch's import."""
    from training import mapping  # noqa: F401

    from . import defect_map, programming, sweep  # noqa: F401


RUNNERS: dict[str, Callable[[JobContext, Any], Outcome]] = {
    "sweep": run_sweep_job, "measure": run_measure, "program": run_program,
    "infer": run_infer, "train": run_train, "evaluate": run_evaluate,
}


