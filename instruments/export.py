"""Export a run's arrays from the store to .npz or HDF5 for analysis elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .store import MEASURING_KINDS, RunStore, StoreError


def export_store(store_path: str | Path, out: str | Path | None, fmt: str,
                 run_id: int | None = None, force: bool = False) -> Path:
    """Write every array of a run (keys `die/name`), its records (per-die counts, pulses,
    summaries: JSON) and its metadata; returns the file.

    npz: arrays as `die__name`, the run's row as `run_json`, the records as `records_json`
    ({die: {name: value}}). HDF5: arrays as datasets `die/name`, the run's row as file
    attributes, each record as a JSON string attribute `name` of the group `die`.

    run_id: default the latest finished measuring run (sweep or demo), else the latest
    finished run; an unfinished one only when named. out: default next to the store; an
    existing file is replaced only with `force`, and never the store itself.
    """
    store_path = Path(store_path)
    if fmt not in ("npz", "hdf5"):
        raise ValueError(f"unknown export format {fmt!r}: use npz or hdf5")
    if out is not None:
        _check_out(Path(out), store_path, force)
    with RunStore(store_path, read_only=True) as store:
        if run_id is None:
            run_id = _default_run(store)
        meta = store.run_row(run_id)
        suffix = ".npz" if fmt == "npz" else ".h5"
        path = Path(out) if out else store_path.with_name(
            f"{store_path.stem}-run{run_id}{suffix}")
        if out is None:  # the default name is checked as a named one is, before the work
            _check_out(path, store_path, force)
        arrays = {f"{die}/{name}": store.array(run_id, die, name)
                  for die, name in store.array_names(run_id)}
        records = store.records(run_id)
    tmp = path.with_name(path.name + ".partial")
    try:
        _write(tmp, fmt, arrays, records, meta)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def _check_out(out: Path, store_path: Path, force: bool) -> None:
    """Refuse an --out that is the store (or its WAL files), a folder, in no folder, or
    (without force) an existing file: before any work."""
    store = store_path.resolve()
    if out.resolve() in {store, *(store.with_name(store.name + s) for s in ("-wal", "-shm"))}:
        raise ValueError(f"--out {out} is the store itself; export to another file")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; name the file to write")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: no folder {out.parent}")
    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to replace it (or --out another file)")


def _default_run(store: RunStore) -> int:
    """The latest finished measuring run, else the latest finished run."""
    run_id = store.latest_run(MEASURING_KINDS, finished=True)
    run_id = store.latest_run(finished=True) if run_id is None else run_id
    if run_id is None:
        last = store.latest_run()
        if last is None:
            raise StoreError(f"{store.path}: the store holds no runs")
        raise StoreError(f"{store.path}: no finished run to export (run {last} is "
                         f"{store.run_row(last)['status']}); name one with --run")
    return run_id


def _write(tmp: Path, fmt: str, arrays: dict[str, np.ndarray],
           records: dict[str, dict[str, Any]], meta: dict[str, object]) -> None:
    if fmt == "npz":
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k.replace("/", "__"): v for k, v in arrays.items()},
                                run_json=np.array(json.dumps(meta)),
                                records_json=np.array(json.dumps(records)))
    else:
        import h5py

        with h5py.File(tmp, "w") as h5:
            for key, value in arrays.items():
                h5.create_dataset(key, data=value, compression="gzip")
            for key, value in meta.items():
                h5.attrs[key] = "" if value is None else value
            for die, named in records.items():
                group = h5.require_group(die)
                for name, value in named.items():
                    group.attrs[name] = json.dumps(value)
