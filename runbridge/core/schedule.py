"""Pure timing decisions: when to poll next, when to retry, how to read Retry-After.

Nothing here sleeps or reads a clock; callers pass ``now``/``elapsed`` and a random
source, so every decision is a table-testable function (see tests/core/test_schedule.py).
"""

from __future__ import annotations

import dataclasses
import math
import random as _random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_POLL_CAP",
    "DEFAULT_POLL_FACTOR",
    "DEFAULT_POLL_FIRST",
    "PollSchedule",
    "RetryPolicy",
    "parse_retry_after",
    "seconds",
]

Random = Callable[[], float]
"""Returns a float in [0, 1)."""

DEFAULT_POLL_FIRST = 1.0
"""Seconds before the second check of a wait (the first is made at once)."""
DEFAULT_POLL_FACTOR = 1.5
"""How much each pause grows over the one before."""
DEFAULT_POLL_CAP = 10.0
"""The longest pause between two checks of a wait. A run that ends is seen on average half a
cap later (5 s; 15 s with the 30 s cap of round 2), at 360 checks an hour per long wait; the
hub's batched checks make that cheap. The numbers: docs/design-notes.md, "Round 3"."""


def seconds(value: Any, name: str, *, positive: bool = False) -> float | None:
    """A duration (seconds, int or float, or a ``timedelta``) as float seconds, or None: the one
    rule for every duration runbridge takes (``config.seconds`` is this function).

    Raises ConfigError naming ``name`` for anything else: bools, strings, NaN, infinities,
    negatives (and zero when ``positive``)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        kind = "positive" if positive else "non-negative"
        raise ConfigError(f"{name} must be a {kind} number of seconds, got {value!r}")
    return float(value)


def _seconds(value: float | timedelta, name: str) -> float:
    """A required, non-negative duration (a field of the policies below)."""
    if value is None:
        raise ConfigError(f"{name} must be a number of seconds, got None")
    result = seconds(value, name)
    assert result is not None
    return result


def _number(value: object) -> bool:
    """A finite real number (not a bool, NaN or an infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _jittered(delay: float, jitter: float, rand: Random) -> float:
    """Spread ``delay`` uniformly over ±jitter (a fraction), so waits started together drift apart."""
    if jitter <= 0:
        return delay
    return delay * (1 - jitter + 2 * jitter * rand())


@dataclasses.dataclass(frozen=True)
class PollSchedule:
    """Adaptive polling: fast at first, backing off geometrically to a cap.

    The n-th check (n = 0, 1, ...) after the first waits ``min(cap, first * factor**n)``,
    spread by ±``jitter``. Runs that finish quickly are seen quickly; long ones cost few checks.
    """

    first: float = DEFAULT_POLL_FIRST
    factor: float = DEFAULT_POLL_FACTOR
    cap: float = DEFAULT_POLL_CAP
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("first", "cap"):
            object.__setattr__(self, name, _seconds(getattr(self, name), f"poll {name}"))
        if not _number(self.factor) or self.factor < 1:
            raise ConfigError(f"poll factor must be a number >= 1, got {self.factor!r}")
        if not _number(self.jitter) or not 0 <= self.jitter < 1:
            raise ConfigError(f"poll jitter must be in [0, 1), got {self.jitter!r}")
        if self.cap < self.first:
            raise ConfigError(f"poll cap ({self.cap}) must be >= poll first ({self.first})")

    def delay(self, n: int, rand: Random = _random.random) -> float:
        """Seconds to wait before check ``n + 1``."""
        try:
            base = self.first * self.factor ** min(n, 64)
        except OverflowError:
            base = self.cap
        return _jittered(min(self.cap, base), self.jitter, rand)

    @classmethod
    def fixed(cls, interval: float) -> PollSchedule:
        return cls(first=interval, factor=1.0, cap=interval, jitter=0.0)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How one request is retried after a retryable failure (connection error, 408, 429, 5xx).

    Bounded both by ``attempts`` (including the first) and by ``total`` seconds. A
    ``Retry-After`` from the platform replaces the computed delay, capped at ``max_retry_after``.
    """

    attempts: int = 5
    total: float = 60.0
    first: float = 0.5
    cap: float = 10.0
    factor: float = 2.0
    jitter: float = 0.25
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or self.attempts < 1
        ):
            raise ConfigError(f"retry attempts must be an integer >= 1, got {self.attempts!r}")
        if not _number(self.factor) or self.factor < 1:
            raise ConfigError(f"retry factor must be a number >= 1, got {self.factor!r}")
        if not _number(self.jitter) or not 0 <= self.jitter < 1:
            raise ConfigError(f"retry jitter must be in [0, 1), got {self.jitter!r}")
        for name in ("total", "first", "cap", "max_retry_after"):
            object.__setattr__(self, name, _seconds(getattr(self, name), f"retry {name}"))

    def next_delay(
        self,
        attempt: int,
        elapsed: float,
        retry_after: float | None = None,
        rand: Random = _random.random,
    ) -> float | None:
        """Delay before retrying after failed attempt number ``attempt`` (1-based), or None to give up.

        ``elapsed`` is the time since the first attempt started.
        """
        if attempt >= self.attempts:
            return None
        if retry_after is not None:
            delay = min(max(retry_after, 0.0), self.max_retry_after)
        else:
            try:
                backoff = self.first * self.factor ** min(attempt - 1, 64)
            except OverflowError:
                backoff = self.cap
            delay = _jittered(min(self.cap, backoff), self.jitter, rand)
        if elapsed + delay > self.total:
            return None
        return delay

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(attempts=1)


def parse_retry_after(value: str | None, now: datetime | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    Returns None when absent or unreadable; a date in the past gives 0. A date needs ``now``
    (this function never reads a clock): without it, a date form gives None.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if now is None:
        return None
    return max(0.0, (when - now).total_seconds())
