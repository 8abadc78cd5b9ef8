"""A promise proven at its edge: a wait ends by its deadline, whatever the server does.

Every attack is a hostile server on loopback (tests/core/hostile.py) and runs against both
clients: trickled headers, a trickled 2xx body, a server that never answers, a 429 asking for
50 s, a 503 storm, a server that hangs up after reading the request. A wait given
``wait_timeout`` must raise by ``wait_timeout + 1 s`` (measured here, on the real clock);
``run_timeout`` against a cancel endpoint that hangs ends within the cancel grace; ``launch``
and ``cancel`` (no wait deadline) end within what the request timeout and retry policy allow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpcore
import httpx
import pytest

from runbridge.core import (
    AsyncRunClient,
    LaunchUncertain,
    PlatformUnavailable,
    PollSchedule,
    RetryPolicy,
    RunClient,
    RunRef,
    TransportError,
    WaitTimeout,
)
from runbridge.core import client as client_module
from runbridge.core.flows import FINAL_CHECK, FlowContext, WaitOptions
from runbridge.core.http import Request
from runbridge.core.providers.rest import RestProvider
from runbridge.testing.rest import REST_CONFIG

from . import hostile
from .helpers import ClientUnderTest, FakeClock, FlowDriver, reply, rest_clients, took

TOKEN = "deadline-test-token-0123456789"
REF = RunRef("rest", "r-1")
STATUS_PATH = "/api/v1/runs/r-1"
CANCEL_PATH = "/api/v1/runs/r-1/cancel"
LAUNCH_PATH = "/api/v1/jobs/etl/runs"
WAIT = 2.0
SLACK = 1.0
"""The promise: a wait ends within this of its deadline."""
RUNNING = {"run": {"id": "r-1", "status": "running"}}


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


Connect = Callable[..., ClientUnderTest]


@pytest.fixture
async def connect(kind: str) -> AsyncIterator[Connect]:
    """``connect(server, **options)``: a client of ``kind`` for the rest platform, with the
    client's own defaults (request timeout, retries, polling) unless the test says otherwise."""
    async with rest_clients(kind, TOKEN) as make:
        yield make


# -- running attacks side by side ---------------------------------------------------------------
async def timed(client: ClientUnderTest, op: str, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(result or exception, seconds)`` of one call; a sync client's call runs in a thread
    of its own, so that attacks on sync clients run side by side, as async ones do."""
    call = functools.partial(getattr(client.client, op), *args, **kwargs)
    start = time.monotonic()
    try:
        if client.is_async:
            result = await call()
        else:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                result = await asyncio.get_running_loop().run_in_executor(pool, call)
    except Exception as exc:
        result = exc
    return result, time.monotonic() - start


async def side_by_side(
    connect: Connect,
    attacks: Mapping[str, hostile.Behaviour],
    op: str,
    *args: Any,
    **options: Any,
) -> dict[str, tuple[Any, float, hostile.HostileServer]]:
    """Run ``op`` against a server of each attack at once (each its own server and client);
    by attack: (result or exception, seconds, server)."""
    wait_args = {k: options.pop(k) for k in list(options) if k in WAIT_ARGS}
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(hostile.HostileServer(behaviour))
            for name, behaviour in attacks.items()
        }
        clients = {name: connect(server, **options) for name, server in servers.items()}
        outcomes = await asyncio.gather(
            *(timed(clients[name], op, *args, **wait_args) for name in attacks)
        )
    return {
        name: (result, seconds, servers[name])
        for name, (result, seconds) in zip(attacks, outcomes, strict=True)
    }


WAIT_ARGS = {"wait_timeout", "run_timeout", "error_window", "poll", "key"}


def check_all(
    outcomes: Mapping[str, tuple[Any, float, hostile.HostileServer]],
    error: type[BaseException],
    limit: float,
) -> None:
    """Every attack ended with ``error`` within ``limit`` seconds (all failures listed)."""
    failures = [
        f"{name}: {type(result).__name__}: {result} after {seconds:.2f}s"
        for name, (result, seconds, _) in outcomes.items()
        if not isinstance(result, error) or seconds >= limit
    ]
    assert not failures, f"expected {error.__name__} within {limit:.2f}s:\n" + "\n".join(failures)


# -- wait_timeout against every server behaviour ------------------------------------------------
ATTACKS: dict[str, hostile.Behaviour] = {
    "trickled headers": hostile.trickle_headers(0.2),
    "trickled 2xx body": hostile.trickle_body(0.2),
    "accepts and never answers": hostile.hang,
    "429 Retry-After 50": hostile.json_reply(429, {"detail": "slow down"}, {"Retry-After": "50"}),
    "503 storm": hostile.json_reply(503, {"detail": "overloaded"}),
    "closes after the request": hostile.close,
}
HANGING = {name: ATTACKS[name] for name in ("trickled headers", "accepts and never answers")}


def answered_then(attack: hostile.Behaviour) -> hostile.Behaviour:
    """The first status check is answered (running); every later request is attacked."""
    answered = hostile.json_reply(200, RUNNING)
    seen: list[int] = []

    def turn(conn: hostile.Conn, request: hostile.Received) -> bool:
        seen.append(1)
        return (answered if len(seen) == 1 else attack)(conn, request)

    return turn


@pytest.mark.anyio
async def test_a_wait_ends_by_its_deadline_whatever_the_server_does(connect: Connect) -> None:
    """Each attack, from the first request or after one answer (the run is running), against
    a client with its own defaults (30 s request timeout, 5 attempts, 10 minutes of error
    window, polls from 1 s): only the wait's deadline can end these waits in time. The attacks
    run side by side, each against its own server and client."""
    attacks = {
        **ATTACKS,
        **{f"{n}, once answered": answered_then(a) for n, a in ATTACKS.items()},
    }
    outcomes = await side_by_side(connect, attacks, "wait", "rest:r-1", wait_timeout=WAIT)
    check_all(outcomes, WaitTimeout, WAIT + SLACK)
    for name, (result, _, server) in outcomes.items():
        assert server.count("GET", STATUS_PATH) >= (2 if name.endswith("once answered") else 1), (
            name
        )
        assert "the run keeps going" in str(result)
        if name.endswith("once answered"):
            assert result.last_status is not None, name
            assert result.last_status.raw_state == "running", name
        else:
            assert result.last_status is None, name  # never a readable answer


@pytest.mark.anyio
async def test_a_short_error_window_ends_a_5xx_storm_with_the_platform_error(
    connect: Connect,
) -> None:
    """Where the error window runs out before the deadline, the platform's error is the right
    answer, and it comes by the deadline too."""
    storm = {"503 storm": ATTACKS["503 storm"]}
    outcomes = await side_by_side(
        connect,
        storm,
        "wait",
        "rest:r-1",
        wait_timeout=WAIT,
        error_window=0.5,
        poll=PollSchedule.fixed(0.1),
        retry=RetryPolicy(attempts=2, first=0.05, jitter=0.0),
    )
    check_all(outcomes, PlatformUnavailable, WAIT + SLACK)
    assert "overloaded" in str(outcomes["503 storm"][0])


@pytest.mark.anyio
async def test_a_wait_queued_behind_hanging_requests_still_ends_by_its_deadline() -> None:
    """The async client caps requests in flight (``max_in_flight``); a wait whose check queues
    for a slot held by hanging requests of longer waits must still end by its own deadline."""
    with hostile.HostileServer(hostile.hang) as server:
        async with AsyncRunClient("rest", server.url, max_in_flight=1, **REST_CONFIG) as client:
            holder = asyncio.create_task(client.wait("rest:r-1", 30.0))
            while not server.count():  # the long wait's request holds the one slot
                await asyncio.sleep(0.01)
            start = time.monotonic()
            with pytest.raises(WaitTimeout):  # (wait_for: a TimeoutError, never a hang)
                await asyncio.wait_for(client.wait("rest:r-2", WAIT), WAIT + 5.0)
            elapsed = time.monotonic() - start
            holder.cancel()
            with pytest.raises(asyncio.CancelledError):
                await holder
    assert elapsed < WAIT + SLACK, f"took {elapsed:.2f}s"
    assert client._in_flight._value == 1  # every slot given back


@pytest.mark.anyio
async def test_a_launch_that_never_got_a_slot_is_known_not_sent() -> None:
    """Queued for a request slot (held here by the test, as by hanging requests) until its
    time ran out, a launch never left: a TransportError with ``sent=False`` (safe to launch
    again), not a LaunchUncertain."""
    with hostile.HostileServer(hostile.hang) as server:
        async with AsyncRunClient(
            "rest",
            server.url,
            max_in_flight=1,
            request_timeout=0.3,
            retry=RetryPolicy(attempts=2, first=0.0, jitter=0.0),
            **REST_CONFIG,
        ) as client:
            async with client._in_flight:  # every slot taken
                start = time.monotonic()
                with pytest.raises(TransportError) as info:  # (wait_for: fail, never hang)
                    await asyncio.wait_for(client.launch({"job": "etl"}), 5.0)
                elapsed = time.monotonic() - start
            assert client._in_flight._value == 1
    assert info.value.sent is False and info.value.timeout
    assert server.count() == 0
    assert elapsed < 2 * 0.3 + 0.5


# -- run_timeout against a cancel endpoint that hangs --------------------------------------------
@pytest.mark.anyio
async def test_run_timeout_with_a_hanging_cancel_ends_within_the_grace(
    connect: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run never stops and its cancel endpoint hangs (or trickles): the wait ends once
    the cancel grace (shortened here; the clients do not expose it) is over."""
    grace, run_timeout = 1.0, 0.3

    def options(**kwargs: Any) -> WaitOptions:
        return WaitOptions(**kwargs, cancel_grace=grace)

    monkeypatch.setattr(client_module, "WaitOptions", options)
    status = hostile.json_reply(200, RUNNING)
    attacks = {
        name: hostile.route(status, {("POST", CANCEL_PATH): attack})
        for name, attack in HANGING.items()
    }
    outcomes = await side_by_side(
        connect, attacks, "wait", "rest:r-1", run_timeout=run_timeout, poll=PollSchedule.fixed(0.2)
    )
    check_all(outcomes, WaitTimeout, run_timeout + grace + SLACK)
    for name, (result, _, server) in outcomes.items():
        assert "had not stopped after 1s" in str(result), name
        assert server.count("POST", CANCEL_PATH) == 1, name
        assert result.last_status is not None, name


# -- launch and cancel have no wait deadline: the request timeout and retry policy bound them ----
def retry_bound(policy: RetryPolicy, request_timeout: float) -> float:
    """The longest an operation of retried requests may take: every attempt its whole request
    timeout plus the longest backoff before the next, never past the policy's total (plus the
    one attempt started just before it)."""
    attempts = [request_timeout] * policy.attempts
    delays = [
        min(policy.cap, policy.first * policy.factor ** (n - 1)) * (1 + policy.jitter)
        for n in range(1, policy.attempts)
    ]
    return min(sum(attempts) + sum(delays), policy.total + request_timeout)


REQUEST_TIMEOUT = 0.5
RETRY = RetryPolicy(attempts=3, total=10.0, first=0.1, factor=2.0, cap=1.0, jitter=0.0)
BOUND = retry_bound(RETRY, REQUEST_TIMEOUT)
SETTINGS: dict[str, Any] = {"request_timeout": REQUEST_TIMEOUT, "retry": RETRY}


@pytest.mark.anyio
async def test_launch_cancel_and_get_against_a_hanging_server_end_within_the_retry_bound(
    connect: Connect,
) -> None:
    """Each against a server that trickles its headers or never answers, side by side."""
    unkeyed, keyed, cancel, get = await asyncio.gather(
        side_by_side(connect, HANGING, "launch", {"job": "etl"}, **SETTINGS),
        side_by_side(connect, HANGING, "launch", {"job": "etl"}, key="k-1", **SETTINGS),
        side_by_side(connect, HANGING, "cancel", "rest:r-1", **SETTINGS),
        side_by_side(connect, HANGING, "get", "rest:r-1", **SETTINGS),
    )
    # a POST without an idempotency key is never resent: one request, one request_timeout
    check_all(unkeyed, LaunchUncertain, REQUEST_TIMEOUT + 0.5)
    for name, (_, _, server) in unkeyed.items():
        assert server.count("POST", LAUNCH_PATH) == 1, name
    check_all(keyed, LaunchUncertain, BOUND + 0.5)
    for name, (result, _, server) in keyed.items():
        assert isinstance(result.cause, TransportError) and result.cause.timeout, name
        assert result.key == "k-1"
        # the key makes the POST resendable: every attempt of the policy, no more
        assert server.count("POST", LAUNCH_PATH) == RETRY.attempts, name
    for op, outcomes in (("cancel", cancel), ("get", get)):
        check_all(outcomes, TransportError, BOUND + 0.5)
        for name, (result, _, server) in outcomes.items():
            assert result.timeout, name
            assert server.count() == RETRY.attempts, (op, name)


# -- the flow on a fake clock ------------------------------------------------------------------
def hangs(request: Request, clock: FakeClock) -> TransportError:
    """A request that the driver holds for its whole budget, then gives up on."""
    assert request.timeout is not None
    clock.advance(request.timeout)
    return TransportError("read timed out", timeout=True)


def fake_wait(answers: list[Any], **options: Any) -> tuple[FakeClock, FlowDriver, Any]:
    clock = FakeClock()
    ctx = FlowContext(
        RestProvider(**REST_CONFIG),
        RetryPolicy(),
        clock=clock,
        wall=clock.wall,
        rand=lambda: 0.5,
        request_timeout=30.0,
    )
    driver = FlowDriver(clock, answers)
    flow = ctx.wait(REF, WaitOptions(**options))
    return clock, driver, flow


def test_wait_5_against_hanging_requests_ends_by_5_5s_on_the_fake_clock() -> None:
    """The issue: ``wait(timeout=5)`` against hanging requests raised WaitTimeout after
    61.5 s on the fake clock (each request its whole 30 s, then a retry)."""
    clock, driver, flow = fake_wait([hangs] * 20, wait_timeout=5.0)
    with pytest.raises(WaitTimeout):
        driver.run(flow, check_all_used=False)
    assert clock.now - 1000.0 <= 5.0 + FINAL_CHECK
    # each request got at most what was left of the deadline (plus the final check's share)
    for step in driver.steps:
        if step.request is not None:
            assert step.request.timeout is not None
            assert step.at + step.request.timeout <= 1000.0 + 5.0 + FINAL_CHECK


@pytest.mark.parametrize(
    "answer",
    [
        reply(429, {"detail": "slow down"}, headers={"Retry-After": "50"}),
        reply(503, {"detail": "overloaded"}),
        took(4.0, reply(503)),
        took(29.0, reply(200, RUNNING)),
    ],
    ids=["429 Retry-After 50", "503 storm", "slow 503s", "29 s answers"],
)
def test_wait_5_against_a_hostile_platform_ends_by_5_5s_on_the_fake_clock(answer: Any) -> None:
    def bounded(request: Request, clock: FakeClock) -> Any:
        # a driver never lets an answer take longer than the request's budget
        assert request.timeout is not None
        before = clock.now
        result = answer(request, clock) if callable(answer) else answer
        if clock.now - before > request.timeout:
            clock.now = before + request.timeout
            return TransportError("read timed out", timeout=True)
        return result

    clock, driver, flow = fake_wait([bounded] * 100, wait_timeout=5.0)
    with pytest.raises(WaitTimeout):
        driver.run(flow, check_all_used=False)
    assert clock.now - 1000.0 <= 5.0 + FINAL_CHECK


@pytest.mark.parametrize("retry_after", ["inf", "1e9", "nan", "-5", "Infinity"])
def test_a_wait_without_a_deadline_honours_retry_after_up_to_the_policy_cap(
    retry_after: str,
) -> None:
    """No wait_timeout: a 429's Retry-After is honoured, but never past the retry policy's
    ``max_retry_after`` (an infinite one crashed the sync client's sleep and hung the async
    one; a huge one slept for years)."""
    clock = FakeClock()
    policy = RetryPolicy(attempts=1, max_retry_after=120.0)
    ctx = FlowContext(
        RestProvider(**REST_CONFIG), policy, clock=clock, wall=clock.wall, rand=lambda: 0.5
    )
    limited = reply(429, {"detail": "later"}, headers={"Retry-After": retry_after})
    done = reply(200, {"run": {"id": "r-1", "status": "succeeded"}})
    driver = FlowDriver(clock, [limited, limited, done])
    status = driver.run(ctx.wait(REF, WaitOptions(poll=PollSchedule.fixed(1.0))))
    assert status.raw_state == "succeeded"
    assert all(0.0 <= s <= policy.max_retry_after for s in driver.sleeps), driver.sleeps


@pytest.mark.anyio
async def test_an_infinite_retry_after_neither_crashes_nor_hangs_a_wait(connect: Connect) -> None:
    limited = hostile.json_reply(429, {"detail": "later"}, {"Retry-After": "inf"})
    done = hostile.json_reply(200, {"run": {"id": "r-1", "status": "succeeded"}})
    answers = [limited, limited]

    def platform(conn: hostile.Conn, request: hostile.Received) -> bool:
        return (answers.pop(0) if answers else done)(conn, request)

    policy = RetryPolicy(attempts=1, max_retry_after=0.3)
    outcomes = await asyncio.wait_for(
        side_by_side(
            connect,
            {"inf": platform},
            "wait",
            "rest:r-1",
            retry=policy,
            poll=PollSchedule.fixed(0.05),
        ),
        10.0,
    )
    (result, seconds, _) = outcomes["inf"]
    assert not isinstance(result, BaseException), repr(result)
    assert result.raw_state == "succeeded"
    assert seconds < 3.0


# -- the sync client's deadline-reading network backend -------------------------------------------
def test_sync_deadline_backend_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """client.py's ``_deadline_client`` wraps httpx's private ``Client._transport`` /
    ``_mounts`` pools' private ``ConnectionPool._network_backend`` (httpx 0.28, httpcore 1.x).
    Should either move, this fails (and the trickle tests with it), instead of the sync client
    silently losing its total request deadline."""
    assert "_network_backend" in vars(httpcore.ConnectionPool(network_backend=None))
    with RunClient("rest", "http://127.0.0.1:9", **REST_CONFIG) as client:
        transport = client._http._transport
        assert isinstance(transport, httpx.HTTPTransport)
        pool = transport._pool
        assert isinstance(pool, httpcore.ConnectionPool)
        assert isinstance(pool._network_backend, client_module._DeadlineBackend)

    # environment proxies stay on, and their pools read against the deadline too
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with RunClient("rest", "http://127.0.0.1:9", **REST_CONFIG) as proxied:
        mounts = [t for t in proxied._http._mounts.values() if t is not None]
        assert mounts, "httpx no longer mounts a transport for the environment's proxy"
        for mounted in mounts:
            assert isinstance(mounted, httpx.HTTPTransport)
            backend = mounted._pool._network_backend
            assert isinstance(backend, client_module._DeadlineBackend)


def test_sync_deadline_backend_bounds_a_trickle_below_the_read_timeout() -> None:
    """The backend, not the between-chunks check, ends a trickle of headers: without it the
    request below (read timeout 0.8 s, one byte every 0.2 s) would never time out."""
    server = hostile.HostileServer(hostile.trickle_headers(0.2))
    with server, RunClient("rest", server.url, request_timeout=0.8, **REST_CONFIG) as client:
        start = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            client._send(Request("GET", STATUS_PATH))
        elapsed = time.monotonic() - start
    assert 0.7 < elapsed < 0.8 + 0.5


def test_a_request_past_its_deadline_is_not_sent() -> None:
    """A deadline already passed: the backend refuses to even connect."""
    server = hostile.HostileServer(hostile.hang)
    with server, RunClient("rest", server.url, **REST_CONFIG) as client:
        request = dataclasses.replace(Request("GET", STATUS_PATH), timeout=1e-9)
        with pytest.raises(httpx.TimeoutException):
            client._send(request)
    assert server.count() == 0
