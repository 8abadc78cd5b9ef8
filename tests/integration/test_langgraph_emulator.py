"""runbridge's langgraph provider against the LangGraph emulator, both clients, faults on.

The vendor SDK's view of the same emulator is checked in test_langgraph_emulator_sdk.py, and
the provider against a real server in test_langgraph_real.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from runbridge import (
    LaunchUncertain,
    PollSchedule,
    RetryPolicy,
    RunNotFound,
    RunRef,
    RunState,
    WaitTimeout,
)
from runbridge.testing import Emulator, Script, serve
from tests.core.helpers import ClientUnderTest, make_client

pytestmark = pytest.mark.anyio

TOKEN = "lg-emulator-key"
AGENT = {"assistant_id": "agent", "input": {"question": "?"}}


@pytest.fixture
def emu() -> Iterator[Emulator]:
    with serve("langgraph", token=TOKEN, heartbeat=0.1) as emulator:
        yield emulator


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, emu: Emulator) -> Any:
    made = make_client(
        request.param,
        "langgraph",
        emu.base_url,
        TOKEN,
        poll=PollSchedule.fixed(0.05),
        retry=RetryPolicy(attempts=4, first=0.02, cap=0.1, jitter=0.0),
        request_timeout=5.0,
    )
    yield made
    await made.close()


def runs_launched(emu: Emulator) -> int:
    return len(emu.launches)


@pytest.mark.parametrize(
    ("final", "state", "message"),
    [
        ("success", RunState.SUCCEEDED, None),
        ("error", RunState.FAILED, "ValueError: the tool failed"),
        ("timeout", RunState.TIMED_OUT, None),
    ],
)
@pytest.mark.parametrize("use_join", [True, False])
async def test_each_terminal_state(
    emu: Emulator,
    client: ClientUnderTest,
    final: str,
    state: RunState,
    message: str | None,
    use_join: bool,
) -> None:
    emu.script(
        Script([("pending", 0.05), ("running", 0.3)], final=final, message="the tool failed")
    )
    status = await client.launch_and_wait(AGENT, wait_timeout=20, use_join=use_join)
    assert status.state is state
    assert status.raw_state == final
    if message:
        assert status.message == message
    joins = emu.requests_to("GET", "/join")
    assert bool(joins) == use_join
    assert runs_launched(emu) == 1


async def test_cancel_interrupts(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(Script([("running", 30.0)]))
    ref: RunRef = await client.launch(AGENT)
    await client.cancel(ref)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "interrupted")
    assert emu.cancels == [ref.id]


async def test_wait_timeout_and_run_timeout(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(Script([("running", 30.0)]), Script([("running", 30.0)]))
    ref: RunRef = await client.launch(AGENT)
    with pytest.raises(WaitTimeout) as info:
        await client.wait(ref, wait_timeout=0.5)
    assert info.value.last_status is not None
    assert info.value.last_status.state is RunState.RUNNING
    assert emu.cancels == []  # a wait timeout leaves the run going
    other: RunRef = await client.launch(AGENT)
    status = await client.wait(other, run_timeout=0.3, wait_timeout=10)
    assert status.state is RunState.TIMED_OUT
    assert status.raw_state == "interrupted"
    assert emu.cancels == [other.id]


async def test_faults_while_waiting_are_ridden_out(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(Script([("pending", 0.1), ("running", 0.5)], final="success"))
    ref: RunRef = await client.launch(AGENT)
    emu.inject(kind="status", status=503, times=2, method="GET", path="/runs/")
    emu.inject(kind="status", status=429, retry_after="0.1", times=1, method="GET", path="/runs/")
    emu.inject(kind="drop", times=1, method="GET", path="/runs/")
    emu.inject(kind="malformed", times=1, method="GET", path="/runs/")
    emu.inject(kind="delay", seconds=0.3, times=1, method="GET", path="/runs/")
    status = await client.wait(ref, wait_timeout=30, use_join=False)
    assert status.state is RunState.SUCCEEDED
    assert emu.faults == []  # every fault was met


async def test_a_lost_launch_answer_does_not_launch_twice(
    emu: Emulator, client: ClientUnderTest
) -> None:
    # the run is created, then the connection drops before the answer arrives
    emu.inject(kind="drop", when="after", times=1, method="POST", path="/runs")
    emu.script(Script([("running", 0.2)], final="success"))
    ref: RunRef = await client.launch(AGENT)
    assert runs_launched(emu) == 1
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.SUCCEEDED


async def test_a_keyed_launch_reattaches(emu: Emulator, client: ClientUnderTest) -> None:
    first: RunRef = await client.launch(AGENT, key="dag/task/2026-11-25/0")
    again: RunRef = await client.launch(AGENT, key="dag/task/2026-11-25/0")
    assert again == first
    assert runs_launched(emu) == 1


async def test_a_stateless_launch_whose_answer_is_lost_is_not_retried(
    emu: Emulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="status", status=502, when="after", times=1, method="POST", path="/runs")
    with pytest.raises(LaunchUncertain, match="not retried"):
        await client.launch({**AGENT, "stateless": True})
    assert runs_launched(emu) == 1


async def test_wrong_key_and_unknown_run(emu: Emulator, client: ClientUnderTest) -> None:
    from runbridge import AuthError

    ref: RunRef = await client.launch(AGENT)
    with pytest.raises(RunNotFound):
        await client.get(RunRef("langgraph", "00000000-0000-0000-0000-000000000000", ref.scope))
    bad = make_client("sync", "langgraph", emu.base_url, "wrong-key-123")
    with pytest.raises(AuthError, match="Invalid token") as info:
        await bad.get(ref)
    assert "wrong-key-123" not in str(info.value)
    await bad.close()
