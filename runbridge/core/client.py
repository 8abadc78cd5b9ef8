"""RunClient and AsyncRunClient: the only code that performs I/O.

Everything a client *decides* (retries, the launch safety net, the wait loop) is in the
sans-IO flows of :mod:`runbridge.core.flows`; ``_BaseClient`` owns configuration, request
building, error translation and redaction. The two clients add only "send one request" and
"sleep", and their ``_drive`` loops are kept line-for-line parallel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar

import httpx

from .. import __version__
from .errors import ConfigError, RunbridgeError, TransportError
from .flows import Event, FlowContext, LongPollUnavailable, WaitOptions
from .http import Flow, Request, Response, Sleep
from .inbox import Inbox
from .models import LaunchSpec, RunRef, RunStatus
from .registry import available, create_provider
from .schedule import PollSchedule, RetryPolicy
from .states import DEFAULT_SUCCESS, RunState, parse_states

__all__ = ["AsyncRunClient", "RunClient"]

T = TypeVar("T")
RefLike = RunRef | Mapping[str, Any] | str
Seconds = float | timedelta


def _secs(value: Seconds | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return float(value)


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class _BaseClient:
    """Configuration, provider lookup, request building, redaction. No I/O."""

    def __init__(
        self,
        platform: str,
        base_url: str,
        token: str | None = None,
        *,
        timeout: Seconds = 30.0,
        retry: RetryPolicy | None = None,
        poll: PollSchedule | None = None,
        headers: Mapping[str, str] | None = None,
        hooks: Iterable[Callable[[Event], None]] = (),
        inbox: Inbox | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if token is not None and not isinstance(token, str):
            raise ConfigError("token must be a string")
        self.provider = create_provider(platform, **options)
        self.platform = self.provider.name
        self.base_url = base_url.rstrip("/")
        self.provider.base_url = self.base_url
        self._token = token or None
        self.timeout = _secs(timeout, "timeout") or 0.0
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollSchedule()
        self.hooks = list(hooks)
        self.inbox = inbox
        self._headers: dict[str, str] = {"user-agent": f"runbridge/{__version__}"}
        self._secrets: list[str] = []
        if self._token:
            auth = self.provider.auth_headers(self._token)
            self._headers.update(auth)
            # the token, and what is derived from it (e.g. Basic auth's base64 form)
            for value in (self._token, *auth.values()):
                self._secrets += [value, value.rpartition(" ")[2]]
            self._secrets = sorted({v for v in self._secrets if len(v) >= 4}, key=len, reverse=True)
        self._headers.update(headers or {})

    def __repr__(self) -> str:
        # never the token
        return f"<{type(self).__name__} {self.platform} {self.base_url}>"

    # -- shared pieces used by both drivers ------------------------------------------------
    def _flows(self) -> FlowContext:
        return FlowContext(self.provider, self.retry, clock=time.monotonic, hooks=self.hooks)

    def _wait_options(
        self,
        timeout: Seconds | None,
        run_timeout: Seconds | None,
        poll: PollSchedule | None,
        use_join: bool,
        error_window: Seconds | None,
    ) -> WaitOptions:
        options = WaitOptions(
            timeout=_secs(timeout, "timeout"),
            run_timeout=_secs(run_timeout, "run_timeout"),
            poll=poll or self.poll,
            use_join=use_join,
        )
        window = _secs(error_window, "error_window")
        return options if window is None else dataclasses.replace(options, error_window=window)

    def ref(self, run_id: str, **scope: str) -> RunRef:
        """A reference to an existing run of this platform (the sensor case)."""
        return self.provider.make_ref(run_id, **scope)

    def _coerce(self, ref: RefLike) -> RunRef:
        if isinstance(ref, str):
            text = ref.strip()
            prefix, colon, _ = text.partition(":")
            if not (text.startswith("{") or (colon and prefix in (self.platform, *available()))):
                # the platform's own notation (a W&B run path, a run page URL, a bare id)
                return self.provider.make_ref(text)
        return self.provider.check_ref(RunRef.coerce(ref))

    def _httpx_args(self, request: Request) -> dict[str, Any]:
        timeout = httpx.Timeout(
            self.timeout if request.timeout is None else request.timeout,
            connect=min(self.timeout, 10.0),
        )
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

    @staticmethod
    def _response(
        request: Request, response: httpx.Response, content: bytes | None = None
    ) -> Response:
        return Response(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            response.content if content is None else content,
            request,
        )

    def _transport_error(self, request: Request, exc: httpx.HTTPError) -> TransportError:
        sent = False if isinstance(exc, _NOT_SENT) else None
        text = self._redact(str(exc) or type(exc).__name__)
        return TransportError(
            f"{self.platform}: {request.method} {self.base_url}{request.path} failed: "
            f"{type(exc).__name__}: {text}",
            sent=sent,
            timeout=isinstance(exc, httpx.TimeoutException),
        )

    def redact(self, text: str) -> str:
        """``text`` with this client's token (and values derived from it) replaced by ``***``;
        for wrappers that log or store what a platform said."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    _redact = redact

    def _scrub(self, exc: BaseException) -> BaseException:
        """Remove the token from an error and the errors it wraps, on their way out
        (a platform may echo a token in an error body)."""
        seen: set[int] = set()
        todo: list[BaseException | None] = [exc]
        while todo:
            err = todo.pop()
            if err is None or id(err) in seen:
                continue
            seen.add(id(err))
            if isinstance(err, RunbridgeError):
                err.message = self._redact(err.message)
                body = getattr(err, "body", None)
                if isinstance(body, str):
                    err.body = self._redact(body)  # type: ignore[attr-defined]
            err.args = tuple(self._redact(a) if isinstance(a, str) else a for a in err.args)
            todo += [err.__cause__, err.__context__, getattr(err, "cause", None)]
        return exc

    def _check(
        self, status: RunStatus, check: bool, success: Iterable[RunState | str] | None
    ) -> RunStatus:
        if check:
            try:
                status.raise_for_state(
                    parse_states(success) if success is not None else DEFAULT_SUCCESS
                )
            except RunbridgeError as exc:
                self._scrub(exc)
                raise
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
        self._http = client if client is not None else httpx.Client()

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
        if not (request.long_poll and request.timeout is not None):
            return self._response(request, self._http.request(**args))
        # A long poll may be kept alive by heartbeats forever: enforce its total time here.
        end = time.monotonic() + request.timeout
        with self._http.stream(**args) as response:
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise httpx.ReadTimeout("long poll ran out of time", request=response.request)
            return self._response(request, response, b"".join(chunks))

    def _drive(self, flow: Flow[T]) -> T:
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
                try:
                    response = self._send(step)
                except httpx.HTTPError as exc:
                    step = flow.throw(self._transport_error(step, exc))
                else:
                    step = flow.send(response)
                    del response  # not kept alive while the wait sleeps
        except StopIteration as stop:
            result: T = stop.value
            return result
        except RunbridgeError as exc:
            self._scrub(exc)
            raise
        finally:
            flow.close()

    def launch(
        self, params: Mapping[str, Any], *, key: str | None = None, reuse: bool = True
    ) -> RunRef:
        """Start a run. With ``key`` (an idempotency key), a platform that supports it returns
        the run already launched with that key (``reuse``) and retries safely."""
        return self._drive(self._flows().launch(LaunchSpec(params, key), reuse=reuse))

    def get(self, ref: RefLike) -> RunStatus:
        return self._drive(self._flows().get(self._coerce(ref)))

    def cancel(self, ref: RefLike) -> None:
        self._drive(self._flows().cancel(self._coerce(ref)))

    def list(self, *, limit: int | None = 100, **filters: Any) -> list[RunStatus]:
        """Runs on the platform (where its API lists them), at most ``limit``."""
        return self._drive(self._flows().list(limit, **filters))

    def wait(
        self,
        ref: RefLike,
        timeout: Seconds | None = None,
        *,
        run_timeout: Seconds | None = None,
        poll: PollSchedule | None = None,
        use_join: bool = True,
        error_window: Seconds | None = None,
        check: bool = False,
        success: Iterable[RunState | str] | None = None,
    ) -> RunStatus:
        """Wait for the run to end and return its terminal status.

        Raises WaitTimeout after ``timeout`` seconds (the run keeps going); cancels the run once
        it is ``run_timeout`` old. A failed run is returned, not raised, unless ``check=True``.
        """
        options = self._wait_options(timeout, run_timeout, poll, use_join, error_window)
        status = self._drive(self._flows().wait(self._coerce(ref), options))
        return self._check(status, check, success)

    def launch_and_wait(
        self, params: Mapping[str, Any], *, key: str | None = None, **wait_kwargs: Any
    ) -> RunStatus:
        return self.wait(self.launch(params, key=key), **wait_kwargs)


class AsyncRunClient(_BaseClient):
    """The asynchronous twin of :class:`RunClient`, for triggers, Prefect and event loops.

    Every wait on one client shares its connection pool. Requests in flight are capped at
    ``max_in_flight`` (below the pool size, so no request queues inside httpx's pool) and
    blocking calls (joins) at ``max_long_polls``; beyond that bound a wait polls instead.
    """

    def __init__(
        self,
        platform: str,
        base_url: str,
        token: str | None = None,
        *,
        client: httpx.AsyncClient | None = None,
        max_in_flight: int = 50,
        max_long_polls: int = 50,
        **kwargs: Any,
    ) -> None:
        super().__init__(platform, base_url, token, **kwargs)
        if max_in_flight < 1 or max_long_polls < 0:
            raise ConfigError("max_in_flight must be >= 1 and max_long_polls >= 0")
        self._owns_http = client is None
        pool = max_in_flight + max_long_polls
        self._http = (
            client
            if client is not None
            else httpx.AsyncClient(
                limits=httpx.Limits(
                    max_connections=pool,
                    max_keepalive_connections=pool,
                    # longer than a poll interval, so a waiting run's connection is reused,
                    # not closed and reopened (a TLS handshake) between checks
                    keepalive_expiry=max(60.0, 2 * self.poll.cap),
                )
            )
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

    async def _send(self, request: Request) -> Response:
        if request.long_poll:
            if self._long_polls >= self._max_long_polls:
                raise LongPollUnavailable("too many blocking calls open")
            self._long_polls += 1
            try:
                # heartbeats may keep a long poll alive forever: bound its total time
                response = await asyncio.wait_for(
                    self._http.request(**self._httpx_args(request)), request.timeout
                )
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout("long poll ran out of time") from None
            finally:
                self._long_polls -= 1
        else:
            async with self._in_flight:
                response = await self._http.request(**self._httpx_args(request))
        return self._response(request, response)

    async def _drive(self, flow: Flow[T]) -> T:
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
                try:
                    response = await self._send(step)
                except httpx.HTTPError as exc:
                    step = flow.throw(self._transport_error(step, exc))
                except LongPollUnavailable as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(response)
                    del response  # not kept alive while the wait sleeps
        except StopIteration as stop:
            result: T = stop.value
            return result
        except RunbridgeError as exc:
            self._scrub(exc)
            raise
        finally:
            flow.close()

    async def launch(
        self, params: Mapping[str, Any], *, key: str | None = None, reuse: bool = True
    ) -> RunRef:
        return await self._drive(self._flows().launch(LaunchSpec(params, key), reuse=reuse))

    async def get(self, ref: RefLike) -> RunStatus:
        return await self._drive(self._flows().get(self._coerce(ref)))

    async def cancel(self, ref: RefLike) -> None:
        await self._drive(self._flows().cancel(self._coerce(ref)))

    async def list(self, *, limit: int | None = 100, **filters: Any) -> list[RunStatus]:
        return await self._drive(self._flows().list(limit, **filters))

    async def wait(
        self,
        ref: RefLike,
        timeout: Seconds | None = None,
        *,
        run_timeout: Seconds | None = None,
        poll: PollSchedule | None = None,
        use_join: bool = True,
        error_window: Seconds | None = None,
        check: bool = False,
        success: Iterable[RunState | str] | None = None,
    ) -> RunStatus:
        options = self._wait_options(timeout, run_timeout, poll, use_join, error_window)
        status = await self._drive(self._flows().wait(self._coerce(ref), options))
        return self._check(status, check, success)

    async def launch_and_wait(
        self, params: Mapping[str, Any], *, key: str | None = None, **wait_kwargs: Any
    ) -> RunStatus:
        return await self.wait(await self.launch(params, key=key), **wait_kwargs)
