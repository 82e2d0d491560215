"""`mtjlab serve | submit | jobs | watch`: the station service from the command line.

Same conventions as instruments/cli.py: exit 0 ok, 1 failed (job failed, service unreachable),
2 bad input (refused request, unknown job, wrong token, bad file, a server address without
http://). The server address comes from --server or MTJLAB_SERVER, the token from --token or
MTJLAB_TOKEN. Ctrl-C while following a job (submit --wait, watch) stops following, not the
job: exit 1 with the command that cancels it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from .cli import EXIT_FAILED, EXIT_OK, at_least
from .job_kinds import ProgramMethod

if TYPE_CHECKING:
    from .client import Problem

KINDS = ("sweep", "measure", "program", "infer", "train", "evaluate")
#: --method: what a train job trains, or what a program or infer job takes from the store
METHOD_CHOICES = list(dict.fromkeys(["baseline", "hat", "sat", *get_args(ProgramMethod)]))


#: the options that set a job's fields (to name them in the service's refusals)
SUBMIT_OPTIONS = {"die": "--die", "targets": "--targets", "inputs": "--inputs",
                  "pulse_v": "--pulse-v", "method": "--method", "train_run": "--train-run",
                  "seed": "--seed", "data_dir": "--data-dir", "resume_run": "--resume-run"}
#: the same for the query parameters of `mtjlab jobs`
JOBS_OPTIONS = {"state": "--state", "kind": "--kind", "limit": "--limit"}


def _client(args: argparse.Namespace) -> Any:
    from .client import URL_ENV, Client

    try:
        return Client(args.server, token=args.token)
    except ValueError as err:  # no http:// (a host:port): bad input, with the fix
        source = "--server" if args.server else URL_ENV
        raise ValueError(f"{source}: {err}") from None


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 to 65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535 (0: any free "
                                         f"port), got {text!r}")
    return value


def _die(text: str) -> list[int]:
    try:
        col, row = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COL,ROW (e.g. 2,3), got {text!r}") from None
    return [col, row]


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: str) -> np.ndarray:
    """The array of a .npy file (np.save), never unpickled; ValueError with the reason."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
            f.seek(0)
            array = np.load(f, allow_pickle=False) if magic == NPY_MAGIC else None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as err:  # EOFError: a truncated file
        raise ValueError(f"{path}: cannot read a .npy array: {err}") from err
    if array is None:  # numpy would take it for a pickle, and suggest unpickling it
        what = ("a .npz archive (numpy.savez), not a .npy array file" if magic.startswith(b"PK")
                else "not a .npy array file")
        raise ValueError(f"{path}: {what}; write one with numpy.save")
    return array


def cmd_serve(args: argparse.Namespace) -> int:
    from .service import serve

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn has shut down cleanly
        serve(args.station, host=args.host, port=args.port, store=args.store, token=args.token,
              announce=lambda text: print(text, flush=True), keep_jobs=args.keep_jobs)
    return EXIT_OK


def _params(args: argparse.Namespace) -> dict[str, Any]:
    try:
        params: dict[str, Any] = json.loads(args.params) if args.params else {}
    except ValueError as err:
        raise ValueError(f"--params is not valid JSON: {err}") from None
    if not isinstance(params, dict):
        raise ValueError("--params must be a JSON object")
    if "kind" in params:
        raise ValueError("--params cannot set the job's kind: give it as the first argument "
                         f"(mtjlab submit KIND; here {args.kind})")
    options = {"die": args.die, "method": args.method, "seed": args.seed,
               "data_dir": args.data_dir, "pulse_v": args.pulse_v,
               "resume_run": args.resume_run, "train_run": args.train_run}
    params.update({k: v for k, v in options.items() if v is not None})
    for name in ("targets", "inputs"):
        path = getattr(args, name)
        if path is not None:
            params[name] = _load_npy(path)
    return params


def cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.submit(args.kind, **_params(args))
        _say(args, f"job {job['id']} ({job['kind']}) queued")
        if not (args.wait or args.out):
            print(job["id"])
            return EXIT_OK
        return _follow(client, job["id"], args, out=args.out)


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.cancel is not None:
            job = client.cancel(args.cancel)
            print(f"job {job['id']}: {job['state']}"
                  + (" (stops at the next safe point)" if job["state"] == "running" else ""))
            return EXIT_OK
        if args.resume is not None:
            job = client.resume(args.resume)
            print(f"job {job['id']} queued (resumes job {args.resume})")
            return EXIT_OK
        if args.result is not None:
            _save_result(client, args.result, args.out or f"job-{args.result}.npz")
            return EXIT_OK
        jobs = [client.get(args.id)] if args.id is not None else client.list(
            args.state, args.kind, args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    print(f"{'id':>5}  {'kind':<9} {'state':<12} {'progress':<10} {'submitted (UTC)':<20} "
          "summary / error")
    for j in jobs:
        print(f"{j['id']:>5}  {j['kind']:<9} {j['state']:<12} {_progress(j):<10} "
              f"{j['submitted_at'][:19]:<20} {_outcome(j)}")
    return EXIT_OK


def _outcome(job: dict[str, Any]) -> str:
    """The listing's last column: the error or the summary, and the job that resumed it
    (its error's "resume with ..." hint is done with)."""
    text = job["error"] or _brief(job["summary"])
    if job.get("resumed_as") is not None:
        text = f"resumed as job {job['resumed_as']}; {text.split('; resume with')[0]}"
    return text


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(client, args.id, args, out=args.out)


def _follow(client: Any, job_id: int, args: argparse.Namespace, out: str | None) -> int:
    """Print progress until the job ends; exit 0 only if it succeeded. Ctrl-C stops following
    only: the job goes on on the service, and the message says how to cancel it."""
    job: dict[str, Any] = {}
    try:
        for job in client.events(job_id, timeout_s=args.timeout):
            _say(args, f"job {job_id}: {job['state']:<10} {_progress(job):<8} "
                       f"{job['progress']['message']}")
    except KeyboardInterrupt as stop:
        where = ("is still queued on the service (it will run)" if job.get("state") == "queued"
                 else "goes on running on the service")
        _stopped(args, stop, f"stopped following job {job_id}, which {where}; cancel it with "
                             f"`{_command(args, f'jobs --cancel {job_id}')}`, or follow it "
                             f"again with `{_command(args, f'watch {job_id}')}`")
        return EXIT_FAILED
    if job["state"] != "succeeded":
        print(f"job {job_id} {job['state']}: {job['error'] or ''}", file=sys.stderr)
        return EXIT_FAILED
    if out:
        try:
            _save_result(client, job_id, out)
        except KeyboardInterrupt as stop:
            again = _command(args, f"jobs --result {job_id} --out {shlex.quote(out)}")
            _stopped(args, stop, f"job {job_id} succeeded but its arrays were not saved; get "
                                 f"them with `{again}`")
            return EXIT_FAILED
    print(json.dumps(job["summary"]))
    return EXIT_OK


def _stopped(args: argparse.Namespace, stop: KeyboardInterrupt, text: str) -> None:
    from .interrupts import Terminated

    how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"
    print(f"mtjlab {args.command}: {how}: {text}", file=sys.stderr)


def _command(args: argparse.Namespace, rest: str) -> str:
    """An `mtjlab` command line for the same service (its --server, if one was given)."""
    return f"mtjlab {rest}" + (f" --server {args.server}" if args.server else "")


def _save_result(client: Any, job_id: int, out: str) -> None:
    """Write the job's arrays as .npz to exactly `out` (np.savez given a name adds .npz)."""
    arrays = client.result(job_id)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    partial = Path(out).with_name(Path(out).name + ".partial")  # never a half file at `out`
    partial.write_bytes(buf.getvalue())
    os.replace(partial, out)
    print(f"job {job_id}: arrays {sorted(arrays)} written to {out}", file=sys.stderr)


def _explained(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`fn` with the service's refusals in the command line's terms: validation errors name
    the option that sets the field, a missing or wrong token says how to give one."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        from .client import TOKEN_ENV, RequestRejectedError

        try:
            return fn(args)
        except RequestRejectedError as err:
            if err.status in (401, 403):
                how = "give it" if err.status == 401 else "check the one given"
                raise RequestRejectedError(f"{err} ({how} with --token or {TOKEN_ENV})",
                                           err.status, err.problems) from None
            if err.problems:
                options = SUBMIT_OPTIONS if args.command == "submit" else JOBS_OPTIONS
                text = "; ".join(_problem_text(p, options, args.command == "submit")
                                 for p in err.problems)
                raise RequestRejectedError(f"{err.status}: {text}", err.status,
                                           err.problems) from None
            raise

    return run


def _problem_text(problem: Problem, options: dict[str, str], params: bool) -> str:
    """One validation problem naming the option that sets its field (or --params)."""
    field, message = problem.field, problem.message
    if not field:  # the request as a whole: name the options its message speaks of
        named = [options[w] for w in dict.fromkeys(re.findall(r"[a-z_]+", message))
                 if w in options]
        if not named:
            return message
        joint = " or " if " or " in message else ", "
        return f"{message} ({joint.join(named)})"
    name = str(field[0])
    path = ".".join(map(str, field))
    if name in options:
        if problem.type == "missing" and len(field) == 1:
            return f"{options[name]} is required"
        where = options[name] if len(field) == 1 else f"{options[name]} ({path})"
    else:
        where = f"{path} (in --params)" if params else path
    return f"{where}: {message}"


def _progress(job: dict[str, Any]) -> str:
    p = job["progress"]
    return f"{p['done']}/{p['total']}" if p["total"] else ""


def _brief(summary: dict[str, Any]) -> str:
    text = json.dumps(summary)
    return text if len(text) <= 60 else text[:57] + "..."


def _say(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _connection(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--server", default=None,
                    help="service URL (default: $MTJLAB_SERVER or http://127.0.0.1:8000)")
    sp.add_argument("--token", default=None, help="bearer token (default: $MTJLAB_TOKEN)")


def add_service_commands(sub: argparse._SubParsersAction) -> None:
    """Add serve, submit, jobs and watch to an `mtjlab` subparsers object."""

    from .cli import add_command

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str
            ) -> argparse.ArgumentParser:
        return add_command(sub, name, _explained(fn), help_)

    sp = add("serve", cmd_serve, "run the station service (owns the instruments, HTTP jobs)")
    sp.set_defaults(own_signals=True)  # uvicorn's handlers halt the worker (service._server)
    sp.add_argument("--station", required=True, help="station YAML file")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; others need a token)")
    sp.add_argument("--port", type=_port, default=8000, help="port (0: any free port)")
    sp.add_argument("--store", default=None,
                    help="run store (SQLite file; default mtjlab-runs.sqlite); the job queue "
                         "is kept next to it as <store>.jobs.sqlite")
    sp.add_argument("--token", default=None, help="require this bearer token "
                                                  "(default: $MTJLAB_TOKEN)")
    sp.add_argument("--keep-jobs", type=at_least(1), default=1000, metavar="N",
                    help="finished jobs kept with their results (default 1000); older ones "
                         "are deleted (interrupted jobs are kept for --resume; the run "
                         "store is never pruned)")

    sp = add("submit", cmd_submit, "submit a job to the station service")
    sp.add_argument("kind", choices=KINDS)
    sp.add_argument("--die", type=_die, default=None, help="COL,ROW")
    sp.add_argument("--targets", default=None, help="program: .npy of 0 (P)/1 (AP)/2 (leave)")
    sp.add_argument("--inputs", default=None, help="infer: .npy of binary inputs (n, n_in)")
    sp.add_argument("--pulse-v", type=float, default=None, help="program: pulse amplitude")
    sp.add_argument("--method", default=None, choices=METHOD_CHOICES,
                    help="train: baseline, hat or sat; program/infer: a trained method "
                         "(unaware, unaware_cm, hat, sat, placed) from the store")
    sp.add_argument("--train-run", type=at_least(1), default=None,
                    help="program/infer: the training run (default: the latest)")
    sp.add_argument("--seed", type=at_least(0), default=None)
    sp.add_argument("--data-dir", default=None, help="train/evaluate: MNIST folder on the server")
    sp.add_argument("--resume-run", type=int, default=None, help="sweep: continue this run")
    sp.add_argument("--params", default=None, help="more parameters as a JSON object")
    sp.add_argument("--wait", action="store_true", help="follow the job until it ends")
    sp.add_argument("--out", default=None, help="save the result arrays (.npz); implies --wait")
    sp.add_argument("--timeout", type=float, default=None, help="give up waiting after S s")
    _connection(sp)

    sp = add("jobs", cmd_jobs, "list, inspect, cancel or resume jobs of the station service")
    sp.add_argument("id", type=int, nargs="?", default=None, help="show one job")
    sp.add_argument("--state", default=None, choices=["queued", "running", "succeeded",
                                                      "failed", "cancelled", "interrupted"])
    sp.add_argument("--kind", default=None, choices=KINDS)
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--json", action="store_true", help="print the jobs as JSON")
    sp.add_argument("--cancel", type=int, metavar="ID", default=None)
    sp.add_argument("--resume", type=int, metavar="ID", default=None)
    sp.add_argument("--result", type=int, metavar="ID", default=None,
                    help="save a job's arrays (to --out, default job-ID.npz)")
    sp.add_argument("--out", default=None)
    _connection(sp)

    sp = add("watch", cmd_watch, "follow a job's progress until it ends (exit 0 if it succeeded)")
    sp.add_argument("id", type=int)
    sp.add_argument("--out", default=None, help="save the result arrays (.npz)")
    sp.add_argument("--timeout", type=float, default=None)
    _connection(sp)
