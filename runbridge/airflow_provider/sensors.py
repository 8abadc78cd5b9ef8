"""``RunSensor``: wait for an existing run (launched elsewhere, or by a
``LaunchRunOperator`` with ``wait_for_completion=False``) to end.

Poke, reschedule and deferrable modes; the same success policy and the same ending as the
operator. The sensor never cancels the run it watches: it did not launch it.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue, conf
from airflow.sdk.exceptions import AirflowException, AirflowSensorTimeout

from ..core.errors import ConfigError, RunbridgeError, retryable
from ..core.models import RunRef, RunStatus
from ..core.schedule import PollSchedule
from ..core.states import RunState
from ._common import DEFAULT_CONN_ID, RunOutcome, poll_fields, success_states
from .links import RunPageLink

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ..core.client import RunClient
    from .hooks import RunbridgeHook

__all__ = ["RunSensor"]


class RunSensor(RunOutcome, BaseSensorOperator):
    """Wait for an existing run to end; succeed if it ended in a ``success`` state.

    :param run: the run (templated): a reference string such as the operator's XCom
        ``run_ref`` (``{{ ti.xcom_pull(task_ids="launch", key="run_ref") }}``), a
        ``RunRef`` or its dict, or the platform's own run id (with ``scope`` where the
        platform needs one, e.g. LangGraph's ``{"thread_id": ...}``).
    :param runbridge_conn_id: a ``runbridge`` connection (templated).
    :param scope: what else the platform needs to address a run given by id (templated).
    :param success: the terminal states that count as success (default ``SUCCEEDED``).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).

    ``poke_interval``, ``timeout``, ``mode`` and ``soft_fail`` are the usual sensor
    arguments; deferred, the wait uses the platform's blocking endpoint where it has one.
    Transient platform errors are tolerated for the connection's ``error_window`` (a poke
    that hits one checks again at the next poke).
    Returns ``RunStatus.to_dict()`` of the ended run.
    """

    template_fields = ("run", "runbridge_conn_id", "scope")
    operator_extra_links = (RunPageLink(),)
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        run: str | Mapping[str, Any] | RunRef,
        runbridge_conn_id: str = DEFAULT_CONN_ID,
        scope: Mapping[str, str] | None = None,
        success: Iterable[RunState | str] | str | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.run = run.to_string() if isinstance(run, RunRef) else run
        self.runbridge_conn_id = runbridge_conn_id
        self.scope = dict(scope) if scope else None
        self.success = success_states(success)
        self.deferrable = deferrable
        self._client: RunClient | None = None
        self._ref: RunRef | None = None
        self._last: RunStatus | None = None
        self._failing_since: float | None = None

    @cached_property
    def hook(self) -> RunbridgeHook:
        from .hooks import RunbridgeHook  # imported when the task runs, not when a DAG is parsed

        return RunbridgeHook(self.runbridge_conn_id)

    def execute(self, context: Context) -> Any:
        try:
            if not self.deferrable:
                return super().execute(context)
            status = self._check(context)
            if status.is_terminal:
                return self._finish(context, status)
            self.defer(
                trigger=self._trigger(status.ref),
                method_name="execute_complete",
            )
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _trigger(self, ref: RunRef) -> Any:
        from .triggers import RunTrigger

        return RunTrigger(
            runbridge_conn_id=self.runbridge_conn_id,
            ref=ref.to_dict(),
            poll=poll_fields(PollSchedule.fixed(max(float(self.poke_interval), 0.1))),
            wait_deadline=time.time() + float(self.timeout),
            cancel_on_kill=False,
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        try:
            status = self._check(context)
        except RunbridgeError as exc:
            if not retryable(exc) or self._client is None:
                raise
            # a transient error (core's one classification) is tolerated for the connection's
            # error_window within this try (a rescheduled poke starts a window of its own)
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
            if now - self._failing_since > self._client.error_window:
                raise
            self.log.warning("Could not check the run (%s); checking again at the next poke", exc)
            return False
        self._failing_since = None
        if not status.is_terminal:
            return False
        return PokeReturnValue(True, self._finish(context, status))

    def _check(self, context: Context) -> RunStatus:
        """One status check; logs a state change once and pushes the run's XComs on first sight."""
        if self._client is None:
            self._client = self.hook.get_client()
        status = self._client.get(self._ref or self._target())
        first = self._ref is None
        self._ref = status.ref
        if self._last is None or self._last.raw_state != status.raw_state:
            self.log.info("%s", status.summary())
        self._last = status
        if first:
            self._push_run(context, status.ref, status.url)
        return status

    def _target(self) -> RunRef | str:
        run = self.run
        if isinstance(run, str) and run.strip().startswith("{"):
            text = run.strip()
            try:
                run = json.loads(text)
            except ValueError:
                try:  # a dict rendered by Jinja as its Python repr
                    run = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    raise ConfigError(f"run {text!r} is not a run reference") from None
        if isinstance(run, Mapping):
            return RunRef.from_dict(run)
        if not isinstance(run, str) or not run.strip():
            raise ConfigError(f"run must be a run reference or id, got {run!r}")
        if self.scope:
            assert self._client is not None
            return self._client.ref(run.strip(), **{k: str(v) for k, v in self.scope.items()})
        return run.strip()

    def execute_complete(self, context: Context, event: Mapping[str, Any]) -> Any:
        kind = event.get("kind")
        if kind == "done" and event.get("status"):
            return self._finish(context, RunStatus.from_dict(event["status"]))
        if kind == "wait_timeout":
            raise AirflowSensorTimeout(f"{event.get('message')} (sensor timeout)")
        raise AirflowException(f"{event.get('error', 'error')}: {event.get('message')}")
