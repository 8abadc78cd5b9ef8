"""``external_run_sensor``: start a Dagster job when an external run ends, exactly once.

The cursor
----------
A JSON object, ``{"v": 1, "done": [...], "active": [...], "started": true, "newest": ...}``, of
run references (``RunRef.to_string()``):

* ``done``: runs already seen terminal (delivered, or filtered out). A run in ``done`` is
  never delivered again. The set is bounded: in list mode it keeps only the runs the latest
  listing still shows (a run that fell out of a newest-first listing cannot come back); with
  given references, only those still given; and never more than ``max_remembered``.
* ``active``: runs seen still going. In list mode each is checked directly once the listing no
  longer shows it, so a long run that slides out of the listing window is not lost.
* ``newest``: the creation time of the newest run listed so far. When a full listing holds only
  runs created after it, more runs were created between two evaluations than the listing
  shows; the sensor then lists again, wider (up to ``max_list_limit``), so that none is
  skipped, and warns if that is still not enough.

Dagster commits the cursor together with the run requests of the same evaluation
(``SensorResult``), so a completion is delivered once even if a tick fails half-way. Each
request's ``run_key`` is the run's reference: Dagster skips a run key the sensor already
launched, a second line of defence should a cursor be reset or a listing change its order.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import dagster as dg

from ..core import (
    ConfigError,
    RunbridgeError,
    RunClient,
    RunNotFound,
    RunRef,
    RunState,
    RunStatus,
    parse_states,
    retryable,
)
from ..core.models import parse_time

__all__ = ["SensorCursor", "external_run_sensor", "run_request_for"]

RefLike = RunRef | Mapping[str, Any] | str
Refs = Sequence[RefLike] | Callable[[dg.SensorEvaluationContext], Iterable[RefLike]]
CURSOR_VERSION = 1


@dataclasses.dataclass
class SensorCursor:
    """The sensor's memory; see the module docs."""

    done: list[str] = dataclasses.field(default_factory=list)
    active: list[str] = dataclasses.field(default_factory=list)
    started: bool = False
    """False until the first evaluation (list mode's baseline)."""
    newest: str | None = None
    """ISO creation time of the newest listed run (list mode)."""

    @classmethod
    def load(cls, text: str | None) -> SensorCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"external_run_sensor: unreadable cursor: {exc}") from None
        if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
            raise ConfigError(f"external_run_sensor: not a cursor of this sensor: {text[:200]!r}")
        return cls(
            done=[str(x) for x in data.get("done", [])],
            active=[str(x) for x in data.get("active", [])],
            started=bool(data.get("started", True)),
            newest=str(data["newest"]) if data.get("newest") else None,
        )

    def dumps(self) -> str:
        data: dict[str, Any] = {
            "v": CURSOR_VERSION,
            "done": self.done,
            "active": self.active,
            "started": self.started,
        }
        if self.newest:
            data["newest"] = self.newest
        return json.dumps(data, separators=(",", ":"))


def run_request_for(status: RunStatus) -> dg.RunRequest:
    """The default request: run key and tags naming the external run and how it ended."""
    return dg.RunRequest(run_key=status.ref.to_string(), tags=_tags(status))


def _tags(status: RunStatus) -> dict[str, str]:
    tags = {
        "runbridge/ref": status.ref.to_string(),
        "runbridge/state": status.state.value,
        "runbridge/raw_state": status.raw_state,
    }
    if status.url:
        tags["runbridge/url"] = status.url
    return tags


def _known(ref: RefLike, platform: str) -> str | None:
    """The cursor key of a given reference, when it can be read without asking the platform."""
    try:
        parsed = RunRef.coerce(ref)
    except ConfigError:
        return None
    return parsed.to_string() if parsed.platform == platform else None


def external_run_sensor(
    *,
    name: str,
    refs: Refs | None = None,
    list_filters: Mapping[str, Any] | None = None,
    list_limit: int = 100,
    max_list_limit: int | None = None,
    states: Sequence[RunState | str] | None = None,
    run_request: Callable[[RunStatus], dg.RunRequest | None] | None = None,
    include_existing: bool = False,
    resource_key: str = "external_run",
    max_remembered: int = 10_000,
    **sensor_kwargs: Any,
) -> dg.SensorDefinition:
    """A sensor that requests a run of its job each time an external run reaches a terminal
    state, once per external run.

    Which runs: ``refs`` (references, or a function of the sensor context returning them), or,
    without ``refs``, the platform's run listing (``list_filters`` passed to
    ``RunClient.list``, newest ``list_limit`` runs, listed wider up to ``max_list_limit``
    (default 10 x ``list_limit``) when more runs were created between two evaluations), where
    the platform can list runs. In list mode, runs that had already ended when the sensor
    first evaluates are not delivered unless ``include_existing``.

    ``states``: the terminal states that start the job (default: every terminal state).
    ``run_request``: build the ``RunRequest`` for a finished run (return None to skip it); its
    ``run_key`` defaults to the run's reference and runbridge's tags are added. Other keyword
    arguments go to ``dg.sensor`` (``job``, ``target``, ``minimum_interval_seconds``,
    ``default_status``, ...).
    """
    wanted = parse_states(states) if states is not None else None
    if not isinstance(list_limit, int) or list_limit < 1:
        raise ConfigError(f"list_limit must be a positive integer, got {list_limit!r}")
    widest = max_list_limit if max_list_limit is not None else 10 * list_limit
    if not isinstance(widest, int) or widest < list_limit:
        raise ConfigError(f"max_list_limit must be an integer >= list_limit, got {widest!r}")
    sensor_kwargs.setdefault("minimum_interval_seconds", 30)
    sensor_kwargs.setdefault(
        "description",
        f"Requests a run when an external run (through `{resource_key}`) reaches a terminal state.",
    )

    def evaluate(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        resource = getattr(context.resources, resource_key)
        cursor = SensorCursor.load(context.cursor)
        with resource.get_client() as client:
            if refs is not None:
                statuses, keep = _given(context, client, refs, cursor)
                gone: set[str] = set()
                baseline = False
                newest = None
            else:
                statuses, keep, gone, newest = _listed(
                    context, client, list_filters, list_limit, widest, cursor
                )
                baseline = not cursor.started and not include_existing
        done, active = list(cursor.done), set(cursor.active) - gone
        requests: list[dg.RunRequest] = []
        skipped = 0
        for status in statuses:
            key = status.ref.to_string()
            if key in done:
                continue
            if not status.is_terminal:
                if refs is None:  # given references are all checked on every evaluation
                    active.add(key)
                continue
            active.discard(key)
            done.append(key)
            if baseline:
                skipped += 1
            elif wanted is not None and status.state not in wanted:
                context.log.info(f"{status.summary()}: not a state that starts the job")
            else:
                request = _request(status, run_request)
                if request is not None:
                    context.log.info(f"{status.summary()}: requesting a run")
                    requests.append(request)
        if skipped:
            context.log.info(
                f"First evaluation: {skipped} run(s) that had already ended are not delivered "
                "(include_existing=False)"
            )
        done = [k for k in done if k in keep or k in active][-max_remembered:]
        new = SensorCursor(
            done=done, active=sorted(active)[-max_remembered:], started=True, newest=newest
        )
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=new.dumps())
        return dg.SensorResult(skip_reason="No external run ended", cursor=new.dumps())

    evaluate.__name__ = name
    return dg.sensor(name=name, required_resource_keys={resource_key}, **sensor_kwargs)(evaluate)


def _request(
    status: RunStatus, build: Callable[[RunStatus], dg.RunRequest | None] | None
) -> dg.RunRequest | None:
    if build is None:
        return run_request_for(status)
    request = build(status)
    if request is None:
        return None
    if not isinstance(request, dg.RunRequest):
        raise ConfigError(f"run_request must return a dg.RunRequest or None, got {request!r}")
    return request.with_replaced_attrs(
        run_key=request.run_key or status.ref.to_string(),
        tags={**_tags(status), **(request.tags or {})},
    )


def _given(
    context: dg.SensorEvaluationContext, client: RunClient, refs: Refs, cursor: SensorCursor
) -> tuple[list[RunStatus], set[str]]:
    """Statuses of the given runs not delivered yet; the keys still given."""
    given = list(refs(context) if callable(refs) else refs)
    done = set(cursor.done)
    statuses: list[RunStatus] = []
    keep: set[str] = set()
    for ref in given:
        key = _known(ref, client.platform)
        if key is not None:
            keep.add(key)
            if key in done:
                continue
        try:
            status = client.get(ref)
        except RunbridgeError as exc:
            # the reference is the user's text: redacted like everything runbridge logs
            context.log.warning(client.redact(f"Checking run {ref} failed: {_again(exc)}"))
            continue
        keep.add(status.ref.to_string())
        statuses.append(status)
    return statuses, keep


def _listed(
    context: dg.SensorEvaluationContext,
    client: RunClient,
    filters: Mapping[str, Any] | None,
    limit: int,
    widest: int,
    cursor: SensorCursor,
) -> tuple[list[RunStatus], set[str], set[str], str | None]:
    """The platform's newest runs, plus the runs seen going that the listing no longer shows.

    Returns those statuses, the keys the listing shows, the runs seen going that no longer
    exist, and the newest creation time listed (for the next evaluation's gap check).
    """
    previous = parse_time(cursor.newest)
    while True:
        listed: list[RunStatus] = client.list(limit=limit, **(filters or {}))
        gap = (
            previous is not None
            and len(listed) >= limit
            and all(s.created_at is not None and s.created_at > previous for s in listed)
        )
        if not gap:
            break
        if limit >= widest:
            context.log.warning(
                f"More than {limit} runs were created since the last evaluation; runs beyond "
                "them are not seen. Raise list_limit / max_list_limit or evaluate more often."
            )
            break
        limit = min(widest, limit * 4)
    keep = {s.ref.to_string() for s in listed}
    created = [s.created_at for s in listed if s.created_at is not None]
    newest = max([*created, *([previous] if previous else [])], default=None)
    statuses = list(listed)
    gone: set[str] = set()
    for key in cursor.active:
        if key in keep:
            continue
        try:
            statuses.append(client.get(key))
        except RunNotFound:
            context.log.warning(f"Run {key} disappeared before it was seen ending; forgetting it")
            gone.add(key)
        except RunbridgeError as exc:
            context.log.warning(f"Checking run {key} failed: {_again(exc)}")
    return statuses, keep, gone, newest.isoformat() if newest else None


def _again(exc: RunbridgeError) -> str:
    """The error, and whether the next evaluation is likely to do better."""
    if retryable(exc):
        return f"{exc}; trying again next evaluation"
    return f"{exc}; checked again next evaluation (this error is not transient: check the run)"
