"""Drive sans-IO flows without a network, on a fake clock.

``FlowDriver`` steps a flow (a generator of ``Request`` / ``Sleep``), answering each request
from a scripted list of answers, in order, and advancing a ``FakeClock`` on each ``Sleep``::

    clock = FakeClock()
    ctx = FlowContext(provider, RetryPolicy(), clock=clock, wall=clock.wall, rand=lambda: 0.5)
    driver = FlowDriver(clock, [reply(503), reply(200, {"run": {...}})])
    status = driver.run(ctx.get(ref))
    assert driver.sleeps == [0.5]

An answer is a ``Response`` (sent back), an exception (thrown in at the ``yield``), a callable
``(request, clock) -> answer`` (to look at the request or let time pass during it), or
``took(seconds, answer)``. ``ClientUnderTest`` puts the sync and async clients behind one
awaitable face so one test body covers both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from runbridge.core import AsyncRunClient, RunClient
from runbridge.core.http import Request, Response, Save, Sleep

Answer = Any  # Response | BaseException | Callable[[Request, FakeClock], Answer]


class FakeClock:
    """A monotonic clock (call it) and a matching wall clock (``wall()``) that move together."""

    def __init__(
        self,
        start: float = 1000.0,
        wall_start: datetime = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc),
    ) -> None:
        self.now = start
        self._start = start
        self._wall_start = wall_start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self._wall_start + timedelta(seconds=self.now - self._start)

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, f"time cannot go backwards ({seconds})"
        self.now += seconds


def reply(
    status: int = 200,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Response:
    """A canned response: ``body`` is encoded as JSON, ``text`` sent as is."""
    content = (
        text.encode() if text is not None else b"" if body is None else json.dumps(body).encode()
    )
    return Response(status, {k.lower(): v for k, v in (headers or {}).items()}, content)


def took(seconds: float, answer: Answer) -> Callable[[Request, FakeClock], Answer]:
    """An answer that arrives ``seconds`` after the request was sent."""

    def answer_later(request: Request, clock: FakeClock) -> Answer:
        clock.advance(seconds)
        return answer

    return answer_later


@dataclasses.dataclass
class Step:
    kind: str  # "request", "sleep" or "save"
    at: float  # fake clock when the step was yielded
    request: Request | None = None
    sleep: Sleep | None = None
    save: Save | None = None


class FlowDriver:
    """Steps one flow; records every request and sleep. Refuses to run forever."""

    def __init__(self, clock: FakeClock, answers: Iterable[Answer] = (), *, max_steps: int = 500):
        self.clock = clock
        self.answers: list[Answer] = list(answers)
        self.steps: list[Step] = []
        self.max_steps = max_steps

    @property
    def requests(self) -> list[Request]:
        return [s.request for s in self.steps if s.request is not None]

    @property
    def sleeps(self) -> list[float]:
        return [s.sleep.seconds for s in self.steps if s.sleep is not None]

    @property
    def saved(self) -> list[Any]:
        """The records the flow asked to save (``Save`` steps), in order."""
        return [s.save.record for s in self.steps if s.save is not None]

    @property
    def calls(self) -> list[str]:
        """``"GET /path"`` for each request, ``"sleep 1.5"`` for each sleep, ``"save launched"``
        for each record saved, in order."""
        out = []
        for s in self.steps:
            if s.request:
                out.append(f"{s.request.method} {s.request.path}")
            elif s.sleep:
                out.append(f"sleep {s.sleep.seconds:g}")
            elif s.save:
                out.append(f"save {s.save.record.action}")
        return out

    def _answer(self, request: Request) -> Answer:
        if not self.answers:
            raise AssertionError(
                f"the flow sent {request.method} {request.path} but no answer is scripted; "
                f"so far: {self.calls}"
            )
        answer = self.answers.pop(0)
        while callable(answer) and not isinstance(answer, BaseException):
            answer = answer(request, self.clock)
        return answer

    def run(self, flow: Generator[Any, Any, Any], *, check_all_used: bool = True) -> Any:
        try:
            step = next(flow)
            while True:
                if len(self.steps) >= self.max_steps:
                    raise AssertionError(
                        f"the flow did not finish in {self.max_steps} steps; last: {self.calls[-6:]}"
                    )
                if isinstance(step, Sleep):
                    self.steps.append(Step("sleep", self.clock(), sleep=step))
                    self.clock.advance(step.seconds)
                    step = flow.send(None)
                    continue
                if isinstance(step, Save):
                    self.steps.append(Step("save", self.clock(), save=step))
                    step = flow.send(None)
                    continue
                assert isinstance(step, Request), f"a flow yielded {step!r}"
                self.steps.append(Step("request", self.clock(), request=step))
                answer = self._answer(step)
                if isinstance(answer, BaseException):
                    step = flow.throw(answer)
                else:
                    assert isinstance(answer, Response), f"bad scripted answer {answer!r}"
                    step = flow.send(dataclasses.replace(answer, request=step))
        except StopIteration as stop:
            if check_all_used:
                assert not self.answers, f"scripted answers left unused: {self.answers}"
            return stop.value
        finally:
            flow.close()


def exchange_requests(
    exchange: Generator[Any, Any, Any], answers: Iterable[Answer]
) -> tuple[list[Request], Any]:
    """Step a provider exchange (no retries, no clock); returns (requests, result)."""
    driver = FlowDriver(FakeClock(), answers)
    result = driver.run(exchange)
    return driver.requests, result


# -- both clients behind one face -----------------------------------------------------------
class ClientUnderTest:
    """``await c.launch(...)`` whether ``c`` wraps a RunClient or an AsyncRunClient."""

    def __init__(
        self,
        client: RunClient | AsyncRunClient,
        http: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        self.client = client
        self.http = http
        """The httpx client the test made for it (the RunClient does not close it)."""
        self.is_async = isinstance(client, AsyncRunClient)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        return await result if self.is_async else result

    async def launch(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("launch", *args, **kwargs)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("get", *args, **kwargs)

    async def cancel(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("cancel", *args, **kwargs)

    async def wait(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("wait", *args, **kwargs)

    async def launch_and_wait(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call("launch_and_wait", *args, **kwargs)

    def ref(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.ref(*args, **kwargs)

    async def close(self) -> None:
        if self.is_async:
            await self.client.aclose()  # type: ignore[union-attr]
            if self.http is not None:
                await self.http.aclose()  # type: ignore[union-attr]
        else:
            self.client.close()  # type: ignore[union-attr]
            if self.http is not None:
                self.http.close()  # type: ignore[union-attr]


def make_client(
    kind: str,
    platform: str,
    base_url: str,
    token: str | None = None,
    *,
    transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    **kwargs: Any,
) -> ClientUnderTest:
    """A RunClient (``kind="sync"``) or AsyncRunClient (``"async"``); over ``transport`` if given."""
    if kind == "sync":
        http = httpx.Client(transport=transport) if transport is not None else None  # type: ignore[arg-type]
        return ClientUnderTest(RunClient(platform, base_url, token, client=http, **kwargs), http)
    assert kind == "async", kind
    ahttp = httpx.AsyncClient(transport=transport) if transport is not None else None  # type: ignore[arg-type]
    return ClientUnderTest(AsyncRunClient(platform, base_url, token, client=ahttp, **kwargs), ahttp)


@contextlib.asynccontextmanager
async def rest_clients(
    kind: str, token: str | None = None
) -> AsyncIterator[Callable[..., ClientUnderTest]]:
    """``make(server, **options)``: a ``rest`` client of ``kind`` against ``server.url`` (the
    example API of ``runbridge.testing.rest``), with the client's own defaults unless
    ``options`` say otherwise; every client made is closed on exit."""
    from runbridge.testing.rest import REST_CONFIG

    made: list[ClientUnderTest] = []

    def make(server: Any, **options: Any) -> ClientUnderTest:
        made.append(make_client(kind, "rest", server.url, token, **{**REST_CONFIG, **options}))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            await client.close()
