"""``RunTrigger``: wait for an external run in the triggerer.

Its kwargs are plain JSON (the connection id, never a token; the run reference; the poll
schedule; absolute deadlines; the cancel policy). Its one event is a dict that carries
``"ref"`` (``RunRef.to_dict()``) and one of:

* ``{"kind": "done", "status": RunStatus.to_dict(), "cancelled": bool}``: the run ended
  (``cancelled`` is the status's ``cancelled_by_runbridge``: core cancelled it because it
  outlived ``run_timeout``);
* ``{"kind": "wait_timeout", "status": ..., "message": ...}``: ``wait_deadline`` passed, the
  run keeps going;
* ``{"kind": "task_timeout", "status": ..., "message": ...}``: the task's own
  ``execution_timeout`` is about to expire: the task resumes in time to cancel the run, which
  Airflow's deferral timeout would not do (it calls no ``on_kill``);
* ``{"kind": "error", "error": <class name>, "message": ...}``: the wait failed (the token
  was refused, the run does not exist, the platform stayed unreachable past the error window,
  the connection could not be read or holds a bad setting).

Triggers share one :class:`~runbridge.AsyncRunClient` per client configuration and triggerer
event loop (core's ``shared_async_client``), so one connection pool serves thousands of waits
instead of one HTTP session per poll. Each connection is read at most once a minute per event
loop (:func:`connection_config`), in a worker thread, so neither a slow secrets backend nor
the parsing blocks the triggerer's event loop, and a trigger waits only for a read of its own
connection, never another's. The wait uses the platform's blocking endpoint where it has one
(LangGraph's join), as core's ``wait`` does, and the connection's ``error_window`` and
``poll`` unless the operator set its own.

``on_kill`` (Airflow 3.3 calls it when the task is marked failed or success or cleared while
deferred, and also when the trigger moves to another triggerer) decides with
:func:`decide_on_kill`, from two questions to the triggerer's supervisor, each bounded; the
work runs in a task of its own, so Airflow cancelling the trigger again while ``on_kill`` runs
(it does, at every sync, about once a second) does not cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..core.config import ClientConfig
from ..core.errors import ConfigError, RunbridgeError, WaitTimeout
from ..core.models import RunRef, RunStatus

__all__ = [
    "KillDecision",
    "KillFacts",
    "RunTrigger",
    "connection_config",
    "decide_on_kill",
    "human_duration",
    "wait_timeout_message",
]

SETTINGS_TTL = 60.0
"""Seconds a connection's configuration is reused before being read again (token rotation)."""
ASK_TIMEOUT = 40.0
"""Seconds ``on_kill`` waits for the triggerer's supervisor to answer one question. It answers
within a second or two unless it is stuck in its database: with SQLite, a real deployment's
supervisor answered after 30 s, while it also sent no re-cancel (its sync waits too). Asking
again would only queue a second request behind the first, so a question that times out is
not asked again (one that fails at once is, once)."""
CANCEL_TIMEOUT = 10.0
"""Seconds the cancel request of ``on_kill`` may take, its retries included."""
KILL_BUDGET = 25.0
"""Seconds ``on_kill`` holds on to see its work through, below Airflow's ``[triggerer]
on_kill_timeout`` (30 by default); past it the work goes on without it."""

SETTLE_AFTER_DEFERRAL = 5.0
"""Seconds after the deferral before the trigger hands its event back. Airflow 3.3's scheduler
fails a deferred task when the trigger fires before it has processed the executor's report of
the deferring worker's exit ("state mismatch": apache/airflow#67287, #72716, #71580; see
docs/airflow.md): a run that ends within a second or two of the deferral met it in 4 of 10 runs
of the real deployment under load. Holding the event costs only runs that end that soon, and
those at most this long."""
T = TypeVar("T")


# -- the connection, read off the event loop -------------------------------------------------
@dataclasses.dataclass
class _Read:
    started: float
    task: asyncio.Task[ClientConfig]
    gate: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    """Held for one loop turn by each trigger leaving the read (see connection_config)."""


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Read]] = (
    weakref.WeakKeyDictionary()
)


def read_connection_config(runbridge_conn_id: str) -> ClientConfig:
    """Read and check the connection (blocking: :func:`connection_config` runs it in a worker
    thread). Anything that goes wrong is a ``ConfigError`` naming the connection."""
    from ..core import shared  # noqa: F401  (the client modules: imported off the event loop)
    from .hooks import RunbridgeHook

    try:
        config = RunbridgeHook(runbridge_conn_id).client_config()
        config.fingerprint()  # the shared client's key: a value it cannot digest fails here
        return config
    except RunbridgeError:
        raise  # ConfigError names the connection and the field, never the token
    except Exception as exc:
        # not our error: Airflow's (the connection does not exist, a secrets backend failed)
        # or an unforeseen bad value; its text comes from Airflow, which masks the password
        raise ConfigError(
            f"connection {runbridge_conn_id!r} could not be read: {type(exc).__name__}: {exc}"
        ) from None


async def connection_config(runbridge_conn_id: str) -> ClientConfig:
    """The connection's :class:`ClientConfig`, read at most every ``SETTINGS_TTL`` seconds in
    the running event loop, in a worker thread. Triggers of one connection share one read;
    a read of one connection never waits for another's. A failed read is not kept: the next
    trigger reads again."""
    loop = asyncio.get_running_loop()
    reads = _LOOPS.get(loop)
    if reads is None:
        reads = _LOOPS[loop] = {}
    read = reads.get(runbridge_conn_id)
    now = time.monotonic()
    if read is None or (read.task.done() and (now - read.started > SETTINGS_TTL or _failed(read))):
        task = loop.create_task(asyncio.to_thread(read_connection_config, runbridge_conn_id))
        task.add_done_callback(_retrieve)
        read = reads[runbridge_conn_id] = _Read(now, task)
    # shielded: a trigger cancelled while it waits must not cancel the read others wait for
    config = await asyncio.shield(read.task)
    # Hundreds of triggers waiting for one read would all resume in the same loop turn and
    # make their first requests back to back: a stretch of a second or more in which nothing
    # else runs. They pass this gate one per turn instead (a turn each, nothing awaited).
    async with read.gate:
        await asyncio.sleep(0)
    return config


def _failed(read: _Read) -> bool:
    return read.task.cancelled() or read.task.exception() is not None


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a shared read's failure as seen (its awaiters got it), so asyncio does not warn."""
    if not task.cancelled():
        task.exception()


# -- what on_kill decides, and from what -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class KillFacts:
    """What ``on_kill`` knows when it decides.

    :param cancel_on_kill: the operator's ``cancel_on_kill``.
    :param ended: this trigger saw the run end.
    :param for_task: the triggerer runs this trigger for a task instance (None otherwise:
        ``on_kill`` was called by hand, or by a harness without a task).
    :param state: the task instance's state now (``"deferred"``, ``"failed"``, None for
        cleared...), or :data:`UNKNOWN` when the supervisor did not answer in time.
    :param waiting_on: when the task is deferred: the run its current try announced (XCom
        ``run_ref``; None when that try announced none), or :data:`UNKNOWN`.
    :param run: this trigger's run (``RunRef.to_string()``).
    """

    cancel_on_kill: bool
    ended: bool
    for_task: bool
    state: str | None
    waiting_on: str | None
    run: str


UNKNOWN = "<unknown>"
"""A fact the triggerer's supervisor did not give in time."""


@dataclasses.dataclass(frozen=True)
class KillDecision:
    cancel: bool
    why: str
    warn: bool = False
    """The decision was made without a fact it needed: worth a warning in the log."""


def decide_on_kill(facts: KillFacts) -> KillDecision:
    """Whether ``on_kill`` cancels the run: only when no deferral of the task still waits for
    it. Airflow 3.3 calls ``on_kill`` with the same message for a user's action (mark failed,
    mark success, clear) and for a trigger that moved to another triggerer; what tells them
    apart is whether the task instance is still deferred *on this run*. After a clear, the
    new try may already be deferred again, on a run of its own (a cleared task launches anew),
    so the state alone would say "moved"; the run the current try announced (XCom ``run_ref``,
    which Airflow clears when a new try starts) settles it. A fact that could not be read
    leaves the run going: cancelling a run a live task still waits for (a trigger that
    moved) cannot be undone, and the design forbids it; the warning names the run."""
    if not facts.cancel_on_kill:
        return KillDecision(False, "cancel_on_kill=False")
    if facts.ended:
        return KillDecision(False, "the run already ended")
    if not facts.for_task:
        return KillDecision(True, "the trigger was killed (no task instance to ask)")
    if facts.state == UNKNOWN:
        return KillDecision(
            False,
            "the task's state could not be read, so this may be a trigger that moved to "
            "another triggerer; left going (cancel it by hand if the task was stopped)",
            warn=True,
        )
    if facts.state != "deferred":
        now = "cleared" if facts.state is None else facts.state
        return KillDecision(True, f"the task was stopped while waiting for it (now {now})")
    if facts.waiting_on == UNKNOWN:
        return KillDecision(
            False,
            "the task is deferred, and which run it waits for could not be read; left going "
            "(cancel it by hand if the task was cleared)",
            warn=True,
        )
    if facts.waiting_on == facts.run:
        return KillDecision(
            False, "the task is still deferred on this run (the trigger moved to another triggerer)"
        )
    return KillDecision(True, "the task was cleared: its new try is deferred on another run")


# -- messages --------------------------------------------------------------------------------
def human_duration(seconds: float) -> str:
    """``0.5 s``, ``15 s``, ``2 min 5 s``, ``1 h 30 min``: a duration for people."""
    if seconds < 60:
        return f"{round(seconds, 1):g} s" if seconds < 10 else f"{round(seconds)} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def wait_timeout_message(ref: RunRef, last: RunStatus | None, wait_timeout: float | None) -> str:
    """The one ``wait_timeout`` failure text, in the worker and after a deferral: counted from
    the wait's start (before the deferral), not from when the trigger started."""
    state = last.state.value if last is not None else "in an unknown state"
    limit = f" (wait_timeout {human_duration(wait_timeout)})" if wait_timeout is not None else ""
    return (
        f"{ref.platform} run {ref.id} still {state} when the wait ran out{limit}; "
        "the run keeps going, and a retry re-attaches to it"
    )


# -- the trigger -----------------------------------------------------------------------------
_KILLS: set[asyncio.Task[None]] = set()
"""on_kill work in progress (a strong reference, so the loop does not drop a task)."""


class RunTrigger(BaseTrigger):
    """Wait until the run ends, a deadline passes, or the wait fails; yield one event.

    :param runbridge_conn_id: the ``runbridge`` connection (the token is read from it in the
        triggerer).
    :param ref: the run, as ``RunRef.to_dict()`` or ``RunRef.to_string()``.
    :param poll: the poll schedule, as ``PollSchedule`` fields (``first``, ``factor``, ``cap``,
        ``jitter``); None for the connection's.
    :param wait_deadline: epoch seconds after which to stop waiting (the run keeps going).
    :param task_deadline: epoch seconds at which to hand the task back before its
        ``execution_timeout`` (it then cancels the run).
    :param run_timeout: cancel the run once it is this many seconds old.
    :param cancel_on_kill: cancel the run when the task is killed while deferred (marked
        failed or success, cleared).
    :param error_window: seconds of transient errors tolerated while waiting (the
        connection's when None).
    :param wait_timeout: the operator's ``wait_timeout`` in seconds, for the message when
        ``wait_deadline`` passes (the wait began before the deferral).
    :param deferred_at: epoch seconds of the deferral: the event is held until
        :data:`SETTLE_AFTER_DEFERRAL` seconds after it (None: not held).
    """

    def __init__(
        self,
        runbridge_conn_id: str,
        ref: Mapping[str, Any] | str,
        poll: Mapping[str, Any] | None = None,
        wait_deadline: float | None = None,
        task_deadline: float | None = None,
        run_timeout: float | None = None,
        cancel_on_kill: bool = False,
        error_window: float | None = None,
        wait_timeout: float | None = None,
        deferred_at: float | None = None,
    ) -> None:
        super().__init__()
        self.runbridge_conn_id = runbridge_conn_id
        self.ref = RunRef.coerce(ref)
        self.poll = dict(poll) if poll else None
        self.wait_deadline = wait_deadline
        self.task_deadline = task_deadline
        self.run_timeout = run_timeout
        self.cancel_on_kill = cancel_on_kill
        self.error_window = error_window
        self.wait_timeout = wait_timeout
        self.deferred_at = deferred_at
        self._ended = False

    def __repr__(self) -> str:
        return f"<RunTrigger {self.ref} conn={self.runbridge_conn_id}>"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "runbridge_conn_id": self.runbridge_conn_id,
                "ref": self.ref.to_dict(),
                "poll": self.poll,
                "wait_deadline": self.wait_deadline,
                "task_deadline": self.task_deadline,
                "run_timeout": self.run_timeout,
                "cancel_on_kill": self.cancel_on_kill,
                "error_window": self.error_window,
                "wait_timeout": self.wait_timeout,
                "deferred_at": self.deferred_at,
            },
        )

    async def _settle(self) -> None:
        """Hold the event until :data:`SETTLE_AFTER_DEFERRAL` seconds after the deferral."""
        if self.deferred_at is not None:
            hold = self.deferred_at + SETTLE_AFTER_DEFERRAL - time.time()
            if hold > 0:
                await asyncio.sleep(min(hold, SETTLE_AFTER_DEFERRAL))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadlines = [d for d in (self.wait_deadline, self.task_deadline) if d is not None]
        deadline = min(deadlines) if deadlines else None
        ref = self.ref.to_dict()
        try:
            config = await connection_config(self.runbridge_conn_id)
            # imported by the connection read, in its thread: these cost the loop nothing
            from ..core.schedule import PollSchedule
            from ..core.shared import shared_async_client

            try:
                poll = PollSchedule(**self.poll) if self.poll else None
            except (TypeError, ValueError) as exc:  # kwargs written by hand
                raise ConfigError(f"RunTrigger poll {self.poll!r}: {exc}") from None
            async with shared_async_client(config) as client:
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                status = await client.wait(
                    self.ref,
                    timeout,
                    run_timeout=self.run_timeout,
                    poll=poll,
                    error_window=self.error_window,
                )
        except WaitTimeout as exc:
            last = exc.last_status.to_dict() if exc.last_status else None
            if self.task_deadline is not None and self.task_deadline == deadline:
                kind, message = (
                    "task_timeout",
                    (
                        f"{self.ref.platform} run {self.ref.id} still going when the task's "
                        "execution_timeout came"
                    ),
                )
            else:
                kind = "wait_timeout"
                message = wait_timeout_message(self.ref, exc.last_status, self.wait_timeout)
            await self._settle()
            yield TriggerEvent({"kind": kind, "ref": ref, "status": last, "message": message})
            return
        except RunbridgeError as exc:
            await self._settle()
            yield TriggerEvent(
                {"kind": "error", "ref": ref, "error": type(exc).__name__, "message": str(exc)}
            )
            return
        self._ended = True
        await self._settle()
        yield TriggerEvent(
            {
                "kind": "done",
                "ref": ref,
                "status": status.to_dict(),
                "cancelled": status.cancelled_by_runbridge,
            }
        )

    async def on_kill(self) -> None:
        """The task was marked failed or success, or cleared, while deferred, or the trigger
        moved to another triggerer: cancel the run named in this trigger's kwargs (never "the
        latest run") unless a deferral of the task still waits for it (:func:`decide_on_kill`).

        The decision and the cancel run in a task of their own, which Airflow's repeated
        cancellation of the trigger (once per triggerer sync while ``on_kill`` runs) cannot
        reach; ``on_kill`` holds on to it for up to ``KILL_BUDGET`` seconds."""
        if not self.cancel_on_kill or self._ended:
            return
        loop = asyncio.get_running_loop()
        work = loop.create_task(self._kill(), name=f"runbridge on_kill {self.ref}")
        _KILLS.add(work)
        work.add_done_callback(_KILLS.discard)
        await _outlast_cancels(work, KILL_BUDGET)

    async def _kill(self) -> None:
        try:
            decision = decide_on_kill(await self._kill_facts())
            if not decision.cancel:
                level = self.log.warning if decision.warn else self.log.info
                level("Not cancelling %s: %s", self.ref, decision.why)
                return
            from ..core.shared import shared_async_client

            config = await connection_config(self.runbridge_conn_id)
            async with shared_async_client(config) as client:
                await asyncio.wait_for(client.cancel(self.ref), CANCEL_TIMEOUT)
        except RunbridgeError as exc:
            self.log.warning("Could not cancel %s: %s", self.ref, exc)
        except asyncio.TimeoutError:
            self.log.warning(
                "Could not cancel %s: no answer within %s", self.ref, human_duration(CANCEL_TIMEOUT)
            )
        except Exception as exc:  # on_kill must not raise: Airflow only logs it
            self.log.warning("Could not cancel %s: %s: %s", self.ref, type(exc).__name__, exc)
        else:
            self.log.info("Cancelled %s: %s", self.ref, decision.why)

    async def _kill_facts(self) -> KillFacts:
        """Ask the triggerer's supervisor what :func:`decide_on_kill` needs: the task
        instance's state, then, only if it is deferred, the run its current try announced."""
        ti = getattr(self, "task_instance", None)
        facts = KillFacts(
            cancel_on_kill=self.cancel_on_kill,
            ended=self._ended,
            for_task=ti is not None,
            state=UNKNOWN,
            waiting_on=UNKNOWN,
            run=self.ref.to_string(),
        )
        if ti is None:
            return facts
        try:
            state = await _ask(lambda: _task_state(ti))
        except Exception as exc:
            self.log.warning("Could not read the task's state: %s: %s", type(exc).__name__, exc)
            return facts
        facts = dataclasses.replace(facts, state=state)
        if state != "deferred":
            return facts
        try:
            waiting_on = await _ask(lambda: _announced_run(ti))
        except Exception as exc:
            self.log.warning("Could not read the task's run_ref: %s: %s", type(exc).__name__, exc)
            return facts
        return dataclasses.replace(facts, waiting_on=waiting_on)


async def _ask(question: Callable[[], Awaitable[T]], attempts: int = 2) -> T:
    """One question to the supervisor, bounded by ``ASK_TIMEOUT``; asked again only after a
    failed answer, not after no answer."""
    for attempt in range(attempts):
        try:
            return await asyncio.wait_for(question(), ASK_TIMEOUT)
        except asyncio.TimeoutError:
            raise
        except Exception:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


BATCH_WINDOW = 0.05
"""Seconds ``on_kill`` questions about one DAG's tasks are gathered to be asked as one
``GetTaskStates`` (a user marks many tasks at once; in the SQLite deployment, five questions
at once kept the supervisor busy for 30 s)."""


@dataclasses.dataclass
class _Batch:
    dag_id: str
    answer: asyncio.Future[dict[str, Any]]
    tis: list[Any] = dataclasses.field(default_factory=list)


_ASKING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Batch]] = (
    weakref.WeakKeyDictionary()
)
_ASKS: set[asyncio.Task[None]] = set()
"""Batched questions in flight (a strong reference, as for ``_KILLS``)."""


async def _task_state(ti: Any) -> str | None:
    """The task instance's state now, as Airflow's value (``"deferred"``; None: no state),
    asked together with the other questions about its DAG that come within ``BATCH_WINDOW``."""
    loop = asyncio.get_running_loop()
    batches = _ASKING.get(loop)
    if batches is None:
        batches = _ASKING[loop] = {}
    batch = batches.get(ti.dag_id)
    if batch is None:
        batch = batches[ti.dag_id] = _Batch(ti.dag_id, loop.create_future())
        batch.answer.add_done_callback(_retrieve)
        asking = loop.create_task(_ask_states(batches, batch))
        _ASKS.add(asking)
        asking.add_done_callback(_ASKS.discard)
    batch.tis.append(ti)
    task_states = await asyncio.shield(batch.answer)
    mapped = ti.map_index is not None and ti.map_index >= 0
    name = f"{ti.task_id}_{ti.map_index}" if mapped else ti.task_id
    states = task_states.get(ti.run_id, {})
    if name not in states:
        return "absent"  # the task instance (or its DAG run) was deleted
    state = states[name]
    return None if state is None else str(getattr(state, "value", state))


async def _ask_states(batches: dict[str, _Batch], batch: _Batch) -> None:
    """Ask the supervisor for the states of ``batch``'s tasks in one ``GetTaskStates``."""
    from airflow.sdk.execution_time import task_runner
    from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

    try:
        await asyncio.sleep(BATCH_WINDOW)
        if batches.get(batch.dag_id) is batch:
            del batches[batch.dag_id]  # later questions make a batch of their own
        indexes = {ti.map_index for ti in batch.tis}
        question = GetTaskStates(
            dag_id=batch.dag_id,
            task_ids=sorted({ti.task_id for ti in batch.tis}),
            run_ids=sorted({ti.run_id for ti in batch.tis}),
            map_index=indexes.pop() if len(indexes) == 1 else None,
        )
        response = await asyncio.wait_for(task_runner.SUPERVISOR_COMMS.asend(question), ASK_TIMEOUT)
        if not isinstance(response, TaskStatesResult):
            raise RuntimeError(f"unexpected answer {type(response).__name__}")
        batch.answer.set_result(response.task_states)
    except BaseException as exc:  # the askers see it (a loop shutting down included)
        if not batch.answer.done():
            batch.answer.set_exception(
                exc if isinstance(exc, Exception) else RuntimeError("cancelled")
            )
        if not isinstance(exc, Exception):
            raise


async def _announced_run(ti: Any) -> str | None:
    """The run the task's current try announced (XCom ``run_ref``; Airflow clears a task's
    XComs when a new try starts, not when a deferred task resumes)."""
    from airflow.sdk.execution_time.xcom import XCom

    from .links import RUN_REF_KEY

    value = await XCom.aget_one(
        key=RUN_REF_KEY,
        dag_id=ti.dag_id,
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_index=ti.map_index,
    )
    return None if value is None else str(value)


async def _outlast_cancels(work: asyncio.Task[None], budget: float) -> None:
    """Wait for ``work`` up to ``budget`` seconds, through cancellations: Airflow 3.3 cancels
    a trigger again at every sync while its ``on_kill`` runs (the trigger id stays in the
    supervisor's ``cancelling_triggers`` until the trigger ends), which used to cut ``on_kill``
    short mid-request. Past the budget, ``work`` goes on without us."""
    loop = asyncio.get_running_loop()
    end = loop.time() + budget
    while not work.done():
        left = end - loop.time()
        if left <= 0:
            return
        try:
            await asyncio.wait_for(asyncio.shield(work), left)
        except asyncio.TimeoutError:
            return
        except asyncio.CancelledError:
            task = asyncio.current_task()
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+
            if uncancel is not None:
                uncancel()
            continue
    with contextlib.suppress(BaseException):
        work.result()
