"""What runbridge needs from the Prefect run it is called in: a logger, a launch key stable
across task retries, a store for the launch records, and artifacts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from typing import Any
from uuid import UUID

from prefect.context import FlowRunContext, TaskRunContext, get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger, get_run_logger

from ..core.errors import ConfigError
from ..core.models import RunRef, RunStatus
from ..core.planner import CANCELLED, LaunchRecord

__all__ = [
    "RecordStoreError",
    "RunIdentity",
    "current_identity",
    "derive_key",
    "launched_here",
    "logger",
    "mark_launched",
    "read_records",
    "record_cancelled",
    "save_record",
]

_fallback = get_logger("runbridge")


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow or task run (its lines reach the Prefect UI), else the
    ``prefect.runbridge`` logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return _fallback


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    """The Prefect run an operation belongs to."""

    flow_run_id: UUID | None
    task_run_id: UUID | None
    run_count: int
    """Which attempt of the task run (or of the flow run, outside a task) this is."""
    name: str

    @property
    def in_run(self) -> bool:
        return self.flow_run_id is not None or self.task_run_id is not None


_counters: dict[tuple[str, int], int] = {}
_counters_lock = threading.Lock()


def current_identity() -> RunIdentity | None:
    """The task run (or, outside a task, the flow run) we are in; None outside Prefect runs."""
    try:
        ctx = get_run_context()
    except MissingContextError:
        return None
    if isinstance(ctx, TaskRunContext):
        task_run = ctx.task_run
        return RunIdentity(task_run.flow_run_id, task_run.id, task_run.run_count, task_run.name)
    if isinstance(ctx, FlowRunContext) and ctx.flow_run is not None:
        flow_run = ctx.flow_run
        return RunIdentity(flow_run.id, None, flow_run.run_count, flow_run.name)
    return None


def derive_key(identity: RunIdentity) -> str:
    """The key of the next launch in this run: the task's identity, under which its launch
    records are kept, and the launch key the planner starts from (``key``, then ``key#1``...
    when a new run replaces one runbridge cancelled, or one that failed with
    ``relaunch_failed``).

    ``prefect-<flow run id>-<task run id>-<n>``: the n-th launch of this task run (``task`` for
    the flow run id of a task run outside any flow). A task retry is the same task run (same
    id), and counts launches from 0 again, so the retry finds the records of its first attempt
    and re-attaches to the run it launched. Outside a task (in the flow's own code) the flow
    run's attempt takes the task run's place (``flow<attempt>``), so a flow-run retry launches
    anew, as the new task runs of a retried flow run do.
    """
    if identity.task_run_id is not None:
        scope = str(identity.task_run_id)
    else:
        scope = f"flow{identity.run_count}"
    base = f"prefect-{identity.flow_run_id or 'task'}-{scope}"
    counter_key = (base, identity.run_count)
    with _counters_lock:
        n = _counters.get(counter_key, 0)
        _counters[counter_key] = n + 1
    return f"{base}-{n}"


def task_cancel_event() -> threading.Event | None:
    """The event Prefect's thread-pool task runner sets to cancel the current (submitted) task
    run, or None (a task called directly, another task runner, another Prefect version).

    Prefect keeps it in the task runner's private ``_cancel_events``, keyed by task run id;
    read defensively, since a flow-run cancellation reaches a worker thread only through it.
    """
    try:
        task_ctx = TaskRunContext.get()
        flow_ctx = FlowRunContext.get()
        if task_ctx is None or flow_ctx is None:
            return None
        events = getattr(flow_ctx.task_runner, "_cancel_events", None)
        event = events.get(task_ctx.task_run.id) if isinstance(events, dict) else None
    except Exception:
        return None
    return event if isinstance(event, threading.Event) else None


# -- the record store: what each attempt of a task did to its external run ---------------------
#
# runbridge's planner (core/planner.py) decides, from these records, whether an attempt
# re-attaches to the run an earlier attempt launched or launches a new one (and with which key).
# A task's records are a list of LaunchRecord dicts, oldest first, under the task's key: in
# memory (a task retry runs in this process) and in Prefect's result store (the task's
# result_storage or the default one), for a retry in another process.

_memory: dict[str, list[dict[str, Any]]] = {}
_launched: dict[RunRef, tuple[str | None, str]] = {}
"""Runs this process launched or re-attached to: (the store key, the launch key)."""


class RecordStoreError(RuntimeError):
    """Prefect's result store could not be read or written."""


def _record_key(key: str) -> str:
    return "runbridge-launches-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def _parse(data: Any) -> list[LaunchRecord]:
    if not isinstance(data, list):
        raise ConfigError(f"not a list of launch records: {type(data).__name__}")
    return [LaunchRecord.from_dict(item) for item in data]


async def read_records(key: str) -> list[LaunchRecord]:
    """What earlier attempts recorded under ``key``, oldest first ([] if nothing).

    Raises ``RecordStoreError`` when the result store cannot be read: launching without
    knowing what an earlier attempt launched could start a duplicate."""
    data = _memory.get(key)
    if data is None:
        from prefect.results import get_result_store

        try:
            store = get_result_store()
            if not await store.aexists(_record_key(key)):
                return []
            records = _parse((await store.aread(_record_key(key))).result)
        except Exception as exc:
            raise RecordStoreError(
                f"runbridge could not read its launch records from Prefect's result store: {exc}"
            ) from exc
        _memory[key] = [r.to_dict() for r in records]
        return records
    return _parse(data)


async def save_record(key: str, record: LaunchRecord) -> None:
    """Append ``record`` to ``key``'s records: in memory, then in the result store.

    A record made *before* a launch (``starting``) that cannot be persisted raises
    ``RecordStoreError``, and the launch does not happen. Once the run exists, failing the
    task would only orphan it (this process still has the record in memory): a persistence
    failure is then logged as a warning, and a retry in another process may not find the run.
    """
    records = [r.to_dict() for r in await read_records(key)]
    records.append(record.to_dict())
    _memory[key] = records
    if record.ref is not None:
        _launched[record.ref] = (key, record.key)
    try:
        from prefect.results import get_result_store

        await get_result_store().awrite(records, key=_record_key(key))
    except Exception as exc:
        message = f"runbridge could not persist its launch record in Prefect's result store: {exc}"
        if record.ref is None:  # a ``starting`` record: nothing launched yet
            raise RecordStoreError(f"{message}; not launching") from exc
        logger().warning("%s (%s run %s)", message, record.ref.platform, record.ref.id)


async def record_cancelled(ref: RunRef) -> None:
    """runbridge cancelled ``ref`` (the task or flow was killed, ``run_timeout``): record it
    under the key of the task that launched it, so a retry launches a new run."""
    store_key, launch_key = _launched.get(ref, (None, ""))
    if store_key is not None:
        await save_record(store_key, LaunchRecord(launch_key, ref, CANCELLED))


link_pending: set[RunRef] = set()
"""Runs launched here whose link artifact waits for a status with the URL (the launch's first
status read failed)."""


def mark_launched(ref: RunRef, store_key: str | None, launch_key: str) -> None:
    """Note that this process launched (or re-attached to) ``ref`` (so killing a wait on it
    cancels it, and the cancellation is recorded under ``store_key``)."""
    _launched.setdefault(ref, (store_key, launch_key))


def launched_here(ref: RunRef) -> bool:
    return ref in _launched


# -- artifacts ------------------------------------------------------------------------------


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


async def link_artifact(status: RunStatus) -> None:
    """A link to the run's page, attached to the current task or flow run."""
    if status.url is None or current_identity() is None:
        return
    from prefect.artifacts import acreate_link_artifact

    try:
        await acreate_link_artifact(
            link=status.url,
            link_text=f"{status.ref.platform} run {status.ref.id}",
            description=f"The {status.ref.platform} run launched by this run "
            f"(`{status.ref.to_string()}`).",
        )
    except Exception as exc:  # an artifact is a convenience: never fail the run for it
        logger().warning("runbridge: could not create the link artifact: %s", exc)


MAX_OUTPUTS_CHARS = 4000


async def status_artifact(status: RunStatus, succeeded: bool) -> None:
    """A markdown artifact with the run's final status."""
    if current_identity() is None:
        return
    from prefect.artifacts import acreate_markdown_artifact

    ref = status.ref
    run = f"[{_md(ref.id)}]({status.url})" if status.url else f"`{_md(ref.id)}`"
    rows = [
        ("Platform", ref.platform),
        ("Run", run),
        ("State", f"**{status.state.value}** (`{_md(status.raw_state)}`)"),
        ("Outcome", "succeeded" if succeeded else "did not succeed"),
    ]
    if status.message:
        rows.append(("Message", _md(status.message)))
    for label, when in (("Created", status.created_at), ("Ended", status.ended_at)):
        if when is not None:
            rows.append((label, when.isoformat()))
    if status.created_at and status.ended_at:
        rows.append(("Duration", f"{(status.ended_at - status.created_at).total_seconds():.1f} s"))
    rows.append(("Reference", f"`{_md(ref.to_string())}`"))
    lines = [f"### {ref.platform} run {status.state.value.lower()}", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    if status.outputs:
        outputs = json.dumps(dict(status.outputs), indent=2, default=str)
        if len(outputs) > MAX_OUTPUTS_CHARS:
            outputs = outputs[:MAX_OUTPUTS_CHARS] + "\n... (truncated)"
        lines += ["", "**Outputs**", "", "```json", outputs, "```"]
    try:
        await acreate_markdown_artifact(
            markdown="\n".join(lines),
            description=status.summary(),
        )
    except Exception as exc:
        logger().warning("runbridge: could not create the status artifact: %s", exc)
