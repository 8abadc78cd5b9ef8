"""A small framework for platform emulators.

An :class:`Emulator` is the state of one fake platform (its runs, what it received, the
faults it will inject) plus the routes of a Starlette app that speaks the platform's wire
protocol. Each run follows a scripted :class:`Script` from launch: how long it spends in each
raw state and which terminal state it ends in. A fault middleware in front of every route can
answer with an error status (5xx, 429 with ``Retry-After``), drop the connection mid-response,
answer slowly, or send malformed JSON, before or *after* the request took effect (a launch
whose response is lost is the case that creates duplicate runs in naive clients); after it
took effect, it can also cut the real answer short or garble it.

Faults are queued one by one (:meth:`Emulator.inject`) or drawn at random for a fraction of
all requests (:class:`RandomFaults`, a soak's chaos); every fault met is recorded in
``Emulator.injected``. Under concurrency, where launches arrive in no fixed order,
``Emulator.script_for`` picks each launch's script from its request.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute

from . import _control

__all__ = [
    "DroppedByFault",
    "EmulatedRun",
    "Emulator",
    "Fault",
    "InjectedFault",
    "RandomFaults",
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


FaultKind = Literal["status", "drop", "delay", "malformed", "truncate", "garble"]
GARBLE = b"\xff\xfe\x00<garbled>"
"""What a ``garble`` fault writes over the answer: not UTF-8, so never valid JSON."""


@dataclasses.dataclass
class Fault:
    """One injected failure, used up after ``times`` matching requests.

    kind: ``status`` (answer ``status`` with a JSON error body and optional ``retry_after``),
    ``drop`` (start the response, then close the connection), ``delay`` (answer after
    ``seconds``), ``malformed`` (200 with a body that is not JSON), and two that need the real
    answer, so only ``after``: ``truncate`` (the real status and headers, the body cut short at
    ``cut`` of its length, always before its last non-blank byte, with a matching
    Content-Length: a complete response whose JSON is unfinished) and ``garble`` (the real
    answer with a few bytes at ``cut`` of its length overwritten by bytes that are not UTF-8).
    An empty body has nothing to cut or overwrite: both send ``{"`` instead. With ``ok_only``
    they spoil only a 2xx answer and let an error answer through (the fault is then not met).
    when: ``before`` the platform acts on the request, or ``after`` it did (the answer is lost).
    A ``delay`` before acts on the request after the delay, even when the client has given up
    by then (as a slow server does).
    """

    kind: FaultKind = "status"
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    times: int = 1
    method: str | None = None
    path: str | None = None
    """Substring the request path must contain."""
    when: Literal["before", "after"] = "before"
    cut: float = 0.5
    """Where ``truncate`` cuts and ``garble`` overwrites, as a fraction of the body's length."""
    ok_only: bool = False
    """``truncate`` and ``garble``: spoil only a 2xx answer."""
    on: str | None = None
    """``launch``, ``status`` or ``cancel``: only the platform's request of that kind (each
    emulator maps the word in ``Emulator.fault_targets``), besides ``method`` and ``path``."""

    def __post_init__(self) -> None:
        if self.kind in ("truncate", "garble") and self.when != "after":
            raise ValueError(f"a {self.kind!r} fault needs the real answer: use when='after'")
        if not 0.0 <= self.cut <= 1.0:
            raise ValueError(f"cut must be a fraction between 0 and 1, got {self.cut!r}")
        if self.on not in (None, "launch", "status", "cancel"):
            raise ValueError(f"on must be 'launch', 'status' or 'cancel', got {self.on!r}")

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method:
            return False
        return not (self.path and self.path not in path)

    @property
    def label(self) -> str:
        """A short name for summaries: ``status 503 before``, ``drop after``, ``delay 0.2s
        before``."""
        what = str(self.kind)
        if self.kind == "status":
            what = f"status {self.status}"
        elif self.kind == "delay":
            what = f"delay {self.seconds:g}s"
        return f"{what} {self.when}" + (f" on {self.on}" if self.on else "")


@dataclasses.dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: Any


@dataclasses.dataclass(frozen=True)
class InjectedFault:
    """A fault the emulator met: a snapshot of the fault and the request it was applied to."""

    fault: Fault
    request: RecordedRequest
    answered: int | None = None
    """For a fault after the request took effect: the status the platform answered."""


FaultChoice = Fault | Callable[[random.Random], Fault]
"""A fault of a :class:`RandomFaults` menu, or a function of a random source that makes one
(to draw its parameters: a status, a delay, where to cut)."""


class RandomFaults:
    """Faults drawn at random, for a soak: each request meets one with probability ``rate``,
    chosen from ``menu`` (pairs of a weight and a :data:`FaultChoice`).

    Each draw is a function of ``seed`` and the request itself (method, path, query, body, and
    how many identical requests came before), not of the order in which concurrent requests
    arrive: with the same seed, the same requests meet the same faults wherever the ids in them
    are the same from run to run (ids derived from idempotency keys are; random ids are not).
    ``rate`` may also be a function of the request (a higher rate for launches, say), and
    ``applies`` (a request -> bool) limits the chaos to some requests. A drawn fault is used
    for that one request (its ``times``, ``method`` and ``path`` are ignored).
    """

    def __init__(
        self,
        menu: Sequence[tuple[float, FaultChoice]],
        *,
        rate: float | Callable[[RecordedRequest], float] = 0.1,
        seed: int = 0,
        applies: Callable[[RecordedRequest], bool] | None = None,
    ) -> None:
        if not callable(rate) and not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be between 0 and 1, got {rate!r}")
        if not menu or any(weight < 0 for weight, _ in menu) or not sum(w for w, _ in menu):
            raise ValueError("menu needs at least one fault with a positive weight")
        self.menu = list(menu)
        self.rate = rate
        self.seed = seed
        self.applies = applies
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def _rng(self, request: RecordedRequest) -> random.Random:
        try:
            body = json.dumps(request.body, sort_keys=True, default=str)
        except (TypeError, ValueError):
            body = repr(request.body)
        identity = f"{request.method} {request.path}?{request.query} {body}"
        with self._lock:
            nth = self._seen.get(identity, 0)
            self._seen[identity] = nth + 1
        digest = hashlib.sha256(f"{self.seed}|{nth}|{identity}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def draw(self, request: RecordedRequest) -> Fault | None:
        """The fault this request meets, or None."""
        if self.applies is not None and not self.applies(request):
            return None
        rng = self._rng(request)
        rate = self.rate(request) if callable(self.rate) else self.rate
        if rng.random() >= rate:
            return None
        weights = [weight for weight, _ in self.menu]
        (choice,) = rng.choices([c for _, c in self.menu], weights=weights)
        fault = choice(rng) if callable(choice) else dataclasses.replace(choice)
        return dataclasses.replace(fault, times=1, method=None, path=None)


_E = TypeVar("_E", bound="Emulator")

_current_request: contextvars.ContextVar[RecordedRequest | None] = contextvars.ContextVar(
    "runbridge_emulator_request", default=None
)


def json_error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


class Emulator:
    """Base class: state, scripts, faults and recording; subclasses add ``routes()``."""

    platform: ClassVar[str]
    default_script: ClassVar[Script] = Script()
    script_words: ClassVar[Mapping[str, str | None]] = {}
    """The generic script words of the control API (``queued``, ``running``, ``success``,
    ``failed``, ``cancelled``, ``unknown``) as this platform's raw states; None: the platform
    cannot carry that state."""
    raw_states: ClassVar[frozenset[str]] = frozenset()
    """The raw states a script sent to the control API may name."""
    fault_targets: ClassVar[Mapping[str, Callable[[RecordedRequest], bool]]] = {}
    """The requests a fault's ``on`` (``launch``, ``status``, ``cancel``) names."""

    _init_args: tuple[tuple[Any, ...], dict[str, Any]]

    def __new__(cls: type[_E], *args: Any, **kwargs: Any) -> _E:
        emulator = super().__new__(cls)
        emulator._init_args = (args, dict(kwargs))  # for reset()
        return emulator

    def __init__(self, *, script: Script | None = None, token: str | None = None) -> None:
        self.lock = threading.RLock()
        self.runs: dict[str, EmulatedRun] = {}
        self.requests: list[RecordedRequest] = []
        self.launches: list[Any] = []
        """The body of every launch the platform accepted, in order."""
        self.cancels: list[str] = []
        self.faults: list[Fault] = []
        self.chaos: RandomFaults | None = None
        """Random faults for every request (after the queued ``faults``), or None."""
        self.injected: list[InjectedFault] = []
        """Every fault met, queued or random, in order."""
        self.active = 0
        """Requests being answered now (a slow one the client gave up on included)."""
        self.script_for: Callable[[RecordedRequest], Script | None] | None = None
        """Picks the script of a run launched by a request (None: the queued scripts, then the
        default). Concurrent launches arrive in no fixed order; this gives each its own."""
        self.token = token
        """When set, requests without this token are refused as the platform would."""
        self._scripts: deque[Script] = deque()
        self._default = script or self.default_script
        self.base_url: str = ""
        self._app: Starlette | None = None
        self.user_cancels: list[str] = []
        """Runs cancelled through the control API, as a user of the platform would."""

    # -- scripting ---------------------------------------------------------------------------
    def script(self, *scripts: Script) -> None:
        """Queue scripts for the next launches, in order; later launches use the default."""
        with self.lock:
            self._scripts.extend(scripts)

    def next_script(self) -> Script:
        chooser = self.script_for
        request = _current_request.get()
        if chooser is not None and request is not None:
            chosen = chooser(request)
            if chosen is not None:
                return chosen
        with self.lock:
            return self._scripts.popleft() if self._scripts else self._default

    @staticmethod
    def current_request() -> RecordedRequest | None:
        """The request being answered (inside a route), as recorded."""
        return _current_request.get()

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

    def _take_fault(self, request: RecordedRequest, when: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if (
                    fault.when == when
                    and fault.times > 0
                    and fault.matches(request.method, request.path)
                    and self._targets(fault, request)
                ):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def _choose_fault(self, request: RecordedRequest) -> Fault | None:
        """The fault this request meets (queued first, then random), or None."""
        fault = self._take_fault(request, "before")
        if fault is None:
            fault = self._take_fault(request, "after")
        if fault is None and self.chaos is not None:
            fault = self.chaos.draw(request)
        return fault

    def _targets(self, fault: Fault, request: RecordedRequest) -> bool:
        if fault.on is None:
            return True
        target = self.fault_targets.get(fault.on)
        return target is not None and target(request)

    def _met(self, fault: Fault, request: RecordedRequest, answered: int | None = None) -> None:
        with self.lock:
            self.injected.append(InjectedFault(dataclasses.replace(fault), request, answered))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until no request is being answered (a slow one may still act on the platform
        after its client gave up); False if that took longer than ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if self.active == 0:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def requests_to(self, method: str, path_contains: str = "") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == method and path_contains in r.path]

    # -- the control API (see _control.py) ------------------------------------------------------
    def set_default(self, script: Script, *, survive_reset: bool = False) -> None:
        """The script used when the queue is empty; with ``survive_reset`` also after
        :meth:`reset` (as if given to the constructor: ``emulate --script``)."""
        with self.lock:
            self._default = script
            if survive_reset:
                self._init_args[1]["script"] = script

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def refresh(self, now: float) -> None:
        """Apply what is due by ``now`` (for emulators that advance lazily, on requests)."""

    def run_view(self, run: EmulatedRun, now: float) -> tuple[str, bool]:
        """(raw state, finished?) of a run now, as the platform would report it."""
        return run.state(now)

    def run_key(self, run: EmulatedRun) -> str | None:
        """The caller-chosen id or idempotency key the run was launched with, if any."""
        key = run.data.get("key")
        return key if isinstance(key, str) else None

    def user_cancel(self, run: EmulatedRun) -> str | None:
        """Cancel ``run`` as a user of the platform would (not through runbridge's client).

        Returns None when done, else why it cannot be (the run already ended, the platform has
        no cancel). The default moves the run to the ``cancelled`` script word's raw state.
        """
        cancelled = self.script_words.get("cancelled")
        if cancelled is None:
            return f"{self.platform} runs cannot be cancelled"
        now = self.now()
        raw, done = self.run_view(run, now)
        if done:
            return f"run {run.id} already finished ({raw})"
        run.cancelled, run.cancelled_at = cancelled, now
        return None

    def find_run(self, run_id: str) -> EmulatedRun | None:
        """A run by its id (or the key it is stored under)."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is not None:
                return run
            return next((r for r in self.runs.values() if r.id == run_id), None)

    def cancel_as_user(self, run_id: str) -> str | None:
        """Cancel a run as a user would (see :meth:`user_cancel`); None, or why not."""
        with self.lock:
            self.refresh(self.now())
            run = self.find_run(run_id)
            if run is None:
                return f"no run {run_id!r}"
            problem = self.user_cancel(run)
            if problem is None:
                self.user_cancels.append(run.id)
            return problem

    def _launch_texts(self) -> list[str] | None:
        """Each launch request as one text (path, headers, body) to look keys up in; None when
        the platform names no launch request."""
        target = self.fault_targets.get("launch")
        if target is None:
            return None
        texts = []
        for request in self.requests:
            if target(request):
                try:
                    body = json.dumps(request.body, default=str)
                except (TypeError, ValueError):
                    body = repr(request.body)
                texts.append("\n".join([request.path, *request.headers.values(), body]))
        return texts

    def record(self) -> dict[str, Any]:
        """What the platform saw: its runs, launches, cancels, the faults met, the requests."""
        with self.lock:
            now = self.now()
            wall = time.time()
            self.refresh(now)
            texts = self._launch_texts()
            words = {raw: word for word, raw in list(self.script_words.items())[::-1] if raw}
            runs = []
            for run in list(self.runs.values()):
                raw, done = self.run_view(run, now)
                key = self.run_key(run)
                started = run.started if math.isfinite(run.started) else now
                runs.append(
                    {
                        "id": run.id,
                        "key": key,
                        "state": raw,
                        "word": words.get(raw),
                        "finished": done,
                        "cancelled": run.cancelled is not None,
                        "started": wall - (now - started),
                        "launch_requests": (
                            1 if key is None or texts is None else sum(key in t for t in texts)
                        ),
                    }
                )
            return {
                "platform": self.platform,
                "runs": runs,
                "launches": len(self.launches),
                "cancels": len(self.cancels),
                "user_cancels": list(self.user_cancels),
                "faults_met": [
                    {
                        "fault": _control.fault_json(met.fault),
                        "label": met.fault.label,
                        "method": met.request.method,
                        "path": met.request.path,
                        "answered": met.answered,
                    }
                    for met in self.injected
                ],
                "faults_pending": [_control.fault_json(f) for f in self.faults],
                "scripts_queued": len(self._scripts),
                "requests": len(self.requests),
            }

    def close(self) -> None:
        """Stop background work (timers, deliveries); subclasses that have some override it."""

    def reset(self) -> None:
        """Forget runs, scripts, faults and requests: back to the state the emulator was made
        in (its constructor's arguments, the default script included), same URL and app."""
        with self.lock:
            self.close()
            args, kwargs = self._init_args
            base_url, app = self.base_url, self._app
            self.__init__(*args, **kwargs)  # type: ignore[misc]
            self.base_url, self._app = base_url, app

    async def _control(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """Answer a request under the control API's prefix (never recorded, never faulted)."""
        method, path = scope["method"], scope["path"][len(_control.PREFIX) :].strip("/")
        status: int
        answer: dict[str, Any]
        try:
            parsed: Any = None
            if method == "POST" and body.strip():
                parsed = _control.load_json(body)
            status, answer = self._control_action(method, path, parsed)
        except _control.ControlError as exc:
            status, answer = 400, {"detail": str(exc), "field": exc.field}
        await JSONResponse(answer, status)(scope, receive, send)

    def _control_action(self, method: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        if path == "record" and method == "GET":
            return 200, self.record()
        if path == "scripts" and method == "POST":
            scripts, default = _control.parse_scripts(self, body)
            with self.lock:
                self._scripts.extend(scripts)
                if default is not None:
                    self._default = default
                return 200, {"queued": len(self._scripts), "default_set": default is not None}
        if path == "faults" and method == "POST":
            faults, clear = _control.parse_faults(self, body)
            with self.lock:
                if clear:
                    self.faults.clear()
                self.faults.extend(faults)
                return 200, {"pending": len(self.faults)}
        if path == "reset" and method == "POST":
            self.reset()
            return 200, {"reset": True}
        parts = path.split("/")
        if len(parts) >= 3 and parts[0] == "runs" and parts[-1] == "cancel" and method == "POST":
            run_id = "/".join(parts[1:-1])  # W&B run ids are entity/project/name
            problem = self.cancel_as_user(run_id)
            if problem is None:
                return 200, {"cancelled": run_id}
            return (404 if problem.startswith("no run") else 409), {"detail": problem}
        known = "GET record, POST scripts, POST faults, POST reset, POST runs/{id}/cancel"
        return 404, {"detail": f"no control route {method} {_control.PREFIX}{path}; {known}"}

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
        if path.startswith(_control.PREFIX):
            await self._control(scope, receive, send, body)
            return
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        recorded = RecordedRequest(
            method, path, scope.get("query_string", b"").decode(), headers, parsed
        )
        with self.lock:
            self.requests.append(recorded)
            self.active += 1
        token = _current_request.set(recorded)
        try:
            await self._answer(scope, receive, send, recorded, body)
        finally:
            _current_request.reset(token)
            with self.lock:
                self.active -= 1

    async def _answer(
        self, scope: Scope, receive: Receive, send: Send, recorded: RecordedRequest, body: bytes
    ) -> None:
        assert self._app is not None

        replayed = False

        async def replay() -> Message:
            # the body once, then the server's own receive (which reports a disconnect:
            # streaming responses listen for it)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        fault = self._choose_fault(recorded)
        if fault is not None and fault.when == "before":
            self._met(fault, recorded)
            await self._apply(fault, scope, replay, send, None)
            return
        after = fault
        if after is None:
            await self._app(scope, replay, send)
            return
        captured: list[Message] = []

        async def capture(message: Message) -> None:
            captured.append(message)

        await self._app(scope, replay, capture)
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        answered = int(start["status"]) if start is not None else None
        if (
            after.kind in ("truncate", "garble")
            and after.ok_only
            and not (answered is not None and 200 <= answered < 300)
        ):
            for message in captured:  # an error answer, let through
                await send(message)
            return
        self._met(after, recorded, answered)
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
        if fault.kind in ("truncate", "garble") and captured is not None:
            await self._send_spoiled(fault, captured, send)
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

    @staticmethod
    async def _send_spoiled(fault: Fault, captured: list[Message], send: Send) -> None:
        """The captured answer, truncated or garbled (see :class:`Fault`), as one body."""
        start = next((m for m in captured if m["type"] == "http.response.start"), None)
        body = b"".join(
            bytes(m.get("body", b"")) for m in captured if m["type"] == "http.response.body"
        )
        end = len(body.rstrip())  # the last non-blank byte is body[end - 1]
        if end == 0:
            spoiled = b'{"'
        elif fault.kind == "truncate":
            spoiled = body[: min(int(len(body) * fault.cut), end - 1)]
        else:
            at = min(int(len(body) * fault.cut), max(0, len(body) - len(GARBLE)))
            spoiled = body[:at] + GARBLE + body[at + len(GARBLE) :]
        status = start["status"] if start is not None else 200
        headers = [
            (bytes(k), bytes(v))
            for k, v in (start.get("headers", []) if start is not None else [])
            if bytes(k).lower() not in (b"content-length", b"transfer-encoding")
        ]
        headers.append((b"content-length", str(len(spoiled)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": spoiled})
