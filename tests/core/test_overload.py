"""Under overload, a request's wait for its turn does not eat its exchange's time.

``AsyncRunClient`` queues requests for the request budget's turn and an in-flight slot
(``max_in_flight``). That queue used to count against the request's timeout, so under a backlog
checks were cut off mid-exchange (closing their connections: each later check a new TLS
handshake) and the client degraded far worse than a bare loop (docs/benchmarks.md). Now the
queue and the exchange are each bounded by the request's timeout, the two together by the
operation's deadline (``Request.limit``): a wait still ends by its deadline.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from runbridge.core import AsyncRunClient, RetryPolicy, TransportError, WaitTimeout
from runbridge.core.flows import FINAL_CHECK, FlowContext
from runbridge.core.http import Request
from runbridge.core.providers.rest import RestProvider
from runbridge.testing.rest import REST_CONFIG

from . import hostile
from .helpers import FakeClock

RUNNING = {"run": {"id": "r-1", "status": "running"}}
SLOW = 0.4
"""Seconds the server takes to answer each request."""


def slow(conn: hostile.Conn, request: hostile.Received) -> bool:
    """Answer every request after SLOW seconds (a loaded platform)."""
    if not conn.pause(SLOW):
        return False
    body = json.dumps(RUNNING).encode()
    return conn.answer(200, body, {"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("deadline_in", "timeout", "limit"),
    [(None, 30.0, None), (100.0, 30.0, 100.0), (12.5, 12.5, 12.5)],
)
def test_the_flow_hands_each_request_its_timeout_and_what_is_left_of_the_deadline(
    deadline_in: float | None, timeout: float, limit: float | None
) -> None:
    """On the fake clock: the request's ``timeout`` is the request budget, lowered to what is
    left of the operation's deadline; ``limit`` is what is left (None: no deadline), which a
    queueing driver keeps queue and exchange within."""
    clock = FakeClock()
    ctx = FlowContext(RestProvider(**REST_CONFIG), RetryPolicy.none(), clock=clock)
    ctx.deadline = None if deadline_in is None else clock.now + deadline_in
    flow = ctx.send(Request("GET", "/api/v1/runs/r-1"))
    sent = next(flow)
    assert isinstance(sent, Request)
    assert (sent.timeout, sent.limit) == (timeout, limit)


@pytest.mark.anyio
async def test_a_request_that_queued_for_its_slot_gets_its_whole_timeout_to_exchange() -> None:
    """One slot, three checks at once, each exchange 0.4 s, timeout 1 s: the third queues
    0.8 s and needs 1.2 s in all. With the queue counted against the timeout it was cut off
    mid-exchange (sent: a read timeout, a closed connection); now every check is answered,
    each sent once."""
    with hostile.HostileServer(slow) as server:
        async with AsyncRunClient(
            "rest",
            server.url,
            max_in_flight=1,
            request_timeout=1.0,
            retry=RetryPolicy.none(),
            **REST_CONFIG,
        ) as client:
            statuses = await asyncio.wait_for(
                asyncio.gather(*(client.get("rest:r-1") for _ in range(3))), 10.0
            )
            assert client._in_flight._value == 1  # every slot given back
    assert [s.raw_state for s in statuses] == ["running"] * 3
    assert server.count() == 3


@pytest.mark.anyio
async def test_a_request_that_never_got_its_turn_in_time_was_never_sent() -> None:
    """The queue itself is bounded by the timeout: a get queued 0.3 s behind a slot held by
    the test is a TransportError marked not sent (safe to send again), and nothing left."""
    with hostile.HostileServer(slow) as server:
        async with AsyncRunClient(
            "rest",
            server.url,
            max_in_flight=1,
            request_timeout=0.3,
            retry=RetryPolicy.none(),
            **REST_CONFIG,
        ) as client:
            async with client._in_flight:
                with pytest.raises(TransportError) as info:
                    await asyncio.wait_for(client.get("rest:r-1"), 5.0)
            assert client._in_flight._value == 1
    assert info.value.sent is False and info.value.timeout
    assert server.count() == 0


@pytest.mark.anyio
async def test_queue_and_exchange_together_never_pass_the_waits_deadline() -> None:
    """The deadline rule still holds: a wait of 0.9 s whose checks queue behind slow ones
    (here: a backlog of other gets holding the only slot) ends by its deadline, although
    its queue and exchange would each fit within the request timeout (30 s)."""
    wait_timeout = 0.9
    with hostile.HostileServer(slow) as server:
        async with AsyncRunClient("rest", server.url, max_in_flight=1, **REST_CONFIG) as client:
            backlog = [asyncio.create_task(client.get("rest:r-1")) for _ in range(2)]
            await asyncio.sleep(0.05)  # the backlog holds the slot for ~0.8 s
            start = time.monotonic()
            with pytest.raises(WaitTimeout):
                await asyncio.wait_for(client.wait("rest:r-2", wait_timeout), 10.0)
            elapsed = time.monotonic() - start
            await asyncio.gather(*backlog)
            assert client._in_flight._value == 1
    assert elapsed < wait_timeout + FINAL_CHECK + 0.5, f"took {elapsed:.2f}s"
