"""RunClient and AsyncRunClient: the only code that performs I/O.

Everything a client *decides* (retries, the launch safety net, re-attach, the wait loop,
deadlines) is in the sans-IO flows of :mod:`runbridge.core.flows`; ``_BaseClient`` owns
configuration, request building, the body cap and redaction. The two clients add only "send
one request", "sleep" and "save a record", and their ``_drive`` loops are kept line-for-line
parallel.

Two promises are kept here, because only the I/O layer can keep them:

* **A request's deadline is total.** A server that trickles its headers or body a byte at a
  time never trips a read timeout; the async client bounds the whole exchange with one timer,
  the sync client's connections read against the request's deadline (a network backend that
  lowers each socket read's timeout to what is left; see ``_DeadlineBackend``).
* **Answers are redacted where they enter** (:mod:`runbridge.core.redact`) and capped in size:
  the cap counts the bytes as they are decoded, a piece at a time (``_Inflater``), so a small
  gzip body that inflates to gigabytes is refused before it is held.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import inspect
import logging
import sys
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import httpcore
import httpx

from .. import __version__
from .config import (
    DEFAULT_COALESCE,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_LONG_POLLS,
    DEFAULT_REQUEST_TIMEOUT,
    check_base_url,
    seconds,
    without_userinfo,
)
from .errors import ConfigError, ProtocolError, TransportError
from .flows import Event, FlowContext, LongPollUnavailable, WaitOptions, log_event
from .http import Flow, Request, Response, Save, Sleep
from .hub import DEFAULT_PAUSE, Budget, Hub, HubOptions
from .inbox import Inbox
from .models import LaunchSpec, RunRef, RunStatus
from .planner import Execution, LaunchPolicy, LaunchRecord, Started
from .redact import Redactor
from .registry import available, create_provider
from .schedule import PollSchedule, RetryPolicy, parse_retry_after
from .states import DEFAULT_SUCCESS, RunState, parse_states
from .transport import AiohttpClient, AiohttpResponse, async_http_client

__all__ = ["AsyncRunClient", "RunClient"]

logger = logging.getLogger("runbridge")

T = TypeVar("T")
RefLike = RunRef | Mapping[str, Any] | str
Hook = Callable[[Event], None]
_AnyResponse = httpx.Response | AiohttpResponse  # httpx's, or the aiohttp driver's
SaveRecord = Callable[[LaunchRecord], Any]

_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


# -- the sync client's total deadline ------------------------------------------------------------
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "runbridge_request_deadline", default=None
)


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        kwargs["timeout"] = _clamp(kwargs.get("timeout"), httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Every socket operation of a sync request waits at most until the request's deadline
    (a context variable the driver sets around the request)."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        kwargs["timeout"] = _clamp(kwargs.get("timeout"), httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        kwargs["timeout"] = _clamp(kwargs.get("timeout"), httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _deadline_client() -> httpx.Client:
    """An ``httpx.Client`` as httpx makes it (environment proxies included), its connection
    pools reading against the request's deadline.

    Uses httpx's private ``Client._transport`` / ``_mounts`` and httpcore's private
    ``ConnectionPool._network_backend`` (httpx 0.28, httpcore 1.x); a test pins them
    (tests/core/test_deadlines.py). Where they are missing, the sync client still checks the
    deadline between body chunks, but a server trickling its headers could hold a request
    longer."""
    client = httpx.Client()
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return client


# -- the body cap holds for compressed answers ------------------------------------------------
_PIECE = 64 * 1024
ACCEPT_ENCODING = "gzip, deflate"
"""What the clients ask for: the codings ``_Inflater`` decodes a bounded piece at a time."""


class _Inflater:
    """Undoes a gzip or deflate ``Content-Encoding`` at most 64 KiB of output at a time (zlib's
    ``max_length``), so the size cap sees a small body that inflates to gigabytes (a "zip bomb")
    as it inflates, not after httpx inflated a whole read at once. Any other coding passes
    through as received (as httpx does with codings it does not know; the clients ask for gzip
    and deflate only), to fail as an unreadable answer."""

    def __init__(self, response: httpx.Response | AiohttpResponse) -> None:
        # a response a transport handed over already read is already decoded (by httpx)
        encoding = "" if response.is_stream_consumed else response.headers.get("content-encoding")
        codings = [c.strip().lower() for c in (encoding or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        coding = codings[0] if len(codings) == 1 else None
        self._zlib: Any = None
        self._raw_deflate_possible = coding == "deflate"
        if coding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self._zlib = zlib.decompressobj()

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            if data:
                yield data
            return
        while True:
            try:
                out = self._zlib.decompress(data, _PIECE)
            except zlib.error as exc:
                if self._raw_deflate_possible:  # "deflate" without the zlib wrapper, as httpx
                    self._raw_deflate_possible = False
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise httpx.DecodingError(f"the answer's {exc}") from None
            self._raw_deflate_possible = False
            if out:
                yield out
            data = self._zlib.unconsumed_tail
            if not data and len(out) < _PIECE:
                return


def _raw(response: httpx.Response) -> Iterator[bytes]:
    if response.is_stream_consumed:
        yield response.content
    else:
        yield from response.iter_raw()


async def _araw(response: httpx.Response | AiohttpResponse) -> AsyncIterator[bytes]:
    if isinstance(response, httpx.Response) and response.is_stream_consumed:
        yield response.content
    else:
        async for data in response.aiter_raw():
            yield data


def _carries(value: str, token: str) -> bool:
    """Whether a header value was made from the token (holds it raw or base64-encoded)."""
    if token in value:
        return True
    try:
        decoded = base64.b64decode(value.rpartition(" ")[2], validate=True)
    except ValueError:
        return False
    return token.encode() in decoded


class _BaseClient:
    """Configuration, provider lookup, request building, redaction. No I/O."""

    def __init__(
        self,
        platform: str,
        base_url: str,
        token: str | None = None,
        *,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        error_window: float = DEFAULT_ERROR_WINDOW,
        max_body: int = DEFAULT_MAX_BODY,
        headers: Mapping[str, str] | None = None,
        hooks: Iterable[Hook] = (),
        inbox: Inbox | None = None,
        **options: Any,
    ) -> None:
        self.base_url = check_base_url(base_url)
        if token is not None and not isinstance(token, str):
            raise ConfigError("token must be a string")
        self.provider = create_provider(platform, **options)
        self.platform = self.provider.name
        self.provider.base_url = without_userinfo(self.base_url)  # for run page links
        self._token = token or None
        self.request_timeout = seconds(request_timeout, "request_timeout", positive=True) or 0.0
        self.error_window = seconds(error_window, "error_window") or 0.0
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1024:
            raise ConfigError(f"max_body must be a number of bytes >= 1024, got {max_body!r}")
        self.max_body = max_body
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollSchedule()
        self.hooks: list[Hook] = [log_event, *hooks]
        self.inbox = inbox
        self._headers: dict[str, str] = {
            "user-agent": f"runbridge/{__version__}",
            "accept-encoding": ACCEPT_ENCODING,
        }
        auth = self.provider.auth_headers(self._token) if self._token else {}
        self._headers.update(auth)
        self._headers.update(headers or {})
        # the token and every header value made from it (Basic auth's base64 form...), not
        # the other values auth_headers gives (an organization id is no secret)
        token_values = [v for v in auth.values() if self._token and _carries(v, self._token)]
        self._redactor = Redactor([self._token, *token_values] if self._token else [])

    def __repr__(self) -> str:
        # never the token
        return f"<{type(self).__name__} {self.platform} {self.base_url}>"

    # -- shared pieces used by both drivers ------------------------------------------------
    def _flows(self, on_event: Hook | None = None) -> FlowContext:
        hooks = self.hooks if on_event is None else [*self.hooks, on_event]
        return FlowContext(
            self.provider,
            self.retry,
            clock=time.monotonic,
            hooks=hooks,
            request_timeout=self.request_timeout,
        )

    def _wait_options(
        self,
        wait_timeout: float | None,
        run_timeout: float | None,
        poll: PollSchedule | None,
        use_join: bool,
        error_window: float | None,
    ) -> WaitOptions:
        window = seconds(error_window, "error_window")
        return WaitOptions(
            wait_timeout=seconds(wait_timeout, "wait_timeout"),
            run_timeout=seconds(run_timeout, "run_timeout"),
            poll=poll or self.poll,
            use_join=use_join,
            error_window=self.error_window if window is None else window,
        )

    @staticmethod
    def _start_args(
        key: str,
        history: Sequence[Execution],
        relaunch_failed: bool,
        success: Iterable[RunState | str] | None,
    ) -> tuple[str, Sequence[Execution], LaunchPolicy]:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError("start() needs a non-empty key (the task's identity)")
        policy = LaunchPolicy(
            relaunch_failed=bool(relaunch_failed),
            success=parse_states(success) if success is not None else DEFAULT_SUCCESS,
        )
        return key, list(history), policy

    def ref(self, run_id: str, **scope: str) -> RunRef:
        """A reference to an existing run of this platform (the sensor case)."""
        return self.provider.make_ref(run_id, **scope)

    def _coerce(self, ref: RefLike) -> RunRef:
        if isinstance(ref, str):
            text = ref.strip()
            prefix, colon, _ = text.partition(":")
            # (this platform's prefix first: listing the entry points costs ~40 ms a call)
            known = colon and (prefix == self.platform or prefix in available())
            if not (text.startswith("{") or known):
                # the platform's own notation (a W&B run path, a run page URL, a bare id)
                return self.provider.make_ref(text)
        return self.provider.check_ref(RunRef.coerce(ref))

    def _httpx_args(self, request: Request) -> dict[str, Any]:
        total = request.timeout if request.timeout is not None else self.request_timeout
        timeout = httpx.Timeout(total, connect=min(total, 10.0))
        headers = dict(self._headers)
        if request.headers:
            headers.update(request.headers)
        args: dict[str, Any] = {
            "method": request.method,
            "url": self.base_url + request.path,
            "headers": headers,
            "timeout": timeout,
        }
        if request.params:
            args["params"] = {
                k: (str(v).lower() if isinstance(v, bool) else v) for k, v in request.params.items()
            }
        if request.json is not None:
            args["json"] = request.json
        elif request.content is not None:
            args["content"] = request.content
        return args

    def _check_size(self, request: Request, response: _AnyResponse, size: int) -> None:
        if size > self.max_body:
            raise ProtocolError(
                f"{self.platform}: the answer to {request.method} {request.path} is {size:,} "
                f"bytes or more, over the client's max_body of {self.max_body:,}",
                retryable=False,
            )

    def _declared_size(self, request: Request, response: _AnyResponse) -> None:
        declared = response.headers.get("content-length", "")
        if declared.isdigit():
            self._check_size(request, response, int(declared))

    def _response(self, request: Request, response: _AnyResponse, content: bytes) -> Response:
        """The answer as the flows see it: redacted, here and only here."""
        redactor = self._redactor
        headers = {k.lower(): v for k, v in response.headers.items()}
        if redactor:
            content = redactor.bytes(content)
            headers = {k: redactor.text(v) for k, v in headers.items()}
        return Response(response.status_code, headers, content, request, datetime.now(timezone.utc))

    def _transport_error(self, request: Request, exc: httpx.HTTPError) -> TransportError:
        sent = False if isinstance(exc, _NOT_SENT) else None
        text = self.redact(str(exc) or type(exc).__name__)
        return TransportError(
            f"{self.platform}: {request.method} {self.base_url}{request.path} failed: "
            f"{type(exc).__name__}: {text}",
            sent=sent,
            timeout=isinstance(exc, httpx.TimeoutException),
        )

    def redact(self, text: str) -> str:
        """``text`` with every form of this client's token replaced by ``***``; for wrappers
        that log or store text that did not come through the client."""
        return self._redactor.text(text) if self._redactor else text

    def _check(
        self, status: RunStatus, check: bool, success: Iterable[RunState | str] | None
    ) -> RunStatus:
        if check:
            status.raise_for_state(
                parse_states(success) if success is not None else DEFAULT_SUCCESS
            )
        return status


class RunClient(_BaseClient):
    """Launch, inspect, cancel and wait for runs on one platform, synchronously.

    ``RunClient("langgraph", "http://localhost:2024", token=...)``; pass ``client=`` to share
    an ``httpx.Client`` (its connection pool) with other code. Use as a context manager.
    """

    def __init__(
        self,
        platform: str,
        base_url: str,
        token: str | None = None,
        *,
        client: httpx.Client | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(platform, base_url, token, **kwargs)
        self._owns_http = client is None
        self._http = client if client is not None else _deadline_client()

    def __enter__(self) -> RunClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def _send(self, request: Request) -> Response:
        args = self._httpx_args(request)
        budget = request.timeout if request.timeout is not None else self.request_timeout
        end = time.monotonic() + budget
        token = _deadline.set(end)
        try:
            with self._http.stream(**args) as response:
                self._declared_size(request, response)
                inflater = _Inflater(response)
                chunks, size = [], 0
                for data in _raw(response):
                    for chunk in inflater.decode(data):
                        size += len(chunk)
                        self._check_size(request, response, size)
                        chunks.append(chunk)
                    if time.monotonic() > end:
                        raise httpx.ReadTimeout("the request ran out of time")
                return self._response(request, response, b"".join(chunks))
        finally:
            _deadline.reset(token)

    def _drive(self, flow: Flow[T], save: SaveRecord | None = None) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    if step.wake is not None and self.inbox is not None:
                        step = flow.send(self.inbox.sleep(step.wake, step.seconds))
                    else:
                        time.sleep(step.seconds)
                        step = flow.send(None)
                    continue
                if isinstance(step, Save):
                    if save is not None:
                        save(step.record)
                    step = flow.send(None)
                    continue
                try:
                    response = self._send(step)
                except httpx.HTTPError as exc:
                    error: Exception = self._transport_error(step, exc)
                except ProtocolError as exc:
                    error = exc
                else:
                    step = flow.send(response)
                    del response  # not kept alive while the wait sleeps
                    continue
                # thrown outside the except block: nothing the flow raises from here (a
                # WaitTimeout...) carries httpx's exception, which may quote the unredacted
                # answer, as its __context__ (a traceback prints it)
                step = flow.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    def launch(
        self,
        params: Mapping[str, Any],
        *,
        key: str | None = None,
        reuse: bool = True,
        on_event: Hook | None = None,
    ) -> RunRef:
        """Start a run. With ``key`` (an idempotency key), a platform that supports it returns
        the run already launched with that key (``reuse``) and retries safely."""
        return self._drive(self._flows(on_event).launch(LaunchSpec(params, key), reuse=reuse))

    def start(
        self,
        params: Mapping[str, Any],
        *,
        key: str,
        history: Sequence[Execution] = (),
        save: SaveRecord | None = None,
        relaunch_failed: bool = False,
        success: Iterable[RunState | str] | None = None,
        on_event: Hook | None = None,
    ) -> Started:
        """Re-attach to the run an earlier attempt of this task launched, or launch one: the
        wrappers' shared policy (core/planner.py). ``key`` is the task's identity, ``history``
        what its record store holds (newest execution first), ``save`` writes a record."""
        base, runs, policy = self._start_args(key, history, relaunch_failed, success)
        flow = self._flows(on_event).start(LaunchSpec(params).params, base, runs, policy)
        return self._drive(flow, save)

    def get(self, ref: RefLike, *, on_event: Hook | None = None) -> RunStatus:
        return self._drive(self._flows(on_event).get(self._coerce(ref)))

    def cancel(self, ref: RefLike, *, on_event: Hook | None = None) -> None:
        self._drive(self._flows(on_event).cancel(self._coerce(ref)))

    def list(self, *, limit: int | None = 100, **filters: Any) -> list[RunStatus]:
        """Runs on the platform (where its API lists them), at most ``limit``."""
        return self._drive(self._flows().list(limit, **filters))

    def wait(
        self,
        ref: RefLike,
        wait_timeout: float | None = None,
        *,
        run_timeout: float | None = None,
        poll: PollSchedule | None = None,
        use_join: bool = True,
        error_window: float | None = None,
        check: bool = False,
        success: Iterable[RunState | str] | None = None,
        on_event: Hook | None = None,
    ) -> RunStatus:
        """Wait for the run to end and return its terminal status.

        Raises WaitTimeout once ``wait_timeout`` seconds have passed (the run keeps going);
        cancels the run once it is ``run_timeout`` old (``status.cancelled_by_runbridge``). A
        failed run is returned, not raised, unless ``check=True``.
        """
        options = self._wait_options(wait_timeout, run_timeout, poll, use_join, error_window)
        status = self._drive(self._flows(on_event).wait(self._coerce(ref), options))
        return self._check(status, check, success)

    def launch_and_wait(
        self, params: Mapping[str, Any], *, key: str | None = None, **wait_kwargs: Any
    ) -> RunStatus:
        on_event = wait_kwargs.get("on_event")
        return self.wait(self.launch(params, key=key, on_event=on_event), **wait_kwargs)


class AsyncRunClient(_BaseClient):
    """The asynchronous twin of :class:`RunClient`, for triggers, Prefect and event loops.

    Every wait on one client shares its connection pool. Requests in flight are capped at
    ``max_in_flight`` (below the pool size, so no request queues inside httpx's pool) and
    blocking calls (joins) at ``max_long_polls``; beyond that bound a wait polls instead.

    Every wait on one client goes through the client's hub (:mod:`runbridge.core.hub`; one per
    event loop): checks that fall due together are sent as one batch request where the
    provider has one (``Provider.status_many``). ``max_rps`` caps the requests per second of
    the whole client (every wait, launch and cancel; None: no cap); a 429 pauses every check of
    the client until its Retry-After. ``coalesce``: how many seconds early a sleeping wait may
    be checked to share a batch that is going anyway.
    """

    def __init__(
        self,
        platform: str,
        base_url: str,
        token: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        max_in_flight: int = 50,
        max_long_polls: int = DEFAULT_MAX_LONG_POLLS,
        max_rps: float | None = None,
        coalesce: float = DEFAULT_COALESCE,
        **kwargs: Any,
    ) -> None:
        super().__init__(platform, base_url, token, **kwargs)
        if max_in_flight < 1 or max_long_polls < 0:
            raise ConfigError("max_in_flight must be >= 1 and max_long_polls >= 0")
        self.hub_options = HubOptions(max_rps=max_rps, coalesce=coalesce)
        self.budget = Budget(max_rps, self.hub_options.burst)
        self._budget_waiting = False
        self._hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = (
            weakref.WeakKeyDictionary()
        )
        self._owns_http = client is None
        pool = max_in_flight + max_long_polls
        # the transport chosen by measurement (core/transport.py); idle connections are kept
        # longer than a poll interval, so a waiting run's connection is reused, not closed and
        # reopened (a TLS handshake) between checks
        self._http: httpx.AsyncClient | AiohttpClient = (
            client
            if client is not None
            else async_http_client(pool, keepalive=max(60.0, 2 * self.poll.cap))
        )
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._max_long_polls = max_long_polls
        self._long_polls = 0

    async def __aenter__(self) -> AsyncRunClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _exchange(self, request: Request) -> Response:
        async with self._http.stream(**self._httpx_args(request)) as response:
            self._declared_size(request, response)
            inflater = _Inflater(response)
            chunks, size = [], 0
            async for data in _araw(response):
                for chunk in inflater.decode(data):
                    size += len(chunk)
                    self._check_size(request, response, size)
                    chunks.append(chunk)
            return self._response(request, response, b"".join(chunks))

    # -- the hub and the request budget ------------------------------------------------------
    def hub(self) -> Hub:
        """The hub of the running event loop (made on first use)."""
        loop = asyncio.get_running_loop()
        hub = self._hubs.get(loop)
        if hub is None:
            hub = self._hubs[loop] = Hub(self, time.monotonic)
        return hub

    def long_poll_free(self) -> bool:
        """Whether another blocking call (join) may be opened now."""
        return self._long_polls < self._max_long_polls

    def throttled(self, now: float, seconds: float) -> None:
        """The platform asked to slow down (a 429): pause every check of this client's hub."""
        # capped as the retry policy caps a Retry-After (and by the hub's own max_pause)
        limit = min(self.hub_options.max_pause, self.retry.max_retry_after)
        seconds = min(max(0.0, seconds), limit) if seconds == seconds else DEFAULT_PAUSE
        if self.budget.pause(now, seconds):
            logger.warning(
                "%s: rate limited (HTTP 429); pausing every check of this client for %.1fs",
                self.platform,
                seconds,
            )

    async def _take_budget(self) -> None:
        delay = self.budget.take(time.monotonic())
        if delay <= 0:
            self._budget_waiting = False
            return
        if not self._budget_waiting:
            self._budget_waiting = True
            logger.info(
                "%s: throttling: over the client's budget of %g requests/s; requests wait "
                "their turn (%.1fs now)",
                self.platform,
                self.budget.rate or 0.0,
                delay,
            )
        await asyncio.sleep(delay)

    def _note_answer(self, response: Response) -> None:
        if response.status_code == 429:
            retry_after = parse_retry_after(
                response.headers.get("retry-after"), response.received_at
            )
            self.throttled(time.monotonic(), retry_after if retry_after else DEFAULT_PAUSE)

    async def _send(self, request: Request) -> Response:
        """Queue for the request budget's turn and an in-flight slot (a blocking call: a
        long-poll place instead), then exchange. Each phase is bounded by the request's
        ``timeout``, the two together by its ``limit`` (the operation's deadline): a request
        that waited for its turn still gets its whole time for the exchange (cutting it off
        closes its connection: under overload that turned a backlog into a collapse, each
        late check a new TLS handshake), and a wait still ends by its deadline."""
        budget = request.timeout if request.timeout is not None else self.request_timeout
        queued_at = time.monotonic()
        if request.long_poll:
            if self._long_polls >= self._max_long_polls:
                raise LongPollUnavailable("too many blocking calls open")
            self._long_polls += 1
            try:
                await self._queue(budget, slot=False)
                response = await self._exchange_within(request, budget, queued_at)
            finally:
                self._long_polls -= 1
        else:
            await self._queue(budget, slot=True)
            try:
                response = await self._exchange_within(request, budget, queued_at)
            finally:
                self._in_flight.release()
        self._note_answer(response)
        return response

    async def _queue(self, budget: float, *, slot: bool) -> None:
        """The request budget's turn, then (``slot``) an in-flight slot, at most ``budget``
        seconds in all; past it the request was never sent (safe to send again, even a POST):
        ``httpx.PoolTimeout``."""
        try:
            async with _time_limit(budget):
                await self._take_budget()
                if slot:
                    await self._in_flight.acquire()
        except httpx.ReadTimeout:
            raise httpx.PoolTimeout("no turn to send the request came in time") from None

    async def _exchange_within(self, request: Request, budget: float, queued_at: float) -> Response:
        """The exchange, given ``budget`` seconds of its own, never past the request's limit."""
        if request.limit is not None:
            budget = min(budget, request.limit - (time.monotonic() - queued_at))
            if budget <= 0:  # the queue took what the operation had left: never sent
                raise httpx.PoolTimeout("the deadline passed while the request waited its turn")
        async with _time_limit(budget):
            return await self._exchange(request)

    async def _drive(self, flow: Flow[T], save: SaveRecord | None = None) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, Sleep):
                    if step.wake is not None and self.inbox is not None:
                        step = flow.send(await self.inbox.sleep_async(step.wake, step.seconds))
                    else:
                        await asyncio.sleep(step.seconds)
                        step = flow.send(None)
                    continue
                if isinstance(step, Save):
                    if save is not None:
                        saved = save(step.record)
                        if inspect.isawaitable(saved):
                            await saved
                    step = flow.send(None)
                    continue
                try:
                    response = await self._send(step)
                except httpx.HTTPError as exc:
                    error: Exception = self._transport_error(step, exc)
                except (LongPollUnavailable, ProtocolError) as exc:
                    error = exc
                else:
                    step = flow.send(response)
                    del response  # not kept alive while the wait sleeps
                    continue
                step = flow.throw(error)  # outside the except block, as in RunClient._drive
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            flow.close()

    async def launch(
        self,
        params: Mapping[str, Any],
        *,
        key: str | None = None,
        reuse: bool = True,
        on_event: Hook | None = None,
    ) -> RunRef:
        return await self._drive(self._flows(on_event).launch(LaunchSpec(params, key), reuse=reuse))

    async def start(
        self,
        params: Mapping[str, Any],
        *,
        key: str,
        history: Sequence[Execution] = (),
        save: SaveRecord | None = None,
        relaunch_failed: bool = False,
        success: Iterable[RunState | str] | None = None,
        on_event: Hook | None = None,
    ) -> Started:
        base, runs, policy = self._start_args(key, history, relaunch_failed, success)
        flow = self._flows(on_event).start(LaunchSpec(params).params, base, runs, policy)
        return await self._drive(flow, save)

    async def get(self, ref: RefLike, *, on_event: Hook | None = None) -> RunStatus:
        return await self._drive(self._flows(on_event).get(self._coerce(ref)))

    async def cancel(self, ref: RefLike, *, on_event: Hook | None = None) -> None:
        await self._drive(self._flows(on_event).cancel(self._coerce(ref)))

    async def list(self, *, limit: int | None = 100, **filters: Any) -> list[RunStatus]:
        return await self._drive(self._flows().list(limit, **filters))

    async def wait(
        self,
        ref: RefLike,
        wait_timeout: float | None = None,
        *,
        run_timeout: float | None = None,
        poll: PollSchedule | None = None,
        use_join: bool = True,
        error_window: float | None = None,
        check: bool = False,
        success: Iterable[RunState | str] | None = None,
        on_event: Hook | None = None,
    ) -> RunStatus:
        options = self._wait_options(wait_timeout, run_timeout, poll, use_join, error_window)
        flows = self._flows(on_event)
        state = flows.wait_state(self._coerce(ref), options)
        status = await self.hub().wait(flows, state)
        return self._check(status, check, success)

    async def launch_and_wait(
        self, params: Mapping[str, Any], *, key: str | None = None, **wait_kwargs: Any
    ) -> RunStatus:
        on_event = wait_kwargs.get("on_event")
        ref = await self.launch(params, key=key, on_event=on_event)
        return await self.wait(ref, **wait_kwargs)


@contextlib.asynccontextmanager
async def _time_limit(seconds: float) -> AsyncIterator[None]:
    """Bound a whole request (connect, headers, every byte of the body): a timeout is an
    ``httpx.ReadTimeout``, as if the server had gone quiet."""
    if sys.version_info >= (3, 11):
        try:
            async with asyncio.timeout(seconds):
                yield
        except TimeoutError:
            raise httpx.ReadTimeout("the request ran out of time") from None
    else:  # pragma: no cover - Python 3.10
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        handle = loop.call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if expired:
                raise httpx.ReadTimeout("the request ran out of time") from None
            raise
        finally:
            handle.cancel()
