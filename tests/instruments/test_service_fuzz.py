"""Schema fuzzing over HTTP: arbitrary and near-valid requests never cause a 500."""

from __future__ import annotations

import io
import json
import string
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instruments.job_kinds import encode_array

from .service_support import live

KINDS = ["sweep", "measure", "program", "infer", "train", "evaluate"]
FIELDS = ["die", "targets", "inputs", "pulse_v", "pulse_width_s", "max_write_pulses", "sizes",
          "output_copies", "readout",
          "method", "seed", "data_dir", "resume_run", "kind", ""]
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@st.composite
def npy_text(draw: st.DrawFn) -> str:
    """Base64 .npy of odd dtypes and shapes, or broken bytes."""
    dtype = draw(st.sampled_from(["uint8", "int8", "int64", "float32", "float64", "bool",
                                  "complex64", "U3"]))
    shape = draw(st.sampled_from([(100, 200), (2, 100), (0, 100), (3,), (), (1, 1, 1)]))
    fill = draw(st.integers(-3, 3))
    arr = np.full(shape, fill).astype(dtype) if dtype != "U3" else np.full(shape, "ab")
    buf = io.BytesIO()
    np.save(buf, arr)
    raw = buf.getvalue()
    cut = draw(st.integers(0, 3))
    raw = raw[: len(raw) - cut] if cut else raw
    import base64

    return draw(st.sampled_from([base64.b64encode(raw).decode(), encode_array(np.zeros(3)),
                                 "@@@", ""]))


@st.composite
def job_bodies(draw: st.DrawFn) -> dict:
    """Mostly well-shaped job bodies with wrong, extreme or missing values."""
    body = {"kind": draw(st.sampled_from([*KINDS, "nope", 3]))}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        body[name] = draw(st.one_of(
            json_values,
            st.tuples(st.integers(-(2**65), 2**65), st.integers(-(2**65), 2**65)).map(list),
            st.lists(st.integers(0, 1), max_size=3),
            npy_text(),
            st.sampled_from(["baseline", "hat", "sat", "/", "/nonexistent", "../.."]),
            st.floats(-10, 10, allow_nan=False),
        ))
    return body


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    # paused: accepted jobs are queued, never run (the fuzz tests the API, not the chip)
    with live(tmp_path_factory.mktemp("fuzz"), paused=True, max_queued=100_000) as (base, _):
        yield base


@pytest.fixture(scope="module")
def http(url: str) -> httpx.Client:
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


@FUZZ
@given(body=job_bodies())
def test_post_jobs_never_500(http: httpx.Client, body: dict) -> None:
    r = http.post("/jobs", content=json.dumps(body, allow_nan=True),
                  headers={"content-type": "application/json"})
    assert r.status_code in (201, 422), (r.status_code, r.text[:300])


@FUZZ
@given(body=json_values, ctype=st.sampled_from(["application/json", "text/plain", ""]))
def test_post_arbitrary_json_never_500(http: httpx.Client, body: object, ctype: str) -> None:
    r = http.post("/jobs", content=json.dumps(body, allow_nan=True),
                  headers={"content-type": ctype} if ctype else {})
    assert r.status_code < 500, (r.status_code, r.text[:300])


@FUZZ
@given(method=st.sampled_from(["GET", "DELETE", "POST"]),
       path=st.sampled_from(["/jobs/{}", "/jobs/{}/result", "/jobs/{}/resume", "/jobs/{}"]),
       job=st.one_of(st.integers(-(2**70), 2**70), st.text(string.printable, max_size=12)),
       query=st.dictionaries(st.sampled_from(["state", "kind", "limit", "x"]),
                             st.text(string.printable, max_size=8), max_size=3))
def test_paths_and_queries_never_500(http: httpx.Client, method: str, path: str,
                                     job: object, query: dict) -> None:
    url = path.format(quote(str(job), safe=""))
    r = http.request(method, url, params=query)
    assert r.status_code < 500, (method, url, r.status_code, r.text[:300])
    r = http.get("/jobs", params=query)
    assert r.status_code < 500, (query, r.status_code, r.text[:300])


def test_openapi_lists_every_job_kind(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    text = json.dumps(schema)
    for kind in KINDS:
        assert f'"{kind}"' in text
