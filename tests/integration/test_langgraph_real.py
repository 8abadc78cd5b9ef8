"""The langgraph provider against a real LangGraph server (`langgraph dev`, in-memory runtime).

The server runs the tiny graph in tests/langgraph_server/graph.py. Every behaviour is checked
through both RunClient and AsyncRunClient.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from runbridge import (
    AsyncRunClient,
    PollSchedule,
    RunClient,
    RunNotFound,
    RunRef,
    RunState,
    RunStatus,
    WaitTimeout,
)
from tests.integration.langgraph_fixture import langgraph_server  # noqa: F401

pytestmark = pytest.mark.langgraph_server

POLL = PollSchedule(first=0.1, factor=1.5, cap=0.5, jitter=0.0)


class Client:
    """Run the same calls through RunClient or AsyncRunClient."""

    def __init__(self, mode: str, base_url: str) -> None:
        self.mode = mode
        self.base_url = base_url

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "sync":
            with RunClient("langgraph", self.base_url, poll=POLL) as client:
                return getattr(client, method)(*args, **kwargs)

        async def go() -> Any:
            async with AsyncRunClient("langgraph", self.base_url, poll=POLL) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest, langgraph_server: str) -> Client:  # noqa: F811
    return Client(request.param, langgraph_server)


def agent(payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"assistant_id": "agent", "input": {"input": payload}, **extra}


def wait_until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    import time

    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.05)


def test_success_returns_thread_values(client: Client) -> None:
    status: RunStatus = client("launch_and_wait", agent({"x": 1}), wait_timeout=60)
    assert status.state is RunState.SUCCEEDED
    assert status.raw_state == "success"
    assert status.outputs["values"]["result"] == {"x": 1}
    assert status.created_at is not None and status.ended_at is not None
    assert status.ref.scope["thread_id"]


def test_error_carries_the_graph_message(client: Client) -> None:
    status: RunStatus = client(
        "launch_and_wait", agent({"fail": "the model broke"}), wait_timeout=60
    )
    assert status.state is RunState.FAILED
    assert status.raw_state == "error"
    assert status.message is not None and "the model broke" in status.message
    with pytest.raises(Exception, match="the model broke"):
        status.raise_for_state()


def test_cancel_interrupts_a_running_run(client: Client, langgraph_server: str) -> None:  # noqa: F811
    ref: RunRef = client("launch", agent({"sleep": 30}))
    with RunClient("langgraph", langgraph_server) as sync:
        wait_until(lambda: sync.get(ref).state is RunState.RUNNING)
    client("cancel", ref)
    status: RunStatus = client("wait", ref, wait_timeout=30)
    assert status.state is RunState.CANCELLED
    assert status.raw_state == "interrupted"
    # cancelling a run that already ended is not an error
    client("cancel", ref)


def test_join_waits_for_a_longer_run(client: Client) -> None:
    status: RunStatus = client(
        "launch_and_wait", agent({"sleep": 1.5}), wait_timeout=60, use_join=True
    )
    assert status.state is RunState.SUCCEEDED
    assert status.outputs["values"]["result"] == {"sleep": 1.5}


def test_wait_timeout_leaves_the_run_going(client: Client, langgraph_server: str) -> None:  # noqa: F811
    ref: RunRef = client("launch", agent({"sleep": 20}))
    with pytest.raises(WaitTimeout) as info:
        client("wait", ref, wait_timeout=1.0)
    assert info.value.last_status is not None
    assert not info.value.last_status.is_terminal
    with RunClient("langgraph", langgraph_server) as sync:
        assert sync.get(ref).state in (RunState.PENDING, RunState.RUNNING)
        sync.cancel(ref)


def test_unknown_run_and_thread_are_not_found(client: Client) -> None:
    thread_ref: RunRef = client("launch", agent({}))
    missing_run = RunRef(
        "langgraph", str(uuid.uuid4()), {"thread_id": thread_ref.scope["thread_id"]}
    )
    with pytest.raises(RunNotFound):
        client("get", missing_run)
    missing_thread = RunRef("langgraph", str(uuid.uuid4()), {"thread_id": str(uuid.uuid4())})
    with pytest.raises(RunNotFound, match="not found"):
        client("get", missing_thread)


def test_a_keyed_launch_reattaches_instead_of_launching_twice(
    client: Client,
    langgraph_server: str,  # noqa: F811
) -> None:
    key = f"dag.task.{uuid.uuid4()}"
    first: RunRef = client("launch", agent({"sleep": 0.5}), key=key)
    second: RunRef = client("launch", agent({"sleep": 0.5}), key=key)
    assert second == first
    runs = httpx.get(f"{langgraph_server}/threads/{first.scope['thread_id']}/runs").json()
    assert [r["run_id"] for r in runs] == [first.id]
    assert client("wait", first, wait_timeout=60).state is RunState.SUCCEEDED


def test_launch_on_a_given_thread_and_stateless(client: Client, langgraph_server: str) -> None:  # noqa: F811
    thread_id = httpx.post(f"{langgraph_server}/threads", json={}).json()["thread_id"]
    on_thread: RunStatus = client(
        "launch_and_wait", agent({"n": 1}, thread_id=thread_id), wait_timeout=60
    )
    assert on_thread.ref.scope["thread_id"] == thread_id
    assert on_thread.state is RunState.SUCCEEDED
    stateless: RunStatus = client(
        "launch_and_wait", agent({"n": 2}, stateless=True), wait_timeout=60
    )
    assert stateless.state is RunState.SUCCEEDED
    assert stateless.outputs["values"]["result"] == {"n": 2}
