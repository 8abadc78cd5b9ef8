"""The Prefect operations, written once (async) for the blocks and the tasks.

``launch`` (re-attach or launch, record, link artifact), ``wait`` (wait; cancel the run when
the wait is killed; status artifact) and ``cancel``. Sync entry points run these through
:func:`runbridge.prefect_blocks._bridge.run_sync`; nothing here is written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import Collection, Coroutine, Iterator, Mapping
from typing import Any

import anyio

from ..core.client import AsyncRunClient
from ..core.errors import NotSupported, WaitTimeout
from ..core.flows import Event
from ..core.models import RunRef, RunStatus
from ..core.schedule import PollSchedule
from ..core.states import DEFAULT_SUCCESS, RunState
from . import _runtime
from ._shared import current_listener, shared_client
from .credentials import RunbridgeCredentials

__all__ = ["WaitPolicy", "cancel", "get", "launch", "wait"]

CANCEL_TIMEOUT = 60.0
"""How long cancelling the external run may take when a wait is killed."""


@dataclasses.dataclass(frozen=True)
class WaitPolicy:
    """How a wait behaves; the blocks' and tasks' options, in one place."""

    timeout: float | None = None
    """Stop waiting after this many seconds (``WaitTimeout``); the run keeps going."""
    run_timeout: float | None = None
    """Cancel the run once it is this old; it ends TIMED_OUT."""
    poll: PollSchedule | None = None
    success: Collection[RunState] = DEFAULT_SUCCESS
    cancel_on_kill: bool | None = True
    """Cancel the run when the wait is killed (flow run cancelled, task or flow timeout, Ctrl-C).
    None: only if this process launched it."""
    artifacts: bool = True


class _Listener:
    """Turns one operation's client events into run-logger lines."""

    def __init__(self) -> None:
        self.log = _runtime.logger()
        self.last_raw: str | None = None
        self.reattached = False

    def __call__(self, event: Event) -> None:
        status = event.status
        if event.kind == "reattached":
            self.reattached = True
        elif event.kind == "state_changed" and status is not None:
            if status.raw_state != self.last_raw:
                self.last_raw = status.raw_state
                self.log.info("%s", status.summary())
        elif event.kind in ("retry", "transient_error"):
            self.log.warning(
                "%s: %s; retrying in %.1f s", event.platform, event.error, event.delay or 0.0
            )
        elif event.kind == "unknown_state" and status is not None:
            self.log.warning(
                "%s reported state %r, which runbridge does not know; treating it as running",
                event.platform,
                status.raw_state,
            )


@contextlib.contextmanager
def _listening(listener: _Listener) -> Iterator[None]:
    token = current_listener.set(listener)
    try:
        yield
    finally:
        current_listener.reset(token)


async def launch(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    key: str | None = None,
    relaunch_on_retry: bool = False,
    success: Collection[RunState] = DEFAULT_SUCCESS,
    artifacts: bool = True,
    cancel_on_kill: bool = True,
) -> RunStatus:
    """Launch a run, or re-attach to the one an earlier attempt of this run launched.

    Returns the run's first status (its URL, where the platform has one). Once the run exists,
    being killed (cancelled flow run, timeout) cancels it, as in :func:`wait`.
    """
    listener = _Listener()
    log = listener.log
    identity = _runtime.current_identity()
    if key is None and identity is not None:
        key = _runtime.derive_key(identity)
    with _listening(listener):
        async with shared_client(credentials) as client:
            recorded = await _runtime.read_record(key) if key is not None else None
            launch_key = key
            if recorded is not None and relaunch_on_retry and identity is not None:
                status = await client.get(recorded)
                if status.is_terminal and not status.succeeded(success):
                    log.info("%s; relaunching (relaunch_on_retry)", status.summary())
                    launch_key = f"{key}-attempt{identity.run_count}"
                    recorded = None
            ref = recorded or await client.launch(params, key=launch_key)
            try:
                _runtime.mark_launched(ref)
                if recorded is None and key is not None:
                    await _runtime.write_record(key, ref)  # first: a retry must find the run
                status = await client.get(ref)
                log.info(
                    "%s %s run %s%s",
                    "Launched" if not (recorded or listener.reattached) else "Re-attached to",
                    ref.platform,
                    ref.id,
                    f": {status.url}" if status.url else "",
                )
                listener.last_raw = status.raw_state
                if artifacts:
                    await _runtime.link_artifact(status)
            except BaseException as exc:
                if _killed(exc) and cancel_on_kill:
                    await _cancel_killed(client, ref, log, exc)
                raise
    return status


def _killed(exc: BaseException) -> bool:
    """Was the operation stopped from outside? An ``Exception`` is the operation's own failure
    (the run keeps going); anything else (asyncio cancellation, Prefect's TerminationSignal,
    KeyboardInterrupt) means a cancelled flow run, a task or flow timeout, a killed process."""
    return not isinstance(exc, Exception)


async def get(credentials: RunbridgeCredentials, ref: RunRef) -> RunStatus:
    async with shared_client(credentials) as client:
        return await client.get(ref)


async def cancel(credentials: RunbridgeCredentials, ref: RunRef) -> None:
    async with shared_client(credentials) as client:
        await client.cancel(ref)
    _runtime.logger().info("Cancelled %s run %s", ref.platform, ref.id)


async def wait(credentials: RunbridgeCredentials, ref: RunRef, policy: WaitPolicy) -> RunStatus:
    """Wait for the run to end; return its terminal status (a failed run is returned, not
    raised). If the wait is killed, cancel the run (per ``policy.cancel_on_kill``) and re-raise.
    """
    listener = _Listener()
    log = listener.log
    cancel_on_kill = (
        _runtime.launched_here(ref) if policy.cancel_on_kill is None else policy.cancel_on_kill
    )
    with _listening(listener):
        async with shared_client(credentials) as client:
            try:
                status = await _unless_cancelled(
                    client.wait(
                        ref, policy.timeout, run_timeout=policy.run_timeout, poll=policy.poll
                    ),
                    _runtime.task_cancel_event(),
                )
            except WaitTimeout as exc:
                log.warning("%s", exc)
                raise
            except BaseException as exc:
                if _killed(exc) and cancel_on_kill:
                    await _cancel_killed(client, ref, log, exc)
                raise
    succeeded = status.succeeded(policy.success)
    (log.info if succeeded else log.error)("Finished: %s", status.summary())
    if policy.artifacts:
        await _runtime.status_artifact(status, succeeded)
    return status


CANCEL_EVENT_POLL = 0.2
"""How often a wait in a submitted task checks whether Prefect cancelled the task run."""


async def _unless_cancelled(
    wait: Coroutine[Any, Any, RunStatus], event: threading.Event | None
) -> RunStatus:
    """Await ``wait``; raise ``CancelledError`` if ``event`` (Prefect's cancel event of a
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
                raise asyncio.CancelledError("the task run was cancelled")
        return task.result()
    finally:
        if not task.done():
            task.cancel()


async def _cancel_killed(client: AsyncRunClient, ref: RunRef, log: Any, why: BaseException) -> None:
    """Cancel ``ref`` although this task is being cancelled: shielded from the cancellation
    (anyio's scopes and asyncio's own), bounded by ``CANCEL_TIMEOUT``."""

    stopped = (
        f"Stopped from outside ({type(why).__name__}: a cancelled flow run, a timeout or an "
        "interrupt)"
    )

    async def cancel_it() -> None:
        try:
            with anyio.fail_after(CANCEL_TIMEOUT):
                await client.cancel(ref)
        except NotSupported:
            log.warning(
                "%s; %s runs cannot be cancelled over its API, so run %s keeps going",
                stopped,
                ref.platform,
                ref.id,
            )
        except Exception as exc:  # e.g. the run ended meanwhile (409), or the timeout
            log.error("%s; cancelling %s run %s failed: %s", stopped, ref.platform, ref.id, exc)
        else:
            log.warning("%s: cancelled %s run %s", stopped, ref.platform, ref.id)

    with anyio.CancelScope(shield=True):
        cleanup = asyncio.ensure_future(cancel_it())
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                continue
