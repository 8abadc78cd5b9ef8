"""Both clients against the ``rest`` emulator on loopback (real uvicorn, real sockets), with faults.

Short scripts and ``PollSchedule.fixed(0.05)`` keep the file fast; nothing here asserts on time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runbridge.core import (
    AuthError,
    Conflict,
    Event,
    LaunchUncertain,
    RunFailed,
    RunNotFound,
    RunRef,
    RunState,
    WaitTimeout,
)
from runbridge.testing import Emulator, Fault, Relay, Script, create_emulator
from runbridge.testing.rest import REST_CONFIG
from tests.core.helpers import ClientUnderTest

pytestmark = pytest.mark.anyio

TOKEN = "emulator-token-42"
QUICK = Script([("queued", 0.05), ("running", 0.15)], final="succeeded", outputs={"rows": 42})
LONG = Script([("queued", 0.05), ("running", 30.0)])
LAUNCH = {"job": "etl", "size": 3}
LAUNCH_PATH = "/api/v1/jobs/etl/runs"


@pytest.fixture
def emulator() -> Emulator:
    """A fresh ``rest`` emulator: what ``serve("rest", token=TOKEN)`` serves."""
    return create_emulator("rest", token=TOKEN)


@pytest.fixture
def client_options() -> dict[str, Any]:
    return dict(REST_CONFIG)


# -- each terminal state ------------------------------------------------------------------------
async def test_succeeded(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(QUICK)
    events: list[Event] = []
    client.client.hooks.append(events.append)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, check=True)
    assert status.state is RunState.SUCCEEDED
    assert status.raw_state == "succeeded"
    assert status.outputs == {"rows": 42}
    assert status.url == f"{emu.base_url}/ui/runs/{ref.id}"
    assert status.created_at is not None and status.ended_at is not None
    assert emu.launches == [{"size": 3}]
    changes = [e.status.raw_state for e in events if e.kind == "state_changed"]
    assert changes[-1] == "succeeded"
    assert set(changes) <= {"queued", "running", "succeeded"}


@pytest.mark.parametrize(
    ("final", "state"), [("failed", RunState.FAILED), ("timed_out", RunState.TIMED_OUT)]
)
async def test_ends_unsuccessfully_with_the_platform_message(
    emu: Emulator, client: ClientUnderTest, final: str, state: RunState
) -> None:
    emu.script(Script([("running", 0.1)], final=final, message="executor lost"))
    status = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert (status.state, status.raw_state, status.message) == (state, final, "executor lost")
    with pytest.raises(RunFailed, match="executor lost") as info:
        await client.wait(status.ref, wait_timeout=10, check=True)
    assert info.value.status.state is state


async def test_cancelled(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    await client.cancel(ref)
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.CANCELLED
    assert emu.cancels == [ref.id]
    with pytest.raises(Conflict, match="already finished"):
        await client.cancel(ref)


async def test_run_timeout_cancels_and_reports_timed_out(
    emu: Emulator, client: ClientUnderTest
) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, run_timeout=0.2)
    assert status.state is RunState.TIMED_OUT
    assert status.raw_state == "cancelled"
    assert "run_timeout=0.2s" in (status.message or "")
    assert emu.cancels == [ref.id]


async def test_wait_timeout_leaves_the_run_going(emu: Emulator, client: ClientUnderTest) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    with pytest.raises(WaitTimeout) as info:
        await client.wait(ref, wait_timeout=0.2)
    assert info.value.last_status is not None
    assert info.value.last_status.state in (RunState.PENDING, RunState.RUNNING)
    assert info.value.last_status.ref == ref
    assert emu.cancels == []
    assert (await client.get(ref)).is_terminal is False


# -- errors -------------------------------------------------------------------------------------------
async def test_wrong_token_is_an_auth_error(emu: Emulator, connect) -> None:
    client = connect(token="wrong-token")
    with pytest.raises(AuthError, match="invalid or missing API token") as info:
        await client.launch(LAUNCH)
    assert info.value.status_code == 401
    assert "wrong-token" not in str(info.value)
    with pytest.raises(AuthError):
        await client.get(RunRef("rest", "any"))
    assert emu.launches == []
    assert len(emu.requests) == 2  # never retried


async def test_unknown_run_is_run_not_found(emu: Emulator, client: ClientUnderTest) -> None:
    with pytest.raises(RunNotFound, match="run no-such-run not found"):
        await client.get("rest:no-such-run")
    with pytest.raises(RunNotFound):
        await client.wait(client.ref("no-such-run"), wait_timeout=5)
    assert len(emu.requests) == 2


# -- faults -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 503, "times": 2},
        {"kind": "status", "status": 502, "times": 1},
        {"kind": "drop", "times": 2},
        {"kind": "malformed", "times": 2},
        {"kind": "delay", "seconds": 0.1, "times": 2},
    ],
    ids=["503x2", "502", "drop", "malformed", "slow"],
)
async def test_wait_rides_out_faults(
    emu: Emulator, client: ClientUnderTest, fault: dict[str, Any]
) -> None:
    emu.script(QUICK)
    ref = await client.launch(LAUNCH)
    emu.inject(Fault(method="GET", **fault))
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert emu.faults == [], "every injected fault was met"
    # each failed answer was followed by another check (a slow answer is just late)
    retried = fault["kind"] != "delay"
    assert len(emu.requests_to("GET", ref.id)) >= fault["times"] + retried


async def test_slow_response_past_the_client_timeout_is_retried(emu: Emulator, connect) -> None:
    client = connect(request_timeout=0.2)
    run = emu.add_run(QUICK)  # a run launched elsewhere: the sensor case
    ref = client.ref(run.id)
    emu.inject(kind="delay", seconds=0.5, times=1, method="GET")
    status = await client.get(ref)
    assert status.ref == ref
    assert emu.faults == []
    assert len(emu.requests_to("GET", ref.id)) >= 2  # the slow one timed out and was resent


async def test_429_retry_after_is_honoured(emu: Emulator, client: ClientUnderTest) -> None:
    events: list[Event] = []
    client.client.hooks.append(events.append)
    emu.script(QUICK)
    ref = await client.launch(LAUNCH)
    emu.inject(kind="status", status=429, retry_after="0.3", method="GET")
    await client.get(ref)
    assert [e.delay for e in events if e.kind == "retry"] == [0.3]
    assert len(emu.requests_to("GET", ref.id)) == 2


async def test_429_on_launch_is_retried_without_a_duplicate(
    emu: Emulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="status", status=429, retry_after="0.1", method="POST")
    ref = await client.launch(LAUNCH)  # no key: a 429 means "not processed"
    assert len(emu.launches) == 1
    assert list(emu.runs) == [ref.id]


@pytest.mark.parametrize("fault_kind", ["drop", "status"])
async def test_lost_launch_answer_with_a_key_launches_once(
    emu: Emulator, client: ClientUnderTest, fault_kind: str
) -> None:
    # the platform creates the run, then the answer is lost (connection dropped or a 502)
    emu.script(QUICK)
    emu.inject(kind=fault_kind, status=502, when="after", method="POST")
    ref = await client.launch(LAUNCH, key="dag.task.2024-05-01.0")
    assert len(emu.launches) == 1, "the emulator recorded exactly one launch"
    assert list(emu.runs) == [ref.id]
    posts = emu.requests_to("POST", LAUNCH_PATH)
    assert len(posts) == 2
    assert {p.headers["idempotency-key"] for p in posts} == {"dag.task.2024-05-01.0"}
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.SUCCEEDED


async def test_lost_launch_answer_without_a_key_is_uncertain_not_retried(
    emu: Emulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="drop", when="after", method="POST")
    with pytest.raises(LaunchUncertain, match="may have created a run anyway"):
        await client.launch(LAUNCH)
    assert len(emu.requests_to("POST", LAUNCH_PATH)) == 1
    assert len(emu.launches) == 1  # it did: which is why it is not retried blindly


async def test_launch_503_before_acting_with_a_key_is_retried(
    emu: Emulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="status", status=503, times=2, method="POST")
    ref = await client.launch(LAUNCH, key="k-503")
    assert len(emu.launches) == 1
    assert len(emu.requests_to("POST", LAUNCH_PATH)) == 3
    assert list(emu.runs) == [ref.id]


async def test_relaunch_with_the_same_key_returns_the_same_run(
    emu: Emulator, client: ClientUnderTest
) -> None:
    first = await client.launch(LAUNCH, key="same")
    second = await client.launch(LAUNCH, key="same")
    assert first == second
    assert len(emu.launches) == 1


# -- the relay the module's tests share --------------------------------------------------------
def test_the_relay_answers_for_the_emulator_swapped_in(relay: Relay) -> None:
    with httpx.Client(base_url=relay.base_url, timeout=5.0) as http:
        empty = http.get("/api/v1/runs/x")
        assert (empty.status_code, empty.json()) == (
            503,
            {"detail": "no emulator behind the relay"},
        )
        first = relay.swap(create_emulator("rest", token=TOKEN))
        assert (first.base_url, relay.target) == (relay.base_url, first)
        assert http.get("/api/v1/runs/x").status_code == 401
        second = relay.swap(create_emulator("rest"))
        assert http.get("/api/v1/runs/x").status_code == 404
        assert [r.path for r in first.requests] == [r.path for r in second.requests]
        assert relay.requests == [], "the emulator behind the relay records, not the relay"
    relay.target = None
