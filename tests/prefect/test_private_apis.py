"""The Prefect internals runbridge relies on, pinned against the installed Prefect (the
version matrix, tools/matrix.py's PIN_TESTS, runs this file in its Prefect rows: the newest
release, and 3.4.0, the floor, as released; docs/prefect.md lists them):

* ``ThreadPoolTaskRunner._cancel_events`` (private): the only way a task submitted to the
  thread pool learns that its flow run was cancelled. No public mechanism exists in 3.4-3.9
  (the task engine keeps the event in its own ``context``, not in ``TaskRunContext``).
* Prefect's ``async_dispatch`` (private) is *not* used: runbridge's own, on the public run
  context, must decide as Prefect's does wherever Prefect still has one.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

from runbridge.prefect_blocks import _runtime
from runbridge.prefect_blocks._bridge import async_dispatch, in_async_context


def test_the_thread_pool_keeps_a_cancel_event_per_task_run_and_cancel_all_sets_it():
    seen: dict[str, Any] = {}
    release = threading.Event()

    @task
    def watch() -> bool:
        event = _runtime.task_cancel_event()
        seen["event"] = event
        release.wait(10)
        return event is not None

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def submitted() -> bool:
        future = watch.submit()
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        assert ctx is not None
        events = ctx.task_runner._cancel_events  # type: ignore[attr-defined]
        assert isinstance(events, dict)
        deadline = threading.Event()
        while "event" not in seen and not deadline.wait(0.05):
            pass
        event = seen["event"]
        assert isinstance(event, threading.Event) and not event.is_set()
        assert event in events.values()
        release.set()
        return future.result()

    assert submitted() is True


def test_cancel_all_sets_every_cancel_event():
    runner = ThreadPoolTaskRunner(max_workers=1)
    events = runner._cancel_events
    assert isinstance(events, dict)
    event = threading.Event()
    events["x"] = event  # type: ignore[index]
    runner.cancel_all()
    assert event.is_set()


def test_a_task_called_directly_has_no_cancel_event():
    @task
    def direct() -> bool:
        return _runtime.task_cancel_event() is None

    @flow
    def called() -> bool:
        return direct()

    assert called() is True


# -- async_dispatch ------------------------------------------------------------------------------


class Thing:
    async def aname(self) -> str:
        return "async"

    @async_dispatch(aname)
    def name(self) -> str:
        return "sync"


def _resolve(value: Any) -> str:
    return asyncio.run(value) if asyncio.iscoroutine(value) else value


def _prefect_decision() -> bool | None:
    try:
        from prefect._internal.compatibility.async_dispatch import is_in_async_context
    except ImportError:  # Prefect dropped it: nothing to compare with
        return None
    return is_in_async_context()


def test_dispatch_outside_any_run():
    assert Thing().name() == "sync"
    assert in_async_context() is False
    assert _prefect_decision() in (None, False)

    async def in_a_loop() -> tuple[Any, bool, bool | None]:
        return Thing().name(), in_async_context(), _prefect_decision()

    value, ours, theirs = asyncio.run(in_a_loop())
    assert asyncio.iscoroutine(value)
    assert _resolve(value) == "async"
    assert ours is True and theirs in (None, True)


def test_dispatch_in_sync_and_async_flows_and_tasks():
    @task
    def sync_task() -> tuple[str, bool, bool | None]:
        return Thing().name(), in_async_context(), _prefect_decision()

    @task
    async def async_task() -> tuple[str, bool, bool | None]:
        return await Thing().name(), in_async_context(), _prefect_decision()

    @flow
    def sync_flow() -> list[tuple[str, bool, bool | None]]:
        return [(Thing().name(), in_async_context(), _prefect_decision()), sync_task()]

    @flow
    async def async_flow() -> list[tuple[str, bool, bool | None]]:
        here = (await Thing().name(), in_async_context(), _prefect_decision())
        return [here, await async_task()]

    for name, ours, theirs in sync_flow():
        assert name == "sync" and ours is False and theirs in (None, False)
    for name, ours, theirs in asyncio.run(async_flow()):
        assert name == "async" and ours is True and theirs in (None, True)


@pytest.mark.parametrize("force", [True, False])
def test_dispatch_can_be_forced(force):
    async def in_a_loop() -> Any:
        return Thing().name(_sync=force)

    value = asyncio.run(in_a_loop())
    assert asyncio.iscoroutine(value) is (not force)
    assert _resolve(value) == ("sync" if force else "async")
