"""The Prefect operations, written once (async) for the blocks and the tasks.

``launch`` (re-attach or launch through core's planner, with the records kept in Prefect's
result store; link artifact), ``wait`` (wait; cancel the run when the wait is killed; status
artifact), ``get`` and ``cancel``. Sync entry points run these through
:func:`runbridge.prefect_blocks._bridge.run_sync`; nothing here is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import uuid
from collections.abc import AsyncIterator, Collection, Coroutine, Mapping
from typing import Any

import anyio

from ..core.client import AsyncRunClient
from ..core.errors import NotSupported, WaitTimeout
from ..core.flows import Event
from ..core.models import RunRef, RunStatus
from ..core.planner import Execution, LaunchRecord, Started
from ..core.schedule import PollSchedule
from ..core.shared import DEFAULT_LINGER, shared_async_client
from ..core.states import DEFAULT_SUCCESS, RunState
from . import _runtime
from ._bridge import is_bridge_loop
from .credentials import RunbridgeCredentials

__all__ = ["TaskRunCancelled", "WaitPolicy", "cancel", "get", "launch", "shared_client", "wait"]

CANCEL_TIMEOUT = 60.0
"""How long cancelling the external run may take when a wait is killed."""


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How a wait behaves; the blocks' and tasks' options, in one place."""

    wait_timeout: float | None = None
    """Stop waiting after this many seconds (``WaitTimeout``); the run keeps going."""
    run_timeout: float | None = None
    """Cancel the run once it is this old; it ends TIMED_OUT."""
    poll: PollSchedule | None = None
    """None: the credentials' poll schedule."""
    error_window: float | None = None
    """Seconds of transient errors tolerated; None: the credentials' ``error_window``."""
    success: Collection[RunState] = DEFAULT_SUCCESS
    cancel_on_kill: bool | None = True
    """Cancel the run when the wait is killed (flow run cancelled, task or flow timeout, Ctrl-C).
    None: only if this process launched it."""
    artifacts: bool = True


@contextlib.asynccontextmanager
async def shared_client(credentials: RunbridgeCredentials) -> AsyncIterator[AsyncRunClient]:
    """The shared ``AsyncRunClient`` of these credentials on the running event loop (core's
    ``shared_async_client``). On runbridge's own loop, where the synchronous entry points run,
    it lives as long as the process; on an async flow's loop it closes ``DEFAULT_LINGER``
    seconds after its last user, or when the loop ends."""
    linger = None if is_bridge_loop(asyncio.get_running_loop()) else DEFAULT_LINGER
    async with shared_async_client(credentials.client_config(), linger=linger) as client:
        yield client


class _Listener:
    """Turns one operation's client events (``on_event=``) into run-logger lines."""

    def __init__(self, *, artifacts: bool = False) -> None:
        self.log = _runtime.logger()
        self.last_raw: str | None = None
        self.artifacts = artifacts
        """Make the run's link artifact when its URL becomes known (``url_known``)."""
        self.pending: list[asyncio.Task[None]] = []

    def __call__(self, event: Event) -> None:
        status = event.status
        if event.kind == "state_changed" and status is not None:
            if status.raw_state != self.last_raw:
                self.last_raw = status.raw_state
                self.log.info("%s", status.summary())
        elif event.kind == "retry":
            self.log.warning(
                "%s: %s; retrying in %.1f s", event.platform, event.error, event.delay or 0.0
            )
        elif event.kind == "transient_error":
            self.log.warning(
                "%s: checking run %s failed: %s (tolerated; the wait goes on)",
                event.platform,
                event.ref.id if event.ref is not None else "?",
                event.error,
            )
        elif event.kind == "unknown_state" and status is not None:
            self.log.warning(
                "%s reported state %r, which runbridge does not know; treating it as running",
                event.platform,
                status.raw_state,
            )
        elif event.kind == "url_known" and status is not None and status.url:
            self._link(event.ref or status.ref, status)

    def _link(self, ref: RunRef, status: RunStatus) -> None:
        """Make the link artifact of ``ref``'s page, once per URL: a URL that appears after the
        launch (a W&B Launch queue item that got its run) or changes gets a new link."""
        if not self.artifacts or _runtime.linked.get(ref) == status.url:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # hooks run on the client's loop; nothing to attach to otherwise
            return
        previous = _runtime.linked.get(ref)
        _runtime.linked[ref] = str(status.url)
        if previous is not None:
            self.log.info("%s run %s now has its page at %s", ref.platform, ref.id, status.url)
        # in this operation's context (the run context the artifact attaches to)
        self.pending.append(loop.create_task(_runtime.link_artifact(status)))

    async def flush(self) -> None:
        """Let the link artifacts this operation started be made."""
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def discard(self) -> None:
        """The operation was killed: do not hold it up for artifacts."""
        pending, self.pending = self.pending, []
        for task in pending:
            task.cancel()


async def launch(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    key: str | None = None,
    relaunch_failed: bool = False,
    success: Collection[RunState] = DEFAULT_SUCCESS,
    artifacts: bool = True,
    cancel_on_kill: bool = True,
) -> Started:
    """Launch a run, or re-attach to the one an earlier attempt of this task launched (core's
    planner decides, from the records this task keeps in Prefect's result store).

    ``key``: the task's identity; by default derived from the Prefect run (the flow run, the
    task's stable key and what is launched: ``_runtime.derive_key``), so a task retry and a
    restarted flow run find what earlier attempts launched. Returns what ``client.start`` came to (its ``status`` is None when the
    first status read hit a transient error: the wait will tell). Once the run exists, being
    killed (cancelled flow run, timeout) cancels it, as in :func:`wait`.
    """
    listener = _Listener(artifacts=artifacts)
    log = listener.log
    store_key: str | None = key
    if key is None:
        identity = _runtime.current_identity()
        if identity is not None:
            launch_text = _runtime.launch_fingerprint(
                credentials.platform, credentials.base_url, params
            )
            key = store_key = _runtime.derive_key(identity, launch_text)
        else:  # outside any Prefect run and no key: nothing to re-attach to, nothing to keep
            key = f"runbridge-{uuid.uuid4().hex}"
    history: list[Execution] = []
    if store_key is not None:
        records = await _runtime.read_records(store_key)
        if records:
            history = [Execution(records)]
    runs: list[RunRef] = []

    async def save(record: LaunchRecord) -> None:
        if record.ref is not None:
            runs.append(record.ref)
            _runtime.mark_launched(record.ref, store_key, record.key)
        if store_key is not None:
            await _runtime.save_record(store_key, record)

    async with shared_client(credentials) as client:
        try:
            started = await client.start(
                params,
                key=key,
                history=history,
                save=save,
                relaunch_failed=relaunch_failed,
                success=success,
                on_event=listener,
            )
            ref, status = started.ref, started.status
            url = f": {status.url}" if status is not None and status.url else ""
            why = client.redact(started.why)  # made from the key, which the user may choose
            if started.reattached:
                log.info("Re-attached to %s run %s%s (%s)", ref.platform, ref.id, url, why)
            elif history:  # a new run replacing an earlier attempt's: say why
                log.info("Launched %s run %s%s (%s)", ref.platform, ref.id, url, why)
            else:
                log.info("Launched %s run %s%s", ref.platform, ref.id, url)
            if status is not None:
                listener.last_raw = status.raw_state
            # the link artifact: made by the url_known event, now or once the wait sees the URL
            await listener.flush()
        except BaseException as exc:
            if not _killed(exc):
                await listener.flush()
                raise
            listener.discard()
            if cancel_on_kill and runs:
                await _cancel_killed(client, runs[-1], log, exc)
            raise
    return started


def _killed(exc: BaseException) -> bool:
    """Was the operation stopped from outside? An ``Exception`` is the operation's own failure
    (the run keeps going); anything else (asyncio cancellation, Prefect's TerminationSignal,
    KeyboardInterrupt) means a cancelled flow run, a task or flow timeout, a killed process."""
    return not isinstance(exc, Exception)


async def get(credentials: RunbridgeCredentials, ref: RunRef) -> RunStatus:
    async with shared_client(credentials) as client:
        return await client.get(ref, on_event=_Listener())


async def cancel(credentials: RunbridgeCredentials, ref: RunRef) -> None:
    async with shared_client(credentials) as client:
        await client.cancel(ref, on_event=_Listener())
    _runtime.logger().info("Cancelled %s run %s", ref.platform, ref.id)


async def wait(credentials: RunbridgeCredentials, ref: RunRef, policy: WaitPolicy) -> RunStatus:
    """Wait for the run to end; return its terminal status (a failed run is returned, not
    raised). If the wait is killed, cancel the run (per ``policy.cancel_on_kill``) and re-raise.
    """
    listener = _Listener(artifacts=policy.artifacts)
    log = listener.log
    cancel_on_kill = (
        _runtime.launched_here(ref) if policy.cancel_on_kill is None else policy.cancel_on_kill
    )
    async with shared_client(credentials) as client:
        try:
            status = await _unless_cancelled(
                client.wait(
                    ref,
                    policy.wait_timeout,
                    run_timeout=policy.run_timeout,
                    poll=policy.poll,
                    error_window=policy.error_window,
                    on_event=listener,
                ),
                _runtime.task_cancel_event(),
            )
        except WaitTimeout as exc:
            log.warning("%s", exc)
            await listener.flush()
            raise
        except BaseException as exc:
            if not _killed(exc):
                await listener.flush()
                raise
            listener.discard()
            if cancel_on_kill:
                await _cancel_killed(client, ref, log, exc)
            raise
    await listener.flush()
    if status.cancelled_by_runbridge:  # run_timeout: a retry launches a new run
        await _runtime.record_cancelled(ref)
    succeeded = status.succeeded(policy.success)
    (log.info if succeeded else log.error)("Finished: %s", status.summary())
    if policy.artifacts:
        await _runtime.status_artifact(status, succeeded)
    return status


class TaskRunCancelled(BaseException):
    """Prefect cancelled the submitted task run a wait is in (its flow run was cancelled).

    A ``BaseException``, as a kill is (the wait cancels its external run), but not asyncio's
    ``CancelledError``: the tasks catch it and end the task run Cancelled."""


CANCEL_EVENT_POLL = 0.2
"""How often a wait in a submitted task checks whether Prefect cancelled the task run."""


async def _unless_cancelled(
    wait: Coroutine[Any, Any, RunStatus], event: threading.Event | None
) -> RunStatus:
    """Await ``wait``; raise ``TaskRunCancelled`` if ``event`` (Prefect's cancel event of a
    submitted task run) is set first.

    A task submitted to Prefect's thread pool runs in a worker thread, where a flow-run
    cancellation does not reach it: Prefect only sets the task run's cancel event (and then
    waits for the thread). Watching the event lets that wait end, and cancel its run.
    """
    if event is None:
        return await wait
    task = asyncio.ensure_future(wait)
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=CANCEL_EVENT_POLL)
            if not task.done() and event.is_set():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise TaskRunCancelled(
                    "the flow run was cancelled, so Prefect cancelled this task run"
                )
        return task.result()
    finally:
        if not task.done():
            task.cancel()


async def _cancel_killed(client: AsyncRunClient, ref: RunRef, log: Any, why: BaseException) -> None:
    """Cancel ``ref`` although this task is being cancelled: shielded from the cancellation
    (anyio's scopes and asyncio's own), bounded by ``CANCEL_TIMEOUT``. Once cancelled, the
    run is recorded as such, so a retry of the task launches a new run."""

    if isinstance(why, TaskRunCancelled):
        stopped = "The flow run was cancelled"
    else:
        stopped = (
            f"Stopped from outside ({type(why).__name__}: a cancelled flow run, a timeout or an "
            "interrupt)"
        )

    async def cancel_it() -> None:
        try:
            with anyio.fail_after(CANCEL_TIMEOUT):
                await client.cancel(ref, on_event=_Listener())
        except NotSupported:
            log.warning(
                "%s; %s runs cannot be cancelled over its API, so run %s keeps going",
                stopped,
                ref.platform,
                ref.id,
            )
            return
        except Exception as exc:  # e.g. the run ended meanwhile (409), or the timeout
            log.error("%s; cancelling %s run %s failed: %s", stopped, ref.platform, ref.id, exc)
            return
        log.warning("%s: cancelled %s run %s", stopped, ref.platform, ref.id)
        try:
            await _runtime.record_cancelled(ref)
        except Exception as exc:
            log.warning("runbridge could not record that run %s was cancelled: %s", ref.id, exc)

    with anyio.CancelScope(shield=True):
        cleanup = asyncio.ensure_future(cancel_it())
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                continue
