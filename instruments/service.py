"""The station service: one process owns the instruments and runs measurement jobs over HTTP.

`create_app` builds the FastAPI app (queue, worker, routes, auth, body limit); `serve` runs it
with uvicorn for `mtjlab serve`. Only the worker thread touches the instruments; request
handlers read and write the job queue and never block on a measurement. Progress reaches
clients as server-sent events pushed from the worker, so waiting costs no polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from . import __version__
from .config import StationConfig, load_station
from .job_kinds import (
    REQUEST,
    RUNNERS,
    JobRequest,
    RejectedJobError,
    validate_job,
)
from .jobs import TERMINAL, AlreadyResumedError, JobStore, QueueFullError, Worker
from .locking import hold_station, unlocked_station_warning

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 1024 * 1024
TOKEN_ENV = "MTJLAB_TOKEN"
MIN_TOKEN_CHARS = 8
KEEPALIVE_S = 15.0
#: how often an event stream checks whether the service is stopping
STREAM_POLL_S = 1.0
JobId = PathParam(ge=1, le=2**62, description="job id")
State = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


# ---- response models (for the OpenAPI schema) --------------------------------------------------
class Progress(BaseModel):
    done: int
    total: int | None
    message: str


class JobView(BaseModel):
    """A job as the service reports it."""

    id: int
    kind: str
    state: State
    params: dict[str, Any]
    submitted_at: str
    started_at: str | None
    finished_at: str | None
    run_s: float | None
    attempts: int
    progress: Progress
    summary: dict[str, Any]
    error: str | None
    cancel_requested: bool
    resumed_from: int | None
    resumed_as: int | None = None  # the job that resumed this one
    version: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    version: str
    worker: Literal["running", "paused", "stopped"]


# ---- progress fan-out to SSE clients ------------------------------------------------------------
class EventBroker:
    """Delivers job updates from any thread to the asyncio queues of SSE subscribers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}

    def subscribe(self, job_id: int) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._subs.setdefault(job_id, []).append((asyncio.get_running_loop(), queue))
        return queue

    def unsubscribe(self, job_id: int, queue: asyncio.Queue) -> None:
        with self._lock:
            subs = [s for s in self._subs.get(job_id, []) if s[1] is not queue]
            if subs:
                self._subs[job_id] = subs
            else:
                self._subs.pop(job_id, None)

    def publish(self, view: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs.get(view["id"], ()))
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):  # a closed loop: the subscriber is gone
                loop.call_soon_threadsafe(queue.put_nowait, view)


def _sse(view: dict[str, Any]) -> str:
    return f"event: job\nid: {view['version']}\ndata: {json.dumps(view)}\n\n"


def _sse_error(detail: str) -> str:
    return f"event: error\ndata: {json.dumps({'detail': detail})}\n\n"


# ---- ASGI middleware: auth and body size --------------------------------------------------------
async def _reject(send: Callable[..., Any], status: int, detail: str,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Every request but /health needs `Authorization: Bearer <token>` (401 missing, 403 wrong)."""

    def __init__(self, app: Any, token: str, open_paths: frozenset[str] = frozenset({"/health"})
                 ) -> None:
        self.app, self.token, self.open_paths = app, token.encode(), open_paths

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not given:
            return await _reject(send, 401, "missing bearer token",
                                 [(b"www-authenticate", b"Bearer")])
        if not hmac.compare_digest(given.strip(), self.token):
            return await _reject(send, 403, "wrong token")
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies above `max_bytes` with 413 (declared or streamed)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = f"request body exceeds {self.max_bytes} bytes"
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await _reject(send, 413, too_big)
        # Read the whole body first (at most max_bytes): a limit raised from inside the app's
        # body parsing would come back as FastAPI's 400, and chunked bodies declare no length.
        messages: list[dict[str, Any]] = []
        seen = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                return await _reject(send, 413, too_big)
            if not message.get("more_body", False):
                break
        replay = iter(messages)

        async def replayed_receive() -> dict[str, Any]:
            return next(replay, None) or await receive()

        await self.app(scope, replayed_receive, send)


# ---- the app ------------------------------------------------------------------------------------
def _mark_runs_interrupted(store_path: Path, runs: list[tuple[int, int]]) -> None:
    """The runs (job id, run id) of interrupted jobs (a service killed mid-sweep) that still
    read `running` are marked `interrupted` in the run store too, not left `running` forever
    with no process behind them; tried at every start."""
    if not runs or not store_path.exists():
        return
    from .store import RunStore, StoreError

    try:
        with RunStore(store_path) as store:
            for job_id, run_id in runs:
                if store.run_row(run_id)["status"] == "running":
                    store.set_status(run_id, "interrupted",
                                     f"the service stopped while job {job_id} ran; resume with "
                                     f"'mtjlab jobs --resume {job_id}'")
    except (StoreError, sqlite3.Error) as err:  # the jobs are interrupted all the same
        log.warning("%s: runs of interrupted jobs not marked: %s", store_path, err)


class Service:
    """The queue, the worker and the event fan-out of one station."""

    def __init__(self, config: StationConfig, store_path: Path, jobs_path: Path, *,
                 station_factory: Callable[[StationConfig], Any] | None = None,
                 paused: bool = False, max_queued: int = 1000,
                 keep_finished: int = 1000) -> None:
        self.config = config
        self.store_path = store_path
        # the store's station first (the queue may sit elsewhere: jobs_path), then the queue
        self._station_lock = hold_station(store_path)
        if self._station_lock is None:
            log.warning(unlocked_station_warning(store_path))
        try:
            self.jobs = JobStore(jobs_path, max_queued=max_queued, keep_finished=keep_finished)
        except BaseException:
            self._release_station()
            raise
        # no process drives the station but this one: a sweep's run left `running` is dead
        _mark_runs_interrupted(store_path, self.jobs.interrupted_runs())
        self.broker = EventBroker()
        self.jobs.listeners.append(self.broker.publish)
        self.worker = Worker(config, self.jobs, store_path, station_factory=station_factory,
                             paused=paused)
        self.on_ready: list[Callable[[], None]] = []

    def start(self) -> None:
        self.worker.start()
        for fn in self.on_ready:
            fn()

    def stop(self) -> None:
        self.worker.stop()
        self.jobs.close()
        self._release_station()

    def _release_station(self) -> None:
        if self._station_lock is not None:
            self._station_lock.close()
            self._station_lock = None

    def job_or_404(self, job_id: int) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job


def default_jobs_path(store_path: Path) -> Path:
    """The queue lives next to the run store: RUN.sqlite -> RUN.jobs.sqlite."""
    return store_path.with_name(store_path.stem + ".jobs.sqlite")


def create_app(config: StationConfig, store_path: str | Path, *, token: str | None = None,
               jobs_path: str | Path | None = None, max_body_bytes: int = DEFAULT_MAX_BODY,
               station_factory: Callable[[StationConfig], Any] | None = None,
               paused: bool = False, max_queued: int = 1000,
               keep_finished: int = 1000) -> FastAPI:
    """The HTTP app of one station. The Station opens (in the worker) at app startup.
    keep_finished: finished jobs kept with their results (the oldest are deleted)."""
    store_path = Path(store_path)
    svc = Service(config, store_path, Path(jobs_path or default_jobs_path(store_path)),
                  station_factory=station_factory, paused=paused, max_queued=max_queued,
                  keep_finished=keep_finished)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await anyio.to_thread.run_sync(svc.start)
        except BaseException:
            await anyio.to_thread.run_sync(svc.stop)
            raise
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(svc.stop)

    app = FastAPI(title="mtjlab station service", version=__version__, lifespan=lifespan,
                  description=__doc__)
    app.state.service = svc
    _add_routes(app, svc)

    @app.exception_handler(RejectedJobError)
    async def _rejected(_r: Request, err: RejectedJobError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, err: RequestValidationError) -> JSONResponse:
        # Location and message only: echoing the input could hold NaN, not valid JSON.
        detail = [{"loc": list(e.get("loc", ())), "msg": _message(e),
                   "type": str(e.get("type", ""))} for e in err.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(QueueFullError)
    async def _full(_r: Request, err: QueueFullError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if token:
        app.add_middleware(BearerAuth, token=token)  # outermost: before reading any body
    return app


def _message(error: dict[str, Any]) -> str:
    """A validation error's message, in the service's terms where pydantic's are obscure."""
    if error.get("type") in ("union_tag_not_found", "union_tag_invalid"):
        return f"a job needs a 'kind', one of: {', '.join(RUNNERS)}"
    return str(error.get("msg", ""))


def _add_routes(app: FastAPI, svc: Service) -> None:
    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness, without authentication."""
        alive = svc.worker.alive
        worker = "stopped" if not alive else "paused" if svc.worker.paused else "running"
        return {"status": "ok" if alive else "degraded", "version": __version__,
                "worker": worker}

    @app.get("/station", tags=["service"])
    def station() -> dict[str, Any]:  # not async: the queue's count may wait for its lock
        """Identity, limits, wafer map and the instrument snapshot taken when it opened."""
        info = svc.worker.info
        assert info is not None
        return {"name": svc.config.name, "identities": info.identities,
                "array_shape": list(info.shape),
                "wafer_map": [list(d) for d in info.wafer_map],
                "safety": svc.config.safety.model_dump(),
                "measurement": svc.config.measurement.model_dump(),
                "simulated": svc.config.instruments.simulated is not None,
                "snapshot": svc.worker.snapshot, "queue": svc.jobs.counts(),
                "running": svc.worker.current[0] if svc.worker.current else None}

    def queue(job: Any, resumed_from: int | None = None) -> dict[str, Any]:
        """Check a job against the station (wafer map, shapes, limits, store) and queue it:
        new jobs and resumed ones alike."""
        assert svc.worker.info is not None
        if not svc.worker.alive:
            why = f" ({svc.worker.error})" if svc.worker.error else ""
            raise HTTPException(503, f"the worker has stopped{why}; restart the service")
        if resumed_from is None and getattr(job, "pinned_to", None) is not None:
            raise RejectedJobError("pinned_to is set by the service when it pins an infer to "
                                   "a program job; give train_run instead")
        validate_job(job, svc.worker.info, svc.store_path, svc.jobs.last_writer)
        params = job.stored_params()
        try:
            view = svc.jobs.submit(job.kind, params, resumed_from=resumed_from)
        except AlreadyResumedError as err:
            raise HTTPException(409, str(err)) from None
        svc.worker.wake()
        return view

    @app.post("/jobs", status_code=201, response_model=JobView, tags=["jobs"])
    def submit(job: Annotated[JobRequest, Body()]) -> dict[str, Any]:
        """Queue a job after checking it against the station (wafer map, shapes, limits).
        `kind` selects the job type (a body without one is refused, not guessed)."""
        return queue(job)

    # Handlers that read the job store are plain functions: FastAPI runs them on its thread
    # pool, so a long listing does not hold up /health or the event streams.
    @app.get("/jobs", response_model=list[JobView], tags=["jobs"])
    def list_jobs(state: State | None = None, kind: str | None = Query(None, max_length=32),
                  limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        """The newest `limit` jobs, oldest first."""
        return svc.jobs.list(state, kind, limit)

    @app.get("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def get_job(job_id: int = JobId) -> dict[str, Any]:
        return svc.job_or_404(job_id)

    @app.delete("/jobs/{job_id}", response_model=JobView, tags=["jobs"])
    def cancel(job_id: int = JobId) -> dict[str, Any]:
        """Cancel: a queued job at once; a running one stops at its next safe point."""
        svc.job_or_404(job_id)
        try:
            acted, state = svc.jobs.cancel(job_id)
        except KeyError:  # pruned since the lookup
            raise HTTPException(404, f"no job {job_id}") from None
        if not acted:
            raise HTTPException(409, f"job {job_id} is already {state}")
        if state == "running":
            svc.worker.request_stop(job_id)
        return svc.job_or_404(job_id)

    @app.post("/jobs/{job_id}/resume", status_code=201, response_model=JobView, tags=["jobs"])
    def resume(job_id: int = JobId) -> dict[str, Any]:
        """Queue a stopped job again; an interrupted sweep continues its run."""
        job = svc.job_or_404(job_id)
        if job["state"] not in ("interrupted", "cancelled", "failed"):
            raise HTTPException(409, f"job {job_id} is {job['state']}; only interrupted, "
                                     "cancelled or failed jobs can be resumed")
        try:
            svc.jobs.check_not_resumed(job_id)  # before the checks a new job gets (a sweep
            params = svc.jobs.params(job_id)  # resumed once has finished its run: 422)
        except KeyError:  # pruned since the lookup
            raise HTTPException(404, f"no job {job_id}") from None
        except AlreadyResumedError as err:
            raise HTTPException(409, str(err)) from None
        kind = params.pop("kind")
        run_id = job["summary"].get("run_id")
        if kind == "sweep" and run_id is not None:
            params["resume_run"] = run_id
        # checked as a new job is (a sweep whose run has finished since: 422)
        return queue(REQUEST.validate_python({"kind": kind, **params}), resumed_from=job_id)

    @app.get("/jobs/{job_id}/result", tags=["jobs"],
             responses={200: {"content": {"application/octet-stream": {}},
                              "description": "the job's arrays as .npz bytes"}})
    def result(job_id: int = JobId) -> Response:
        """The job's arrays as .npz (numpy.load); the small facts are in the job's summary."""
        job = svc.job_or_404(job_id)
        data = svc.jobs.result(job_id)
        if data is None:
            raise HTTPException(409, f"job {job_id} is {job['state']}; no result"
                                     + (f": {job['error']}" if job["error"] else ""))
        return Response(data, media_type="application/octet-stream", headers={
            "content-disposition": f'attachment; filename="job-{job_id}.npz"'})

    @app.get("/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "`job` events until the job ends"}})
    async def events(job_id: int = JobId) -> StreamingResponse:
        """Server-sent events: the job's state on every change, ending when it ends."""
        queue = svc.broker.subscribe(job_id)
        try:  # off the event loop: the store's lock may be held by a long listing
            first = await anyio.to_thread.run_sync(svc.job_or_404, job_id)
        except HTTPException:
            svc.broker.unsubscribe(job_id, queue)
            raise
        return StreamingResponse(_stream(svc, job_id, first, queue),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})


async def _stream(svc: Service, job_id: int, first: dict[str, Any], queue: asyncio.Queue
                  ) -> AsyncIterator[str]:
    try:
        last = first["version"]
        yield _sse(first)
        if first["state"] in TERMINAL:
            return
        quiet_s = 0.0
        while True:
            if not svc.worker.alive or svc.worker.stopping:
                # nothing more will happen to this job unless it is running (it then ends
                # at its next safe point, and that is published)
                final = await anyio.to_thread.run_sync(svc.jobs.get, job_id)
                if final is None or final["state"] in TERMINAL:
                    if final is not None and final["version"] > last:  # it ended just before
                        yield _sse(final)
                    return
                if svc.worker.stopping and final["state"] == "queued":  # for the next start
                    yield _sse_error(f"the service is stopping; job {job_id} stays queued "
                                     "and runs when the service is started again")
                    return
                if not svc.worker.alive:
                    yield _sse_error(f"the worker has stopped; job {job_id} will not finish")
                    return
            try:  # short waits: a stopping worker is noticed within a second
                view = await asyncio.wait_for(queue.get(), STREAM_POLL_S)
            except asyncio.TimeoutError:
                quiet_s += STREAM_POLL_S
                if quiet_s >= KEEPALIVE_S:
                    quiet_s = 0.0
                    yield ": keep-alive\n\n"
                continue
            if view["version"] <= last:
                continue
            last = view["version"]
            yield _sse(view)
            if view["state"] in TERMINAL:
                return
    finally:
        svc.broker.unsubscribe(job_id, queue)


# ---- running it ---------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token, and tokens too short to matter."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
    if token is not None and (token != token.strip() or not token.isprintable()
                              or not token.isascii()):
        raise ValueError("the token must be printable ASCII without spaces at either end (no "
                         "client could send it in an HTTP header)")
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to listen on {host} without a token: the service drives "
                         f"instruments; set --token or {TOKEN_ENV}, or bind 127.0.0.1")


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket. proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on
    such sockets, and without it a response's body waits ~40 ms for a delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _server(app: FastAPI) -> Any:
    import uvicorn

    worker: Worker = app.state.service.worker

    class Server(uvicorn.Server):  # type: ignore[misc]
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Ctrl-C or SIGTERM: no new job from now on. uvicorn waits for open connections
            # (event streams, up to 5 s) before the shutdown that stops the worker, and the
            # worker would go on claiming queued jobs meanwhile.
            worker.halt()
            super().handle_exit(sig, frame)

    return Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                 timeout_graceful_shutdown=5))


def serve(station_file: str | Path, host: str = "127.0.0.1", port: int = 8000,
          store: str | Path | None = None, token: str | None = None,
          announce: Callable[[str], None] = print, keep_jobs: int = 1000) -> None:
    """Run the service until interrupted (Ctrl-C or SIGTERM stop it at a safe point)."""
    token = token or os.environ.get(TOKEN_ENV) or None
    check_bind(host, token)
    config = load_station(station_file)
    store_path = Path(store or "mtjlab-runs.sqlite")
    sock = _bind(host, port)
    app = create_app(config, store_path, token=token, keep_finished=keep_jobs)
    svc: Service = app.state.service
    try:  # open the station before serving: a failure is one line and exit 1, not uvicorn's
        svc.worker.start()
    except BaseException:
        sock.close()
        svc.stop()
        raise
    url = f"http://{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"
    svc.on_ready.append(lambda: announce(
        f"mtjlab service: station {config.name!r} ready; listening on {url} "
        f"(store {store_path}, jobs {svc.jobs.path}, auth {'on' if token else 'off'})"))
    server = _server(app)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        if svc.worker.error is not None:
            raise svc.worker.error
        raise RuntimeError("the service did not start")


@contextmanager
def background(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` on a thread (tests, notebooks, benchmarks); yields its base URL."""
    sock = _bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the service did not start")
            threading.Event().wait(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        app.state.service.worker.halt()  # as a signal does (`_server`)
        server.should_exit = True
        thread.join(30)
        sock.close()
