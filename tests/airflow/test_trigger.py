"""``RunTrigger`` on its own, as the triggerer runs it: serialized kwargs, events, one shared
client per connection and event loop (core's ``shared_async_client``), and ``on_kill``."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from runbridge.airflow_provider.triggers import RunTrigger, connection_config
from runbridge.core.models import RunRef
from runbridge.core.shared import clients_created, shared_async_client
from runbridge.testing import Emulator, Script

from .conftest import TOKEN


def first_event(trigger: RunTrigger) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("no event")

    return asyncio.run(main())


def launch(emu: Emulator, script: Script) -> RunRef:
    emu.script(script)
    from runbridge.airflow_provider import RunbridgeHook

    with RunbridgeHook("rb_rest").get_client() as client:
        return client.launch({"job": "etl"})


FAST = {"first": 0.05, "factor": 1.0, "cap": 0.05, "jitter": 0.0}


def test_serialize_round_trips_plain_json_without_the_token(rest: Emulator) -> None:
    trigger = RunTrigger(
        "rb_rest", "rest:abc", poll=FAST, wait_deadline=1.0e10, run_timeout=5.0, cancel_on_kill=True
    )
    classpath, kwargs = trigger.serialize()
    text = json.dumps(kwargs)
    assert TOKEN not in text and TOKEN not in repr(trigger)
    module, _, name = classpath.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**json.loads(text))
    assert again.serialize() == (classpath, kwargs)
    assert kwargs["ref"] == {"platform": "rest", "id": "abc", "scope": {}}


def test_done_event_carries_the_terminal_status(rest: Emulator) -> None:
    ref = launch(rest, Script([("running", 0.2)], final="failed", message="boom"))
    event = first_event(RunTrigger("rb_rest", ref.to_dict(), poll=FAST))
    assert event["kind"] == "done" and not event["cancelled"]
    assert event["status"]["state"] == "FAILED" and event["status"]["message"] == "boom"


def test_wait_deadline_and_task_deadline(rest: Emulator) -> None:
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    soon = time.time() + 0.3
    event = first_event(RunTrigger("rb_rest", ref.to_dict(), poll=FAST, wait_deadline=soon))
    assert event["kind"] == "wait_timeout" and event["status"]["state"] == "RUNNING"
    soon = time.time() + 0.3
    event = first_event(
        RunTrigger("rb_rest", ref.to_dict(), poll=FAST, wait_deadline=soon + 60, task_deadline=soon)
    )
    assert event["kind"] == "task_timeout" and event["ref"]["id"] == ref.id
    assert rest.cancels == []  # the task cancels, when it resumes


def test_run_timeout_cancels_and_says_so(rest: Emulator) -> None:
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    event = first_event(RunTrigger("rb_rest", ref.to_dict(), poll=FAST, run_timeout=0.3))
    assert event["kind"] == "done" and event["cancelled"]
    assert event["status"]["state"] == "TIMED_OUT"
    assert event["status"]["cancelled_by_runbridge"] is True
    assert rest.cancels == [ref.id]


def test_an_error_keeps_its_class(rest: Emulator) -> None:
    event = first_event(RunTrigger("rb_rest", "rest:no-such-run", poll=FAST))
    assert event["kind"] == "error" and event["error"] == "RunNotFound"


def test_one_client_per_connection_and_event_loop(rest: Emulator) -> None:
    refs = [launch(rest, Script([("running", 0.3)], final="succeeded")) for _ in range(20)]

    async def main() -> tuple[list[dict[str, Any]], set[int]]:
        seen: set[int] = set()

        async def one(ref: RunRef) -> dict[str, Any]:
            async with shared_async_client(await connection_config("rb_rest")) as client:
                seen.add(id(client))
            async for event in RunTrigger("rb_rest", ref.to_dict(), poll=FAST).run():
                return dict(event.payload)
            raise AssertionError

        events = await asyncio.gather(*(one(ref) for ref in refs))
        return list(events), seen

    before = clients_created()
    events, first_loop = asyncio.run(main())
    assert all(e["kind"] == "done" for e in events)
    assert len(first_loop) == 1 and clients_created() == before + 1
    _, second_loop = asyncio.run(main())  # a new event loop gets a client of its own
    assert len(second_loop) == 1 and clients_created() == before + 2


def test_the_connections_error_window_bounds_the_wait(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger's wait takes the connection's error_window unless given its own."""
    connection = json.loads(os.environ["AIRFLOW_CONN_RB_REST"])
    connection["extra"]["error_window"] = 0.3
    monkeypatch.setenv("AIRFLOW_CONN_RB_IMPATIENT", json.dumps(connection))
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    rest.inject(kind="status", status=503, method="GET", times=10_000)
    started = time.monotonic()
    event = first_event(RunTrigger("rb_impatient", ref.to_dict(), poll=FAST))
    assert event["kind"] == "error" and event["error"] == "PlatformUnavailable"
    assert time.monotonic() - started < 10


class FakeComms:
    """The triggerer's channel to its supervisor, answering GetTaskStates."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.asked: list[Any] = []

    async def asend(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import TaskStatesResult

        self.asked.append(msg)
        return TaskStatesResult(task_states={"r1": {"launch": self.state}})


@pytest.mark.parametrize(
    ("ti_state", "cancelled"), [("deferred", False), ("failed", True), ("scheduled", True)]
)
def test_on_kill_cancels_its_own_run_unless_the_task_is_still_deferred(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch, ti_state: str, cancelled: bool
) -> None:
    from airflow.sdk.execution_time import task_runner

    other = launch(rest, Script([("running", 30.0)], final="succeeded"))
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    comms = FakeComms(ti_state)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    trigger = RunTrigger("rb_rest", ref.to_dict(), poll=FAST, cancel_on_kill=True)
    trigger.task_instance = SimpleNamespace(  # type: ignore[assignment]
        dag_id="d", task_id="launch", run_id="r1", map_index=-1
    )
    asyncio.run(trigger.on_kill())
    assert comms.asked and comms.asked[0].task_ids == ["launch"]
    assert rest.cancels == ([ref.id] if cancelled else [])
    assert other.id not in rest.cancels


def test_on_kill_respects_cancel_on_kill_false(rest: Emulator) -> None:
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    asyncio.run(RunTrigger("rb_rest", ref.to_dict(), cancel_on_kill=False).on_kill())
    assert rest.cancels == []
