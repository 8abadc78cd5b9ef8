"""RunClient and AsyncRunClient over ``httpx.MockTransport``: one suite runs against both."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import runbridge
from runbridge.core import (
    AsyncRunClient,
    AuthError,
    ConfigError,
    LaunchUncertain,
    PlatformUnavailable,
    PollSchedule,
    Provider,
    RetryPolicy,
    RunClient,
    RunFailed,
    RunNotFound,
    RunRef,
    RunState,
    RunStatus,
    TransportError,
    registry,
)
from runbridge.core.http import Exchange, Request
from runbridge.testing.rest import REST_CONFIG

from .helpers import ClientUnderTest, make_client

TOKEN = "s3cret-Token-0123456789"
BASE = "https://jobs.example.com"
FAST = {
    "retry": RetryPolicy(attempts=3, first=0.0, cap=0.0, jitter=0.0),
    "poll": PollSchedule.fixed(0.0),
}

Handler = Callable[[httpx.Request], httpx.Response]


def run_json(status: str, run_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    return {"run": {"id": run_id, "status": status, **extra}}


class Api:
    """A MockTransport handler answering from a script, in order, recording each request.

    Each scripted answer is an ``httpx.Response``, an exception to raise, or a callable
    ``(request) -> Response``.
    """

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unscripted request {request.method} {request.url}")
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def calls(self) -> list[str]:
        return [f"{r.method} {r.url.raw_path.decode()}" for r in self.requests]


def ok(body: Any, status: int = 200, **kw: Any) -> httpx.Response:
    return httpx.Response(status, json=body, **kw)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def connect(kind: str):
    """``connect(api, **kwargs)``: a client of ``kind`` for the rest platform over ``api``."""
    made: list[ClientUnderTest] = []

    def connect(api: Api, token: str | None = TOKEN, **kwargs: Any) -> ClientUnderTest:
        options = {**REST_CONFIG, **FAST, **kwargs}
        made.append(make_client(kind, "rest", BASE, token, transport=api.transport, **options))
        return made[-1]

    yield connect
    for client in made:
        await client.close()


# -- what goes on the wire ---------------------------------------------------------------------
@pytest.mark.anyio
async def test_launch_sends_auth_user_agent_and_body(connect) -> None:
    api = Api(ok(run_json("queued", "r-7"), 201))
    client = connect(api, headers={"X-Team": "data"})
    ref = await client.launch({"job": "etl", "size": 2}, key="dag.task.1")
    assert ref == RunRef("rest", "r-7")
    (request,) = api.requests
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/api/v1/jobs/etl/runs"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["user-agent"] == f"runbridge/{runbridge.__version__}"
    assert request.headers["x-team"] == "data"
    assert request.headers["idempotency-key"] == "dag.task.1"
    assert json.loads(request.content) == {"size": 2}


@pytest.mark.anyio
async def test_without_a_token_no_auth_header_is_sent(connect) -> None:
    api = Api(ok(run_json("running")))
    await connect(api, token=None).get("rest:r-1")
    assert "authorization" not in api.requests[0].headers


@pytest.mark.anyio
async def test_trailing_slash_in_base_url_and_quoting(kind: str) -> None:
    api = Api(ok(run_json("running", "a/b")))
    client = make_client(kind, "rest", BASE + "/", TOKEN, transport=api.transport, **REST_CONFIG)
    status = await client.get(RunRef("rest", "a/b"))
    assert api.calls() == ["GET /api/v1/runs/a%2Fb"]
    assert status.ref == RunRef("rest", "a/b")


@pytest.mark.anyio
async def test_get_accepts_every_ref_form(connect) -> None:
    api = Api(*[ok(run_json("running")) for _ in range(4)])
    client = connect(api)
    for ref in [
        "rest:r-1",
        {"platform": "rest", "id": "r-1"},
        RunRef("rest", "r-1"),
        client.ref("r-1"),
    ]:
        assert (await client.get(ref)).state is RunState.RUNNING
    assert api.calls() == ["GET /api/v1/runs/r-1"] * 4


@pytest.mark.anyio
async def test_a_ref_of_another_platform_is_refused_before_any_request(connect) -> None:
    api = Api()
    with pytest.raises(ConfigError, match="is for platform 'langgraph', not 'rest'"):
        await connect(api).get("langgraph:r-1?thread_id=t")
    assert api.requests == []


def test_ref_helper_checks_the_scope() -> None:
    config = {
        **REST_CONFIG,
        "status": {**REST_CONFIG["status"], "path": "/api/v1/jobs/{job}/runs/{run_id}"},
        "launch": {**REST_CONFIG["launch"], "scope": ["job"]},
    }
    client = RunClient("rest", BASE, **config)
    assert client.ref("r-1", job="etl") == RunRef("rest", "r-1", {"job": "etl"})
    with pytest.raises(ConfigError, match="needs job in its scope"):
        client.ref("r-1")
    client.close()


# -- retries, errors ----------------------------------------------------------------------------
@pytest.mark.anyio
async def test_status_is_retried_after_503_and_connection_errors(connect) -> None:
    api = Api(httpx.Response(503), httpx.ReadError("reset"), ok(run_json("running")))
    status = await connect(api).get("rest:r-1")
    assert status.state is RunState.RUNNING
    assert len(api.requests) == 3


@pytest.mark.anyio
async def test_5xx_exhausted(connect) -> None:
    api = Api(*[httpx.Response(502, json={"detail": "bad gateway"}) for _ in range(3)])
    with pytest.raises(PlatformUnavailable, match="bad gateway"):
        await connect(api).get("rest:r-1")
    assert len(api.requests) == 3


@pytest.mark.anyio
async def test_404_is_run_not_found(connect) -> None:
    api = Api(httpx.Response(404, json={"detail": "run nope not found"}))
    with pytest.raises(RunNotFound, match="run nope not found") as info:
        await connect(api).get("rest:nope")
    assert info.value.status_code == 404
    assert len(api.requests) == 1


@pytest.mark.anyio
async def test_transport_errors_are_classified(connect) -> None:
    api = Api(*[httpx.ConnectError("refused") for _ in range(3)])
    with pytest.raises(TransportError) as info:
        await connect(api).get("rest:r-1")
    assert info.value.sent is False
    assert info.value.timeout is False
    assert "GET https://jobs.example.com/api/v1/runs/r-1 failed: ConnectError" in str(info.value)

    api = Api(*[httpx.ReadTimeout("slow") for _ in range(3)])
    with pytest.raises(TransportError) as info:
        await connect(api).get("rest:r-1")
    assert info.value.timeout is True
    assert info.value.sent is None


@pytest.mark.anyio
async def test_launch_is_resent_after_a_connect_error_but_not_after_a_reset(connect) -> None:
    api = Api(httpx.ConnectError("refused"), ok(run_json("queued", "r-2"), 201))
    assert await connect(api).launch({"job": "etl"}) == RunRef("rest", "r-2")
    assert len(api.requests) == 2

    api = Api(httpx.RemoteProtocolError("server disconnected"))
    with pytest.raises(LaunchUncertain, match="may have created a run anyway") as info:
        await connect(api).launch({"job": "etl"})
    assert isinstance(info.value.cause, TransportError)
    assert len(api.requests) == 1


# -- secrets ----------------------------------------------------------------------------------------
def assert_no_token(exc: BaseException) -> None:
    texts = [str(exc), repr(exc), *map(str, exc.args), *map(repr, exc.args)]
    texts += [str(getattr(exc, name, "")) for name in ("message", "body")]
    texts.append("".join(traceback.format_exception(exc)))  # what a log shows, causes included
    assert all(TOKEN not in text for text in texts), texts


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "error"), [(401, AuthError), (403, AuthError), (404, RunNotFound)]
)
async def test_token_echoed_by_the_platform_is_redacted(connect, status: int, error: type) -> None:
    echo = {
        "detail": f"token {TOKEN} is not valid here",
        "debug": {"authorization": f"Bearer {TOKEN}"},
    }
    api = Api(httpx.Response(status, json=echo))
    client = connect(api)
    with pytest.raises(error) as info:
        await client.get("rest:r-1")
    assert_no_token(info.value)
    assert "***" in info.value.message and "***" in info.value.body
    assert TOKEN not in repr(client.client) and TOKEN not in str(client.client)


@pytest.mark.anyio
async def test_token_in_a_transport_error_is_redacted(connect) -> None:
    api = Api(*[httpx.ReadError(f"peer said {TOKEN}") for _ in range(3)])
    with pytest.raises(TransportError) as info:
        await connect(api).get("rest:r-1")
    assert_no_token(info.value)


@pytest.mark.anyio
async def test_token_echoed_in_a_failed_launch_is_redacted_from_the_message(connect) -> None:
    api = Api(httpx.Response(503, json={"detail": f"cannot use {TOKEN} now"}))
    with pytest.raises(LaunchUncertain) as info:
        await connect(api).launch({"job": "etl"})
    assert TOKEN not in str(info.value) and TOKEN not in repr(info.value.args)
    assert "***" in str(info.value)


@pytest.mark.anyio
async def test_token_echoed_in_a_failed_launch_is_redacted_from_the_cause(connect) -> None:
    api = Api(httpx.Response(503, json={"detail": f"cannot use {TOKEN} now"}))
    with pytest.raises(LaunchUncertain) as info:
        await connect(api).launch({"job": "etl"})
    assert_no_token(info.value)  # includes the traceback, which prints __cause__
    assert_no_token(info.value.cause)


# -- configuration ------------------------------------------------------------------------------
CLIENTS = [RunClient, AsyncRunClient]


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize("base_url", ["jobs.example.com", "ftp://jobs.example.com", "", None, 8080])
def test_base_url_must_be_http(cls: type, base_url: Any) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        cls("rest", base_url, **REST_CONFIG)


@pytest.mark.parametrize("cls", CLIENTS)
def test_unknown_platform_lists_the_available_ones(cls: type) -> None:
    with pytest.raises(ConfigError, match=r"unknown platform 'nope'; available: .*rest") as info:
        cls("nope", BASE)
    assert "langgraph" in str(info.value)


@pytest.mark.parametrize("cls", CLIENTS)
def test_unknown_option_is_a_config_error(cls: type) -> None:
    with pytest.raises(ConfigError, match=r"platform 'rest': bad options .*'pollling'"):
        cls("rest", BASE, pollling=3, **REST_CONFIG)


@pytest.mark.parametrize("cls", CLIENTS)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"token": 123}, "token must be a string"),
        ({"request_timeout": -1}, "request_timeout must be a positive"),
    ],
)
def test_bad_client_arguments(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls("rest", BASE, **kwargs, **REST_CONFIG)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wait_timeout": -5}, "wait_timeout must be a non-negative"),
        ({"run_timeout": "1h"}, "run_timeout must be a number"),
        ({"error_window": -1}, "error_window must be a non-negative"),
        ({"check": True, "success": "running"}, "RUNNING is not a terminal state"),
    ],
)
async def test_bad_wait_arguments(connect, kwargs: dict[str, Any], message: str) -> None:
    api = Api(ok(run_json("succeeded")))
    with pytest.raises(ConfigError, match=message):
        await connect(api).wait("rest:r-1", **kwargs)


def test_async_client_limits_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_in_flight"):
        AsyncRunClient("rest", BASE, max_in_flight=0, **REST_CONFIG)


def test_sync_client_leaves_the_callers_httpx_client_open() -> None:
    http = httpx.Client(transport=Api(ok(run_json("running"))).transport)
    with RunClient("rest", BASE, client=http, **REST_CONFIG) as client:
        client.get("rest:r-1")
    assert not http.is_closed
    http.close()

    with RunClient("rest", BASE, **REST_CONFIG) as owned:
        pass
    assert owned._http.is_closed


@pytest.mark.anyio
async def test_async_client_leaves_the_callers_httpx_client_open() -> None:
    http = httpx.AsyncClient(transport=Api(ok(run_json("running"))).transport)
    async with AsyncRunClient("rest", BASE, client=http, **REST_CONFIG) as client:
        await client.get("rest:r-1")
    assert not http.is_closed
    await http.aclose()

    async with AsyncRunClient("rest", BASE, **REST_CONFIG) as owned:
        pass
    assert owned._http.is_closed


# -- wait, check and success policy -------------------------------------------------------------------
@pytest.mark.anyio
async def test_wait_returns_a_failed_run_without_check(connect) -> None:
    api = Api(ok(run_json("running")), ok(run_json("failed", error={"message": "oom"})))
    status = await connect(api).wait("rest:r-1")
    assert (status.state, status.message) == (RunState.FAILED, "oom")


@pytest.mark.anyio
async def test_wait_check_raises_run_failed(connect) -> None:
    api = Api(ok(run_json("running")), ok(run_json("failed", error={"message": "oom"})))
    with pytest.raises(RunFailed, match="rest run r-1 ended FAILED \\(failed\\): oom") as info:
        await connect(api).wait("rest:r-1", check=True)
    assert isinstance(info.value.status, RunStatus)
    assert info.value.status.message == "oom"


PARTIAL_CONFIG = {**REST_CONFIG, "states": {**REST_CONFIG["states"], "partial": "PARTIAL"}}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "success", "raises"),
    [
        ("partial", None, True),
        ("partial", "succeeded,partial", False),
        ("partial", [RunState.SUCCEEDED, "PARTIAL"], False),
        ("succeeded", ["partial"], True),
        ("cancelled", "cancelled", False),
        ("succeeded", None, False),
    ],
)
async def test_success_policy(connect, raw: str, success: Any, raises: bool) -> None:
    api = Api(ok(run_json(raw)))
    client = connect(api, **PARTIAL_CONFIG)
    if raises:
        with pytest.raises(RunFailed):
            await client.wait("rest:r-1", check=True, success=success)
    else:
        status = await client.wait("rest:r-1", check=True, success=success)
        assert status.raw_state == raw


@pytest.mark.anyio
async def test_launch_and_wait(connect) -> None:
    api = Api(
        ok(run_json("queued", "r-3"), 201),
        ok(run_json("running", "r-3")),
        ok(run_json("succeeded", "r-3", result={"rows": 1})),
    )
    status = await connect(api).launch_and_wait({"job": "etl"}, key="k-1", wait_timeout=60)
    assert status.state is RunState.SUCCEEDED
    assert status.outputs == {"rows": 1}
    assert api.calls() == [
        "POST /api/v1/jobs/etl/runs",
        "GET /api/v1/runs/r-3",
        "GET /api/v1/runs/r-3",
    ]


@pytest.mark.anyio
async def test_cancel(connect) -> None:
    api = Api(ok(run_json("cancelled"), 202))
    assert await connect(api).cancel("rest:r-1") is None
    assert api.calls() == ["POST /api/v1/runs/r-1/cancel"]


@pytest.mark.anyio
async def test_hooks_receive_events(connect) -> None:
    events: list[Any] = []
    api = Api(httpx.Response(503), ok(run_json("running")), ok(run_json("succeeded")))
    await connect(api, hooks=[events.append]).wait("rest:r-1")
    kinds = [e.kind for e in events]
    assert kinds.count("retry") == 1
    assert kinds.count("state_changed") == 2
    assert all(e.platform == "rest" for e in events)


# -- long polls through the drivers -------------------------------------------------------------------
class Joinable(Provider):
    """Status at ``GET /runs/{id}``, a long poll at ``GET /runs/{id}/join``."""

    name = "joinable"
    states = {"running": RunState.RUNNING, "done": RunState.SUCCEEDED}

    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        response = yield Request("GET", f"/runs/{ref.id}")
        return self._parse(ref, self.decipher(response))

    def join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus] | None:
        return self._join(ref, timeout)

    def _join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus]:
        response = yield Request("GET", f"/runs/{ref.id}/join", timeout=timeout, long_poll=True)
        return self._parse(ref, self.decipher(response))

    def _parse(self, ref: RunRef, data: dict[str, Any]) -> RunStatus:
        return RunStatus(ref, self.map_state(data["state"]), data["state"])


@pytest.fixture
def joinable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry._registered, "joinable", Joinable)


@pytest.mark.anyio
@pytest.mark.usefixtures("joinable")
async def test_wait_uses_the_join_endpoint(kind: str) -> None:
    api = Api(ok({"state": "running"}), ok({"state": "done"}))
    client = make_client(kind, "joinable", BASE, transport=api.transport, **FAST)
    status = await client.wait("joinable:j-1")
    assert status.state is RunState.SUCCEEDED
    assert api.calls() == ["GET /runs/j-1", "GET /runs/j-1/join"]


@pytest.mark.anyio
@pytest.mark.usefixtures("joinable")
async def test_async_client_without_long_poll_slots_polls_instead() -> None:
    api = Api(ok({"state": "running"}), ok({"state": "running"}), ok({"state": "done"}))
    client = AsyncRunClient(
        "joinable",
        BASE,
        client=httpx.AsyncClient(transport=api.transport),
        max_long_polls=0,
        **FAST,
    )
    status = await client.wait("joinable:j-1")
    assert status.state is RunState.SUCCEEDED
    assert api.calls() == ["GET /runs/j-1"] * 3
