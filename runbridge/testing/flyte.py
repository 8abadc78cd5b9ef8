"""An emulator of the Flyte 2 / Union control plane's Connect API (flyteidl2 2.0.51).

It speaks the wire protocol described in ``docs/platforms/flyte.md``, the parts runbridge and
the ``flyte`` SDK's ``flyte.remote.Run`` use::

    POST /flyteidl2.workflow.RunService/CreateRun            unary
    POST /flyteidl2.workflow.RunService/GetRunDetails        unary
    POST /flyteidl2.workflow.RunService/GetActionDetails     unary
    POST /flyteidl2.workflow.RunService/AbortRun             unary
    POST /flyteidl2.workflow.RunService/WatchActionDetails   server stream
    POST /flyteidl2.workflow.RunService/WatchRunDetails      server stream
    POST /flyteidl2.dataproxy.DataProxyService/UploadInputs  unary
    POST /flyteidl2.dataproxy.DataProxyService/GetActionData unary
    POST /flyteidl2.cluster.ClusterService/SelectCluster     unary

Codecs: Connect **JSON** always (``application/json`` unary, ``application/connect+json``
streams of 5-byte envelopes ending with an end-of-stream envelope, flag ``0x02``). Connect
**binary protobuf** (``application/proto``, ``application/connect+proto``, gzip-compressed
requests), what the SDK sends, when ``flyteidl2`` and ``protobuf`` can be imported: the
emulator then converts between its JSON and the real message types with
``google.protobuf.json_format``. Without them a proto request gets 415, as a server answers a
codec it does not have.

Errors are Connect errors: ``{"code": "not_found", "message": ...}`` with the code's HTTP status
for a unary call; HTTP 200 and an end-of-stream ``{"error": {...}}`` for a stream. Another
method of a known service answers 501 ``unimplemented``.

Each run follows a :class:`~runbridge.testing.Script` of ``ACTION_PHASE_*`` values (short names
such as ``"queued"`` are accepted): the default is queued, initializing, running, then
succeeded. ``script.message`` is a failed run's ``errorInfo.message`` (or an aborted one's
reason); ``script.outputs`` are a succeeded run's outputs (``{"o0": 42}``). A watch stream sends
the details whenever the phase changes and ends after the terminal phase, at the client's
``connect-timeout-ms`` (``deadline_exceeded``) or, with ``stream_limit``, cleanly after that many
seconds, as a proxy that closes long streams would.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import importlib
import json
import math
import struct
from collections.abc import AsyncGenerator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ._control import route
from ._emulator import EmulatedRun, Emulator, Script
from ._emulator import Scope as MutableScope

__all__ = ["CODE_STATUS", "FlyteEmulator", "FlyteRun", "phase_name"]

RUN_SERVICE = "flyteidl2.workflow.RunService"
DATA_PROXY = "flyteidl2.dataproxy.DataProxyService"
CLUSTER = "flyteidl2.cluster.ClusterService"
SERVICES = {
    RUN_SERVICE: "flyteidl2.workflow.run_service_pb2",
    DATA_PROXY: "flyteidl2.dataproxy.dataproxy_service_pb2",
    CLUSTER: "flyteidl2.cluster.service_pb2",
}
STREAMS = frozenset({(RUN_SERVICE, "WatchActionDetails"), (RUN_SERVICE, "WatchRunDetails")})
UNARY = frozenset(
    {
        (RUN_SERVICE, "CreateRun"),
        (RUN_SERVICE, "GetRunDetails"),
        (RUN_SERVICE, "GetActionDetails"),
        (RUN_SERVICE, "AbortRun"),
        (DATA_PROXY, "UploadInputs"),
        (DATA_PROXY, "GetActionData"),
        (CLUSTER, "SelectCluster"),
    }
)

CODE_STATUS: dict[str, int] = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}
"""Connect error codes and their HTTP statuses (the Connect protocol's table)."""

PHASES = (
    "ACTION_PHASE_UNSPECIFIED",
    "ACTION_PHASE_QUEUED",
    "ACTION_PHASE_WAITING_FOR_RESOURCES",
    "ACTION_PHASE_INITIALIZING",
    "ACTION_PHASE_RUNNING",
    "ACTION_PHASE_SUCCEEDED",
    "ACTION_PHASE_FAILED",
    "ACTION_PHASE_ABORTED",
    "ACTION_PHASE_TIMED_OUT",
    "ACTION_PHASE_PAUSED",
    "ACTION_PHASE_RECOVERED",
)
TERMINAL = frozenset(
    {
        "ACTION_PHASE_SUCCEEDED",
        "ACTION_PHASE_FAILED",
        "ACTION_PHASE_ABORTED",
        "ACTION_PHASE_TIMED_OUT",
        "ACTION_PHASE_RECOVERED",
    }
)
ROOT_ACTION = "a0"
DEFAULT_ABORT_REASON = "User requested abort"
_RECEIVE_KEY = "runbridge.flyte.receive"


_ALIASES = {
    "success": "SUCCEEDED",
    "error": "FAILED",
    "cancelled": "ABORTED",
    "timeout": "TIMED_OUT",
}


ERROR_KINDS = frozenset({"KIND_USER", "KIND_SYSTEM"})
"""The ``errorInfo.kind`` values a script's ``error_type`` may give (else ``KIND_USER``)."""
UNKNOWN_PHASE = "ACTION_PHASE_RUNBRIDGE_UNKNOWN"
"""Not an ActionPhase: what the control API's ``unknown`` script word becomes (the JSON codec
only; the proto codec cannot encode it)."""


def phase_name(value: str) -> str:
    """``"queued"`` or ``"ACTION_PHASE_QUEUED"`` -> ``"ACTION_PHASE_QUEUED"``; the generic
    :class:`Script` words ``success``, ``error``, ``cancelled`` and ``timeout`` are accepted too."""
    if value == UNKNOWN_PHASE:
        return value
    short = _ALIASES.get(value, value.upper())
    name = value if value.startswith("ACTION_PHASE_") else f"ACTION_PHASE_{short}"
    if name not in PHASES:
        raise ValueError(f"not a flyteidl2 ActionPhase: {value!r}")
    return name


def _normalize(script: Script) -> Script:
    return dataclasses.replace(
        script,
        steps=[(phase_name(raw), seconds) for raw, seconds in script.steps],
        final=phase_name(script.final),
    )


def _literal(value: Any) -> dict[str, Any]:
    """A Python value as flyteidl2.core.Literal JSON (the platform's own encoder)."""
    if value is None:
        return {"scalar": {"noneType": {}}}
    if isinstance(value, bool):
        return {"scalar": {"primitive": {"boolean": value}}}
    if isinstance(value, int):
        return {"scalar": {"primitive": {"integer": str(value)}}}
    if isinstance(value, float):
        number: float | str = value
        if not math.isfinite(value):
            number = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return {"scalar": {"primitive": {"floatValue": number}}}
    if isinstance(value, str):
        return {"scalar": {"primitive": {"stringValue": value}}}
    if isinstance(value, (list, tuple)):
        return {"collection": {"literals": [_literal(v) for v in value]}}
    if isinstance(value, Mapping):
        return {"map": {"literals": {str(k): _literal(v) for k, v in value.items()}}}
    return {"scalar": {"primitive": {"stringValue": str(value)}}}


class ConnectError(Exception):
    """Raised inside a handler: answered as a Connect error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class FlyteRun(EmulatedRun):
    """A run on the emulator: ``id`` is its name, unique within (project, domain)."""

    project: str = "flytesnacks"
    domain: str = "development"
    org: str = ""
    action: str = ROOT_ACTION
    task: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs: dict[str, Any] = dataclasses.field(default_factory=dict)
    inputs_uri: str = ""
    run_spec: dict[str, Any] = dataclasses.field(default_factory=dict)
    abort_reason: str | None = None

    @property
    def key(self) -> str:
        return f"{self.project}/{self.domain}/{self.name}"

    @property
    def name(self) -> str:
        return self.id


class _Proto:
    """The binary codec, through the real flyteidl2 message types (optional)."""

    def __init__(self) -> None:
        self.json_format: Any = importlib.import_module("google.protobuf.json_format")
        pool: Any = importlib.import_module("google.protobuf.descriptor_pool").Default()
        factory: Any = importlib.import_module("google.protobuf.message_factory")
        for module in SERVICES.values():
            importlib.import_module(module)
        self._classes: dict[tuple[str, str], tuple[Any, Any]] = {}
        for service, method in UNARY | STREAMS:
            descriptor = pool.FindServiceByName(service).FindMethodByName(method)
            self._classes[(service, method)] = (
                factory.GetMessageClass(descriptor.input_type),
                factory.GetMessageClass(descriptor.output_type),
            )

    def decode(self, service: str, method: str, data: bytes) -> dict[str, Any]:
        request_type = self._classes[(service, method)][0]
        message = request_type.FromString(data)
        decoded: dict[str, Any] = self.json_format.MessageToDict(message)
        return decoded

    def encode(self, service: str, method: str, body: Mapping[str, Any]) -> bytes:
        response_type = self._classes[(service, method)][1]
        message = self.json_format.ParseDict(dict(body), response_type())
        data: bytes = message.SerializeToString()
        return data


_proto_codec: _Proto | None = None
_proto_error: str | None = None


def proto_codec() -> _Proto | None:
    """The binary codec, or None when flyteidl2/protobuf cannot be imported here."""
    global _proto_codec, _proto_error
    if _proto_codec is None and _proto_error is None:
        try:
            _proto_codec = _Proto()
        except Exception as exc:  # ImportError, or an older flyteidl2 without these types
            _proto_error = f"{type(exc).__name__}: {exc}"
    return _proto_codec


def _frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _end(error: ConnectError | None = None) -> bytes:
    body = {"error": {"code": error.code, "message": error.message}} if error else {}
    return _frame(json.dumps(body).encode(), flags=0x02)


class _Stream:
    """A Connect server stream as a raw ASGI response, stopped when the client goes away."""

    def __init__(self, body: AsyncGenerator[bytes, None], content_type: str) -> None:
        self.body = body
        self.content_type = content_type

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", self.content_type.encode())],
            }
        )
        server_receive: Receive | None = scope.get(_RECEIVE_KEY)
        async with anyio.create_task_group() as group:

            async def disconnected() -> None:
                if server_receive is None:
                    return
                while (await server_receive())["type"] != "http.disconnect":
                    pass
                group.cancel_scope.cancel()

            group.start_soon(disconnected)
            try:
                async for chunk in self.body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await self.body.aclose()


class FlyteEmulator(Emulator):
    """The Flyte 2 control plane, in memory. See the module docstring.

    ``tasks``: the deployed tasks launches may name (``"name"`` or ``"name:version"``; None
    accepts any); ``duplicate``: what ``CreateRun`` does with a run name that exists,
    ``"already_exists"`` (Union, as the SDK expects) or ``"existing"`` (the open-source server
    returns the existing run); ``stream_limit``: close watch streams cleanly after this many
    seconds; ``auth_header``: where ``Bearer <token>`` is expected; ``storage``: the blob prefix
    of input and output URIs.
    """

    platform = "flyte"
    default_script: ClassVar[Script] = Script(
        [
            ("ACTION_PHASE_QUEUED", 0.05),
            ("ACTION_PHASE_INITIALIZING", 0.05),
            ("ACTION_PHASE_RUNNING", 0.3),
        ],
        final="ACTION_PHASE_SUCCEEDED",
    )
    # the control API's script words and fault targets (Script.error_type: errorInfo.kind)
    script_words: ClassVar[Mapping[str, str | None]] = {
        "queued": "ACTION_PHASE_QUEUED",
        "running": "ACTION_PHASE_RUNNING",
        "success": "ACTION_PHASE_SUCCEEDED",
        "failed": "ACTION_PHASE_FAILED",
        "cancelled": "ACTION_PHASE_ABORTED",
        "unknown": UNKNOWN_PHASE,
    }
    raw_states: ClassVar[frozenset[str]] = frozenset(PHASES)
    fault_targets: ClassVar[Mapping[str, Any]] = {
        "launch": route("POST", r"^/flyteidl2\.workflow\.RunService/CreateRun$"),
        "status": route(
            "POST", r"^/flyteidl2\.workflow\.RunService/(Get|Watch)(Run|Action)Details$"
        ),
        "cancel": route("POST", r"^/flyteidl2\.workflow\.RunService/AbortRun$"),
    }

    def __init__(
        self,
        *,
        tasks: Iterable[str] | None = None,
        duplicate: str = "already_exists",
        stream_limit: float | None = None,
        auth_header: str = "authorization",
        storage: str = "s3://flyte-emulator",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if duplicate not in ("already_exists", "existing"):
            raise ValueError("duplicate must be 'already_exists' or 'existing'")
        self.tasks = None if tasks is None else set(tasks)
        self.duplicate = duplicate
        self.stream_limit = stream_limit
        self.auth_header = auth_header.lower()
        self.storage = storage.rstrip("/")
        self.poll = 0.01
        self.uploads: dict[str, dict[str, Any]] = {}
        self._default = _normalize(self._default)
        self._wall0 = datetime.now(timezone.utc)
        self._mono0 = self.now()

    # -- framework hooks -----------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route("/{service}/{method}", self.rpc, methods=["POST"])]

    async def _middleware(self, scope: MutableScope, receive: Receive, send: Send) -> None:
        scope[_RECEIVE_KEY] = receive  # the server's own receive: it reports the disconnect
        await super()._middleware(scope, receive, send)

    def next_script(self) -> Script:
        return _normalize(super().next_script())

    def add_run(
        self, script: Script | None = None, run_id: str | None = None, **data: Any
    ) -> FlyteRun:
        """Create a run directly (as if launched elsewhere), for sensor-style tests. ``data``
        may give ``project``, ``domain``, ``org``, ``task`` (a TaskIdentifier dict) and
        ``inputs`` (Python values)."""
        run = FlyteRun(
            run_id or self._run_name(),
            _normalize(script) if script else self.next_script(),
            self.now(),
            project=data.pop("project", "flytesnacks"),
            domain=data.pop("domain", "development"),
            org=data.pop("org", ""),
            task=data.pop("task", {}),
            inputs={
                "literals": [
                    {"name": k, "value": _literal(v)} for k, v in (data.pop("inputs", {})).items()
                ]
            },
        )
        run.data.update(data)
        with self.lock:
            self.runs[run.key] = run
        return run

    def run_key(self, run: EmulatedRun) -> str | None:
        return run.id

    def user_cancel(self, run: EmulatedRun) -> str | None:
        problem = super().user_cancel(run)
        if problem is None and isinstance(run, FlyteRun):
            run.abort_reason = "aborted by a user"
        return problem

    # -- inspection ----------------------------------------------------------------------------
    def run(self, name: str, project: str = "flytesnacks", domain: str = "development") -> FlyteRun:
        with self.lock:
            run = self.runs[f"{project}/{domain}/{name}"]
        assert isinstance(run, FlyteRun)
        return run

    def phase(self, name: str, project: str = "flytesnacks", domain: str = "development") -> str:
        return self.run(name, project, domain).state(self.now())[0]

    # -- JSON of the platform's objects --------------------------------------------------------
    def _time(self, mono: float) -> str:
        wall = self._wall0 + timedelta(seconds=mono - self._mono0)
        return wall.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def _run_name(self) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the open-source server's: "r" + 19 of these
        digest = hashlib.sha256(self.new_id().encode()).digest()
        return "r" + "".join(alphabet[b % len(alphabet)] for b in digest[:19])

    @staticmethod
    def _run_id(run: FlyteRun) -> dict[str, str]:
        run_id = {"project": run.project, "domain": run.domain, "name": run.name}
        return {"org": run.org, **run_id} if run.org else run_id

    def _outputs_uri(self, run: FlyteRun) -> str:
        return f"{self.storage}/{run.project}/{run.domain}/{run.name}/{run.action}/1/outputs.pb"

    def _action(self, run: FlyteRun, now: float) -> dict[str, Any]:
        """The root action's ``ActionDetails``."""
        raw, done = run.state(now)
        status: dict[str, Any] = {"phase": raw, "startTime": self._time(run.started), "attempts": 1}
        attempt: dict[str, Any] = {
            "phase": raw,
            "startTime": self._time(run.started),
            "attempt": 1,
        }
        details: dict[str, Any] = {
            "id": {"run": self._run_id(run), "name": run.action},
            "metadata": {"actionType": "ACTION_TYPE_TASK"},
            "status": status,
        }
        if run.task.get("name"):
            details["metadata"]["funtionName"] = run.task["name"]  # sic: the proto's spelling
        ended = run.finished_at(now)
        if done and ended is not None:
            status["endTime"] = attempt["endTime"] = self._time(ended)
            status["durationMs"] = str(int((ended - run.started) * 1000))
        if raw == "ACTION_PHASE_SUCCEEDED":
            attempt["outputs"] = {"outputUri": self._outputs_uri(run)}
        if raw in ("ACTION_PHASE_FAILED", "ACTION_PHASE_TIMED_OUT"):
            kind = run.script.error_type if run.script.error_type in ERROR_KINDS else "KIND_USER"
            error = {"message": run.script.message or "task failed", "kind": kind}
            attempt["errorInfo"] = error
            if raw == "ACTION_PHASE_FAILED":
                details["errorInfo"] = dict(error)
        if raw == "ACTION_PHASE_ABORTED":
            reason = run.abort_reason or run.script.message or DEFAULT_ABORT_REASON
            details["abortInfo"] = {"reason": reason}
        details["attempts"] = [attempt]
        return details

    def _details(self, run: FlyteRun, now: float) -> dict[str, Any]:
        return {"runSpec": copy.deepcopy(run.run_spec), "action": self._action(run, now)}

    # -- lookups -------------------------------------------------------------------------------
    @staticmethod
    def _ident(body: Mapping[str, Any], field: str, message: str) -> dict[str, Any]:
        value = body.get(field)
        if not isinstance(value, Mapping) or not value:
            raise ConnectError("invalid_argument", f"invalid {message}.{field}: value is required")
        return dict(value)

    def _find(self, run_id: Mapping[str, Any]) -> FlyteRun:
        project, domain, name = (str(run_id.get(k) or "") for k in ("project", "domain", "name"))
        run = self.runs.get(f"{project}/{domain}/{name}")  # org is not part of the key
        if not isinstance(run, FlyteRun):
            raise ConnectError("not_found", f"run not found: {project}/{domain}/{name}")
        return run

    def _find_action(self, action_id: Mapping[str, Any]) -> FlyteRun:
        run_id = action_id.get("run")
        run = self._find(run_id if isinstance(run_id, Mapping) else {})
        if action_id.get("name") != run.action:
            raise ConnectError(
                "not_found",
                f"failed to get action details: action not found: {action_id.get('name')!r}",
            )
        return run

    # -- the RPC endpoint ------------------------------------------------------------------------
    async def rpc(self, request: Request) -> Response | _Stream:
        service, method = request.path_params["service"], request.path_params["method"]
        procedure = (service, method)
        streaming = procedure in STREAMS
        if procedure not in UNARY and not streaming:
            if service in SERVICES:
                return self._error_response(
                    ConnectError("unimplemented", f"{service}.{method} is not implemented")
                )
            return Response("404 page not found\n", 404, media_type="text/plain")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        codec = content_type.rsplit("/", 1)[-1].removeprefix("connect+")
        expected = ("application/connect+json", "application/connect+proto")
        if not streaming:
            expected = ("application/json", "application/proto")
        if content_type not in expected or (codec == "proto" and proto_codec() is None):
            accepted = ", ".join(expected if proto_codec() else expected[:1])
            return Response(status_code=415, headers={"accept-post": accepted})
        raw = await request.body()
        try:
            self._check_auth(request)
            body = self._decode(request, service, method, raw, codec, streaming)
        except ConnectError as error:
            if streaming:
                return _Stream(self._one(_end(error)), content_type)
            return self._error_response(error)
        if streaming:
            return self._watch(request, method, body, codec, content_type)
        handler = getattr(self, f"_rpc_{method}")
        try:
            with self.lock:
                answer: dict[str, Any] = handler(body, request)
        except ConnectError as error:
            return self._error_response(error)
        if codec == "proto":
            codec_impl = proto_codec()
            assert codec_impl is not None
            data = codec_impl.encode(service, method, answer)
            return Response(data, 200, media_type="application/proto")
        return JSONResponse(answer)

    @staticmethod
    async def _one(chunk: bytes) -> AsyncGenerator[bytes, None]:
        yield chunk

    def _decode(
        self, request: Request, service: str, method: str, raw: bytes, codec: str, streaming: bool
    ) -> dict[str, Any]:
        if streaming:
            if len(raw) < 5:
                raise ConnectError("invalid_argument", "protocol error: incomplete envelope")
            flags, length = struct.unpack_from(">BI", raw)
            raw = raw[5 : 5 + length]
            if flags & 0x01:
                raw = self._gunzip(raw, request.headers.get("connect-content-encoding"))
        elif request.headers.get("content-encoding"):
            raw = self._gunzip(raw, request.headers.get("content-encoding"))
        if codec == "proto":
            codec_impl = proto_codec()
            assert codec_impl is not None
            try:
                return codec_impl.decode(service, method, raw)
            except Exception as exc:
                raise ConnectError("invalid_argument", f"unmarshal into message: {exc}") from None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise ConnectError("invalid_argument", f"unmarshal into message: {exc}") from None
        if not isinstance(body, dict):
            raise ConnectError("invalid_argument", "unmarshal into message: not a JSON object")
        return body

    @staticmethod
    def _gunzip(data: bytes, encoding: str | None) -> bytes:
        if encoding in (None, "", "identity"):
            return data
        if encoding != "gzip":
            raise ConnectError("unimplemented", f"unknown compression {encoding!r}")
        try:
            return gzip.decompress(data)
        except OSError as exc:
            raise ConnectError("invalid_argument", f"decompress: {exc}") from None

    def _check_auth(self, request: Request) -> None:
        if not self.token:
            return
        header = request.headers.get(self.auth_header, "")
        if not header:
            raise ConnectError("unauthenticated", "authorization header is missing")
        if header != f"Bearer {self.token}":
            raise ConnectError("unauthenticated", "invalid token")

    @staticmethod
    def _error_response(error: ConnectError) -> Response:
        return JSONResponse(
            {"code": error.code, "message": error.message}, status_code=CODE_STATUS[error.code]
        )

    # -- unary methods (called with self.lock held) ------------------------------------------
    def _rpc_CreateRun(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        task_id = body.get("taskId")
        if not isinstance(task_id, Mapping):
            if body.get("taskSpec") or body.get("triggerName"):
                raise ConnectError(
                    "unimplemented", "the emulator runs deployed tasks only: send taskId"
                )
            raise ConnectError(
                "invalid_argument", "invalid CreateRunRequest.Task: value is required"
            )
        task = dict(task_id)
        if not task.get("name") or not task.get("version"):
            raise ConnectError("invalid_argument", "taskId needs a name and a version")
        if self.tasks is not None and not (
            task["name"] in self.tasks or f"{task['name']}:{task['version']}" in self.tasks
        ):
            raise ConnectError(
                "not_found",
                f"task not found: {task.get('project')}/{task.get('domain')}/{task['name']}"
                f"@{task['version']}",
            )
        if isinstance(body.get("runId"), Mapping):
            run_id = dict(body["runId"])
            name = str(run_id.get("name") or "")
            if not name or not run_id.get("project") or not run_id.get("domain"):
                raise ConnectError("invalid_argument", "runId needs a project, domain and name")
        elif isinstance(body.get("projectId"), Mapping):
            project_id = body["projectId"]
            run_id = {
                "org": project_id.get("organization", ""),
                "project": project_id.get("name", ""),
                "domain": project_id.get("domain", ""),
            }
            name = self._run_name()
            if not run_id["project"] or not run_id["domain"]:
                raise ConnectError("invalid_argument", "projectId needs a name and a domain")
        else:
            raise ConnectError("invalid_argument", "invalid CreateRunRequest.Id: value is required")
        key = f"{run_id['project']}/{run_id['domain']}/{name}"
        existing = self.runs.get(key)
        if isinstance(existing, FlyteRun):
            if self.duplicate == "already_exists":
                raise ConnectError("already_exists", f"run {name!r} already exists")
            return {"run": self._run_object(existing, self.now())}
        inputs: dict[str, Any] = {}
        inputs_uri = ""
        if isinstance(body.get("offloadedInputData"), Mapping):
            inputs_uri = str(body["offloadedInputData"].get("uri") or "")
            if inputs_uri not in self.uploads:
                raise ConnectError("invalid_argument", f"no inputs were uploaded to {inputs_uri!r}")
            inputs = copy.deepcopy(self.uploads[inputs_uri])
        elif isinstance(body.get("inputs"), Mapping):
            inputs = copy.deepcopy(dict(body["inputs"]))
        run = FlyteRun(
            name,
            self.next_script(),
            self.now(),
            project=str(run_id["project"]),
            domain=str(run_id["domain"]),
            org=str(run_id.get("org") or ""),
            task=task,
            inputs=inputs,
            inputs_uri=inputs_uri
            or f"{self.storage}/{run_id['project']}/{run_id['domain']}/{name}/inputs",
            run_spec=copy.deepcopy(dict(body.get("runSpec") or {})),
        )
        self.runs[run.key] = run
        self.launches.append(copy.deepcopy(body))
        return {"run": self._run_object(run, self.now())}

    def _run_object(self, run: FlyteRun, now: float) -> dict[str, Any]:
        action = self._action(run, now)
        return {
            "action": {k: action[k] for k in ("id", "metadata", "status")},
        }

    def _rpc_GetRunDetails(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        run = self._find(self._ident(body, "runId", "GetRunDetailsRequest"))
        return {"details": self._details(run, self.now())}

    def _rpc_GetActionDetails(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        run = self._find_action(self._ident(body, "actionId", "GetActionDetailsRequest"))
        return {"details": self._action(run, self.now())}

    def _rpc_AbortRun(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        run = self._find(self._ident(body, "runId", "AbortRunRequest"))
        now = self.now()
        if not run.state(now)[1]:
            run.cancelled = "ACTION_PHASE_ABORTED"
            run.cancelled_at = now
            reason = body.get("reason")
            run.abort_reason = reason if isinstance(reason, str) else DEFAULT_ABORT_REASON
            self.cancels.append(run.name)
        return {}

    def _rpc_UploadInputs(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        if isinstance(body.get("runId"), Mapping):
            ident = body["runId"]
            org, project, domain = ident.get("org"), ident.get("project"), ident.get("domain")
        elif isinstance(body.get("projectId"), Mapping):
            ident = body["projectId"]
            org, project, domain = ident.get("organization"), ident.get("name"), ident.get("domain")
        else:
            raise ConnectError("invalid_argument", "id is required")
        if not (body.get("taskId") or body.get("taskSpec") or body.get("triggerName")):
            raise ConnectError(
                "invalid_argument", "invalid UploadInputsRequest.Task: value is required"
            )
        inputs = dict(body.get("inputs") or {})
        digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
        parts = [p for p in (org, project, domain) if p]
        uri = "/".join([self.storage, *parts, "offloaded-inputs", digest])
        self.uploads[uri] = inputs
        return {"offloadedInputData": {"uri": uri, "inputsHash": digest}}

    def _rpc_GetActionData(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        run = self._find_action(self._ident(body, "actionId", "GetActionDataRequest"))
        raw, _ = run.state(self.now())
        answer: dict[str, Any] = {"inputs": copy.deepcopy(run.inputs), "outputs": {}}
        if run.inputs_uri:
            answer["inputsUri"] = run.inputs_uri
        if raw == "ACTION_PHASE_SUCCEEDED":
            outputs = run.script.outputs or {}
            answer["outputs"] = {
                "literals": [{"name": str(k), "value": _literal(v)} for k, v in outputs.items()]
            }
            answer["outputsUri"] = self._outputs_uri(run)
        return answer

    def _rpc_SelectCluster(self, body: dict[str, Any], request: Request) -> dict[str, Any]:
        # As the open-source server: this same host serves the data plane.
        host = request.headers.get("host", "")
        scheme = request.headers.get("x-forwarded-proto", "http").split(",")[0].strip()
        return {"clusterEndpoint": f"{scheme}://{host}"} if host else {}

    # -- streams -------------------------------------------------------------------------------
    def _watch(
        self, request: Request, method: str, body: dict[str, Any], codec: str, content_type: str
    ) -> _Stream:
        deadline: float | None = None
        timeout = request.headers.get("connect-timeout-ms")
        if timeout:
            try:
                deadline = self.now() + int(timeout) / 1000
            except ValueError:
                return _Stream(
                    self._one(_end(ConnectError("invalid_argument", "bad connect-timeout-ms"))),
                    content_type,
                )
        return _Stream(self._watch_body(method, body, codec, deadline), content_type)

    async def _watch_body(
        self, method: str, body: dict[str, Any], codec: str, deadline: float | None
    ) -> AsyncGenerator[bytes, None]:
        started = self.now()
        last: str | None = None
        try:
            with self.lock:
                if method == "WatchActionDetails":
                    ident = self._ident(body, "actionId", "WatchActionDetailsRequest")
                    run = self._find_action(ident)
                else:
                    run = self._find(self._ident(body, "runId", "WatchRunDetailsRequest"))
        except ConnectError as error:
            yield _end(error)
            return
        while True:
            now = self.now()
            with self.lock:
                raw, done = run.state(now)
                if method == "WatchActionDetails":
                    message = {"details": self._action(run, now)}
                else:
                    message = {"details": self._details(run, now)}
            if raw != last:
                last = raw
                yield _frame(self._encode(method, message, codec))
            if done:
                yield _end()
                return
            if deadline is not None and now >= deadline:
                yield _end(ConnectError("deadline_exceeded", "context deadline exceeded"))
                return
            if self.stream_limit is not None and now - started >= self.stream_limit:
                yield _end()
                return
            wake = self.poll if deadline is None else max(0.0, min(self.poll, deadline - now))
            await anyio.sleep(wake)

    @staticmethod
    def _encode(method: str, message: Mapping[str, Any], codec: str) -> bytes:
        if codec == "proto":
            codec_impl = proto_codec()
            assert codec_impl is not None
            return codec_impl.encode(RUN_SERVICE, method, message)
        return json.dumps(message).encode()
