"""An emulator of the LangGraph Agent Server REST API (langgraph-api 0.16.7, in-memory runtime).

It speaks the wire protocol described in ``docs/platforms/langgraph.md``: the same paths,
methods, JSON field names, status strings, status codes, headers and ``{"detail": ...}`` error
messages as the real server, for the parts runbridge uses::

    POST   /threads                              GET|DELETE /threads/{thread_id}
    POST   /threads/{thread_id}/runs             POST /runs              (stateless)
    GET    /threads/{thread_id}/runs             GET|DELETE /threads/{thread_id}/runs/{run_id}
    POST   /threads/{thread_id}/runs/{run_id}/cancel?wait=&action=
    GET    /threads/{thread_id}/runs/{run_id}/join
    POST   /threads/{thread_id}/runs/wait        POST /runs/wait
    GET    /ok   GET /info   GET /

What a run does, in order of precedence:

1. its **input**, like the graph in ``tests/langgraph_server/graph.py``: the directives are
   ``input["input"]`` when that is a dict, else the input itself. ``{"sleep": 2.0}`` runs
   2 s, ``{"fail": "msg"}`` ends in ``error`` with ``{"error": "RuntimeError", "message":
   "msg"}`` (both combine). The run is ``pending`` for ``pickup`` seconds first.
2. else the next queued :class:`Script` (``emu.script(...)``), else the default script.
   Script steps are raw states (``pending``/``running``), the final state is ``success``,
   ``error`` (thread error ``{"error": "ValueError", "message": script.message}``) or
   ``timeout`` (thread error ``{"error": "TimeoutError", "message": ""}``). A ``success``
   run's thread values are ``script.outputs`` when given (an ``__interrupt__`` key in them
   makes it a human-in-the-loop pause: thread ``interrupted``, join ``{"__interrupt__": ...}``).

Without outputs, values follow LangGraph state semantics: a dict input is merged into the
thread values (a non-dict one goes under ``"input"``) and a successful run adds ``"result"``
(the directives dict for the test-graph form ``{"input": {...}}``, so the values are exactly
what the real test graph returns; ``"ok"`` otherwise). Like the in-memory server, the thread's
values are written only when a run ends (or is cancelled while running).

A thread runs one run at a time: an enqueued run starts when the previous one ends. All of
this is computed lazily from timestamps under ``self.lock``, so it is deterministic and needs
no background task.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import anyio
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp as StarletteASGIApp
from starlette.types import Receive, Scope, Send

from ._control import route
from ._emulator import EmulatedRun, Emulator, Script, json_error

__all__ = [
    "API_VERSION",
    "LangGraphEmulator",
    "LangGraphRun",
    "LangGraphThread",
    "system_assistant_id",
    "uuid7",
]

API_VERSION = "0.16.7"
LANGGRAPH_VERSION = "1.2.24"
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")

RESERVED_METADATA_KEYS = frozenset(
    {"thread_id", "assistant_id", "run_id", "cron_id", "counters_since_delta_snapshot"}
)
RESERVED_CONFIGURABLE_KEYS = frozenset(
    {
        "langgraph_auth_user",
        "langgraph_auth_user_id",
        "langgraph_auth_permissions",
        "langgraph_request_id",
        "__langsmith_project__",
        "__langsmith_example_id__",
        "__request_start_time_ms__",
        "__after_seconds__",
        "__otel_traceparent__",
        "__otel_tracestate__",
        "__dd_trace_headers__",
        "__pregel_node_finished",
        "__context_provided__",
    }
)
RUN_FIELDS = (
    "run_id",
    "thread_id",
    "assistant_id",
    "created_at",
    "updated_at",
    "status",
    "metadata",
    "kwargs",
    "multitask_strategy",
    "langsmith_session_name",
)
ACTIVE = ("pending", "running")
AUTH_EXEMPT = frozenset({"/ok", "/metrics", "/docs", "/openapi.json"})
AUTH_HEADERS = ("authorization", "x-tenant-id", "x-api-key", "x-service-key", "cookie", "x-user-id")

MSG_REJECT = (
    "Thread is already running a task. Wait for it to finish or choose a different "
    "multitask strategy."
)
MSG_NOT_FOUND_CREATE = "Thread or assistant not found."
MSG_CANCEL_UNKNOWN = "No runs found to cancel."
MSG_CANCEL_TERMINAL = (
    "No matching runs to cancel. Please verify the thread ID and run IDs are correct, and the "
    "runs haven't been deleted or completed."
)
MSG_BAD_THREAD = "Invalid thread ID: must be a UUID"
MSG_BAD_RUN = "Invalid run ID: must be a UUID"
MSG_BOTH_CONTEXT = (
    "Cannot specify both configurable and context. Prefer setting context alone. Context was "
    "introduced in LangGraph 0.6.0 and is the long term planned replacement for configurable."
)


# -- ids and time ----------------------------------------------------------------------------

_uuid7_lock = threading.Lock()
_uuid7_last = [0, 0]  # [unix ms, counter]


def uuid7() -> str:
    """A time-ordered UUIDv7 (ms timestamp + a counter, monotonic within the process)."""
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, counter = _uuid7_last
        if ms <= last_ms:
            ms, counter = last_ms, counter + 1
            if counter > 0xFFF:
                ms, counter = ms + 1, 0
        else:
            counter = int.from_bytes(os.urandom(2), "big") & 0x3FF
        _uuid7_last[0], _uuid7_last[1] = ms, counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def system_assistant_id(graph_id: str) -> str:
    """The UUID of a graph's system assistant (``"agent"`` -> ``fe096781-...``)."""
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph_id))


def _canonical_uuid(value: str, detail: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise HTTPException(422, detail) from None


# -- request validation: the jsonschema_rs messages of the real server -----------------------


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _schema_error(message: str, keyword: str, prop: str | None, instance: Any) -> HTTPException:
    where = f'schema["properties"]["{prop}"]' if prop else "schema"
    on = f'instance["{prop}"]' if prop else "instance"
    return HTTPException(
        422,
        f'{message}\n\nFailed validating "{keyword}" in {where}\n\nOn {on}:\n    {_dump(instance)}',
    )


def _enum_text(options: tuple[str, ...]) -> str:
    quoted = [_dump(o) for o in options]
    if len(quoted) <= 3:
        return f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"{quoted[0]}, {quoted[1]} or {len(quoted) - 2} other candidates"


Schema = dict[str, tuple[str | None, tuple[str, ...]]]
"""property -> (json type or None for "a string, UUID or graph name", enum values)."""

_RUN_COMMON: Schema = {
    "assistant_id": (None, ()),
    "stream_mode": (None, ()),
    "metadata": ("object", ()),
    "config": ("object", ()),
    "context": ("object", ()),
    "webhook": ("string", ()),
    "stream_subgraphs": ("boolean", ()),
    "stream_resumable": ("boolean", ()),
    "feedback_keys": ("array", ()),
    "after_seconds": ("number", ()),
    "checkpoint_during": ("boolean", ()),
    "durability": ("string", ("sync", "async", "exit")),
}
RUN_STATEFUL: Schema = {
    **_RUN_COMMON,
    "checkpoint": ("object", ()),
    "multitask_strategy": ("string", ("reject", "rollback", "interrupt", "enqueue")),
    "if_not_exists": ("string", ("create", "reject")),
}
STREAM_MODES = (
    "values",
    "messages",
    "messages-tuple",
    "tasks",
    "checkpoints",
    "updates",
    "events",
    "debug",
    "custom",
)
RUN_STATELESS: Schema = {**_RUN_COMMON, "on_completion": ("string", ("delete", "keep"))}
THREAD_CREATE: Schema = {
    "thread_id": ("string", ()),
    "metadata": ("object", ()),
    "if_exists": ("string", ("raise", "do_nothing")),
    "ttl": ("object", ()),
    "supersteps": ("array", ()),
}


def _validate(body: Any, schema: Schema, required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _schema_error(f'{_dump(body)} is not of type "object"', "type", None, body)
    for name in required:
        if name not in body:
            raise _schema_error(f'"{name}" is a required property', "required", None, body)
    for name, (kind, options) in schema.items():
        if name not in body:
            continue
        value = body[name]
        if name == "stream_mode":
            modes = value if isinstance(value, list) else [value]
            if not all(isinstance(m, str) and m in STREAM_MODES for m in modes):
                raise _schema_error(
                    f"{_dump(value)} is not valid under any of the schemas listed in the "
                    "'anyOf' keyword",
                    "anyOf",
                    name,
                    value,
                )
            continue
        if kind is None:
            if not isinstance(value, str):
                raise _schema_error(
                    f"{_dump(value)} is not valid under any of the schemas listed in the "
                    "'anyOf' keyword",
                    "anyOf",
                    name,
                    value,
                )
            continue
        if not _TYPES[kind](value):
            raise _schema_error(f'{_dump(value)} is not of type "{kind}"', "type", name, value)
        if options and value not in options:
            raise _schema_error(
                f"{_dump(value)} is not one of {_enum_text(options)}", "enum", name, value
            )
    return body


def _strip_reserved(body: dict[str, Any]) -> None:
    """What ``sanitize_reserved_keys`` does to a write request, silently."""
    for holder in (body, body.get("config")):
        if isinstance(holder, dict) and isinstance(holder.get("metadata"), dict):
            for key in RESERVED_METADATA_KEYS & holder["metadata"].keys():
                del holder["metadata"][key]
    config = body.get("config")
    for holder in (
        config.get("configurable") if isinstance(config, dict) else None,
        body.get("context"),
    ):
        if isinstance(holder, dict):
            for key in RESERVED_CONFIGURABLE_KEYS & holder.keys():
                del holder[key]


# -- state ------------------------------------------------------------------------------------


@dataclasses.dataclass
class LangGraphRun(EmulatedRun):
    """A run on the emulator. ``started`` is ``inf`` while it waits for its thread."""

    thread_id: str = ""
    assistant_id: str = ""
    graph_id: str = ""
    input: Any = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    multitask_strategy: str = "enqueue"
    created: float = 0.0
    """Monotonic time of ``created_at`` (in the future with ``after_seconds``)."""
    updated: float = 0.0
    seq: int = 0
    phase: str = "waiting"
    """waiting (for the thread) -> started (its script's pending steps) -> running -> done."""
    deleted: bool = False
    temporary: bool = False
    error_type: str = "ValueError"
    derived_result: Any = "ok"
    outcome: Any = None
    """The body a join that was waiting when the run ended gets (None: the thread fallback)."""

    def state(self, now: float) -> tuple[str, bool]:
        if self.cancelled is not None:
            return self.cancelled, True
        if self.started == math.inf:
            return "pending", False
        return self.script.state_at(now - self.started)

    def finished_at(self, now: float) -> float | None:
        if self.cancelled_at is not None:
            return self.cancelled_at
        if self.started == math.inf:
            return None
        return super().finished_at(now)

    @property
    def running_from(self) -> float:
        """When the run leaves its script's leading ``pending`` steps."""
        t = self.started
        for raw, seconds in self.script.steps:
            if raw != "pending":
                break
            t += seconds
        return t


@dataclasses.dataclass
class LangGraphThread:
    thread_id: str
    created: float
    metadata: dict[str, Any]
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    updated: float = 0.0
    state_updated: float = 0.0
    status: str = "idle"
    values: Any = None
    error: Any = None
    interrupts: dict[str, Any] | None = None
    """None until a run has ended on the thread (then ``error`` is shown too)."""
    runs: list[LangGraphRun] = dataclasses.field(default_factory=list)
    """All runs in creation order, deleted ones included (they still occupied the thread)."""
    free_at: float = -math.inf

    def live_runs(self) -> list[LangGraphRun]:
        return [r for r in self.runs if not r.deleted]


class _Auth:
    """The server's auth middleware: it runs before routing, ``/ok`` and docs are exempt."""

    def __init__(self, app: StarletteASGIApp, emulator: LangGraphEmulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.emulator.token
        if scope["type"] == "http" and token and scope["path"] not in AUTH_EXEMPT:
            headers = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
            }
            if headers.get("x-api-key") != token:
                detail = (
                    "Invalid token"
                    if any(headers.get(h) for h in AUTH_HEADERS)
                    else "Missing authentication headers"
                )
                await json_error(403, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


class LangGraphEmulator(Emulator):
    """The LangGraph Agent Server, in memory. See the module docstring.

    ``graphs``: graph names that ``assistant_id`` may name (each also has its system assistant
    UUID); ``assistants``: extra assistant UUIDs -> graph name; ``heartbeat``: seconds between
    the ``\\n`` keep-alives of a waiting join (5 s on the server); ``pickup``: how long an
    input-driven run stays ``pending`` before it runs.
    """

    platform = "langgraph"
    default_script: ClassVar[Script] = Script([("pending", 0.1), ("running", 0.5)], final="success")
    # the control API's script words and fault targets
    script_words: ClassVar[Mapping[str, str | None]] = {
        "queued": "pending",
        "running": "running",
        "success": "success",
        "failed": "error",
        "cancelled": "interrupted",
        "unknown": "paused",
    }
    raw_states: ClassVar[frozenset[str]] = frozenset(
        {"pending", "running", "success", "error", "timeout", "interrupted"}
    )
    fault_targets: ClassVar[Mapping[str, Any]] = {
        "launch": route("POST", r"^(/threads/[^/]+)?/runs$"),
        "status": route("GET", r"^/threads/[^/]+/runs/[^/]+(/join)?$"),
        "cancel": route("POST", r"^/threads/[^/]+/runs/[^/]+/cancel$"),
    }

    def __init__(
        self,
        *,
        graphs: Iterable[str] = ("agent",),
        assistants: Mapping[str, str] | None = None,
        heartbeat: float = 5.0,
        pickup: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.graphs: list[str] = list(graphs)
        self.assistants: dict[str, str] = {system_assistant_id(g): g for g in self.graphs}
        self.system_assistants = set(self.assistants)
        for aid, graph in (assistants or {}).items():
            self.assistants[str(uuid.UUID(aid))] = graph
        self.heartbeat = heartbeat
        self.pickup = pickup
        self.poll = 0.01
        self.threads: dict[str, LangGraphThread] = {}
        self._seq = 0
        self._wall0 = datetime.now(timezone.utc)
        self._mono0 = self.now()

    # -- framework hooks -----------------------------------------------------------------------
    def starlette_options(self) -> dict[str, Any]:
        return {
            "middleware": [Middleware(_Auth, emulator=self)],
            "exception_handlers": {HTTPException: _http_error},
        }

    def new_id(self) -> str:
        return uuid7()

    def add_run(
        self, script: Script | None = None, run_id: str | None = None, **data: Any
    ) -> LangGraphRun:
        """Create a run directly (as if launched elsewhere), on ``thread_id`` (created if
        missing) with ``assistant_id`` (default: the first graph), ``input`` and ``metadata``."""
        body: dict[str, Any] = {"assistant_id": self.graphs[0], **data}
        thread_id = str(body.pop("thread_id", None) or uuid7())
        with self.lock:
            if thread_id not in self.threads:
                self._new_thread(thread_id, {}, self.now())
            run = self._create(body, thread_id, stateless=False, script=script, run_id=run_id)
        return run

    # -- the control API's hooks -----------------------------------------------------------------
    def run_view(self, run: EmulatedRun, now: float) -> tuple[str, bool]:
        assert isinstance(run, LangGraphRun)
        thread = self._thread(run.thread_id)
        if thread is not None:
            self._advance(thread, now)
        return self._status(run, now), run.phase == "done"

    def run_key(self, run: EmulatedRun) -> str | None:
        return run.thread_id if isinstance(run, LangGraphRun) else None

    def user_cancel(self, run: EmulatedRun) -> str | None:
        assert isinstance(run, LangGraphRun)
        thread = self._thread(run.thread_id)
        raw, done = self.run_view(run, self.now())
        if thread is None or done:
            return f"run {run.id} already finished ({raw})"
        self._cancel(thread, run, "interrupt", "cancelled by a user")
        return None

    # -- inspection helpers --------------------------------------------------------------------
    def status(self, thread_id: str, run_id: str) -> str | None:
        """The run's API status now, or None if the server would answer 404."""
        with self.lock:
            thread = self._thread(thread_id)
            run = self._find_run(thread, run_id) if thread else None
            return self._status(run, self.now()) if run else None

    def thread_values(self, thread_id: str) -> Any:
        with self.lock:
            thread = self._thread(thread_id)
            return copy.deepcopy(thread.values) if thread else None

    # -- time --------------------------------------------------------------------------------
    def _time(self, mono: float) -> str:
        return (self._wall0 + timedelta(seconds=mono - self._mono0)).isoformat()

    # -- the run queue (lazy) ----------------------------------------------------------------
    def _status(self, run: LangGraphRun, now: float) -> str:
        if run.cancelled is not None:
            return run.cancelled
        if run.phase == "waiting":
            return "pending"
        raw, done = run.script.state_at(now - run.started)
        if done and run.temporary:
            return "running"  # the worker never writes a terminal status for a temporary run
        return raw

    def _active(self, thread: LangGraphThread, but: LangGraphRun | None = None) -> bool:
        return any(r is not but and not r.deleted and r.phase != "done" for r in thread.runs)

    def _advance(self, thread: LangGraphThread, now: float) -> None:
        """Apply every transition due by ``now`` on this thread, in time order."""
        for run in thread.runs:
            if run.phase == "done":
                continue
            if run.phase == "waiting":
                start = max(run.created, thread.free_at)
                if start > now:
                    return
                run.started = start
                run.phase = "started"
            if run.phase == "started":
                t_run = run.running_from
                if t_run > now:
                    return
                self._on_running(thread, run, min(t_run, run.started + run.script.duration))
            finish = run.started + run.script.duration
            if finish > now:
                return
            self._on_end(thread, run, finish)
            if thread.thread_id not in self.threads:
                return

    def _on_running(self, thread: LangGraphThread, run: LangGraphRun, at: float) -> None:
        run.phase = "running"
        config = run.kwargs.get("config")
        if isinstance(config, dict) and isinstance(config.get("metadata"), dict):
            config["metadata"].update(
                run_attempt=1,
                langgraph_version=LANGGRAPH_VERSION,
                langgraph_api_version=API_VERSION,
                langgraph_plan="enterprise",
                langgraph_host="self-hosted",
                langgraph_api_url=self.base_url,
            )

    @staticmethod
    def _input_state(thread: LangGraphThread, run: LangGraphRun) -> Any:
        """The thread values after the run's input was applied (written when the run ends)."""
        base = thread.values if isinstance(thread.values, dict) else {}
        if isinstance(run.input, dict):
            return {**copy.deepcopy(base), **copy.deepcopy(run.input)}
        if run.input is not None:
            return {**copy.deepcopy(base), "input": copy.deepcopy(run.input)}
        return copy.deepcopy(thread.values)

    def _on_end(self, thread: LangGraphThread, run: LangGraphRun, at: float) -> None:
        final = run.script.final
        script = run.script
        base_status = "idle"
        thread.values = self._input_state(thread, run)
        values = thread.values if isinstance(thread.values, dict) else {}
        interrupts: dict[str, Any] = {}
        if final == "success":
            error = None
            if script.outputs is not None:
                outputs = copy.deepcopy(dict(script.outputs))
                pause = outputs.pop("__interrupt__", None)
                thread.values = outputs
                if pause:
                    items = pause if isinstance(pause, list) else [pause]
                    items = [i if isinstance(i, dict) else {"value": i} for i in items]
                    for item in items:
                        item.setdefault("id", uuid.uuid4().hex)
                    interrupts = {str(uuid.uuid4()): items}
                    base_status = "interrupted"
                    run.outcome = {**outputs, "__interrupt__": items}
                else:
                    run.outcome = copy.deepcopy(outputs)
            else:
                thread.values = {**values, "result": copy.deepcopy(run.derived_result)}
                run.outcome = copy.deepcopy(thread.values)
        elif final == "error":
            error = {"error": run.error_type, "message": script.message or "An error occurred"}
            base_status = "error"
            run.outcome = {"__error__": error}
        elif final == "timeout":
            error = {"error": "TimeoutError", "message": ""}
            base_status = "error"
            run.outcome = copy.deepcopy(thread.values) if thread.values else None
        else:
            error = None
            run.outcome = copy.deepcopy(thread.values) if thread.values else None
        run.phase = "done"
        run.updated = at
        thread.free_at = max(thread.free_at, at)
        thread.error = error
        thread.interrupts = interrupts
        thread.status = "busy" if self._active(thread) else base_status
        thread.updated = thread.state_updated = at
        if run.temporary:
            self._drop_thread(thread.thread_id)

    def _cancel(self, thread: LangGraphThread, run: LangGraphRun, action: str, reason: str) -> None:
        """Cancel an in-flight run now (the thread has been advanced)."""
        now = self.now()
        was_running = run.phase == "running"
        run.cancelled_at = now
        run.updated = now
        thread.free_at = max(thread.free_at, now)
        thread.updated = now
        if action == "rollback":
            run.cancelled = "interrupted"
            run.deleted = True
            run.phase = "done"
            self.runs.pop(run.id, None)
            if not self._active(thread):
                thread.status = "idle"
        else:
            run.cancelled = "interrupted"
            run.phase = "done"
            if was_running:
                thread.values = self._input_state(thread, run)
                run.outcome = copy.deepcopy(thread.values) if thread.values else None
                thread.error = {"error": "UserInterrupt", "message": reason}
                thread.interrupts = {}
                thread.state_updated = now
                thread.status = "busy" if self._active(thread) else "interrupted"
            else:
                thread.status = "busy" if self._active(thread) else "idle"
        if run.temporary:
            self._drop_thread(thread.thread_id)

    def _drop_thread(self, thread_id: str) -> None:
        thread = self.threads.pop(thread_id, None)
        if thread is not None:
            for run in thread.runs:
                self.runs.pop(run.id, None)

    def _thread(self, thread_id: str) -> LangGraphThread | None:
        thread = self.threads.get(thread_id)
        if thread is not None:
            self._advance(thread, self.now())
        return self.threads.get(thread_id)

    def _find_run(self, thread: LangGraphThread, run_id: str) -> LangGraphRun | None:
        for run in thread.runs:
            if run.id == run_id and not run.deleted:
                return run
        return None

    # -- creating things -----------------------------------------------------------------------
    def _new_thread(
        self, thread_id: str, metadata: dict[str, Any], now: float, config: Any = None
    ) -> LangGraphThread:
        thread = LangGraphThread(
            thread_id, now, metadata, dict(config or {}), updated=now, state_updated=now
        )
        self.threads[thread_id] = thread
        return thread

    def _resolve_assistant(self, assistant_id: str) -> tuple[str, str | None]:
        """(assistant UUID, graph name or None when unknown); 422 for a bad graph name."""
        if assistant_id in self.graphs:
            return system_assistant_id(assistant_id), assistant_id
        try:
            aid = str(uuid.UUID(assistant_id))
        except ValueError:
            raise HTTPException(
                422,
                f"Invalid assistant: '{assistant_id}'. Must be either:\n"
                f"- A valid assistant UUID, or\n"
                f"- One of the registered graphs: {', '.join(self.graphs)}",
            ) from None
        return aid, self.assistants.get(aid)

    def _script_for(self, run_input: Any, script: Script | None) -> tuple[Script, str, Any]:
        """(script, error type, the "result" a success adds) for a new run."""
        directives: Any = run_input
        test_graph = isinstance(run_input, dict) and isinstance(run_input.get("input"), dict)
        if test_graph:
            directives = run_input["input"]
        result: Any = copy.deepcopy(directives) if test_graph else "ok"
        if (
            script is None
            and isinstance(directives, dict)
            and ("sleep" in directives or "fail" in directives)
        ):
            try:
                sleep = max(0.0, float(directives.get("sleep") or 0.0))
            except (TypeError, ValueError):
                sleep = 0.0
            fail = "fail" in directives
            steps = [("pending", self.pickup), ("running", sleep)]
            message = str(directives["fail"]) if fail else None
            return (
                Script(steps, final="error" if fail else "success", message=message),
                "RuntimeError",
                result,
            )
        chosen = script or self.next_script()
        return chosen, chosen.error_type or "ValueError", result

    def _create(
        self,
        body: dict[str, Any],
        thread_id: str | None,
        *,
        stateless: bool,
        headers: Mapping[str, str] | None = None,
        script: Script | None = None,
        run_id: str | None = None,
    ) -> LangGraphRun:
        """Validate and create a run (``self.lock`` held). ``thread_id`` None: a new thread."""
        _strip_reserved(body)
        aid, graph = self._resolve_assistant(body["assistant_id"])
        if thread_id is not None and not stateless:
            thread_id = _canonical_uuid(thread_id, "Invalid thread ID")
        command = body.get("command")
        if stateless and isinstance(command, dict) and command.get("resume"):
            raise HTTPException(400, "You must provide a thread_id when resuming.")
        config: dict[str, Any] = copy.deepcopy(body.get("config") or {})
        context: dict[str, Any] = copy.deepcopy(body.get("context") or {})
        configurable = config.setdefault("configurable", {})
        if configurable and context:
            raise HTTPException(400, MSG_BOTH_CONTEXT)
        if graph is None:
            raise HTTPException(404, MSG_NOT_FOUND_CREATE)
        now = self.now()
        thread = self._thread(thread_id) if thread_id is not None else None
        metadata: dict[str, Any] = dict(body.get("metadata") or {})
        raw_config_metadata = config.get("metadata")
        config_metadata: dict[str, Any] = (
            raw_config_metadata if isinstance(raw_config_metadata, dict) else {}
        )
        if thread is None:
            if thread_id is not None and not stateless and body.get("if_not_exists") != "create":
                raise HTTPException(404, MSG_NOT_FOUND_CREATE)
            existing = None
            thread = self._new_thread(
                thread_id or uuid7(),
                {"graph_id": graph, "assistant_id": aid, **config_metadata, **metadata},
                now,
                copy.deepcopy({**config, "configurable": {}}),
            )
            thread.status = "busy"
        else:
            existing = thread
            if thread.status != "busy":
                thread.status = "busy"
                thread.metadata.update(graph_id=graph, assistant_id=aid)
                thread.config = copy.deepcopy(
                    {
                        **thread.config,
                        **config,
                        "configurable": thread.config.get("configurable", {}),
                    }
                )
                thread.updated = now
        strategy = body.get("multitask_strategy") or "enqueue"
        inflight = [r for r in thread.live_runs() if r.phase != "done"]
        if strategy == "reject" and inflight and not stateless:
            raise HTTPException(409, MSG_REJECT)
        rid = run_id or uuid7()
        after = float(body.get("after_seconds") or 0)
        run_metadata = {
            **({"created_by": "system"} if aid in self.system_assistants else {}),
            **(existing.metadata if existing else {}),
            **config_metadata,
            **metadata,
        }
        run_metadata["assistant_id"] = aid
        temporary = stateless and body.get("on_completion", "delete") == "delete"
        stream_mode = body.get("stream_mode") or ["values"]
        if not context:
            context = dict(configurable)
        config["configurable"] = {
            **configurable,
            "langgraph_auth_user": None,
            "langgraph_auth_user_id": "",
            "langgraph_auth_permissions": [],
            "langgraph_request_id": (headers or {}).get("x-request-id") or str(uuid.uuid4()),
            "__request_start_time_ms__": int(time.time() * 1000),
            "__after_seconds__": body.get("after_seconds", 0),
            "run_id": rid,
            "thread_id": thread.thread_id,
            "graph_id": graph,
            "assistant_id": aid,
            "user_id": "",
        }
        config["metadata"] = dict(run_metadata)
        durability = body.get("durability") or (
            "async" if body.get("checkpoint_during") in (None, True) else "exit"
        )
        kwargs = {
            "input": body.get("input"),
            "command": command,
            "config": config,
            "context": context,
            "stream_mode": stream_mode if isinstance(stream_mode, list) else [stream_mode],
            "interrupt_before": body.get("interrupt_before"),
            "interrupt_after": body.get("interrupt_after"),
            "webhook": body.get("webhook"),
            "feedback_keys": body.get("feedback_keys"),
            "temporary": temporary,
            "subgraphs": body.get("stream_subgraphs", False),
            "resumable": body.get("stream_resumable", False),
            "checkpoint_during": body.get("checkpoint_during", True),
            "durability": durability,
        }
        run_script, error_type, result = self._script_for(body.get("input"), script)
        self._seq += 1
        run = LangGraphRun(
            rid,
            run_script,
            math.inf,
            {"body": body},
            thread_id=thread.thread_id,
            assistant_id=aid,
            graph_id=graph,
            input=copy.deepcopy(body.get("input")),
            metadata=run_metadata,
            kwargs=kwargs,
            multitask_strategy=strategy,
            created=now + after,
            updated=now,
            seq=self._seq,
            temporary=temporary,
            error_type=error_type,
            derived_result=result,
        )
        thread.runs.append(run)
        self.runs[rid] = run
        if strategy in ("interrupt", "rollback") and not stateless:
            reason = f"superseded by run {rid} (multitask_strategy={strategy})"
            for other in inflight:
                self._cancel(thread, other, strategy, reason)
        self._advance(thread, now)
        return run

    # -- JSON ----------------------------------------------------------------------------------
    def _run_json(self, run: LangGraphRun, now: float) -> dict[str, Any]:
        return {
            "run_id": run.id,
            "thread_id": run.thread_id,
            "assistant_id": run.assistant_id,
            "metadata": copy.deepcopy(run.metadata),
            "status": self._status(run, now),
            "kwargs": copy.deepcopy(run.kwargs),
            "multitask_strategy": run.multitask_strategy,
            "created_at": self._time(run.created),
            "updated_at": self._time(run.updated),
            "langsmith_session_name": None,
        }

    def _thread_json(self, thread: LangGraphThread) -> dict[str, Any]:
        body: dict[str, Any] = {
            "thread_id": thread.thread_id,
            "created_at": self._time(thread.created),
            "updated_at": self._time(thread.updated),
            "state_updated_at": self._time(thread.state_updated),
            "metadata": copy.deepcopy(thread.metadata),
            "status": thread.status,
            "config": copy.deepcopy(thread.config),
            "values": copy.deepcopy(thread.values),
        }
        if thread.interrupts is not None:
            body["error"] = copy.deepcopy(thread.error)
            body["interrupts"] = copy.deepcopy(thread.interrupts)
        return body

    def _fallback(self, thread: LangGraphThread | None) -> Any:
        """The join body for a run that had already ended: from the thread's current state."""
        if thread is None:
            return {}
        if thread.status == "error":
            return {"__error__": copy.deepcopy(thread.error)}
        if thread.status == "interrupted" and thread.interrupts:
            items = [i for lst in thread.interrupts.values() for i in lst]
            if items:
                return {"__interrupt__": copy.deepcopy(items)}
        return copy.deepcopy(thread.values) if thread.values else {}

    # -- routes --------------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.ok, methods=["GET"]),
            Route("/ok", self.ok, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/threads", self.create_thread, methods=["POST"]),
            Route("/threads/{thread_id}", self.get_thread, methods=["GET"]),
            Route("/threads/{thread_id}", self.delete_thread, methods=["DELETE"]),
            Route("/threads/{thread_id}/runs", self.create_run, methods=["POST"]),
            Route("/threads/{thread_id}/runs", self.list_runs, methods=["GET"]),
            Route("/threads/{thread_id}/runs/wait", self.wait_run, methods=["POST"]),
            Route("/threads/{thread_id}/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/threads/{thread_id}/runs/{run_id}", self.delete_run, methods=["DELETE"]),
            Route("/threads/{thread_id}/runs/{run_id}/cancel", self.cancel_run, methods=["POST"]),
            Route("/threads/{thread_id}/runs/{run_id}/join", self.join_run, methods=["GET"]),
            Route("/runs", self.create_stateless_run, methods=["POST"]),
            Route("/runs/wait", self.wait_stateless_run, methods=["POST"]),
        ]

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise HTTPException(422, "Invalid JSON in request body") from None

    async def ok(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "services": {}})

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "version": API_VERSION,
                "langgraph_py_version": LANGGRAPH_VERSION,
                "flags": {
                    "assistants": True,
                    "crons": True,
                    "langsmith": False,
                    "langsmith_tracing_replicas": True,
                    "langsmith_tracing_session_on_runs": True,
                },
                "host": {
                    "kind": "self-hosted",
                    "project_id": None,
                    "host_revision_id": None,
                    "revision_id": None,
                    "tenant_id": None,
                },
            }
        )

    async def create_thread(self, request: Request) -> Response:
        body = _validate(await self._json(request), THREAD_CREATE)
        _strip_reserved(body)
        thread_id = body.get("thread_id")
        if thread_id:
            thread_id = _canonical_uuid(thread_id, MSG_BAD_THREAD)
        with self.lock:
            thread = self._thread(thread_id) if thread_id else None
            if thread is not None:
                if (body.get("if_exists") or "raise") == "raise":
                    raise HTTPException(409, f"Thread with ID {thread_id} already exists")
            else:
                thread = self._new_thread(
                    thread_id or uuid7(), dict(body.get("metadata") or {}), self.now()
                )
            return JSONResponse(self._thread_json(thread))

    def _get_thread(self, request: Request) -> LangGraphThread:
        thread_id = _canonical_uuid(request.path_params["thread_id"], MSG_BAD_THREAD)
        thread = self._thread(thread_id)
        if thread is None:
            raise HTTPException(404, f"Thread with ID {thread_id} not found")
        return thread

    async def get_thread(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self._thread_json(self._get_thread(request)))

    async def delete_thread(self, request: Request) -> Response:
        with self.lock:
            self._drop_thread(self._get_thread(request).thread_id)
        return Response(status_code=204)

    def _launch(self, request: Request, body: Any, *, stateless: bool) -> LangGraphRun:
        schema = RUN_STATELESS if stateless else RUN_STATEFUL
        original = copy.deepcopy(body)
        body = _validate(body, schema, ("assistant_id",))
        thread_id = None if stateless else request.path_params["thread_id"]
        with self.lock:
            run = self._create(body, thread_id, stateless=stateless, headers=request.headers)
            self.launches.append(original)
        return run

    async def create_run(self, request: Request) -> Response:
        run = self._launch(request, await self._json(request), stateless=False)
        with self.lock:
            body = self._run_json(run, self.now())
        return JSONResponse(
            body, headers={"Content-Location": f"/threads/{run.thread_id}/runs/{run.id}"}
        )

    async def create_stateless_run(self, request: Request) -> Response:
        run = self._launch(request, await self._json(request), stateless=True)
        with self.lock:
            body = self._run_json(run, self.now())
        return JSONResponse(body, headers={"Content-Location": f"/runs/{run.id}"})

    async def wait_run(self, request: Request) -> Response:
        run = self._launch(request, await self._json(request), stateless=False)
        return self._join_response(run, live=True)

    async def wait_stateless_run(self, request: Request) -> Response:
        run = self._launch(request, await self._json(request), stateless=True)
        return self._join_response(run, live=True)

    def _ids(self, request: Request) -> tuple[str, str]:
        thread_id = _canonical_uuid(request.path_params["thread_id"], MSG_BAD_THREAD)
        run_id = _canonical_uuid(request.path_params["run_id"], MSG_BAD_RUN)
        return thread_id, run_id

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", 10))
            offset = int(query.get("offset", 0))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        status = query.get("status")
        select = query.getlist("select")
        if bad := [s for s in select if s not in RUN_FIELDS]:
            expected = "{" + ", ".join(repr(f) for f in RUN_FIELDS) + "}"
            raise HTTPException(422, f"Invalid select columns: {bad!r}. Expected: {expected}")
        with self.lock:
            thread = self._get_thread(request)
            now = self.now()
            runs = [
                r for r in thread.live_runs() if status is None or self._status(r, now) == status
            ]
            runs.sort(key=lambda r: (r.created, r.seq), reverse=True)
            out = [self._run_json(r, now) for r in runs[offset : offset + limit]]
        if select:
            out = [{k: v for k, v in r.items() if k in select} for r in out]
        return JSONResponse(out)

    async def get_run(self, request: Request) -> Response:
        _, run_id = self._ids(request)
        with self.lock:
            thread = self._get_thread(request)
            run = self._find_run(thread, run_id)
            if run is None:
                raise HTTPException(404, "Not Found")
            return JSONResponse(self._run_json(run, self.now()))

    async def delete_run(self, request: Request) -> Response:
        thread_id, run_id = self._ids(request)
        with self.lock:
            thread = self._thread(thread_id)
            run = self._find_run(thread, run_id) if thread else None
            if thread is None or run is None:
                raise HTTPException(404, "Run not found")
            if run.phase != "done":
                self._cancel(thread, run, "rollback", "run deleted")
            run.deleted = True
            self.runs.pop(run.id, None)
        return Response(status_code=204)

    async def cancel_run(self, request: Request) -> Response:
        thread_id, run_id = self._ids(request)
        wait = request.query_params.get("wait", "false").lower() in {"true", "yes", "1"}
        action = request.query_params.get("action", "interrupt")
        action = action if action in ("interrupt", "rollback") else "interrupt"
        with self.lock:
            thread = self._thread(thread_id)
            run = self._find_run(thread, run_id) if thread else None
            if thread is None or run is None:
                raise HTTPException(404, MSG_CANCEL_UNKNOWN)
            if run.phase == "done":
                raise HTTPException(404, MSG_CANCEL_TERMINAL)
            reason = f"{action} requested via POST /threads/{{thread_id}}/runs/{{run_id}}/cancel"
            self._cancel(thread, run, action, reason)
            self.cancels.append(run.id)
        if not wait:
            return Response(status_code=202)
        # the real server streams the run's events from the cancel on: nothing but the end
        return self._stream(run, self._cancel_body(), thread_id)

    async def _cancel_body(self) -> AsyncIterator[bytes]:
        yield b"{}"

    async def join_run(self, request: Request) -> Response:
        thread_id, run_id = self._ids(request)
        cancel_on_disconnect = request.query_params.get(
            "cancel_on_disconnect", "false"
        ).lower() in {"true", "yes", "1"}
        with self.lock:
            thread = self._thread(thread_id)
            run = self._find_run(thread, run_id) if thread else None
            if (
                run is None
            ):  # the hosted server checks before streaming (in-memory: 200 + __error__)
                raise HTTPException(404, "Run not found")
            live = run.phase != "done"
        return self._join_response(run, live=live, cancel_on_disconnect=cancel_on_disconnect)

    def _join_response(
        self, run: LangGraphRun, *, live: bool, cancel_on_disconnect: bool = False
    ) -> Response:
        return self._stream(run, self._join_body(run, live, cancel_on_disconnect), run.thread_id)

    def _stream(self, run: LangGraphRun, body: AsyncIterator[bytes], thread_id: str) -> Response:
        return StreamingResponse(
            body,
            media_type="application/json",
            headers={
                "Location": f"/threads/{thread_id}/runs/{run.id}/join",
                "Content-Location": f"/threads/{thread_id}/runs/{run.id}",
            },
        )

    async def _join_body(
        self, run: LangGraphRun, live: bool, cancel_on_disconnect: bool
    ) -> AsyncIterator[bytes]:
        last_beat = self.now()
        finished = False
        try:
            while True:
                with self.lock:
                    thread = self._thread(run.thread_id)
                    if run.phase == "done" or run.deleted or thread is None:
                        finished = True
                        if live and run.outcome is not None and not run.deleted:
                            result = copy.deepcopy(run.outcome)
                        else:
                            result = self._fallback(thread)
                        break
                now = self.now()
                if now - last_beat >= self.heartbeat:
                    last_beat = now
                    yield b"\n"
                await anyio.sleep(max(0.001, min(self.poll, last_beat + self.heartbeat - now)))
            yield _dump(result).encode()
        finally:
            if cancel_on_disconnect and not finished:
                with self.lock:
                    thread = self._thread(run.thread_id)
                    if thread is not None and run.phase != "done" and not run.deleted:
                        self._cancel(thread, run, "interrupt", "Run cancelled: client disconnected")
