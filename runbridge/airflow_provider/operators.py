"""``LaunchRunOperator``: launch a run on an external platform and wait for it to end.

One try of the task:

1. **Launch or re-attach**, by core's one policy (``RunClient.start``, core/planner.py): the
   run this task launched in an earlier try is followed again instead of launching a
   duplicate; a run that already ended is taken as it ended, unless ``relaunch_failed`` (then
   a run that ended without success is replaced by a new one); a run runbridge cancelled (the
   task was killed or timed out, ``run_timeout``) is replaced, and so is a run of an earlier
   *generation* after the task was cleared (cancelled first if it is still going, unless
   ``cancel_on_kill=False``: a clear of a deferred task whose trigger never ran calls no
   ``on_kill``). The operator only keeps the records: a JSON list
   in Airflow 3.3's ``task_state_store`` (key :data:`STATE_KEY`), one ``LaunchRecord`` per
   step, each with the generation that saved it and the task instance's ``max_tries`` then
   (a clear raises ``max_tries``, a retry does not: see :func:`generation`). The launch key is
   ``{dag_id}/{task_id}/{run_id}/{map_index}`` (then ``...#1``, ``...#2`` for a new run), and
   a ``starting`` record is saved before the launch, so a crash between the launch and its
   record re-attaches on platforms that can look a launch up by key.
2. **Announce.** One log line with the run's page; XCom ``run_ref`` and ``run_url``.
3. **Wait**, in the worker or deferred to :class:`~runbridge.airflow_provider.triggers.RunTrigger`;
   both end in the same :meth:`LaunchRunOperator._finish_run`: the run's
   ``RunStatus.to_dict()`` as the task's result, or the task's failure with the platform's
   message.

Two deadlines, as in core: ``wait_timeout`` stops waiting and leaves the run going;
``run_timeout`` cancels the run once it is that old. Killing the task (``on_kill``), its
``execution_timeout`` (in the worker or deferred) and, when deferred, marking it failed or
success or clearing it, cancel the run unless ``cancel_on_kill=False``.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

from ..core.errors import ConfigError, RunbridgeError, WaitTimeout
from ..core.inbox import Inbox
from ..core.models import RunRef, RunStatus
from ..core.planner import CANCELLED, Execution, LaunchRecord
from ..core.schedule import RetryPolicy
from ..core.states import RunState
from ._common import (
    DEFAULT_CONN_ID,
    PollLike,
    RunOutcome,
    Seconds,
    poll_fields,
    poll_schedule,
    seconds,
    success_states,
)
from .links import RUN_URL_KEY, RunPageLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ..core.client import RunClient
    from ..core.config import ClientConfig
    from ..core.planner import Started
    from .hooks import RunbridgeHook

__all__ = ["STATE_KEY", "LaunchRunOperator"]

STATE_KEY = "runbridge_launches"
"""``task_state_store`` key: this task's launch records, oldest first, as a JSON list of
``LaunchRecord.to_dict()`` each with the ``"generation"`` that saved it and the task instance's
``"max_tries"`` when it was saved."""
TASK_TIMEOUT_MARGIN = 5.0
"""Seconds before ``execution_timeout`` at which a deferred wait hands the task back to cancel."""


@dataclasses.dataclass(frozen=True)
class Saved:
    """One stored record: the generation that saved it and the task instance's ``max_tries``
    then (None in records written before runbridge kept it)."""

    generation: int
    max_tries: int | None
    record: LaunchRecord


def generation(saved: Sequence[Saved], max_tries: int, retries: int | None) -> int:
    """The generation of the try that reads ``saved`` (how many times the task was started
    afresh), from facts Airflow keeps in its database: a clear raises the task instance's
    ``max_tries`` (to ``try_number + retries``), a retry leaves it alone. So the newest record's
    generation goes on while ``max_tries`` is the one it was saved with, and the next one starts
    when it changed. (Editing ``retries`` in the DAG between tries changes nothing: only a clear
    writes ``max_tries``.) Records saved before ``max_tries`` was kept fall back to the old
    reckoning, ``max_tries - retries + 1``."""
    if not saved:
        return 1
    last = saved[-1]
    if last.max_tries is None:
        return max(last.generation, 1, int(max_tries) - int(retries or 0) + 1)
    return last.generation if int(max_tries) == last.max_tries else last.generation + 1


class LaunchRunOperator(RunOutcome, BaseOperator):
    """Launch a run on an external platform and wait for its terminal state.

    :param run_params: what to launch, the platform's launch parameters (templated), e.g.
        ``{"assistant_id": "agent", "input": {...}}`` for LangGraph. (Core calls them
        ``params``; ``params`` is Airflow's.)
    :param runbridge_conn_id: a ``runbridge`` connection (templated).
    :param wait_for_completion: wait for the run to end (default); if False, return its
        status right after the launch.
    :param deferrable: wait in the triggerer instead of the worker (default:
        ``[operators] default_deferrable``).
    :param wait_timeout: stop waiting after this long (seconds or timedelta); the task fails
        and the run keeps going (a retry re-attaches to it).
    :param run_timeout: cancel the run once it is this old; the task fails.
    :param poll: seconds between checks (fixed), or a ``runbridge.PollSchedule`` (or its
        fields); default: the connection's ``poll``, else adaptive, 1 s at first backing off to
        30 s. Platforms with a blocking wait endpoint (LangGraph's join) use it instead.
    :param success: the terminal states that count as success (default ``SUCCEEDED``), e.g.
        ``["SUCCEEDED", "PARTIAL"]``.
    :param cancel_on_kill: cancel the run when the task is killed, times out
        (``execution_timeout``), or, while deferred, is marked failed or success or cleared.
    :param relaunch_failed: False (default): a retry follows the run launched by an earlier
        try as it is, even if it ended (so a failed run fails the task for good, without
        spending retries); True: a retry replaces a run that ended without success with a new
        one (a run still going is always re-attached to, never duplicated).
    :param key: the task's launch key (templated); default
        ``{dag_id}/{task_id}/{run_id}/{map_index}``. A new run after an earlier one gets
        ``key#1``, ``key#2``...
    :param error_window: seconds of transient platform errors tolerated while waiting
        (default: the connection's ``error_window``, else core's 600).

    Returns ``RunStatus.to_dict()`` of the ended run (XCom ``return_value``); pushes XCom
    ``run_ref`` (``RunRef.to_string()``) and ``run_url`` before waiting.
    """

    template_fields = ("run_params", "runbridge_conn_id", "key")
    template_fields_renderers = {"run_params": "json"}
    operator_extra_links = (RunPageLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        run_params: Mapping[str, Any] | None = None,
        runbridge_conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_timeout: Seconds | None = None,
        run_timeout: Seconds | None = None,
        poll: PollLike | None = None,
        success: Iterable[RunState | str] | str | None = None,
        cancel_on_kill: bool = True,
        relaunch_failed: bool = False,
        key: str | None = None,
        error_window: Seconds | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(relaunch_failed, bool):
            raise ConfigError(f"relaunch_failed must be True or False, got {relaunch_failed!r}")
        self.run_params = dict(run_params or {})
        self.runbridge_conn_id = runbridge_conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.wait_timeout = seconds(wait_timeout, "wait_timeout")
        self.run_timeout = seconds(run_timeout, "run_timeout")
        self.poll = poll_schedule(poll)
        self.success = success_states(success)
        self.cancel_on_kill = cancel_on_kill
        self.relaunch_failed = relaunch_failed
        self.key = key
        self.error_window = seconds(error_window, "error_window")
        # per try, in the worker
        self._ref: RunRef | None = None
        self._config: ClientConfig | None = None
        self._store: Any = None
        self._generation = 1
        self._max_tries: int | None = None
        self._records: list[Saved] = []
        self._done = False
        self._timed_out = False
        self._cancel_sent = False
        self._comms_busy = False
        self._url_pushed = False
        self._killed: str | None = None
        """Why the task was killed (on_kill), once it was."""
        # made per try (_open): a lock cannot be deep-copied, and Airflow deep-copies operators
        self._inbox: Inbox | None = None
        """Wakes this try's wait in the worker when on_kill has cancelled its run."""
        self._save_lock: threading.Lock | None = None

    @cached_property
    def hook(self) -> RunbridgeHook:
        from .hooks import RunbridgeHook  # imported when the task runs, not when a DAG is parsed

        return RunbridgeHook(self.runbridge_conn_id)

    # -- the try -----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        base = self.key or f"{ti.dag_id}/{ti.task_id}/{ti.run_id}/{ti.map_index}"
        history = self._open(context)
        with self._comms():
            self._config = self.hook.client_config()
        try:
            self._inbox = Inbox(max_pending=16)
            with self._config.client(inbox=self._inbox) as client:
                started = client.start(
                    self.run_params,
                    key=base,
                    history=history,
                    save=self._save,
                    relaunch_failed=self.relaunch_failed,
                    success=self.success,
                )
                self._announce(context, client, started)
                status = started.status
                if self._killed is not None:
                    # killed while launching: the run was not known to on_kill
                    self._cancel(self._killed)
                    status = None
                if not self.wait_for_completion:
                    return (
                        status.to_dict() if status is not None else {"ref": started.ref.to_dict()}
                    )
                if status is not None and status.is_terminal:
                    return self._finish_run(context, status)
                if self.deferrable and self._killed is None:
                    self._defer(context, started.ref)
                return self._finish_run(context, self._wait(client, started.ref))
        except AirflowTaskTimeout:
            self._timed_out = True  # the runner calls on_kill next, outside a signal handler
            raise

    def _announce(self, context: Context, client: RunClient, started: Started) -> None:
        """One line at launch, with the run's page; the run's XComs, before any wait. (The
        first status is None when the platform could not be read just then: the wait
        tolerates that, and a launch is never repeated for it.)"""
        status, ref = started.status, started.ref
        self._ref = ref
        verb = "Re-attached to" if started.reattached else "Launched"
        state = status.state.value if status is not None else "state not known yet"
        where = (status.url if status is not None else None) or "no run page"
        # the reason names the key, which the user may have templated from anything
        why = client.redact(started.why)
        self.log.info("%s %s run %s (%s; %s): %s", verb, ref.platform, ref.id, state, why, where)
        with self._comms():
            self._push_run(context, ref, status.url if status is not None else None)
        self._url_pushed = status is not None and status.url is not None

    def _push_url(self, context: Context, url: str) -> None:
        with self._comms():
            context["ti"].xcom_push(key=RUN_URL_KEY, value=url)
        self._url_pushed = True

    def _wait(self, client: RunClient, ref: RunRef) -> RunStatus:
        try:
            return client.wait(
                ref,
                self.wait_timeout,
                run_timeout=self.run_timeout,
                poll=self.poll,
                error_window=self.error_window,
            )
        except WaitTimeout as exc:
            from .triggers import wait_timeout_message

            # wait_timeout leaves the run going: a SIGTERM while the failed try winds down
            # (Airflow's task_success_overtime) must not cancel it through on_kill
            self._done = True
            raise AirflowException(
                wait_timeout_message(ref, exc.last_status, self.wait_timeout)
            ) from None

    def _defer(self, context: Context, ref: RunRef) -> None:
        from .triggers import RunTrigger

        now = time.time()
        task_deadline = None
        if self.execution_timeout is not None:
            budget = self.execution_timeout.total_seconds()
            start = context["ti"].start_date
            started = start.timestamp() if start is not None else now
            task_deadline = started + budget - min(TASK_TIMEOUT_MARGIN, budget * 0.1)
        self.defer(
            trigger=RunTrigger(
                runbridge_conn_id=self.runbridge_conn_id,
                ref=ref.to_dict(),
                poll=poll_fields(self.poll),
                wait_deadline=None if self.wait_timeout is None else now + self.wait_timeout,
                task_deadline=task_deadline,
                run_timeout=self.run_timeout,
                cancel_on_kill=self.cancel_on_kill,
                error_window=self.error_window,
                wait_timeout=self.wait_timeout,
                deferred_at=now,
            ),
            method_name="execute_complete",
            # the resumed task is a new object: tell it whether the run's page is in XCom
            kwargs={"url_pushed": self._url_pushed},
        )

    def execute_complete(
        self, context: Context, event: Mapping[str, Any], url_pushed: bool = False
    ) -> dict[str, Any]:
        """Resume after :class:`RunTrigger`'s event: the same ending as a wait in the worker.
        ``url_pushed``: the try pushed the run's page (XCom ``run_url``) before deferring."""
        self._url_pushed = bool(url_pushed)
        self._open(context)
        if event.get("ref"):
            self._ref = RunRef.from_dict(event["ref"])
        kind = event.get("kind")
        status = RunStatus.from_dict(event["status"]) if event.get("status") else None
        if status is not None:
            self._ref = status.ref
        if kind == "done" and status is not None:
            return self._finish_run(context, status)
        if kind == "task_timeout":
            self._cancel("the task reached its execution_timeout")
            raise AirflowTaskTimeout(str(event.get("message")))
        if kind == "wait_timeout":
            self._done = True  # the run keeps going (see _wait)
            raise AirflowException(f"{event.get('message')} (wait_timeout)")
        raise AirflowException(f"{event.get('error', 'error')}: {event.get('message')}")

    def resume_execution(
        self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context
    ) -> Any:
        # Airflow's own deferral timeout (when it beats the trigger's task deadline) calls no
        # on_kill: cancel here, with the run this task recorded.
        from airflow.sdk.bases.operator import TriggerFailureReason

        error = (next_kwargs or {}).get("error")
        if next_method == "__fail__" and error == TriggerFailureReason.TRIGGER_TIMEOUT:
            self._open(context)
            self._cancel("the task's deferral timed out")
        return super().resume_execution(next_method, next_kwargs, context)

    def _finish_run(self, context: Context, status: RunStatus) -> dict[str, Any]:
        """The one ending, in the worker and after a deferral."""
        self._done = True
        if status.url and not self._url_pushed:  # the page was not known before the wait
            self._push_url(context, status.url)
        if status.cancelled_by_runbridge and not self._cancel_sent:
            self._record_cancelled(status.ref)  # run_timeout: the next try launches anew
        cancelled = self._cancel_sent or status.cancelled_by_runbridge
        # Retrying helps only if the next try launches a new run.
        return self._finish(context, status, retry=cancelled or self.relaunch_failed)

    # -- cancelling ------------------------------------------------------------------------
    def on_kill(self) -> None:
        """Cancel the run (best effort, within a few seconds: the worker is killed soon after).

        Airflow calls this from the task process's SIGTERM handler, which interrupts the main
        thread wherever it is: possibly inside a log write (structlog's writer holds a plain
        lock) or a message to the supervisor (a plain lock too). Logging or talking to the
        supervisor here could then wait forever for a lock the interrupted thread holds: the
        task ran on, its run never cancelled (the deployment's ``user_kill`` cell, under load).
        So, in the handler, only a flag is set and a thread started; the thread cancels the run,
        records it and wakes the wait (its inbox), which reads the cancelled run and ends the
        try. A kill that comes while the launch is under way is carried out once the run is
        known (``execute``). After ``execution_timeout`` Airflow calls this from the main flow,
        not a handler: the cancel is made there, before the task ends."""
        if self._done or self._killed is not None:
            return
        why = "the task was killed" if not self._timed_out else "the task timed out"
        self._killed = why
        if self._timed_out:
            self._cancel(why)
            return
        threading.Thread(
            target=self._cancel, args=(why, True), name="runbridge-on-kill", daemon=True
        ).start()

    def _cancel(self, why: str, wake: bool = False) -> None:
        """Cancel this try's run (if it has one yet) and record it; ``wake``: from on_kill's
        thread, wake the wait in the worker so it reads the cancelled run now."""
        with self._lock():  # on_kill's thread and the try may both get here
            ref = self._ref
            go = ref is not None and not self._cancel_sent and self.cancel_on_kill
            if go:
                self._cancel_sent = True
        if not go:
            if ref is not None and not self.cancel_on_kill:
                self.log.info("Leaving %s running (cancel_on_kill=False): %s", ref, why)
            return
        assert ref is not None
        try:
            config = self._config or self.hook.client_config()
            retry = RetryPolicy(attempts=2, total=4.0, first=0.5)
            with config.client(request_timeout=3.0, retry=retry) as client:
                client.cancel(ref)
                after = client.get(ref) if wake else None
        except RunbridgeError as exc:
            self.log.warning("Could not cancel %s (%s): %s", ref, why, exc)
            return
        self.log.info("Cancelled %s: %s", ref, why)
        self._record_cancelled(ref, in_thread=wake)
        if after is not None and self._inbox is not None:
            self._inbox.deliver(after)  # a hint: the wait checks the run itself

    # -- the record store (task_state_store) ---------------------------------------------------
    def _open(self, context: Context) -> list[Execution]:
        """Read this task's records; return its history for the planner, newest execution
        (this generation) first, earlier generations after it and not reusable."""
        self._lock()
        self._store = context.get("task_state_store")
        ti = context["ti"]
        self._max_tries = int(ti.max_tries or 0)
        with self._comms():
            self._records = self._load()
        self._generation = generation(self._records, self._max_tries, self.retries)
        current = [s.record for s in self._records if s.generation == self._generation]
        mine = [r for r in current if r.ref is not None]
        if mine:
            self._ref = mine[-1].ref
        older = sorted({s.generation for s in self._records} - {self._generation}, reverse=True)
        return [
            Execution(current),
            *(
                Execution(
                    [s.record for s in self._records if s.generation == old],
                    reusable=False,
                    label=f"generation {old} (before the task was cleared)",
                    # a clear stops the task: its run, if still going, is cancelled before
                    # the new launch (no on_kill comes when the trigger never ran)
                    cancel_superseded=self.cancel_on_kill,
                )
                for old in older
            ),
        ]

    def _load(self) -> list[Saved]:
        if self._store is None:
            return []
        value = self._store.get(STATE_KEY)
        if value is None:
            return []
        try:
            if not isinstance(value, list):
                raise ConfigError(f"a list expected, got {type(value).__name__}")
            records = []
            for item in value:
                if not isinstance(item, Mapping):
                    raise ConfigError(f"a record must be a mapping, got {item!r}")
                number = item.get("generation")
                if isinstance(number, bool) or not isinstance(number, int):
                    raise ConfigError(f"a record without its generation: {item!r}")
                max_tries = item.get("max_tries")
                if max_tries is not None and (
                    isinstance(max_tries, bool) or not isinstance(max_tries, int)
                ):
                    raise ConfigError(f"a record with a bad max_tries: {item!r}")
                fields = {k: v for k, v in item.items() if k not in ("generation", "max_tries")}
                records.append(Saved(number, max_tries, LaunchRecord.from_dict(fields)))
        except ConfigError as exc:
            raise ConfigError(
                f"task_state_store key {STATE_KEY!r} does not hold runbridge launch records "
                f"({exc}); delete the key to start afresh"
            ) from None
        return records

    def _save(self, record: LaunchRecord) -> None:
        """Append one record (core's ``save``). Raises when the store cannot be written: the
        launch then does not happen (its run would be an orphan on retry). Serialized: on_kill's
        thread may save while the try saves."""
        with self._lock():
            self._records.append(Saved(self._generation, self._max_tries, record))
            if record.ref is not None and record.action != CANCELLED:
                self._ref = record.ref  # (a superseded run's cancel is not this try's run)
            if self._store is not None:
                value = [_stored(s) for s in self._records]
                with self._comms():
                    self._store.set(STATE_KEY, value)

    def _lock(self) -> threading.Lock:
        """The try's lock around its records and its cancel (made in ``_open``, before any
        on_kill can come)."""
        if self._save_lock is None:
            self._save_lock = threading.Lock()
        return self._save_lock

    def _record_cancelled(self, ref: RunRef, in_thread: bool = False) -> None:
        """Record that runbridge cancelled ``ref``, so the next try launches a new run. In the
        main thread, skipped when the cancel interrupted this task's own call to the supervisor
        (it must not be re-entered); on_kill's thread waits its turn."""
        if self._comms_busy and not in_thread:
            return
        keys = [s.record.key for s in reversed(self._records) if s.record.ref == ref]
        if not keys:
            return  # not a run this task recorded
        try:
            self._save(LaunchRecord(keys[0], ref, CANCELLED))
        except Exception as exc:  # best effort: the run is cancelled already
            self.log.warning("Could not record the cancelled run: %s", exc)

    def _comms(self) -> _CommsGuard:
        return _CommsGuard(self)


def _stored(saved: Saved) -> dict[str, Any]:
    value = {**saved.record.to_dict(), "generation": saved.generation}
    if saved.max_tries is not None:
        value["max_tries"] = saved.max_tries
    return value


class _CommsGuard:
    """Marks the operator busy talking to the Airflow supervisor (see ``_record_cancelled``)."""

    def __init__(self, operator: LaunchRunOperator) -> None:
        self.operator = operator

    def __enter__(self) -> None:
        self.operator._comms_busy = True

    def __exit__(self, *exc_info: object) -> None:
        self.operator._comms_busy = False
