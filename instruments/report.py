"""summary.json, report.md and plots of a closed-loop run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from training.experiment import METHODS

LABELS = {
    "unaware": "baseline weights, plain read-out (the paper's defect-unaware chip)",
    "unaware_cm": "baseline weights, common-mode read-out",
    "hat": "hardware-aware (per die)",
    "sat": "statistics-aware (one set)",
    "placed": "SAT + defect-aware placement",
}


def check_results_folder(out: Path, what: str) -> None:
    """Raise ValueError unless `out` is a folder or not there yet (results are a folder of
    files); `what` tells the operator what to name instead."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; {what}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def table(summary: dict[str, Any]) -> str:
    """The methods table in Markdown."""
    base = summary["baseline_error_pct"]
    lines = [
        "| method | mean error % | std | median | best die | worst die | gap to baseline (pp) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| software baseline | {base:.2f} | | | | | 0.00 |",
    ]
    for m in METHODS:
        s = summary["methods"].get(m)
        if s is None:
            continue
        lines.append(f"| {m}: {LABELS[m]} | {s['mean']:.2f} | {s['std']:.2f} | "
                     f"{s['median']:.2f} | {s['min']:.2f} | {s['max']:.2f} | "
                     f"{s['gap_pp']:+.2f} |")
    return "\n".join(lines)


def plot_wafer_map(rates: dict[str, float], grid: tuple[int, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, rows = grid
    img = np.full((rows, cols), np.nan)
    for key, rate in rates.items():
        c, r = (int(v) for v in key.split(","))
        img[r, c] = 100 * rate
    fig, ax = plt.subplots(figsize=(4.6, 4))
    im = ax.imshow(img, cmap="magma_r", origin="upper")
    for (r, c), v in np.ndenumerate(img):
        if not np.isnan(v):
            ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v > np.nanmax(img) * 0.6 else "black")
    ax.set_xlabel("die column")
    ax.set_ylabel("die row")
    ax.set_title("Measured defect rate per die (%)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_die_errors(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    dies = list(next(iter(summary["methods"].values()))["per_die"].keys())
    x = np.arange(len(dies))
    for m in METHODS:
        s = summary["methods"].get(m)
        if s is not None:
            ax.plot(x, [s["per_die"][d] for d in dies], marker="o", ms=3, lw=1, label=m)
    ax.axhline(summary["baseline_error_pct"], color="k", ls="--", lw=1,
               label="software baseline")
    ax.set_xticks(x, dies, rotation=90, fontsize=6)
    ax.set_xlabel("die (col,row)")
    source = error_source(summary)
    ax.set_ylabel(f"test error, {source} (%)")
    ax.set_title(f"Error per die and method ({source})")
    ax.legend(fontsize=7, ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_histogram(losses: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    values = np.concatenate(list(losses.values()))
    bins = np.linspace(values.min(), values.max(), 40)
    for name, v in losses.items():
        ax.hist(v, bins=bins, alpha=0.6, label=f"{name} (std {v.std():.3f})")
    ax.set_xlabel("loss on a sampled defect map")
    ax.set_ylabel("maps")
    ax.set_title("Loss sensitivity over sampled defect maps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ON_CHIP = "on chip"


def error_source(summary: dict[str, Any]) -> str:
    """Where a summary's errors come from: the chip (the demo programs every die) or an
    emulation from the measured maps (`mtjlab evaluate`)."""
    return str(summary.get("source", ON_CHIP))


def _what_was_run(summary: dict[str, Any]) -> str:
    """The report's first line: seeds, dies, data and the source of the errors."""
    if error_source(summary) != ON_CHIP:  # an offline evaluation: the wafer was measured
        run = summary.get("sweep_run")
        what = (f"Measured sweep{f' (run {run})' if run is not None else ''}, training seed "
                f"{summary.get('seed')}")
    else:
        what = f"Wafer and training seed {summary.get('seed')}"
    return (f"{what}, {summary.get('dies')} dies, data: {summary.get('data')}. Errors are "
            f"test errors {error_source(summary)} (%), statistics over dies.")


def write_report(out: Path, summary: dict[str, Any], rates: dict[str, float],
                 grid: tuple[int, int], losses: dict[str, np.ndarray] | None) -> None:
    """summary.json, report.md and the plots, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    plot_wafer_map(rates, grid, out / "wafer_defects.png")
    plot_per_die_errors(summary, out / "per_die_error.png")
    plots = ["wafer_defects.png", "per_die_error.png"]
    if losses:
        plot_loss_histogram(losses, out / "loss_sensitivity.png")
        plots.append("loss_sensitivity.png")
    agree = summary.get("agreement_pct", {})
    lines = [
        "# mtjlab closed-loop report",
        "",
        _what_was_run(summary),
        "",
        table(summary),
        "",
    ]
    if agree:
        overall = summary.get("agreement_all_pct", {})
        lines += ["On-chip vs emulated (from read-back) prediction agreement, worst die "
                  "(all dies): " + ", ".join(
                      f"{m} {v:.2f} %" + (f" ({overall[m]:.2f} %)" if m in overall else "")
                      for m, v in agree.items()) + ".", ""]
    if "timing_s" in summary:
        lines += ["Timing (s): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                             summary["timing_s"].items()), ""]
    lines += [f"![{p}]({p})" for p in plots]
    _write_atomic(out / "report.md", "\n".join(lines) + "\n")
