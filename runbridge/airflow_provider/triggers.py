"""``RunTrigger``: wait for an external run in the triggerer.

Its kwargs are plain JSON (the connection id, never a token; the run reference; the poll
schedule; absolute deadlines; the cancel policy). Its one event is a dict that carries
``"ref"`` (``RunRef.to_dict()``) and one of:

* ``{"kind": "done", "status": RunStatus.to_dict(), "cancelled": bool}``: the run ended
  (``cancelled``: runbridge cancelled it because it outlived ``run_timeout``);
* ``{"kind": "wait_timeout", "status": ..., "message": ...}``: ``wait_deadline`` passed, the
  run keeps going;
* ``{"kind": "task_timeout", "status": ..., "message": ...}``: the task's own
  ``execution_timeout`` is about to expire: the task resumes in time to cancel the run, which
  Airflow's deferral timeout would not do (it calls no ``on_kill``);
* ``{"kind": "error", "error": <class name>, "message": ...}``: the wait failed (the token
  was refused, the run does not exist, the platform stayed unreachable past the error window).

Every trigger of one connection in one triggerer event loop shares one
:class:`~runbridge.AsyncRunClient`, so one connection pool (and, as core grows, one
scheduler) serves thousands of waits instead of one HTTP session per poll. The wait uses the
platform's blocking endpoint where it has one (LangGraph's join), as core's ``wait`` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ..core.errors import RunbridgeError, WaitTimeout
from ..core.models import RunRef
from ..core.schedule import PollSchedule
from .hooks import ConnectionSettings, RunbridgeHook

if TYPE_CHECKING:
    from ..core.client import AsyncRunClient
    from ..core.flows import Event

__all__ = ["RunTrigger", "shared_client"]

SETTINGS_TTL = 60.0
"""Seconds a connection's settings are reused before being read again (token rotation)."""


@dataclasses.dataclass
class _Shared:
    client: AsyncRunClient
    users: int = 0
    cancelled: set[RunRef] = dataclasses.field(default_factory=set)
    """Runs this client cancelled for ``run_timeout`` (from core's ``cancel_requested`` events)."""

    def on_event(self, event: Event) -> None:
        if event.kind == "cancel_requested" and event.ref is not None:
            self.cancelled.add(event.ref)


@dataclasses.dataclass
class _LoopClients:
    clients: dict[tuple[str, str], _Shared] = dataclasses.field(default_factory=dict)
    settings: dict[str, tuple[float, ConnectionSettings]] = dataclasses.field(default_factory=dict)
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


_LOOPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


class shared_client:
    """``async with shared_client(conn_id) as (client, shared):`` the connection's shared
    :class:`~runbridge.AsyncRunClient` in the running event loop (never reused across loops).

    A client whose connection changed (another URL, token or options) is replaced; the old
    one is closed when its last user leaves.
    """

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._key: tuple[str, str] | None = None
        self._loop_clients: _LoopClients | None = None

    async def __aenter__(self) -> tuple[AsyncRunClient, _Shared]:
        loop = asyncio.get_running_loop()
        clients = _LOOPS.get(loop)
        if clients is None:
            clients = _LOOPS[loop] = _LoopClients()
        async with clients.lock:
            cached = clients.settings.get(self.conn_id)
            if cached is None or time.monotonic() - cached[0] > SETTINGS_TTL:
                settings = await RunbridgeHook(self.conn_id).asettings()
                clients.settings[self.conn_id] = (time.monotonic(), settings)
            else:
                settings = cached[1]
            key = (self.conn_id, settings.fingerprint())
            shared = clients.clients.get(key)
            if shared is None:
                shared = _Shared(settings.async_client())
                shared.client.hooks.append(shared.on_event)
                clients.clients[key] = shared
                await _close_stale(clients, self.conn_id, key)
            shared.users += 1
        self._key, self._loop_clients = key, clients
        return shared.client, shared

    async def __aexit__(self, *exc_info: object) -> None:
        clients, key = self._loop_clients, self._key
        if clients is None or key is None:
            return
        async with clients.lock:
            shared = clients.clients.get(key)
            if shared is None:
                return
            shared.users -= 1
            cached = clients.settings.get(self.conn_id)
            current = cached is not None and cached[1].fingerprint() == key[1]
            if shared.users <= 0 and not current:
                del clients.clients[key]
                await shared.client.aclose()


async def _close_stale(clients: _LoopClients, conn_id: str, current: tuple[str, str]) -> None:
    for key, shared in list(clients.clients.items()):
        if key[0] == conn_id and key != current and shared.users <= 0:
            del clients.clients[key]
            await shared.client.aclose()


class RunTrigger(BaseTrigger):
    """Wait until the run ends, a deadline passes, or the wait fails; yield one event.

    :param conn_id: the ``runbridge`` connection (the token is read from it in the triggerer).
    :param ref: the run, as ``RunRef.to_dict()`` or ``RunRef.to_string()``.
    :param poll: the poll schedule, as ``PollSchedule`` fields (``first``, ``factor``, ``cap``,
        ``jitter``); None for core's default.
    :param wait_deadline: epoch seconds after which to stop waiting (the run keeps going).
    :param task_deadline: epoch seconds at which to hand the task back before its
        ``execution_timeout`` (it then cancels the run).
    :param run_timeout: cancel the run once it is this many seconds old.
    :param cancel_on_kill: cancel the run when the task is killed while deferred (marked
        failed or success, cleared).
    :param error_window: seconds of transient errors tolerated while waiting (core's default
        when None).
    """

    def __init__(
        self,
        conn_id: str,
        ref: Mapping[str, Any] | str,
        poll: Mapping[str, Any] | None = None,
        wait_deadline: float | None = None,
        task_deadline: float | None = None,
        run_timeout: float | None = None,
        cancel_on_kill: bool = False,
        error_window: float | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.ref = RunRef.coerce(ref)
        self.poll = dict(poll) if poll else None
        self.wait_deadline = wait_deadline
        self.task_deadline = task_deadline
        self.run_timeout = run_timeout
        self.cancel_on_kill = cancel_on_kill
        self.error_window = error_window
        self._ended = False

    def __repr__(self) -> str:
        return f"<RunTrigger {self.ref} conn={self.conn_id}>"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
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
            async with shared_client(self.conn_id) as (client, shared):
                timeout = None if deadline is None else max(0.0, deadline - time.time())
                try:
                    status = await client.wait(
                        self.ref,
                        timeout,
                        run_timeout=self.run_timeout,
                        poll=PollSchedule(**self.poll) if self.poll else None,
                        error_window=self.error_window,
                    )
                finally:
                    cancelled = self.ref in shared.cancelled
                    shared.cancelled.discard(self.ref)
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
            {"kind": "done", "ref": ref, "status": status.to_dict(), "cancelled": cancelled}
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
            async with shared_client(self.conn_id) as (client, _):
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
