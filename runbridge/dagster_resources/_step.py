"""One step's external run: start (launch or re-attach), wait, log, cancel on termination, report.

Re-attach
---------
The decision is core's (``RunClient.start``, core/planner.py), the same for Airflow, Prefect
and Dagster. This module keeps only the step's *record store*, which is Dagster's event log:

* **Records** are engine events of the step (metadata ``runbridge/key``, ``runbridge/ref``,
  ``runbridge/action``), one per core ``LaunchRecord``: ``starting`` (written before a launch
  where the platform can look a run up by key, so a crash right after the launch re-attaches),
  ``launched``, ``reattached``, and ``cancelled`` (written by the step after it cancelled the
  run because the Dagster run was terminated, or by ``run_timeout``).
* **History**: retries within a run (a ``RetryPolicy``, ``RetryRequested``) share the run id
  and step key, so they find the records in the current run. Re-executions (from failure, or
  of selected steps) are new Dagster runs, so the records are read from the current run, then
  its parent, and so on to the root: one core ``Execution`` per Dagster run, newest first. An
  ancestor run where the step *succeeded* is ``reusable=False``: re-executing a step that
  succeeded is a deliberate re-run, which launches a new run.
* **Key**: ``dagster:<root run id>:<step key>``, shared by a run and all its re-executions
  (``<run id>`` would launch a duplicate on re-execution); core derives ``#1``, ``#2``... for
  new launches.

A run that already ended on its own is taken as it ended (its success or failure decides the
step) unless ``relaunch_failed`` asks for a new run when it did not succeed.

Termination
-----------
Terminating a Dagster run interrupts the step (``DagsterExecutionInterruptedError``, or
``KeyboardInterrupt`` outside Dagster's interrupt handling). The step then cancels the
external run, unless it is already terminal or ``cancel_on_kill`` is off, and records
``cancelled``, so a re-execution launches a new run. A wait timeout never cancels: it fails
the step and leaves the run going, so a retry re-attaches.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from ..core import (
    DEFAULT_SUCCESS,
    ConfigError,
    Execution,
    LaunchRecord,
    NotSupported,
    RunbridgeError,
    RunClient,
    RunRef,
    RunState,
    RunStatus,
    WaitTimeout,
    parse_states,
)
from ..core.config import seconds
from ..core.flows import Event
from ..core.planner import CANCELLED, LAUNCHED, REATTACHED, STARTING
from ._compat import engine_event_metadata, step_log, write_engine_event
from ._compat import step_key as _step_key_of
from ._metadata import status_metadata

if TYPE_CHECKING:
    from ._resource import ExternalRunResource

__all__ = ["ExternalRunResult", "read_record", "run_step", "step_execution"]

RECORD_REF = "runbridge/ref"
RECORD_KEY = "runbridge/key"
RECORD_ACTION = "runbridge/action"
MAX_LINEAGE = 100
"""How many Dagster runs of a re-execution lineage are read for records."""

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


# -- the record store: Dagster's event log ---------------------------------------------------
def step_execution(
    run_id: str, records: Sequence[LaunchRecord], *, step_succeeded: bool
) -> Execution:
    """One Dagster run of the lineage as a core ``Execution``: its records, and not reusable
    when the step succeeded there (a re-execution of a step that succeeded is a deliberate
    re-run)."""
    return Execution(tuple(records), reusable=not step_succeeded, label=f"Dagster run {run_id}")


def read_record(metadata: Mapping[str, Any]) -> LaunchRecord | None:
    """The launch record an engine event's metadata holds; None when it holds none.

    Raises ``ConfigError`` for a runbridge record that cannot be read."""
    values = {
        name: str(getattr(value, "value", value))
        for name, value in metadata.items()
        if name in (RECORD_KEY, RECORD_REF, RECORD_ACTION) and value is not None
    }
    if RECORD_KEY not in values:
        return None
    return LaunchRecord.from_dict(
        {
            "key": values[RECORD_KEY],
            "ref": values.get(RECORD_REF),
            "action": values.get(RECORD_ACTION, LAUNCHED),
        }
    )


def record_metadata(record: LaunchRecord) -> dict[str, dg.MetadataValue]:
    """The engine event metadata that stores ``record``."""
    metadata: dict[str, dg.MetadataValue] = {
        RECORD_KEY: dg.MetadataValue.text(record.key),
        RECORD_ACTION: dg.MetadataValue.text(record.action),
    }
    if record.ref is not None:
        metadata[RECORD_REF] = dg.MetadataValue.text(record.ref.to_string())
    return metadata


def _op_context(context: Context) -> dg.OpExecutionContext:
    if isinstance(context, dg.AssetExecutionContext):
        return context.op_execution_context
    return context


def _history(context: dg.OpExecutionContext, step_key: str) -> list[Execution]:
    """The step's records in the current Dagster run, then its parent, ... up to the root."""
    instance = context.instance
    history: list[Execution] = []
    run: dg.DagsterRun | None = context.run
    while run is not None and len(history) < MAX_LINEAGE:
        records: list[LaunchRecord] = []
        succeeded = False
        entries = step_log(
            instance,
            run.run_id,
            {dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_SUCCESS},
        )
        for entry in entries:
            event = entry.dagster_event
            if entry.step_key != step_key or event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                succeeded = True
                continue
            try:
                record = read_record(engine_event_metadata(event))
            except ConfigError as exc:
                context.log.warning(f"Ignoring an unreadable runbridge record: {exc}")
                continue
            if record is not None:
                records.append(record)
        history.append(step_execution(run.run_id, records, step_succeeded=succeeded))
        parent = run.parent_run_id
        run = instance.get_run_by_id(parent) if parent else None
    return history


_MESSAGES = {
    STARTING: "Launching a run with key {key}",
    LAUNCHED: "Launched {ref}",
    REATTACHED: "Re-attached to {ref}",
    CANCELLED: "Cancelled {ref}",
}


class _EventLogStore:
    """Core's ``save``: each record becomes an engine event of the step. Remembers the run the
    step is following (for the termination handler)."""

    def __init__(self, context: dg.OpExecutionContext, client: RunClient) -> None:
        self.context = context
        self.client = client
        self.ref: RunRef | None = None
        self.key: str | None = None

    def save(self, record: LaunchRecord, message: str | None = None) -> None:
        if record.ref is not None and record.action != CANCELLED:
            self.ref, self.key = record.ref, record.key
        text = message or _MESSAGES[record.action].format(key=repr(record.key), ref=record.ref)
        # the key may come from the user (config), so the stored text is redacted
        redacted = LaunchRecord(self.client.redact(record.key), record.ref, record.action)
        write_engine_event(self.context, self.client.redact(text), record_metadata(redacted))


# -- logging through the context -----------------------------------------------------------
class _StepLog:
    """A runbridge event hook that writes to Dagster's context logger (redacted), remembers
    the last status seen (to know, when interrupted, whether the run is still going) and
    publishes the run's page as soon as core announces it (``url_known``)."""

    def __init__(self, context: dg.OpExecutionContext, client: RunClient) -> None:
        self.context = context
        self.log = context.log
        self.redact = client.redact
        self.last: RunStatus | None = None
        self.url: str | None = None
        """The run page URL last published (None: none yet)."""
        self._logged_raw: str | None = None

    def info(self, text: str) -> None:
        self.log.info(self.redact(text))

    def warning(self, text: str) -> None:
        self.log.warning(self.redact(text))

    def error(self, text: str) -> None:
        self.log.error(self.redact(text))

    def __call__(self, event: Event) -> None:
        if event.status is not None and event.kind in ("status", "state_changed"):
            self.last = event.status
        if event.kind == "state_changed" and event.status is not None:
            self.status(event.status)
        elif event.kind in ("retry", "transient_error"):
            self.warning(f"{event.platform}: {event.error}; trying again")
        elif event.kind == "unknown_state" and event.status is not None:
            self.warning(
                f"{event.platform} reported state {event.status.raw_state!r}, which runbridge "
                "does not know; treating it as still running"
            )
        elif event.kind == "run_timeout":
            self.warning(f"{event.ref} {event.message}; cancelling it")
        elif event.kind == "cancel_failed":
            self.warning(f"Cancelling {event.ref} failed: {event.error}")
        elif event.kind == "url_known" and event.status is not None:
            self.url_known(event.status)

    def url_known(self, status: RunStatus) -> None:
        """Publish the run's page when it first appears or changes (core announces it again
        with each wait; only a change is published). An asset step reports an
        ``AssetObservation`` of each asset it materializes (public API: shown on the asset's
        page and in the run's log); an op step, which has no asset, an engine event of the
        step. Both carry ``run_url`` and ``run_ref`` metadata."""
        url = status.url
        if not url or url == self.url:
            return
        self.url = url
        metadata = {
            "run_url": dg.MetadataValue.url(url),
            "run_ref": dg.MetadataValue.text(status.ref.to_string()),
        }
        text = self.redact(f"Run page of {status.ref}: {url}")
        context = self.context
        if context.has_assets_def and context.selected_asset_keys:
            partition = context.partition_key if context.has_partition_key else None
            for asset_key in sorted(context.selected_asset_keys, key=lambda k: k.to_string()):
                context.log_event(
                    dg.AssetObservation(
                        asset_key=asset_key,
                        metadata=metadata,
                        partition=partition,
                        description=text,
                    )
                )
            self.log.info(text)
        else:
            write_engine_event(context, text, metadata)

    def status(self, status: RunStatus) -> None:
        self.last = status
        # the terminal state is logged once, in the step's final summary
        if status.raw_state != self._logged_raw and not status.is_terminal:
            self._logged_raw = status.raw_state
            self.info(f"{status.ref}: {status.state.value} ({status.raw_state})")


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
    cancel_on_kill: bool = True,
) -> ExternalRunResult:
    """Start (launch or re-attach to) the step's external run, wait for it, and report it."""
    op_context = _op_context(context)
    success_states = parse_states(success) if success else DEFAULT_SUCCESS
    # checked before anything is launched
    wait_timeout = seconds(wait_timeout, "wait_timeout")
    run_timeout = seconds(run_timeout, "run_timeout")
    step_key = _step_key_of(op_context)
    started = time.monotonic()
    with resource.get_client() as client:
        if run_timeout is not None and not client.provider.supports_cancel:
            raise NotSupported(
                f"run_timeout needs cancel, and {client.platform} runs cannot be cancelled "
                "over its API"
            )
        log = _StepLog(op_context, client)
        store = _EventLogStore(op_context, client)
        history = _history(op_context, step_key)
        with _CancelOnInterrupt(op_context, client, log, store, cancel_on_kill):
            start = client.start(
                params,
                key=key or _base_key(op_context, step_key),
                history=history,
                save=store.save,
                relaunch_failed=relaunch_failed,
                success=success_states,
                on_event=log,
            )
            status = start.status
            if start.reattached:
                ended = (
                    "; it had already ended and is taken as it ended"
                    if status is not None and status.is_terminal
                    else ""
                )
                log.info(f"Re-attached to {start.ref} ({start.why}){ended}")
            else:
                where = f": {status.url}" if status is not None and status.url else ""
                log.info(f"Launched {start.ref}{where}")
            if status is not None:
                log.status(status)
            if status is None or not status.is_terminal:
                status = _wait(client, log, start.ref, status, wait_timeout, run_timeout, started)
        if status.cancelled_by_runbridge:  # run_timeout: a retry or re-execution launches anew
            store.save(
                LaunchRecord(start.key, status.ref, CANCELLED),
                f"Cancelled {status.ref} (run_timeout)",
            )
        return _finish(
            op_context,
            client,
            log,
            status,
            success_states,
            relaunch_failed,
            start.reattached,
            time.monotonic() - started,
        )


class _CancelOnInterrupt:
    """Cancels the step's run when the step is interrupted (the Dagster run terminated) while
    the run is still going, and records that. Not on a wait timeout or any other error."""

    def __init__(
        self,
        context: dg.OpExecutionContext,
        client: RunClient,
        log: _StepLog,
        store: _EventLogStore,
        enabled: bool,
    ) -> None:
        self.context = context
        self.client = client
        self.log = log
        self.store = store
        self.enabled = enabled

    def __enter__(self) -> _CancelOnInterrupt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> None:
        if exc_type is None or not issubclass(
            exc_type, (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)
        ):
            return
        ref, key, last = self.store.ref, self.store.key, self.log.last
        if ref is None or key is None:
            return  # interrupted before a run existed
        if not self.enabled:
            self.log.info(f"Interrupted; leaving {ref} going (cancel_on_kill=False)")
        elif last is not None and last.is_terminal:  # (a queued ref may have become a run's)
            self.log.info(f"Interrupted; {ref} had already ended {last.state.value}")
        else:
            self._cancel(ref, key)

    def _cancel(self, ref: RunRef, key: str) -> None:
        log = self.log
        log.warning(f"The Dagster run was terminated; cancelling {ref}")
        try:
            self.client.cancel(ref, on_event=log)
        except NotSupported:
            log.warning(f"{ref.platform} runs cannot be cancelled over its API; {ref} goes on")
            return
        except RunbridgeError as exc:
            log.warning(f"Cancelling {ref} failed: {exc}")
            return
        try:
            self.store.save(
                LaunchRecord(key, ref, CANCELLED), f"Cancelled {ref} (Dagster run terminated)"
            )
        except Exception as exc:  # the run is ending: recording is best effort
            log.warning(f"Could not record the cancellation of {ref}: {exc}")


def _wait(
    client: RunClient,
    log: _StepLog,
    ref: RunRef,
    first: RunStatus | None,
    wait_timeout: float | None,
    run_timeout: float | None,
    started: float,
) -> RunStatus:
    try:
        return client.wait(ref, wait_timeout, run_timeout=run_timeout, on_event=log)
    except WaitTimeout as exc:
        last = exc.last_status or log.last or first
        raise dg.Failure(
            description=client.redact(
                f"{exc} (a retry or re-execution of this step re-attaches to it)"
            ),
            metadata=_with_url(
                status_metadata(last, observed_seconds=time.monotonic() - started)
                if last is not None
                else {"run_ref": dg.MetadataValue.text(ref.to_string())},
                log.url,
            ),
            allow_retries=True,
        ) from None


def _with_url(
    metadata: dict[str, dg.MetadataValue], url: str | None
) -> dict[str, dg.MetadataValue]:
    """``metadata`` with the run page published during the step when the last status carries
    none (a platform may report the page only while the run goes)."""
    if url and "run_url" not in metadata:
        return {"run_url": dg.MetadataValue.url(url), **metadata}
    return metadata


def _finish(
    context: dg.OpExecutionContext,
    client: RunClient,
    log: _StepLog,
    status: RunStatus,
    success: frozenset[RunState],
    relaunch_failed: bool,
    reattached: bool,
    observed: float,
) -> ExternalRunResult:
    metadata = _with_url(status_metadata(status, observed_seconds=observed), log.url)
    duration = metadata.get("duration_seconds")
    took = f" after {duration.value:g}s" if duration is not None else ""
    detail = f": {status.message}" if status.message else ""
    page = f" <{status.url}>" if status.url else ""
    summary = client.redact(
        f"{status.ref.platform} run {status.ref.id} ended {status.state.value} "
        f"({status.raw_state}){took}{detail}{page}"
    )
    if not status.succeeded(success):
        log.error(summary)
        allowed = ", ".join(sorted(s.value for s in success))
        hint = (
            "; this run was launched by an earlier attempt and is taken as it ended "
            "(set relaunch_failed to launch a new one)"
            if reattached and not relaunch_failed and not status.cancelled_by_runbridge
            else ""
        )
        raise dg.Failure(
            description=f"{summary}; success is {allowed}{hint}",
            metadata=metadata,
            # A retry would re-attach to this same ended run: only worth it when it launches
            # a new one (relaunch_failed, or a run runbridge cancelled for run_timeout).
            allow_retries=relaunch_failed or status.cancelled_by_runbridge,
        )
    log.info(summary)
    return ExternalRunResult(status, metadata, reattached)
