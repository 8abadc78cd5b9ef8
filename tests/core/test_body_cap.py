"""A promise proven at its edge: an answer over the body cap is refused, quickly, unheld.

A hostile platform (tests/core/hostile.py) streams a 50 MB 2xx answer, declares a Content-Length
over any cap and then sends nothing, or sends a small gzip/deflate body that inflates to 50 MB
(a "zip bomb"). Each must end in a ProtocolError naming the size, in well under a second or
two, without the client ever holding anything near 50 MB (tracemalloc's peak, which counts
every allocation of the process while the call runs). Both clients.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import pytest

from runbridge.core import PollSchedule, ProtocolError, RetryPolicy, RunState, TransportError
from runbridge.core.config import DEFAULT_MAX_BODY

from . import hostile
from .helpers import ClientUnderTest, rest_clients

MB = 1_000_000
HUGE = 50 * MB
RUN = {"run": {"id": "r-1", "status": "succeeded", "result": {"rows": 3}}}


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


Connect = Callable[..., ClientUnderTest]


@pytest.fixture
async def connect(kind: str) -> AsyncIterator[Connect]:
    async with rest_clients(kind, "tok-0123456789") as make:
        yield make


class Peak:
    """The most memory the process held (tracemalloc) and the seconds taken, inside ``with``."""

    bytes: int = 0
    seconds: float = 0.0


@contextmanager
def measured() -> Iterator[Peak]:
    peak = Peak()
    tracemalloc.start()
    start = time.monotonic()
    try:
        yield peak
    finally:
        peak.seconds = time.monotonic() - start
        peak.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def assert_refused(exc: BaseException, size: str | None = None) -> None:
    assert isinstance(exc, ProtocolError), repr(exc)
    text = str(exc)
    assert "bytes or more, over the client's max_body of" in text, text
    if size is not None:
        assert size in text, text
    assert not exc.retryable  # an answer too large to read is not worth asking for again


# -- a 50 MB answer, streamed --------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("op", ["get", "wait"])
async def test_a_50mb_answer_is_refused_quickly_without_being_held(
    connect: Connect, op: str
) -> None:
    with hostile.HostileServer(hostile.stream(HUGE)) as server:
        client = connect(server)  # the default cap, 8 MiB
        with measured() as peak, pytest.raises(ProtocolError) as info:
            await getattr(client, op)(client.ref("r-1"))
    assert_refused(info.value)
    size = int(str(info.value).split(" is ")[1].split(" bytes")[0].replace(",", ""))
    assert DEFAULT_MAX_BODY < size < DEFAULT_MAX_BODY + MB  # the size read when it stopped
    assert server.count() == 1  # not retried, not tolerated by the wait
    assert peak.seconds < 5.0
    assert peak.bytes < DEFAULT_MAX_BODY + 4 * MB, f"held {peak.bytes:,} bytes"


@pytest.mark.anyio
async def test_a_small_cap_holds_little(connect: Connect) -> None:
    with hostile.HostileServer(hostile.stream(HUGE, chunk=16 * 1024)) as server:
        client = connect(server, max_body=64 * 1024)
        with measured() as peak, pytest.raises(ProtocolError) as info:
            await client.get(client.ref("r-1"))
    assert_refused(info.value)
    assert peak.seconds < 2.0
    assert peak.bytes < 2 * MB, f"held {peak.bytes:,} bytes"


# -- a declared Content-Length over the cap ------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("op", ["get", "wait"])
async def test_a_declared_length_over_the_cap_is_refused_before_reading(
    connect: Connect, op: str
) -> None:
    """The server declares 60 MB and sends no body at all: reading it would hang until the
    request timeout; the client refuses it from the headers."""
    with hostile.HostileServer(hostile.declare(60 * MB)) as server:
        client = connect(server, request_timeout=10.0)
        with measured() as peak, pytest.raises(ProtocolError) as info:
            await getattr(client, op)(client.ref("r-1"))
    assert_refused(info.value, "60,000,000 bytes")
    assert peak.seconds < 1.0
    assert peak.bytes < 1 * MB


# -- compressed answers ----------------------------------------------------------------------------
@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_a_compressed_answer_that_inflates_past_the_cap_is_refused_as_it_inflates(
    connect: Connect, coding: str
) -> None:
    """~50 KB on the wire, 50 MB inflated: refused once the inflated bytes pass the cap,
    having held no more than the cap (httpx alone would inflate each read whole)."""
    bomb = hostile.gzip_bomb(HUGE, coding)  # made before measuring
    with hostile.HostileServer(bomb) as server:
        client = connect(server)
        with measured() as peak, pytest.raises(ProtocolError) as info:
            await client.get(client.ref("r-1"))
    assert_refused(info.value)
    assert server.count() == 1
    assert peak.seconds < 2.0
    assert peak.bytes < DEFAULT_MAX_BODY + 4 * MB, f"held {peak.bytes:,} bytes"


@pytest.mark.anyio
async def test_a_bomb_against_a_small_cap_holds_little(connect: Connect) -> None:
    bomb = hostile.gzip_bomb(HUGE)
    with hostile.HostileServer(bomb) as server:
        client = connect(server, max_body=64 * 1024)
        with measured() as peak, pytest.raises(ProtocolError) as info:
            await client.get(client.ref("r-1"))
    assert_refused(info.value)
    assert peak.bytes < 2 * MB, f"held {peak.bytes:,} bytes"


@pytest.mark.anyio
@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw deflate"])
async def test_a_compressed_answer_under_the_cap_is_read(connect: Connect, coding: str) -> None:
    body = hostile.compress(json.dumps(RUN).encode(), coding)
    encoding = "deflate" if coding.endswith("deflate") else coding
    answer = hostile.reply(
        200, body, {"Content-Type": "application/json", "Content-Encoding": encoding}
    )
    with hostile.HostileServer(answer) as server:
        client = connect(server)
        status = await client.get(client.ref("r-1"))
        waited = await client.wait(client.ref("r-1"), 5.0, poll=PollSchedule.fixed(0.01))
    assert status.state is RunState.SUCCEEDED and status.outputs == {"rows": 3}
    assert waited.state is RunState.SUCCEEDED
    # the client asks only for what it decodes a bounded piece at a time
    assert server.requests[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.anyio
async def test_a_large_compressed_answer_under_the_cap_is_read_whole(connect: Connect) -> None:
    """Inflated 64 KiB at a time, and every piece kept: 3 MB of outputs arrive intact."""
    run = {"run": {"id": "r-1", "status": "succeeded", "result": {"blob": "ab" * 1_500_000}}}
    body = hostile.compress(json.dumps(run).encode(), "gzip")
    answer = hostile.reply(200, body, {"Content-Encoding": "gzip"})
    with hostile.HostileServer(answer) as server:
        status = await connect(server).get("rest:r-1")
    assert status.outputs == {"blob": "ab" * 1_500_000}


@pytest.mark.anyio
async def test_a_corrupt_gzip_answer_is_a_transport_error(connect: Connect) -> None:
    garbage = hostile.reply(
        200, b"\x1f\x8b\x08\x00garbage, not deflate", {"Content-Encoding": "gzip"}
    )
    with hostile.HostileServer(garbage) as server:
        client = connect(server, retry=RetryPolicy(attempts=2, first=0.0, jitter=0.0))
        with pytest.raises(TransportError, match="DecodingError"):
            await client.get(client.ref("r-1"))


@pytest.mark.anyio
async def test_a_coding_not_asked_for_is_not_decoded(connect: Connect) -> None:
    """A server sending ``br`` anyway: the bytes pass through as received, an unreadable
    answer (never inflated by a decoder the cap cannot bound)."""
    answer = hostile.reply(200, b"\x8b\x02\x80not really brotli", {"Content-Encoding": "br"})
    with hostile.HostileServer(answer) as server:
        client = connect(server)
        with pytest.raises(ProtocolError, match="not valid JSON"):
            await client.get(client.ref("r-1"))
