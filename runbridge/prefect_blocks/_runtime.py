"""What runbridge needs from the Prefect run it is called in: a logger, a launch key stable
across task retries, a store for the launch records, and artifacts."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import pathlib
import threading
import time
from collections.abc import Mapping
from typing import Any, cast
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
    """The Prefect run an operation belongs to: identities that survive a restart of the flow
    run (its id, the task's code key) and the attempt counters that do not."""

    flow_run_id: UUID | None
    task_run_id: UUID | None
    run_count: int
    """Which attempt of the task run (or of the flow run, outside a task) this is."""
    name: str
    task_key: str | None = None
    """The task's stable key (Prefect's ``task_key``: its qualified name and code); None in the
    flow's own code."""
    flow_run_count: int = 0
    """Which attempt of the flow run this is (a retry or a restart of a crashed flow run)."""

    @property
    def in_run(self) -> bool:
        return self.flow_run_id is not None or self.task_run_id is not None


_slots: dict[tuple[str, int], dict[tuple[Any, int], int]] = {}
"""Per (base key, flow-run attempt): which occurrence number each launch call got."""
_calls: dict[tuple[str, int, Any, int], int] = {}
"""Per (base key, flow-run attempt, task run, task-run attempt): launches made so far."""
_counters_lock = threading.Lock()


def current_identity() -> RunIdentity | None:
    """The task run (or, outside a task, the flow run) we are in; None outside Prefect runs."""
    try:
        ctx = get_run_context()
    except MissingContextError:
        return None
    if isinstance(ctx, TaskRunContext):
        task_run = ctx.task_run
        return RunIdentity(
            task_run.flow_run_id,
            task_run.id,
            task_run.run_count,
            task_run.name,
            task_key=task_run.task_key,
            flow_run_count=task_run.flow_run_run_count,
        )
    if isinstance(ctx, FlowRunContext) and ctx.flow_run is not None:
        flow_run = ctx.flow_run
        return RunIdentity(
            flow_run.id, None, flow_run.run_count, flow_run.name, flow_run_count=flow_run.run_count
        )
    return None


def launch_fingerprint(platform: str, base_url: str, params: Mapping[str, Any]) -> str:
    """What is launched, as text: part of the derived key, so that the launches of one task
    (the calls of a mapped task) are told apart by what they launch, not by the order in which
    Prefect's threads reach them, which a restarted flow run does not repeat."""
    text = json.dumps(dict(params), sort_keys=True, default=str, separators=(",", ":"))
    return f"{platform}\n{base_url}\n{text}"


def base_key(identity: RunIdentity, launch: str) -> str:
    """``prefect-<flow run id>-<digest>``: :func:`derive_key` without the occurrence number."""
    if identity.flow_run_id is not None:
        scope = str(identity.flow_run_id)
    else:  # a task run outside any flow
        scope = f"task{identity.task_run_id}"
    digest = hashlib.sha256(f"{identity.task_key or 'flow'}\n{launch}".encode()).hexdigest()[:16]
    return f"prefect-{scope}-{digest}"


def derive_key(identity: RunIdentity, launch: str = "") -> str:
    """The key of a launch in this run: the task's identity, under which its launch records are
    kept, and the launch key the planner starts from (``key``, then ``key#1``... when a new run
    replaces one runbridge cancelled, or one that failed with ``relaunch_failed``).

    ``prefect-<flow run id>-<digest>-<n>``: ``digest`` hashes the task's stable key (its
    qualified name and code; ``flow`` in the flow's own code) and ``launch`` (what is launched:
    :func:`launch_fingerprint`); ``n`` counts the launches of the same thing by the same task in
    this attempt of the flow run. None of these change when the flow run is retried or a
    crashed flow run is restarted (Prefect then makes new task runs with new ids), so the new
    attempt finds the records of the old one and re-attaches to the runs it launched. A task
    retry is the same task run: its launches get the numbers its first attempt's got. Two
    launches of the same thing by the same task (a task mapped over equal parameters) may swap
    numbers between attempts, which re-attaches each to one of two equal runs.
    """
    base = base_key(identity, launch)
    with _counters_lock:
        if identity.task_run_id is not None:
            caller: Any = identity.task_run_id
            calls_key = (base, identity.flow_run_count, caller, identity.run_count)
            i = _calls.get(calls_key, 0)
            _calls[calls_key] = i + 1
        else:  # the flow's own code: every call is a new launch
            caller, i = object(), 0
        slot = _slots.setdefault((base, identity.flow_run_count), {})
        n = slot.setdefault((caller, i), len(slot))
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


RECORD_PREFIX = "runbridge-launches-"


def _record_key(key: str) -> str:
    return RECORD_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


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

        store = get_result_store()
        expiration = datetime.datetime.now(datetime.timezone.utc) + record_ttl()
        # a datetime: Prefect's pydantic model makes its own DateTime of it
        await store.awrite(records, key=_record_key(key), expiration=cast(Any, expiration))
    except Exception as exc:
        message = f"runbridge could not persist its launch record in Prefect's result store: {exc}"
        if record.ref is None:  # a ``starting`` record: nothing launched yet
            raise RecordStoreError(f"{message}; not launching") from exc
        logger().warning("%s (%s run %s)", message, record.ref.platform, record.ref.id)
        return
    prune_expired(store)


RECORD_TTL = datetime.timedelta(days=7)
"""How long launch records are kept: a task retry or a restart of the flow run within this
long re-attaches; after it, the records are expired (Prefect's result store no longer reads
them) and, in local result storage, deleted. ``RUNBRIDGE_PREFECT_RECORD_TTL`` (seconds)
overrides it."""
TTL_ENV = "RUNBRIDGE_PREFECT_RECORD_TTL"
PRUNE_EVERY = 600.0
"""Seconds between two sweeps of one local storage directory by one process."""
_pruned: dict[str, float] = {}


def record_ttl() -> datetime.timedelta:
    """``RECORD_TTL``, or the number of seconds in ``$RUNBRIDGE_PREFECT_RECORD_TTL``."""
    text = os.environ.get(TTL_ENV)
    if text is None or not text.strip():
        return RECORD_TTL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{TTL_ENV} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=value)


def prune_expired(store: Any) -> int:
    """Delete the launch records older than :func:`record_ttl` from ``store``'s storage, if it
    is a local directory (Prefect's default result storage); at most once every
    ``PRUNE_EVERY`` seconds per directory. Remote storage keeps expired records (the result
    store ignores them): give its bucket a lifecycle rule. Returns how many were deleted."""
    from prefect.filesystems import LocalFileSystem

    storage = getattr(store, "result_storage", None)
    if not isinstance(storage, LocalFileSystem):
        return 0
    directory = pathlib.Path(storage.basepath or ".").expanduser()
    now = time.time()
    with _counters_lock:
        last = _pruned.get(str(directory))
        if last is not None and now - last < PRUNE_EVERY:
            return 0
        _pruned[str(directory)] = now
    cutoff = now - record_ttl().total_seconds()
    deleted = 0
    try:
        for path in directory.glob(RECORD_PREFIX + "*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
            except OSError:
                continue  # another process deleted it, or it cannot be: next sweep
    except OSError as exc:
        logger().debug("runbridge: could not sweep %s: %s", directory, exc)
    return deleted


async def record_cancelled(ref: RunRef) -> None:
    """runbridge cancelled ``ref`` (the task or flow was killed, ``run_timeout``): record it
    under the key of the task that launched it, so a retry launches a new run."""
    store_key, launch_key = _launched.get(ref, (None, ""))
    if store_key is not None:
        await save_record(store_key, LaunchRecord(launch_key, ref, CANCELLED))


linked: dict[RunRef, str] = {}
"""The page URL of each run this process made a link artifact for (one link per run and URL:
a wait after the launch announces the same URL again)."""


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
