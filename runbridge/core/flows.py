"""The runbridge operations as sans-IO flows, written once for both clients.

A flow is a generator that yields :class:`~runbridge.core.http.Request` and
:class:`~runbridge.core.http.Sleep` steps; the sync and async drivers in ``client.py`` only
perform them. Retries, the launch safety net, the wait loop, transient-error tolerance and
``run_timeout`` all live here, so the two clients cannot drift apart, and tests drive the
flows with a fake clock and canned responses.
"""

from __future__ import annotations

import dataclasses
import logging
import random as _random
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar

from .errors import (
    ConfigError,
    Conflict,
    LaunchUncertain,
    NotSupported,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunbridgeError,
    RunNotFound,
    TransportError,
    WaitTimeout,
)
from .http import Exchange, Flow, Request, Response, Sleep
from .models import LaunchSpec, RunRef, RunStatus
from .providers.base import Provider
from .schedule import PollSchedule, RetryPolicy, parse_retry_after
from .states import RunState

__all__ = ["Event", "FlowContext", "LongPollUnavailable", "WaitOptions"]

T = TypeVar("T")
logger = logging.getLogger("runbridge")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT = (TransportError, PlatformUnavailable, RateLimited, ProtocolError)
"""Errors a wait tolerates for ``error_window`` seconds."""


class LongPollUnavailable(RunbridgeError):
    """Thrown by a driver into a flow when it will not open another blocking call now."""


EventKind = Literal[
    "launched",
    "reattached",
    "retry",
    "status",
    "state_changed",
    "transient_error",
    "sleep",
    "join",
    "cancel_requested",
    "unknown_state",
]


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened in a flow, already free of secrets; handed to ``on_event`` hooks."""

    kind: EventKind
    platform: str
    ref: RunRef | None = None
    status: RunStatus | None = None
    delay: float | None = None
    """Seconds until the next attempt or check (retry, sleep)."""
    elapsed: float | None = None
    """Seconds since the operation started."""
    error: str | None = None
    attempt: int | None = None


Hook = Callable[[Event], None]


@dataclasses.dataclass(frozen=True)
class WaitOptions:
    """How a wait behaves. Every default is visible here."""

    timeout: float | None = None
    """``wait_timeout``: stop waiting after this many seconds (the run keeps going)."""
    run_timeout: float | None = None
    """Cancel the run once it is this old (from its creation time when the platform reports it)."""
    poll: PollSchedule = dataclasses.field(default_factory=PollSchedule)
    use_join: bool = True
    """Use the platform's blocking endpoint where it has one."""
    join_timeout: float = 300.0
    """Longest single blocking call; it is re-opened until the run ends or the deadline."""
    error_window: float = 600.0
    """How long transient errors (5xx, 429, network) are tolerated before the wait fails."""
    cancel_grace: float = 120.0
    """After cancelling for ``run_timeout``, how long to wait for the run to stop."""


_warned_unknown: set[tuple[str, str]] = set()


class FlowContext:
    """What flows need besides the provider: retry policy, a clock, randomness, hooks."""

    def __init__(
        self,
        provider: Provider,
        retry: RetryPolicy,
        *,
        clock: Callable[[], float],
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        rand: Callable[[], float] = _random.random,
        hooks: Iterable[Hook] = (),
    ) -> None:
        self.provider = provider
        self.retry = retry
        self.clock = clock
        self.wall = wall
        self.rand = rand
        self.hooks = list(hooks)
        self.ref: RunRef | None = None
        """The run the current operation is about (for events), once known."""

    @property
    def platform(self) -> str:
        return self.provider.name

    def emit(self, kind: EventKind, **fields: Any) -> None:
        event = Event(kind, self.platform, **fields)
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:  # a hook must never break a wait
                logger.exception("runbridge event hook %r failed", hook)

    # -- one request, with retries ---------------------------------------------------------
    def send(self, request: Request) -> Flow[Response]:
        """Send ``request``, retrying what is safe to retry; returns the last response."""
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                response: Response = yield request
            except TransportError as exc:
                # A long poll that ran out is news for the wait loop, not a failure to retry.
                if request.long_poll and exc.timeout:
                    raise
                # A request that never left (connect failed) is safe to resend, even a POST.
                if not (request.retryable or exc.sent is False):
                    raise
                delay = self.retry.next_delay(attempt, self.clock() - start, rand=self.rand)
                if delay is None:
                    raise
                self._retrying(request, attempt, delay, str(exc))
                yield Sleep(delay, f"retry {request.method} {request.path}")
                continue
            if response.status_code in RETRY_STATUSES and (
                # 429 means "not processed": safe to resend whatever the method.
                request.retryable or response.status_code == 429
            ):
                retry_after = parse_retry_after(response.headers.get("retry-after"), self.wall())
                delay = self.retry.next_delay(
                    attempt, self.clock() - start, retry_after, rand=self.rand
                )
                if delay is not None:
                    self._retrying(request, attempt, delay, f"HTTP {response.status_code}")
                    yield Sleep(delay, f"retry {request.method} {request.path}")
                    continue
            return response

    def _retrying(self, request: Request, attempt: int, delay: float, why: str) -> None:
        logger.info(
            "%s: %s %s failed (%s); retry %d in %.1fs",
            self.platform,
            request.method,
            request.path,
            why,
            attempt,
            delay,
        )
        self.emit("retry", ref=self.ref, delay=delay, error=why, attempt=attempt)

    def run(self, exchange: Exchange[T]) -> Flow[T]:
        """Drive a provider exchange, each of its requests through :meth:`send`."""
        try:
            request = next(exchange)
            while True:
                try:
                    response = yield from self.send(request)
                except RunbridgeError as exc:
                    request = exchange.throw(exc)
                else:
                    request = exchange.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            exchange.close()

    # -- operations --------------------------------------------------------------------------
    def get(self, ref: RunRef) -> Flow[RunStatus]:
        ref = self.provider.check_ref(ref)
        self.ref = self.ref or ref
        status = yield from self.run(self.provider.status(ref))
        self._check_unknown(status)
        return status

    def list(self, limit: int | None, **filters: Any) -> Flow[list[RunStatus]]:
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
        return (yield from self.run(self.provider.list_runs(limit=limit, **filters)))

    def cancel(self, ref: RunRef) -> Flow[None]:
        ref = self.provider.check_ref(ref)
        self.ref = self.ref or ref
        if not self.provider.supports_cancel:
            raise NotSupported(f"{self.platform} runs cannot be cancelled over its API")
        self.emit("cancel_requested", ref=ref)
        yield from self.run(self.provider.cancel(ref))

    def launch(self, spec: LaunchSpec, *, reuse: bool = True) -> Flow[RunRef]:
        """Launch a run, never creating a duplicate.

        With an idempotency key on a provider that supports ``find``: first look for a run
        launched with that key (``reuse``); when a launch's fate is unknown (network failure
        after sending, 5xx, 409), look again before failing or launching again. Without one,
        an uncertain launch raises :class:`LaunchUncertain` instead of being retried.
        """
        provider = self.provider
        if not provider.supports_launch:
            raise NotSupported(f"{self.platform} runs cannot be launched over its API")
        if spec.key is None and provider.auto_key and provider.can_find(spec):
            spec = dataclasses.replace(spec, key=uuid.uuid4().hex)
            reuse = False  # a new key: nothing to re-attach to
        can_find = spec.key is not None and provider.can_find(spec)
        if can_find and reuse:
            existing = yield from self.run(provider.find(spec))
            if existing is not None:
                logger.info("%s: re-attached to run %s (key %s)", self.platform, existing, spec.key)
                self.emit("reattached", ref=existing)
                return existing
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                ref = yield from self.run(provider.launch(spec))
            except (TransportError, PlatformUnavailable, Conflict) as exc:
                if isinstance(exc, TransportError) and exc.sent is False:
                    raise  # send() already retried it; it never reached the platform
                if not can_find:
                    if isinstance(exc, Conflict):
                        raise
                    raise LaunchUncertain(
                        f"{self.platform}: the launch request failed ({exc}) and may have "
                        "created a run anyway; not retried, to avoid a duplicate run. "
                        + (
                            "Pass an idempotency key to let runbridge look the run up."
                            if provider.supports_find
                            else f"Check {self.platform} for the run before launching again."
                        ),
                        cause=exc,
                    ) from exc
                found = yield from self.run(provider.find(spec))
                if found is not None:
                    logger.info(
                        "%s: launch outcome was unknown; found run %s", self.platform, found
                    )
                    self.emit("reattached", ref=found)
                    return found
                if isinstance(exc, Conflict):
                    raise
                delay = self.retry.next_delay(attempt, self.clock() - start, rand=self.rand)
                if delay is None:
                    raise
                self.emit("retry", delay=delay, error=str(exc), attempt=attempt)
                yield Sleep(delay, "retry launch")
                continue
            logger.info("%s: launched run %s", self.platform, ref)
            self.emit("launched", ref=ref)
            return ref

    def wait(self, ref: RunRef, options: WaitOptions) -> Flow[RunStatus]:
        """Wait until the run is terminal; raise WaitTimeout (with the last status) at the deadline."""
        provider = self.provider
        ref = provider.check_ref(ref)
        self.ref = ref
        if options.run_timeout is not None and not provider.supports_cancel:
            raise NotSupported(
                f"run_timeout needs cancel, and {self.platform} runs cannot be cancelled over its API"
            )
        start = self.clock()
        deadline = start + options.timeout if options.timeout is not None else None
        last: RunStatus | None = None
        checks = 0
        error_since: float | None = None
        cancelled_at: float | None = None
        use_join = options.use_join
        if use_join:  # does the platform have a blocking wait? (an unstarted exchange: no I/O)
            probe = provider.join(ref, options.join_timeout)
            use_join = probe is not None
            if probe is not None:
                probe.close()
        while True:
            status: RunStatus | None = None
            remaining = None if deadline is None else deadline - self.clock()
            joined = False
            join = None
            if use_join and last is not None and not last.is_terminal:
                join_for = (
                    options.join_timeout
                    if remaining is None
                    else min(remaining, options.join_timeout)
                )
                if options.run_timeout is not None and cancelled_at is None:
                    # wake in time to cancel a run that outlives run_timeout
                    join_for = min(join_for, options.run_timeout - self._age(last, start) + 0.01)
                if join_for > 0.5:
                    join = provider.join(ref, join_for)
                    if join is not None:
                        self.emit("join", ref=ref, status=last, delay=join_for)
            try:
                if join is not None:
                    try:
                        status = yield from self.run(join)
                        joined = True
                    except LongPollUnavailable:
                        status = yield from self.run(provider.status(ref))
                    except TransportError as exc:
                        if not exc.timeout:
                            raise
                        joined = True  # the blocking call ran out: no news, not an error
                else:
                    status = yield from self.run(provider.status(ref))
            except TRANSIENT as exc:
                now = self.clock()
                error_since = now if error_since is None else error_since
                if now - error_since > options.error_window:
                    raise
                logger.warning("%s: checking run %s failed: %s", self.platform, ref, exc)
                self.emit("transient_error", ref=ref, error=str(exc), elapsed=now - start)
            else:
                error_since = None
            if status is not None:
                self._check_unknown(status)
                if cancelled_at is not None and status.state is RunState.CANCELLED:
                    status = dataclasses.replace(
                        status,
                        state=RunState.TIMED_OUT,
                        message=f"cancelled by runbridge: the run exceeded run_timeout="
                        f"{options.run_timeout:g}s",
                    )
                self.emit("status", ref=ref, status=status, elapsed=self.clock() - start)
                if last is None or status.raw_state != last.raw_state:
                    logger.info("%s", status.summary())
                    self.emit("state_changed", ref=ref, status=status, elapsed=self.clock() - start)
                last = status
                if status.is_terminal:
                    return status
                if (
                    options.run_timeout is not None
                    and cancelled_at is None
                    and self._age(status, start) > options.run_timeout
                ):
                    logger.warning(
                        "%s: run %s exceeded run_timeout=%gs; cancelling it",
                        self.platform,
                        ref,
                        options.run_timeout,
                    )
                    try:
                        yield from self.cancel(ref)
                    except (Conflict, RunNotFound, *TRANSIENT) as exc:
                        # e.g. the run ended just before the cancel arrived: the next check says
                        logger.warning("%s: cancelling run %s failed: %s", self.platform, ref, exc)
                    cancelled_at = self.clock()
                    grace_end = cancelled_at + options.cancel_grace
                    deadline = grace_end if deadline is None else max(deadline, grace_end)
                    checks = 0
                    continue
            now = self.clock()
            if deadline is not None and now >= deadline:
                if cancelled_at is not None:
                    raise WaitTimeout(
                        f"{self.platform} run {ref.id} was cancelled for exceeding run_timeout "
                        f"but had not stopped after {options.cancel_grace:g}s",
                        last_status=last,
                    )
                raise WaitTimeout(
                    f"{self.platform} run {ref.id} still "
                    f"{last.state.value if last else 'unknown'} after waiting "
                    f"{options.timeout:g}s; the run keeps going",
                    last_status=last,
                )
            if joined and status is None:
                continue  # the long poll itself waited
            if use_join and checks == 0 and not joined and last is not None:
                checks = 1  # the first check was a plain status: go straight to the join
                continue
            delay = options.poll.delay(checks, self.rand)
            checks += 1
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - now))
            if options.run_timeout is not None and cancelled_at is None and last is not None:
                delay = max(0.0, min(delay, options.run_timeout - self._age(last, start) + 0.01))
            self.emit("sleep", ref=ref, status=last, delay=delay, elapsed=now - start)
            woke = yield Sleep(delay, "poll", wake=ref)
            if isinstance(woke, RunStatus):
                # a pushed (webhook) update says the run ended: confirm with a check now
                logger.info(
                    "%s: run %s reported %s by a pushed update", self.platform, ref, woke.state
                )

    def _age(self, status: RunStatus, start: float) -> float:
        if status.created_at is not None:
            return (self.wall() - status.created_at).total_seconds()
        return self.clock() - start

    def _check_unknown(self, status: RunStatus) -> None:
        if status.state is RunState.UNKNOWN:
            key = (self.platform, status.raw_state)
            if key not in _warned_unknown:
                _warned_unknown.add(key)
                logger.warning(
                    "%s reported state %r, which runbridge does not know; treating it as still "
                    "running",
                    self.platform,
                    status.raw_state,
                )
                self.emit("unknown_state", ref=status.ref, status=status)
