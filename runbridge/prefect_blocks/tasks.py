"""Prefect tasks: ``launch_run``, ``wait_for_run``, ``launch_and_wait``.

Each is a real Prefect task (``.submit``, ``.map``, ``.with_options`` work) in a synchronous
form for sync flows and an ``a``-prefixed asynchronous form for async flows; both run the
same implementation (``_ops``). In sync flows, mapped or submitted tasks share one
connection pool per credentials; in async flows, gather the ``a`` forms
(``await asyncio.gather(*(alaunch_and_wait(...) for ...))``) for the same effect.

Defaults: no caching (a launch must never be answered from a cache), no retries unless asked
(with ``retries=``, a retry re-attaches to the run the first attempt launched, through
core's planner and records kept in Prefect's result store), and the tag
``runbridge`` (for a tag concurrency limit on external runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, cast

from prefect import task
from prefect.cache_policies import NO_CACHE

from ..core.config import seconds
from ..core.errors import ConfigError
from ..core.models import RunRef, RunStatus
from ..core.schedule import PollSchedule
from ..core.states import DEFAULT_SUCCESS, RunState, parse_states
from . import _ops
from ._bridge import run_sync
from .credentials import RunbridgeCredentials

__all__ = [
    "alaunch_and_wait",
    "alaunch_run",
    "await_for_run",
    "launch_and_wait",
    "launch_run",
    "wait_for_run",
]

TASK_DEFAULTS: dict[str, Any] = {"cache_policy": NO_CACHE, "tags": {"runbridge"}}

Seconds = float | timedelta
RefLike = RunRef | Mapping[str, Any] | str


def _policy(
    wait_timeout: Seconds | None,
    run_timeout: Seconds | None,
    poll: PollSchedule | float | None,
    error_window: Seconds | None,
    success: Iterable[RunState | str] | str | None,
    cancel_on_kill: bool | None,
    artifacts: bool,
) -> _ops.WaitPolicy:
    if isinstance(poll, (int, float)) and not isinstance(poll, bool):
        poll = PollSchedule.fixed(seconds(poll, "poll", positive=True) or 0.0)
    elif poll is not None and not isinstance(poll, PollSchedule):
        raise ConfigError(f"poll must be a number of seconds or a PollSchedule, got {poll!r}")
    return _ops.WaitPolicy(
        wait_timeout=seconds(wait_timeout, "wait_timeout"),
        run_timeout=seconds(run_timeout, "run_timeout"),
        poll=poll,
        error_window=seconds(error_window, "error_window"),
        success=DEFAULT_SUCCESS if success is None else parse_states(success),
        cancel_on_kill=cancel_on_kill,
        artifacts=artifacts,
    )


# -- the implementations (one each) -------------------------------------------------------------


async def _launch_run(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    key: str | None,
    create_artifacts: bool,
) -> RunRef:
    started = await _ops.launch(credentials, params, key=key, artifacts=create_artifacts)
    return started.ref


async def _wait_for_run(
    credentials: RunbridgeCredentials, ref: RefLike, policy: _ops.WaitPolicy, check: bool
) -> RunStatus:
    try:
        status = await _ops.wait(credentials, RunRef.coerce(ref), policy)
    except _ops.TaskRunCancelled as exc:
        return _cancelled(exc)
    return status.raise_for_state(policy.success) if check else status


async def _launch_and_wait(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    policy: _ops.WaitPolicy,
    relaunch_failed: bool,
) -> RunStatus:
    started = await _ops.launch(
        credentials,
        params,
        relaunch_failed=relaunch_failed,
        success=policy.success,
        artifacts=policy.artifacts,
        cancel_on_kill=policy.cancel_on_kill is not False,
    )
    try:
        status = await _ops.wait(credentials, started.ref, policy)
    except _ops.TaskRunCancelled as exc:
        return _cancelled(exc)
    return status.raise_for_state(policy.success)


def _cancelled(exc: _ops.TaskRunCancelled) -> RunStatus:
    """The task run's final state when Prefect cancelled it (its flow run was cancelled) while
    it waited in a worker thread: Cancelled, as Prefect's public way for a task to end in a state
    it chooses (returning the state), instead of a crash with a traceback. The wait has already
    cancelled the external run (``cancel_on_kill``)."""
    from prefect.states import Cancelled

    # a task may return a State (Prefect then takes it as the run's final state), not a RunStatus
    return cast(RunStatus, Cancelled(message=str(exc)))


# -- launch_run ----------------------------------------------------------------------------------


@task(name="launch_run", **TASK_DEFAULTS)
async def alaunch_run(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    key: str | None = None,
    create_artifacts: bool = True,
) -> RunRef:
    """Launch a run on the platform and return its ``RunRef`` (pass it to ``wait_for_run``).

    ``key``: the launch's identity; by default derived from this task run, so a retry of the
    task re-attaches to the run it launched. A link artifact to the run's page is created.
    """
    return await _launch_run(credentials, params, key, create_artifacts)


@task(name="launch_run", **TASK_DEFAULTS)
def launch_run(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    key: str | None = None,
    create_artifacts: bool = True,
) -> RunRef:
    """Launch a run on the platform and return its ``RunRef`` (pass it to ``wait_for_run``).

    ``key``: the launch's identity; by default derived from this task run, so a retry of the
    task re-attaches to the run it launched. A link artifact to the run's page is created.
    """
    return run_sync(_launch_run(credentials, params, key, create_artifacts))


# -- wait_for_run --------------------------------------------------------------------------------


@task(name="wait_for_run", **TASK_DEFAULTS)
async def await_for_run(
    credentials: RunbridgeCredentials,
    ref: RefLike,
    *,
    wait_timeout: Seconds | None = None,
    run_timeout: Seconds | None = None,
    poll: PollSchedule | float | None = None,
    error_window: Seconds | None = None,
    success: Iterable[RunState | str] | str | None = None,
    check: bool = True,
    cancel_on_kill: bool | None = None,
    create_artifacts: bool = True,
) -> RunStatus:
    """Wait for a run to end and return its final ``RunStatus``.

    ``wait_timeout``: stop waiting (``WaitTimeout``), the run keeps going; ``run_timeout``:
    cancel the run once it is that old. ``error_window``: seconds of transient errors
    tolerated (default: the credentials'). ``check``: fail the task with the platform's message unless
    the run ended in a ``success`` state (default SUCCEEDED). ``cancel_on_kill``: cancel the
    run if the wait is killed (flow run cancelled, timeout); by default only when this process
    launched it (a killed wait that cancels the run records it, so a retry launches anew).
    """
    policy = _policy(
        wait_timeout, run_timeout, poll, error_window, success, cancel_on_kill, create_artifacts
    )
    return await _wait_for_run(credentials, ref, policy, check)


@task(name="wait_for_run", **TASK_DEFAULTS)
def wait_for_run(
    credentials: RunbridgeCredentials,
    ref: RefLike,
    *,
    wait_timeout: Seconds | None = None,
    run_timeout: Seconds | None = None,
    poll: PollSchedule | float | None = None,
    error_window: Seconds | None = None,
    success: Iterable[RunState | str] | str | None = None,
    check: bool = True,
    cancel_on_kill: bool | None = None,
    create_artifacts: bool = True,
) -> RunStatus:
    """Wait for a run to end and return its final ``RunStatus``.

    ``wait_timeout``: stop waiting (``WaitTimeout``), the run keeps going; ``run_timeout``:
    cancel the run once it is that old. ``error_window``: seconds of transient errors
    tolerated (default: the credentials'). ``check``: fail the task with the platform's message unless
    the run ended in a ``success`` state (default SUCCEEDED). ``cancel_on_kill``: cancel the
    run if the wait is killed (flow run cancelled, timeout); by default only when this process
    launched it (a killed wait that cancels the run records it, so a retry launches anew).
    """
    policy = _policy(
        wait_timeout, run_timeout, poll, error_window, success, cancel_on_kill, create_artifacts
    )
    return run_sync(_wait_for_run(credentials, ref, policy, check))


# -- launch_and_wait -----------------------------------------------------------------------------


@task(name="launch_and_wait", **TASK_DEFAULTS)
async def alaunch_and_wait(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    wait_timeout: Seconds | None = None,
    run_timeout: Seconds | None = None,
    poll: PollSchedule | float | None = None,
    error_window: Seconds | None = None,
    success: Iterable[RunState | str] | str | None = None,
    cancel_on_kill: bool = True,
    relaunch_failed: bool = False,
    create_artifacts: bool = True,
) -> RunStatus:
    """Launch a run, wait for it to end, and return its final ``RunStatus``.

    Fails the task with the platform's message unless the run ended in a ``success`` state
    (default SUCCEEDED). A retry of this task re-attaches to the run it launched (and, with
    ``relaunch_failed``, launches anew if that run ended without success); a run runbridge
    cancelled (the task was killed, ``run_timeout``) is replaced by a new one. Killing the task
    (flow run cancelled, task or flow timeout) cancels the run unless ``cancel_on_kill=False``.
    ``wait_timeout`` stops waiting and leaves the run going; ``run_timeout`` cancels it once it
    is that old. ``poll``: seconds between checks, or a ``PollSchedule`` (default: the
    credentials'). ``error_window``: seconds of transient errors tolerated (default: the
    credentials').
    """
    policy = _policy(
        wait_timeout, run_timeout, poll, error_window, success, cancel_on_kill, create_artifacts
    )
    return await _launch_and_wait(credentials, params, policy, relaunch_failed)


@task(name="launch_and_wait", **TASK_DEFAULTS)
def launch_and_wait(
    credentials: RunbridgeCredentials,
    params: Mapping[str, Any],
    *,
    wait_timeout: Seconds | None = None,
    run_timeout: Seconds | None = None,
    poll: PollSchedule | float | None = None,
    error_window: Seconds | None = None,
    success: Iterable[RunState | str] | str | None = None,
    cancel_on_kill: bool = True,
    relaunch_failed: bool = False,
    create_artifacts: bool = True,
) -> RunStatus:
    """Launch a run, wait for it to end, and return its final ``RunStatus``.

    Fails the task with the platform's message unless the run ended in a ``success`` state
    (default SUCCEEDED). A retry of this task re-attaches to the run it launched (and, with
    ``relaunch_failed``, launches anew if that run ended without success); a run runbridge
    cancelled (the task was killed, ``run_timeout``) is replaced by a new one. Killing the task
    (flow run cancelled, task or flow timeout) cancels the run unless ``cancel_on_kill=False``.
    ``wait_timeout`` stops waiting and leaves the run going; ``run_timeout`` cancels it once it
    is that old. ``poll``: seconds between checks, or a ``PollSchedule`` (default: the
    credentials'). ``error_window``: seconds of transient errors tolerated (default: the
    credentials').
    """
    policy = _policy(
        wait_timeout, run_timeout, poll, error_window, success, cancel_on_kill, create_artifacts
    )
    return run_sync(_launch_and_wait(credentials, params, policy, relaunch_failed))
