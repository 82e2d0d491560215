"""Auth: /health open, everything else needs the bearer token; no public bind without one."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from instruments.cli import main as service_main
from instruments.client import Client, RequestRejectedError
from instruments.service import check_bind, serve

from .service_support import TOKEN, client, live, station_yaml


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    with live(tmp_path_factory.mktemp("auth"), token=TOKEN) as (base, _app):
        yield base


@pytest.mark.parametrize("path", ["/jobs", "/jobs/1", "/station", "/openapi.json", "/docs"])
def test_missing_token_401_wrong_token_403(url: str, path: str) -> None:
    r = httpx.get(url + path)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + path, headers={"authorization": "Basic abc"}).status_code == 401
    assert httpx.get(url + path, headers={"authorization": "Bearer nope"}).status_code == 403


def test_right_token_and_open_health(url: str) -> None:
    assert httpx.get(url + "/health").status_code == 200
    with client(url, TOKEN) as c:
        assert c.station()["name"] == "test-station"
        job = c.submit("measure", die=(0, 0))
        assert c.wait(job["id"], timeout_s=30)["state"] == "succeeded"
        assert "kinds" in c.result(job["id"])


def test_client_with_wrong_token_is_refused(url: str) -> None:
    with Client(url, token="wrong-token") as c, pytest.raises(RequestRejectedError) as err:
        c.list()
    assert err.value.status == 403


def test_post_without_token_never_reads_the_body(url: str) -> None:
    r = httpx.post(url + "/jobs", content=b"x" * (20 * 1024 * 1024))
    assert r.status_code == 401


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "::", "example.org"])
def test_public_bind_needs_a_token(host: str) -> None:
    with pytest.raises(ValueError, match="without a token"):
        check_bind(host, None)
    check_bind(host, TOKEN)  # allowed with one


def test_loopback_needs_none_and_short_tokens_refused() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_bind(host, None)
    with pytest.raises(ValueError, match="at least"):
        check_bind("127.0.0.1", "short")
    for unsendable in (" " * 8, " lab-token-0123", "lab-token-0123\n", "lab\x00token-0123",
                       "lab-tökén-0123"):
        with pytest.raises(ValueError, match="no client could send it in an HTTP header"):
            check_bind("0.0.0.0", unsendable)  # it used to start, and refuse every request


def test_serve_refuses_before_binding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTJLAB_TOKEN", raising=False)
    station = station_yaml(tmp_path / "st.yaml")
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0"):
        serve(station, host="0.0.0.0", port=0, store=tmp_path / "r.sqlite")
    assert service_main(["serve", "--station", str(station), "--host", "0.0.0.0"]) == 2
    assert not (tmp_path / "r.sqlite").exists()
