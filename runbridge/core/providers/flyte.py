"""``flyte``: Flyte 2 / Union runs, through ``flyteidl2.workflow.RunService`` over Connect.

Facts and their sources are in docs/platforms/flyte.md. In short:

* The control plane speaks **Connect** (connect-go handlers in the open-source backend; the
  ``flyte`` SDK uses connect-python with binary protobuf). A Connect server also accepts the
  **JSON codec**, which plain httpx can speak: a unary call is ``POST /<service>/<Method>`` with
  ``content-type: application/json`` and ``connect-protocol-version: 1``; a server-streaming call
  sends one enveloped message as ``application/connect+json`` and gets back 5-byte-enveloped
  messages ending with an end-of-stream envelope (flag ``0x02``) that carries an error or
  nothing. No gRPC (HTTP/2 trailers) is needed.
* A run is addressed by ``RunIdentifier {org, project, domain, name}``; a :class:`RunRef` keeps
  the name as its id and ``project``, ``domain`` (and ``org`` where the deployment has one) in
  its scope. Its state is its root action's ``ActionStatus.phase`` (``ACTION_PHASE_*``).
* Launch: ``CreateRun`` with a ``runId`` whose name is chosen by runbridge (``params["name"]``,
  else derived from the idempotency key), ``taskId`` (a deployed task: name and version) and the
  inputs as ``flyteidl2.core.Literal`` JSON, inline (default) or uploaded first with
  ``DataProxyService/UploadInputs`` as the SDK does. ``find`` looks the run up by that name
  (``GetRunDetails``), so a retried launch re-attaches instead of running twice.
* Wait: ``join`` opens ``WatchActionDetails`` on the root action (``a0``), which the server keeps
  open until the action is terminal; the provider bounds it with ``connect-timeout-ms``, decodes
  the envelopes and takes the latest details. (``WatchRunDetails`` would need no action name,
  but the open-source server only streams empty messages for it.)
* Outputs: ``DataProxyService/GetActionData`` for a succeeded run (``outputs["values"]``).
* URL: as the SDK's ``Run.url``: ``{scheme}://{host}/v2/domain/{d}/project/{p}/runs/{name}``.
* Auth: ``authorization: Bearer <access token>`` (the header name can be changed).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import re
import struct
import zlib
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Conflict,
    PlatformError,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunNotFound,
)
from ..http import Exchange, Request, Response
from ..models import LaunchSpec, RunRef, RunStatus, parse_time
from ..schedule import parse_retry_after
from ..states import RunState
from ._parse import excerpt, integer, items, mapping, text, unreadable_launch
from .base import Provider

__all__ = [
    "CONNECT_CODES",
    "PHASES",
    "STATES",
    "Flyte",
    "StreamBody",
    "decode_stream",
    "envelope",
    "from_literal",
    "run_name_for_key",
    "to_literal",
]

STATES: dict[str, RunState] = {
    "ACTION_PHASE_UNSPECIFIED": RunState.PENDING,
    "ACTION_PHASE_QUEUED": RunState.PENDING,
    "ACTION_PHASE_WAITING_FOR_RESOURCES": RunState.PENDING,
    "ACTION_PHASE_INITIALIZING": RunState.PENDING,
    "ACTION_PHASE_RUNNING": RunState.RUNNING,
    "ACTION_PHASE_PAUSED": RunState.RUNNING,
    "ACTION_PHASE_SUCCEEDED": RunState.SUCCEEDED,
    "ACTION_PHASE_FAILED": RunState.FAILED,
    "ACTION_PHASE_ABORTED": RunState.CANCELLED,
    "ACTION_PHASE_TIMED_OUT": RunState.TIMED_OUT,
    "ACTION_PHASE_RECOVERED": RunState.SUCCEEDED,
}
"""Every ``flyteidl2.common.ActionPhase``. ``UNSPECIFIED`` (the proto zero value, omitted from the
JSON) is a run whose phase is not known yet; ``PAUSED`` waits for a signal (e.g. an approval)
and is still going; ``RECOVERED`` reuses a prior run's result and is a success, as the SDK says."""

PHASES: dict[int, str] = {
    0: "ACTION_PHASE_UNSPECIFIED",
    1: "ACTION_PHASE_QUEUED",
    2: "ACTION_PHASE_WAITING_FOR_RESOURCES",
    3: "ACTION_PHASE_INITIALIZING",
    4: "ACTION_PHASE_RUNNING",
    5: "ACTION_PHASE_SUCCEEDED",
    6: "ACTION_PHASE_FAILED",
    7: "ACTION_PHASE_ABORTED",
    8: "ACTION_PHASE_TIMED_OUT",
    9: "ACTION_PHASE_PAUSED",
    10: "ACTION_PHASE_RECOVERED",
}
"""Enum numbers: a proto3 JSON reader accepts the number as well as the name."""

RUN_SERVICE = "/flyteidl2.workflow.RunService"
DATA_PROXY = "/flyteidl2.dataproxy.DataProxyService"
ROOT_ACTION = "a0"

CONNECT_CODES: dict[str, tuple[int, type[PlatformError]]] = {
    "canceled": (499, PlatformUnavailable),
    "unknown": (500, PlatformUnavailable),
    "invalid_argument": (400, BadRequest),
    "deadline_exceeded": (504, PlatformUnavailable),
    "not_found": (404, RunNotFound),
    "already_exists": (409, Conflict),
    "permission_denied": (403, AuthError),
    "resource_exhausted": (429, RateLimited),
    "failed_precondition": (400, Conflict),
    "aborted": (409, Conflict),
    "out_of_range": (400, BadRequest),
    "unimplemented": (501, PlatformError),
    "internal": (500, PlatformUnavailable),
    "unavailable": (503, PlatformUnavailable),
    "data_loss": (500, PlatformUnavailable),
    "unauthenticated": (401, AuthError),
}
"""Connect error code -> (its HTTP status in the Connect protocol, the runbridge error).
``failed_precondition``/``aborted`` mean "not in this state" (e.g. the run already ended), so
they are a Conflict; ``unimplemented`` is never worth retrying."""

STREAM_ENDS = frozenset({"deadline_exceeded", "canceled", "unavailable"})
"""End-of-stream errors that only end the watch (our deadline, a proxy reset): not failures."""

MAX_RUN_NAME = 30
"""``RunIdentifier.name`` max_len (buf.validate annotation in flyteidl2)."""
_INT64 = (-(2**63), 2**63 - 1)
_FRACTION = re.compile(r"(\.\d{6})\d+")


def run_name_for_key(key: str) -> str:
    """The run name of a keyed launch: ``rb`` + 18 hex digits of sha256(key) (20 characters,
    lower-case letters and digits, like the server's own ``r`` + 19 characters)."""
    return "rb" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:18]


# -- the Connect streaming envelope ------------------------------------------------------------
def envelope(payload: bytes, flags: int = 0) -> bytes:
    """One Connect streaming frame: 1 flag byte, 4-byte big-endian length, the payload."""
    return struct.pack(">BI", flags, len(payload)) + payload


@dataclasses.dataclass(frozen=True)
class StreamBody:
    """A decoded ``application/connect+json`` response body."""

    messages: list[Any]
    end: Mapping[str, Any] | None
    """The end-of-stream object (``{}``, ``{"error": {...}}``, ``{"metadata": ...}``); None if
    the stream stopped without one (cut short, or our own deadline)."""

    @property
    def error(self) -> Mapping[str, Any] | None:
        error = self.end.get("error") if self.end else None
        return error if isinstance(error, Mapping) else None


def decode_stream(content: bytes, *, compression: str | None = None) -> StreamBody:
    """Split a Connect streaming body into its JSON messages and end-of-stream object.

    A frame cut off at the end (the connection closed mid-message) is dropped; a frame that is
    not JSON raises ProtocolError. ``compression`` is the ``connect-content-encoding`` header.
    """
    messages: list[Any] = []
    end: Mapping[str, Any] | None = None
    offset = 0
    while offset + 5 <= len(content):
        flags, length = struct.unpack_from(">BI", content, offset)
        start = offset + 5
        if start + length > len(content):
            break  # truncated frame
        payload = content[start : start + length]
        offset = start + length
        if flags & 0x01:
            if compression != "gzip":
                raise ProtocolError(
                    f"flyte: a compressed stream message with encoding {compression!r}"
                )
            try:
                payload = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error) as exc:
                raise ProtocolError(f"flyte: a stream message is not valid gzip: {exc}") from None
        try:
            value = json.loads(payload) if payload else {}
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"flyte: a stream message is not JSON: {exc}") from None
        if flags & 0x02:
            end = value if isinstance(value, Mapping) else {}
            break
        messages.append(value)
    return StreamBody(messages, end)


# -- literals ---------------------------------------------------------------------------------
def _duration(value: timedelta) -> str:
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    seconds, micro = divmod(abs(micros), 1_000_000)
    return f"{sign}{seconds}.{micro:06d}s" if micro else f"{sign}{seconds}s"


def _timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def to_literal(value: Any, *, name: str = "input") -> dict[str, Any]:
    """A Python value as ``flyteidl2.core.Literal`` JSON.

    bool, int (int64), float, str, None, datetime (naive means UTC), timedelta, lists and tuples
    (a collection) and dicts with string keys (a map, i.e. ``dict[str, T]``). Anything else
    (dataclasses, untyped dicts, files) must be passed as a literal in ``params["literals"]``.
    """
    if value is None:
        return {"scalar": {"noneType": {}}}
    if isinstance(value, bool):
        return {"scalar": {"primitive": {"boolean": value}}}
    if isinstance(value, int):
        if not _INT64[0] <= value <= _INT64[1]:
            raise ConfigError(f"flyte: input {name!r} does not fit in an int64: {value}")
        return {"scalar": {"primitive": {"integer": str(value)}}}
    if isinstance(value, float):
        number: float | str = value
        if math.isnan(value):
            number = "NaN"
        elif math.isinf(value):
            number = "Infinity" if value > 0 else "-Infinity"
        return {"scalar": {"primitive": {"floatValue": number}}}
    if isinstance(value, str):
        return {"scalar": {"primitive": {"stringValue": value}}}
    if isinstance(value, datetime):
        return {"scalar": {"primitive": {"datetime": _timestamp(value)}}}
    if isinstance(value, timedelta):
        return {"scalar": {"primitive": {"duration": _duration(value)}}}
    if isinstance(value, (list, tuple)):
        items = [to_literal(v, name=f"{name}[{i}]") for i, v in enumerate(value)]
        return {"collection": {"literals": items}}
    if isinstance(value, Mapping):
        literals: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"flyte: input {name!r}: map keys must be strings, got {key!r}")
            literals[key] = to_literal(item, name=f"{name}[{key!r}]")
        return {"map": {"literals": literals}}
    raise ConfigError(
        f"flyte: input {name!r} has type {type(value).__name__}, which runbridge cannot turn "
        "into a Flyte literal; pass it as a flyteidl2.core.Literal in params['literals']"
    )


def from_literal(literal: Any, _depth: int = 0) -> Any:
    """A ``flyteidl2.core.Literal`` JSON as a plain value: primitives, None, lists, maps and
    generic structs become Python values (datetimes and durations stay strings); anything else
    (blobs, msgpack binaries, offloaded literals) is returned as the literal's JSON.

    Total: a literal of an unexpected shape (a collection that is not a list, a float that is
    not a number) is returned as it is, never an error; the status it belongs to stands."""
    if not isinstance(literal, Mapping) or _depth > 100:
        return literal
    depth = _depth + 1
    collection = literal.get("collection")
    if isinstance(collection, Mapping) and isinstance(collection.get("literals", []), list):
        return [from_literal(item, depth) for item in collection.get("literals") or []]
    entries = mapping(literal.get("map")).get("literals")
    if isinstance(literal.get("map"), Mapping) and isinstance(entries or {}, Mapping):
        return {str(k): from_literal(v, depth) for k, v in (entries or {}).items()}
    scalar = literal.get("scalar")
    if isinstance(scalar, Mapping):
        primitive = scalar.get("primitive")
        if isinstance(primitive, Mapping):
            if "integer" in primitive:
                value = integer(primitive["integer"])
                return value if value is not None else primitive["integer"]
            if "floatValue" in primitive:
                return _float_value(primitive["floatValue"])
            for key in ("stringValue", "boolean", "datetime", "duration"):
                if key in primitive:
                    return primitive[key]
            return None  # an empty primitive: the zero value of an unset oneof
        if "primitive" in scalar:
            return dict(literal)
        if "noneType" in scalar:
            return None
        if "generic" in scalar:
            return scalar["generic"]
        union = scalar.get("union")
        if isinstance(union, Mapping) and "value" in union:
            return from_literal(union["value"], depth)
    return dict(literal)


def _float_value(number: Any) -> Any:
    """A proto3 JSON double: a number, or a string holding one (``"NaN"``, ``"1.5"``)."""
    if isinstance(number, bool):
        return number
    if isinstance(number, (int, float)):
        try:
            return float(number)
        except OverflowError:  # an integer beyond any double
            return number
    if isinstance(number, str):
        try:
            return float(number)
        except ValueError:
            return number
    return number


def _phase(raw: Any) -> str:
    if raw is None:
        return "ACTION_PHASE_UNSPECIFIED"
    if isinstance(raw, int) and not isinstance(raw, bool):
        return PHASES.get(raw, str(raw))
    return str(raw)


def _time(value: Any) -> datetime | None:
    if isinstance(value, str):
        value = _FRACTION.sub(r"\1", value)  # Python 3.10 reads at most 6 digits
    return parse_time(value)


class Flyte(Provider):
    """Flyte 2 / Union control plane. Options (all keyword-only):

    ``project``, ``domain``, ``org``: defaults for launches and for ``client.ref(name)``;
    ``task``, ``version``: the default deployed task to launch; ``console_url``: where run pages
    live (default: the client's base URL, as the SDK does); ``auth_header``: the header that
    carries ``Bearer <token>`` (``authorization``; some deployments name another in their
    ``authorization_metadata_key``); ``root_action``: the run's root action (``a0``);
    ``read_outputs``: read a succeeded run's outputs (True); ``upload_inputs``: upload inputs
    with ``DataProxyService/UploadInputs`` before ``CreateRun``, as the SDK does, instead of
    sending them inline (False); ``abort_reason``: the reason ``cancel`` gives.
    """

    name = "flyte"
    states = STATES
    ref_scope = ("project", "domain")
    supports_find = True
    auto_key = True

    def __init__(
        self,
        *,
        project: str | None = None,
        domain: str | None = None,
        org: str | None = None,
        task: str | None = None,
        version: str | None = None,
        console_url: str | None = None,
        auth_header: str = "authorization",
        root_action: str = ROOT_ACTION,
        read_outputs: bool = True,
        upload_inputs: bool = False,
        abort_reason: str = "aborted by runbridge",
    ) -> None:
        for option, value in (
            ("project", project),
            ("domain", domain),
            ("org", org),
            ("task", task),
            ("version", version),
        ):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"flyte: {option} must be a non-empty string, got {value!r}")
        if console_url is not None and (
            not isinstance(console_url, str) or not console_url.startswith(("http://", "https://"))
        ):
            raise ConfigError(
                f"flyte: console_url must be an http:// or https:// URL, got {console_url!r}"
            )
        if not isinstance(auth_header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", auth_header):
            raise ConfigError(f"flyte: auth_header must be a header name, got {auth_header!r}")
        if not isinstance(root_action, str) or not root_action:
            raise ConfigError("flyte: root_action must be a non-empty string")
        if not isinstance(abort_reason, str):
            raise ConfigError("flyte: abort_reason must be a string")
        self.project = project
        self.domain = domain
        self.org = org
        self.task = task
        self.version = version
        self.console_url = console_url.rstrip("/") if console_url else None
        self.auth_header = auth_header.lower()
        self.root_action = root_action
        self.read_outputs = bool(read_outputs)
        self.upload_inputs = bool(upload_inputs)
        self.abort_reason = abort_reason

    def auth_headers(self, token: str) -> dict[str, str]:
        return {self.auth_header: f"Bearer {token}"}

    def make_ref(self, run_id: str, **scope: str) -> RunRef:
        """A reference to a run by name; project, domain and org default to the options."""
        for key, default in (("project", self.project), ("domain", self.domain), ("org", self.org)):
            if default and not scope.get(key):
                scope[key] = default
        return super().make_ref(run_id, **scope)

    # -- requests --------------------------------------------------------------------------
    @staticmethod
    def _unary(
        method: str, body: Mapping[str, Any], *, service: str = RUN_SERVICE, retry: bool | None
    ) -> Request:
        return Request(
            "POST",
            f"{service}/{method}",
            json=body,
            headers={"content-type": "application/json", "connect-protocol-version": "1"},
            retry=retry,
        )

    @staticmethod
    def _stream(method: str, body: Mapping[str, Any], timeout: float) -> Request:
        # Ask the server to end the stream (deadline_exceeded) a little before the driver's own
        # deadline, so the messages received so far arrive in a complete body.
        deadline_ms = max(1, int(timeout * 1000) - min(1000, int(timeout * 200)))
        payload = json.dumps(body, separators=(",", ":")).encode()
        return Request(
            "POST",
            f"{RUN_SERVICE}/{method}",
            content=envelope(payload),
            headers={
                "content-type": "application/connect+json",
                "connect-protocol-version": "1",
                "connect-timeout-ms": str(deadline_ms),
            },
            timeout=timeout,
            long_poll=True,
            retry=False,
        )

    def _run_id(self, ref: RunRef) -> dict[str, str]:
        run_id = {"project": ref.scope["project"], "domain": ref.scope["domain"], "name": ref.id}
        org = ref.scope.get("org") or self.org
        if org:
            run_id = {"org": org, **run_id}
        return run_id

    # -- errors ----------------------------------------------------------------------------
    def error_message(self, body: Any) -> str | None:
        if isinstance(body, Mapping) and isinstance(body.get("code"), str):
            message = body.get("message")
            return f"{body['code']}: {message}" if message else str(body["code"])
        return super().error_message(body)

    def error_for(self, response: Response) -> PlatformError:
        try:
            body: Any = response.json() if response.content.strip() else None
        except Exception:
            body = None
        code = body.get("code") if isinstance(body, Mapping) else None
        if isinstance(code, str) and code in CONNECT_CODES:
            return self._connect_error(body, response, status_code=response.status_code)
        if response.status_code == 404:
            # No Connect error body: the server has no such procedure (not a Flyte 2 endpoint?)
            return PlatformError(
                f"no Connect procedure at {response.request.path if response.request else '?'}"
                " (is the base URL a Flyte 2 / Union endpoint?)",
                platform=self.name,
                status_code=404,
                request_id=response.headers.get("x-request-id"),
                body=response.text[:500],
            )
        return super().error_for(response)

    def _connect_error(
        self, error: Mapping[str, Any], response: Response, *, status_code: int | None = None
    ) -> PlatformError:
        code = str(error.get("code") or "unknown")
        mapped_status, cls = CONNECT_CODES.get(code, (500, PlatformUnavailable))
        message = self.error_message(error) or code
        common: dict[str, Any] = {
            "platform": self.name,
            "status_code": status_code or mapped_status,
            "request_id": response.headers.get("x-request-id"),
            "body": response.text[:500],
        }
        if cls is RateLimited:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), response.received_at
            )
            return RateLimited(message, retry_after=retry_after, **common)
        return cls(message, **common)

    def _is_not_found(self, response: Response) -> bool:
        if response.status_code != 404:
            return False
        try:
            body = response.json()
        except ProtocolError:
            return False
        return isinstance(body, Mapping) and body.get("code") == "not_found"

    # -- launch ------------------------------------------------------------------------------
    _PARAMS = frozenset(
        {"task", "version", "project", "domain", "org", "name", "inputs", "literals", "run_spec"}
    )

    def _target(self, params: Mapping[str, Any]) -> tuple[str, str, str | None]:
        project = params.get("project") or self.project
        domain = params.get("domain") or self.domain
        org = params.get("org") or self.org
        for what, value in (("project", project), ("domain", domain)):
            if not isinstance(value, str) or not value:
                raise ConfigError(
                    f"flyte: launch needs params['{what}'] or the {what} option (a non-empty string)"
                )
        if org is not None and (not isinstance(org, str) or not org):
            raise ConfigError("flyte: params['org'] must be a non-empty string")
        return str(project), str(domain), org

    def _run_name(self, spec: LaunchSpec) -> str | None:
        name = spec.params.get("name")
        if name is not None:
            if not isinstance(name, str) or not name or len(name) > MAX_RUN_NAME:
                raise ConfigError(
                    f"flyte: params['name'] must be a run name of 1 to {MAX_RUN_NAME} characters, "
                    f"got {name!r}"
                )
            return name
        return run_name_for_key(spec.key) if spec.key else None

    def _inputs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        inputs = params.get("inputs") or {}
        literals = params.get("literals") or {}
        if not isinstance(inputs, Mapping) or not isinstance(literals, Mapping):
            raise ConfigError("flyte: params['inputs'] and params['literals'] must be mappings")
        both = sorted(set(inputs) & set(literals))
        if both:
            raise ConfigError(f"flyte: inputs given both as values and as literals: {both}")
        named = [{"name": str(k), "value": to_literal(v, name=str(k))} for k, v in inputs.items()]
        for key, literal in literals.items():
            if not isinstance(literal, Mapping):
                raise ConfigError(
                    f"flyte: params['literals'][{key!r}] must be a flyteidl2.core.Literal as JSON"
                )
            named.append({"name": str(key), "value": dict(literal)})
        return {"literals": named}

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        params = spec.params
        unknown = sorted(set(params) - self._PARAMS)
        if unknown:
            raise ConfigError(
                f"flyte: unknown launch params {unknown}; expected some of {sorted(self._PARAMS)}"
            )
        task = params.get("task") or self.task
        version = params.get("version") or self.version
        if not isinstance(task, str) or not task:
            raise ConfigError("flyte: launch needs params['task'] (a deployed task's name)")
        if not isinstance(version, str) or not version:
            raise ConfigError(
                "flyte: launch needs params['version'] (the deployed task's version) or the "
                "version option"
            )
        project, domain, org = self._target(params)
        run_spec = params.get("run_spec")
        if run_spec is not None and not isinstance(run_spec, Mapping):
            raise ConfigError("flyte: params['run_spec'] must be a flyteidl2.task.RunSpec as JSON")
        inputs = self._inputs(params)
        name = self._run_name(spec)

        task_id = {"project": project, "domain": domain, "name": task, "version": version}
        ident: dict[str, Any]
        if name is not None:
            run_id = {"project": project, "domain": domain, "name": name}
            ident = {"runId": {"org": org, **run_id} if org else run_id}
        else:  # the server names the run
            project_id = {"name": project, "domain": domain}
            ident = {"projectId": {"organization": org, **project_id} if org else project_id}
        if org:
            task_id = {"org": org, **task_id}

        body: dict[str, Any] = {**ident, "taskId": task_id}
        if self.upload_inputs:
            upload = {**ident, "taskId": task_id, "inputs": inputs}
            # Safe to resend: it only stores the inputs (under their hash, on the open server).
            uploaded = self.decipher(
                (yield self._unary("UploadInputs", upload, service=DATA_PROXY, retry=True))
            )
            offloaded = (
                uploaded.get("offloadedInputData") if isinstance(uploaded, Mapping) else None
            )
            if not isinstance(offloaded, Mapping) or not offloaded.get("uri"):
                raise ProtocolError(
                    f"flyte: UploadInputs answered no offloadedInputData: {excerpt(uploaded)}"
                )
            body["offloadedInputData"] = dict(offloaded)
        else:
            body["inputs"] = inputs
        if run_spec:
            body["runSpec"] = dict(run_spec)
        response = yield self._unary("CreateRun", body, retry=False)
        return self._created(response, project, domain, org, name)

    def _created(
        self, response: Response, project: str, domain: str, org: str | None, name: str | None
    ) -> RunRef:
        """The run a CreateRun answer reports. Where the answer leaves out the project, domain
        or org, they are the ones asked for; where it cannot be read at all, a run named by
        runbridge is still known by that name. Otherwise: a ProtocolError quoting it."""
        if not response.ok:
            raise self.error_for(response)
        try:
            created = response.json()
        except ProtocolError:  # proves nothing: the launch flow looks the run name up
            raise unreadable_launch(self.name, "cannot be read", response, run_id=name) from None
        run_id = mapping(mapping(mapping(mapping(created).get("run")).get("action")).get("id"))
        identifier = mapping(run_id.get("run"))
        named = text(identifier.get("name")) or name
        if named is None:
            raise unreadable_launch(self.name, "has no run.action.id.run", response)
        scope = {
            "project": text(identifier.get("project")) or project,
            "domain": text(identifier.get("domain")) or domain,
        }
        org = text(identifier.get("org")) or org or self.org
        if org:
            scope["org"] = org
        return RunRef(self.name, named, scope)

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        name = self._run_name(spec)
        if name is None:
            return None
        project, domain, org = self._target(spec.params)
        scope = {"project": project, "domain": domain, **({"org": org} if org else {})}
        ref = RunRef(self.name, name, scope)
        response = yield self._unary("GetRunDetails", {"runId": self._run_id(ref)}, retry=True)
        if self._is_not_found(response):
            return None
        self.decipher(response)
        return ref

    # -- status ------------------------------------------------------------------------------
    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        response = yield self._unary("GetRunDetails", {"runId": self._run_id(ref)}, retry=True)
        action = self._details_action(self.decipher(response))
        return (yield from self._finish(ref, action))

    @staticmethod
    def _details_action(body: Any) -> Mapping[str, Any]:
        details = body.get("details") if isinstance(body, Mapping) else None
        action = details.get("action") if isinstance(details, Mapping) else None
        if not isinstance(action, Mapping):
            raise ProtocolError(f"flyte: expected RunDetails with an action, got {excerpt(body)}")
        return action

    def _finish(self, ref: RunRef, action: Mapping[str, Any]) -> Exchange[RunStatus]:
        """The status of a root action, with the outputs of a succeeded run."""
        status = self.parse_action(ref, action)
        if not (self.read_outputs and status.state is RunState.SUCCEEDED):
            return status
        action_id = action.get("id")
        if not isinstance(action_id, Mapping) or not action_id.get("name"):
            action_id = {"run": self._run_id(ref), "name": self.root_action}
        response = yield self._unary(
            "GetActionData", {"actionId": dict(action_id)}, service=DATA_PROXY, retry=True
        )
        outputs = dict(status.outputs)
        if response.ok:
            try:
                data = mapping(self.decipher(response))
            except ProtocolError as exc:  # the status stands without the values
                outputs["error"] = f"outputs not read: {exc}"
                return dataclasses.replace(status, outputs=outputs)
            literals = items(mapping(data.get("outputs")).get("literals"))
            outputs["values"] = {
                str(item.get("name")): from_literal(item.get("value"))
                for item in literals
                if isinstance(item, Mapping)
            }
            if text(data.get("outputsUri")):
                outputs["uri"] = data["outputsUri"]
        else:
            # e.g. data served by another cluster: the status stands without the values
            outputs["error"] = f"outputs not read: {self.error_for(response)}"
        return dataclasses.replace(status, outputs=outputs)

    def parse_action(self, ref: RunRef, action: Mapping[str, Any]) -> RunStatus:
        """A RunStatus from the root action's ``ActionDetails`` JSON."""
        found = action.get("status")
        status: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        raw = _phase(status.get("phase"))
        state = self.map_state(raw)
        attempts = [a for a in items(action.get("attempts")) if isinstance(a, Mapping)]
        last = max(attempts, key=lambda a: integer(a.get("attempt")) or 0, default=None)
        message: str | None = None
        error = action.get("errorInfo")
        if not isinstance(error, Mapping) and last is not None and state.is_terminal:
            error = last.get("errorInfo")
        abort = action.get("abortInfo")
        if state is RunState.CANCELLED and isinstance(abort, Mapping):
            message = f"aborted: {abort['reason']}" if text(abort.get("reason")) else "aborted"
        elif state.is_terminal and state is not RunState.SUCCEEDED and isinstance(error, Mapping):
            said, kind, code = error.get("message"), error.get("kind"), error.get("code")
            parts = [p for p in (text(code), text(said)) if p]
            message = ": ".join(parts) or None
            if message and isinstance(kind, str) and kind not in ("", "KIND_UNSPECIFIED"):
                message = f"{message} ({kind.removeprefix('KIND_').lower()} error)"
        elif raw == "ACTION_PHASE_PAUSED":
            message = "paused: waiting for a signal"
        outputs: dict[str, Any] = {}
        if last is not None and isinstance(last.get("outputs"), Mapping):
            uri = text(mapping(last.get("outputs")).get("outputUri"))
            if uri and state is RunState.SUCCEEDED:
                outputs["uri"] = uri
        ended = _time(status.get("endTime")) if state.is_terminal else None
        return RunStatus(
            ref=ref,
            state=state,
            raw_state=raw,
            url=self.run_url(ref),
            message=message,
            outputs=outputs,
            created_at=_time(status.get("startTime")),
            updated_at=ended,
            ended_at=ended,
        )

    def run_url(self, ref: RunRef) -> str | None:
        """The run's console page, built as the SDK's ``Console.run_url`` does."""
        if self.console_url:
            base = self.console_url
        elif self.base_url:
            parts = urlsplit(self.base_url)
            netloc = "localhost:8080" if parts.netloc == "localhost:8090" else parts.netloc
            base = f"{parts.scheme}://{netloc}"
        else:
            return None
        domain = quote(ref.scope.get("domain", ""), safe="")
        project = quote(ref.scope.get("project", ""), safe="")
        return f"{base}/v2/domain/{domain}/project/{project}/runs/{quote(ref.id, safe='')}"

    # -- join and cancel -----------------------------------------------------------------------
    def join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus] | None:
        return self._join(ref, timeout)

    def _join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus]:
        action_name = self.root_action
        for _ in range(2):
            action_id = {"run": self._run_id(ref), "name": action_name}
            response = yield self._stream("WatchActionDetails", {"actionId": action_id}, timeout)
            if not response.ok:
                self.decipher(response)
            body = decode_stream(
                response.content, compression=response.headers.get("connect-content-encoding")
            )
            latest: Mapping[str, Any] | None = None
            for message in body.messages:
                details = message.get("details") if isinstance(message, Mapping) else None
                if isinstance(details, Mapping):
                    latest = details
            error = body.error
            code = str(error.get("code") or "unknown") if error is not None else None
            if latest is not None and (
                error is None
                or code in STREAM_ENDS
                or self.map_state(_phase(mapping(latest.get("status")).get("phase"))).is_terminal
            ):
                return (yield from self._finish(ref, latest))
            if error is not None and code == "not_found":
                # No such run, or a root action with another name: GetRunDetails tells which.
                check = yield self._unary("GetRunDetails", {"runId": self._run_id(ref)}, retry=True)
                action = self._details_action(self.decipher(check))
                name = mapping(action.get("id")).get("name")
                terminal = self.map_state(_phase(mapping(action.get("status")).get("phase")))
                if (
                    isinstance(name, str)
                    and name
                    and name != action_name
                    and not terminal.is_terminal
                ):
                    action_name = name
                    continue
                return (yield from self._finish(ref, action))
            if error is not None and code not in STREAM_ENDS:
                raise self._connect_error(error, response)
            break
        # The stream ended with no news (our deadline, a proxy reset): one plain read.
        return (yield from self.status(ref))

    def cancel(self, ref: RunRef) -> Exchange[None]:
        body: dict[str, Any] = {"runId": self._run_id(ref)}
        if self.abort_reason:
            body["reason"] = self.abort_reason
        # Aborting twice is harmless: safe to resend.
        self.decipher((yield self._unary("AbortRun", body, retry=True)))
        return None
