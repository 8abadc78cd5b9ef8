"""The hub: every wait on one ``AsyncRunClient`` goes through one scheduler that owns the checks.

Two layers, as in the rest of core:

* **Pure decisions** (no clock, no I/O; the caller passes ``now``): :class:`Plan` keeps each
  wait's next due time and says which waits to wake and which checks to send now, in which
  batches (:meth:`Plan.wake`, :meth:`Plan.batches`), and when to look again
  (:meth:`Plan.next_at`); :func:`split` turns a batch answer (or its failure) into each wait's
  status, the waits to retry as a batch, the waits to check alone and a pause;
  :class:`Budget` is the connection's request budget (requests per second, a pause after a
  429). Unit tests drive them on a fake clock (tests/core/test_hub.py).
* **A small async driver** (:class:`Hub`) that steps every wait's
  :func:`~runbridge.core.flows.wait_steps` generator and performs what the plan decides:
  a batch through the provider's ``status_many``, a single check, a join or a cancel through
  the wait's own :class:`~runbridge.core.flows.FlowContext` (its retries, its deadline).

The rules it keeps:

* **Batches never make a check late.** A check is sent when it falls due. A sleeping wait
  whose check is due soon (within ``coalesce`` seconds and half its sleep) is woken early to
  fill a batch that is going anyway, never to make one: pulling it forward costs no request.
  The one exception: a wait's *first* check is held up to ``coalesce`` seconds and half its
  first poll interval (never past its deadline) for others of its group, since waits that start
  one after another would each go alone; a full batch of held checks, or a batch going anyway,
  takes it at once (:meth:`Plan.hold`).
* **A failed batch is retried once as a batch, then its runs are checked one by one**, so one
  bad id cannot block the others; a run missing from an answer, or answered with an error of
  its own (not found), is checked alone, where a 404 is that wait's error alone.
* **A 429 pauses the hub**: no check of this client is sent before its Retry-After (the
  :class:`Budget` of the client records it, whichever request met the 429); the batch is sent
  again after it. Launches and cancels are not held (a run_timeout's cancel must not wait).
* **Per-wait deadlines hold inside a batch**: a wait whose request deadline passes while its
  batch is out is detached and sees a timeout, as a single check would.
* **Blocking calls are bounded** by the client (``max_long_polls``); a join that finds no slot
  is answered by a (batched) check now, so the wait polls on its own schedule meanwhile.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import heapq
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_COALESCE
from .errors import ConfigError, RateLimited, RunbridgeError, TransportError
from .flows import FINAL_CHECK, Cancel, Check, FlowContext, Join, WaitState, wait_steps
from .http import Sleep
from .models import RunRef, RunStatus
from .schedule import RetryPolicy

if TYPE_CHECKING:  # pragma: no cover
    from .client import AsyncRunClient

__all__ = ["Budget", "Hub", "HubOptions", "Outcome", "Plan", "split"]

logger = logging.getLogger("runbridge")

DEFAULT_PAUSE = 1.0
"""Seconds the hub pauses after a 429 that names no Retry-After."""


@dataclasses.dataclass(frozen=True)
class HubOptions:
    """How a client's hub schedules checks. Every default is visible here."""

    max_rps: float | None = None
    """Requests per second for the whole client (every wait, launch and cancel); None: no cap."""
    burst: int = 10
    """Requests that may start at once after a quiet spell, under ``max_rps``."""
    coalesce: float = DEFAULT_COALESCE
    """At most this many seconds early a sleeping wait may be checked to share a batch."""
    max_pause: float = 120.0
    """The longest pause a 429's Retry-After may impose on the hub."""

    def __post_init__(self) -> None:
        if self.max_rps is not None and (
            isinstance(self.max_rps, bool)
            or not isinstance(self.max_rps, (int, float))
            or not self.max_rps > 0
            or math.isinf(self.max_rps)
        ):
            raise ConfigError(f"max_rps must be a positive number or None, got {self.max_rps!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ConfigError(f"burst must be an integer >= 1, got {self.burst!r}")
        for name in ("coalesce", "max_pause"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 <= value < math.inf
            ):
                raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")


# -- pure: the request budget ----------------------------------------------------------------
class Budget:
    """A token bucket of ``rate`` requests per second (``burst`` at once) and a pause.

    :meth:`take` reserves one request and returns how long to wait before sending it (tokens
    may go negative: later requests queue behind earlier ones in order). :meth:`pause` records
    a 429's Retry-After: the hub sends no check before it ends (launches and cancels are not
    held: a run_timeout's cancel must not wait for a pause). Pure: ``now`` is passed in."""

    def __init__(self, rate: float | None = None, burst: int = 10) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last: float | None = None
        self.paused_until: float | None = None

    def _refill(self, now: float) -> None:
        if self.rate is None:
            return
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now

    def paused(self, now: float) -> float:
        """Seconds left of a pause (0 when not paused)."""
        if self.paused_until is None or now >= self.paused_until:
            return 0.0
        return self.paused_until - now

    def take(self, now: float) -> float:
        """Reserve one request; the seconds to wait before sending it (the rate's turn)."""
        if self.rate is None:
            return 0.0
        self._refill(now)
        self.tokens -= 1.0
        return -self.tokens / self.rate if self.tokens < 0 else 0.0

    def pause(self, now: float, seconds: float) -> bool:
        """Hold the hub's checks until ``now + seconds``; True when that extends the pause."""
        until = now + max(0.0, seconds)
        if self.paused_until is not None and until <= self.paused_until:
            return False
        self.paused_until = until
        return True


# -- pure: which checks to send now --------------------------------------------------------------
@dataclasses.dataclass
class _Entry:
    ref: RunRef
    group: Hashable | None = ()
    """Which batch it may share (the provider's ``batch_key``); None: always checked alone."""
    due: float | None = None
    """When the wait's next check falls due (None: it is busy elsewhere or out in a batch)."""
    earliest: float | None = None
    """The earliest it may be checked to share a batch (a sleeper pulled forward)."""
    asleep: bool = False
    """In a poll sleep (True) or asking for a check now (False)."""
    in_batch: bool = False
    held: bool = False
    """A check held back (asleep until ``due``) for others of its group to share its batch."""
    deadline: float = math.inf
    """The request deadline of the check it asks for or waits on (inf: none)."""
    version: int = 0
    """Bumped on every change, so the heaps' older items for it are known stale."""


class Plan:
    """The due set of every wait of one hub (pure: each call is given ``now``).

    A wait is in one of four places: asleep until its next check (:meth:`sleep`), asking for a
    check (:meth:`want_check`), out in a batch (:meth:`batches` put it there), or busy elsewhere
    (a join, a single check, a cancel: :meth:`busy`). A wait asking for a check or out in a
    batch has a deadline; :meth:`expired` hands back those past it (a paused hub or a slow
    batch never holds a wait past its deadline).

    Due times and deadlines are kept in heaps (items made stale by a later change are skipped
    when met), so a tick costs about the waits it touches, not every wait of the hub: 10,000
    waits are scheduled at a fraction of a millisecond a tick."""

    def __init__(self, max_batch: int = 1, coalesce: float = 1.0, fraction: float = 0.5) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.coalesce = coalesce
        self.fraction = fraction
        self.entries: dict[int, _Entry] = {}
        self._sleepers: list[tuple[float, int, int]] = []
        """(due, version, key) of sleeping waits."""
        self._deadlines: list[tuple[float, int, int]] = []
        """(deadline, version, key) of waits asking for a check or out in a batch."""
        self._wanted: dict[int, None] = {}
        """Waits asking for a check (not yet in a batch), in the order they asked."""
        self._held: dict[Hashable, dict[int, None]] = {}
        """Held checks (:meth:`hold`) by group, in the order they were held."""

    # -- where each wait is --------------------------------------------------------------------
    def add(self, key: int, ref: RunRef, group: Hashable | None = ()) -> None:
        self.entries[key] = _Entry(ref, group if self.max_batch > 1 else None)

    def remove(self, key: int) -> None:
        entry = self.entries.pop(key, None)
        self._wanted.pop(key, None)
        if entry is not None and entry.held:
            self._unhold(key, entry)

    def _unhold(self, key: int, entry: _Entry) -> None:
        entry.held = False
        held = self._held.get(entry.group)
        if held is not None:
            held.pop(key, None)
            if not held:
                del self._held[entry.group]

    def _change(self, key: int) -> _Entry:
        entry = self.entries[key]
        entry.version += 1
        self._wanted.pop(key, None)
        if entry.held:
            self._unhold(key, entry)
        return entry

    def sleep(self, key: int, now: float, seconds: float) -> None:
        entry = self._change(key)
        seconds = max(0.0, seconds)
        entry.due = now + seconds
        slack = min(self.coalesce, self.fraction * seconds) if self.max_batch > 1 else 0.0
        entry.earliest = entry.due - slack
        entry.asleep, entry.in_batch, entry.deadline = True, False, math.inf
        heapq.heappush(self._sleepers, (entry.due, entry.version, key))

    def hold(self, key: int, now: float, seconds: float) -> None:
        """A check asked for that may wait up to ``seconds`` for others of its group to share
        its batch (a wait's first check: waits that start one after another would each go
        alone). Kept like a sleeper that may be pulled forward at once: it is woken when
        ``seconds`` pass, when a batch of its group goes anyway (to fill its free places), or
        as soon as its group holds a full batch. The caller then asks for the check
        (:meth:`want_check`). Without a batch form (or a group), nothing is held."""
        entry = self.entries[key]
        if self.max_batch == 1 or entry.group is None or seconds <= 0:
            seconds = 0.0
        self.sleep(key, now, seconds)
        entry.earliest = now
        if seconds > 0:
            entry.held = True
            self._held.setdefault(entry.group, {})[key] = None

    def want_check(self, key: int, now: float, deadline: float | None = None) -> None:
        entry = self._change(key)
        entry.due = entry.earliest = now
        entry.asleep, entry.in_batch = False, False
        entry.deadline = math.inf if deadline is None else deadline
        self._wanted[key] = None
        if entry.deadline != math.inf:
            heapq.heappush(self._deadlines, (entry.deadline, entry.version, key))

    def busy(self, key: int) -> None:
        if key in self.entries:
            entry = self._change(key)
            entry.due = entry.earliest = None
            entry.asleep, entry.in_batch, entry.deadline = False, False, math.inf

    def in_batch(self, key: int) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry.in_batch

    # -- heaps ------------------------------------------------------------------------------
    def _current(self, item: tuple[float, int, int], asleep: bool) -> _Entry | None:
        entry = self.entries.get(item[2])
        if entry is None or entry.version != item[1]:
            return None
        if asleep:
            return entry if entry.asleep else None
        return entry if (entry.in_batch or item[2] in self._wanted) else None

    def _top(self, heap: list[tuple[float, int, int]], asleep: bool) -> float | None:
        while heap:
            if self._current(heap[0], asleep) is not None:
                return heap[0][0]
            heapq.heappop(heap)
        return None

    # -- decisions -----------------------------------------------------------------------------
    def wake(self, now: float, paused: bool = False) -> list[int]:
        """The sleepers to wake now: each one due, and, when checks go out now anyway, those
        that may be pulled forward into the free places of their group's last batch (soonest
        due first)."""
        woken: list[int] = []
        heap = self._sleepers
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            entry = self._current(item, asleep=True)
            if entry is not None:
                woken.append(item[2])
                if entry.held:
                    self._unhold(item[2], entry)
        if not paused:  # a full batch of held checks goes at once
            for held in list(self._held.values()):
                while len(held) >= self.max_batch:
                    for key in list(held)[: self.max_batch]:
                        entry = self.entries[key]
                        entry.asleep = False  # its heap item goes stale
                        self._unhold(key, entry)
                        woken.append(key)
        if paused or self.max_batch == 1 or not (woken or self._wanted):
            return self._woken(woken)
        counts: dict[Hashable, int] = {}
        for key in itertools.chain(woken, self._wanted):
            group = self.entries[key].group
            if group is not None:
                counts[group] = counts.get(group, 0) + 1
        places = {g: -n % self.max_batch for g, n in counts.items()}
        free = sum(places.values())
        aside: list[tuple[float, int, int]] = []
        while free and heap and heap[0][0] <= now + self.coalesce:
            item = heapq.heappop(heap)
            entry = self._current(item, asleep=True)
            if entry is None:
                continue  # stale
            assert entry.earliest is not None
            if entry.earliest <= now and places.get(entry.group, 0) > 0:
                places[entry.group] -= 1
                free -= 1
                woken.append(item[2])
            else:
                aside.append(item)
        for item in aside:
            heapq.heappush(heap, item)
        return self._woken(woken)

    def _woken(self, woken: list[int]) -> list[int]:
        for key in woken:
            entry = self.entries[key]
            entry.asleep = False
            if entry.held:
                self._unhold(key, entry)
        return woken

    def batches(self, now: float, paused: bool = False) -> list[list[int]]:
        """The checks to send now, in batches of at most ``max_batch`` runs of one group
        (oldest due first); a run of no group is a batch of its own. Each wait sent is out in
        a batch until :meth:`sleep`, :meth:`want_check` or :meth:`busy` says where it went.
        Nothing while the hub is paused."""
        if paused or not self._wanted:
            return []
        keys = sorted(self._wanted, key=lambda k: self.entries[k].due or 0.0)
        self._wanted.clear()
        groups: dict[Hashable, list[int]] = {}
        out: list[list[int]] = []
        for key in keys:
            entry = self.entries[key]
            entry.due = entry.earliest = None
            entry.in_batch = True  # same version: its deadline item stays current
            if entry.group is None:
                out.append([key])
            else:
                groups.setdefault(entry.group, []).append(key)
        for members in groups.values():
            out.extend(
                members[i : i + self.max_batch] for i in range(0, len(members), self.max_batch)
            )
        return out

    def expired(self, now: float) -> list[int]:
        """Waits asking for a check or out in a batch whose deadline has passed: made busy
        (the driver tells each its check ran out of time)."""
        keys: list[int] = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)
            if self._current(item, asleep=False) is not None:
                keys.append(item[2])
                self.busy(item[2])
        return keys

    def next_at(self, paused_until: float | None = None) -> float | None:
        """When the hub must look again: a sleeper's check falls due, a wait asks for a check
        (at once; while paused, when the pause ends), or a wait asking for a check or out in a
        batch reaches its deadline."""
        times = [
            t
            for t in (self._top(self._sleepers, True), self._top(self._deadlines, False))
            if t is not None
        ]
        if self._wanted:
            first = min(self.entries[k].due or 0.0 for k in self._wanted)
            times.append(max(first, paused_until) if paused_until is not None else first)
        return min(times) if times else None


# -- pure: what a batch answer means for each wait -----------------------------------------------
BatchAnswer = Mapping[RunRef, "RunStatus | RunbridgeError"]


@dataclasses.dataclass
class Outcome:
    """What to do after a batch: each answered wait's status, the waits to send again as one
    batch, those to check one by one, and how long to pause the hub (a 429)."""

    statuses: dict[int, RunStatus] = dataclasses.field(default_factory=dict)
    retry_batch: list[int] = dataclasses.field(default_factory=list)
    singles: list[int] = dataclasses.field(default_factory=list)
    pause: float | None = None


def split(
    members: Sequence[tuple[int, RunRef]],
    answer: BatchAnswer | RunbridgeError,
    attempt: int,
    *,
    max_pause: float = 120.0,
) -> Outcome:
    """Split a batch's answer (or failure) back to its waits.

    A 429 pauses the hub for its Retry-After (capped at ``max_pause``; DEFAULT_PAUSE when it
    names none) and sends the same batch again after it, without counting an attempt. Any other
    failure: the first time, the batch is sent again as a batch; after that, each run is checked
    alone. In an answer, a run's status goes to every wait on it; a run missing from it, or
    answered with an error of its own, is checked alone."""
    out = Outcome()
    keys = [key for key, _ in members]
    if isinstance(answer, RunbridgeError):
        if isinstance(answer, RateLimited):
            retry_after = answer.retry_after
            if not isinstance(retry_after, (int, float)) or not retry_after > 0:
                retry_after = DEFAULT_PAUSE
            out.pause = min(float(retry_after), max_pause)
            out.retry_batch = keys
        elif attempt <= 1:
            out.retry_batch = keys
        else:
            out.singles = keys
        return out
    for key, ref in members:
        value = answer.get(ref)
        if isinstance(value, RunStatus):
            out.statuses[key] = value
        else:
            out.singles.append(key)
    return out


# -- the async driver -----------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class _Wait:
    key: int
    ctx: FlowContext
    state: WaitState
    steps: Any
    future: asyncio.Future[RunStatus]
    context: contextvars.Context
    """The caller's context: the wait is stepped, and its requests run, in it (an
    orchestrator's run logger, log context and the like follow each wait's events)."""
    task: asyncio.Future[Any] | None = None
    """The single check, join, cancel or inbox sleep under way for it."""
    step: Any = None
    checks: int = 0
    """Checks sent for it so far (single or batched)."""
    held: bool = False
    """Its check is held in the plan (:meth:`Plan.hold`) for others to share its batch."""


class Hub:
    """Runs every wait of one :class:`~runbridge.core.client.AsyncRunClient` in one event loop.

    Made by the client (one per event loop); ``AsyncRunClient.wait`` calls :meth:`wait`."""

    def __init__(self, client: AsyncRunClient, clock: Callable[[], float]) -> None:
        self.client = client
        self.clock = clock
        provider = client.provider
        self.batching = provider.max_batch > 1
        self.plan = Plan(provider.max_batch, client.hub_options.coalesce)
        self.hold = client.hub_options.coalesce
        """The longest a wait's first check is held for others to share its batch."""
        self.budget = client.budget
        self._waits: dict[int, _Wait] = {}
        self._ids = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._soon = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self.batches_sent = 0
        """Batch requests sent (retries included), for tests and benchmarks."""
        self.batched_checks = 0
        """Runs checked in those batches (a run in a retried batch counts twice)."""
        self.singles_sent = 0
        """Checks sent one run at a time."""
        self.singles: dict[str, int] = {}
        """Those single checks by why they went alone: ``alone`` (no other check of its group
        due), ``first`` (a wait's first check, alone), ``no_group`` (the provider batches no
        check of this run, or has no batch form), ``fallback`` (its batch failed twice),
        ``missing`` (absent from a batch answer, or answered with an error of its own)."""
        self.largest_batch = 0

    # -- entry point -------------------------------------------------------------------------
    async def wait(self, ctx: FlowContext, state: WaitState) -> RunStatus:
        loop = asyncio.get_running_loop()
        steps = wait_steps(
            state, ctx.clock, ctx.wall, ctx.rand, ctx.emit, ctx.retry.max_retry_after
        )
        key = next(self._ids)
        wait = _Wait(key, ctx, state, steps, loop.create_future(), contextvars.copy_context())
        self._waits[key] = wait
        self.plan.add(key, state.ref, self.client.provider.batch_key(state.ref))
        try:
            self._advance(wait, None, None)
            return await wait.future
        finally:
            task = self._drop(wait)
            if task is not None:  # its request's slot is given back before this returns
                await asyncio.wait({task})

    def _drop(self, wait: _Wait) -> asyncio.Future[Any] | None:
        """Forget a wait that ended or was cancelled; its step under way is cancelled."""
        self._waits.pop(wait.key, None)
        self.plan.remove(wait.key)
        task, wait.task = wait.task, None
        wait.steps.close()
        wait.ctx.deadline = None
        if task is not None and not task.done():
            task.cancel()
            return task
        return None

    # -- stepping one wait -------------------------------------------------------------------
    def _advance(self, wait: _Wait, value: Any, error: BaseException | None) -> None:
        """Send ``value`` (or throw ``error``) into the wait and dispatch its next step, in the
        wait's own context (whichever callback or tick calls this)."""
        if wait.key not in self._waits or wait.future.done():
            return
        wait.context.run(self._step, wait, value, error)

    def _step(self, wait: _Wait, value: Any, error: BaseException | None) -> None:
        wait.task = None
        wait.held = False
        try:
            step = wait.steps.throw(error) if error is not None else wait.steps.send(value)
        except StopIteration as stop:
            wait.future.set_result(stop.value)
            self._forget(wait)
            return
        except BaseException as exc:  # the wait's own outcome (WaitTimeout, a 404...)
            wait.future.set_exception(exc)
            self._forget(wait)
            return
        wait.step = step
        state, ctx, key = wait.state, wait.ctx, wait.key
        if isinstance(step, Sleep):
            inbox = self.client.inbox
            if step.wake is not None and inbox is not None:
                self.plan.busy(key)
                self._spawn(wait, inbox.sleep_async(step.wake, step.seconds))
            else:
                self.plan.sleep(key, self.clock(), step.seconds)
        elif isinstance(step, Check):
            self._want_check(wait)
        elif isinstance(step, Join):
            if self.client.long_poll_free():
                self.plan.busy(key)
                ctx.deadline = state.request_deadline()
                self._spawn(wait, self.client._drive(ctx._join(step)))
            else:  # no blocking call free: a (batched) check now, then the poll schedule
                self.plan.want_check(key, self.clock(), state.request_deadline())
        elif isinstance(step, Cancel):
            self.plan.busy(key)
            ctx.deadline = state.deadline  # bounded by the grace deadline, not run_timeout
            self._spawn(wait, self.client._drive(ctx.cancel(step.ref, retry_unreadable=True)))
        else:  # pragma: no cover - wait_steps yields nothing else
            raise AssertionError(f"unexpected wait step {step!r}")
        self._kick()

    def _want_check(self, wait: _Wait) -> None:
        """File the wait's check with the plan. A wait's first check (waits start one after
        another: each would go alone) is held up to ``hold`` seconds for others of its group,
        less than half its first poll interval and never past its deadline; a check of a
        batch going anyway, or a full batch of held checks, goes at once."""
        now, deadline = self.clock(), wait.state.request_deadline()
        if self.batching and wait.checks == 0:
            hold = min(self.hold, 0.5 * wait.state.options.poll.first)
            if deadline is not None:
                hold = min(hold, deadline - FINAL_CHECK - now)
            if hold > 0:
                wait.held = True
                self.plan.hold(wait.key, now, hold)
                return
        self.plan.want_check(wait.key, now, deadline)

    def _forget(self, wait: _Wait) -> None:
        self.plan.remove(wait.key)
        self._waits.pop(wait.key, None)

    def _spawn(self, wait: _Wait, work: Any) -> None:
        task = asyncio.ensure_future(work)
        wait.task = task

        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled() or wait.task is not task:
                return
            exc = task.exception()
            if exc is None:
                self._advance(wait, task.result(), None)
            elif isinstance(exc, RunbridgeError):
                self._advance(wait, None, exc)
            else:  # a bug or a cancellation from outside: the wait fails with it
                if not wait.future.done():
                    wait.future.set_exception(exc)
                self._forget(wait)

        task.add_done_callback(done)

    # -- the scheduler's clock -------------------------------------------------------------------
    def _kick(self) -> None:
        if not self._soon:
            self._soon = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self._soon = False
        now = self.clock()
        plan = self.plan
        for key in plan.expired(now):
            wait = self._waits.get(key)
            if wait is not None:
                self._advance(wait, None, self._late(wait))
        paused = self.budget.paused(now) > 0
        for key in plan.wake(now, paused):
            wait = self._waits.get(key)
            if wait is None:
                continue
            if wait.held:  # a held check goes now (with the batch it fills, or its group's)
                wait.held = False
                plan.want_check(key, now, wait.state.request_deadline())
            else:
                self._advance(wait, None, None)  # the sleep ends (early, to share a batch)
        now = self.clock()
        for keys in plan.batches(now, paused):
            waits = [self._waits[k] for k in keys if k in self._waits]
            if len(waits) == 1 or not self.batching:
                for wait in waits:
                    if not self.batching or plan.entries[wait.key].group is None:
                        why = "no_group"
                    else:
                        why = "alone" if wait.checks else "first"
                    self._single(wait, why)
            elif waits:
                self._track(self._batch(waits, 1))
        self._schedule(plan.next_at(self.budget.paused_until if paused else None))

    def _schedule(self, at: float | None) -> None:
        if self._timer is not None and self._timer_at == at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if at is None:
            return
        self._timer_at = at
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, at - self.clock()), self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = self._timer_at = None
        self._tick()

    def _track(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _late(wait: _Wait) -> TransportError:
        return TransportError(
            f"{wait.state.ref.platform}: the check of run {wait.state.ref.id} ran out of time "
            "(not answered before the wait's deadline: a slow batch, or the hub paused by a 429)",
            sent=None,
            timeout=True,
        )

    # -- performing checks ---------------------------------------------------------------------
    def _single(self, wait: _Wait, why: str) -> None:
        """One run's check with the wait's own retries and deadline (as a wait alone has);
        while the hub is paused, sent when the pause ends (or, at the latest, at the wait's
        deadline, where it is not sent and the wait times out)."""
        self.plan.busy(wait.key)
        self.singles_sent += 1
        self.singles[why] = self.singles.get(why, 0) + 1
        wait.checks += 1
        deadline = wait.ctx.deadline = wait.state.request_deadline()
        now = self.clock()
        hold = self.budget.paused(now)
        if deadline is not None:
            hold = min(hold, max(0.0, deadline - now))
        ctx, ref = wait.ctx, wait.state.ref
        self._spawn(wait, self._after(hold, lambda: self.client._drive(ctx.get(ref))))

    @staticmethod
    async def _after(seconds: float, make: Callable[[], Awaitable[Any]]) -> Any:
        if seconds > 0:
            await asyncio.sleep(seconds)
        return await make()

    def _members(self, waits: list[_Wait]) -> list[_Wait]:
        """The waits still out in this batch: not ended, cancelled or past their deadline."""
        return [w for w in waits if self._waits.get(w.key) is w and self.plan.in_batch(w.key)]

    async def _batch(self, waits: list[_Wait], attempt: int) -> None:
        waits = self._members(waits)
        if not waits:
            return
        refs = list(dict.fromkeys(w.state.ref for w in waits))
        self.batches_sent += 1
        self.batched_checks += len(refs)
        self.largest_batch = max(self.largest_batch, len(refs))
        for member in waits:
            member.checks += 1
        # one try per request: the hub decides about retries (once as a batch, then singles)
        ctx = FlowContext(
            self.client.provider,
            RetryPolicy.none(),
            clock=self.clock,
            hooks=self.client.hooks,
            request_timeout=self.client.request_timeout,
        )
        answer: BatchAnswer | RunbridgeError
        try:
            answer = await self.client._drive(ctx.run(self.client.provider.status_many(refs)))
        except RunbridgeError as exc:
            answer = exc
        # waits that ended, were cancelled or ran out of time meanwhile are no longer members
        members = [(w.key, w.state.ref) for w in self._members(waits)]
        outcome = split(members, answer, attempt, max_pause=self.client.hub_options.max_pause)
        now = self.clock()
        if outcome.pause is not None:
            self.client.throttled(now, outcome.pause)
        if isinstance(answer, RunbridgeError) and outcome.pause is None:
            what = "sending it again" if outcome.retry_batch else "checking its runs one by one"
            logger.warning(
                "%s: a batch check of %d runs failed (%s); %s",
                self.client.platform,
                len(refs),
                answer,
                what,
            )
        for key, status in outcome.statuses.items():
            wait = self._waits.get(key)
            if wait is not None:
                self.plan.busy(key)
                self._advance(wait, status, None)
        again = set(outcome.retry_batch)
        retry = [w for w in waits if w.key in again]
        if retry:
            if outcome.pause is not None:  # after the pause, with whatever else is due then
                for wait in retry:
                    self.plan.want_check(wait.key, now, wait.state.request_deadline())
            else:  # after the retry policy's first pause (a 5xx is often gone by then)
                await asyncio.sleep(self.client.retry.first)
                await self._batch(retry, attempt + 1)
                return
        why = "fallback" if isinstance(answer, RunbridgeError) else "missing"
        for key in outcome.singles:
            wait = self._waits.get(key)
            if wait is not None:
                self._single(wait, why)
        self._kick()
