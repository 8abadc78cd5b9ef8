"""A small framework for platform emulators.

An :class:`Emulator` is the state of one fake platform (its runs, what it received, the
faults it will inject) plus the routes of a Starlette app that speaks the platform's wire
protocol. Each run follows a scripted :class:`Script` from launch: how long it spends in each
raw state and which terminal state it ends in. A fault middleware in front of every route can
answer with an error status (5xx, 429 with ``Retry-After``), drop the connection mid-response,
answer slowly, or send malformed JSON, before or *after* the request took effect (a launch
whose response is lost is the case that creates duplicate runs in naive clients).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

__all__ = [
    "DroppedByFault",
    "EmulatedRun",
    "Emulator",
    "Fault",
    "RecordedRequest",
    "Script",
    "json_error",
]


class DroppedByFault(ConnectionAbortedError):
    """Raised inside the app to make the server close a connection mid-response."""


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class Script:
    """What a run does: ``steps`` of (raw state, seconds), then ``final`` forever.

    ``message`` is the error text a failed run reports; ``outputs`` what a finished one returns.
    """

    steps: Sequence[tuple[str, float]] = ()
    final: str = "success"
    message: str | None = None
    outputs: Mapping[str, Any] | None = None
    error_type: str | None = None
    """The platform's error class or code for a failed run, where it reports one."""

    def state_at(self, elapsed: float) -> tuple[str, bool]:
        """(raw state, finished?) ``elapsed`` seconds after launch."""
        t = 0.0
        for raw, seconds in self.steps:
            t += seconds
            if elapsed < t:
                return raw, False
        return self.final, True

    @property
    def duration(self) -> float:
        return sum(seconds for _, seconds in self.steps)


@dataclasses.dataclass
class EmulatedRun:
    """One run on the emulator. ``data`` holds whatever the platform's run object carries."""

    id: str
    script: Script
    started: float
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    cancelled: str | None = None
    """The raw state the run moved to when cancelled, if it was."""
    cancelled_at: float | None = None

    def state(self, now: float) -> tuple[str, bool]:
        if self.cancelled is not None:
            return self.cancelled, True
        return self.script.state_at(now - self.started)

    def finished_at(self, now: float) -> float | None:
        if self.cancelled_at is not None:
            return self.cancelled_at
        _, done = self.script.state_at(now - self.started)
        return self.started + self.script.duration if done else None


@dataclasses.dataclass
class Fault:
    """One injected failure, used up after ``times`` matching requests.

    kind: ``status`` (answer ``status`` with a JSON error body and optional ``retry_after``),
    ``drop`` (start the response, then close the connection), ``delay`` (answer after
    ``seconds``), ``malformed`` (200 with a body that is not JSON).
    when: ``before`` the platform acts on the request, or ``after`` it did (the answer is lost).
    """

    kind: Literal["status", "drop", "delay", "malformed"] = "status"
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    times: int = 1
    method: str | None = None
    path: str | None = None
    """Substring the request path must contain."""
    when: Literal["before", "after"] = "before"

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return not (self.path and self.path not in path)


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any


def json_error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


class Emulator:
    """Base class: state, scripts, faults and recording; subclasses add ``routes()``."""

    platform: ClassVar[str]
    default_script: ClassVar[Script] = Script()

    def __init__(self, *, script: Script | None = None, token: str | None = None) -> None:
        self.lock = threading.RLock()
        self.runs: dict[str, EmulatedRun] = {}
        self.requests: list[RecordedRequest] = []
        self.launches: list[Any] = []
        """The body of every launch the platform accepted, in order."""
        self.cancels: list[str] = []
        self.faults: list[Fault] = []
        self.token = token
        """When set, requests without this token are refused as the platform would."""
        self._scripts: deque[Script] = deque()
        self._default = script or self.default_script
        self.base_url: str = ""
        self._app: Starlette | None = None

    # -- scripting ---------------------------------------------------------------------------
    def script(self, *scripts: Script) -> None:
        """Queue scripts for the next launches, in order; later launches use the default."""
        with self.lock:
            self._scripts.extend(scripts)

    def next_script(self) -> Script:
        with self.lock:
            return self._scripts.popleft() if self._scripts else self._default

    def now(self) -> float:
        return time.monotonic()

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def add_run(
        self, script: Script | None = None, run_id: str | None = None, **data: Any
    ) -> EmulatedRun:
        """Create a run directly (as if launched elsewhere), for sensor-style tests."""
        run = EmulatedRun(
            run_id or self.new_id(), script or self.next_script(), self.now(), dict(data)
        )
        with self.lock:
            self.runs[run.id] = run
        return run

    # -- faults --------------------------------------------------------------------------------
    def inject(self, fault: Fault | None = None, **kwargs: Any) -> Fault:
        """Add a fault (``emu.inject(kind="status", status=503, times=2)``)."""
        fault = fault or Fault(**kwargs)
        with self.lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str, when: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.when == when and fault.times > 0 and fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def requests_to(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and path_contains in r.path]

    # -- the ASGI app ------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def check_auth(self, request: Request) -> JSONResponse | None:
        """Refuse a request without the right credentials (platform-specific; default: none)."""
        return None

    def starlette_options(self) -> dict[str, Any]:
        """Extra ``Starlette(...)`` arguments (middleware, exception_handlers) for subclasses."""
        return {}

    @property
    def app(self) -> ASGIApp:
        if self._app is None:
            self._app = Starlette(routes=self.routes(), **self.starlette_options())
        return self._middleware

    async def _middleware(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._app is not None
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self.lock:
            self.requests.append(
                RecordedRequest(
                    method, path, scope.get("query_string", b"").decode(), headers, parsed
                )
            )

        replayed = False

        async def replay() -> Message:
            # the body once, then the server's own receive (which reports a disconnect:
            # streaming responses listen for it)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        fault = self._take_fault(method, path, "before")
        if fault is not None:
            await self._apply(fault, scope, replay, send, None)
            return
        after = self._take_fault(method, path, "after")
        if after is None:
            await self._app(scope, replay, send)
            return
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self._app(scope, replay, capture)
        await self._apply(after, scope, replay, send, captured)

    async def _apply(
        self,
        fault: Fault,
        scope: Scope,
        receive: Receive,
        send: Send,
        captured: list[Message] | None,
    ) -> None:
        import anyio

        if fault.kind == "delay":
            await anyio.sleep(fault.seconds)
            if captured is None:
                assert self._app is not None
                await self._app(scope, receive, send)
            else:
                for message in captured:
                    await send(message)
            return
        if fault.kind == "status":
            headers = {"retry-after": fault.retry_after} if fault.retry_after is not None else None
            response = JSONResponse(
                {"detail": f"injected fault: HTTP {fault.status}"}, fault.status, headers=headers
            )
            await response(scope, receive, send)
            return
        if fault.kind == "malformed":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"status": "runn'})
            return
        # drop: promise a body, send part of it, then fail, so the server closes the socket
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"', "more_body": True})
        raise DroppedByFault("emulator fault: connection dropped")
