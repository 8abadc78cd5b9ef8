"""A new execution supersedes the old one (core/planner.py): a run of an execution the task
started afresh from (a cleared Airflow task), still going, is cancelled before the new launch
when the caller cancels on kill; a retry of the same execution never cancels, it re-attaches.

The pure decision (``plan_launch``'s ``supersede``) and the flow around it (``start`` on the
fake clock: what it reads, cancels, records and says) are both here.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from runbridge.core.errors import ConfigError
from runbridge.core.flows import Event, FlowContext, log_event
from runbridge.core.models import RunRef
from runbridge.core.planner import (
    CANCELLED,
    LAUNCHED,
    REATTACHED,
    STARTING,
    Execution,
    LaunchPolicy,
    LaunchRecord,
    plan_launch,
)
from runbridge.core.schedule import RetryPolicy

from .helpers import FakeClock, FlowDriver, reply
from .test_flows import Jobs

BASE = "dag/task/run/-1"
OLD = RunRef("jobs", "j-old")
NEW = RunRef("jobs", "j-new")
RETRY = RetryPolicy(attempts=3, total=60.0, first=1.0, factor=2.0, cap=10.0, jitter=0.0)


def old_generation(*records: LaunchRecord, cancel: bool = True) -> Execution:
    return Execution(records, reusable=False, label="generation 1", cancel_superseded=cancel)


def start(
    history: list[Execution], *answers: Any, cancel: bool = True
) -> tuple[Any, FlowDriver, list[Event]]:
    clock = FakeClock()
    events: list[Event] = []
    ctx = FlowContext(
        Jobs(cancel=cancel),
        RETRY,
        clock=clock,
        wall=clock.wall,
        rand=lambda: 0.5,
        hooks=[events.append, log_event],
    )
    driver = FlowDriver(clock, answers)
    result = driver.run(ctx.start({"job": "etl"}, BASE, history, LaunchPolicy()))
    return result, driver, events


def state(run_id: str, value: str) -> Any:
    return reply(200, {"id": run_id, "state": value})


# -- the decision --------------------------------------------------------------------------------
@pytest.mark.parametrize("action", [LAUNCHED, REATTACHED])
def test_a_new_execution_names_the_old_run_still_recorded_as_ours(action: str) -> None:
    old = LaunchRecord(BASE, OLD, action)  # type: ignore[arg-type]
    plan = plan_launch([Execution([]), old_generation(old)], BASE)
    assert plan.reattach is None and plan.key == f"{BASE}#1"
    assert plan.supersede == old


@pytest.mark.parametrize(
    "history",
    [
        # the caller does not cancel on kill
        [Execution([]), old_generation(LaunchRecord(BASE, OLD), cancel=False)],
        # runbridge cancelled it already (on_kill, run_timeout)
        [
            Execution([]),
            old_generation(LaunchRecord(BASE, OLD), LaunchRecord(BASE, OLD, CANCELLED)),
        ],
        # the old execution only got as far as starting a launch: no run to name
        [Execution([]), old_generation(LaunchRecord(BASE, None, STARTING))],
        # nothing recorded in it
        [Execution([]), old_generation()],
        # the first launch ever
        [],
    ],
)
def test_nothing_to_supersede(history: list[Execution]) -> None:
    assert plan_launch(history, BASE).supersede is None


def test_a_retry_of_the_same_execution_reattaches_and_never_supersedes() -> None:
    """Worker SIGKILL, then the retry: the same execution, one launch."""
    history = [Execution([LaunchRecord(BASE, OLD)])]
    plan = plan_launch(history, BASE)
    assert plan.reattach == OLD and plan.supersede is None


def test_the_new_executions_own_record_of_the_cancel_is_final() -> None:
    """Once the new execution recorded the cancel (then crashed before its launch), its retry
    launches with a new key and does not cancel again."""
    history = [
        Execution([LaunchRecord(BASE, OLD, CANCELLED)]),
        old_generation(LaunchRecord(BASE, OLD)),
    ]
    plan = plan_launch(history, BASE)
    assert plan.reattach is None and plan.supersede is None and plan.key == f"{BASE}#1"


def test_only_the_newest_old_execution_is_looked_at() -> None:
    b = RunRef("jobs", "b")
    history = [
        Execution([]),
        old_generation(LaunchRecord(f"{BASE}#1", b)),
        old_generation(LaunchRecord(BASE, OLD)),
    ]
    plan = plan_launch(history, BASE)
    assert plan.supersede == LaunchRecord(f"{BASE}#1", b) and plan.key == f"{BASE}#2"


def test_a_reusable_execution_cannot_ask_for_its_runs_to_be_cancelled() -> None:
    with pytest.raises(ConfigError, match="reusable=False"):
        Execution([LaunchRecord(BASE, OLD)], cancel_superseded=True)


# -- the flow --------------------------------------------------------------------------------
def test_start_cancels_the_old_run_still_going_then_launches(
    caplog: pytest.LogCaptureFixture,
) -> None:
    history = [Execution([]), old_generation(LaunchRecord(BASE, OLD))]
    with caplog.at_level(logging.WARNING, logger="runbridge"):
        started, driver, events = start(
            history,
            state("j-old", "running"),
            reply(200, {}),  # the cancel
            reply(200, {"runs": []}),  # find by the new key
            reply(200, {"id": "j-new"}),
            state("j-new", "queued"),
        )
    assert driver.calls == [
        "GET /runs/j-old",
        "POST /runs/j-old/cancel",
        "save cancelled",
        "save starting",
        "GET /runs",
        "POST /runs",
        "save launched",
        "GET /runs/j-new",
    ]
    assert driver.saved[0] == LaunchRecord(BASE, OLD, CANCELLED)
    assert started.ref == NEW and started.key == f"{BASE}#1"
    (superseded,) = [e for e in events if e.kind == "superseded"]
    assert superseded.ref == OLD and "generation 1" in (superseded.message or "")
    assert any(
        "cancelling run jobs:j-old" in r.getMessage() and "generation 1" in r.getMessage()
        for r in caplog.records
    )


def test_an_old_run_that_ended_is_left_alone() -> None:
    history = [Execution([]), old_generation(LaunchRecord(BASE, OLD))]
    started, driver, events = start(
        history,
        state("j-old", "done"),
        reply(200, {"runs": []}),
        reply(200, {"id": "j-new"}),
        state("j-new", "queued"),
    )
    assert "POST /runs/j-old/cancel" not in driver.calls
    assert [r.action for r in driver.saved] == [STARTING, LAUNCHED]
    assert not [e for e in events if e.kind == "superseded"] and started.ref == NEW


def test_an_old_run_the_platform_forgot_is_left_alone() -> None:
    history = [Execution([]), old_generation(LaunchRecord(BASE, OLD))]
    started, driver, _ = start(
        history,
        reply(404, {"detail": "no such run"}),
        reply(200, {"runs": []}),
        reply(200, {"id": "j-new"}),
        state("j-new", "queued"),
    )
    assert "POST /runs/j-old/cancel" not in driver.calls and started.ref == NEW


def test_a_failed_cancel_is_reported_and_the_launch_goes_on() -> None:
    history = [Execution([]), old_generation(LaunchRecord(BASE, OLD))]
    started, driver, events = start(
        history,
        state("j-old", "running"),
        reply(403, {"detail": "not yours"}),
        reply(200, {"runs": []}),
        reply(200, {"id": "j-new"}),
        state("j-new", "queued"),
    )
    assert started.ref == NEW
    assert [r.action for r in driver.saved] == [STARTING, LAUNCHED]  # no "cancelled" record
    assert [e.kind for e in events if e.kind in ("superseded", "cancel_failed")] == [
        "superseded",
        "cancel_failed",
    ]


def test_a_platform_that_cannot_cancel_says_so_and_launches() -> None:
    history = [Execution([]), old_generation(LaunchRecord(BASE, OLD))]
    started, driver, events = start(
        history,
        state("j-old", "running"),
        reply(200, {"runs": []}),
        reply(200, {"id": "j-new"}),
        state("j-new", "queued"),
        cancel=False,
    )
    assert started.ref == NEW and "POST /runs/j-old/cancel" not in driver.calls
    (failed,) = [e for e in events if e.kind == "cancel_failed"]
    assert "cannot be cancelled" in (failed.error or "")


def test_a_retry_reattaches_without_reading_anything_else() -> None:
    history = [Execution([LaunchRecord(BASE, OLD)]), old_generation(LaunchRecord(BASE, NEW))]
    started, driver, events = start(history, state("j-old", "running"))
    assert driver.calls == ["GET /runs/j-old", "save reattached"]
    assert started.reattached and not [e for e in events if e.kind == "superseded"]
