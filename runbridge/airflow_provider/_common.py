"""What the operator and the sensor share: argument checks and the one outcome decision.

"Is it finished, and did it succeed?" is answered by core (``RunStatus.succeeded``); the
wrappers only turn the answer into Airflow's terms, in :meth:`RunOutcome._finish`, which
both the in-worker wait and the deferred resume call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ..core.config import seconds as check_seconds
from ..core.errors import ConfigError, RunFailed
from ..core.schedule import PollSchedule
from ..core.states import DEFAULT_SUCCESS, RunState, parse_states
from .links import RUN_REF_KEY, RUN_URL_KEY

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ..core.models import RunRef, RunStatus

DEFAULT_CONN_ID = "runbridge_default"
"""The connection operators, sensors and the hook use unless told otherwise."""

Seconds = float | int | timedelta
PollLike = Seconds | PollSchedule | Mapping[str, Any]


def number(value: Any, name: str, what: str = "a number of seconds") -> Any:
    """A numeric argument that may arrive as text (a Jinja-rendered value, an XCom, a mapped
    argument): ``"3600"`` or ``" 2.5 "`` as a number; other text is a ConfigError naming the
    argument. Anything else is returned as it is, for core's checks."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        hint = (
            " (it looks like a template: this argument is not templated; render it in a "
            "templated field, or set the DAG's render_template_as_native_obj=True where it is)"
            if "{{" in text or "{%" in text
            else ""
        )
        raise ConfigError(f"{name} must be {what}, got {value!r}{hint}") from None


def seconds(value: Seconds | str | None, name: str) -> float | None:
    """A duration argument (seconds, a numeric string, or a timedelta) as seconds, checked
    (core's one rule: no NaN, infinities or negatives)."""
    return check_seconds(number(value, name), name)


def poll_schedule(value: PollLike | str | None) -> PollSchedule | None:
    """``poll``: a number or numeric string (a fixed interval), a PollSchedule, its fields, or
    None (the connection's schedule; core's default is adaptive, 1 s at first, backing off to
    ``DEFAULT_POLL_CAP``, 10 s)."""
    if value is None or isinstance(value, PollSchedule):
        return value
    if isinstance(value, Mapping):
        fields = {key: number(field, f"poll {key}", "a number") for key, field in value.items()}
        try:
            return PollSchedule(**fields)
        except TypeError as exc:
            raise ConfigError(f"poll: {exc}") from None
    interval = seconds(value, "poll")
    if not interval:
        raise ConfigError("poll must be a positive number of seconds")
    return PollSchedule.fixed(interval)


def poll_fields(schedule: PollSchedule | None) -> dict[str, Any] | None:
    return dataclasses.asdict(schedule) if schedule is not None else None


def success_states(value: Iterable[RunState | str] | str | None) -> frozenset[RunState]:
    return DEFAULT_SUCCESS if value is None else parse_states(value)


class RunOutcome:
    """Mixin: ``_finish(context, status)`` turns a terminal status into the task's result."""

    success: frozenset[RunState]
    log: Any

    def _push_run(self, context: Context, ref: RunRef, url: str | None) -> None:
        """XCom the run reference and page before waiting (the extra link reads them)."""
        ti = context["ti"]
        ti.xcom_push(key=RUN_REF_KEY, value=ref.to_string())
        # always, None included: the link reads it, and a missing XCom is logged as an error
        ti.xcom_push(key=RUN_URL_KEY, value=url)

    def _finish(
        self, context: Context, status: RunStatus, *, retry: bool = False
    ) -> dict[str, Any]:
        """The run's terminal status as the task's JSON result, or the task's failure with the
        platform's message. ``retry``: whether another try of the task could do better (it
        would launch a new run); otherwise the failure is final (``AirflowFailException``)."""
        self.log.info("Finished: %s", status.summary())
        if status.succeeded(self.success):
            return status.to_dict()
        try:
            status.raise_for_state(self.success)
        except RunFailed as exc:
            message = str(exc)
        else:  # only terminal statuses come here; a run still going is no success either
            message = f"{status.summary()}: the run has not ended"
        raise (AirflowException if retry else AirflowFailException)(message)
