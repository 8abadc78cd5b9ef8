"""One step's external run: launch or re-attach, wait, log, cancel on termination, report.

Re-attach
---------
A step launches with an idempotency key derived from its identity in Dagster, and records the
run it launched as an engine event in the Dagster run's event log. A later attempt of the same
step looks for that record before launching:

* **Retries within a run** (a ``RetryPolicy``, ``RetryRequested``) share the run id and step
  key, so they find the record in the current run.
* **Re-executions** (from failure, or of selected steps) are new Dagster runs with a new run
  id. Keying on ``run_id/step_key`` would launch a duplicate there, so the key uses the
  lineage's *root* run id, and the record is looked up in the current run, then its parent,
  and so on to the root.
* The record makes re-attach work on every platform, including those that cannot look a run
  up by key; the key covers the gap the record cannot: a crash between the platform accepting
  the launch and the record being written.

When a step re-executes after it *succeeded* in the parent run (a deliberate re-run), or after
runbridge cancelled the run because the Dagster run was terminated, it launches a new run with
a new key (``<key>#1``, ``#2``...). A run that already ended on its own is taken as it ended
(its success or failure decides the step) unless ``relaunch_failed`` asks for a new run when
it did not succeed.

Termination
-----------
Terminating a Dagster run interrupts the step (``DagsterExecutionInterruptedError``, or
``KeyboardInterrupt`` outside Dagster's interrupt handling). The step then cancels the
external run, unless it is already terminal or ``cancel_on_termination`` is off. A wait
timeout never cancels: it fails the step and leaves the run going, so a retry re-attaches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.events import EngineEventData  # the one private name used

from ..core import (
    DEFAULT_SUCCESS,
    NotSupported,
    RunbridgeError,
    RunClient,
    RunNotFound,
    RunRef,
    RunState,
    RunStatus,
    WaitTimeout,
    parse_states,
)
from ..core.flows import Event
from ._metadata import status_metadata

if TYPE_CHECKING:
    from ._resource import ExternalRunResource

__all__ = ["ExternalRunResult", "LaunchRecord", "Plan", "plan_launch", "run_step"]

RECORD_REF = "runbridge/ref"
RECORD_KEY = "runbridge/key"
RECORD_ACTION = "runbridge/action"
LAUNCHED, REATTACHED, CANCELLED = "launched", "reattached", "cancelled"
MAX_LINEAGE = 100
"""How many ancestors of a re-execution are searched for a recorded run."""

Context = dg.OpExecutionContext | dg.AssetExecutionContext


@dataclasses.dataclass(frozen=True)
class ExternalRunResult:
    """What a step's external run came to: its terminal status and the Dagster metadata."""

    status: RunStatus
    metadata: dict[str, dg.MetadataValue]
    reattached: bool = False
    """True when the step took over a run launched by an earlier attempt."""

    def materialize_result(self, **kwargs: Any) -> dg.MaterializeResult:
        """A ``MaterializeResult`` carrying the metadata (for an asset body)."""
        metadata = {**self.metadata, **kwargs.pop("metadata", {})}
        return dg.MaterializeResult(metadata=metadata, **kwargs)

    def output(self, output_name: str = "result") -> dg.Output[RunStatus]:
        """An ``Output`` whose value is the :class:`RunStatus`, with the metadata (for an op)."""
        return dg.Output(self.status, output_name=output_name, metadata=self.metadata)


# -- the plan: re-attach or launch, decided from recorded history (pure) ---------------------
@dataclasses.dataclass(frozen=True)
class LaunchRecord:
    """One recorded action on an external run by this step, in one Dagster run."""

    run_id: str
    ref: RunRef
    key: str | None
    action: str = LAUNCHED


@dataclasses.dataclass(frozen=True)
class RunHistory:
    """What this step did in one Dagster run of the lineage."""

    run_id: str
    records: Sequence[LaunchRecord]
    step_succeeded: bool


@dataclasses.dataclass(frozen=True)
class Plan:
    reattach: RunRef | None
    """The run to re-attach to, or None to launch with ``key``."""
    key: str
    why: str


def next_key(base_key: str, history: Sequence[RunHistory]) -> str:
    """The key for a new launch: the base key first, then ``base#1``, ``base#2``..."""
    used = {r.key for h in history for r in h.records if r.key}
    if base_key not in used:
        return base_key
    n = len(used)
    while f"{base_key}#{n}" in used:
        n += 1
    return f"{base_key}#{n}"


def plan_launch(history: Sequence[RunHistory], base_key: str) -> Plan:
    """Re-attach or launch, from the step's history: the current run first, then its parent,
    up to the root."""
    for index, run in enumerate(history):
        current = index == 0
        if run.records:
            last = run.records[-1]
            if not current and run.step_succeeded:
                return Plan(
                    None,
                    next_key(base_key, history),
                    f"the step succeeded in run {run.run_id}; this re-execution launches a new run",
                )
            if last.action == CANCELLED:
                return Plan(
                    None,
                    next_key(base_key, history),
                    f"run {last.ref} was cancelled "
                    "when its Dagster run was terminated; launching a new run",
                )
            where = "an earlier attempt" if current else f"Dagster run {run.run_id}"
            return Plan(last.ref, last.key or base_key, f"launched by {where}")
        if not current and run.step_succeeded:
            return Plan(None, next_key(base_key, history), "a new execution of the step")
    return Plan(None, next_key(base_key, history), "first launch")


# -- reading and writing the record in Dagster's event log -----------------------------------
def _op_context(context: Context) -> dg.OpExecutionContext:
    if isinstance(context, dg.AssetExecutionContext):
        return context.op_execution_context
    return context


def _step_key(context: dg.OpExecutionContext) -> str:
    return str(context.get_step_execution_context().step.key)


def _history(context: dg.OpExecutionContext, step_key: str) -> list[RunHistory]:
    instance = context.instance
    history: list[RunHistory] = []
    run: dg.DagsterRun | None = context.run
    while run is not None and len(history) < MAX_LINEAGE:
        records: list[LaunchRecord] = []
        succeeded = False
        entries = instance.all_logs(
            run.run_id,
            of_type={dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_SUCCESS},
        )
        for entry in entries:
            event = entry.dagster_event
            if entry.step_key != step_key or event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                succeeded = True
                continue
            record = _read_record(run.run_id, event.engine_event_data.metadata)
            if record is not None:
                records.append(record)
        history.append(RunHistory(run.run_id, records, succeeded))
        parent = run.parent_run_id
        run = instance.get_run_by_id(parent) if parent else None
    return history


def _read_record(run_id: str, metadata: Mapping[str, Any]) -> LaunchRecord | None:
    value = metadata.get(RECORD_REF)
    if value is None:
        return None
    try:
        ref = RunRef.parse(str(value.value))
    except RunbridgeError:
        return None
    key = metadata.get(RECORD_KEY)
    action = metadata.get(RECORD_ACTION)
    return LaunchRecord(
        run_id,
        ref,
        str(key.value) if key is not None else None,
        str(action.value) if action is not None else LAUNCHED,
    )


def _record(
    context: dg.OpExecutionContext, message: str, ref: RunRef, key: str | None, action: str
) -> None:
    metadata: dict[str, dg.MetadataValue] = {
        RECORD_REF: dg.MetadataValue.text(ref.to_string()),
        RECORD_ACTION: dg.MetadataValue.text(action),
    }
    if key:
        metadata[RECORD_KEY] = dg.MetadataValue.text(key)
    step_context = context.get_step_execution_context()
    dg.DagsterEvent.engine_event(step_context, message, EngineEventData(metadata=metadata))


# -- logging through the context -----------------------------------------------------------
class _StepLog:
    """A runbridge event hook that writes to Dagster's context logger and remembers the last
    status seen (to know, when interrupted, whether the run is still going)."""

    def __init__(self, context: dg.OpExecutionContext) -> None:
        self.log = context.log
        self.last: RunStatus | None = None
        self._logged_raw: str | None = None

    def __call__(self, event: Event) -> None:
        if event.status is not None and event.kind in ("status", "state_changed"):
            self.last = event.status
        if event.kind == "state_changed" and event.status is not None:
            self.status(event.status)
        elif event.kind in ("retry", "transient_error"):
            self.log.warning(f"{event.platform}: {event.error}; trying again")
        elif event.kind == "unknown_state" and event.status is not None:
            self.log.warning(
                f"{event.platform} reported state {event.status.raw_state!r}, which runbridge "
                "does not know; treating it as still running"
            )

    def status(self, status: RunStatus) -> None:
        self.last = status
        # the terminal state is logged once, in the step's final summary
        if status.raw_state != self._logged_raw and not status.is_terminal:
            self._logged_raw = status.raw_state
            self.log.info(f"{status.ref}: {status.state.value} ({status.raw_state})")


# -- the step ----------------------------------------------------------------------------------
def _base_key(context: dg.OpExecutionContext, step_key: str) -> str:
    run = context.run
    return f"dagster:{run.root_run_id or run.run_id}:{step_key}"


def run_step(
    context: Context,
    resource: ExternalRunResource,
    params: Mapping[str, Any],
    *,
    key: str | None = None,
    wait_timeout: float | None = None,
    run_timeout: float | None = None,
    success: Sequence[RunState | str] | None = None,
    relaunch_failed: bool = False,
    cancel_on_termination: bool = True,
) -> ExternalRunResult:
    """Launch (or re-attach to) the step's external run, wait for it, and report it."""
    op_context = _op_context(context)
    success_states = parse_states(success) if success else DEFAULT_SUCCESS
    step_key = _step_key(op_context)
    history = _history(op_context, step_key)
    base_key = key or _base_key(op_context, step_key)
    plan = plan_launch(history, base_key)
    log = _StepLog(op_context)
    started = time.monotonic()
    with resource.get_client(hooks=[log]) as client:
        guard = _CancelOnInterrupt(op_context, client, log, cancel_on_termination)
        with guard:
            status, reattached = _attach_or_launch(
                op_context,
                client,
                log,
                guard,
                params,
                plan,
                base_key,
                history,
                success_states,
                relaunch_failed,
            )
            if not status.is_terminal:
                status = _wait(client, log, status, wait_timeout, run_timeout, started)
        return _finish(
            op_context,
            client,
            status,
            success_states,
            relaunch_failed,
            reattached,
            time.monotonic() - started,
        )


class _CancelOnInterrupt:
    """Cancels the step's run when the step is interrupted (the Dagster run terminated) while
    the run is still going. Not on a wait timeout or any other error."""

    def __init__(
        self, context: dg.OpExecutionContext, client: RunClient, log: _StepLog, enabled: bool
    ) -> None:
        self.context = context
        self.client = client
        self.log = log
        self.enabled = enabled
        self.ref: RunRef | None = None
        self.key: str | None = None

    def __enter__(self) -> _CancelOnInterrupt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None or not issubclass(
            exc_type, (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)
        ):
            return
        ref, last = self.ref, self.log.last
        if ref is None:
            return  # interrupted before a run existed
        if not self.enabled:
            self.context.log.info(f"Interrupted; leaving {ref} going (cancel_on_termination=False)")
        elif last is not None and last.is_terminal:  # (a queued ref may have become a run's)
            self.context.log.info(f"Interrupted; {ref} had already ended {last.state.value}")
        else:
            self._cancel(ref)

    def _cancel(self, ref: RunRef) -> None:
        log = self.context.log
        log.warning(f"The Dagster run was terminated; cancelling {ref}")
        try:
            self.client.cancel(ref)
        except NotSupported:
            log.warning(f"{ref.platform} runs cannot be cancelled over its API; {ref} goes on")
            return
        except RunbridgeError as exc:
            log.warning(f"Cancelling {ref} failed: {exc}")
            return
        try:
            _record(
                self.context, f"Cancelled {ref} (Dagster run terminated)", ref, self.key, CANCELLED
            )
        except Exception as exc:  # the run is ending: recording is best effort
            log.warning(f"Could not record the cancellation of {ref}: {exc}")


def _attach_or_launch(
    context: dg.OpExecutionContext,
    client: RunClient,
    log: _StepLog,
    guard: _CancelOnInterrupt,
    params: Mapping[str, Any],
    plan: Plan,
    base_key: str,
    history: Sequence[RunHistory],
    success: frozenset[RunState],
    relaunch_failed: bool,
) -> tuple[RunStatus, bool]:
    """(first status, re-attached?) of the run this step waits for."""
    key = plan.key
    if plan.reattach is not None:
        ref = plan.reattach
        try:
            status = client.get(ref)
        except RunNotFound:
            context.log.warning(f"{ref} ({plan.why}) no longer exists; launching a new run")
            key = next_key(base_key, history)
        else:
            if status.is_terminal and relaunch_failed and not status.succeeded(success):
                context.log.info(
                    f"{ref} ({plan.why}) ended {status.state.value}; launching a new run "
                    "(relaunch_failed)"
                )
                key = next_key(base_key, history)
            else:
                guard.ref, guard.key = ref, key
                ended = (
                    "; it had already ended and is taken as it ended" if status.is_terminal else ""
                )
                context.log.info(f"Re-attached to {ref}, {plan.why}{ended}")
                _record(context, f"Re-attached to {ref}", ref, key, REATTACHED)
                log.status(status)
                return status, True
    ref = client.launch(params, key=key)
    guard.ref, guard.key = ref, key
    _record(context, f"Launched {ref}", ref, key, LAUNCHED)
    status = client.get(ref)
    where = f": {status.url}" if status.url else ""
    context.log.info(f"Launched {ref}{where}")
    log.status(status)
    return status, False


def _wait(
    client: RunClient,
    log: _StepLog,
    status: RunStatus,
    wait_timeout: float | None,
    run_timeout: float | None,
    started: float,
) -> RunStatus:
    try:
        return client.wait(status.ref, wait_timeout, run_timeout=run_timeout)
    except WaitTimeout as exc:
        last = exc.last_status or log.last or status
        raise dg.Failure(
            description=client.redact(
                f"{exc} (a retry or re-execution of this step re-attaches to it)"
            ),
            metadata=status_metadata(last, observed_seconds=time.monotonic() - started),
            allow_retries=True,
        ) from None


def _finish(
    context: dg.OpExecutionContext,
    client: RunClient,
    status: RunStatus,
    success: frozenset[RunState],
    relaunch_failed: bool,
    reattached: bool,
    observed: float,
) -> ExternalRunResult:
    metadata = status_metadata(status, observed_seconds=observed)
    message = metadata.get("message")
    if message is not None:
        metadata["message"] = dg.MetadataValue.text(client.redact(str(message.value)))
    duration = metadata.get("duration_seconds")
    took = f" after {duration.value:g}s" if duration is not None else ""
    detail = f": {status.message}" if status.message else ""
    page = f" <{status.url}>" if status.url else ""
    summary = client.redact(
        f"{status.ref.platform} run {status.ref.id} ended {status.state.value} "
        f"({status.raw_state}){took}{detail}{page}"
    )
    if not status.succeeded(success):
        context.log.error(summary)
        allowed = ", ".join(sorted(s.value for s in success))
        hint = (
            "; this run was launched by an earlier attempt and is taken as it ended "
            "(set relaunch_failed to launch a new one)"
            if reattached and not relaunch_failed
            else ""
        )
        raise dg.Failure(
            description=f"{summary}; success is {allowed}{hint}",
            metadata=metadata,
            # A retry would re-attach to this same ended run: only worth it when it relaunches.
            allow_retries=relaunch_failed,
        )
    context.log.info(summary)
    return ExternalRunResult(status, metadata, reattached)
