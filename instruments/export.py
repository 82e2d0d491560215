"""Export a run's arrays from the store to .npz or HDF5 for analysis elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .store import MEASURING_KINDS, RunStore, StoreError


def export_store(store_path: str | Path, out: str | Path | None, fmt: str,
                 run_id: int | None = None) -> Path:
    """Write every array of a run (keys `die/name`) plus its metadata; returns the file.

    run_id: default the latest measuring run (sweep or demo), else the latest run.
    """
    store_path = Path(store_path)
    if not store_path.exists():
        raise FileNotFoundError(f"{store_path}: no such store")
    if fmt not in ("npz", "hdf5"):
        raise ValueError(f"unknown export format {fmt!r}: use npz or hdf5")
    with RunStore(store_path, create=False) as store:
        if run_id is None:
            run_id = store.latest_run(MEASURING_KINDS)
            run_id = store.latest_run() if run_id is None else run_id
        if run_id is None:
            raise StoreError(f"{store_path}: the store holds no runs")
        meta = store.run_row(run_id)
        arrays = {f"{die}/{name}": store.array(run_id, die, name)
                  for die, name in store.array_names(run_id)}
    suffix = ".npz" if fmt == "npz" else ".h5"
    path = Path(out) if out else store_path.with_name(f"{store_path.stem}-run{run_id}{suffix}")
    tmp = path.with_name(path.name + ".partial")
    if fmt == "npz":
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k.replace("/", "__"): v for k, v in arrays.items()},
                                run_json=np.array(json.dumps(meta)))
    else:
        import h5py

        with h5py.File(tmp, "w") as h5:
            for key, value in arrays.items():
                h5.create_dataset(key, data=value, compression="gzip")
            for key, value in meta.items():
                h5.attrs[key] = "" if value is None else value
    tmp.replace(path)
    return path
