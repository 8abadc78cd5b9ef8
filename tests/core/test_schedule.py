"""PollSchedule, RetryPolicy and parse_retry_after: pure tables of inputs -> delays. Nothing sleeps."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from runbridge.core.errors import ConfigError
from runbridge.core.schedule import PollSchedule, RetryPolicy, parse_retry_after


def const(value: float):
    return lambda: value


MID = const(0.5)  # rand() == 0.5 is "no jitter": delay * (1 - j + 2 * j * 0.5) == delay


# -- PollSchedule.delay ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("schedule", "n", "expected"),
    [
        # first check waits `first`
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 0, 1.0),
        # geometric growth
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 1, 2.0),
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 3, 8.0),
        (PollSchedule(first=0.5, factor=1.5, cap=30.0, jitter=0.0), 2, 1.125),
        # reaches the cap and stays there
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 5, 30.0),
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 64, 30.0),
        (PollSchedule(first=1.0, factor=2.0, cap=30.0, jitter=0.0), 10**6, 30.0),
        # factor 1: constant
        (PollSchedule(first=3.0, factor=1.0, cap=30.0, jitter=0.0), 7, 3.0),
        # the defaults are visible: 1 s, x1.5, 10 s cap (30 s before round 3)
        (PollSchedule(jitter=0.0), 0, 1.0),
        (PollSchedule(jitter=0.0), 1, 1.5),
        (PollSchedule(jitter=0.0), 5, 7.59375),
        (PollSchedule(jitter=0.0), 6, 10.0),
        (PollSchedule(jitter=0.0), 100, 10.0),
    ],
)
def test_poll_delay_without_jitter(schedule: PollSchedule, n: int, expected: float) -> None:
    assert schedule.delay(n, rand=const(0.0)) == pytest.approx(expected)
    assert schedule.delay(n, rand=const(0.999)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("rand", "factor_of_base"),
    [
        (0.0, 0.8),  # lowest: base * (1 - jitter)
        (0.5, 1.0),  # middle: base
        (0.999, 1.0 + 0.2 * 0.998),  # just under base * (1 + jitter)
    ],
)
@pytest.mark.parametrize(("n", "base"), [(0, 2.0), (2, 8.0), (10, 20.0)])
def test_poll_delay_jitter_bounds(rand: float, factor_of_base: float, n: int, base: float) -> None:
    schedule = PollSchedule(first=2.0, factor=2.0, cap=20.0, jitter=0.2)
    delay = schedule.delay(n, rand=const(rand))
    assert delay == pytest.approx(base * factor_of_base)
    assert base * 0.8 <= delay < base * 1.2


def test_poll_delay_uses_random_by_default_and_stays_in_bounds() -> None:
    schedule = PollSchedule(first=10.0, factor=1.0, cap=10.0, jitter=0.5)
    delays = {schedule.delay(0) for _ in range(200)}
    assert all(5.0 <= d < 15.0 for d in delays)
    assert len(delays) > 1, "jitter should spread delays"


def test_poll_fixed() -> None:
    schedule = PollSchedule.fixed(0.25)
    assert schedule == PollSchedule(first=0.25, factor=1.0, cap=0.25, jitter=0.0)
    assert [schedule.delay(n, rand=const(0.999)) for n in range(5)] == [0.25] * 5


def test_poll_accepts_timedelta() -> None:
    schedule = PollSchedule(
        first=timedelta(milliseconds=500),  # type: ignore[arg-type]
        cap=timedelta(minutes=1),  # type: ignore[arg-type]
    )
    assert (schedule.first, schedule.cap) == (0.5, 60.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"first": -1.0}, "poll first"),
        ({"first": "1"}, "poll first"),
        ({"first": True}, "poll first"),
        ({"cap": -0.1}, "poll cap"),
        ({"first": 5.0, "cap": 1.0}, "poll cap"),
        ({"factor": 0.9}, "poll factor"),
        ({"jitter": -0.1}, "poll jitter"),
        ({"jitter": 1.0}, "poll jitter"),
        # NaN and infinities are no durations, anywhere (the one rule: schedule.seconds)
        ({"first": float("nan")}, "poll first"),
        ({"cap": float("inf")}, "poll cap"),
        ({"cap": float("nan")}, "poll cap"),
        ({"factor": float("inf")}, "poll factor"),
        ({"factor": float("nan")}, "poll factor"),
        ({"jitter": float("nan")}, "poll jitter"),
    ],
)
def test_poll_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PollSchedule(**kwargs)


def test_poll_is_immutable() -> None:
    schedule = PollSchedule()
    with pytest.raises(AttributeError):
        schedule.first = 2.0  # type: ignore[misc]


# -- RetryPolicy.next_delay ----------------------------------------------------------------------
NO_JITTER = RetryPolicy(attempts=5, total=60.0, first=0.5, cap=4.0, factor=2.0, jitter=0.0)


@pytest.mark.parametrize(
    ("policy", "attempt", "elapsed", "retry_after", "expected"),
    [
        # backoff: first * factor ** (attempt - 1), capped
        (NO_JITTER, 1, 0.0, None, 0.5),
        (NO_JITTER, 2, 0.0, None, 1.0),
        (NO_JITTER, 3, 0.0, None, 2.0),
        (NO_JITTER, 4, 0.0, None, 4.0),
        (RetryPolicy(attempts=10, cap=4.0, jitter=0.0), 9, 0.0, None, 4.0),
        # attempts exhausted (attempts counts the first try)
        (NO_JITTER, 5, 0.0, None, None),
        (NO_JITTER, 6, 0.0, None, None),
        (RetryPolicy.none(), 1, 0.0, None, None),
        # total budget: elapsed + delay must fit
        (NO_JITTER, 1, 59.5, None, 0.5),
        (NO_JITTER, 1, 59.6, None, None),
        (NO_JITTER, 3, 58.5, None, None),
        # Retry-After replaces the backoff...
        (NO_JITTER, 1, 0.0, 7.0, 7.0),
        (NO_JITTER, 4, 0.0, 0.0, 0.0),
        (NO_JITTER, 1, 0.0, -3.0, 0.0),
        # ...is capped by max_retry_after...
        (RetryPolicy(max_retry_after=5.0, jitter=0.0), 1, 0.0, 30.0, 5.0),
        (RetryPolicy(total=1000.0, jitter=0.0), 1, 0.0, 500.0, 120.0),
        # ...but still counts against the budget and the attempts
        (NO_JITTER, 1, 50.0, 20.0, None),
        (NO_JITTER, 5, 0.0, 1.0, None),
    ],
)
def test_retry_next_delay(
    policy: RetryPolicy,
    attempt: int,
    elapsed: float,
    retry_after: float | None,
    expected: float | None,
) -> None:
    delay = policy.next_delay(attempt, elapsed, retry_after, rand=const(0.0))
    assert delay == (pytest.approx(expected) if expected is not None else None)


@pytest.mark.parametrize(
    ("rand", "expected"), [(0.0, 1.5), (0.5, 2.0), (0.999, 2.0 * (1 + 0.25 * 0.998))]
)
def test_retry_jitter_bounds(rand: float, expected: float) -> None:
    policy = RetryPolicy(first=1.0, factor=2.0, cap=10.0, jitter=0.25)
    delay = policy.next_delay(2, 0.0, rand=const(rand))
    assert delay == pytest.approx(expected)
    assert delay is not None and 1.5 <= delay < 2.5


def test_retry_after_is_not_jittered() -> None:
    policy = RetryPolicy(jitter=0.25)
    assert policy.next_delay(1, 0.0, 3.0, rand=const(0.0)) == 3.0
    assert policy.next_delay(1, 0.0, 3.0, rand=const(0.999)) == 3.0


def test_retry_defaults_are_visible() -> None:
    policy = RetryPolicy()
    assert (policy.attempts, policy.total, policy.first, policy.cap) == (5, 60.0, 0.5, 10.0)
    assert policy.max_retry_after == 120.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "retry attempts"),
        ({"attempts": 2.5}, "retry attempts"),
        ({"total": -1}, "retry total"),
        ({"first": -0.5}, "retry first"),
        ({"cap": "10"}, "retry cap"),
        ({"max_retry_after": -1}, "retry max_retry_after"),
        pytest.param({"jitter": 1.5}, "retry jitter"),
        pytest.param({"jitter": -0.1}, "retry jitter"),
        pytest.param({"factor": 0.5}, "retry factor"),
    ],
)
def test_retry_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RetryPolicy(**kwargs)


# -- parse_retry_after ---------------------------------------------------------------------------
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("1.5", 1.5),
        # HTTP dates, relative to `now`
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Wed, 01 May 2024 12:01:00 GMT", 60.0),
        ("Wed, 01 May 2024 14:00:00 +0200", 0.0),  # same instant as now
        ("Wed, 01 May 2024 12:00:30 -0000", 30.0),  # "-0000" gives a naive datetime: UTC
        # a date in the past: no wait
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
        # garbage
        ("soon", None),
        ("12 parsecs", None),
        ("Wed, 99 Foo 2024 12:01:00 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_never_reads_a_clock() -> None:
    # without `now` a date cannot be resolved (no wall clock here); seconds still can
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", None) is None
    assert parse_retry_after("7", None) == 7.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"total": float("inf")}, "retry total"),
        ({"total": float("nan")}, "retry total"),
        ({"first": float("-inf")}, "retry first"),
        ({"cap": float("nan")}, "retry cap"),
        ({"max_retry_after": float("inf")}, "retry max_retry_after"),
        ({"factor": float("inf")}, "retry factor"),
        ({"attempts": True}, "retry attempts"),
    ],
)
def test_retry_rejects_nan_infinities_and_bools(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        RetryPolicy(**kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "5", True, [1], -1.0])
def test_one_seconds_rule_for_core_and_config(value: object) -> None:
    """``config.seconds`` is ``schedule.seconds``: one rule, one message naming the field."""
    from runbridge.core import config, schedule

    assert config.seconds is schedule.seconds
    with pytest.raises(ConfigError, match=r"^wait_timeout must be a (non-negative )?number"):
        schedule.seconds(value, "wait_timeout")


def test_seconds_reads_numbers_and_timedeltas() -> None:
    from runbridge.core.schedule import seconds

    assert seconds(None, "x") is None
    assert seconds(3, "x") == 3.0 and isinstance(seconds(3, "x"), float)
    assert seconds(timedelta(minutes=2), "x") == 120.0
    assert seconds(0, "x") == 0.0
    with pytest.raises(ConfigError, match="x must be a positive number"):
        seconds(0, "x", positive=True)


def test_the_default_cap_detects_an_ended_run_within_a_cap() -> None:
    """What the Round 3 default promises (docs/design-notes.md): once a wait is at its cap, a
    run that ends is seen within one cap (plus jitter), on average about half a cap later; the
    schedule reaches the cap after seven checks (about 25 s)."""
    from runbridge.core.schedule import DEFAULT_POLL_CAP

    schedule = PollSchedule()
    assert DEFAULT_POLL_CAP == schedule.cap == 10.0
    rng = random.Random(7)
    delays = []
    for _ in range(2000):
        ends = rng.uniform(60.0, 600.0)
        now, n = 0.0, 0
        while now < ends:
            now += schedule.delay(n, rng.random)
            n += 1
        delays.append(now - ends)
    assert max(delays) <= schedule.cap * (1 + schedule.jitter)
    assert 4.0 <= sum(delays) / len(delays) <= 6.0
    reached = sum(schedule.delay(n, const(0.5)) for n in range(6))
    assert schedule.delay(6, const(0.5)) == schedule.cap and 20.0 <= reached <= 26.0
