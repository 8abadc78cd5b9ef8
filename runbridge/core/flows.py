"""The runbridge operations as sans-IO flows, written once for both clients.

A flow is a generator that yields :class:`~runbridge.core.http.Request`,
:class:`~runbridge.core.http.Sleep` and :class:`~runbridge.core.http.Save` steps; the sync and
async drivers in ``client.py`` only perform them. Retries, the launch safety net, re-attach,
the wait loop, transient-error tolerance, ``run_timeout`` and deadlines all live here, so the
two clients cannot drift apart, and tests drive the flows with a fake clock and canned answers.

Two layers:

* **The wait engine speaks in checks.** :func:`wait_steps` is a generator over plain data
  (:class:`WaitState`: a ref, a deadline, a schedule position, an error window) that yields
  semantic steps: :class:`Check` (the status of this run), :class:`Join` (a blocking wait on it),
  :class:`Cancel`, and :class:`Sleep`. It never sees an HTTP request, so a scheduler can hold
  thousands of them and answer many ``Check`` steps with one batched request.
* **FlowContext turns steps into requests**: ``Check`` into the provider's ``status``
  exchange, each request retried by one retry loop (:meth:`FlowContext.send`).

**Deadlines flow down.** An operation may carry a deadline (a wait's ``wait_timeout``, and the
moment ``run_timeout`` falls due). Every request in it gets at most what is left (a total
deadline the drivers enforce, not only a read timeout); a retry or Retry-After sleep that would
end past it is not taken; a blocking call is never held past it. So a wait ends by its deadline
whatever the server does (trickles, hangs, long Retry-After, 5xx storms).

Flows never log: they emit :class:`Event` s, and the client's first hook (:func:`log_event`)
writes them to the ``runbridge`` logger.
"""

from __future__ import annotations

import dataclasses
import logging
import random as _random
import uuid
from collections.abc import Callable, Generator, Iterable, Sequence
from datetime import datetime, timezone
from typing import Any, Literal, TypeVar, Union

from .errors import (
    ConfigError,
    Conflict,
    LaunchUncertain,
    NotSupported,
    ProtocolError,
    RateLimited,
    RunbridgeError,
    RunNotFound,
    TransportError,
    WaitTimeout,
    retryable,
)
from .http import Exchange, Flow, Request, Response, Save, Sleep
from .models import LaunchSpec, RunRef, RunStatus
from .planner import (
    CANCELLED,
    LAUNCHED,
    REATTACHED,
    STARTING,
    Execution,
    LaunchPolicy,
    LaunchRecord,
    Started,
    plan_launch,
    review,
)
from .providers.base import Provider
from .schedule import PollSchedule, RetryPolicy, parse_retry_after
from .states import RunState

__all__ = [
    "Cancel",
    "Check",
    "Event",
    "FlowContext",
    "Join",
    "LongPollUnavailable",
    "WaitOptions",
    "WaitState",
    "log_event",
    "wait_steps",
]

T = TypeVar("T")
logger = logging.getLogger("runbridge")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
FINAL_CHECK = 0.5
"""Seconds a wait's last check may take past its deadline (a wait ends within this of it)."""


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
    "cancel_failed",
    "run_timeout",
    "pushed_update",
    "unknown_state",
    "url_known",
    "superseded",
]
"""``superseded``: ``start`` is cancelling ``ref``, a run of an earlier execution (a cleared
task's) still going, before it launches anew (``message`` says why; core/planner.py).
``url_known``: a status carried a run page URL for the first time in this operation, or a
URL other than the one announced before (a W&B Launch queue item got its run). ``ref`` is the
run the operation is about (the reference the caller holds; for a queued W&B launch, the queue
item), ``status`` the status carrying the URL (``status.url``; ``status.ref`` may name the run
it became). Emitted by ``start`` (its first status) and by each wait (its first status with a
URL, then on every change), so a wait after a start announces the same URL again: a consumer
updates its link when ``status.url`` differs from the one it shows."""


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened in a flow, handed to ``on_event`` hooks.

    Made only from answers the client already redacted, so it carries no secret."""

    kind: EventKind
    platform: str
    ref: RunRef | None = None
    status: RunStatus | None = None
    delay: float | None = None
    """Seconds until the next attempt or check (retry, sleep), or the blocking call's length."""
    elapsed: float | None = None
    """Seconds since the operation started."""
    error: str | None = None
    attempt: int | None = None
    message: str | None = None
    """Why (a re-attach's reason, a cancel's cause)."""


Hook = Callable[[Event], None]


def log_event(event: Event) -> None:
    """The client's default hook: one ``runbridge`` log line for the events worth one."""
    platform, ref = event.platform, event.ref
    if event.kind == "launched":
        logger.info("%s: launched run %s", platform, ref)
    elif event.kind == "reattached":
        logger.info("%s: re-attached to run %s (%s)", platform, ref, event.message or "by its key")
    elif event.kind == "retry":
        logger.info(
            "%s: %s failed (%s); retry %s in %.1fs",
            platform,
            event.message or "request",
            event.error,
            event.attempt,
            event.delay or 0.0,
        )
    elif event.kind == "transient_error":
        logger.warning("%s: checking run %s failed: %s", platform, ref, event.error)
    elif event.kind == "state_changed" and event.status is not None:
        logger.info("%s", event.status.summary())
    elif event.kind == "run_timeout":
        logger.warning("%s: run %s %s; cancelling it", platform, ref, event.message)
    elif event.kind == "superseded":
        logger.warning("%s: cancelling run %s: %s", platform, ref, event.message)
    elif event.kind == "cancel_failed":
        logger.warning("%s: cancelling run %s failed: %s", platform, ref, event.error)
    elif event.kind == "pushed_update" and event.status is not None:
        logger.info("%s: run %s reported %s by a pushed update", platform, ref, event.status.state)
    elif event.kind == "unknown_state" and event.status is not None:
        logger.warning(
            "%s reported state %r, which runbridge does not know; treating it as still running",
            platform,
            event.status.raw_state,
        )


@dataclasses.dataclass(frozen=True)
class WaitOptions:
    """How a wait behaves. Every default is visible here."""

    wait_timeout: float | None = None
    """Stop waiting after this many seconds (WaitTimeout; the run keeps going)."""
    run_timeout: float | None = None
    """Cancel the run once it is this old (from its creation time when the platform reports it)."""
    poll: PollSchedule = dataclasses.field(default_factory=PollSchedule)
    use_join: bool = True
    """Use the platform's blocking endpoint where it has one."""
    join_timeout: float = 300.0
    """Longest single blocking call; it is re-opened until the run ends or the deadline."""
    error_window: float = 600.0
    """How long transient errors (5xx, 429, network, unreadable answers) are tolerated."""
    cancel_grace: float = 120.0
    """After cancelling for ``run_timeout``, how long to wait for the run to stop."""


# -- the wait engine: semantic steps over plain data ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    """Send back the run's current status."""

    ref: RunRef


@dataclasses.dataclass(frozen=True)
class Join:
    """Block on the platform's wait endpoint for at most ``seconds``; send back its status, or
    None when it ran out with no news."""

    ref: RunRef
    seconds: float


@dataclasses.dataclass(frozen=True)
class Cancel:
    """Ask the platform to cancel the run (for ``run_timeout``)."""

    ref: RunRef


WaitStep = Union[Check, Join, Cancel, Sleep]  # noqa: UP007 (a runtime alias on Python 3.10)
WaitSteps = Generator[WaitStep, Any, RunStatus]


@dataclasses.dataclass
class WaitState:
    """Everything one wait knows between two steps: small, plain, inspectable."""

    ref: RunRef
    options: WaitOptions
    start: float
    deadline: float | None
    """When the wait gives up (``wait_timeout``; after a run_timeout cancel, its grace too)."""
    use_join: bool = False
    checks: int = 0
    """Position in the poll schedule."""
    last: RunStatus | None = None
    error_since: float | None = None
    not_before: float | None = None
    """The platform asked (Retry-After) not to be asked again before this time."""
    cancelled_at: float | None = None
    cancel_due: float | None = None
    """When ``run_timeout`` falls due, on the flow's clock (None: no run_timeout, or done)."""
    pushed: bool = False
    """The last sleep was ended by a pushed update (a webhook delivery), which the check that
    follows confirms."""
    url: str | None = None
    """The run page URL last announced by a ``url_known`` event (None: none yet)."""
    distrust_push: bool = False
    """A pushed update did not end the wait (the run still runs, or the check failed): the
    next sleep is not cut short by another, so stale or forged deliveries, however many, cost
    at most one check per poll interval."""

    def request_deadline(self) -> float | None:
        """The deadline each request of this wait gets: the wait's or run_timeout's, whichever
        comes first, plus ``FINAL_CHECK`` seconds, so the check made when it falls due can
        still be answered (and a run that just ended is seen as ended)."""
        due = [d for d in (self.deadline, self.cancel_due) if d is not None]
        return min(due) + FINAL_CHECK if due else None


_warned_unknown: set[tuple[str, str]] = set()


def wait_steps(
    state: WaitState,
    clock: Callable[[], float],
    wall: Callable[[], datetime],
    rand: Callable[[], float],
    emit: Any,
    max_retry_after: float = RetryPolicy.max_retry_after,
) -> WaitSteps:
    """The wait, as semantic steps (see the module docstring). Errors of a step are thrown in;
    retryable ones are tolerated for ``error_window``; the result is the terminal status. A
    platform's Retry-After is honoured up to ``max_retry_after`` seconds (the retry policy's)."""
    options, ref = state.options, state.ref
    while True:
        status: RunStatus | None = None
        joined = False
        now = clock()
        last = state.last
        join_for = None
        if state.use_join and last is not None and not last.is_terminal:
            join_for = options.join_timeout
            for end in (state.deadline, state.cancel_due):
                if end is not None:
                    join_for = min(join_for, end - now)
            if join_for <= 0.5:
                join_for = None
        try:
            if join_for is not None:
                emit("join", ref=ref, status=last, delay=join_for)
                status = yield Join(ref, join_for)
                joined = True
            else:
                status = yield Check(ref)
        except RunbridgeError as exc:
            if not retryable(exc):
                raise
            now = clock()
            state.error_since = now if state.error_since is None else state.error_since
            if now - state.error_since > options.error_window:
                raise
            retry_after = getattr(exc, "retry_after", None)
            if isinstance(retry_after, (int, float)) and retry_after > 0:  # not NaN
                state.not_before = now + min(retry_after, max_retry_after)
            emit("transient_error", ref=ref, error=str(exc), elapsed=now - state.start)
        else:
            state.error_since = None
        if status is not None:
            _check_unknown(status, emit)
            if state.cancelled_at is not None and status.state is RunState.CANCELLED:
                status = dataclasses.replace(
                    status,
                    state=RunState.TIMED_OUT,
                    cancelled_by_runbridge=True,
                    message=f"cancelled by runbridge: the run exceeded run_timeout="
                    f"{options.run_timeout:g}s",
                )
            elapsed = clock() - state.start
            emit("status", ref=ref, status=status, elapsed=elapsed)
            if last is None or status.raw_state != last.raw_state:
                emit("state_changed", ref=ref, status=status, elapsed=elapsed)
            if status.url and status.url != state.url:
                state.url = status.url
                emit("url_known", ref=ref, status=status, elapsed=elapsed)
            state.last = status
            if status.is_terminal:
                return status
            state.cancel_due = _cancel_due(state, clock(), wall())
        state.distrust_push, state.pushed = state.pushed, False
        now = clock()
        if state.cancel_due is not None and now >= state.cancel_due:
            yield from _cancel_for_run_timeout(state, clock, emit)
            continue
        if state.deadline is not None and now >= state.deadline:
            raise _timeout(state)
        if joined and status is None:
            continue  # the blocking call itself waited
        if state.use_join and state.checks == 0 and not joined and state.last is not None:
            state.checks = 1  # the first check was a plain status: go straight to the join
            continue
        delay = options.poll.delay(state.checks, rand)
        state.checks += 1
        if state.not_before is not None:
            delay = max(delay, state.not_before - now)
            state.not_before = None
        for end in (state.deadline, state.cancel_due):
            if end is not None:
                delay = max(0.0, min(delay, end - now))
        emit("sleep", ref=ref, status=state.last, delay=delay, elapsed=now - state.start)
        woke = yield Sleep(delay, "poll", wake=None if state.distrust_push else ref)
        if isinstance(woke, RunStatus):
            # a pushed (webhook) update says the run ended: confirm with a check now
            emit("pushed_update", ref=ref, status=woke)
            state.pushed = True


def _cancel_due(state: WaitState, now: float, wall_now: datetime) -> float | None:
    """When run_timeout falls due on the flow's clock: from the run's creation time where the
    platform reports it, else from the start of the wait."""
    options = state.options
    if options.run_timeout is None or state.cancelled_at is not None:
        return None
    last = state.last
    if last is not None and last.created_at is not None:
        age = (wall_now - last.created_at).total_seconds()
        return now + options.run_timeout - age
    return state.start + options.run_timeout


def _cancel_for_run_timeout(
    state: WaitState, clock: Callable[[], float], emit: Any
) -> Generator[WaitStep, Any, None]:
    options, ref = state.options, state.ref
    emit(
        "run_timeout",
        ref=ref,
        status=state.last,
        message=f"exceeded run_timeout={options.run_timeout:g}s",
    )
    state.cancelled_at = clock()
    state.cancel_due = None
    grace_end = state.cancelled_at + options.cancel_grace
    state.deadline = grace_end if state.deadline is None else max(state.deadline, grace_end)
    state.checks = 0
    try:
        yield Cancel(ref)
    except RunbridgeError as exc:
        if not (isinstance(exc, (Conflict, RunNotFound)) or retryable(exc)):
            raise
        # e.g. the run ended just before the cancel arrived: the next check says
        emit("cancel_failed", ref=ref, error=str(exc))


def _timeout(state: WaitState) -> WaitTimeout:
    ref, last, options = state.ref, state.last, state.options
    platform = ref.platform
    if state.cancelled_at is not None:
        return WaitTimeout(
            f"{platform} run {ref.id} was cancelled for exceeding run_timeout "
            f"but had not stopped after {options.cancel_grace:g}s",
            last_status=last,
        )
    waited = options.wait_timeout if options.wait_timeout is not None else 0.0
    return WaitTimeout(
        f"{platform} run {ref.id} still {last.state.value if last else 'unknown'} after "
        f"waiting {waited:g}s; the run keeps going",
        last_status=last,
    )


def _check_unknown(status: RunStatus, emit: Any) -> None:
    if status.state is RunState.UNKNOWN:
        key = (status.ref.platform, status.raw_state)
        if key not in _warned_unknown:
            _warned_unknown.add(key)
            emit("unknown_state", ref=status.ref, status=status)


# -- steps into requests ---------------------------------------------------------------------
class FlowContext:
    """What flows need besides the provider: retry policy, clocks, randomness, hooks."""

    def __init__(
        self,
        provider: Provider,
        retry: RetryPolicy,
        *,
        clock: Callable[[], float],
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        rand: Callable[[], float] = _random.random,
        hooks: Iterable[Hook] = (),
        request_timeout: float = 30.0,
        new_key: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.provider = provider
        self.retry = retry
        self.clock = clock
        self.wall = wall
        self.rand = rand
        self.hooks = list(hooks)
        self.request_timeout = request_timeout
        self.new_key = new_key
        self.ref: RunRef | None = None
        """The run the current operation is about (for events), once known."""
        self.deadline: float | None = None
        """The current operation's deadline on ``clock`` (None: bounded by the retry policy)."""
        self.found_by_key = False
        """Whether the last ``launch`` found an existing run by its key instead of launching."""

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

    def _left(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    # -- one request, with retries ---------------------------------------------------------
    def send(self, request: Request) -> Flow[Response]:
        """Send ``request``, retrying what is safe to retry within the retry policy and the
        deadline; returns the last response."""
        start = self.clock()
        attempt = 0
        what = f"{request.method} {request.path}"
        while True:
            attempt += 1
            budget = request.timeout if request.timeout is not None else self.request_timeout
            left = self._left()
            if left is not None:
                if left <= 0:
                    raise TransportError(
                        f"{self.platform}: {what} not sent: the deadline has passed",
                        sent=False,
                        timeout=True,
                    )
                budget = min(budget, left)
            try:
                response: Response = yield dataclasses.replace(request, timeout=budget, limit=left)
            except TransportError as exc:
                # A long poll that ran out is news for the wait loop, not a failure to retry.
                if request.long_poll and exc.timeout:
                    raise
                # A request that never left (connect failed) is safe to resend, even a POST.
                if not (request.retryable or exc.sent is False):
                    raise
                delay = self._retry_delay(attempt, start, None)
                if delay is None:
                    raise
                self._retrying(what, attempt, delay, str(exc))
                yield Sleep(delay, f"retry {what}")
                continue
            if response.status_code in RETRY_STATUSES and (
                # 429 means "not processed": safe to resend whatever the method.
                request.retryable or response.status_code == 429
            ):
                retry_after = parse_retry_after(
                    response.headers.get("retry-after"), response.received_at or self.wall()
                )
                delay = self._retry_delay(attempt, start, retry_after)
                if delay is not None:
                    self._retrying(what, attempt, delay, f"HTTP {response.status_code}")
                    yield Sleep(delay, f"retry {what}")
                    continue
            return response

    def _retry_delay(self, attempt: int, start: float, retry_after: float | None) -> float | None:
        """The retry policy's delay, or None when it gives up or the delay would end past the
        deadline (then the caller sees the last failure, with time left to act on it)."""
        delay = self.retry.next_delay(attempt, self.clock() - start, retry_after, rand=self.rand)
        left = self._left()
        if delay is not None and left is not None and delay >= left:
            return None
        return delay

    def _retrying(self, what: str, attempt: int, delay: float, why: str) -> None:
        self.emit("retry", ref=self.ref, delay=delay, error=why, attempt=attempt, message=what)

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

    def run_retrying(self, make: Callable[[], Exchange[T]], what: str) -> Flow[T]:
        """Run an idempotent exchange, again from the start after a retryable failure that the
        request loop could not retry (an unreadable answer, a 5xx that outlasted it)."""
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                return (yield from self.run(make()))
            except RunbridgeError as exc:
                if not retryable(exc) or (isinstance(exc, TransportError) and exc.timeout):
                    raise
                delay = self._retry_delay(attempt, start, getattr(exc, "retry_after", None))
                if delay is None:
                    raise
                self._retrying(what, attempt, delay, str(exc))
                yield Sleep(delay, f"retry {what}")

    # -- operations --------------------------------------------------------------------------
    def get(self, ref: RunRef) -> Flow[RunStatus]:
        ref = self.provider.check_ref(ref)
        self.ref = self.ref or ref
        status = yield from self.run(self.provider.status(ref))
        _check_unknown(status, self.emit)
        return status

    def list(self, limit: int | None, **filters: Any) -> Flow[list[RunStatus]]:
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
        return (yield from self.run(self.provider.list_runs(limit=limit, **filters)))

    def cancel(self, ref: RunRef, *, retry_unreadable: bool = False) -> Flow[None]:
        ref = self.provider.check_ref(ref)
        self.ref = self.ref or ref
        if not self.provider.supports_cancel:
            raise NotSupported(f"{self.platform} runs cannot be cancelled over its API")
        self.emit("cancel_requested", ref=ref)
        if retry_unreadable:  # a cancel is idempotent: an unreadable answer is sent again
            yield from self.run_retrying(lambda: self.provider.cancel(ref), "cancel")
        else:
            yield from self.run(self.provider.cancel(ref))

    def _find(self, spec: LaunchSpec) -> Flow[RunRef | None]:
        return (yield from self.run_retrying(lambda: self.provider.find(spec), "find"))

    def launch(self, spec: LaunchSpec, *, reuse: bool = True) -> Flow[RunRef]:
        """Launch a run, never creating a duplicate.

        With an idempotency key on a provider that supports ``find``: first look for a run
        launched with that key (``reuse``); when a launch's fate is unknown (network failure
        after sending, 5xx, 409, an answer that cannot be read), look again before failing or
        launching again. Without one, an uncertain launch raises :class:`LaunchUncertain`
        (carrying the key and what the answer held) instead of being retried.
        """
        provider = self.provider
        if not provider.supports_launch:
            raise NotSupported(f"{self.platform} runs cannot be launched over its API")
        if spec.key is None and provider.auto_key and provider.can_find(spec):
            spec = dataclasses.replace(spec, key=self.new_key())
            reuse = False  # a new key: nothing to re-attach to
        can_find = spec.key is not None and provider.can_find(spec)
        self.found_by_key = False
        if can_find and reuse:
            existing = yield from self._find(spec)
            if existing is not None:
                self.found_by_key = True
                self.emit("reattached", ref=existing, message=f"found by its key {spec.key!r}")
                return existing
        start = self.clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                ref = yield from self.run(provider.launch(spec))
            except RunbridgeError as exc:
                # an answer that cannot be read may follow a run that was created
                if not (isinstance(exc, (Conflict, ProtocolError)) or retryable(exc)):
                    raise
                if isinstance(exc, TransportError) and exc.sent is False:
                    raise  # send() already retried it; it never reached the platform
                if not can_find:
                    if isinstance(exc, (Conflict, RateLimited)):
                        raise  # refused, not processed: no run was created
                    raise self._uncertain(spec, exc) from exc
                found = yield from self._find(spec)
                if found is not None:
                    self.found_by_key = True
                    self.emit("reattached", ref=found, message="the launch's outcome was unknown")
                    return found
                if isinstance(exc, Conflict):
                    raise
                delay = self._retry_delay(attempt, start, getattr(exc, "retry_after", None))
                if delay is None:
                    raise
                self._retrying("launch", attempt, delay, str(exc))
                yield Sleep(delay, "retry launch")
                continue
            self.emit("launched", ref=ref)
            return ref

    def _uncertain(self, spec: LaunchSpec, exc: RunbridgeError) -> LaunchUncertain:
        answer = str(exc) if isinstance(exc, ProtocolError) else None
        hint = (
            "Pass an idempotency key to let runbridge look the run up."
            if self.provider.supports_find
            else f"Check {self.platform} for the run before launching again."
        )
        return LaunchUncertain(
            f"{self.platform}: the launch request failed ({exc}) and may have created a run "
            f"anyway; not retried, to avoid a duplicate run. {hint}",
            cause=exc,
            key=spec.key,
            answer=answer,
        )

    def start(
        self,
        params: Any,
        base_key: str,
        history: Sequence[Execution],
        policy: LaunchPolicy,
    ) -> Flow[Started]:
        """Re-attach to the run an earlier attempt launched, or launch one, per the planner
        (core/planner.py); yields :class:`Save` for each record, the first before the launch."""
        plan = plan_launch(history, base_key)
        if plan.supersede is not None:
            yield from self._supersede(plan.supersede, plan.why)
        if plan.reattach is not None:
            status: RunStatus | None = None
            gone = False
            try:
                status = yield from self.get(plan.reattach)
            except RunNotFound:
                gone = True
            except RunbridgeError as exc:
                if not retryable(exc):
                    raise
                self.emit("transient_error", ref=plan.reattach, error=str(exc))
            plan = review(
                plan, status, gone=gone, policy=policy, history=history, base_key=base_key
            )
            if plan.reattach is not None:
                yield Save(LaunchRecord(plan.key, plan.reattach, REATTACHED))
                self.emit("reattached", ref=plan.reattach, status=status, message=plan.why)
                if status is not None and status.url:
                    self.emit("url_known", ref=plan.reattach, status=status)
                return Started(plan.reattach, plan.key, status, True, plan.why)
        spec = LaunchSpec(params, plan.key)
        if self.provider.can_find(spec):
            yield Save(LaunchRecord(plan.key, None, STARTING))  # a crash after it finds the run
        ref = yield from self.launch(spec, reuse=True)
        found = self.found_by_key
        yield Save(LaunchRecord(plan.key, ref, LAUNCHED))
        self.ref = ref
        first: RunStatus | None = None
        try:
            first = yield from self.get(ref)
        except RunbridgeError as exc:
            if not retryable(exc):
                raise
            self.emit("transient_error", ref=ref, error=str(exc))
        if first is not None and first.url:
            self.emit("url_known", ref=ref, status=first)
        return Started(ref, plan.key, first, found, plan.why)

    def _supersede(self, record: LaunchRecord, why: str) -> Flow[None]:
        """Cancel ``record``'s run if it is still going, before a new execution launches
        (core/planner.py), and record the cancel. Whatever goes wrong is an event and a log
        line, never a failed start: the new launch is what the user asked for."""
        ref = record.ref
        assert ref is not None
        try:
            status = yield from self.get(ref)
        except RunNotFound:
            return
        except RunbridgeError as exc:
            if not retryable(exc):
                self.emit("cancel_failed", ref=ref, error=str(exc))
                return
            status = None  # unreadable just now: cancel anyway (cancelling is idempotent)
        if status is not None and status.is_terminal:
            return
        if not self.provider.supports_cancel:
            self.emit(
                "cancel_failed",
                ref=ref,
                error=f"{self.platform} runs cannot be cancelled over its API; left going",
            )
            return
        self.emit(
            "superseded",
            ref=ref,
            status=status,
            message=f"{why}; it is still going, so it is cancelled before the new launch",
        )
        try:
            yield from self.cancel(ref, retry_unreadable=True)
        except RunbridgeError as exc:
            self.emit("cancel_failed", ref=ref, error=str(exc))
            return
        yield Save(LaunchRecord(record.key, ref, CANCELLED))

    def wait(self, ref: RunRef, options: WaitOptions) -> Flow[RunStatus]:
        """Wait until the run is terminal; raise WaitTimeout (with the last status) at the deadline."""
        state = self.wait_state(ref, options)
        return (yield from self.perform(state))

    def wait_state(self, ref: RunRef, options: WaitOptions) -> WaitState:
        provider = self.provider
        ref = provider.check_ref(ref)
        self.ref = ref
        if options.run_timeout is not None and not provider.supports_cancel:
            raise NotSupported(
                f"run_timeout needs cancel, and {self.platform} runs cannot be cancelled over its API"
            )
        start = self.clock()
        use_join = options.use_join
        if use_join:  # does the platform have a blocking wait? (an unstarted exchange: no I/O)
            probe = provider.join(ref, options.join_timeout)
            use_join = probe is not None
            if probe is not None:
                probe.close()
        state = WaitState(
            ref,
            options,
            start,
            None if options.wait_timeout is None else start + options.wait_timeout,
            use_join=use_join,
        )
        state.cancel_due = _cancel_due(state, start, self.wall())
        return state

    def perform(self, state: WaitState) -> Flow[RunStatus]:
        """Drive :func:`wait_steps`, turning each semantic step into requests."""
        steps = wait_steps(
            state, self.clock, self.wall, self.rand, self.emit, self.retry.max_retry_after
        )
        value: Any = None
        error: RunbridgeError | None = None
        try:
            while True:
                try:
                    step = steps.throw(error) if error is not None else steps.send(value)
                except StopIteration as stop:
                    result: RunStatus = stop.value
                    return result
                value, error = None, None
                if isinstance(step, Cancel):  # bounded by the grace deadline, not run_timeout
                    self.deadline = state.deadline
                else:
                    self.deadline = state.request_deadline()
                try:
                    if isinstance(step, Sleep):
                        value = yield step
                    elif isinstance(step, Check):
                        value = yield from self.get(step.ref)
                    elif isinstance(step, Join):
                        value = yield from self._join(step)
                    else:
                        yield from self.cancel(step.ref, retry_unreadable=True)
                except RunbridgeError as exc:
                    error = exc
        finally:
            steps.close()
            self.deadline = None

    def _join(self, step: Join) -> Flow[RunStatus | None]:
        join = self.provider.join(step.ref, step.seconds)
        if join is None:
            return (yield from self.get(step.ref))
        try:
            return (yield from self.run(join))
        except LongPollUnavailable:
            return (yield from self.get(step.ref))
        except TransportError as exc:
            if not exc.timeout:
                raise
            return None  # the blocking call ran out: no news, not an error
