"""`mtjlab`: the operator's command line.

Exit codes: 0 ok, 1 failed (or interrupted) run, 2 bad input.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Wrong arguments or unusable input files: exit code 2."""


def cmd_sweep(args: argparse.Namespace) -> int:
    from .config import load_station
    from .interrupts import StopFlag, stop_on_interrupt
    from .progress import bar
    from .store import RunStore
    from .sweep import run_sweep

    config = load_station(args.station)
    stop = StopFlag()
    dies: list[Any] = []  # the bar, made once the planned dies are known (none on early errors)

    def planned(_run_id: int, n: int) -> None:
        dies.append(bar("sweep", args.quiet, total=n))

    def progress(die, m):  # type: ignore[no-untyped-def]
        dies[0].update(1)
        if m is not None and not args.quiet:
            dies[0].set_postfix(die=f"{die.col},{die.row}", **m.counts())

    try:
        with RunStore(args.store) as store, stop_on_interrupt(stop), _holding_station(store.path):
            run_id = run_sweep(config, store, resume=args.resume is not None,
                               resume_run=args.resume or None, stop=stop, progress=progress,
                               planned=planned)
    finally:
        for made in dies:
            made.close()
    _say(args, f"run {run_id}: sweep finished; results in {args.store}")
    return EXIT_OK


@contextlib.contextmanager
def _holding_station(store_path: Path) -> Iterator[None]:
    """Hold the store's station lock (`locking.hold_station`) while the block drives it."""
    from .locking import hold_station, unlocked_station_warning

    held = hold_station(store_path)
    if held is None:
        print(f"warning: {unlocked_station_warning(store_path)}", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        if held is not None:
            held.close()


def cmd_runs(args: argparse.Namespace) -> int:
    from .store import RunStore

    with RunStore(args.store, read_only=True) as store:
        if args.station is not None:
            print(store.run_row(args.station)["station_yaml"], end="")
            return EXIT_OK
        rows = store.runs()
    print(f"{'run':>4}  {'kind':<10} {'status':<12} {'dies':>4}  {'created (UTC)':<20} error")
    for r in rows:
        print(f"{r.run_id:>4}  {r.kind:<10} {r.status:<12} {r.dies_done:>4}  "
              f"{r.created_utc:<20} {r.error or ''}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_store

    path = export_store(args.store, args.out, args.format, run_id=args.run, force=args.force)
    _say(args, f"exported to {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=Path(args.out), seed=args.seed, data_dir=args.data_dir, quiet=args.quiet,
             small=args.small)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from training.experiment import ExperimentConfig

    from .offline import train_from_store

    train_from_store(args.store, args.method, seed=args.seed, data_dir=args.data_dir,
                     quiet=args.quiet, config=ExperimentConfig.small() if args.small else None)
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .offline import evaluate_from_store

    evaluate_from_store(args.store, seed=args.seed, data_dir=args.data_dir, quiet=args.quiet)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .offline import report_from_store

    report_from_store(args.store, Path(args.out))
    _say(args, f"report written to {args.out}")
    return EXIT_OK


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= minimum (argparse names the option when it fails:
    `argument --seed: expected a whole number of at least 0, got '-1'`)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, "
                                             f"got {text!r}")
        return value

    return parse


def add_command(sub: argparse._SubParsersAction, name: str,
                fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
    """A subcommand that runs `fn` and accepts -q/--quiet after its name too."""
    sp = sub.add_parser(name, help=help_)
    sp.set_defaults(fn=fn)
    sp.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    return sp


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mtjlab", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"mtjlab {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter")
    p.add_argument("-v", "--verbose", action="store_true", help="log retries and recoveries")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        return add_command(sub, name, fn, help_)

    sp = add("demo", cmd_demo, "closed loop on the simulated wafer: measure, train, program, infer")
    sp.add_argument("--out", default="out", help="output folder (default: out)")
    sp.add_argument("--seed", type=at_least(0), default=0)
    sp.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: embedded set)")
    sp.add_argument("--small", action="store_true", help="a quick, reduced configuration")

    sp = add("sweep", cmd_sweep, "measure the defect map of every planned die")
    sp.add_argument("--station", required=True, help="station YAML file")
    sp.add_argument("--store", required=True, help="run store (SQLite file)")
    sp.add_argument("--resume", nargs="?", type=int, const=0, default=None, metavar="RUN",
                    help="continue the last unfinished sweep (or run RUN)")

    sp = add("train", cmd_train, "train on the measured maps of the store's latest sweep")
    sp.add_argument("--store", required=True)
    sp.add_argument("--method", required=True, choices=["baseline", "hat", "sat"])
    sp.add_argument("--seed", type=at_least(0), default=0)
    sp.add_argument("--data-dir", default=None, help="MNIST IDX folder (default: embedded set)")
    sp.add_argument("--small", action="store_true", help="a quick, reduced training schedule")

    sp = add("evaluate", cmd_evaluate, "evaluate the store's trained weights on measured dies")
    sp.add_argument("--store", required=True)
    sp.add_argument("--seed", type=at_least(0), default=None,
                    help="evaluate the latest runs trained with this seed (its data split; "
                         "default: the latest runs' seed)")
    sp.add_argument("--data-dir", default=None)

    sp = add("report", cmd_report, "write report.md, summary.json and plots from a store")
    sp.add_argument("--store", required=True)
    sp.add_argument("--out", required=True)

    sp = add("runs", cmd_runs, "list the runs in a store")
    sp.add_argument("--store", required=True)
    sp.add_argument("--station", type=int, metavar="RUN", default=None,
                    help="print the station file run RUN was started with (YAML)")

    sp = add("export", cmd_export, "export a run's arrays")
    sp.add_argument("--store", required=True)
    sp.add_argument("--format", required=True, choices=["hdf5", "npz"])
    sp.add_argument("--out", default=None, help="output file (default: next to the store)")
    sp.add_argument("--run", type=int, default=None,
                    help="run id (default: the latest finished sweep or demo)")
    sp.add_argument("--force", action="store_true", help="replace an existing --out file")

    from .service_cli import add_service_commands

    add_service_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_BAD_INPUT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command, mapping failures onto exit codes with a one-line reason."""
    from pydantic import ValidationError

    from drivers.errors import DriverError, LimitError

    from .config import StationFileError
    from .interrupts import Terminated, stop_on_interrupt
    from .station import StationError
    from .store import RunMissing, StoreError
    from .sweep import SweepInterrupted

    try:
        if getattr(args, "own_signals", False):
            return args.fn(args)
        with stop_on_interrupt():  # SIGTERM: Terminated, so clean-ups and run statuses run
            return args.fn(args)
    except (BadInput, StationFileError, ValidationError, FileNotFoundError, RunMissing,
            LimitError) as err:
        print(f"mtjlab {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DriverError as err:  # an instrument's fault or reply, not the operator's input
        print(f"mtjlab {args.command}: failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as err:
        print(f"mtjlab {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SweepInterrupted as err:
        print(f"mtjlab {args.command}: interrupted: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated:
        print(f"mtjlab {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"mtjlab {args.command}: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except sqlite3.Error as err:  # a store damaged after it was opened
        print(f"mtjlab {args.command}: failed: the store could not be read or written: {err} "
              "(corrupted?)", file=sys.stderr)
        return EXIT_FAILED
    except (StationError, StoreError, RuntimeError, OSError) as err:
        print(f"mtjlab {args.command}: failed: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
