"""The planner's pure functions (core/planner.py): ``plan_launch``, ``next_key``, ``review``.

Histories here are the generic shape every wrapper builds (Airflow generations, Prefect flow
runs, a Dagster lineage); the flow around them (requests, saved records) is in test_start.py.
"""

from __future__ import annotations

import pytest

from runbridge.core.errors import ConfigError
from runbridge.core.models import RunRef, RunStatus
from runbridge.core.planner import (
    CANCELLED,
    LAUNCHED,
    REATTACHED,
    STARTING,
    Execution,
    LaunchPolicy,
    LaunchRecord,
    Plan,
    next_key,
    plan_launch,
    review,
)
from runbridge.core.states import RunState

BASE = "task"
A = RunRef("rest", "a")
B = RunRef("rest", "b")


def rec(ref: RunRef | None, key: str = BASE, action: str = LAUNCHED) -> LaunchRecord:
    return LaunchRecord(key, ref, action)  # type: ignore[arg-type]


def ex(*records: LaunchRecord, reusable: bool = True, label: str = "run 1") -> Execution:
    return Execution(records, reusable=reusable, label=label)


# -- plan_launch -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("history", "reattach", "key"),
    [
        ([], None, BASE),
        ([ex()], None, BASE),
        ([ex(rec(A))], A, BASE),
        ([ex(rec(A, action=REATTACHED))], A, BASE),
        # the newest record of the newest execution that has one decides
        ([ex(rec(A), rec(B, f"{BASE}#1"))], B, f"{BASE}#1"),
        ([ex(), ex(), ex(rec(A))], A, BASE),
        ([ex(rec(B, f"{BASE}#1")), ex(rec(A))], B, f"{BASE}#1"),
        # runbridge cancelled it: a new run, with a key never used
        ([ex(rec(A), rec(A, action=CANCELLED))], None, f"{BASE}#1"),
        ([ex(rec(B, f"{BASE}#1", CANCELLED)), ex(rec(A))], None, f"{BASE}#2"),
        # a launch recorded as starting, never as launched: launch again with that key
        ([ex(rec(None, action=STARTING))], None, BASE),
        (
            [ex(rec(A), rec(A, action=CANCELLED), rec(None, f"{BASE}#1", STARTING))],
            None,
            f"{BASE}#1",
        ),
        # an execution that must not be reused hides everything older, keys still counted
        ([ex(reusable=False)], None, BASE),
        ([ex(), ex(rec(A), reusable=False)], None, f"{BASE}#1"),
        ([ex(), ex(reusable=False), ex(rec(A))], None, f"{BASE}#1"),
        ([ex(rec(A), reusable=False)], None, f"{BASE}#1"),
    ],
)
def test_plan_launch(history: list[Execution], reattach: RunRef | None, key: str) -> None:
    plan = plan_launch(history, BASE)
    assert (plan.reattach, plan.key) == (reattach, key)
    assert plan.why


def test_the_reason_names_where_the_run_came_from() -> None:
    assert plan_launch([ex(rec(A))], BASE).why == "launched by an earlier attempt"
    assert plan_launch([ex(), ex(rec(A), label="run 7")], BASE).why == "launched by run 7"
    assert plan_launch([], BASE).why == "first launch"
    cancelled = plan_launch([ex(), ex(rec(A, action=CANCELLED), label="run 7")], BASE)
    assert "runbridge cancelled rest:a" in cancelled.why and "run 7" in cancelled.why


@pytest.mark.parametrize("base", ["", None, 3])
def test_plan_launch_needs_a_key(base: object) -> None:
    with pytest.raises(ConfigError, match="key"):
        plan_launch([], base)  # type: ignore[arg-type]


# -- next_key ----------------------------------------------------------------------------------
def test_next_key_is_never_a_key_in_use() -> None:
    assert next_key(BASE, []) == BASE
    assert next_key(BASE, [ex(rec(A))]) == f"{BASE}#1"
    assert next_key(BASE, [ex(rec(A, f"{BASE}#1")), ex(rec(A))]) == f"{BASE}#2"
    # a gap is filled: any unused key will do, the lowest first
    assert next_key(BASE, [ex(rec(A), rec(B, f"{BASE}#2"))]) == f"{BASE}#1"
    # keys of executions that must not be reused still count
    assert next_key(BASE, [ex(), ex(rec(A), reusable=False)]) == f"{BASE}#1"
    assert next_key("other", [ex(rec(A))]) == "other"


# -- review ------------------------------------------------------------------------------------
def status(value: str) -> RunStatus:
    return RunStatus(A, RunState(value), value.lower())


REATTACH = Plan(A, BASE, "launched by an earlier attempt")
HISTORY = [ex(rec(A))]


@pytest.mark.parametrize(
    ("state", "relaunch_failed", "success", "relaunched"),
    [
        ("RUNNING", True, None, False),  # still going: follow it
        ("SUCCEEDED", True, None, False),
        ("FAILED", False, None, False),  # taken as it ended
        ("FAILED", True, None, True),
        ("CANCELLED", True, None, True),
        ("TIMED_OUT", True, None, True),
        ("PARTIAL", True, None, True),
        ("PARTIAL", True, {RunState.SUCCEEDED, RunState.PARTIAL}, False),  # the user's success
    ],
)
def test_review(state: str, relaunch_failed: bool, success: object, relaunched: bool) -> None:
    policy = LaunchPolicy(relaunch_failed=relaunch_failed)
    if success is not None:
        policy = LaunchPolicy(relaunch_failed=relaunch_failed, success=success)  # type: ignore[arg-type]
    plan = review(
        REATTACH, status(state), gone=False, policy=policy, history=HISTORY, base_key=BASE
    )
    if relaunched:
        assert plan.reattach is None and plan.key == f"{BASE}#1"
        assert "relaunch_failed" in plan.why and state in plan.why
    else:
        assert plan == REATTACH


def test_review_of_a_run_that_is_gone_or_unreadable() -> None:
    policy = LaunchPolicy(relaunch_failed=False)
    gone = review(REATTACH, None, gone=True, policy=policy, history=HISTORY, base_key=BASE)
    assert gone.reattach is None and gone.key == f"{BASE}#1" and "no longer exists" in gone.why
    # could not be read just then: re-attach (the wait will tell), never relaunch
    strict = LaunchPolicy(relaunch_failed=True)
    assert (
        review(REATTACH, None, gone=False, policy=strict, history=HISTORY, base_key=BASE)
        == REATTACH
    )
    # a plan that launches is left as it is
    launch = Plan(None, BASE, "first launch")
    assert review(launch, None, gone=True, policy=strict, history=[], base_key=BASE) == launch
