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

SEEN_KEY = "runbridge_sensor"
"""``task_state_store`` key: the state this sensor last logged (``raw_state``), when it was
first seen (``since``) and last logged (``logged_at``, epoch seconds), and the ``try`` that saw
it. A rescheduled poke is a new task execution: this is what lets it log only changes."""


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
    progress_interval: float = 600.0
    """Seconds between two "still waiting" lines while the run's state does not change."""

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
        self._seen: dict[str, Any] | None = None
        self._killed = False

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
            deferred_at=time.time(),
        )

    def on_kill(self) -> None:
        """The task was told to stop (SIGTERM: a pod shutdown, a user's kill): Airflow's handler
        only calls this and returns, so the next poke ends the try. A sensor never cancels the
        run: it did not launch it. Nothing is logged here: the handler interrupts the main
        thread wherever it is, maybe inside a log write whose lock it holds (see
        ``LaunchRunOperator.on_kill``); the next poke says it."""
        self._killed = True

    def poke(self, context: Context) -> bool | PokeReturnValue:
        if self._killed:
            raise AirflowException(
                f"Stopped waiting for {self._ref or self.run}: the task was killed "
                "(the run keeps going)"
            )
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
        self._report(context, status)
        self._last = status
        if first:
            self._push_run(context, status.ref, status.url)
        return status

    def _report(self, context: Context, status: RunStatus) -> None:
        """Log the run's state once, then only its changes, plus a "still waiting" line every
        ``progress_interval`` seconds; remembered in ``task_state_store`` across reschedules
        (in poke mode the same instance pokes, and the store is only written when a line is)."""
        now = time.time()
        try_number = getattr(context.get("ti"), "try_number", None)
        seen = self._seen if self._seen is not None else self._load_seen(context, try_number)
        if seen is None or seen.get("raw_state") != status.raw_state:
            self.log.info("%s", status.summary())
            seen = {"raw_state": status.raw_state, "since": now, "logged_at": now}
        elif now - float(seen.get("logged_at", now)) >= self.progress_interval:
            waited = _duration(now - float(seen.get("since", now)))
            self.log.info("Still waiting: %s, unchanged for %s", status.summary(), waited)
            seen = {**seen, "logged_at": now}
        else:
            self._seen = seen
            return
        self._seen = seen
        store = context.get("task_state_store")
        if store is not None:
            try:
                store.set(SEEN_KEY, {**seen, "try": try_number})
            except Exception as exc:  # only the log's brevity depends on it
                self.log.debug("Could not remember the logged state: %s", exc)

    def _load_seen(self, context: Context, try_number: Any) -> dict[str, Any] | None:
        store = context.get("task_state_store")
        if store is None:
            return None
        try:
            value = store.get(SEEN_KEY)
        except Exception as exc:
            self.log.debug("Could not read the logged state: %s", exc)
            return None
        if not isinstance(value, Mapping) or value.get("try") != try_number:
            return None  # another try logs afresh
        return dict(value)

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


def _duration(seconds: float) -> str:
    """``1h 5m``, ``12m 30s``, ``45s``."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
