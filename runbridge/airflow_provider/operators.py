"""``LaunchRunOperator``: launch a run on an external platform and wait for it to end.

One try of the task:

1. **Launch or re-attach.** The run this task launched in an earlier try (kept in Airflow 3.3's
   ``task_state_store``) is followed again instead of launching a duplicate; a launch carries
   the idempotency key ``{dag_id}/{task_id}/{run_id}/{map_index}``, so even a crash between
   the launch and its record re-attaches on platforms that can look a launch up (core's
   ``launch(key=)``). A run that already ended is taken as it ended, unless
   ``on_retry="relaunch"`` (then a run that ended without success is replaced by a new one).
   A run that runbridge cancelled (the task was killed or timed out) is always replaced, and
   so is the run of an earlier generation after the task was *cleared*.
2. **Announce.** One log line with the run's page; XCom ``run_ref`` and ``run_url``.
3. **Wait**, in the worker or deferred to :class:`~runbridge.airflow_provider.triggers.RunTrigger`;
   both end in the same ``_finish``: the run's ``RunStatus.to_dict()`` as the task's result, or
   the task's failure with the platform's message.

Two deadlines, as in core: ``wait_timeout`` stops waiting and leaves the run going;
``run_timeout`` cancels the run once it is that old. Killing the task (``on_kill``), its
``execution_timeout`` (in the worker or deferred) and, when deferred, marking it failed or
success or clearing it, cancel the run unless ``cancel_on_kill=False``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout

from ..core.errors import ConfigError, RunbridgeError, WaitTimeout
from ..core.flows import TRANSIENT
from ..core.models import RunRef, RunStatus
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
    from ..core.flows import Event
    from .hooks import ConnectionSettings, RunbridgeHook

__all__ = ["LaunchRunOperator"]

STATE_KEY = "runbridge_run"
"""``task_state_store`` key: ``{"generation", "key", "ref", "cancelled"}`` of this task's run."""
TASK_TIMEOUT_MARGIN = 5.0
"""Seconds before ``execution_timeout`` at which a deferred wait hands the task back to cancel."""


class LaunchRunOperator(RunOutcome, BaseOperator):
    """Launch a run on an external platform and wait for its terminal state.

    :param run_params: what to launch, the platform's launch parameters (templated), e.g.
        ``{"assistant_id": "agent", "input": {...}}`` for LangGraph.
    :param conn_id: a ``runbridge`` connection (templated).
    :param wait_for_completion: wait for the run to end (default); if False, return its
        status right after the launch.
    :param deferrable: wait in the triggerer instead of the worker (default:
        ``[operators] default_deferrable``).
    :param wait_timeout: stop waiting after this long (seconds or timedelta); the task fails
        and the run keeps going (a retry re-attaches to it).
    :param run_timeout: cancel the run once it is this old; the task fails.
    :param poll_interval: seconds between checks (fixed), or a ``runbridge.PollSchedule``;
        default: adaptive, 1 s at first backing off to 30 s. Platforms with a blocking wait
        endpoint (LangGraph's join) use it instead of polling.
    :param success: the terminal states that count as success (default ``SUCCEEDED``), e.g.
        ``["SUCCEEDED", "PARTIAL"]``.
    :param cancel_on_kill: cancel the run when the task is killed, times out
        (``execution_timeout``), or, while deferred, is marked failed or success or cleared.
    :param on_retry: ``"reattach"`` (default): a retry follows the run launched by an earlier
        try, as it is, even if it ended (so a failed run fails the task for good, without
        spending retries); ``"relaunch"``: a retry replaces a run that ended without success
        with a new one (a run still going is always re-attached to, never duplicated).
    :param idempotency_key: the launch's key (templated); default
        ``{dag_id}/{task_id}/{run_id}/{map_index}``.
    :param error_window: seconds of transient platform errors tolerated while waiting
        (default: core's, 600).

    Returns ``RunStatus.to_dict()`` of the ended run (XCom ``return_value``); pushes XCom
    ``run_ref`` (``RunRef.to_string()``) and ``run_url`` before waiting.
    """

    template_fields = ("run_params", "conn_id", "idempotency_key")
    template_fields_renderers = {"run_params": "json"}
    operator_extra_links = (RunPageLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        run_params: Mapping[str, Any] | None = None,
        conn_id: str = DEFAULT_CONN_ID,
        wait_for_completion: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_timeout: Seconds | None = None,
        run_timeout: Seconds | None = None,
        poll_interval: PollLike | None = None,
        success: Iterable[RunState | str] | str | None = None,
        cancel_on_kill: bool = True,
        on_retry: Literal["reattach", "relaunch"] = "reattach",
        idempotency_key: str | None = None,
        error_window: Seconds | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_retry not in ("reattach", "relaunch"):
            raise ConfigError(f"on_retry must be 'reattach' or 'relaunch', got {on_retry!r}")
        self.run_params = dict(run_params or {})
        self.conn_id = conn_id
        self.wait_for_completion = wait_for_completion
        self.deferrable = deferrable
        self.wait_timeout = seconds(wait_timeout, "wait_timeout")
        self.run_timeout = seconds(run_timeout, "run_timeout")
        self.poll = poll_schedule(poll_interval)
        self.success = success_states(success)
        self.cancel_on_kill = cancel_on_kill
        self.on_retry = on_retry
        self.idempotency_key = idempotency_key
        self.error_window = seconds(error_window, "error_window")
        # per try, in the worker
        self._ref: RunRef | None = None
        self._settings: ConnectionSettings | None = None
        self._store: Any = None
        self._state: dict[str, Any] = {}
        self._done = False
        self._timed_out = False
        self._cancel_sent = False
        self._comms_busy = False
        self._runbridge_cancelled: set[RunRef] = set()
        self._reattached = False
        self._url_pushed = False

    @cached_property
    def hook(self) -> RunbridgeHook:
        from .hooks import RunbridgeHook  # imported when the task runs, not when a DAG is parsed

        return RunbridgeHook(self.conn_id)

    # -- the try -----------------------------------------------------------------------------
    def execute(self, context: Context) -> dict[str, Any]:
        self._store = context.get("task_state_store")
        with self._comms():
            self._settings = self.hook.settings()
        try:
            with self._settings.client(hooks=[self._on_event]) as client:
                ref = self._launch_or_reattach(context, client)
                status = self._first_status(client, ref)
                self._announce(context, status or ref)
                if not self.wait_for_completion:
                    return status.to_dict() if status is not None else {"ref": ref.to_dict()}
                if status is not None and status.is_terminal:
                    return self._finish_run(context, status)
                if self.deferrable:
                    self._defer(context, ref)
                return self._finish_run(context, self._wait(client, ref))
        except AirflowTaskTimeout:
            self._timed_out = True  # the runner calls on_kill next, outside a signal handler
            raise

    def _launch_or_reattach(self, context: Context, client: RunClient) -> RunRef:
        ti = context["ti"]
        base = self.idempotency_key or f"{ti.dag_id}/{ti.task_id}/{ti.run_id}/{ti.map_index}"
        # The first try since the task was last cleared (Airflow's own reckoning): a clear
        # raises max_tries, a retry does not. Runs of an earlier generation are not re-used.
        generation = max(1, int(ti.max_tries or 0) - int(self.retries or 0) + 1)
        saved = self._load_state()
        if saved and saved.get("generation") != generation:
            self.log.info("The task was cleared since its last run: launching a new run")
            saved = None
        if saved and saved.get("ref"):
            ref = RunRef.from_dict(saved["ref"])
            reason = self._replace_reason(client, ref, saved)
            if reason is None:
                self._reattached = True
                self._state = saved
                return ref
            self.log.info("Launching a new run to replace %s: %s", ref, reason)
            key = self._key(base, int(ti.try_number))
        elif saved and saved.get("key"):
            key = str(saved["key"])  # launched, then lost before its reference was recorded
        else:
            key = self._key(base, generation)
        self._state = {"generation": generation, "key": key}
        self._save_state()  # before the launch: a crash after it finds the run by this key
        ref = client.launch(self.run_params, key=key)
        self._ref = ref
        self._state["ref"] = ref.to_dict()
        self._save_state()
        return ref

    def _replace_reason(
        self, client: RunClient, ref: RunRef, saved: Mapping[str, Any]
    ) -> str | None:
        """Why the run of an earlier try must not be re-attached to, or None to re-attach."""
        if saved.get("cancelled"):
            return "an earlier try cancelled it (the task was killed or timed out)"
        if self.on_retry == "relaunch":
            prior = client.get(ref)
            if prior.is_terminal and not prior.succeeded(self.success):
                return f"it ended {prior.state.value} and on_retry='relaunch'"
        return None

    @staticmethod
    def _key(base: str, try_number: int) -> str:
        return base if try_number <= 1 else f"{base}#{try_number}"

    def _first_status(self, client: RunClient, ref: RunRef) -> RunStatus | None:
        """The run's status right after the launch, for its page; None if the platform is
        briefly unreachable (the wait tolerates that; a launch is never repeated for it)."""
        try:
            return client.get(ref)
        except TRANSIENT as exc:
            self.log.warning("Could not read %s yet (%s); waiting for it anyway", ref, exc)
            return None

    def _announce(self, context: Context, what: RunStatus | RunRef) -> None:
        """One line at launch, with the run's page; the run's XComs, before any wait."""
        status = what if isinstance(what, RunStatus) else None
        ref = status.ref if status is not None else what
        assert isinstance(ref, RunRef)
        self._ref = ref
        verb = "Re-attached to" if self._reattached else "Launched"
        state = status.state.value if status is not None else "state not known yet"
        where = (status.url if status is not None else None) or "no run page"
        self.log.info("%s %s run %s (%s): %s", verb, ref.platform, ref.id, state, where)
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
            raise AirflowException(f"{exc} (wait_timeout)") from None

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
                conn_id=self.conn_id,
                ref=ref.to_dict(),
                poll=poll_fields(self.poll),
                wait_deadline=None if self.wait_timeout is None else now + self.wait_timeout,
                task_deadline=task_deadline,
                run_timeout=self.run_timeout,
                cancel_on_kill=self.cancel_on_kill,
                error_window=self.error_window,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: Mapping[str, Any]) -> dict[str, Any]:
        """Resume after :class:`RunTrigger`'s event: the same ending as a wait in the worker."""
        self._store = context.get("task_state_store")
        stored = self._stored_ref()
        self._ref = RunRef.from_dict(event["ref"]) if event.get("ref") else stored
        kind = event.get("kind")
        status = RunStatus.from_dict(event["status"]) if event.get("status") else None
        if status is not None:
            self._ref = status.ref
        if kind == "done" and status is not None:
            if event.get("cancelled"):
                self._runbridge_cancelled.add(status.ref)
            return self._finish_run(context, status)
        if kind == "task_timeout":
            self._cancel("the task reached its execution_timeout")
            raise AirflowTaskTimeout(str(event.get("message")))
        if kind == "wait_timeout":
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
            self._store = context.get("task_state_store")
            self._ref = self._stored_ref()
            self._cancel("the task's deferral timed out")
        return super().resume_execution(next_method, next_kwargs, context)

    def _finish_run(self, context: Context, status: RunStatus) -> dict[str, Any]:
        self._done = True
        if status.url and not self._url_pushed:  # the page was not known before the wait
            self._push_url(context, status.url)
        cancelled = self._cancel_sent or status.ref in self._runbridge_cancelled
        if cancelled and not self._state.get("cancelled"):
            self._mark_cancelled()
        # Retrying helps only if the next try launches a new run.
        return self._finish(context, status, retry=cancelled or self.on_retry == "relaunch")

    # -- cancelling ------------------------------------------------------------------------
    def on_kill(self) -> None:
        """Cancel the run (best effort, within a few seconds: the worker is killed soon after)."""
        if self._done:
            return
        self._cancel("the task was killed" if not self._timed_out else "the task timed out")

    def _cancel(self, why: str) -> None:
        ref = self._ref
        if ref is None or self._cancel_sent or not self.cancel_on_kill:
            if ref is not None and not self.cancel_on_kill:
                self.log.info("Leaving %s running (cancel_on_kill=False): %s", ref, why)
            return
        self._cancel_sent = True
        try:
            settings = self._settings or self.hook.settings()
            retry = RetryPolicy(attempts=2, total=4.0, first=0.5)
            with settings.client(timeout=3.0, retry=retry) as client:
                client.cancel(ref)
        except RunbridgeError as exc:
            self.log.warning("Could not cancel %s (%s): %s", ref, why, exc)
            return
        self.log.info("Cancelled %s: %s", ref, why)
        self._mark_cancelled()

    def _on_event(self, event: Event) -> None:
        if event.kind == "cancel_requested" and event.ref is not None:
            self._runbridge_cancelled.add(event.ref)  # run_timeout: core cancelled it
        elif event.kind == "reattached":
            self._reattached = True  # core found the launch by its key

    # -- the task_state_store record -----------------------------------------------------------
    def _comms(self) -> _CommsGuard:
        return _CommsGuard(self)

    def _load_state(self) -> dict[str, Any] | None:
        if self._store is None:
            return None
        with self._comms():
            value = self._store.get(STATE_KEY)
        return dict(value) if isinstance(value, Mapping) else None

    def _save_state(self) -> None:
        if self._store is not None:
            with self._comms():
                self._store.set(STATE_KEY, dict(self._state))

    def _stored_ref(self) -> RunRef | None:
        saved = self._load_state() or {}
        self._state = saved
        return RunRef.from_dict(saved["ref"]) if saved.get("ref") else None

    def _mark_cancelled(self) -> None:
        """Record that runbridge cancelled this run, so the next try launches a new one. Skipped
        when on_kill interrupts this task's own call to the supervisor (a signal handler must
        not re-enter it)."""
        if self._store is None or self._comms_busy or not self._state.get("ref"):
            return
        self._state["cancelled"] = True
        try:
            self._save_state()
        except Exception as exc:  # best effort: the run is cancelled already
            self.log.warning("Could not record the cancelled run: %s", exc)


class _CommsGuard:
    """Marks the operator busy talking to the Airflow supervisor (see ``_mark_cancelled``)."""

    def __init__(self, operator: LaunchRunOperator) -> None:
        self.operator = operator

    def __enter__(self) -> None:
        self.operator._comms_busy = True

    def __exit__(self, *exc_info: object) -> None:
        self.operator._comms_busy = False
