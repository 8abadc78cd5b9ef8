"""The ``url_known`` event: wrappers learn a run's page URL when it becomes known or changes.

Flows are driven with canned answers on a fake clock (tests/core/helpers.py); the W&B case
runs a real client against the W&B emulator, where a Launch queue item only gets a run (and
so a URL) once an agent starts it.
"""

from __future__ import annotations

from typing import Any

from runbridge.core.flows import Event, FlowContext, WaitOptions
from runbridge.core.models import RunRef, RunStatus
from runbridge.core.planner import LAUNCHED, Execution, LaunchPolicy, LaunchRecord
from runbridge.core.schedule import PollSchedule, RetryPolicy

from .helpers import FakeClock, FlowDriver, reply
from .test_flows import Jobs

RETRY = RetryPolicy(attempts=3, total=60.0, first=1.0, factor=2.0, cap=10.0, jitter=0.0)
POLL = PollSchedule(first=1.0, factor=2.0, cap=5.0, jitter=0.0)
REF = RunRef("jobs", "j-1")


class LinkedJobs(Jobs):
    """Jobs whose status answer may carry the run's page (``"url"``)."""

    def parse(self, ref: RunRef, data: dict[str, Any]) -> RunStatus:
        status = super().parse(ref, data)
        url = data.get("url")
        return RunStatus(status.ref, status.state, status.raw_state, url=url)


def answer(state: str, url: str | None = None, run_id: str = "j-1") -> Any:
    body: dict[str, Any] = {"id": run_id, "state": state}
    if url is not None:
        body["url"] = url
    return reply(200, body)


def setup() -> tuple[FlowContext, FakeClock, list[Event]]:
    clock = FakeClock()
    events: list[Event] = []
    ctx = FlowContext(
        LinkedJobs(),
        RETRY,
        clock=clock,
        wall=clock.wall,
        rand=lambda: 0.5,
        hooks=[events.append],
    )
    return ctx, clock, events


def urls(events: list[Event]) -> list[tuple[RunRef | None, str | None]]:
    return [(e.ref, e.status.url if e.status else None) for e in events if e.kind == "url_known"]


def test_a_wait_announces_the_url_once_when_it_first_appears() -> None:
    ctx, clock, events = setup()
    driver = FlowDriver(
        clock,
        [
            answer("queued"),
            answer("running", "https://app.example/r/1"),
            answer("running", "https://app.example/r/1"),
            answer("done", "https://app.example/r/1"),
        ],
    )
    status = driver.run(ctx.wait(REF, WaitOptions(poll=POLL)))
    assert status.url == "https://app.example/r/1"
    assert urls(events) == [(REF, "https://app.example/r/1")]
    # it comes right after the status that carried it, before the next sleep
    kinds = [e.kind for e in events]
    first = kinds.index("url_known")
    assert kinds[first - 2 : first + 2] == ["status", "state_changed", "url_known", "sleep"]


def test_a_changed_url_is_announced_again_and_a_lost_one_is_not() -> None:
    ctx, clock, events = setup()
    driver = FlowDriver(
        clock,
        [
            answer("queued", "https://app.example/queue/7"),
            answer("running", "https://app.example/r/1"),
            answer("running"),  # an answer without the URL does not un-know it
            answer("running", "https://app.example/r/1"),
            answer("done", "https://app.example/r/1"),
        ],
    )
    driver.run(ctx.wait(REF, WaitOptions(poll=POLL)))
    assert urls(events) == [
        (REF, "https://app.example/queue/7"),
        (REF, "https://app.example/r/1"),
    ]


def test_no_url_no_event() -> None:
    ctx, clock, events = setup()
    driver = FlowDriver(clock, [answer("queued"), answer("done")])
    driver.run(ctx.wait(REF, WaitOptions(poll=POLL)))
    assert urls(events) == []


def test_start_announces_the_launched_runs_url() -> None:
    ctx, clock, events = setup()
    driver = FlowDriver(
        clock,
        [
            reply(200, {"runs": []}),  # find: no earlier launch with this key
            reply(200, {"id": "j-1"}),  # launch
            answer("queued", "https://app.example/r/1"),  # the first status
        ],
    )
    started = driver.run(ctx.start({"job": "etl"}, "dag/task/run", [], LaunchPolicy()))
    assert started.ref == REF
    assert urls(events) == [(REF, "https://app.example/r/1")]


def test_start_announces_the_reattached_runs_url() -> None:
    ctx, clock, events = setup()
    history = [Execution([LaunchRecord("dag/task/run", REF, LAUNCHED)])]
    driver = FlowDriver(clock, [answer("running", "https://app.example/r/1")])
    started = driver.run(ctx.start({"job": "etl"}, "dag/task/run", history, LaunchPolicy()))
    assert started.reattached and started.ref == REF
    assert urls(events) == [(REF, "https://app.example/r/1")]


def test_start_without_a_url_announces_nothing() -> None:
    ctx, clock, events = setup()
    driver = FlowDriver(
        clock, [reply(200, {"runs": []}), reply(200, {"id": "j-1"}), answer("queued")]
    )
    driver.run(ctx.start({"job": "etl"}, "dag/task/run", [], LaunchPolicy()))
    assert urls(events) == []
