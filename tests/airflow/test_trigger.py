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

from runbridge.airflow_provider import triggers as triggers_module
from runbridge.airflow_provider.triggers import (
    UNKNOWN,
    KillFacts,
    RunTrigger,
    connection_config,
    decide_on_kill,
)
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
        "rb_rest",
        "rest:abc",
        poll=FAST,
        wait_deadline=1.0e10,
        run_timeout=5.0,
        cancel_on_kill=True,
        deferred_at=1.0e9,
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


@pytest.mark.parametrize("script", ["ended", "not_found"])
def test_the_event_is_held_until_the_deferral_has_settled(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch, script: str
) -> None:
    """Airflow 3.3's "state mismatch" (docs/airflow.md): a run already ended at the deferral is
    handed back SETTLE_AFTER_DEFERRAL seconds after it, not at once; a trigger made before that
    (deferred_at in the past) or without deferred_at is not held."""
    monkeypatch.setattr(triggers_module, "SETTLE_AFTER_DEFERRAL", 2.0)
    ref = (
        launch(rest, Script([], final="succeeded")).to_dict()
        if script == "ended"
        else "rest:no-such-run"
    )
    kind = "done" if script == "ended" else "error"
    for deferred_ago, held in [(0.0, True), (5.0, False), (None, False)]:
        deferred_at = None if deferred_ago is None else time.time() - deferred_ago
        started = time.monotonic()
        event = first_event(RunTrigger("rb_rest", ref, poll=FAST, deferred_at=deferred_at))
        took = time.monotonic() - started
        assert event["kind"] == kind
        assert (took >= 1.9) is held, (deferred_ago, took)


def test_an_error_keeps_its_class(rest: Emulator) -> None:
    event = first_event(RunTrigger("rb_rest", "rest:no-such-run", poll=FAST))
    assert event["kind"] == "error" and event["error"] == "RunNotFound"


def test_one_client_per_connection_and_event_loop(rest: Emulator) -> None:
    refs = [launch(rest, Script([("running", 0.3)], final="succeeded")) for _ in range(20)]

    async def main() -> tuple[list[dict[str, Any]], set[int]]:
        seen: set[int] = set()

        async def one(ref: RunRef) -> dict[str, Any]:
            # held while the trigger waits: a user that enters and leaves within one loop turn
            # can have the client closed under the next one (core/shared.py's closer race,
            # reported; not what a trigger does, its wait awaits the platform first)
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


class Supervisor:
    """Stands in for the triggerer's supervisor behind ``SUPERVISOR_COMMS`` (the real one needs
    a triggerer job and its database; tests/deploy/airflow runs that): answers the task's state
    (``GetTaskStates``) and its ``run_ref`` XCom (``GetXCom``) as Airflow's messages, after
    ``delay`` seconds, or never (``silent``)."""

    def __init__(
        self, state: str | None, run_ref: str | None, delay: float = 0.0, silent: bool = False
    ) -> None:
        self.state, self.run_ref, self.delay, self.silent = state, run_ref, delay, silent
        self.asked: list[Any] = []

    def state_of(self, task_id: str) -> str | None:
        return self.state

    def send(self, msg: Any) -> Any:  # from a thread (the connection read masks its secrets)
        assert type(msg).__name__ == "MaskSecret", msg
        return None

    async def asend(self, msg: Any) -> Any:
        from airflow.sdk.execution_time.comms import (
            GetTaskStates,
            GetXCom,
            MaskSecret,
            TaskStatesResult,
            XComResult,
        )

        if isinstance(msg, MaskSecret):
            return None  # the real one adds the secret to the log masker
        self.asked.append(msg)
        run_ref = self.run_ref  # read before the delay: concurrent asks may change it
        if self.silent:
            await asyncio.Event().wait()
        await asyncio.sleep(self.delay)
        if isinstance(msg, GetTaskStates):
            states = {
                run: {task: self.state_of(task) for task in msg.task_ids} for run in msg.run_ids
            }
            return TaskStatesResult(task_states=states)
        assert isinstance(msg, GetXCom) and msg.key == "run_ref"
        return XComResult(key=msg.key, value=run_ref)


def for_task(trigger: RunTrigger, task_id: str = "launch") -> RunTrigger:
    """The task instance the triggerer gives a trigger it runs for a task."""
    trigger.task_instance = SimpleNamespace(  # type: ignore[assignment]
        id=f"ti-{task_id}",
        dag_id="d",
        task_id=task_id,
        run_id="r1",
        map_index=-1,
        try_number=1,
        context_carrier=None,
    )
    return trigger


async def kill_as_the_triggerer(triggers: list[RunTrigger], every: float = 0.2) -> float:
    """Run ``triggers`` in Airflow's own ``TriggerRunner.run_trigger``, then cancel them the
    way Airflow 3.3's triggerer does after a user action: ``cancel_triggers`` with the
    user-action message, again at every sync (every ``every`` s here, about 1 s in a triggerer)
    until the trigger ends, since the supervisor keeps its id in ``cancelling_triggers`` until
    then. Returns the seconds until all ended."""
    from airflow.jobs.triggerer_job_runner import TriggerRunner

    runner = TriggerRunner()
    for number, trigger in enumerate(triggers, 1):
        trigger.trigger_id = number
        runner.triggers[number] = {
            "task": asyncio.create_task(runner.run_trigger(number, trigger, None, None)),
            "name": f"trigger {number}",
            "events": 0,
            "is_watcher": False,
        }
    await asyncio.sleep(0.5)  # they wait for their runs
    started = time.monotonic()
    tasks = {number: details["task"] for number, details in runner.triggers.items()}
    while not all(task.done() for task in tasks.values()):
        assert time.monotonic() - started < 60, "on_kill did not end"
        runner.to_cancel.extend(n for n, task in tasks.items() if not task.done())
        await runner.cancel_triggers()
        await asyncio.sleep(every)
    # The triggerer's loop goes on after a trigger ended; so does on_kill's work when Airflow
    # gave up waiting for it (Python 3.11's wait_for does at the second re-cancel).
    while triggers_module._KILLS:
        assert time.monotonic() - started < 60, "on_kill's work did not end"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def running(emu: Emulator) -> RunRef:
    return launch(emu, Script([("running", 60.0)], final="succeeded"))


NO_DELAY = 0.0
SLOWER_THAN_A_SYNC = 0.5  # the supervisor answers after the next re-cancel


@pytest.mark.parametrize("delay", [NO_DELAY, SLOWER_THAN_A_SYNC])
@pytest.mark.parametrize(
    ("case", "state", "announced", "cancelled"),
    [
        ("mark failed", "failed", "mine", True),
        ("mark success", "success", "mine", True),
        ("cleared, not yet rescheduled", None, None, True),
        ("cleared, new try queued", "queued", None, True),
        ("cleared, new try deferred on its own run", "deferred", "other", True),
        ("trigger moved to another triggerer", "deferred", "mine", False),
    ],
)
def test_on_kill_through_airflows_cancel_path(
    rest: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    state: str | None,
    announced: str | None,
    cancelled: bool,
    delay: float,
) -> None:
    """Issue 14 items 1 and 2: a clear whose new try is already deferred (on a run of its own)
    cancels the old run; a slow supervisor (answering after Airflow cancelled the trigger
    again) no longer cuts on_kill short; a trigger that moved leaves its run going."""
    from airflow.sdk.execution_time import task_runner

    ref, other = running(rest), running(rest)
    run_ref = {"mine": ref.to_string(), "other": other.to_string(), None: None}[announced]
    supervisor = Supervisor(state, run_ref, delay=delay)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", supervisor, raising=False)
    trigger = for_task(RunTrigger("rb_rest", ref.to_dict(), poll=FAST, cancel_on_kill=True))
    took = asyncio.run(kill_as_the_triggerer([trigger]))
    assert rest.cancels == ([ref.id] if cancelled else []), case
    assert [type(m).__name__ for m in supervisor.asked][:1] == ["GetTaskStates"]
    assert took < 10


def test_several_kills_at_once_each_decide_for_their_own_task(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three deferred tasks stopped within a fraction of a second with a slow supervisor (the
    deployment's 0 of 2 cancelled): the two marked failed cancel, the moved one does not."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates

    refs = {name: running(rest) for name in ("a", "b", "moved")}

    class Several(Supervisor):
        def state_of(self, task_id: str) -> str | None:
            return "deferred" if task_id == "moved" else "failed"

        async def asend(self, msg: Any) -> Any:
            if not isinstance(msg, GetTaskStates) and hasattr(msg, "task_id"):
                self.run_ref = refs[msg.task_id].to_string()
            return await super().asend(msg)

    supervisor = Several(None, None, delay=SLOWER_THAN_A_SYNC)
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", supervisor, raising=False)
    triggers = [
        for_task(RunTrigger("rb_rest", ref.to_dict(), poll=FAST, cancel_on_kill=True), name)
        for name, ref in refs.items()
    ]
    asyncio.run(kill_as_the_triggerer(triggers, every=0.05))
    assert sorted(rest.cancels) == sorted([refs["a"].id, refs["b"].id])
    # one question for the three (the real supervisor took 30 s over five separate ones)
    asked = [m for m in supervisor.asked if isinstance(m, GetTaskStates)]
    assert len(asked) == 1 and sorted(asked[0].task_ids) == ["a", "b", "moved"]


def test_a_silent_supervisor_leaves_the_run_going_within_bounds(
    rest: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No answer is no licence to cancel (it may be a trigger that moved): the run is left
    going with a warning naming it, and on_kill ends in bounded time."""
    from airflow.sdk.execution_time import task_runner

    monkeypatch.setattr(triggers_module, "ASK_TIMEOUT", 0.3)
    monkeypatch.setattr(
        task_runner, "SUPERVISOR_COMMS", Supervisor(None, None, silent=True), raising=False
    )
    ref = running(rest)
    trigger = for_task(RunTrigger("rb_rest", ref.to_dict(), poll=FAST, cancel_on_kill=True))
    took = asyncio.run(kill_as_the_triggerer([trigger]))
    assert rest.cancels == [] and took < 5
    logged = caplog.text + capsys.readouterr().out  # Airflow's loggers write to stdout
    assert f"Not cancelling {ref}" in logged and "could not be read" in logged


@pytest.mark.parametrize(
    ("facts", "cancel", "warn"),
    [
        (dict(cancel_on_kill=False, state="failed"), False, False),
        (dict(ended=True, state="failed"), False, False),
        (dict(for_task=False), True, False),
        (dict(state="failed"), True, False),
        (dict(state="success"), True, False),
        (dict(state=None), True, False),
        (dict(state="scheduled"), True, False),
        (dict(state="up_for_retry"), True, False),
        (dict(state="absent"), True, False),
        (dict(state="deferred", waiting_on="rest:mine"), False, False),
        (dict(state="deferred", waiting_on="rest:other"), True, False),
        (dict(state="deferred", waiting_on=None), True, False),
        (dict(state=UNKNOWN), False, True),
        (dict(state="deferred", waiting_on=UNKNOWN), False, True),
    ],
)
def test_the_on_kill_decision(facts: dict[str, Any], cancel: bool, warn: bool) -> None:
    base: dict[str, Any] = dict(
        cancel_on_kill=True,
        ended=False,
        for_task=True,
        state=UNKNOWN,
        waiting_on=UNKNOWN,
        run="rest:mine",
    )
    decision = decide_on_kill(KillFacts(**{**base, **facts}))
    assert (decision.cancel, decision.warn) == (cancel, warn), decision.why


def test_on_kill_without_a_task_instance_cancels(rest: Emulator) -> None:
    ref = running(rest)
    asyncio.run(RunTrigger("rb_rest", ref.to_dict(), cancel_on_kill=True).on_kill())
    assert rest.cancels == [ref.id]


def test_on_kill_respects_cancel_on_kill_false(rest: Emulator) -> None:
    ref = launch(rest, Script([("running", 30.0)], final="succeeded"))
    asyncio.run(RunTrigger("rb_rest", ref.to_dict(), cancel_on_kill=False).on_kill())
    assert rest.cancels == []
