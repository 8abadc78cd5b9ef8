"""Pushed updates (webhook deliveries) end a wait's sleep early; polling stays the fallback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from runbridge import (
    AsyncRunClient,
    Inbox,
    PollSchedule,
    RetryPolicy,
    RunClient,
    RunRef,
    RunState,
    RunStatus,
)
from runbridge.core.http import Request, Sleep
from runbridge.testing import Script, serve
from runbridge.testing.rest import REST_CONFIG

REF = RunRef("rest", "r-1")
DONE = RunStatus(REF, RunState.SUCCEEDED, "succeeded")
RUNNING = RunStatus(REF, RunState.RUNNING, "running")


def deliver_later(inbox: Inbox, status: RunStatus, seconds: float = 0.1) -> threading.Timer:
    timer = threading.Timer(seconds, inbox.deliver, args=(status,))
    timer.start()
    return timer


def test_sleep_returns_the_delivered_terminal_status() -> None:
    inbox = Inbox()
    deliver_later(inbox, DONE)
    # would block a minute and return None if the delivery did not wake it
    assert inbox.sleep(REF, 60.0) == DONE


def test_a_non_terminal_delivery_does_not_end_the_sleep() -> None:
    inbox = Inbox()
    inbox.deliver(RUNNING)
    assert inbox.sleep(REF, 0.05) is None
    assert inbox.take(REF) == RUNNING


def test_other_runs_are_not_woken() -> None:
    inbox = Inbox()
    inbox.deliver(RunStatus(RunRef("rest", "other"), RunState.SUCCEEDED, "succeeded"))
    assert inbox.sleep(REF, 0.05) is None


@pytest.mark.anyio
async def test_async_sleep_is_woken_from_another_thread() -> None:
    inbox = Inbox()
    deliver_later(inbox, DONE)
    assert await inbox.sleep_async(REF, 60.0) == DONE
    assert inbox._futures == {}  # nothing left registered


@pytest.mark.anyio
async def test_async_sleep_times_out_cleanly() -> None:
    inbox = Inbox()
    assert await inbox.sleep_async(REF, 0.05) is None
    assert inbox._futures == {}


def test_the_wait_flow_checks_at_once_after_a_delivery() -> None:
    from runbridge.core.flows import FlowContext, WaitOptions
    from runbridge.core.providers.rest import RestProvider

    provider = RestProvider(**REST_CONFIG)
    flow = FlowContext(provider, RetryPolicy(), clock=lambda: 0.0).wait(
        REF, WaitOptions(poll=PollSchedule.fixed(30.0))
    )
    request = next(flow)
    assert isinstance(request, Request)
    from runbridge.core.http import Response

    body = b'{"run": {"id": "r-1", "status": "running"}}'
    sleep = flow.send(Response(200, {}, body, request))
    assert isinstance(sleep, Sleep) and sleep.wake == REF and sleep.seconds == 30.0
    after = flow.send(DONE)  # the driver hands back the delivered status
    assert isinstance(after, Request) and after.path == "/api/v1/runs/r-1"
    flow.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_client_with_an_inbox_ends_its_wait_on_delivery(kind: str) -> None:
    inbox = Inbox()
    with serve("rest") as emu:
        emu.script(Script([("running", 0.3)], final="succeeded"))
        options = dict(REST_CONFIG, poll=PollSchedule.fixed(3600.0), inbox=inbox)
        with RunClient("rest", emu.base_url, **options) as client:
            ref = client.launch({"job": "j"})
        deliver_later(inbox, RunStatus(ref, RunState.SUCCEEDED, "succeeded"), 0.6)
        if kind == "sync":
            with RunClient("rest", emu.base_url, **options) as client:
                status = client.wait(ref)
        else:

            async def go() -> RunStatus:
                async with AsyncRunClient("rest", emu.base_url, **options) as client:
                    return await client.wait(ref)

            status = asyncio.run(go())
        assert status.state is RunState.SUCCEEDED
        # one check before the delivery, one confirming it; never an hour's poll
        assert len(emu.requests_to("GET", f"/runs/{ref.id}")) == 2
