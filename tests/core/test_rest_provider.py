"""The generic ``rest`` provider, fed canned responses: configuration, requests built, answers read."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from runbridge.core.errors import (
    AuthError,
    ConfigError,
    Conflict,
    NotSupported,
    PlatformUnavailable,
    ProtocolError,
    RunNotFound,
)
from runbridge.core.models import LaunchSpec, RunRef
from runbridge.core.providers.rest import RestProvider, dig
from runbridge.core.registry import create_provider
from runbridge.core.states import RunState
from runbridge.testing.rest import REST_CONFIG

from .helpers import exchange_requests, reply

STATES = {"queued": "PENDING", "running": "RUNNING", "ok": "SUCCEEDED", "bad": "failed"}
STATUS = {"path": "/runs/{run_id}", "state": "status"}


def provider(**overrides: Any) -> RestProvider:
    config: dict[str, Any] = {**REST_CONFIG}
    config.update(overrides)
    return RestProvider(**{k: v for k, v in config.items() if v is not None})


# -- configuration -------------------------------------------------------------------------------
CONFIG_ERRORS = [
    ({"status": None}, "status is required"),
    ({"status": "/runs/{run_id}"}, "status must be a mapping, got str"),
    ({"status": {**STATUS, "colour": "x"}}, "status has unknown field.s. colour; allowed: "),
    ({"status": {"state": "status"}}, r"status.path must be a string starting with '/'"),
    ({"status": {**STATUS, "path": "runs/{run_id}"}}, r"status.path must be a string starting"),
    ({"status": {**STATUS, "method": "FETCH"}}, r"status.method 'FETCH' is not an HTTP method"),
    ({"status": {**STATUS, "path": "/runs/{run_id"}}, r"status.path is not a valid path template"),
    (
        {"status": {**STATUS, "path": "/runs/{run-id}"}},
        r"status.path uses \{run-id\}; names must be identifiers",
    ),
    ({"status": {**STATUS, "path": "/runs/{}"}}, r"status.path uses \{\}"),
    ({"status": {**STATUS, "path": "/runs/{a.b}"}}, r"names must be identifiers"),
    ({"status": {"path": "/runs/{run_id}"}}, r"status.state is required"),
    ({"status": {**STATUS, "path": "/runs/{id}"}}, r"status.path must contain \{run_id\}"),
    ({"status": {**STATUS, "state": 5}}, r"status.state must be a string"),
    ({"status": {**STATUS, "url": ["run", "url"]}}, r"status.url must be a string"),
    ({"states": None}, "states is required"),
    ({"states": {}}, "states is required"),
    ({"states": {"ok": "DONE"}}, r"states\['ok'\] = 'DONE' is not a RunState"),
    ({"states": {"queued": "PENDING", "running": "RUNNING"}}, "maps no value to a terminal state"),
    ({"launch": {"path": "/runs"}}, r"launch.id is required"),
    (
        {"launch": {"path": "/runs", "id": "id", "retries": 3}},
        r"launch has unknown field.s. retries",
    ),
    ({"launch": {"path": "/runs", "id": "id", "method": "TRACE"}}, r"launch.method 'TRACE'"),
    ({"launch": {"path": "/runs", "id": "id", "scope": "job"}}, r"launch.scope must be a list"),
    ({"launch": {"path": "/runs", "id": 0}}, r"launch.id must be a string"),
    (
        {"launch": {"path": "/runs", "id": "id", "idempotency_header": True}},
        r"launch.idempotency_header must be a string",
    ),
    ({"launch": ["/runs"]}, r"launch must be a mapping, got list"),
    (
        {"cancel": {"path": "/runs/{run_id}/cancel", "body": {}}},
        r"cancel has unknown field.s. body",
    ),
    ({"cancel": {"method": "POST"}}, r"cancel.path must be a string"),
    ({"auth": {"header": "X-Key", "prefix": "Token"}}, r"auth takes only header, scheme"),
    ({"auth": "Bearer"}, r"auth takes only header, scheme"),
]


@pytest.mark.parametrize(("overrides", "message"), CONFIG_ERRORS)
def test_config_errors_name_the_field(overrides: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"status": STATUS, "states": STATES}
    config.update(overrides)
    with pytest.raises(ConfigError, match=message) as info:
        RestProvider(**{k: v for k, v in config.items() if v is not None})
    assert str(info.value).startswith("rest provider: ")


def test_scope_needed_by_status_must_be_carried_by_launch() -> None:
    with pytest.raises(ConfigError, match=r"status.path needs job; list them in launch.scope"):
        RestProvider(
            status={"path": "/jobs/{job}/runs/{run_id}", "state": "status"},
            states=STATES,
            launch={"path": "/jobs/{job}/runs", "id": "id"},
        )


def test_unknown_option_through_the_registry_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"platform 'rest': bad options .*'polling'"):
        create_provider("rest", status=STATUS, states=STATES, polling=True)


def test_capabilities_follow_the_configuration() -> None:
    full = provider()
    assert (full.supports_launch, full.supports_cancel, full.supports_find) == (True, True, False)
    status_only = RestProvider(status=STATUS, states=STATES)
    assert (status_only.supports_launch, status_only.supports_cancel) == (False, False)
    assert status_only.ref_scope == ()
    scoped = RestProvider(status={"path": "/p/{project}/r/{run_id}", "state": "s"}, states=STATES)
    assert scoped.ref_scope == ("project",)


def test_states_are_case_insensitive_run_state_names() -> None:
    p = RestProvider(status=STATUS, states={"1": "succeeded", "0": "Running"})
    assert p.map_state(1) is RunState.SUCCEEDED
    assert p.map_state("0") is RunState.RUNNING
    assert p.map_state("2") is RunState.UNKNOWN
    assert p.map_state(None) is RunState.UNKNOWN


# -- dig ------------------------------------------------------------------------------------------
DATA = {
    "run": {"id": "r1", "error": {"message": "boom"}, "zero": 0, "off": False, "empty": ""},
    "items": [{"id": "a"}, {"id": "b"}],
    "matrix": [[1, 2], [3, 4]],
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("run.id", "r1"),
        ("run.error.message", "boom"),
        ("run.zero", 0),
        ("run.off", False),
        ("run.empty", ""),
        ("items.0.id", "a"),
        ("items.1.id", "b"),
        ("items.-1.id", "b"),
        ("items.-2.id", "a"),
        ("matrix.1.0", 3),
        ("items.2.id", None),
        ("items.-3.id", None),
        ("items.x", None),
        ("run.missing", None),
        ("run.missing.deeper", None),
        ("run.id.deeper", None),
        ("run..id", None),
        ("nope", None),
        ("", DATA),
        ("$", DATA),
        (".", DATA),
    ],
)
def test_dig(path: str, expected: Any) -> None:
    assert dig(DATA, path) == expected


def test_dig_on_non_containers() -> None:
    assert dig(None, "a") is None
    assert dig("text", "0") is None
    assert dig([10, 20], "1") == 20
    assert dig(7, "") == 7


# -- launch ---------------------------------------------------------------------------------------
def launched(run_id: Any = "r-1") -> Any:
    return reply(201, {"run": {"id": run_id, "status": "queued"}})


@pytest.mark.parametrize(
    ("params", "path", "body"),
    [
        ({"job": "etl"}, "/api/v1/jobs/etl/runs", {}),
        (
            {"job": "etl", "size": 3, "tags": ["a"]},
            "/api/v1/jobs/etl/runs",
            {"size": 3, "tags": ["a"]},
        ),
        ({"job": "a/b c?d&e"}, "/api/v1/jobs/a%2Fb%20c%3Fd%26e/runs", {}),
        ({"job": "données"}, "/api/v1/jobs/donn%C3%A9es/runs", {}),
        ({"job": 42}, "/api/v1/jobs/42/runs", {}),
        ({"job": "etl", "body": {"raw": True}, "size": 3}, "/api/v1/jobs/etl/runs", {"raw": True}),
        ({"job": "etl", "body": [1, 2]}, "/api/v1/jobs/etl/runs", [1, 2]),
    ],
)
def test_launch_request(params: dict[str, Any], path: str, body: Any) -> None:
    requests, ref = exchange_requests(provider().launch(LaunchSpec(params)), [launched("r-9")])
    (request,) = requests
    assert (request.method, request.path, request.json) == ("POST", path, body)
    assert request.headers is None
    assert request.retry is None and request.retryable is False
    assert ref == RunRef("rest", "r-9")


def test_launch_with_key_sends_the_idempotency_header_and_may_be_retried() -> None:
    requests, _ = exchange_requests(
        provider().launch(LaunchSpec({"job": "etl"}, key="dag.task.2024-05-01")), [launched()]
    )
    (request,) = requests
    assert request.headers == {"Idempotency-Key": "dag.task.2024-05-01"}
    assert request.retry is True and request.retryable is True


def test_launch_with_key_but_no_idempotency_header_configured_is_not_retryable() -> None:
    launch = {k: v for k, v in REST_CONFIG["launch"].items() if k != "idempotency_header"}
    requests, _ = exchange_requests(
        provider(launch=launch).launch(LaunchSpec({"job": "etl"}, key="k")), [launched()]
    )
    assert requests[0].headers is None
    assert requests[0].retryable is False


def test_launch_method_and_scope_from_config() -> None:
    p = RestProvider(
        status={"path": "/jobs/{job}/runs/{run_id}", "state": "status"},
        states=STATES,
        launch={
            "method": "put",
            "path": "/jobs/{job}/runs",
            "id": "data.0.run_id",
            "scope": ["job"],
        },
    )
    requests, ref = exchange_requests(
        p.launch(LaunchSpec({"job": "j 1", "n": 1})), [reply(200, {"data": [{"run_id": 17}]})]
    )
    assert requests[0].method == "PUT"
    assert requests[0].retryable is True  # PUT is idempotent
    assert ref == RunRef("rest", "17", {"job": "j 1"})
    assert p.check_ref(ref) is ref


def test_launch_without_a_path_param_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"launch.path needs job"):
        exchange_requests(provider().launch(LaunchSpec({"size": 1})), [])


@pytest.mark.parametrize(
    "answer",
    [
        reply(201, {"run": {"status": "queued"}}),
        reply(201, {"run": {"id": ""}}),
        reply(201, {"id": "r-1"}),
        reply(201),
    ],
)
def test_launch_answer_without_an_id_is_a_protocol_error(answer: Any) -> None:
    with pytest.raises(ProtocolError, match=r"no run id at 'run.id'"):
        exchange_requests(provider().launch(LaunchSpec({"job": "etl"})), [answer])


def test_launch_answer_that_is_not_json_is_a_protocol_error() -> None:
    with pytest.raises(
        ProtocolError, match=r"POST /api/v1/jobs/etl/runs \(HTTP 201\) is not valid JSON"
    ):
        exchange_requests(
            provider().launch(LaunchSpec({"job": "etl"})), [reply(201, text="<html>")]
        )


def test_launch_not_configured() -> None:
    p = RestProvider(status=STATUS, states=STATES)
    with pytest.raises(NotSupported, match="cannot be launched"):
        exchange_requests(p.launch(LaunchSpec({})), [])


# -- status ---------------------------------------------------------------------------------------
def test_status_request_quotes_the_id_and_scope() -> None:
    p = RestProvider(status={"path": "/p/{project}/runs/{run_id}", "state": "s"}, states=STATES)
    ref = RunRef("rest", "a/b?c", {"project": "x y"})
    requests, status = exchange_requests(p.status(ref), [reply(200, {"s": "running"})])
    assert (requests[0].method, requests[0].path) == ("GET", "/p/x%20y/runs/a%2Fb%3Fc")
    assert requests[0].retryable is True
    assert status.ref is ref


def test_status_method_can_be_configured() -> None:
    p = RestProvider(status={**STATUS, "method": "post"}, states=STATES)
    requests, _ = exchange_requests(p.status(RunRef("rest", "1")), [reply(200, {"status": "ok"})])
    assert requests[0].method == "POST"


def test_status_parsing_reads_every_configured_field() -> None:
    body = {
        "run": {
            "id": "r-1",
            "status": "failed",
            "url": "https://jobs.example.com/ui/runs/r-1",
            "error": {"message": "disk full"},
            "result": {"rows": 3},
            "created_at": "2024-05-01T12:00:00Z",
            "updated_at": 1714565405,
            "finished_at": "2024-05-01T12:00:10+00:00",
        }
    }
    _, status = exchange_requests(provider().status(RunRef("rest", "r-1")), [reply(200, body)])
    assert status.state is RunState.FAILED
    assert status.raw_state == "failed"
    assert status.url == "https://jobs.example.com/ui/runs/r-1"
    assert status.message == "disk full"
    assert status.outputs == {"rows": 3}
    assert status.created_at == datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert status.updated_at == datetime(2024, 5, 1, 12, 10, 5, tzinfo=timezone.utc)
    assert status.ended_at == datetime(2024, 5, 1, 12, 0, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("run", "state", "raw", "outputs", "message"),
    [
        ({"status": "running"}, RunState.RUNNING, "running", {}, None),
        ({"status": "rebalancing"}, RunState.UNKNOWN, "rebalancing", {}, None),
        (
            {"status": "succeeded", "result": 42},
            RunState.SUCCEEDED,
            "succeeded",
            {"value": 42},
            None,
        ),
        (
            {"status": "succeeded", "result": [1]},
            RunState.SUCCEEDED,
            "succeeded",
            {"value": [1]},
            None,
        ),
        ({"status": "failed", "error": {"message": ""}}, RunState.FAILED, "failed", {}, None),
        ({"status": "failed", "error": {"message": 7}}, RunState.FAILED, "failed", {}, "7"),
        ({"status": ""}, RunState.UNKNOWN, "", {}, None),
    ],
)
def test_status_parsing_table(
    run: dict[str, Any], state: RunState, raw: str, outputs: dict[str, Any], message: str | None
) -> None:
    _, status = exchange_requests(
        provider().status(RunRef("rest", "r-1")), [reply(200, {"run": run})]
    )
    assert (status.state, status.raw_state, dict(status.outputs), status.message) == (
        state,
        raw,
        outputs,
        message,
    )


@pytest.mark.parametrize("body", [{"run": {"id": "r-1"}}, {"run": None}, {}, [], None])
def test_status_without_a_state_is_a_protocol_error(body: Any) -> None:
    with pytest.raises(ProtocolError, match=r"no state at 'run.status'"):
        exchange_requests(provider().status(RunRef("rest", "r-1")), [reply(200, body)])


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (reply(404, {"detail": "run r-1 not found"}), RunNotFound, "run r-1 not found"),
        (reply(401, {"message": "bad token"}), AuthError, "bad token"),
        (reply(503, text="upstream down"), PlatformUnavailable, "upstream down"),
        (reply(500), PlatformUnavailable, "HTTP 500"),
    ],
)
def test_status_errors(answer: Any, error: type, message: str) -> None:
    with pytest.raises(error) as info:
        exchange_requests(provider().status(RunRef("rest", "r-1")), [answer])
    assert info.value.message == message
    assert info.value.platform == "rest"


def test_status_with_a_ref_missing_its_scope_is_a_config_error() -> None:
    p = RestProvider(status={"path": "/p/{project}/runs/{run_id}", "state": "s"}, states=STATES)
    with pytest.raises(ConfigError, match=r"needs project in its scope"):
        p.check_ref(RunRef("rest", "1"))
    with pytest.raises(ConfigError, match=r"status.path needs project"):
        exchange_requests(p.status(RunRef("rest", "1")), [])


# -- cancel ---------------------------------------------------------------------------------------
def test_cancel_request() -> None:
    requests, result = exchange_requests(
        provider().cancel(RunRef("rest", "r/1")), [reply(202, {"run": {"status": "cancelled"}})]
    )
    (request,) = requests
    assert (request.method, request.path) == ("POST", "/api/v1/runs/r%2F1/cancel")
    assert request.retry is True  # cancelling twice is harmless
    assert result is None


def test_cancel_accepts_an_empty_answer() -> None:
    _, result = exchange_requests(provider().cancel(RunRef("rest", "r-1")), [reply(204)])
    assert result is None


def test_cancel_of_a_finished_run_is_a_conflict() -> None:
    with pytest.raises(Conflict, match="already finished"):
        exchange_requests(
            provider().cancel(RunRef("rest", "r-1")),
            [reply(409, {"detail": "run r-1 already finished (succeeded)"})],
        )


def test_cancel_not_configured() -> None:
    with pytest.raises(NotSupported, match="cannot be cancelled"):
        exchange_requests(
            RestProvider(status=STATUS, states=STATES).cancel(RunRef("rest", "1")), []
        )


# -- auth -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("auth", "headers"),
    [
        (None, {"Authorization": "Bearer tok-123"}),
        ({"scheme": "Token"}, {"Authorization": "Token tok-123"}),
        ({"header": "X-API-Key", "scheme": ""}, {"X-API-Key": "tok-123"}),
        ({"header": "PRIVATE-TOKEN"}, {"PRIVATE-TOKEN": "Bearer tok-123"}),
    ],
)
def test_auth_header_forms(auth: dict[str, str] | None, headers: dict[str, str]) -> None:
    p = RestProvider(status=STATUS, states=STATES, auth=auth)
    assert p.auth_headers("tok-123") == headers
