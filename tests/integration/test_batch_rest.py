"""The hub against the ``rest`` emulator's batchGet (real uvicorn, real sockets), with faults:
checks that fall due together go as one request; a batch answered 500, a batch with an
unknown id, a batch over the API's limit, a run cancelled while in a batch, a wait cancelled
while its batch is out, a 429 pausing the hub; and hundreds of waits on one client."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psutil
import pytest

from runbridge.core import AsyncRunClient, PollSchedule, RetryPolicy, RunNotFound, RunState
from runbridge.testing import Fault, Relay, Script
from runbridge.testing.rest import MAX_BATCH, REST_BATCH, REST_CONFIG, RestEmulator

pytestmark = pytest.mark.anyio

TOKEN = "emulator-token-42"
BATCH_PATH = "/api/v1/runs:batchGet"


@pytest.fixture
def emulator() -> RestEmulator:
    return RestEmulator(token=TOKEN)


class Sent:
    """Every request the client sent, with when (an httpx event hook on the client's pool)."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str]] = []

    async def __call__(self, request: httpx.Request) -> None:
        self.log.append((time.monotonic(), request.method, request.url.path))

    def singles(self) -> list[str]:
        return [p for _, m, p in self.log if m == "GET" and p.startswith("/api/v1/runs/")]

    def batches(self) -> list[float]:
        return [t for t, m, p in self.log if p == BATCH_PATH]


@pytest.fixture
async def hub_client(emu: RestEmulator) -> AsyncIterator[tuple[AsyncRunClient, Sent]]:
    sent = Sent()
    http = httpx.AsyncClient(
        event_hooks={"request": [sent]},
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
    )
    client = AsyncRunClient(
        "rest",
        emu.base_url,
        TOKEN,
        client=http,
        poll=PollSchedule.fixed(0.2),
        retry=RetryPolicy(attempts=3, first=0.02, cap=0.1, jitter=0.0),
        request_timeout=5.0,
        batch=REST_BATCH,
        **REST_CONFIG,
    )
    try:
        yield client, sent
    finally:
        await client.aclose()
        await http.aclose()


def runs(emu: RestEmulator, n: int, running: float = 0.5, final: str = "succeeded") -> list[str]:
    script = Script([("running", running)], final=final)
    return [emu.add_run(script, job="etl").id for _ in range(n)]


async def wait_all(client: AsyncRunClient, ids: list[str], **kwargs: Any) -> list[Any]:
    return await asyncio.gather(
        *(client.wait(f"rest:{i}", wait_timeout=20, **kwargs) for i in ids),
        return_exceptions=True,
    )


# -- the happy path ------------------------------------------------------------------------------
async def test_checks_due_together_go_as_batches_within_the_apis_limit(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    client, sent = hub_client
    ids = runs(emu, 120, running=0.5)
    results = await wait_all(client, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 120
    assert emu.batches, "no batch was sent"
    assert max(len(b) for b in emu.batches) == MAX_BATCH  # 120 due at once: 50 + 50 + 20
    assert all(len(b) <= MAX_BATCH for b in emu.batches)
    assert sent.singles() == []  # every check was answered by a batch
    hub = client.hub()
    assert hub.singles_sent == 0 and hub._waits == {}


async def test_waits_that_start_one_after_another_share_their_first_checks_batch(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    """Waits starting 10 ms apart (triggers resuming one by one): each first check is held
    (up to half the first poll interval here, 0.1 s) for the others, so they go in a few
    batches, not one request each; none is held past its hold."""
    client, sent = hub_client
    ids = runs(emu, 40, running=0.6)

    async def wait_after(delay: float, run_id: str) -> Any:
        await asyncio.sleep(delay)
        return await client.wait(f"rest:{run_id}", wait_timeout=20)

    start = time.monotonic()
    results = await asyncio.gather(*(wait_after(i * 0.01, r) for i, r in enumerate(ids)))
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 40
    hub = client.hub()
    assert hub.singles.get("first", 0) <= 2, hub.singles  # (the last one or two may be alone)
    first = sorted(sent.batches())[:1] + sorted(t for t, m, p in sent.log if m == "GET")[:1]
    assert min(first) - start < 0.1 + 0.2  # the first check went within its hold (+ slack)


# -- faults ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failures", "unknown", "alone"),
    [
        pytest.param(1, False, "none", id="500 once: sent again as a batch"),
        pytest.param(2, False, "each", id="500 twice: each run checked alone"),
        pytest.param(0, True, "unknown", id="an unknown id: that wait's error alone"),
    ],
)
async def test_a_failed_batch_or_a_bad_id_never_blocks_the_other_waits(
    emu: RestEmulator,
    hub_client: tuple[AsyncRunClient, Sent],
    failures: int,
    unknown: bool,
    alone: str,
) -> None:
    """A batch answered 500 is sent again once as a batch, then its runs are checked alone;
    an id the platform does not know is missing from the answer, checked alone, and is that
    wait's RunNotFound alone. Every other wait ends with its run."""
    client, sent = hub_client
    ids = runs(emu, 9 if unknown else 10, running=0.3)
    if failures:
        emu.inject(Fault("status", status=500, path=BATCH_PATH, times=failures))
    asked = [*ids[:4], "no-such-run", *ids[4:]] if unknown else ids
    results = await wait_all(client, asked)
    others = [r for i, r in zip(asked, results, strict=True) if i != "no-such-run"]
    assert [r.state for r in others] == [RunState.SUCCEEDED] * len(ids)
    assert len(emu.injected) == failures
    if alone == "none":
        assert sent.singles() == []  # the second try of the batch answered
    elif alone == "each":
        first_singles = sent.singles()[: len(ids)]
        assert sorted(p.rsplit("/", 1)[1] for p in first_singles) == sorted(ids)
        assert client.hub().singles.get("fallback", 0) >= len(ids)
    else:
        assert isinstance(results[4], RunNotFound)
        assert "no-such-run" in emu.batches[0]  # asked in the batch, missing from its answer...
        assert sent.singles() == ["/api/v1/runs/no-such-run"]  # ...then checked alone, once
        assert client.hub().singles == {"missing": 1}


async def test_a_batch_larger_than_the_api_allows_falls_back_and_every_wait_ends(
    emu: RestEmulator, relay: Relay
) -> None:
    """A client told the API takes 80 ids (it takes 50): the 400 is retried once as a batch,
    then the runs are checked alone; no wait is lost or blocked."""
    ids = runs(emu, 60, running=0.3)
    async with AsyncRunClient(
        "rest",
        emu.base_url,
        TOKEN,
        poll=PollSchedule.fixed(0.2),
        batch={**REST_BATCH, "max": 80},
        **REST_CONFIG,
    ) as client:
        results = await wait_all(client, ids)
        hub = client.hub()
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 60
    refused = [b for b in emu.batches if len(b) > MAX_BATCH]
    assert refused == []  # the emulator refuses before recording: nothing over 50 answered
    over = [r for r in emu.requests_to("POST", BATCH_PATH) if len(r.body["ids"]) > MAX_BATCH]
    assert len(over) >= 2  # refused, retried once as a batch, refused again
    assert hub.singles_sent >= 60


async def test_a_run_cancelled_while_in_a_batch_ends_its_wait_alone(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    client, _ = hub_client
    ids = runs(emu, 6, running=1.5)
    emu.inject(Fault("delay", seconds=0.4, path=BATCH_PATH, when="after", times=1))

    async def cancel_during_the_slow_batch() -> None:
        while not emu.requests_to("POST", BATCH_PATH):
            await asyncio.sleep(0.01)
        with emu.lock:  # cancelled on the platform while the batch's answer is on its way
            run = emu.runs[ids[2]]
            run.cancelled, run.cancelled_at = "cancelled", emu.now()

    results, _ = await asyncio.gather(wait_all(client, ids), cancel_during_the_slow_batch())
    states = [r.state for r in results]
    assert states[2] is RunState.CANCELLED
    assert states[:2] + states[3:] == [RunState.SUCCEEDED] * 5


async def test_a_wait_cancelled_while_its_batch_is_out_leaves_the_others_going(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    client, _ = hub_client
    ids = runs(emu, 5, running=0.8)
    emu.inject(Fault("delay", seconds=0.5, path=BATCH_PATH, times=1))
    tasks = [asyncio.create_task(client.wait(f"rest:{i}", wait_timeout=20)) for i in ids]
    while not emu.requests_to("POST", BATCH_PATH):
        await asyncio.sleep(0.01)
    tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert [getattr(r, "state", r) for r in results[1:]] == [RunState.SUCCEEDED] * 4
    hub = client.hub()
    assert hub._waits == {} and hub.plan.entries == {}
    later = [b for b in emu.batches[1:] if ids[0] in b]
    assert later == []  # the cancelled wait was never checked again


async def test_a_429_pauses_every_check_of_the_hub_and_the_log_says_so(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent], caplog: pytest.LogCaptureFixture
) -> None:
    client, sent = hub_client
    ids = runs(emu, 8, running=0.6)
    emu.inject(Fault("status", status=429, retry_after="1", path=BATCH_PATH, times=1))
    caplog.set_level(logging.INFO, logger="runbridge")
    start = time.monotonic()
    results = await wait_all(client, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 8
    first, *rest = sent.log
    assert first[2] == BATCH_PATH
    assert rest, "nothing was sent after the 429"
    assert rest[0][0] - first[0] >= 0.95  # nothing at all for the Retry-After second
    assert time.monotonic() - start >= 1.0
    assert sent.singles() == []  # the batch was sent again after the pause, not split
    assert any("rate limited (HTTP 429); pausing" in r.getMessage() for r in caplog.records)


async def test_a_wait_held_by_a_long_pause_still_ends_by_its_deadline(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    client, _ = hub_client
    ids = runs(emu, 3, running=30.0)
    emu.inject(Fault("status", status=429, retry_after="60", path=BATCH_PATH, times=1))
    start = time.monotonic()
    results = await asyncio.gather(
        *(client.wait(f"rest:{i}", wait_timeout=1.0) for i in ids), return_exceptions=True
    )
    elapsed = time.monotonic() - start
    assert [type(r).__name__ for r in results] == ["WaitTimeout"] * 3
    assert elapsed < 2.5, f"took {elapsed:.2f}s"


async def test_the_budget_caps_requests_per_second_and_logs_that_it_throttles(
    emu: RestEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a batch form each wait is its own request: 20 waits at 10 requests/s."""
    ids = runs(emu, 20, running=0.2)
    caplog.set_level(logging.INFO, logger="runbridge")
    sent = Sent()
    async with (
        httpx.AsyncClient(event_hooks={"request": [sent]}) as http,
        AsyncRunClient(
            "rest", emu.base_url, TOKEN, client=http, max_rps=10, **REST_CONFIG
        ) as client,
    ):
        results = await wait_all(client, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 20
    times = sorted(t for t, _, _ in sent.log)
    # a burst of 10, then 10 per second: no one-second window holds more than 10 + 10
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u - t < 1.0) <= 20
    assert times[-1] - times[0] >= 0.9  # the 20 first checks alone take a second
    assert any("throttling" in r.getMessage() for r in caplog.records)


# -- scale -------------------------------------------------------------------------------------
def client_sockets(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.parametrize("transport", ["default", "httpx"])
async def test_hundreds_of_waits_on_one_client_cost_few_requests_and_connections(
    emu: RestEmulator, transport: str
) -> None:
    """400 waits polling every 0.5 s on one AsyncRunClient (with its default transport, and
    with a caller's httpx client): at least 20x fewer requests than checks (per poll cycle
    alike), and never more connections than the client's bound."""
    n, interval, bound = 400, 0.5, 10
    ids = runs(emu, n, running=4.0)
    port = int(emu.base_url.rsplit(":", 1)[1])
    checks = 0

    def count(event: Any) -> None:
        nonlocal checks
        if event.kind == "status":
            checks += 1

    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, client_sockets(port))
            await asyncio.sleep(0.1)

    async with contextlib.AsyncExitStack() as stack:
        options: dict[str, Any] = {}
        if transport == "httpx":
            limits = httpx.Limits(max_connections=bound, max_keepalive_connections=bound)
            options["client"] = await stack.enter_async_context(httpx.AsyncClient(limits=limits))
        client = await stack.enter_async_context(
            AsyncRunClient(
                "rest",
                emu.base_url,
                TOKEN,
                max_in_flight=bound,
                max_long_polls=0,  # rest has no join: the pool is the in-flight bound
                poll=PollSchedule.fixed(interval),
                batch=REST_BATCH,
                hooks=[count],
                **REST_CONFIG,
                **options,
            )
        )
        sampling = asyncio.create_task(sample())
        start = time.monotonic()
        results = await wait_all(client, ids)
        elapsed = time.monotonic() - start
        done.set()
        await sampling
    assert [r.state for r in results] == [RunState.SUCCEEDED] * n
    requests = len(emu.requests)  # as the platform saw them
    cycles = elapsed / interval
    print(
        f"\n{transport}: {n} waits, {elapsed:.2f}s, {checks} checks, {requests} requests "
        f"({requests / cycles:.1f} per cycle vs {checks / cycles:.1f} checks per cycle), "
        f"peak {peak} connections"
    )
    # each wait saw its run going and then ended (on a quiet machine: ~8 checks a wait; the
    # emulator shares this process, so under load the first answers come late)
    assert checks >= n * 2
    assert requests * 20 <= checks, f"{requests} requests for {checks} checks"
    assert 0 < peak <= bound


async def test_a_429_pause_never_holds_a_run_timeout_cancel(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    """The pause holds checks only: the cancels run_timeout calls for go out on time (then the
    check that confirms them waits for the pause's end)."""
    client, sent = hub_client
    ids = runs(emu, 4, running=30.0)
    emu.inject(Fault("status", status=429, retry_after="2", path=BATCH_PATH, times=1))
    start = time.monotonic()
    results = await asyncio.gather(
        *(client.wait(f"rest:{i}", wait_timeout=20, run_timeout=0.5) for i in ids)
    )
    assert [(r.state, r.cancelled_by_runbridge) for r in results] == [
        (RunState.TIMED_OUT, True)
    ] * 4
    cancels = [t - start for t, m, p in sent.log if p.endswith("/cancel")]
    assert len(cancels) == 4 and max(cancels) < 1.5, cancels  # not after the 2 s pause
    assert sorted(emu.cancels) == sorted(ids)


_WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def test_each_waits_events_come_in_its_callers_context(
    emu: RestEmulator, hub_client: tuple[AsyncRunClient, Sent]
) -> None:
    """Orchestrators find their run (Prefect's run logger, Airflow's log context) in context
    variables: a wait's events, answered by a batch or a tick, come in its caller's context."""
    client, _ = hub_client
    ids = runs(emu, 6, running=0.4)
    seen: dict[str, set[str]] = {}

    def hook(event: Any) -> None:
        if event.ref is not None:
            seen.setdefault(event.ref.id, set()).add(_WHO.get())

    async def one(run_id: str) -> RunState:
        _WHO.set(run_id)
        return (await client.wait(f"rest:{run_id}", wait_timeout=20, on_event=hook)).state

    assert await asyncio.gather(*(one(i) for i in ids)) == [RunState.SUCCEEDED] * 6
    assert emu.batches
    assert seen == {i: {i} for i in ids}
