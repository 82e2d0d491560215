"""Training, evaluation and reports from a run store: `mtjlab train`, `evaluate`, `report`.

These work on what a sweep stored, without the instruments: `train` fits one method on the
latest sweep's measured defect maps and keeps its weights (and per-die placements) as a "train"
run; `evaluate` runs every trained method on the measured dies (emulated from their defect maps
and fitted device conductances, batched over dies) and keeps the summary as an "evaluate" run;
`report` writes summary.json, report.md and plots from the latest demo or evaluation;
`trained_program` is what the service's program and infer jobs put on a die for a method.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivers.prober import DieIndex
from training.datasets import BinaryData, data_label, load_default
from training.evaluation import evaluate_on_dies
from training.experiment import (
    ExperimentConfig,
    StageEpochHook,
    as_method,
    experiment_layout,
    for_stage,
    prepare,
    run_baseline,
    run_hat,
    run_placement,
    run_sat,
)
from training.mapping import ArrayLayout
from training.sensitivity import loss_distribution
from training.trainers import TrainResult

from . import __version__
from .loop import MeasuredWafer, load_measurements, skipped_sweeps_note, summarize
from .progress import EpochBars, say
from .report import check_results_folder, table, write_report
from .store import RUN_LEVEL, RunStore, StoreError, die_key

TRAIN_KIND, EVALUATE_KIND = "train", "evaluate"
TRAIN_METHODS = ("baseline", "hat", "sat")
#: what each trained method is evaluated as: baseline weights on any die are "unaware"
EVALUATED_AS = {"baseline": ("unaware", "unaware_cm"), "hat": ("hat",), "sat": ("sat", "placed")}
#: evaluated methods that use their training run's per-die layouts (the others: the fixed one)
PER_DIE_LAYOUTS = ("hat", "placed")
#: the training method each evaluated (and programmable) method takes its weights from
TRAINED_BY = {name: method for method, names in EVALUATED_AS.items() for name in names}
WHOLE_RUN = RUN_LEVEL  # die key of per-run arrays and records (the store's)


@dataclass(frozen=True)
class TrainedProgram:
    """What a die is programmed with for one method: binary weights (n_in, n_out) per layer,
    the layout they sit in (read out as the method reads), and the runs they come from."""

    method: str
    weights: list[torch.Tensor]
    layout: ArrayLayout
    train_run: int
    sweep_run: int


def trained_program(store_path: str | Path, method: str, die: DieIndex,
                    train_run: int | None = None, read_voltage_v: float | None = None
                    ) -> TrainedProgram:
    """`method`'s weights and layout for `die`, from training run `train_run` (default: the
    latest of its kind on the latest finished sweep). Per-die solutions (hat, placed) exist
    for the dies that sweep measured only. read_voltage_v: the station's, if it differs
    from the sweep's (the common-mode check compares currents at that voltage)."""
    if method not in TRAINED_BY:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(TRAINED_BY)}")
    trainer = TRAINED_BY[method]
    with RunStore(store_path, read_only=True) as store:
        if train_run is None:
            measured = load_measurements(store)
            run_id = _latest_trained(store, measured).get(trainer)
            if run_id is None:
                raise StoreError(f"{store.path}: no {trainer} training on sweep run "
                                 f"{measured.run_id}, which method {method!r} needs; train "
                                 "first ('mtjlab train' or a train job)")
        else:
            run_id, row = train_run, store.run_row(train_run)
            meta = json.loads(row["snapshot_json"])
            if (row["kind"], row["status"], meta.get("method")) != (TRAIN_KIND, "finished",
                                                                   trainer):
                raise ValueError(f"run {run_id} is not a finished {trainer} training, which "
                                 f"method {method!r} needs")
            measured = load_measurements(store, meta["sweep_run"])
        config = ExperimentConfig.model_validate(
            (meta if train_run is not None else store.snapshot(run_id))["experiment"])
        # the layout alone: no defect statistics or cells are needed to program a die
        fixed = experiment_layout(measured.maps[0].shape, measured.device_model(),
                                  config.network)
        weights, layouts = _load_trained(store, run_id, fixed, measured.keys)
    key = die_key(die)
    per_die = method in PER_DIE_LAYOUTS and layouts is not None
    if (per_die or trainer == "hat") and key not in measured.keys:  # HAT: weights per die
        raise ValueError(f"method {method!r} has one solution per measured die; die {key} was "
                         f"not measured by sweep run {measured.run_id} (dies: "
                         f"{' '.join(measured.keys)})")
    i = measured.keys.index(key) if key in measured.keys else 0
    layout, _net = as_method(method, layouts[i] if per_die else fixed,  # type: ignore[index]
                             config.network)
    assert isinstance(layout, ArrayLayout)
    if read_voltage_v is not None:
        layout = replace(layout, device=layout.device.model_copy(
            update={"v_read_v": read_voltage_v}))
    return TrainedProgram(method, [w[i] if w.shape[0] > 1 else w[0] for w in weights], layout,
                          run_id, measured.run_id)


def _save_trained(store: RunStore, measured: MeasuredWafer, method: str, seed: int,
                  data_dir: str | None, config: ExperimentConfig, result: TrainResult,
                  layouts: list[ArrayLayout] | None, base_err: float
                  ) -> tuple[int, dict[str, Any]]:
    """Store a trained method as a finished "train" run: (run id, its train record)."""
    info = _info(method, measured, data_dir, seed, base_err) | {"epoch_s": result.mean_epoch_s}
    if layouts is not None and len(layouts) != len(measured.keys):
        raise RuntimeError(f"{len(layouts)} layouts for {len(measured.keys)} measured dies")
    sweep_row = store.run_row(measured.run_id)
    run_id = store.create_run(
        TRAIN_KIND, sweep_row["station_yaml"],
        {"method": method, "sweep_run": measured.run_id, "data": data_dir,
         "experiment": config.model_dump(mode="json")},
        __version__, {"training": seed})
    with store.status_kept(run_id):
        arrays = {f"weights/L{k}": w.detach().numpy().astype(np.int8)
                  for k, w in enumerate(result.weights)}
        store.put(run_id, WHOLE_RUN, arrays=arrays)
        for key, layout in zip(measured.keys, layouts or [], strict=bool(layouts)):
            store.put(run_id, key, arrays={f"layout/{n}": a
                                           for n, a in layout.placement_arrays().items()})
        store.put(run_id, WHOLE_RUN, records={"train": info})  # last: marks it complete
        store.set_status(run_id, "finished")
    return run_id, info


def _load_trained(store: RunStore, run_id: int, fixed: ArrayLayout, keys: list[str]
                  ) -> tuple[list[torch.Tensor], list[ArrayLayout] | None]:
    """A training run's weights (1 or D per layer) and its per-die layouts (placements of
    the `fixed` layout's network), if it placed."""
    info = store.record(run_id, WHOLE_RUN, "train")
    if info is None:
        raise StoreError(f"{store.path}: training run {run_id} is incomplete; train again")
    if info.get("die_keys") != keys:
        raise StoreError(f"{store.path}: training run {run_id} was trained on other dies than "
                         "the sweep now holds; train again")
    weights = _stored_weights(store, run_id)
    names = {name for _die, name in store.array_names(run_id)}
    layouts = None
    if "layout/L0/rows" in names:
        layouts = [fixed.with_placement_arrays(
            {n: store.array(run_id, key, f"layout/{n}")
             for n in fixed.placement_arrays()}) for key in keys]
    return weights, layouts


def _stored_weights(store: RunStore, run_id: int) -> list[torch.Tensor]:
    """A training run's binary weights, one (1 or D, n_in, n_out) tensor per layer."""
    names = {name for die, name in store.array_names(run_id) if die == WHOLE_RUN}
    weights, k = [], 0
    while f"weights/L{k}" in names:
        weights.append(torch.as_tensor(store.array(run_id, WHOLE_RUN, f"weights/L{k}"),
                                       dtype=torch.float32))
        k += 1
    if not weights:
        raise StoreError(f"{store.path}: training run {run_id} holds no weights")
    return weights


def _latest_trained(store: RunStore, measured: MeasuredWafer,
                    seed: int | None = None) -> dict[str, int]:
    """The latest finished training run of each method on this sweep (trained with `seed`,
    if given: a later run with another seed does not hide a complete set)."""
    found: dict[str, int] = {}
    for run in store.runs():
        if run.kind != TRAIN_KIND or run.status != "finished":
            continue
        meta = store.snapshot(run.run_id)
        if meta.get("sweep_run") != measured.run_id or (
                seed is not None
                and (store.record(run.run_id, WHOLE_RUN, "train") or {}).get("seed") != seed):
            continue
        found[meta["method"]] = run.run_id
    return found


def _open(store_path: str | Path) -> RunStore:
    return RunStore(store_path, create=False)


def train_from_store(store_path: str | Path, method: str, seed: int = 0,
                     data_dir: str | None = None, quiet: bool = True,
                     config: ExperimentConfig | None = None,
                     on_epoch: StageEpochHook | None = None,
                     on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train `method` (baseline | hat | sat) on the latest sweep's measured maps; store it.

    HAT and SAT start from the store's baseline for this sweep (same data, seed and network),
    training one first if there is none. SAT's weights are also placed on every measured die
    (the `placed` method). on_epoch(stage, done, total, loss) runs after every epoch (besides
    the progress bars), on_step(what) before each step after the method's last epoch
    (SAT's placement, storing); an exception from either stops training and that method is
    not stored (a baseline trained on the way for HAT or SAT is).
    """
    step = on_step or (lambda _what: None)
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(TRAIN_METHODS)}")
    config = config or ExperimentConfig()
    t0 = time.perf_counter()
    data_dir = absolute(data_dir)
    data = load_default(data_dir, seed=seed)
    with _open(store_path) as store, EpochBars(quiet) as bars:
        epochs = bars if on_epoch is None else _both(bars, on_epoch)
        measured = _latest_measured(store)
        # the network must fit the measured array for every method: refused before training
        setup = prepare(measured.maps, measured.device_model(), config,
                        placement=method == "sat" or (method == "hat" and config.hat_placement))
        if method == "baseline":
            run_id, info, _weights = _train_baseline(store, measured, data, data_dir, seed,
                                                     config, quiet, epochs, step)
        else:
            baseline, base_err = _baseline_for(store, measured, data, data_dir, seed, config,
                                               quiet, epochs)
            if method == "hat":
                say(quiet, f"hardware-aware training for {len(measured.dies)} dies")
                result, layouts = run_hat(data, setup, baseline, config, seed,
                                          for_stage(epochs, "hat"))
            else:
                say(quiet, "statistics-aware training")
                result = run_sat(data, setup, baseline, config, seed, for_stage(epochs, "sat"))
                step("placement")
                say(quiet, f"placing the SAT weights on {len(measured.dies)} dies")
                layouts = run_placement(data, setup, result.weights, config)
            step(f"storing the {method} weights")
            run_id, info = _save_trained(store, measured, method, seed, data_dir, config,
                                         result, layouts, base_err)
    say(quiet, f"run {run_id}: {method} trained on {len(measured.dies)} dies measured by "
               f"sweep run {measured.run_id} (software baseline error "
               f"{info['baseline_error_pct']:.2f} %)")
    return info | {"run_id": run_id, "seconds": time.perf_counter() - t0}


def _latest_measured(store: RunStore) -> MeasuredWafer:
    """The latest finished sweep's maps, with a warning on stderr (even when quiet) if newer
    sweeps are left out because they are unfinished."""
    measured = load_measurements(store)
    note = skipped_sweeps_note(store, measured.run_id)
    if note:
        print(note, file=sys.stderr, flush=True)
    return measured


def _both(first: StageEpochHook, second: StageEpochHook) -> StageEpochHook:
    def hook(stage: str, done: int, total: int, loss: float) -> None:
        first(stage, done, total, loss)
        second(stage, done, total, loss)

    return hook


def absolute(data_dir: str | None) -> str | None:
    """A data folder as stored and compared: absolute, so that the same folder named another
    way (relative, a trailing slash) is the same data, and a run evaluated from another
    working directory finds it. (A relative path stored before is resolved from here.)"""
    return None if data_dir is None else str(Path(data_dir).resolve())


def _info(method: str, measured: MeasuredWafer, data_dir: str | None, seed: int,
          base_err: float) -> dict[str, Any]:
    return {"method": method, "sweep_run": measured.run_id, "dies": len(measured.dies),
            "die_keys": measured.keys,
            "data": data_label(data_dir), "data_dir": data_dir, "seed": seed,
            "baseline_error_pct": base_err}


def _train_baseline(store: RunStore, measured: MeasuredWafer, data: BinaryData,
                    data_dir: str | None, seed: int, config: ExperimentConfig, quiet: bool,
                    epochs: StageEpochHook | None = None,
                    step: Callable[[str], None] | None = None
                    ) -> tuple[int, dict[str, Any], list[torch.Tensor]]:
    """Train and store the software baseline: (run id, its train record, its weights);
    step(what) runs before storing (see train_from_store)."""
    say(quiet, "training the software baseline")
    result, err = run_baseline(data, config, seed, for_stage(epochs, "baseline"))
    if step is not None:
        step("storing the baseline weights")
    run_id, info = _save_trained(store, measured, "baseline", seed, data_dir, config, result,
                                 None, err)
    return run_id, info, result.weights


def _baseline_for(store: RunStore, measured: MeasuredWafer, data: BinaryData,
                  data_dir: str | None, seed: int, config: ExperimentConfig, quiet: bool,
                  epochs: StageEpochHook | None = None) -> tuple[list[torch.Tensor], float]:
    """The stored baseline for this sweep, data and seed, or a newly trained (and stored) one."""
    run_id = _latest_trained(store, measured, seed).get("baseline")
    if run_id is not None:
        info = store.record(run_id, WHOLE_RUN, "train") or {}
        stored = ExperimentConfig.model_validate(store.snapshot(run_id)["experiment"])
        if (absolute(info.get("data_dir")), info.get("seed"), stored.network,
                stored.baseline) == (data_dir, seed, config.network, config.baseline):
            return _stored_weights(store, run_id), float(info["baseline_error_pct"])
    _run_id, info, weights = _train_baseline(store, measured, data, data_dir, seed, config,
                                             quiet, epochs)
    return weights, float(info["baseline_error_pct"])


def evaluate_from_store(store_path: str | Path, seed: int | None = None,
                        data_dir: str | None = None, quiet: bool = True,
                        loss_maps: int = 200) -> dict[str, Any]:
    """Every trained method on every measured die; the summary is stored and returned.

    Dies are emulated from their measured defect maps and the fitted device conductances.
    seed: evaluate the latest runs trained with this seed (default: the latest runs, whose
    seed then applies). data_dir: the data set they were trained on (the default); any other
    set is refused, since its test digits could be training digits.
    """
    data_dir = absolute(data_dir)
    with _open(store_path) as store:
        measured = _latest_measured(store)
        latest = _latest_trained(store, measured)
        trained_runs = latest if seed is None else _latest_trained(store, measured, seed)
        if not latest:
            raise StoreError(f"{store.path}: nothing trained on sweep run {measured.run_id}; "
                             "train first ('mtjlab train' or a train job)")
        if not trained_runs:
            seeds = sorted({(store.record(r, WHOLE_RUN, "train") or {}).get("seed", "?")
                            for r in latest.values()}, key=str)
            raise ValueError(f"nothing on sweep run {measured.run_id} was trained with seed "
                             f"{seed} (its latest runs were trained with seed "
                             f"{', '.join(map(str, seeds))}); evaluate with a seed the weights "
                             "were trained with (another split would test on training digits)")
        first, config = _agreed_training(store, trained_runs)
        trained_dir = absolute(first["data_dir"])
        if data_dir is not None and data_dir != trained_dir:  # (the seed selected the runs)
            raise ValueError(f"the weights were trained with seed {first['seed']} on "
                             f"{first['data']}; evaluate with those (another split or set "
                             "would test on training digits)")
        seed, data_dir = first["seed"], trained_dir
        setup = prepare(measured.maps, measured.device_model(), config, placement=False)
        data = load_default(data_dir, seed=seed)
        base_err = float(first["baseline_error_pct"])
        methods: dict[str, Any] = {}
        shared: dict[str, list[torch.Tensor]] = {}
        for method in TRAIN_METHODS:
            if method not in trained_runs:
                continue
            weights, layouts = _load_trained(store, trained_runs[method], setup.layout,
                                             measured.keys)
            shared[method] = weights
            for name in EVALUATED_AS[method]:
                per_die = layouts if name in PER_DIE_LAYOUTS and layouts else setup.layout
                layout, net = as_method(name, per_die, config.network)
                errors = evaluate_on_dies(weights, data.x_test, data.y_test, layout,
                                          setup.cells, net, base_err)
                methods[name] = summarize(dict(zip(measured.keys,
                                                   map(float, errors.per_die), strict=True)),
                                          base_err)
        losses = {label: loss_distribution(shared[m], data.x_test, data.y_test, setup.layout,
                                           setup.stats, config.network, n_maps=loss_maps,
                                           seed=seed).losses
                  for m, label in (("baseline", "baseline"), ("sat", "SAT")) if m in shared}
        summary: dict[str, Any] = {
            "seed": seed, "data": data_label(data_dir), "dies": len(measured.dies),
            "baseline_error_pct": base_err, "methods": methods,
            "source": "emulated from measured defect maps", "sweep_run": measured.run_id,
            "loss_std": {k: float(v.std()) for k, v in losses.items()},
        }
        run_id = store.create_run(EVALUATE_KIND, store.run_row(measured.run_id)["station_yaml"],
                                  {"sweep_run": measured.run_id, "trained": trained_runs},
                                  __version__, {"evaluation": seed})
        with store.status_kept(run_id):
            store.put(run_id, WHOLE_RUN, arrays={f"losses/{k}": v for k, v in losses.items()},
                      records={"summary": summary})
            store.set_status(run_id, "finished")
    if not quiet:
        print(table(summary))
    return summary


def _agreed_training(store: RunStore, trained_runs: dict[str, int]
                     ) -> tuple[dict[str, Any], ExperimentConfig]:
    """The shared training record and experiment of the runs to evaluate; they must agree on
    data, seed, network and baseline."""
    infos = {m: store.record(r, WHOLE_RUN, "train") or {} for m, r in trained_runs.items()}
    configs = {m: ExperimentConfig.model_validate(store.snapshot(r)["experiment"])
               for m, r in trained_runs.items()}
    first_m = next(iter(infos))
    first, config = infos[first_m], configs[first_m]
    keys = ("seed", "data_dir", "baseline_error_pct")
    for m in infos:
        if (any(infos[m].get(k) != first.get(k) for k in keys)
                or configs[m].network != config.network):
            raise StoreError(
                f"{store.path}: the latest {first_m} and {m} training runs differ in seed, data, "
                "network or baseline; train them again with the same options")
    return first, config


def report_from_store(store_path: str | Path, out: Path) -> dict[str, Any]:
    """summary.json, report.md and plots from the store's latest demo or evaluation."""
    check_results_folder(Path(out), "name a folder for the report")
    with RunStore(store_path, read_only=True) as store:
        candidates = [r.run_id for r in store.runs()
                      if r.kind in ("demo", EVALUATE_KIND) and r.status == "finished"
                      and store.record(r.run_id, WHOLE_RUN, "summary") is not None]
        if not candidates:
            raise StoreError(f"{store.path}: no finished demo or evaluation to report; run "
                             "'mtjlab evaluate' (or an evaluate job) first")
        run_id = max(candidates)
        summary = store.record(run_id, WHOLE_RUN, "summary")
        sweep_run = store.snapshot(run_id).get("sweep_run", run_id)
        measured = load_measurements(store, sweep_run)
        losses = {name.removeprefix("losses/"): store.array(run_id, WHOLE_RUN, name)
                  for die, name in store.array_names(run_id)
                  if die == WHOLE_RUN and name.startswith("losses/")}
    write_report(Path(out), summary, measured.defect_rates(), measured.grid, losses or None)
    return dict(summary)
