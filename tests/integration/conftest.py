"""Fixtures for the emulator suites: both clients against a fresh emulator on loopback.

A module uses them by defining an ``emulator`` fixture (a fresh, unserved emulator with its
token; its platform names the client's) and, where its client needs more, ``client_options``
(merged over the defaults below). Then:

- ``relay``: one uvicorn server for the module (starting one per test would cost more than the
  tests), relaying to whatever emulator ``emu`` put behind it;
- ``emu``: the module's ``emulator``, put behind the relay for the test;
- ``kind``: ``"sync"`` and ``"async"``, so each test runs against both clients;
- ``connect(token=emu.token, **options)``: a client of ``kind`` for ``emu``, closed after;
- ``client``: ``connect()``.

A module that defines its own ``emu`` or ``client`` (the langgraph and SDK suites) overrides
these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from runbridge.core import PollSchedule, RetryPolicy
from runbridge.testing import Emulator, Relay, serve_relay
from tests.core.helpers import ClientUnderTest, make_client

Connect = Callable[..., ClientUnderTest]


def quick_client_options() -> dict[str, Any]:
    """Fast polls, quick retries and a short request timeout: what the suites' clients use."""
    return {
        "poll": PollSchedule.fixed(0.05),
        "retry": RetryPolicy(attempts=4, first=0.02, cap=0.1, jitter=0.0),
        "request_timeout": 5.0,
    }


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    with serve_relay() as relay:
        yield relay


@pytest.fixture
def emu(relay: Relay, emulator: Emulator) -> Iterator[Emulator]:
    """The module's ``emulator`` fixture, served (behind the module's relay) for this test."""
    yield relay.swap(emulator)
    relay.target = None


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_options() -> dict[str, Any]:
    """Options a module's clients need besides the quick defaults (override in the module)."""
    return {}


@pytest.fixture
async def connect(
    kind: str, emu: Emulator, client_options: dict[str, Any]
) -> AsyncIterator[Connect]:
    """``connect(token=emu.token, **options)``: a client of ``kind`` for ``emu``, closed after."""
    made: list[ClientUnderTest] = []

    def connect(token: str | None = emu.token, **kwargs: Any) -> ClientUnderTest:
        options = {**quick_client_options(), **client_options, **kwargs}
        made.append(make_client(kind, emu.platform, emu.base_url, token, **options))
        return made[-1]

    yield connect
    for client in made:
        await client.close()


@pytest.fixture
def client(connect: Connect) -> ClientUnderTest:
    return connect()
