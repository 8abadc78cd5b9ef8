"""The core flows (send with retries, launch safety net, wait) driven with no network, on a fake
clock: every request is answered from a script, every Sleep advances the clock and is recorded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from runbridge.core import flows
from runbridge.core.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    Conflict,
    LaunchUncertain,
    NotSupported,
    PlatformError,
    PlatformUnavailable,
    ProtocolError,
    RateLimited,
    RunNotFound,
    TransportError,
    WaitTimeout,
)
from runbridge.core.flows import Event, FlowContext, LongPollUnavailable, WaitOptions, log_event
from runbridge.core.http import Exchange, Request
from runbridge.core.models import LaunchSpec, RunRef, RunStatus, parse_time
from runbridge.core.providers.base import Provider
from runbridge.core.providers.rest import RestProvider
from runbridge.core.schedule import PollSchedule, RetryPolicy
from runbridge.core.states import RunState
from runbridge.testing.rest import REST_CONFIG

from .helpers import FakeClock, FlowDriver, reply, took

# A retry policy whose delays are easy to read: 1, 2, 4, ... (no jitter), 3 attempts.
RETRY = RetryPolicy(attempts=3, total=60.0, first=1.0, factor=2.0, cap=10.0, jitter=0.0)
REST_REF = RunRef("rest", "r-1")
RUN_PATH = "/api/v1/runs/r-1"


def run(status: str, run_id: str = "r-1", **extra: Any) -> dict[str, Any]:
    """A run object as the example REST API answers it."""
    return {"run": {"id": run_id, "status": status, **extra}}


def ok(status: str, **extra: Any):
    return reply(200, run(status, **extra))


@pytest.fixture(autouse=True)
def _fresh_unknown_state_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unknown states are warned about once per process; give each test a clean slate."""
    monkeypatch.setattr(flows, "_warned_unknown", set())


class Setup:
    """A FlowContext on a fake clock, with every emitted Event recorded."""

    def __init__(self, provider: Provider | None = None, retry: RetryPolicy = RETRY) -> None:
        self.clock = FakeClock()
        self.events: list[Event] = []
        self.ctx = FlowContext(
            provider if provider is not None else RestProvider(**REST_CONFIG),
            retry,
            clock=self.clock,
            wall=self.clock.wall,
            rand=lambda: 0.5,
            hooks=[log_event, self.events.append],
        )

    def driver(self, *answers: Any) -> FlowDriver:
        return FlowDriver(self.clock, answers)

    def kinds(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]


# -- a tiny provider with find, join and cancel -------------------------------------------------
class Jobs(Provider):
    """``POST /runs`` to launch, ``GET /runs/{id}`` for status, ``GET /runs?key=`` to find a launch,
    ``GET /runs/{id}/join`` to block until the run ends (when built with ``join=True``)."""

    name = "jobs"
    states = {
        "queued": RunState.PENDING,
        "running": RunState.RUNNING,
        "done": RunState.SUCCEEDED,
        "failed": RunState.FAILED,
        "cancelled": RunState.CANCELLED,
    }
    supports_find = True

    def __init__(self, *, join: bool = False, cancel: bool = True) -> None:
        self.has_join = join
        self.supports_cancel = cancel

    def launch(self, spec: LaunchSpec) -> Exchange[RunRef]:
        headers = {"X-Launch-Key": spec.key} if spec.key else None
        response = yield Request("POST", "/runs", json=dict(spec.params), headers=headers)
        return RunRef(self.name, str(self.decipher(response)["id"]))

    def status(self, ref: RunRef) -> Exchange[RunStatus]:
        response = yield Request("GET", f"/runs/{ref.id}")
        return self.parse(ref, self.decipher(response))

    def parse(self, ref: RunRef, data: dict[str, Any]) -> RunStatus:
        raw = data["state"]
        return RunStatus(
            ref,
            self.map_state(raw),
            raw,
            message=data.get("message"),
            created_at=parse_time(data.get("created_at")),
        )

    def cancel(self, ref: RunRef) -> Exchange[None]:
        response = yield Request("POST", f"/runs/{ref.id}/cancel", retry=True)
        self.decipher(response)

    def find(self, spec: LaunchSpec) -> Exchange[RunRef | None]:
        response = yield Request("GET", "/runs", params={"key": str(spec.key)})
        found = self.decipher(response)["runs"]
        return RunRef(self.name, found[0]["id"]) if found else None

    def join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus] | None:
        return self._join(ref, timeout) if self.has_join else None

    def _join(self, ref: RunRef, timeout: float) -> Exchange[RunStatus]:
        response = yield Request("GET", f"/runs/{ref.id}/join", timeout=timeout, long_poll=True)
        return self.parse(ref, self.decipher(response))


JOBS_REF = RunRef("jobs", "j-1")
OLD = "2024-05-01T11:00:00Z"  # an hour before the fake wall clock starts


def job(state: str, **extra: Any):
    return reply(200, {"id": "j-1", "state": state, **extra})


def found(*ids: str):
    return reply(200, {"runs": [{"id": i} for i in ids]})


# -- send: one request, with retries ---------------------------------------------------------
@pytest.mark.parametrize(
    "failure",
    [
        reply(503),
        reply(500),
        reply(502),
        reply(504),
        reply(408),
        TransportError("connection reset", sent=None),
        TransportError("read timed out", timeout=True),
        TransportError("connection refused", sent=False),
    ],
    ids=repr,
)
def test_get_retries_a_transient_failure_then_succeeds(failure: Any) -> None:
    s = Setup()
    driver = s.driver(failure, failure, ok("running"))
    status = driver.run(s.ctx.get(REST_REF))
    assert status.state is RunState.RUNNING
    assert driver.calls == [
        f"GET {RUN_PATH}",
        "sleep 1",
        f"GET {RUN_PATH}",
        "sleep 2",
        f"GET {RUN_PATH}",
    ]
    assert [(e.attempt, e.delay) for e in s.kinds("retry")] == [(1, 1.0), (2, 2.0)]


def test_5xx_exhaustion_raises_platform_unavailable_after_attempts() -> None:
    s = Setup()
    overloaded = reply(503, {"detail": "overloaded, try later"}, headers={"X-Request-Id": "req-9"})
    driver = s.driver(overloaded, overloaded, overloaded)
    with pytest.raises(PlatformUnavailable) as info:
        driver.run(s.ctx.get(REST_REF))
    assert len(driver.requests) == RETRY.attempts == 3
    assert driver.sleeps == [1.0, 2.0]
    assert info.value.status_code == 503
    assert info.value.message == "overloaded, try later"
    assert info.value.request_id == "req-9"
    assert "req-9" in str(info.value) and "HTTP 503" in str(info.value)


def test_transport_error_exhaustion_raises_the_transport_error() -> None:
    s = Setup()
    errors = [TransportError(f"reset {i}") for i in range(3)]
    driver = s.driver(*errors)
    with pytest.raises(TransportError) as info:
        driver.run(s.ctx.get(REST_REF))
    assert info.value is errors[-1]
    assert len(driver.requests) == 3


def test_retry_gives_up_when_the_total_budget_is_spent() -> None:
    s = Setup(retry=RetryPolicy(attempts=10, total=10.0, first=1.0, factor=2.0, jitter=0.0))
    # each answer takes 4 s: after the 2nd failure 4 + 1 + 4 = 9 s elapsed, 9 + 2 > 10
    driver = s.driver(took(4, reply(503)), took(4, reply(503)))
    with pytest.raises(PlatformUnavailable):
        driver.run(s.ctx.get(REST_REF))
    assert driver.sleeps == [1.0]


def test_429_retry_after_seconds_is_the_sleep() -> None:
    s = Setup()
    driver = s.driver(reply(429, headers={"Retry-After": "7"}), ok("running"))
    driver.run(s.ctx.get(REST_REF))
    assert driver.sleeps == [7.0]


def test_503_retry_after_is_honoured_and_capped() -> None:
    s = Setup(retry=RetryPolicy(attempts=3, max_retry_after=30.0, jitter=0.0))
    driver = s.driver(
        reply(503, headers={"Retry-After": "12"}),
        reply(503, headers={"Retry-After": "3600"}),
        ok("running"),
    )
    driver.run(s.ctx.get(REST_REF))
    assert driver.sleeps == [12.0, 30.0]


def test_429_retry_after_http_date_is_the_sleep() -> None:
    s = Setup()
    when = format_datetime(s.clock.wall() + timedelta(seconds=30), usegmt=True)
    driver = s.driver(reply(429, headers={"Retry-After": when}), ok("running"))
    driver.run(s.ctx.get(REST_REF))
    assert driver.sleeps == [30.0]


def test_429_exhaustion_raises_rate_limited_with_retry_after() -> None:
    s = Setup()
    limited = reply(429, {"message": "slow down"}, headers={"Retry-After": "2"})
    driver = s.driver(limited, limited, limited)
    with pytest.raises(RateLimited) as info:
        driver.run(s.ctx.get(REST_REF))
    assert info.value.retry_after == 2.0
    assert info.value.message == "slow down"
    assert driver.sleeps == [2.0, 2.0]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequest),
        (422, BadRequest),
        (401, AuthError),
        (403, AuthError),
        (404, RunNotFound),
        (409, Conflict),
        (418, BadRequest),
    ],
)
def test_4xx_is_never_retried(status: int, error: type[PlatformError]) -> None:
    s = Setup()
    driver = s.driver(reply(status, {"detail": f"platform says {status}"}))
    with pytest.raises(error) as info:
        driver.run(s.ctx.get(REST_REF))
    assert type(info.value) is error
    assert info.value.status_code == status
    assert info.value.platform == "rest"
    assert info.value.message == f"platform says {status}"
    assert driver.sleeps == [] and len(driver.requests) == 1
    assert s.kinds("retry") == []


def test_404_carries_the_platform_message() -> None:
    s = Setup()
    driver = s.driver(reply(404, {"detail": "run r-1 not found"}))
    with pytest.raises(RunNotFound, match="rest: HTTP 404: run r-1 not found"):
        driver.run(s.ctx.get(REST_REF))


def test_401_is_an_auth_error() -> None:
    s = Setup()
    driver = s.driver(reply(401, {"detail": "invalid or missing API token"}))
    with pytest.raises(AuthError, match="invalid or missing API token"):
        driver.run(s.ctx.get(REST_REF))


def test_error_body_that_is_not_json_becomes_the_message() -> None:
    s = Setup()
    driver = s.driver(reply(404, text="<html>nope</html>"))
    with pytest.raises(RunNotFound) as info:
        driver.run(s.ctx.get(REST_REF))
    assert info.value.message == "<html>nope</html>"
    assert info.value.body == "<html>nope</html>"


def test_get_rejects_a_ref_of_another_platform_before_any_request() -> None:
    s = Setup()
    with pytest.raises(ConfigError, match="is for platform 'jobs', not 'rest'"):
        s.driver().run(s.ctx.get(JOBS_REF))


# -- launch --------------------------------------------------------------------------------------
LAUNCH_PATH = "/api/v1/jobs/etl/runs"


@pytest.mark.parametrize(
    "failure",
    [reply(503), reply(500), TransportError("connection reset after sending", sent=None)],
    ids=repr,
)
def test_post_without_key_is_not_retried_and_raises_launch_uncertain(failure: Any) -> None:
    s = Setup()
    driver = s.driver(failure)
    with pytest.raises(LaunchUncertain) as info:
        driver.run(s.ctx.launch(LaunchSpec({"job": "etl"})))
    assert driver.calls == [f"POST {LAUNCH_PATH}"]
    assert "may have created a run" in str(info.value)
    assert isinstance(info.value.cause, (PlatformUnavailable, TransportError))
    assert info.value.__cause__ is info.value.cause


def test_launch_request_shape_without_key() -> None:
    s = Setup()
    driver = s.driver(reply(201, run("queued", "r-5")))
    ref = driver.run(s.ctx.launch(LaunchSpec({"job": "etl", "size": 3})))
    assert ref == RunRef("rest", "r-5")
    (request,) = driver.requests
    assert request.json == {"size": 3}
    assert request.headers is None
    assert request.retryable is False
    assert [e.kind for e in s.events] == ["launched"]
    assert s.events[0].ref == ref


def test_post_is_retried_after_a_connect_error() -> None:
    s = Setup()
    driver = s.driver(
        TransportError("connection refused", sent=False), reply(201, run("queued", "r-9"))
    )
    ref = driver.run(s.ctx.launch(LaunchSpec({"job": "etl"})))
    assert ref == RunRef("rest", "r-9")
    assert driver.calls == [f"POST {LAUNCH_PATH}", "sleep 1", f"POST {LAUNCH_PATH}"]


def test_post_connect_errors_exhausted_raise_transport_error_not_uncertain() -> None:
    s = Setup()
    refused = TransportError("connection refused", sent=False)
    driver = s.driver(refused, refused, refused)
    with pytest.raises(TransportError) as info:
        driver.run(s.ctx.launch(LaunchSpec({"job": "etl"})))
    assert not isinstance(info.value, LaunchUncertain)
    assert len(driver.requests) == 3


def test_post_is_retried_on_429() -> None:
    s = Setup()
    driver = s.driver(reply(429, headers={"Retry-After": "5"}), reply(201, run("queued", "r-2")))
    assert driver.run(s.ctx.launch(LaunchSpec({"job": "etl"}))) == RunRef("rest", "r-2")
    assert driver.sleeps == [5.0]


def test_launch_with_idempotency_key_is_retried_on_503() -> None:
    s = Setup()
    driver = s.driver(reply(503), reply(200, run("running", "r-3")))
    ref = driver.run(s.ctx.launch(LaunchSpec({"job": "etl"}, key="task-1")))
    assert ref == RunRef("rest", "r-3")
    assert [r.headers for r in driver.requests] == [{"Idempotency-Key": "task-1"}] * 2
    assert driver.sleeps == [1.0]


def test_launch_with_key_but_no_find_exhausted_is_uncertain() -> None:
    s = Setup()
    driver = s.driver(reply(503), reply(503), reply(503))
    with pytest.raises(LaunchUncertain, match="Check rest for the run"):
        driver.run(s.ctx.launch(LaunchSpec({"job": "etl"}, key="task-1")))
    assert len(driver.requests) == 3


def test_launch_409_without_find_is_a_conflict() -> None:
    s = Setup()
    driver = s.driver(reply(409, {"detail": "a run is already in flight"}))
    with pytest.raises(Conflict, match="already in flight"):
        driver.run(s.ctx.launch(LaunchSpec({"job": "etl"})))


@pytest.mark.parametrize(
    "failure",
    [TransportError("reset after sending", sent=None), reply(503), reply(409)],
    ids=repr,
)
def test_launch_with_key_and_find_reattaches_after_an_uncertain_failure(failure: Any) -> None:
    s = Setup(Jobs())
    driver = s.driver(found(), failure, found("j-7"))
    ref = driver.run(s.ctx.launch(LaunchSpec({"x": 1}, key="dag.task.1")))
    assert ref == RunRef("jobs", "j-7")
    assert driver.calls == ["GET /runs", "POST /runs", "GET /runs"]
    assert [r.params for r in driver.requests if r.method == "GET"] == [{"key": "dag.task.1"}] * 2
    assert [e.kind for e in s.events] == ["reattached"]


def test_launch_with_key_and_find_reuses_an_existing_run_without_launching() -> None:
    s = Setup(Jobs())
    driver = s.driver(found("j-old"))
    assert driver.run(s.ctx.launch(LaunchSpec({}, key="k"))) == RunRef("jobs", "j-old")
    assert driver.calls == ["GET /runs"]


def test_launch_reuse_false_skips_the_first_lookup() -> None:
    s = Setup(Jobs())
    driver = s.driver(reply(201, {"id": "j-2"}))
    assert driver.run(s.ctx.launch(LaunchSpec({}, key="k"), reuse=False)) == RunRef("jobs", "j-2")
    assert driver.calls == ["POST /runs"]
    assert driver.requests[0].headers == {"X-Launch-Key": "k"}


def test_launch_relaunches_only_after_find_shows_no_run() -> None:
    s = Setup(Jobs())
    driver = s.driver(found(), reply(502), found(), reply(201, {"id": "j-3"}))
    assert driver.run(s.ctx.launch(LaunchSpec({}, key="k"))) == RunRef("jobs", "j-3")
    assert driver.calls == ["GET /runs", "POST /runs", "GET /runs", "sleep 1", "POST /runs"]
    assert [e.kind for e in s.events] == ["retry", "launched"]


def test_launch_409_with_find_and_no_run_is_a_conflict() -> None:
    s = Setup(Jobs())
    driver = s.driver(found(), reply(409, {"detail": "busy"}), found())
    with pytest.raises(Conflict, match="busy"):
        driver.run(s.ctx.launch(LaunchSpec({}, key="k")))
    assert driver.calls == ["GET /runs", "POST /runs", "GET /runs"]


def test_launch_with_find_gives_up_after_attempts() -> None:
    s = Setup(Jobs())
    driver = s.driver(found(), reply(503), found(), reply(503), found(), reply(503), found())
    with pytest.raises(PlatformUnavailable):
        driver.run(s.ctx.launch(LaunchSpec({}, key="k")))
    assert [c for c in driver.calls if c == "POST /runs"] == ["POST /runs"] * 3
    assert driver.sleeps == [1.0, 2.0]


def test_launch_without_key_on_a_find_provider_suggests_a_key() -> None:
    s = Setup(Jobs())
    driver = s.driver(reply(503))
    with pytest.raises(LaunchUncertain, match="Pass an idempotency key"):
        driver.run(s.ctx.launch(LaunchSpec({})))


def test_launch_on_a_provider_without_launch_is_not_supported() -> None:
    s = Setup(RestProvider(status=REST_CONFIG["status"], states=REST_CONFIG["states"]))
    with pytest.raises(NotSupported, match="cannot be launched"):
        s.driver().run(s.ctx.launch(LaunchSpec({"job": "etl"})))


# -- cancel -----------------------------------------------------------------------------------------
def test_cancel_is_retried_and_emits_an_event() -> None:
    s = Setup()
    driver = s.driver(reply(503), reply(202, run("cancelled")))
    assert driver.run(s.ctx.cancel(REST_REF)) is None
    assert driver.calls == [f"POST {RUN_PATH}/cancel", "sleep 1", f"POST {RUN_PATH}/cancel"]
    assert [e.kind for e in s.events] == ["cancel_requested", "retry"]


def test_cancel_not_supported() -> None:
    s = Setup(Jobs(cancel=False))
    with pytest.raises(NotSupported, match="cannot be cancelled"):
        s.driver().run(s.ctx.cancel(JOBS_REF))


# -- wait: polling ---------------------------------------------------------------------------------
POLL = PollSchedule(first=1.0, factor=2.0, cap=5.0, jitter=0.0)


def wait(s: Setup, ref: RunRef = REST_REF, **options: Any):
    options.setdefault("poll", POLL)
    return s.ctx.wait(ref, WaitOptions(**options))


def test_wait_polls_until_terminal_without_sleeping_before_or_after() -> None:
    s = Setup()
    driver = s.driver(ok("queued"), ok("running"), ok("running"), ok("running"), ok("succeeded"))
    status = driver.run(wait(s))
    assert status.state is RunState.SUCCEEDED
    assert driver.calls == [
        f"GET {RUN_PATH}",
        "sleep 1",
        f"GET {RUN_PATH}",
        "sleep 2",
        f"GET {RUN_PATH}",
        "sleep 4",
        f"GET {RUN_PATH}",
        "sleep 5",
        f"GET {RUN_PATH}",
    ]


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("failed", RunState.FAILED),
        ("cancelled", RunState.CANCELLED),
        ("timed_out", RunState.TIMED_OUT),
        ("succeeded", RunState.SUCCEEDED),
    ],
)
def test_wait_returns_every_terminal_state(raw: str, state: RunState) -> None:
    s = Setup()
    driver = s.driver(ok("running"), ok(raw, error={"message": "why"}))
    status = driver.run(wait(s))
    assert (status.state, status.raw_state, status.message) == (state, raw, "why")


def test_wait_hooks_get_state_changed_once_per_change() -> None:
    s = Setup()
    driver = s.driver(ok("queued"), ok("queued"), ok("running"), ok("running"), ok("succeeded"))
    driver.run(wait(s))
    changes = s.kinds("state_changed")
    assert [e.status.raw_state for e in changes] == ["queued", "running", "succeeded"]
    assert all(e.ref == REST_REF and e.platform == "rest" for e in changes)
    assert len(s.kinds("status")) == 5
    assert [e.delay for e in s.kinds("sleep")] == [1.0, 2.0, 4.0, 5.0]
    assert [e.elapsed for e in changes] == [0.0, 3.0, 12.0]


def test_a_failing_hook_does_not_break_the_wait(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup()

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    s.ctx.hooks.insert(0, broken)
    driver = s.driver(ok("running"), ok("succeeded"))
    assert driver.run(wait(s)).state is RunState.SUCCEEDED
    assert "event hook" in caplog.text
    assert s.kinds("state_changed")  # later hooks still ran


def test_unknown_state_keeps_waiting_and_warns_once_per_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="runbridge")
    s = Setup()
    driver = s.driver(
        ok("running"),
        ok("rebalancing"),
        ok("rebalancing"),
        ok("mystery"),
        ok("rebalancing"),
        ok("succeeded"),
    )
    status = driver.run(wait(s, poll=PollSchedule.fixed(1.0)))
    assert status.state is RunState.SUCCEEDED
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 2
    assert "'rebalancing'" in warnings[0] and "rest" in warnings[0]
    assert "'mystery'" in warnings[1]
    assert [e.status.raw_state for e in s.kinds("unknown_state")] == ["rebalancing", "mystery"]

    # a second wait (another client, same platform) does not warn again for the same value
    caplog.clear()
    again = Setup()
    again.driver(ok("rebalancing"), ok("succeeded")).run(wait(again))
    assert not [r for r in caplog.records if "does not know" in r.getMessage()]


def test_unknown_state_warning_is_per_platform(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="runbridge")
    rest, jobs = Setup(), Setup(Jobs())
    rest.driver(ok("odd")).run(rest.ctx.get(REST_REF))
    jobs.driver(job("odd")).run(jobs.ctx.get(JOBS_REF))
    assert len([r for r in caplog.records if "does not know" in r.getMessage()]) == 2


TRANSIENT = [
    pytest.param(reply(503), PlatformUnavailable, id="503"),
    pytest.param(reply(429), RateLimited, id="429"),
    pytest.param(TransportError("connection reset"), TransportError, id="reset"),
    pytest.param(reply(200, text='{"run": {"status": "runn'), ProtocolError, id="malformed"),
    pytest.param(reply(200, {"run": {}}), ProtocolError, id="no-state"),
]


@pytest.mark.parametrize(("failure", "error"), TRANSIENT)
def test_wait_tolerates_transient_errors_within_the_window(failure: Any, error: type) -> None:
    s = Setup(retry=RetryPolicy.none())
    # checks every 2 s: errors at t=2, 4, 6 (4 s of errors) within a 5 s window
    driver = s.driver(ok("running"), failure, failure, failure, ok("running"), ok("succeeded"))
    status = driver.run(wait(s, poll=PollSchedule.fixed(2.0), error_window=5.0))
    assert status.state is RunState.SUCCEEDED
    assert len(s.kinds("transient_error")) == 3
    assert driver.sleeps == [2.0] * 5


@pytest.mark.parametrize(("failure", "error"), TRANSIENT)
def test_wait_raises_the_last_transient_error_after_the_window(failure: Any, error: type) -> None:
    s = Setup(retry=RetryPolicy.none())
    # errors from t=2; at t=8 they have lasted 6 s > 5 s
    driver = s.driver(ok("running"), failure, failure, failure, failure)
    with pytest.raises(error):
        driver.run(wait(s, poll=PollSchedule.fixed(2.0), error_window=5.0))
    assert len(driver.requests) == 5
    assert len(s.kinds("transient_error")) == 3


def test_the_error_window_restarts_after_a_good_check() -> None:
    s = Setup(retry=RetryPolicy.none())
    e = reply(503)
    # two bursts of errors, each 4 s long, 10 s apart from first to last: both tolerated
    driver = s.driver(ok("running"), e, e, ok("running"), e, e, e, ok("succeeded"))
    status = driver.run(wait(s, poll=PollSchedule.fixed(2.0), error_window=5.0))
    assert status.state is RunState.SUCCEEDED


@pytest.mark.parametrize(
    ("failure", "error"),
    [(reply(404), RunNotFound), (reply(401), AuthError), (reply(400), BadRequest)],
)
def test_wait_does_not_tolerate_permanent_errors(failure: Any, error: type) -> None:
    s = Setup()
    driver = s.driver(ok("running"), failure)
    with pytest.raises(error):
        driver.run(wait(s, error_window=600.0))
    assert len(driver.requests) == 2


def test_wait_timeout_carries_the_last_status() -> None:
    s = Setup()
    driver = s.driver(ok("queued"), ok("queued"), ok("running"), ok("running"))
    with pytest.raises(WaitTimeout) as info:
        driver.run(wait(s, wait_timeout=5.0, poll=PollSchedule.fixed(2.0)))
    # checks at t=0, 2, 4 and at the deadline, t=5 (the last sleep is cut to fit)
    assert driver.sleeps == [2.0, 2.0, 1.0]
    assert info.value.last_status is not None
    assert info.value.last_status.state is RunState.RUNNING
    assert info.value.last_status.ref == REST_REF
    assert "still RUNNING after waiting 5s" in str(info.value)
    assert "keeps going" in str(info.value)
    assert not [r for r in driver.requests if r.method == "POST"], "wait_timeout must not cancel"


def test_wait_timeout_with_no_successful_check_has_no_last_status() -> None:
    s = Setup(retry=RetryPolicy.none())
    driver = s.driver(reply(503), reply(503))
    with pytest.raises(WaitTimeout) as info:
        driver.run(wait(s, wait_timeout=1.0, poll=PollSchedule.fixed(1.0)))
    assert info.value.last_status is None
    assert "still unknown" in str(info.value)


# -- wait: run_timeout -------------------------------------------------------------------------------
def test_run_timeout_cancels_and_reports_timed_out() -> None:
    s = Setup()
    created = (s.clock.wall() - timedelta(seconds=100)).isoformat()
    driver = s.driver(
        ok("running", created_at=created),
        reply(202, run("running", created_at=created)),  # the cancel
        ok("cancelled", created_at=created),
    )
    status = driver.run(wait(s, run_timeout=60.0))
    assert driver.calls == [f"GET {RUN_PATH}", f"POST {RUN_PATH}/cancel", f"GET {RUN_PATH}"]
    assert status.state is RunState.TIMED_OUT
    assert status.raw_state == "cancelled"
    assert status.message == "cancelled by runbridge: the run exceeded run_timeout=60s"
    assert status.is_terminal
    assert [e.kind for e in s.events].count("cancel_requested") == 1


def test_run_timeout_without_created_at_counts_from_the_start_of_the_wait() -> None:
    s = Setup(Jobs())
    driver = s.driver(job("running"), job("running"), job("running"), job("running"))
    driver.answers += [reply(202, {}), job("running"), job("cancelled")]
    status = driver.run(wait(s, JOBS_REF, run_timeout=5.0, poll=PollSchedule.fixed(2.0)))
    assert status.state is RunState.TIMED_OUT
    # the third sleep is cut so the check falls when run_timeout does
    assert driver.sleeps == pytest.approx([2.0, 2.0, 1.0, 2.0])
    assert "POST /runs/j-1/cancel" in driver.calls


def test_run_timeout_is_not_applied_to_a_young_run() -> None:
    s = Setup()
    created = (s.clock.wall() - timedelta(seconds=10)).isoformat()
    driver = s.driver(ok("running", created_at=created), ok("succeeded", created_at=created))
    status = driver.run(wait(s, run_timeout=60.0))
    assert status.state is RunState.SUCCEEDED
    assert s.kinds("cancel_requested") == []


def test_a_run_that_fails_after_the_cancel_keeps_its_own_state() -> None:
    s = Setup(Jobs())
    driver = s.driver(job("running", created_at=OLD), reply(202, {}), job("failed", message="oom"))
    status = driver.run(wait(s, JOBS_REF, run_timeout=60.0))
    assert (status.state, status.message) == (RunState.FAILED, "oom")


def test_run_timeout_needs_cancel() -> None:
    s = Setup(Jobs(cancel=False))
    with pytest.raises(NotSupported, match="run_timeout needs cancel"):
        s.driver().run(wait(s, JOBS_REF, run_timeout=10.0))


def test_run_timeout_cancel_racing_the_end_of_the_run_returns_the_end() -> None:
    s = Setup(Jobs())
    driver = s.driver(
        job("running", created_at=OLD),
        reply(409, {"detail": "run j-1 already finished (done)"}),
        job("done", created_at=OLD),
    )
    status = driver.run(wait(s, JOBS_REF, run_timeout=60.0))
    assert status.state is RunState.SUCCEEDED


def test_run_timeout_cancel_that_never_takes_ends_after_cancel_grace() -> None:
    s = Setup(Jobs())
    driver = s.driver(job("running", created_at=OLD), reply(202, {}))
    driver.answers += [job("running")] * 20
    with pytest.raises(WaitTimeout, match="had not stopped after 30s") as info:
        driver.run(
            wait(s, JOBS_REF, run_timeout=10.0, cancel_grace=30.0, poll=PollSchedule.fixed(5.0)),
            check_all_used=False,
        )
    assert info.value.last_status is not None
    assert info.value.last_status.state is RunState.RUNNING
    assert s.clock.now - 1000.0 == pytest.approx(30.0)
    assert len([r for r in driver.requests if r.method == "POST"]) == 1  # cancelled once


def test_run_timeout_cancel_that_never_takes_ends_at_the_wait_deadline() -> None:
    s = Setup(Jobs())
    driver = s.driver(job("running", created_at=OLD), reply(202, {}))
    driver.answers += [job("running")] * 50
    with pytest.raises(WaitTimeout, match="cancelled for exceeding run_timeout") as info:
        driver.run(
            wait(
                s,
                JOBS_REF,
                wait_timeout=20.0,
                run_timeout=60.0,
                cancel_grace=30.0,
                poll=PollSchedule.fixed(5.0),
            ),
            check_all_used=False,
        )
    assert info.value.last_status is not None
    assert info.value.last_status.state is RunState.RUNNING
    assert s.clock.now - 1000.0 == pytest.approx(30.0)  # deadline extended to cancel + grace


# -- wait: join (long poll) ---------------------------------------------------------------------------
def test_wait_uses_join_when_the_provider_has_one() -> None:
    s = Setup(Jobs(join=True))
    driver = s.driver(job("running"), job("done"))
    status = driver.run(wait(s, JOBS_REF, wait_timeout=100.0))
    assert status.state is RunState.SUCCEEDED
    requests = driver.requests
    assert [r.path for r in requests] == ["/runs/j-1", "/runs/j-1/join"]
    assert requests[1].long_poll is True
    assert requests[1].timeout == pytest.approx(100.0)  # straight after the first check


def test_join_is_capped_at_join_timeout_and_reopened() -> None:
    s = Setup(Jobs(join=True))
    # the platform ends each long poll itself with the run still going
    driver = s.driver(job("running"), job("running"), job("running"), job("done"))
    status = driver.run(wait(s, JOBS_REF, join_timeout=30.0))
    assert status.state is RunState.SUCCEEDED
    joins = [r for r in driver.requests if r.path.endswith("/join")]
    assert [r.timeout for r in joins] == [30.0, 30.0, 30.0]


def test_a_join_timeout_is_not_an_error() -> None:
    s = Setup(Jobs(join=True))
    timed_out = TransportError("read timed out", timeout=True)
    driver = s.driver(job("running"), took(305.0, timed_out), job("done"))
    status = driver.run(wait(s, JOBS_REF))
    assert status.state is RunState.SUCCEEDED
    assert [r.path for r in driver.requests] == ["/runs/j-1", "/runs/j-1/join", "/runs/j-1/join"]
    assert s.kinds("transient_error") == []
    # joined straight after the first check, and re-opened at once: the long poll itself waited
    assert driver.sleeps == []


def test_a_join_timeout_is_not_retried_past_the_wait_deadline() -> None:
    s = Setup(Jobs(join=True))
    driver = s.driver(job("running"))
    driver.answers += [took(25.0, TransportError("read timed out", timeout=True))] * 5
    with pytest.raises(WaitTimeout):
        driver.run(wait(s, JOBS_REF, wait_timeout=21.0), check_all_used=False)
    assert [r.path for r in driver.requests] == ["/runs/j-1", "/runs/j-1/join"]


def test_a_join_transport_error_that_is_not_a_timeout_is_transient() -> None:
    s = Setup(Jobs(join=True), retry=RetryPolicy.none())
    driver = s.driver(
        job("running"), TransportError("connection reset"), job("running"), job("done")
    )
    status = driver.run(wait(s, JOBS_REF))
    assert status.state is RunState.SUCCEEDED
    assert len(s.kinds("transient_error")) == 1


def test_long_poll_unavailable_falls_back_to_status_polling() -> None:
    s = Setup(Jobs(join=True))
    driver = s.driver(job("running"), LongPollUnavailable("too many blocking calls"), job("done"))
    status = driver.run(wait(s, JOBS_REF))
    assert status.state is RunState.SUCCEEDED
    assert [r.path for r in driver.requests] == ["/runs/j-1", "/runs/j-1/join", "/runs/j-1"]
    assert s.kinds("transient_error") == []


def test_use_join_false_polls() -> None:
    s = Setup(Jobs(join=True))
    driver = s.driver(job("running"), job("running"), job("done"))
    driver.run(wait(s, JOBS_REF, use_join=False))
    assert all(not r.path.endswith("/join") for r in driver.requests)


def test_no_join_when_less_than_half_a_second_remains() -> None:
    s = Setup(Jobs(join=True))
    driver = s.driver(job("running"), job("running"), job("running"), job("running"))
    with pytest.raises(WaitTimeout):
        driver.run(wait(s, JOBS_REF, wait_timeout=1.3, poll=PollSchedule.fixed(1.0)))
    # the first status check goes straight to a join (no sleep); a join answering at once is
    # followed by a poll interval, after which only 0.3 s remain: too little for a long poll
    assert driver.calls == [
        "GET /runs/j-1",
        "GET /runs/j-1/join",
        "sleep 1",
        "GET /runs/j-1",
        "sleep 0.3",
        "GET /runs/j-1",
    ]


# -- the flow closes what it drives ----------------------------------------------------------------
def test_closing_a_wait_closes_the_provider_exchange() -> None:
    closed: list[str] = []

    class Tracking(Jobs):
        def status(self, ref: RunRef) -> Iterator[Request]:  # type: ignore[override]
            try:
                return (yield from super().status(ref))
            finally:
                closed.append(ref.id)

    s = Setup(Tracking())
    flow = wait(s, JOBS_REF)
    assert isinstance(next(flow), Request)
    flow.close()
    assert closed == ["j-1"]
