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
  was refused, the run does not exist, the platform stayed unreachable past the error window).

Triggers share one :class:`~runbridge.AsyncRunClient` per client configuration and triggerer
event loop (core's ``shared_async_client``), so one connection pool serves thousands of waits
instead of one HTTP session per poll; each connection is read at most once a minute per event
loop (:func:`connection_config`), so a rotated token is picked up within a minute. The wait
uses the platform's blocking endpoint where it has one (LangGraph's join), as core's ``wait``
does, and the connection's ``error_window`` and ``poll`` unless the operator set its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..core.config import ClientConfig
from ..core.errors import RunbridgeError, WaitTimeout
from ..core.models import RunRef
from ..core.schedule import PollSchedule
from ..core.shared import shared_async_client
from .hooks import RunbridgeHook

__all__ = ["RunTrigger", "connection_config"]

SETTINGS_TTL = 60.0
"""Seconds a connection's configuration is reused before being read again (token rotation)."""


@dataclasses.dataclass
class _Configs:
    read: dict[str, tuple[float, ClientConfig]] = dataclasses.field(default_factory=dict)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Configs] = weakref.WeakKeyDictionary()


async def connection_config(runbridge_conn_id: str) -> ClientConfig:
    """The connection's :class:`ClientConfig`, read at most every ``SETTINGS_TTL`` seconds in
    the running event loop (thousands of triggers of one connection read it once)."""
    loop = asyncio.get_running_loop()
    configs = _LOOPS.get(loop)
    if configs is None:
        configs = _LOOPS[loop] = _Configs()
    async with configs.lock:
        cached = configs.read.get(runbridge_conn_id)
        if cached is not None and time.monotonic() - cached[0] <= SETTINGS_TTL:
            return cached[1]
        config = await RunbridgeHook(runbridge_conn_id).aclient_config()
        configs.read[runbridge_conn_id] = (time.monotonic(), config)
        return config


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
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadlines = [d for d in (self.wait_deadline, self.task_deadline) if d is not None]
        deadline = min(deadlines) if deadlines else None
        ref = self.ref.to_dict()
        try:
            config = await connection_config(self.runbridge_conn_id)
            async with shared_async_client(config) as client:
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                status = await client.wait(
                    self.ref,
                    timeout,
                    run_timeout=self.run_timeout,
                    poll=PollSchedule(**self.poll) if self.poll else None,
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
                kind, message = "wait_timeout", str(exc)
            yield TriggerEvent({"kind": kind, "ref": ref, "status": last, "message": message})
            return
        except RunbridgeError as exc:
            yield TriggerEvent(
                {"kind": "error", "ref": ref, "error": type(exc).__name__, "message": str(exc)}
            )
            return
        self._ended = True
        yield TriggerEvent(
            {
                "kind": "done",
                "ref": ref,
                "status": status.to_dict(),
                "cancelled": status.cancelled_by_runbridge,
            }
        )

    async def on_kill(self) -> None:
        """The task was marked failed or success, or cleared, while deferred: cancel the run
        named in this trigger's kwargs (never "the latest run"), unless the task is still
        deferred, which means this trigger only moved to another triggerer."""
        if not self.cancel_on_kill or self._ended:
            return
        if await self._task_still_deferred():
            self.log.info("Not cancelling %s: the task is still deferred (trigger moved)", self.ref)
            return
        try:
            config = await connection_config(self.runbridge_conn_id)
            async with shared_async_client(config) as client:
                await client.cancel(self.ref)
        except RunbridgeError as exc:
            self.log.warning("Could not cancel %s: %s", self.ref, exc)
        else:
            self.log.info("Cancelled %s: the task was stopped while waiting for it", self.ref)

    async def _task_still_deferred(self) -> bool:
        """Whether the task instance is still DEFERRED (asked of the triggerer's supervisor).
        Unknown (no task instance, an error) counts as "not deferred": cancel."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return False
        try:
            from airflow.sdk.execution_time import task_runner
            from airflow.sdk.execution_time.comms import GetTaskStates, TaskStatesResult

            comms = task_runner.SUPERVISOR_COMMS
            response = await comms.asend(
                GetTaskStates(
                    dag_id=ti.dag_id,
                    task_ids=[ti.task_id],
                    run_ids=[ti.run_id],
                    map_index=ti.map_index,
                )
            )
        except Exception as exc:
            self.log.warning("Could not read the task's state (%s); cancelling", exc)
            return False
        if not isinstance(response, TaskStatesResult):
            return False
        name = (
            ti.task_id
            if ti.map_index is None or ti.map_index < 0
            else f"{ti.task_id}_{ti.map_index}"
        )
        state = response.task_states.get(ti.run_id, {}).get(name)
        return str(getattr(state, "value", state)) == "deferred"
