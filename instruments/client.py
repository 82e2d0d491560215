"""Python client of the station service: submit jobs, follow them, fetch their arrays.

    with Client("http://127.0.0.1:8000", token=...) as c:
        job = c.submit("measure", die=(2, 3))
        done = c.wait(job["id"])             # follows server-sent events, no polling
        arrays = c.result(job["id"])         # {"kinds": ..., "r_p_ohm": ..., "r_ap_ohm": ...}

Errors: `RequestRejectedError` (a ValueError) for requests the service refused (4xx: bad
input, unknown job, wrong token; a refused job's fields are in its `problems`), a ValueError
for a service URL that is not http:// or https://, `ServiceError` (a RuntimeError) when the
service cannot be reached or failed, `JobFailedError` from `run` when a job ended in any
state but succeeded.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from typing import Any, NamedTuple, get_args

import httpx
import numpy as np

from .job_kinds import JobRequest, encode_array

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, TOKEN_ENV = "MTJLAB_SERVER", "MTJLAB_TOKEN"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


#: pause before reconnecting to a service that did not answer, doubling up to the maximum
RECONNECT_PAUSE_S = 0.1
RECONNECT_PAUSE_MAX_S = 2.0
#: without a deadline, how long `Client.events` keeps reconnecting to a service that does
#: not answer (a restart takes seconds) before it gives up
MAX_OUTAGE_S = 60.0

class ServiceError(RuntimeError):
    """The service could not be reached, or failed to answer (5xx)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Problem(NamedTuple):
    """One reason a request failed validation (422): the field, as a path into the request
    (a job's parameter, a query parameter; empty for the request as a whole), the message,
    pydantic's error type ("missing", "greater_than", ...)."""

    field: tuple[str | int, ...]
    message: str
    type: str

    def __str__(self) -> str:
        return f"{'.'.join(map(str, self.field))}: {self.message}" if self.field else self.message


class RequestRejectedError(ValueError):
    """The service refused the request (4xx); the message is the service's reason, and
    `problems` its validation errors field by field (422 from request validation only)."""

    def __init__(self, message: str, status: int, problems: tuple[Problem, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems


class JobFailedError(RuntimeError):
    """A job ended failed, cancelled or interrupted."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"job {job['id']} ({job['kind']}) {job['state']}"
                         + (f": {job['error']}" if job.get("error") else ""))
        self.job = job


#: the job kinds: the tag a job request's validation errors carry after "body"
JOB_KINDS = frozenset(kind for model in get_args(get_args(JobRequest)[0])
                      for kind in get_args(model.model_fields["kind"].annotation))


def _problem(error: Any) -> Problem:
    """A validation error of the service's 422 in the request's own terms: its location without
    FastAPI's part ("body", "query") or the job kind's tag, its message without pydantic's
    "Value error, " prefix."""
    if not isinstance(error, dict):
        return Problem((), str(error), "")
    loc = list(error.get("loc") or ())
    if loc and loc[0] in ("body", "query", "path", "header"):
        where = loc.pop(0)
        if where == "body" and loc and loc[0] in JOB_KINDS:
            loc.pop(0)
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return Problem(tuple(loc), message, str(error.get("type", "")))


def _detail(response: httpx.Response) -> tuple[str, tuple[Problem, ...]]:
    """The service's reason for an error answer, and its validation problems if any."""
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):
        return response.text or response.reason_phrase, ()
    if isinstance(detail, list):  # pydantic's validation errors
        problems = tuple(_problem(d) for d in detail)
        return "; ".join(map(str, problems)), problems
    return str(detail), ()


def _check_url(url: str) -> None:
    """ValueError unless `url` is an http:// or https:// URL with a host."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as err:
        raise ValueError(f"the service URL {url!r} is not valid: {err}") from None
    if parsed.scheme not in ("http", "https"):
        hint = f" (write http://{url})" if "://" not in url else ""
        raise ValueError(f"the service URL {url!r} does not start with http:// or https://{hint}")
    if not parsed.host:
        raise ValueError(f"the service URL {url!r} names no host")


class Client:
    """A connection to one station service (thread-safe like httpx.Client)."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 timeout_s: float = 30.0) -> None:
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        _check_url(url)
        self.url = url.rstrip("/")
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise ServiceError(f"cannot reach the service at {self.url}: {err}") from err
        self._raise_for(response)
        return response

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        detail, problems = _detail(response)
        message = f"{response.status_code}: {detail}"
        if 400 <= response.status_code < 500:
            raise RequestRejectedError(message, response.status_code, problems)
        raise ServiceError(message, response.status_code)

    # ---- the service -----------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health").json()

    def station(self) -> dict[str, Any]:
        return self._call("GET", "/station").json()

    # ---- jobs ------------------------------------------------------------------------------
    def submit(self, kind: str, **params: Any) -> dict[str, Any]:
        """Queue a job; numpy arrays among `params` are sent as base64 .npy."""
        body = {"kind": kind, **{k: encode_array(v) if isinstance(v, np.ndarray) else v
                                 for k, v in params.items()}}
        return self._call("POST", "/jobs", json=body).json()

    def get(self, job_id: int) -> dict[str, Any]:
        return self._call("GET", f"/jobs/{job_id}").json()

    def list(self, state: str | None = None, kind: str | None = None,
             limit: int = 100) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("state", state), ("kind", kind)) if v is not None}
        return self._call("GET", "/jobs", params={**params, "limit": limit}).json()

    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued job, or ask a running one to stop at its next safe point."""
        return self._call("DELETE", f"/jobs/{job_id}").json()

    def resume(self, job_id: int) -> dict[str, Any]:
        """Queue an interrupted, cancelled or failed job again (a sweep continues its run)."""
        return self._call("POST", f"/jobs/{job_id}/resume").json()

    def result(self, job_id: int) -> dict[str, np.ndarray]:
        """The job's arrays (decoded from .npz)."""
        data = self._call("GET", f"/jobs/{job_id}/result").content
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}

    def events(self, job_id: int, timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """The job's state on every change (server-sent events) until it ends.

        Reconnects after a dropped stream (a service restart, say); raises TimeoutError after
        `timeout_s`, or without one ServiceError once the service has not answered for
        `MAX_OUTAGE_S`.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = -1
        failures = 0  # stream attempts in a row that found no service
        unanswered: httpx.TransportError | None = None
        down_since = 0.0
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                why = f" (the service did not answer: {unanswered})" if unanswered else ""
                raise TimeoutError(f"job {job_id} did not finish within {timeout_s:g} s{why}")
            read = self.timeout_s if remaining is None else min(self.timeout_s, remaining)
            try:
                for view in self._stream(job_id, httpx.Timeout(self.timeout_s, read=read)):
                    failures, unanswered = 0, None  # answered
                    if view["version"] > last:
                        last = view["version"]
                        yield view
                    if view["state"] in TERMINAL:
                        return
            except httpx.TransportError as err:
                if isinstance(err, httpx.ReadTimeout):
                    failures, unanswered = 0, None  # connected; the job is just slow
                    continue
                now = time.monotonic()
                if failures == 0:
                    down_since = now
                elif deadline is None and now - down_since >= MAX_OUTAGE_S:
                    raise ServiceError(f"lost the event stream of job {job_id}: the service "
                                       f"has not answered for {now - down_since:.0f} s "
                                       f"({err})") from err
                failures += 1
                unanswered = err
                pause = min(RECONNECT_PAUSE_S * 2 ** (failures - 1), RECONNECT_PAUSE_MAX_S)
                end = deadline if deadline is not None else down_since + MAX_OUTAGE_S
                time.sleep(max(0.0, min(pause, end - time.monotonic())))

    def _stream(self, job_id: int, timeout: httpx.Timeout) -> Iterator[dict[str, Any]]:
        with self.http.stream("GET", f"/jobs/{job_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            data: list[str] = []
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    payload = json.loads("\n".join(data))
                    if event == "error":
                        raise ServiceError(f"job {job_id}: {payload.get('detail', payload)}")
                    yield payload
                    data, event = [], "message"

    def wait(self, job_id: int, timeout_s: float | None = None) -> dict[str, Any]:
        """Block until the job ends; returns its final state (whatever it is)."""
        final: dict[str, Any] = {}
        for view in self.events(job_id, timeout_s):
            final = view
        return final

    def run(self, kind: str, timeout_s: float | None = None, **params: Any
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Submit, wait and fetch: (final job, arrays); JobFailedError unless it succeeded."""
        job = self.wait(self.submit(kind, **params)["id"], timeout_s)
        if job["state"] != "succeeded":
            raise JobFailedError(job)
        return job, self.result(job["id"])
