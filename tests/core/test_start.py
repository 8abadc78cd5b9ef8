"""``FlowContext.start``: the one re-attach/launch policy, as a flow over canned answers.

Each case is a history (what the wrapper's record store holds), the platform's answers, and
what must happen: which requests, which records saved (and that ``starting`` comes before the
launch), which run the task ends up following."""

from __future__ import annotations

from typing import Any

import pytest

from runbridge.core.errors import AuthError, ConfigError
from runbridge.core.flows import FlowContext
from runbridge.core.models import RunRef
from runbridge.core.planner import (
    CANCELLED,
    LAUNCHED,
    REATTACHED,
    STARTING,
    Execution,
    LaunchPolicy,
    LaunchRecord,
)
from runbridge.core.schedule import RetryPolicy
from runbridge.core.states import RunState

from .helpers import FakeClock, FlowDriver, reply
from .test_flows import Jobs

BASE = "dag/task/run/-1"
OLD_REF = RunRef("jobs", "j-old")
NEW_REF = RunRef("jobs", "j-new")
RETRY = RetryPolicy(attempts=3, total=60.0, first=1.0, factor=2.0, cap=10.0, jitter=0.0)


def state(run_id: str, value: str) -> Any:
    return reply(200, {"id": run_id, "state": value})


def launched(run_id: str = "j-new") -> Any:
    return reply(200, {"id": run_id})


def nothing_found() -> Any:
    return reply(200, {"runs": []})


def start(history: list[Execution], *answers: Any, **policy: Any) -> tuple[Any, FlowDriver]:
    clock = FakeClock()
    ctx = FlowContext(Jobs(), RETRY, clock=clock, wall=clock.wall, rand=lambda: 0.5)
    driver = FlowDriver(clock, answers)
    result = driver.run(ctx.start({"job": "etl"}, BASE, history, LaunchPolicy(**policy)))
    return result, driver


def test_first_launch_saves_starting_before_the_launch_then_launched() -> None:
    started, driver = start([], nothing_found(), launched(), state("j-new", "queued"))
    assert driver.calls == [
        "save starting",  # before anything reaches the platform: a crash after it finds the run
        "GET /runs",  # find by key (the platform may have it from a crashed attempt)
        "POST /runs",
        "save launched",
        "GET /runs/j-new",
    ]
    assert driver.requests[1].headers == {"X-Launch-Key": BASE}
    assert [r.key for r in driver.saved] == [BASE, BASE]
    assert (started.ref, started.key, started.reattached) == (NEW_REF, BASE, False)
    assert started.status is not None and started.status.state is RunState.PENDING


def test_an_earlier_attempts_run_is_reattached_not_relaunched() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, driver = start(history, state("j-old", "running"))
    assert driver.calls == ["GET /runs/j-old", "save reattached"]
    assert (started.ref, started.reattached, started.key) == (OLD_REF, True, BASE)


def test_a_run_that_ended_is_taken_as_it_ended_by_default() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, _ = start(history, state("j-old", "failed"))
    assert started.ref == OLD_REF and started.status is not None
    assert started.status.state is RunState.FAILED


def test_relaunch_failed_replaces_a_failed_run_with_a_new_key() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, driver = start(
        history,
        state("j-old", "failed"),
        nothing_found(),
        launched(),
        state("j-new", "running"),
        relaunch_failed=True,
    )
    assert started.ref == NEW_REF and started.key == f"{BASE}#1"
    assert "relaunch_failed" in started.why
    assert driver.calls[:2] == ["GET /runs/j-old", "save starting"]


def test_relaunch_failed_keeps_a_run_that_succeeded() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, _ = start(history, state("j-old", "done"), relaunch_failed=True)
    assert started.ref == OLD_REF


def test_a_cancelled_record_means_a_new_run() -> None:
    history = [
        Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED), LaunchRecord(BASE, OLD_REF, CANCELLED)])
    ]
    started, driver = start(history, nothing_found(), launched(), state("j-new", "queued"))
    assert started.key == f"{BASE}#1" and started.ref == NEW_REF
    assert "GET /runs/j-old" not in driver.calls  # no need to look at the cancelled run


def test_a_run_the_platform_forgot_is_replaced() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, _ = start(
        history,
        reply(404, {"detail": "no such run"}),
        nothing_found(),
        launched(),
        state("j-new", "queued"),
    )
    assert started.ref == NEW_REF and started.key == f"{BASE}#1"


def test_a_starting_record_relaunches_with_the_same_key_and_finds_the_run() -> None:
    # the earlier attempt crashed between the launch and recording its run
    history = [Execution([LaunchRecord(BASE, None, STARTING)])]
    started, driver = start(
        history, reply(200, {"runs": [{"id": "j-old"}]}), state("j-old", "running")
    )
    assert started.ref == OLD_REF and started.reattached and started.key == BASE
    assert "POST /runs" not in driver.calls


def test_a_transient_error_on_the_first_status_is_tolerated() -> None:
    # one policy for all wrappers: the launch happened; the wait will tolerate the platform
    started, _ = start([], nothing_found(), launched(), reply(503), reply(503), reply(503))
    assert started.ref == NEW_REF and started.status is None


def test_a_transient_error_reading_the_reattach_candidate_reattaches() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    started, _ = start(history, reply(503), reply(503), reply(503))
    assert started.ref == OLD_REF and started.reattached and started.status is None


def test_an_auth_error_is_not_tolerated() -> None:
    history = [Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)])]
    with pytest.raises(AuthError):
        start(history, reply(401, {"detail": "bad token"}))


def test_a_cleared_execution_is_never_reused_and_its_keys_are_not_reused() -> None:
    history = [
        Execution([]),
        Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)], reusable=False, label="generation 1"),
    ]
    started, _ = start(history, nothing_found(), launched(), state("j-new", "queued"))
    assert started.ref == NEW_REF and started.key == f"{BASE}#1"


def test_an_ancestor_execution_is_reattached_when_reusable() -> None:
    # a Dagster re-execution from failure: the parent run's step launched the run
    history = [
        Execution([]),
        Execution([LaunchRecord(BASE, OLD_REF, LAUNCHED)], label="Dagster run p-1"),
    ]
    started, _ = start(history, state("j-old", "running"))
    assert started.ref == OLD_REF and "Dagster run p-1" in started.why


def test_records_round_trip_and_reject_nonsense() -> None:
    record = LaunchRecord(BASE, OLD_REF, REATTACHED)
    assert LaunchRecord.from_dict(record.to_dict()) == record
    for bad in ({}, {"key": ""}, {"key": "k", "action": "exploded", "ref": "jobs:j"}, {"key": "k"}):
        with pytest.raises(ConfigError):
            LaunchRecord.from_dict(bad)
    with pytest.raises(ConfigError):
        LaunchRecord.from_dict(["not", "a", "mapping"])  # type: ignore[arg-type]
