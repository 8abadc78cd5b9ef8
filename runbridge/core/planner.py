"""Re-attach or launch: the one decision every wrapper makes, made here once.

A task (an Airflow task instance, a Prefect task run, a Dagster step) that launches an
external run may run again: a retry, a re-execution, a worker that crashed and came back. It
must then follow the run it launched, not start a duplicate, except where the user or the
orchestrator's history says a new run is wanted. Each wrapper keeps a few :class:`LaunchRecord`
entries in its own store (Airflow's ``task_state_store``, Prefect's result store, Dagster's
event log) through the small :class:`RecordStore` protocol, and hands the history to
:func:`plan_launch`, a pure function:

* The history is a list of :class:`Execution` s, newest (the current one) first: an Airflow
  task instance between two clears, a Dagster run of a re-execution lineage, a Prefect flow
  run. An execution whose runs must not be re-used (the task was cleared, the step succeeded
  there and is being re-run on purpose) is marked ``reusable=False``.
* The newest record of the newest execution that has one decides: a run runbridge
  *cancelled* (the task was killed, ``run_timeout``) is replaced; a launch that was recorded
  as *starting* but whose run was never recorded (a crash in between) is launched again with
  the same key, so the platform's idempotency (or ``find``) re-attaches to it; a recorded run
  is re-attached to.
* A new launch gets a key never used before in the history: ``base``, then ``base#1``,
  ``base#2``... (a used key would find the old run again).
* A new execution supersedes the older one: when the newest execution that is not reusable
  is marked ``cancel_superseded`` (the caller cancels on kill, and a clear is the user
  stopping the task) and its last record is a run that was launched or re-attached to, not
  cancelled, the plan names that run in ``supersede``: ``FlowContext.start`` reads it and,
  if it is still going, cancels it before launching (an event and a log line say so) and
  records the cancel in the new execution. A retry of the same execution never does: it
  re-attaches (a worker SIGKILL, one launch). Airflow needs it when a deferred task is
  cleared before a triggerer ran its trigger: no ``on_kill`` ever comes for it.

What the re-attached run turned out to be (gone, ended without success while the user asked
for ``relaunch_failed``) is reviewed by :func:`review`, also pure; ``FlowContext.start``
(core/flows.py) runs the whole thing for both clients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any, Literal, Protocol

from .errors import ConfigError
from .models import RunRef, RunStatus
from .states import DEFAULT_SUCCESS, RunState

__all__ = [
    "CANCELLED",
    "LAUNCHED",
    "REATTACHED",
    "STARTING",
    "Execution",
    "LaunchPolicy",
    "LaunchRecord",
    "Plan",
    "RecordStore",
    "Started",
    "next_key",
    "plan_launch",
    "review",
]

Action = Literal["starting", "launched", "reattached", "cancelled"]
STARTING: Action = "starting"
"""About to launch with ``key``: recorded *before* the launch, so a crash right after it
launches again with the same key (and so re-attaches where the platform can)."""
LAUNCHED: Action = "launched"
REATTACHED: Action = "reattached"
CANCELLED: Action = "cancelled"
"""runbridge cancelled ``ref`` (task killed, flow cancelled, step terminated, run_timeout)."""
_ACTIONS = frozenset({STARTING, LAUNCHED, REATTACHED, CANCELLED})


@dataclasses.dataclass(frozen=True)
class LaunchRecord:
    """One thing a task did to its external run, as its store keeps it."""

    key: str
    ref: RunRef | None = None
    action: Action = LAUNCHED

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError("a launch record needs a non-empty key")
        if self.action not in _ACTIONS:
            raise ConfigError(f"unknown launch record action {self.action!r}")
        if self.ref is None and self.action != STARTING:
            raise ConfigError(f"a {self.action!r} launch record needs a run reference")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "ref": self.ref.to_string() if self.ref is not None else None,
            "action": self.action,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LaunchRecord:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a launch record must be a mapping, got {type(data).__name__}")
        ref = data.get("ref")
        return cls(
            key=data.get("key"),  # type: ignore[arg-type]  # checked by __post_init__
            ref=RunRef.coerce(ref) if ref else None,
            action=data.get("action", LAUNCHED),
        )


@dataclasses.dataclass(frozen=True)
class Execution:
    """What the task recorded in one execution (see the module docstring)."""

    records: Sequence[LaunchRecord] = ()
    reusable: bool = True
    """False when this execution's runs must not be re-attached to (cleared task, a step
    that succeeded there and is re-executed on purpose)."""
    label: str = "an earlier attempt"
    """How messages name it ("Dagster run 1234", "generation 2")."""
    cancel_superseded: bool = False
    """Only with ``reusable=False``: a run of this execution still going when a newer one
    launches is cancelled first (the caller cancels its run when the task is stopped, and
    starting afresh stopped it)."""

    def __post_init__(self) -> None:
        if self.cancel_superseded and self.reusable:
            raise ConfigError(
                "cancel_superseded is for an execution whose runs are not reused "
                "(reusable=False): a retry re-attaches to its run, never cancels it"
            )


@dataclasses.dataclass(frozen=True)
class LaunchPolicy:
    """What the user asked for about earlier runs."""

    relaunch_failed: bool = False
    """Replace a re-attached run that already ended without success by a new run."""
    success: Collection[RunState] = DEFAULT_SUCCESS


@dataclasses.dataclass(frozen=True)
class Plan:
    reattach: RunRef | None
    """The run to re-attach to, or None to launch with ``key``."""
    key: str
    why: str
    supersede: LaunchRecord | None = None
    """A run of an earlier execution to cancel, if still going, before launching (its
    record: the run and the key it was launched with); see the module docstring."""


@dataclasses.dataclass(frozen=True)
class Started:
    """What ``start`` came to: the run to wait for."""

    ref: RunRef
    key: str
    status: RunStatus | None
    """Its first status (None when the platform could not be read just then)."""
    reattached: bool
    why: str


class RecordStore(Protocol):
    """Where a wrapper keeps its launch records. ``save`` may be a coroutine function for the
    async client (Prefect's result store); a store that cannot write raises, and the launch
    does not happen (a run whose record cannot be kept would be an orphan on retry)."""

    def save(self, record: LaunchRecord) -> Awaitable[None] | None: ...


def next_key(base: str, history: Sequence[Execution]) -> str:
    """A key never used in ``history``: ``base``, then ``base#1``, ``base#2``..."""
    used = {r.key for e in history for r in e.records}
    if base not in used:
        return base
    n = 1
    while f"{base}#{n}" in used:
        n += 1
    return f"{base}#{n}"


def plan_launch(history: Sequence[Execution], base_key: str) -> Plan:
    """Re-attach or launch, from the task's history (newest execution first)."""
    if not isinstance(base_key, str) or not base_key:
        raise ConfigError("the launch key must be a non-empty string")
    for index, execution in enumerate(history):
        where = "an earlier attempt" if index == 0 else execution.label
        if not execution.reusable:
            # runs from before a deliberate reset (a clear, a re-run of a step that succeeded)
            # are never re-used, nor anything older
            return Plan(
                None,
                next_key(base_key, history),
                f"a new execution after {where}",
                supersede=_superseded(execution, history[:index]),
            )
        if not execution.records:
            continue
        last = execution.records[-1]
        if last.action == CANCELLED:
            return Plan(
                None,
                next_key(base_key, history),
                f"runbridge cancelled {last.ref} (launched by {where}); launching a new run",
            )
        if last.action == STARTING or last.ref is None:
            return Plan(
                None, last.key, f"{where} was launching with key {last.key!r}; re-attaching by it"
            )
        return Plan(last.ref, last.key, f"launched by {where}")
    return Plan(None, next_key(base_key, history), "first launch")


def _superseded(execution: Execution, newer: Sequence[Execution]) -> LaunchRecord | None:
    """The run of ``execution`` to cancel before a newer execution launches, if any: its last
    record, when it names a run launched or re-attached to that nothing since cancelled."""
    if not execution.cancel_superseded or not execution.records:
        return None
    last = execution.records[-1]
    if last.ref is None or last.action not in (LAUNCHED, REATTACHED):
        return None
    if any(r.ref == last.ref and r.action == CANCELLED for e in newer for r in e.records):
        return None
    return last


def review(
    plan: Plan,
    status: RunStatus | None,
    *,
    gone: bool,
    policy: LaunchPolicy,
    history: Sequence[Execution],
    base_key: str,
) -> Plan:
    """The plan after reading the run it re-attaches to: ``gone`` when the platform no longer
    knows it, ``status`` None when it could not be read (then re-attach: the wait will tell)."""
    if plan.reattach is None:
        return plan
    if gone:
        return Plan(
            None,
            next_key(base_key, history),
            f"{plan.reattach} ({plan.why}) no longer exists; launching a new run",
        )
    if (
        status is not None
        and status.is_terminal
        and policy.relaunch_failed
        and not status.succeeded(policy.success)
    ):
        return Plan(
            None,
            next_key(base_key, history),
            f"{plan.reattach} ({plan.why}) ended {status.state.value}; launching a new run "
            "(relaunch_failed)",
        )
    return plan
