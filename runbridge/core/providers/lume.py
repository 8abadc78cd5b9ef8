"""``lume``: Lume pipeline runs (the ``LumeRun`` of Lume's Python SDK: ``lume.run(flow_version,
source_path)``, ``lume.run_status(run_id)``).

Facts, sources and assumptions are in docs/platforms/lume.md. The API behind ``LumeRun`` is not
public, so the wire format below is modelled on the documented SDK semantics, and every path is
an option. In short:

* Auth: header ``lume-api-key: <key>`` (the only auth header public Lume code sends).
* Launch: ``POST {launch_path}`` (default ``/runs``) with ``{"flow_version", "source_path",
  "run_metadata"?, "force_rerun"?}``; other params are sent as they are (e.g. ``webhook_url``).
  Lume refuses a ``source_path`` that a flow version already processed (``force_rerun``
  bypasses that), so a resent launch cannot start a second run of the same batch; there is
  no client-chosen id, idempotency header or run search, so ``find`` is not supported and an
  ambiguous launch raises ``LaunchUncertain``. A launch key is recorded in
  ``run_metadata["runbridge_key"]`` for traceability.
* Status: ``GET {status_path}`` (default ``/runs/{run_id}``) answers the run object
  ``{"id", "status", "created_at", "updated_at", "flow_version", "source_path",
  "run_metadata", "metadata"}``. ``metadata`` is the documented object (run, pipeline with
  stage timings, results with row counts and target locations, validation with top errors,
  errors); it is kept as JSON in ``outputs["metadata"]`` and read as typed data with
  :meth:`Lume.metadata`.
* States: see :data:`STATES`. ``CRASHED`` (an internal Lume error) is FAILED, its raw value
  kept. ``PARTIAL_FAILED`` follows the ``partial`` option: ``"fail"`` (default) reports
  PARTIAL, which is not a success unless the caller's ``success`` policy says so;
  ``"accept"`` reports SUCCEEDED; a number ``r`` reports SUCCEEDED when
  ``rejected_rows / input_rows <= r``, PARTIAL otherwise (and when the counts are missing).
* No cancel, no blocking wait endpoint: runs are polled, or completed by a webhook delivery
  (:func:`runbridge.core.webhooks.parse_delivery` reads one with :meth:`Lume.parse_webhook`).
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Union
from urllib.parse import quote

from ..errors import BadRequest, ConfigError, ProtocolError
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..states import RunState
from ._parse import excerpt, ident, items, mapping, number, unreadable_launch
from .base import Provider

__all__ = [
    "STATES",
    "Lume",
    "LumeRunInfo",
    "LumeRunMetadata",
    "PartialPolicy",
    "PipelineInfo",
    "RowResults",
    "StageError",
    "StageTimings",
    "TargetLocations",
    "TopError",
    "ValidationSummary",
]

STATES: dict[str, RunState] = {
    # The LumeRun lifecycle (Python SDK docs, "Run Lifecycle")
    "CREATED": RunState.PENDING,
    "SYNCING_SOURCE": RunState.RUNNING,
    "TRANSFORMING": RunState.RUNNING,
    "SYNCING_TARGET": RunState.RUNNING,
    "SUCCEEDED": RunState.SUCCEEDED,
    "PARTIAL_FAILED": RunState.PARTIAL,
    "FAILED": RunState.FAILED,
    "CRASHED": RunState.FAILED,
    # The flows API of the public TypeScript SDK (src/models/status.ts)
    "PENDING": RunState.PENDING,
    "RUNNING": RunState.RUNNING,
    "INCOMPLETE": RunState.PARTIAL,
}
"""Lume run statuses. CRASHED is an internal Lume error: FAILED, with the raw value kept.
PARTIAL_FAILED (and the flows API's INCOMPLETE) is PARTIAL before the ``partial`` policy."""

KEY_FIELD = "runbridge_key"
"""Where a launch's idempotency key is recorded in ``run_metadata``."""

PartialPolicy = Union[Literal["fail", "accept"], float]  # noqa: UP007 (a runtime alias on 3.10)


# -- the metadata object, typed -----------------------------------------------------------------
def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _float(value: Any) -> float | None:
    return number(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclasses.dataclass(frozen=True)
class LumeRunInfo:
    """``metadata.run``: which run, of which flow version, on which source path."""

    run_id: str | None = None
    flow_version: str | None = None
    source_path: str | None = None
    status: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> LumeRunInfo:
        data = _map(data)
        return cls(
            _str(data.get("run_id")),
            _str(data.get("flow_version")),
            _str(data.get("source_path")),
            _str(data.get("status")),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class StageTimings:
    """``metadata.pipeline.stages``: seconds spent in each sync-transform-sync stage."""

    sync_source_seconds: float | None = None
    transform_seconds: float | None = None
    sync_target_seconds: float | None = None

    @classmethod
    def from_dict(cls, data: Any) -> StageTimings:
        data = _map(data)
        return cls(
            _float(data.get("sync_source_seconds")),
            _float(data.get("transform_seconds")),
            _float(data.get("sync_target_seconds")),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    """``metadata.pipeline``: when the run was accepted and ended, and its stage timings."""

    created_at: datetime | None = None
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    stages: StageTimings = dataclasses.field(default_factory=StageTimings)

    @classmethod
    def from_dict(cls, data: Any) -> PipelineInfo:
        data = _map(data)
        return cls(
            parse_time(data.get("created_at")),
            parse_time(data.get("completed_at")),
            _float(data.get("duration_seconds")),
            StageTimings.from_dict(data.get("stages")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "created_at": _iso(self.created_at),
            "completed_at": _iso(self.completed_at),
            "duration_seconds": self.duration_seconds,
            "stages": self.stages.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class TargetLocations:
    """``metadata.results.target_locations``: URIs of the mapped and the rejected rows."""

    mapped: str | None = None
    rejects: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> TargetLocations:
        data = _map(data)
        return cls(_str(data.get("mapped")), _str(data.get("rejects")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RowResults:
    """``metadata.results``: row counts and where the rows were written."""

    input_rows: int | None = None
    mapped_rows: int | None = None
    rejected_rows: int | None = None
    target_locations: TargetLocations = dataclasses.field(default_factory=TargetLocations)

    @property
    def rejected_ratio(self) -> float | None:
        """``rejected_rows / input_rows``; None when either count is missing or no row came in."""
        if self.rejected_rows is None or not self.input_rows or self.input_rows <= 0:
            return None
        try:
            return self.rejected_rows / self.input_rows
        except OverflowError:  # counts of hundreds of digits: far more rejected than read
            return math.inf

    @classmethod
    def from_dict(cls, data: Any) -> RowResults:
        data = _map(data)
        return cls(
            _int(data.get("input_rows")),
            _int(data.get("mapped_rows")),
            _int(data.get("rejected_rows")),
            TargetLocations.from_dict(data.get("target_locations")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_rows": self.input_rows,
            "mapped_rows": self.mapped_rows,
            "rejected_rows": self.rejected_rows,
            "target_locations": self.target_locations.to_dict(),
        }


@dataclasses.dataclass(frozen=True)
class TopError:
    """One entry of ``metadata.validation.top_errors``."""

    error_code: str | None = None
    field: str | None = None
    count: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> TopError:
        data = _map(data)
        return cls(_str(data.get("error_code")), _str(data.get("field")), _int(data.get("count")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        text = self.error_code or "error"
        if self.field:
            text += f" on {self.field}"
        if self.count is not None:
            text += f" ({self.count})"
        return text


@dataclasses.dataclass(frozen=True)
class ValidationSummary:
    """``metadata.validation``: data quality tests and their most common failures."""

    tests_executed: int | None = None
    tests_failed: int | None = None
    error_rate: float | None = None
    top_errors: tuple[TopError, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> ValidationSummary:
        data = _map(data)
        tops = data.get("top_errors")
        return cls(
            _int(data.get("tests_executed")),
            _int(data.get("tests_failed")),
            _float(data.get("error_rate")),
            tuple(TopError.from_dict(e) for e in tops if isinstance(e, Mapping))
            if isinstance(tops, list)
            else (),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tests_executed": self.tests_executed,
            "tests_failed": self.tests_failed,
            "error_rate": self.error_rate,
            "top_errors": [e.to_dict() for e in self.top_errors],
        }


@dataclasses.dataclass(frozen=True)
class StageError:
    """One entry of ``metadata.errors``: why a run failed, and in which stage."""

    stage: str | None = None
    error_code: str | None = None
    message: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> StageError:
        data = _map(data)
        return cls(_str(data.get("stage")), _str(data.get("error_code")), _str(data.get("message")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return ": ".join(p for p in (self.stage, self.error_code, self.message) if p) or "error"


@dataclasses.dataclass(frozen=True)
class LumeRunMetadata:
    """The ``metadata`` object of a LumeRun, typed.

    Reading is lenient: a missing section or a value of the wrong type becomes None (or empty),
    never an error, because the object is informative and only complete once a run has ended.
    """

    run: LumeRunInfo = dataclasses.field(default_factory=LumeRunInfo)
    pipeline: PipelineInfo = dataclasses.field(default_factory=PipelineInfo)
    results: RowResults = dataclasses.field(default_factory=RowResults)
    validation: ValidationSummary = dataclasses.field(default_factory=ValidationSummary)
    errors: tuple[StageError, ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> LumeRunMetadata:
        data = _map(data)
        errors = data.get("errors")
        return cls(
            LumeRunInfo.from_dict(data.get("run")),
            PipelineInfo.from_dict(data.get("pipeline")),
            RowResults.from_dict(data.get("results")),
            ValidationSummary.from_dict(data.get("validation")),
            tuple(StageError.from_dict(e) for e in errors if isinstance(e, Mapping))
            if isinstance(errors, list)
            else (),
        )

    def to_dict(self) -> dict[str, Any]:
        """The documented JSON shape (timestamps as ISO 8601 strings)."""
        return {
            "run": self.run.to_dict(),
            "pipeline": self.pipeline.to_dict(),
            "results": self.results.to_dict(),
            "validation": self.validation.to_dict(),
            "errors": [e.to_dict() for e in self.errors],
        }


# -- the provider ----------------------------------------------------------------------------
def _template(value: Any, option: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ConfigError(f"lume: {option} must be a path starting with '/', got {value!r}")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ConfigError(f"lume: {option} {value!r} is not a valid template: {exc}") from None
    missing = [n for n in required if n not in names]
    unknown = sorted(names - set(allowed))
    if missing or unknown:
        raise ConfigError(
            f"lume: {option} {value!r} must use "
            + (", ".join(f"{{{n}}}" for n in allowed) if allowed else "no {placeholders}")
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    return value


def _policy(value: Any) -> PartialPolicy:
    if value in ("fail", "accept"):
        policy: PartialPolicy = value
        return policy
    ratio: Any = value
    if isinstance(value, str):
        try:
            ratio = float(value)
        except ValueError:
            ratio = None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError(
            f"lume: partial must be 'fail', 'accept' or a rejected-rows ratio between 0 and 1, "
            f"got {value!r}"
        )
    return float(ratio)


class Lume(Provider):
    """Lume pipeline runs. Options:

    * ``partial``: what a PARTIAL_FAILED run counts as: ``"fail"`` (default: state PARTIAL,
      not a success unless the wait's ``success`` includes PARTIAL), ``"accept"`` (SUCCEEDED),
      or a ratio such as ``0.05`` (SUCCEEDED when at most 5 % of the input rows were rejected).
    * ``launch_path`` (default ``/runs``), ``status_path`` (default ``/runs/{run_id}``): where
      the API is, relative to the base URL (the LumeRun API is not public; see the docs).
    * ``api_key_header`` (default ``lume-api-key``): the header that carries the API key.
    * ``run_url``: a template with ``{run_id}`` for the run's page in the Lume app.
    """

    name = "lume"
    states = STATES
    ref_scope = ()
    supports_launch = True
    supports_cancel = False
    supports_find = False

    def __init__(
        self,
        *,
        partial: PartialPolicy | str = "fail",
        launch_path: str = "/runs",
        status_path: str = "/runs/{run_id}",
        api_key_header: str = "lume-api-key",
        run_url: str | None = None,
    ) -> None:
        self.partial: PartialPolicy = _policy(partial)
        self.launch_path = _template(launch_path, "launch_path", (), ())
        self.status_path = _template(status_path, "status_path", ("run_id",), ("run_id",))
        if not isinstance(api_key_header, str) or not api_key_header.strip():
            raise ConfigError("lume: api_key_header must be a non-empty header name")
        self.api_key_header = api_key_header.strip()
        if run_url is not None:
            try:
                run_url.format(run_id="r")
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                raise ConfigError(
                    f"lume: run_url {run_url!r} is not a valid template (use {{run_id}}): {exc}"
                ) from None
        self.run_url = run_url

    def auth_headers(self, token: str) -> dict[str, str]:
        return {self.api_key_header: token}

    def map_state(self, raw: Any) -> RunState:
        return self.states.get(str(raw).upper(), RunState.UNKNOWN) if raw else RunState.UNKNOWN

    def error_message(self, body: Any) -> str | None:
        """FastAPI-style bodies: ``{"detail": "..."}`` or ``{"detail": [{"loc", "msg"}]}``,
        with an optional ``error_id`` (read by the TypeScript SDK's ApiClient)."""
        if isinstance(body, Mapping):
            detail = body.get("detail")
            text: str | None = None
            if isinstance(detail, list):
                parts = []
                for item in detail:
                    if isinstance(item, Mapping):
                        loc = ".".join(str(p) for p in items(item.get("loc")) if p != "body")
                        msg = str(item.get("msg") or item.get("type") or "invalid")
                        parts.append(f"{loc}: {msg}" if loc else msg)
                    else:
                        parts.append(str(item))
                text = "; ".join(parts) or None
            else:
                text = super().error_message(body)
            error_id = body.get("error_id")
            if text and isinstance(error_id, str) and error_id:
                text += f" (error id {error_id})"
            return text
        return super().error_message(body)

    # -- launch ------------------------------------------------------------------------------
    def launch_body(self, spec: LaunchSpec) -> dict[str, Any]:
        """The JSON body of a launch, validated (ConfigError before any request)."""
        params = dict(spec.params)
        for field in ("flow_version", "source_path"):
            value = params.get(field)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"lume: launch needs params[{field!r}], a non-empty string "
                    f"(e.g. flow_version='invoice_processor:v3', source_path='s3://bucket/batch.csv'),"
                    f" got {value!r}"
                )
        metadata = params.get("run_metadata")
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ConfigError("lume: params['run_metadata'] must be a mapping")
        force = params.get("force_rerun")
        if force is not None and not isinstance(force, bool):
            raise ConfigError(f"lume: params['force_rerun'] must be true or false, got {force!r}")
        if spec.key:
            params["run_metadata"] = {**(metadata or {}), KEY_FIELD: spec.key}
        elif metadata is not None:
            params["run_metadata"] = dict(metadata)
        return params

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        body = self.launch_body(spec)
        response = yield Request("POST", self.launch_path, json=body)
        if response.status_code == 404:
            # No run is missing: the flow version (or the launch path) does not exist.
            error = self.error_for(response)
            raise BadRequest(
                f"{error.message} (check params['flow_version'] and the launch_path option)",
                platform=self.name,
                status_code=404,
                request_id=error.request_id,
                body=error.body,
            )
        return self._launched(response)

    def _launched(self, response: Response) -> RunRef:
        if not response.ok:
            raise self.error_for(response)
        try:
            run = mapping(response.json())
        except ProtocolError:
            run = mapping(None)
        run_id = ident(run.get("id")) or ident(run.get("run_id"))
        if run_id is None:
            raise unreadable_launch(self.name, "is not a run object with an id", response)
        return RunRef(self.name, run_id)

    # -- status ------------------------------------------------------------------------------
    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        path = self.status_path.format(run_id=quote(ref.id, safe=""))
        run = self.decipher((yield Request("GET", path)))
        if not isinstance(run, Mapping) or not run.get("status"):
            raise ProtocolError(f"lume: expected a run object with a status, got {excerpt(run)}")
        return self.parse_run(ref, run)

    def parse_run(self, ref: RunRef, run: Mapping[str, Any]) -> RunStatus:
        """A RunStatus from a run object (a status answer, or a webhook delivery's run)."""
        raw = str(run.get("status"))
        state = self.map_state(raw)
        raw_metadata = run.get("metadata")
        metadata = dict(raw_metadata) if isinstance(raw_metadata, Mapping) else {}
        typed = LumeRunMetadata.from_dict(metadata)
        message: str | None = None
        if state is RunState.PARTIAL:
            state, message = self._partial(raw, typed)
        elif state is RunState.FAILED:
            message = self._failure(raw, typed)
        outputs: dict[str, Any] = {"metadata": metadata}
        for field in ("flow_version", "source_path", "run_metadata"):
            if run.get(field) is not None:
                outputs[field] = run[field]
        updated = parse_time(run.get("updated_at"))
        ended = typed.pipeline.completed_at or (updated if state.is_terminal else None)
        return RunStatus(
            ref=ref,
            state=state,
            raw_state=raw,
            url=self.run_url.format(run_id=ref.id) if self.run_url else None,
            message=message,
            outputs=outputs,
            created_at=parse_time(run.get("created_at")) or typed.pipeline.created_at,
            updated_at=updated,
            ended_at=ended if state.is_terminal else None,
        )

    @staticmethod
    def _failure(raw: str, typed: LumeRunMetadata) -> str:
        if typed.errors:
            text = "; ".join(str(e) for e in typed.errors)
        else:
            text = "no error details reported"
        if raw.upper() == "CRASHED":
            return f"CRASHED (an internal Lume error): {text}"
        return text

    def _partial(self, raw: str, typed: LumeRunMetadata) -> tuple[RunState, str]:
        results = typed.results
        ratio = results.rejected_ratio
        if results.rejected_rows is not None and results.input_rows is not None:
            summary = f"{raw}: {results.rejected_rows} of {results.input_rows} rows rejected"
            if ratio is not None:
                summary += f" ({ratio:.2%})"
        else:
            summary = f"{raw}: some rows were rejected"
        if typed.validation.top_errors:
            summary += "; top errors: " + ", ".join(str(e) for e in typed.validation.top_errors)
        if results.target_locations.rejects:
            summary += f"; rejects at {results.target_locations.rejects}"
        policy = self.partial
        if policy == "accept":
            return RunState.SUCCEEDED, f"{summary}; accepted (partial='accept')"
        if isinstance(policy, float):
            if ratio is None:
                return (
                    RunState.PARTIAL,
                    f"{summary}; not accepted: partial={policy:g} needs the input and rejected "
                    "row counts",
                )
            if ratio <= policy:
                return RunState.SUCCEEDED, f"{summary}; accepted (at most {policy:.2%} rejected)"
            return RunState.PARTIAL, f"{summary}; not accepted (more than {policy:.2%} rejected)"
        return RunState.PARTIAL, summary

    @staticmethod
    def metadata(status: RunStatus) -> LumeRunMetadata:
        """The typed metadata of a Lume RunStatus (empty sections where the run has none yet)."""
        return LumeRunMetadata.from_dict(status.outputs.get("metadata"))

    # -- webhooks ----------------------------------------------------------------------------
    webhook_signature_header = "x-lume-signature-256"
    """The header of a delivery's HMAC-SHA256 signature (Lume production docs)."""

    def parse_webhook(self, payload: Any, headers: Mapping[str, str] | None = None) -> RunStatus:
        """The RunStatus a webhook delivery reports (see docs/platforms/lume.md, "Webhooks").

        Accepts the run summary at the top level or under ``data``; the run id as ``run_id`` or
        ``id``. A delivery carrying the full ``metadata`` object uses it; otherwise the summary's
        ``results``, ``validation``, ``errors`` and timestamps are read as that object's parts.
        """
        if isinstance(payload, Mapping) and isinstance(payload.get("data"), Mapping):
            payload = payload["data"]
        if not isinstance(payload, Mapping):
            raise ProtocolError(
                f"lume: a webhook delivery must be a JSON object, got {excerpt(payload)}"
            )
        run_id = ident(payload.get("run_id")) or ident(payload.get("id"))
        if run_id is None or not payload.get("status"):
            raise ProtocolError(
                f"lume: a webhook delivery needs run_id and status, got {excerpt(dict(payload))}"
            )
        metadata = payload.get("metadata")
        if not isinstance(metadata, Mapping):
            metadata = {
                "run": {
                    "run_id": run_id,
                    "flow_version": payload.get("flow_version"),
                    "source_path": payload.get("source_path"),
                    "status": payload.get("status"),
                },
                "pipeline": {
                    "created_at": payload.get("created_at"),
                    "completed_at": payload.get("completed_at"),
                },
                **{
                    key: payload[key]
                    for key in ("results", "validation", "errors")
                    if payload.get(key) is not None
                },
            }
        run = {
            **payload,
            "id": run_id,
            "metadata": metadata,
            "updated_at": payload.get("updated_at") or payload.get("completed_at"),
        }
        return self.parse_run(RunRef(self.name, run_id), run)
