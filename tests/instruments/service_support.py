"""Shared helpers of the service tests: small stations, a live server on loopback, a guard."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from instruments.client import Client
from instruments.config import StationConfig
from instruments.service import background, create_app
from instruments.station import Station

TOKEN = "test-token-123"
REPO_ROOT = Path(__file__).resolve().parents[2]


def small_config(cols: int = 2, rows: int = 2, seed: int = 0) -> StationConfig:
    """A simulated station with a cols x rows wafer (jobs stay fast)."""
    return StationConfig.model_validate(
        {"name": "test-station",
         "instruments": {"simulated": {"seed": seed,
                                       "wafer": {"grid_cols": cols, "grid_rows": rows}}}})


def station_yaml(path: Path, cols: int = 2, rows: int = 2) -> Path:
    path.write_text(f"name: test-station\ninstruments:\n  simulated:\n    seed: 0\n"
                    f"    wafer: {{grid_cols: {cols}, grid_rows: {rows}}}\n", encoding="utf-8")
    return path


@contextmanager
def live(tmp_path: Path, config: StationConfig | None = None, token: str | None = None,
         **app_kwargs: Any) -> Iterator[tuple[str, FastAPI]]:
    """A service on 127.0.0.1 (free port) in a thread; yields (base URL, app)."""
    app = create_app(config or small_config(), tmp_path / "run.sqlite", token=token,
                     **app_kwargs)
    with background(app) as url:
        yield url, app


@contextmanager
def client(url: str, token: str | None = None) -> Iterator[Client]:
    with Client(url, token=token, timeout_s=60) as c:
        yield c


class _Guarded:
    """Proxy of an instrument driver: every call must come from one thread, never overlapping."""

    def __init__(self, target: Any, guard: UseGuard) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_guard", guard)

    def __getattr__(self, name: str) -> Any:
        with self._guard.using():
            value = getattr(self._target, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._guard.using():
                return value(*args, **kwargs)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        with self._guard.using():
            setattr(self._target, name, value)


class UseGuard:
    """Records instrument use; a concurrent use or a second thread is a violation."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.threads: set[int] = set()
        self.violations: list[str] = []
        self.calls = 0
        self.dies: list[tuple[int, int, float, float]] = []  # col, row, start, end

    @contextmanager
    def using(self) -> Iterator[None]:
        if not self.lock.acquire(blocking=False):
            self.violations.append(f"concurrent use from thread {threading.get_ident()}")
            yield
            return
        try:
            self.threads.add(threading.get_ident())
            self.calls += 1
            yield
        finally:
            self.lock.release()

    def factory(self, config: StationConfig) -> Station:
        guard = self

        class GuardedStation(Station):
            def _connect(self) -> None:
                super()._connect()
                self.prober = _Guarded(self.prober, guard)  # type: ignore[assignment]
                self.tester = _Guarded(self.tester, guard)  # type: ignore[assignment]

            @contextmanager
            def at_die(self, die: Any) -> Iterator[None]:
                start = time.perf_counter()
                with super().at_die(die):
                    yield
                guard.dies.append((die.col, die.row, start, time.perf_counter()))

        return GuardedStation(config)
