"""A promise proven at its edge: a pushed update is a hint, never a verdict, and never a lever.

Against a platform on loopback (tests/core/hostile.py) whose run is still running, a stale or
forged terminal delivery (once, or a flood of them, one a millisecond) must cost a wait a
bounded number of status requests: before the fix the issue saw 7,397 in one second. The inbox
keeps at most ``max_pending`` statuses. A genuine delivery ends a wait at once, with one
confirming check. Both clients.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from runbridge.core import (
    AsyncRunClient,
    Inbox,
    PollSchedule,
    RunRef,
    RunState,
    RunStatus,
    WaitTimeout,
)
from runbridge.testing.rest import REST_CONFIG

from . import hostile
from .helpers import ClientUnderTest, make_client, rest_clients

REF = RunRef("rest", "r-1")
FORGED = RunStatus(REF, RunState.SUCCEEDED, "succeeded")
RUNNING = {"run": {"id": "r-1", "status": "running"}}
DONE = {"run": {"id": "r-1", "status": "succeeded"}}
STATUS_PATH = "/api/v1/runs/r-1"
POLL = 0.15
WAIT = 0.6


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


Connect = Callable[..., ClientUnderTest]


@pytest.fixture
async def connect(kind: str) -> AsyncIterator[Connect]:
    async with rest_clients(kind) as make:
        yield lambda server, inbox, **options: make(server, inbox=inbox, **options)


def scheduled_checks(seconds: float, interval: float) -> int:
    """The checks a polling wait makes in ``seconds``: the first, one per interval, one at the
    deadline."""
    return 1 + int(seconds / interval) + 1


@contextmanager
def flooding(inbox: Inbox, status: RunStatus, every: float = 0.001) -> Iterator[list[int]]:
    """Deliver ``status`` every ``every`` seconds from another thread (a forger hammering the
    webhook endpoint) while the block runs; yields a one-item list: the deliveries made."""
    stop = threading.Event()
    count = [0]

    def forge() -> None:
        while not stop.is_set():
            inbox.deliver(status)
            count[0] += 1
            stop.wait(every)

    thread = threading.Thread(target=forge, daemon=True)
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join(2.0)


# -- stale and forged deliveries ---------------------------------------------------------------
@pytest.mark.anyio
async def test_a_stale_terminal_delivery_costs_one_check(connect: Connect) -> None:
    """Delivered before the wait began (a previous run's, a replay): consumed by the first
    sleep, confirmed wrong by one check, then plain polling."""
    inbox = Inbox()
    inbox.deliver(FORGED)
    with hostile.HostileServer(hostile.json_reply(200, RUNNING)) as server:
        client = connect(server, inbox)
        with pytest.raises(WaitTimeout):
            await client.wait(REF, WAIT, poll=PollSchedule.fixed(POLL))
    assert server.count("GET", STATUS_PATH) <= scheduled_checks(WAIT, POLL) + 1
    assert len(inbox) == 0  # consumed, not left to wake the next wait


@pytest.mark.anyio
async def test_a_forged_delivery_during_the_wait_costs_one_check(connect: Connect) -> None:
    inbox = Inbox()
    timer = threading.Timer(0.3, inbox.deliver, args=(FORGED,))
    with hostile.HostileServer(hostile.json_reply(200, RUNNING)) as server:
        client = connect(server, inbox)
        timer.start()
        with pytest.raises(WaitTimeout):
            await client.wait(REF, WAIT, poll=PollSchedule.fixed(POLL))
    timer.join()
    assert server.count("GET", STATUS_PATH) <= scheduled_checks(WAIT, POLL) + 1


@pytest.mark.anyio
async def test_a_flood_of_forged_deliveries_costs_a_bounded_number_of_checks(
    connect: Connect,
) -> None:
    """One forged terminal delivery a millisecond for the whole wait: the wait confirms a
    delivery at most once per poll interval (a delivery proved wrong makes the next sleep a
    full one), not once per delivery."""
    inbox = Inbox()
    with hostile.HostileServer(hostile.json_reply(200, RUNNING)) as server:
        client = connect(server, inbox)
        with flooding(inbox, FORGED) as delivered, pytest.raises(WaitTimeout):
            await client.wait(REF, WAIT, poll=PollSchedule.fixed(POLL))
    checks = server.count("GET", STATUS_PATH)
    assert delivered[0] > 100  # the flood was real
    # at most one confirming check per scheduled one
    assert checks <= 2 * scheduled_checks(WAIT, POLL), f"{checks} checks in {WAIT}s"


@pytest.mark.anyio
async def test_a_flood_for_many_waits_is_bounded_for_each(kind: str) -> None:
    """Twenty async waits (or four sync ones, in threads) on different runs, every run's
    terminal status forged every millisecond: the checks stay bounded per wait."""
    runs = 20 if kind == "async" else 4
    refs = [RunRef("rest", f"r-{i}") for i in range(runs)]
    inbox = Inbox()
    stop = threading.Event()

    def forge() -> None:
        while not stop.is_set():
            for ref in refs:
                inbox.deliver(RunStatus(ref, RunState.SUCCEEDED, "succeeded"))
            stop.wait(0.001)

    def running(conn: hostile.Conn, request: hostile.Received) -> bool:
        run_id = request.path.rsplit("/", 1)[1]
        return hostile.json_reply(200, {"run": {"id": run_id, "status": "running"}})(conn, request)

    forger = threading.Thread(target=forge, daemon=True)
    with hostile.HostileServer(running) as server:
        client = make_client(kind, "rest", server.url, inbox=inbox, **REST_CONFIG)
        forger.start()
        results: list[Any]
        try:
            poll = PollSchedule.fixed(POLL)
            if kind == "async":
                assert isinstance(client.client, AsyncRunClient)
                results = await asyncio.gather(
                    *(client.client.wait(ref, WAIT, poll=poll) for ref in refs),
                    return_exceptions=True,
                )
            else:
                loop = asyncio.get_running_loop()
                wait = functools.partial(client.client.wait, wait_timeout=WAIT, poll=poll)
                results = await asyncio.gather(
                    *(loop.run_in_executor(None, wait, ref) for ref in refs),
                    return_exceptions=True,
                )
        finally:
            stop.set()
            forger.join(2.0)
            await client.close()
    assert all(isinstance(r, WaitTimeout) for r in results), results
    bound = 2 * scheduled_checks(WAIT, POLL)
    for ref in refs:
        checks = server.count("GET", f"/api/v1/runs/{ref.id}")
        assert checks <= bound, f"{ref.id}: {checks} checks in {WAIT}s"


# -- the inbox is bounded ----------------------------------------------------------------------
def test_the_inbox_drops_the_oldest_past_max_pending() -> None:
    inbox = Inbox(max_pending=3)
    refs = [RunRef("rest", f"r-{i}") for i in range(10)]
    for ref in refs:
        inbox.deliver(RunStatus(ref, RunState.RUNNING, "running"))
    assert len(inbox) == 3
    assert [inbox.take(ref) is not None for ref in refs] == [False] * 7 + [True] * 3


def test_a_new_delivery_for_a_run_keeps_it_and_counts_once() -> None:
    inbox = Inbox(max_pending=2)
    a, b, c = (RunRef("rest", i) for i in "abc")
    inbox.deliver(RunStatus(a, RunState.RUNNING, "running"))
    inbox.deliver(RunStatus(b, RunState.RUNNING, "running"))
    inbox.deliver(RunStatus(a, RunState.SUCCEEDED, "succeeded"))  # a is now the newest
    inbox.deliver(RunStatus(c, RunState.RUNNING, "running"))  # drops b, the oldest
    assert len(inbox) == 2
    assert inbox.take(b) is None
    taken = inbox.take(a)
    assert taken is not None and taken.state is RunState.SUCCEEDED


def test_a_flood_of_deliveries_for_unknown_runs_stays_bounded() -> None:
    inbox = Inbox(max_pending=100)
    for i in range(20_000):
        inbox.deliver(RunStatus(RunRef("rest", f"forged-{i}"), RunState.SUCCEEDED, "succeeded"))
    assert len(inbox) == 100
    assert len(inbox._statuses) == 100


@pytest.mark.anyio
async def test_a_dropped_delivery_does_not_wake_the_wait(connect: Connect) -> None:
    """Past max_pending the dropped delivery is simply lost: the wait falls back to polling."""
    inbox = Inbox(max_pending=1)
    with hostile.HostileServer(hostile.json_reply(200, RUNNING)) as server:
        client = connect(server, inbox)
        inbox.deliver(FORGED)
        inbox.deliver(RunStatus(RunRef("rest", "other"), RunState.RUNNING, "running"))
        with pytest.raises(WaitTimeout):
            await client.wait(REF, WAIT, poll=PollSchedule.fixed(POLL))
    assert server.count("GET", STATUS_PATH) <= scheduled_checks(WAIT, POLL)


@pytest.mark.anyio
async def test_a_cancelled_async_wait_leaves_no_waiter_behind() -> None:
    inbox = Inbox()
    with hostile.HostileServer(hostile.json_reply(200, RUNNING)) as server:
        async with AsyncRunClient("rest", server.url, inbox=inbox, **REST_CONFIG) as client:
            task = asyncio.create_task(client.wait(REF, poll=PollSchedule.fixed(30.0)))
            while not inbox._futures:  # asleep on the inbox
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert inbox._futures == {}


# -- a genuine delivery ------------------------------------------------------------------------
@pytest.mark.anyio
async def test_a_genuine_delivery_ends_the_wait_at_once_with_one_check(connect: Connect) -> None:
    """Polling every 30 s, the run ends after 0.3 s and its webhook arrives: the wait ends
    within a fraction of a second, after one confirming check."""
    inbox = Inbox()
    ended = threading.Event()

    def platform(conn: hostile.Conn, request: hostile.Received) -> bool:
        return hostile.json_reply(200, DONE if ended.is_set() else RUNNING)(conn, request)

    def finish() -> None:
        ended.set()
        inbox.deliver(FORGED)  # the true status this time

    with hostile.HostileServer(platform) as server:
        client = connect(server, inbox)
        timer = threading.Timer(0.3, finish)
        start = time.monotonic()
        timer.start()
        status = await client.wait(REF, 10.0, poll=PollSchedule.fixed(30.0))
        elapsed = time.monotonic() - start
    assert status.state is RunState.SUCCEEDED
    assert elapsed < 0.3 + 0.5, f"took {elapsed:.2f}s"
    assert server.count("GET", STATUS_PATH) == 2  # the first check, the confirming one


@pytest.mark.anyio
async def test_a_genuine_delivery_after_a_forged_one_ends_the_wait_within_a_poll(
    connect: Connect,
) -> None:
    """A forged delivery, proved wrong, costs the genuine one that follows at most one poll
    interval (polling is the fallback), never the wait."""
    inbox = Inbox()
    ended = threading.Event()

    def platform(conn: hostile.Conn, request: hostile.Received) -> bool:
        return hostile.json_reply(200, DONE if ended.is_set() else RUNNING)(conn, request)

    def finish() -> None:
        ended.set()
        inbox.deliver(FORGED)

    with hostile.HostileServer(platform) as server:
        client = connect(server, inbox)
        inbox.deliver(FORGED)  # forged: the run is still running
        timer = threading.Timer(0.2, finish)
        start = time.monotonic()
        timer.start()
        status = await client.wait(REF, 10.0, poll=PollSchedule.fixed(POLL))
        elapsed = time.monotonic() - start
    assert status.state is RunState.SUCCEEDED
    assert elapsed < 0.2 + POLL + 0.5, f"took {elapsed:.2f}s"
