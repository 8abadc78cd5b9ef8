"""Prefect integration tests: one Prefect test server (``prefect_test_harness``, ~15 s to
start) for the whole session, one emulator server (a relay) with a fresh emulator per test.

Prefect's home, result storage and memo store go to a temporary directory, set in the
environment before Prefect is imported (and again as settings, in case it was imported
earlier), so nothing is written under the real ``$HOME``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="runbridge-prefect-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
_ENV = {
    "PREFECT_HOME": _HOME,
    # these do not follow PREFECT_HOME in Prefect 3.7
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": os.path.join(_HOME, "storage"),
    "PREFECT_SERVER_MEMO_STORE_PATH": os.path.join(_HOME, "memo_store.toml"),
    "PREFECT_LOGGING_CONFIG_PATH": os.path.join(_HOME, "logging.yml"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
}
_SAVED_ENV = {name: os.environ.get(name) for name in (*_ENV, "PREFECT_API_URL")}
os.environ.update(_ENV)

import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from runbridge.testing import Relay, Script, create_emulator, serve  # noqa: E402
from runbridge.testing._emulator import Emulator, Receive, Scope, Send  # noqa: E402
from runbridge.testing.rest import REST_CONFIG  # noqa: E402

TOKEN = "rb-t0ken-s3cret-9f8e7d"
"""The emulators' API token: no log line, artifact or error may contain it."""

FAST = Script([("queued", 0.05), ("running", 0.25)], final="succeeded", outputs={"rows": 42})


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """A Prefect server (the test harness) for the session; yields its API URL."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    updates: dict[Any, Any] = {
        PREFECT_HOME: _HOME,
        PREFECT_RESULTS_LOCAL_STORAGE_PATH: _ENV["PREFECT_RESULTS_LOCAL_STORAGE_PATH"],
    }
    with temporary_settings(updates=updates), prefect_test_harness(server_startup_timeout=90):
        api_url = str(PREFECT_API_URL.value())
        # flow runs in other processes (the Runner's) must find this server too
        os.environ["PREFECT_API_URL"] = api_url
        yield api_url
    for name, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class CountingRelay(Relay):
    """A relay that also counts the TCP connections clients opened to it (distinct client
    address and port), to show that concurrent waits share one connection pool."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: set[tuple[str, int]] = set()
        self._peers_lock = threading.Lock()

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client:
            with self._peers_lock:
                self.peers.add((client[0], client[1]))
        await super()._forward(scope, receive, send)

    def reset(self) -> None:
        with self._peers_lock:
            self.peers.clear()


@pytest.fixture(scope="session")
def relay() -> Iterator[CountingRelay]:
    with serve(CountingRelay()) as served:
        assert isinstance(served, CountingRelay)
        yield served


def swap_emulator(relay: CountingRelay, platform: str, **kwargs: Any) -> Emulator:
    """Put a fresh emulator of ``platform`` (requiring ``TOKEN``) behind the relay."""
    relay.reset()
    return relay.swap(create_emulator(platform, token=TOKEN, **kwargs))


@pytest.fixture
def rest_emu(relay: CountingRelay) -> Emulator:
    """A fresh REST emulator (runs take ~0.3 s) behind the relay."""
    return swap_emulator(relay, "rest", script=FAST)


@pytest.fixture
def langgraph_emu(relay: CountingRelay) -> Emulator:
    return swap_emulator(relay, "langgraph")


@pytest.fixture
def rest_credentials(rest_emu: Emulator) -> Any:
    from runbridge.prefect_blocks import RunbridgeCredentials

    return RunbridgeCredentials(
        platform="rest", base_url=rest_emu.base_url, token=TOKEN, options=REST_CONFIG
    )


@pytest.fixture
def langgraph_credentials(langgraph_emu: Emulator) -> Any:
    from runbridge.prefect_blocks import RunbridgeCredentials

    return RunbridgeCredentials(platform="langgraph", base_url=langgraph_emu.base_url, token=TOKEN)
