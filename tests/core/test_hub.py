"""The hub's decisions, pure, on a fake clock: due sets, pulling checks forward into a batch,
batch splitting, fallbacks, the request budget, pauses and deadlines (runbridge/core/hub.py)."""

from __future__ import annotations

import math

import pytest

from runbridge.core.errors import (
    ConfigError,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunNotFound,
)
from runbridge.core.hub import DEFAULT_PAUSE, Budget, HubOptions, Plan, split
from runbridge.core.models import RunRef, RunStatus
from runbridge.core.states import RunState


def ref(n: int) -> RunRef:
    return RunRef("rest", f"r-{n}")


def status(r: RunRef, state: RunState = RunState.RUNNING) -> RunStatus:
    return RunStatus(ref=r, state=state, raw_state=state.value.lower())


def err(cls: type, **kw: object) -> object:
    return cls("boom", platform="rest", status_code=kw.pop("code", 500), **kw)


def plan_with(n: int, max_batch: int = 10, coalesce: float = 1.0) -> Plan:
    plan = Plan(max_batch, coalesce)
    for key in range(n):
        plan.add(key, ref(key))
    return plan


# -- the budget ----------------------------------------------------------------------------------
def test_the_budget_lets_a_burst_through_then_spaces_requests_by_its_rate() -> None:
    budget = Budget(rate=2.0, burst=2)
    assert [budget.take(0.0) for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    # tokens come back at the rate: 2 s later the queue of two is paid off and one is free
    assert budget.take(2.0) == 0.0


def test_no_rate_means_no_delay_and_a_pause_is_kept_for_the_hubs_checks() -> None:
    budget = Budget(rate=None)
    assert [budget.take(0.0) for _ in range(100)] == [0.0] * 100
    assert budget.pause(10.0, 5.0) is True
    assert budget.paused(11.0) == pytest.approx(4.0)
    assert budget.take(11.0) == 0.0  # the pause holds checks (the hub), not every request
    assert budget.pause(11.0, 1.0) is False  # a shorter pause does not cut the longer one
    assert budget.paused_until == 15.0
    assert budget.paused(15.0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_rps": 0},
        {"max_rps": -1},
        {"max_rps": math.inf},
        {"max_rps": True},
        {"burst": 0},
        {"coalesce": -1},
        {"max_pause": math.nan},
    ],
)
def test_bad_hub_options_are_a_config_error_at_once(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HubOptions(**kwargs)  # type: ignore[arg-type]


def test_a_plan_needs_a_positive_batch_size() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        Plan(0)


# -- due sets ------------------------------------------------------------------------------------
def test_a_check_is_sent_when_due_and_a_sleeper_not_before() -> None:
    plan = plan_with(2)
    plan.sleep(0, now=0.0, seconds=5.0)
    plan.want_check(1, now=0.0)
    assert plan.wake(0.0) == []  # 0's check is 5 s away, beyond what may be pulled forward
    assert plan.batches(0.0) == [[1]]
    assert plan.batches(0.0) == []  # out in a batch: not sent twice
    assert plan.next_at() == 5.0
    assert plan.wake(4.99) == []
    assert plan.wake(5.0) == [0]


def test_sleepers_due_soon_are_pulled_into_a_batch_that_goes_anyway() -> None:
    plan = plan_with(4)
    plan.want_check(0, now=10.0)
    plan.sleep(1, now=9.0, seconds=1.5)  # due 10.5, may go from 9.75
    plan.sleep(2, now=9.0, seconds=1.9)  # due 10.9, may go from 9.95
    plan.sleep(3, now=9.0, seconds=3.0)  # due 12.0, may go from 11.0
    assert plan.wake(10.0) == [1, 2]  # soonest first; 3 is too far off
    for key in (1, 2):  # woken, each wait asks for its check
        plan.want_check(key, now=10.0)
    assert plan.batches(10.0) == [[0, 1, 2]]


def test_nothing_is_pulled_forward_when_no_check_goes_out() -> None:
    """Pulling forward fills batches that go anyway; it never makes a request of its own."""
    plan = plan_with(2)
    plan.sleep(0, now=0.0, seconds=1.5)  # may go from 0.75
    plan.sleep(1, now=0.0, seconds=1.6)
    assert plan.wake(1.0) == []
    assert plan.batches(1.0) == []


def test_pulled_forward_sleepers_only_fill_the_last_batch() -> None:
    plan = plan_with(5, max_batch=2)
    plan.want_check(0, now=10.0)
    for key in (1, 2, 3, 4):
        plan.sleep(key, now=9.0, seconds=1.0 + key / 10)  # all within their slack at 10.0
    assert plan.wake(10.0) == [1]  # one free place next to 0; the rest wait their turn


def test_a_short_sleep_is_pulled_forward_by_at_most_half_of_it() -> None:
    plan = plan_with(2)
    plan.want_check(0, now=10.0)
    plan.sleep(1, now=9.9, seconds=0.4)  # due 10.3, may go from 10.1 (half of 0.4 early)
    assert plan.wake(10.0) == []


def test_without_a_batch_form_nothing_is_pulled_forward() -> None:
    plan = plan_with(2, max_batch=1)
    plan.want_check(0, now=10.0)
    plan.sleep(1, now=9.0, seconds=1.1)
    assert plan.wake(10.0) == []
    assert plan.batches(10.0) == [[0]]


# -- held first checks: waits that start one after another share batches ---------------------
def test_a_held_check_goes_when_its_hold_ends_with_the_others_held_meanwhile() -> None:
    """Waits starting 0.1 s apart: each first check alone would be a request each. Held up to
    0.5 s, the first goes at 0.5 s and takes the ones held since (they may go at once)."""
    plan = plan_with(4)
    for key in range(4):
        plan.hold(key, now=key / 10, seconds=0.5)
    assert plan.batches(0.3) == []  # nothing asked for yet: held
    assert plan.wake(0.3) == []
    assert plan.next_at() == 0.5
    assert plan.wake(0.5) == [0, 1, 2, 3]  # 0's hold ended; 1-3 fill its batch
    for key in range(4):
        plan.want_check(key, now=0.5)
    assert plan.batches(0.5) == [[0, 1, 2, 3]]


def test_a_full_batch_of_held_checks_goes_at_once() -> None:
    plan = plan_with(5, max_batch=2)
    plan.hold(0, now=0.0, seconds=1.0)
    assert plan.wake(0.1) == []
    plan.hold(1, now=0.1, seconds=1.0)
    assert plan.wake(0.1) == [0, 1]  # two held: a full batch, no reason to wait
    plan.hold(2, now=0.2, seconds=1.0)
    assert plan.wake(0.2) == []  # alone again: held
    assert plan.next_at() == pytest.approx(1.2)


def test_held_checks_fill_a_batch_that_goes_anyway() -> None:
    plan = plan_with(3)
    plan.hold(0, now=0.0, seconds=1.0)
    plan.hold(1, now=0.2, seconds=1.0)
    plan.want_check(2, now=0.3)  # a check due now (not held): its batch takes the held ones
    assert plan.wake(0.3) == [0, 1]


def test_held_checks_of_other_groups_wait_for_their_own() -> None:
    plan = Plan(10)
    plan.add(0, ref(0), group="a")
    plan.add(1, ref(1), group="b")
    plan.hold(0, now=0.0, seconds=1.0)
    plan.want_check(1, now=0.1)
    assert plan.wake(0.1) == []  # 1's batch (group b) has no place for a check of group a
    assert plan.batches(0.1) == [[1]]


def test_nothing_is_held_without_a_batch_form_or_a_group() -> None:
    plan = plan_with(1, max_batch=1)
    plan.hold(0, now=0.0, seconds=1.0)
    assert plan.wake(0.0) == [0]  # due at once
    ungrouped = Plan(10)
    ungrouped.add(0, ref(0), group=None)
    ungrouped.hold(0, now=0.0, seconds=1.0)
    assert ungrouped.wake(0.0) == [0]


def test_a_held_wait_that_is_removed_or_moves_on_leaves_no_trace() -> None:
    plan = plan_with(3, max_batch=2)
    plan.hold(0, now=0.0, seconds=1.0)
    plan.remove(0)
    plan.hold(1, now=0.1, seconds=1.0)
    assert plan.wake(0.1) == []  # 0 is gone: 1 alone is no full batch
    plan.busy(1)  # e.g. its wait was cancelled into a join
    plan.hold(2, now=0.2, seconds=1.0)
    assert plan.wake(0.2) == []
    assert plan.wake(1.2) == [2]


def test_batches_are_cut_at_max_batch_oldest_due_first() -> None:
    plan = plan_with(5, max_batch=2)
    for key, at in zip(range(5), (3.0, 1.0, 2.0, 0.0, 4.0), strict=True):
        plan.want_check(key, now=at)
    assert plan.batches(4.0) == [[3, 1], [2, 0], [4]]


def test_a_busy_wait_is_not_scheduled() -> None:
    plan = plan_with(1)
    plan.want_check(0, now=0.0)
    plan.busy(0)  # e.g. in a join, or its single check under way
    assert plan.batches(1.0) == [] and plan.next_at() is None


# -- pauses and deadlines --------------------------------------------------------------------------
def test_a_paused_hub_sends_nothing_but_sleepers_still_wake_on_time() -> None:
    plan = plan_with(2)
    plan.want_check(0, now=0.0, deadline=100.0)
    plan.sleep(1, now=0.0, seconds=2.0)
    assert plan.batches(0.0, paused=True) == []
    # while paused until 30: the check is held to the pause's end; the sleeper wakes at 2
    assert plan.next_at(paused_until=30.0) == 2.0
    assert plan.wake(2.0, paused=True) == [1]
    plan.want_check(1, now=2.0, deadline=100.0)
    assert plan.next_at(paused_until=30.0) == 30.0
    assert plan.batches(30.0) == [[0, 1]]


def test_a_wait_held_by_a_pause_or_a_slow_batch_gets_its_deadline() -> None:
    plan = plan_with(3)
    plan.want_check(0, now=0.0, deadline=2.5)
    plan.want_check(1, now=0.0, deadline=9.0)
    assert plan.next_at(paused_until=50.0) == 2.5  # not the pause's end
    assert plan.expired(2.4) == []
    assert plan.expired(2.5) == [0]
    assert plan.batches(3.0) == [[1]]  # 0 is no longer asking
    assert plan.next_at() == 9.0  # 1 is out in a batch, with its deadline
    assert plan.expired(9.0) == [1]
    assert not plan.in_batch(1)


def test_a_sleeper_has_no_deadline_of_its_own() -> None:
    """A sleep ends on time (the wait itself then decides); only checks carry deadlines."""
    plan = plan_with(1)
    plan.sleep(0, now=0.0, seconds=1.0)
    assert plan.expired(1000.0) == []


# -- splitting a batch's answer --------------------------------------------------------------------
def test_each_wait_gets_its_runs_status_and_two_waits_on_one_run_both_do() -> None:
    a, b = ref(1), ref(2)
    members = [(10, a), (11, b), (12, a)]
    out = split(members, {a: status(a), b: status(b, RunState.SUCCEEDED)}, attempt=1)
    assert out.statuses == {10: status(a), 11: status(b, RunState.SUCCEEDED), 12: status(a)}
    assert out.singles == [] and out.retry_batch == [] and out.pause is None


def test_a_run_missing_or_answered_with_its_own_error_is_checked_alone() -> None:
    a, b, c = ref(1), ref(2), ref(3)
    gone = err(RunNotFound, code=404)
    out = split([(1, a), (2, b), (3, c)], {a: status(a), b: gone}, attempt=1)  # type: ignore[dict-item]
    assert out.statuses == {1: status(a)}
    assert out.singles == [2, 3]


def test_a_failed_batch_is_sent_again_once_then_its_runs_are_checked_alone() -> None:
    members = [(1, ref(1)), (2, ref(2))]
    failure = err(PlatformUnavailable, code=500)
    first = split(members, failure, attempt=1)  # type: ignore[arg-type]
    assert first.retry_batch == [1, 2] and first.singles == []
    second = split(members, failure, attempt=2)  # type: ignore[arg-type]
    assert second.retry_batch == [] and second.singles == [1, 2]
    unreadable = split(members, ProtocolError("garbled"), attempt=2)
    assert unreadable.singles == [1, 2]


@pytest.mark.parametrize(
    ("retry_after", "pause"),
    [(7.0, 7.0), (None, DEFAULT_PAUSE), (0.0, DEFAULT_PAUSE), (500.0, 120.0), (math.nan, 1.0)],
)
def test_a_429_pauses_the_hub_and_sends_the_batch_again_without_using_an_attempt(
    retry_after: float | None, pause: float
) -> None:
    members = [(1, ref(1))]
    limited = RateLimited("slow down", platform="rest", status_code=429, retry_after=retry_after)
    for attempt in (1, 2, 5):
        out = split(members, limited, attempt=attempt, max_pause=120.0)
        assert out.pause == pause
        assert out.retry_batch == [1] and out.singles == []


def test_runs_of_different_groups_never_share_a_batch() -> None:
    """A provider's batch_key (one Flyte project, one REST scope): a batch asks about one group;
    a run of no group (None: e.g. a queued W&B item) is always checked alone."""
    plan = Plan(3)
    groups = ["a", "b", "a", None, "a", "a", None]
    for key, group in enumerate(groups):
        plan.add(key, ref(key), group)
        plan.want_check(key, now=float(key))
    assert sorted(plan.batches(10.0)) == sorted([[0, 2, 4], [5], [1], [3], [6]])


def test_pulled_forward_sleepers_fill_their_own_groups_batch_only() -> None:
    plan = Plan(10)
    plan.add(0, ref(0), "a")
    plan.add(1, ref(1), "b")
    plan.add(2, ref(2), "a")
    plan.want_check(0, now=10.0)
    plan.sleep(1, now=9.0, seconds=1.2)  # would fit, but no batch of group b goes out
    plan.sleep(2, now=9.0, seconds=1.3)
    assert plan.wake(10.0) == [2]


def test_ten_thousand_waits_stay_batched_on_the_fake_clock() -> None:
    """A hub's worth of waits at random phases, each checked every 5 s: the plan sends every
    check on time in batches of about max_batch (pulling sleepers forward fills them), and a
    tick touches the waits it wakes, not all of them (the heaps; run time is printed)."""
    import random
    import time

    rng = random.Random(7)
    n, interval, batch = 10_000, 5.0, 50
    plan = Plan(batch)
    due: dict[int, float] = {}
    for key in range(n):
        plan.add(key, ref(key))
        seconds = rng.uniform(0.0, interval)
        plan.sleep(key, 0.0, seconds)
        due[key] = seconds
    now, sent, checks, late = 0.0, 0, 0, 0.0
    start = time.perf_counter()
    while now < 20.0:
        at = plan.next_at()
        assert at is not None
        now = max(now, at)
        for key in plan.wake(now):
            late = max(late, now - due[key])
            plan.want_check(key, now)
        for members in plan.batches(now):
            assert len(members) <= batch
            sent += 1
            checks += len(members)
            for key in members:
                plan.sleep(key, now, interval)
                due[key] = now + interval
    spent = time.perf_counter() - start
    print(f"\n{checks} checks in {sent} batches, {spent * 1000 / sent:.2f} ms of plan per batch")
    assert late == 0.0  # no check ever after its due time
    assert checks >= n * 4  # 20 s at 5 s: every wait checked on its schedule
    assert checks / sent >= 0.9 * batch  # batches are (almost) full
