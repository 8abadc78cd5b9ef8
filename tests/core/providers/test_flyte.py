"""The flyte provider, sans-IO: canned Connect answers in, requests and values out.

Shapes follow docs/platforms/flyte.md (flyteidl2 2.0.51, flyte 2.12.1, the open-source
backend's runs/service/run_service.go).
"""

from __future__ import annotations

import gzip
import json
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from runbridge import ConfigError, LaunchSpec, ProtocolError, RunNotFound, RunRef, RunState
from runbridge.core.errors import (
    AuthError,
    BadRequest,
    Conflict,
    PlatformError,
    PlatformUnavailable,
    RateLimited,
)
from runbridge.core.flows import FlowContext
from runbridge.core.providers.flyte import (
    CONNECT_CODES,
    PHASES,
    STATES,
    Flyte,
    decode_stream,
    envelope,
    from_literal,
    run_name_for_key,
    to_literal,
)
from runbridge.core.schedule import RetryPolicy
from tests.core.helpers import FakeClock, FlowDriver, reply

from .stepper import Canned, step

RUN_SERVICE = "/flyteidl2.workflow.RunService"
DATA_PROXY = "/flyteidl2.dataproxy.DataProxyService"
NAME = "rb0123456789abcdef01"
REF = RunRef("flyte", NAME, {"project": "flytesnacks", "domain": "development"})
RUN_ID = {"project": "flytesnacks", "domain": "development", "name": NAME}
STREAM = {"content-type": "application/connect+json"}


def action(phase: str | int | None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-11-25T09:26:45.123456789Z", "attempts": 1}
    if phase is not None:
        status["phase"] = phase
    if phase in ("ACTION_PHASE_SUCCEEDED", "ACTION_PHASE_FAILED", "ACTION_PHASE_ABORTED"):
        status["endTime"] = "2026-11-25T09:27:00Z"
    return {
        "id": {"run": RUN_ID, "name": "a0"},
        "metadata": {"actionType": "ACTION_TYPE_TASK"},
        "status": status,
        **extra,
    }


def details(phase: str | int | None, **extra: Any) -> Canned:
    return Canned(body={"details": {"runSpec": {}, "action": action(phase, **extra)}})


def connect_error(code: str, message: str = "boom", status: int | None = None) -> Canned:
    return Canned(status or CONNECT_CODES[code][0], {"code": code, "message": message})


def frames(*messages: Any, end: Any = None, cut: bytes = b"") -> bytes:
    out = b"".join(envelope(json.dumps(m).encode()) for m in messages)
    if end is not None:
        out += envelope(json.dumps(end).encode(), flags=0x02)
    return out + cut


def stream(*messages: Any, end: Any = None) -> Canned:
    return Canned(raw=frames(*messages, end=end), headers=STREAM)


OUTPUTS = Canned(
    body={
        "inputs": {},
        "outputs": {
            "literals": [
                {"name": "o0", "value": {"scalar": {"primitive": {"integer": "42"}}}},
                {"name": "o1", "value": {"collection": {"literals": []}}},
            ]
        },
        "outputsUri": "s3://b/o.pb",
    }
)


# -- states ------------------------------------------------------------------------------------
def test_every_phase_of_the_sdk_is_mapped() -> None:
    assert set(STATES) == set(PHASES.values())
    assert sorted(PHASES) == list(range(11))


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("ACTION_PHASE_UNSPECIFIED", RunState.PENDING),
        ("ACTION_PHASE_QUEUED", RunState.PENDING),
        ("ACTION_PHASE_WAITING_FOR_RESOURCES", RunState.PENDING),
        ("ACTION_PHASE_INITIALIZING", RunState.PENDING),
        ("ACTION_PHASE_RUNNING", RunState.RUNNING),
        ("ACTION_PHASE_PAUSED", RunState.RUNNING),
        ("ACTION_PHASE_SUCCEEDED", RunState.SUCCEEDED),
        ("ACTION_PHASE_FAILED", RunState.FAILED),
        ("ACTION_PHASE_ABORTED", RunState.CANCELLED),
        ("ACTION_PHASE_TIMED_OUT", RunState.TIMED_OUT),
        ("ACTION_PHASE_RECOVERED", RunState.SUCCEEDED),
        ("ACTION_PHASE_FROM_THE_FUTURE", RunState.UNKNOWN),
    ],
)
def test_status_maps_every_phase(raw: str, state: RunState) -> None:
    answers = [details(raw)] + ([OUTPUTS] if state is RunState.SUCCEEDED else [])
    requests, status = step(Flyte().status(REF), *answers)
    get = requests[0]
    assert (get.method, get.path) == ("POST", f"{RUN_SERVICE}/GetRunDetails")
    assert get.json == {"runId": RUN_ID}
    assert get.headers is not None and get.headers["connect-protocol-version"] == "1"
    assert get.headers["content-type"] == "application/json"
    assert get.retryable  # no side effects
    assert (status.state, status.raw_state) == (state, raw)
    assert status.is_terminal == state.is_terminal
    assert (status.ended_at is not None) == (
        raw in ("ACTION_PHASE_SUCCEEDED", "ACTION_PHASE_FAILED", "ACTION_PHASE_ABORTED")
    )


def test_phase_as_an_enum_number_and_missing_phase() -> None:
    _, running = step(Flyte().status(REF), details(4))
    assert running.raw_state == "ACTION_PHASE_RUNNING"
    _, unknown_yet = step(Flyte().status(REF), details(None))
    assert (unknown_yet.raw_state, unknown_yet.state) == (
        "ACTION_PHASE_UNSPECIFIED",
        RunState.PENDING,
    )


def test_times_with_nanoseconds_are_read() -> None:
    _, status = step(Flyte().status(REF), details("ACTION_PHASE_FAILED"))
    assert status.created_at == datetime(2026, 11, 25, 9, 26, 45, 123456, tzinfo=timezone.utc)
    assert status.ended_at == datetime(2026, 11, 25, 9, 27, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("phase", "extra", "message"),
    [
        (
            "ACTION_PHASE_FAILED",
            {"errorInfo": {"message": "ZeroDivisionError: division by zero", "kind": "KIND_USER"}},
            "ZeroDivisionError: division by zero (user error)",
        ),
        (
            "ACTION_PHASE_FAILED",
            {"errorInfo": {"message": "pod evicted", "kind": "KIND_SYSTEM", "code": "OOMKilled"}},
            "OOMKilled: pod evicted (system error)",
        ),
        (
            "ACTION_PHASE_ABORTED",
            {"abortInfo": {"reason": "User requested abort"}},
            "aborted: User requested abort",
        ),
        ("ACTION_PHASE_ABORTED", {"abortInfo": {}}, "aborted"),
        (
            "ACTION_PHASE_TIMED_OUT",
            {"attempts": [{"attempt": 1, "errorInfo": {"message": "deadline"}}]},
            "deadline",
        ),
        ("ACTION_PHASE_PAUSED", {}, "paused: waiting for a signal"),
        ("ACTION_PHASE_RUNNING", {"errorInfo": {"message": "retrying"}}, None),
    ],
)
def test_messages(phase: str, extra: dict[str, Any], message: str | None) -> None:
    _, status = step(Flyte().status(REF), details(phase, **extra))
    assert status.message == message


def test_succeeded_run_outputs_are_read_from_the_data_proxy() -> None:
    attempt = {
        "attempt": 1,
        "phase": "ACTION_PHASE_SUCCEEDED",
        "outputs": {"outputUri": "s3://b/a.pb"},
    }
    requests, status = step(
        Flyte().status(REF), details("ACTION_PHASE_SUCCEEDED", attempts=[attempt]), OUTPUTS
    )
    data = requests[1]
    assert data.path == f"{DATA_PROXY}/GetActionData"
    assert data.json == {"actionId": {"run": RUN_ID, "name": "a0"}}
    assert status.outputs == {"uri": "s3://b/o.pb", "values": {"o0": 42, "o1": []}}


def test_outputs_that_cannot_be_read_leave_the_status_standing() -> None:
    attempt = {"attempt": 1, "outputs": {"outputUri": "s3://b/a.pb"}}
    _, status = step(
        Flyte().status(REF),
        details("ACTION_PHASE_SUCCEEDED", attempts=[attempt]),
        connect_error("unimplemented", "no data plane here"),
    )
    assert status.state is RunState.SUCCEEDED
    assert status.outputs["uri"] == "s3://b/a.pb"
    assert "values" not in status.outputs
    assert "unimplemented: no data plane here" in status.outputs["error"]
    requests, quiet = step(Flyte(read_outputs=False).status(REF), details("ACTION_PHASE_SUCCEEDED"))
    assert len(requests) == 1 and quiet.outputs == {}


# -- run URL -----------------------------------------------------------------------------------
def test_run_url_like_the_sdk_console() -> None:
    assert Flyte().run_url(REF) is None
    flyte = Flyte(console_url="https://acme.hosted.unionai.cloud/")
    url = f"https://acme.hosted.unionai.cloud/v2/domain/development/project/flytesnacks/runs/{NAME}"
    assert flyte.run_url(REF) == url
    bound = Flyte()
    bound.base_url = "http://localhost:8090"  # the SDK's devbox special case
    assert bound.run_url(REF) == (
        f"http://localhost:8080/v2/domain/development/project/flytesnacks/runs/{NAME}"
    )
    bound.base_url = "https://flyte.example.com/some/path"
    assert (bound.run_url(REF) or "").startswith("https://flyte.example.com/v2/domain/")
    _, status = step(flyte.status(REF), details("ACTION_PHASE_RUNNING"))
    assert status.url == url


# -- launch ------------------------------------------------------------------------------------
def created(name: str = NAME, **run_id: str) -> Canned:
    ident = {**RUN_ID, "name": name, **run_id}
    return Canned(
        body={
            "run": {
                "action": {
                    "id": {"run": ident, "name": "a0"},
                    "status": {"phase": "ACTION_PHASE_QUEUED"},
                }
            }
        }
    )


def test_launch_with_a_key_names_the_run_and_sends_inputs_inline() -> None:
    spec = LaunchSpec(
        {
            "task": "wf.main",
            "version": "v1",
            "inputs": {"n": 3, "xs": [1.5, None], "m": {"a": True}},
        },
        key="dag.task.run.0",
    )
    flyte = Flyte(project="flytesnacks", domain="development")
    name = run_name_for_key("dag.task.run.0")
    requests, ref = step(flyte.launch(spec), created(name))
    (create,) = requests
    assert create.path == f"{RUN_SERVICE}/CreateRun"
    assert not create.retryable  # a launch is never blindly resent
    assert create.json == {
        "runId": {"project": "flytesnacks", "domain": "development", "name": name},
        "taskId": {
            "project": "flytesnacks",
            "domain": "development",
            "name": "wf.main",
            "version": "v1",
        },
        "inputs": {
            "literals": [
                {"name": "n", "value": {"scalar": {"primitive": {"integer": "3"}}}},
                {
                    "name": "xs",
                    "value": {
                        "collection": {
                            "literals": [
                                {"scalar": {"primitive": {"floatValue": 1.5}}},
                                {"scalar": {"noneType": {}}},
                            ]
                        }
                    },
                },
                {
                    "name": "m",
                    "value": {
                        "map": {"literals": {"a": {"scalar": {"primitive": {"boolean": True}}}}}
                    },
                },
            ]
        },
    }
    assert ref == RunRef("flyte", name, {"project": "flytesnacks", "domain": "development"})


def test_launch_with_org_explicit_name_literals_and_run_spec() -> None:
    binary = {"scalar": {"binary": {"value": "gqFhAQ==", "tag": "msgpack"}}}
    spec = LaunchSpec(
        {
            "task": "wf.main",
            "version": "v2",
            "project": "p",
            "domain": "production",
            "name": "nightly-2026-11-25",
            "literals": {"cfg": binary},
            "run_spec": {"labels": {"values": {"team": "ml"}}},
        },
        key="ignored-for-the-name",
    )
    requests, ref = step(
        Flyte(org="acme").launch(spec),
        created("nightly-2026-11-25", project="p", domain="production", org="acme"),
    )
    body = requests[0].json
    assert body["runId"] == {
        "org": "acme",
        "project": "p",
        "domain": "production",
        "name": "nightly-2026-11-25",
    }
    assert body["taskId"]["org"] == "acme"
    assert body["inputs"] == {"literals": [{"name": "cfg", "value": binary}]}
    assert body["runSpec"] == {"labels": {"values": {"team": "ml"}}}
    assert ref.scope == {"org": "acme", "project": "p", "domain": "production"}
    # a server that leaves org out of its answer (the open one ignores org) keeps ours
    spec = LaunchSpec({"task": "t", "version": "v", "project": "p", "domain": "d", "org": "o"})
    _, ref = step(Flyte().launch(spec), created("r1", project="p", domain="d"))
    assert ref.scope["org"] == "o"


def test_launch_without_a_key_lets_the_server_name_the_run() -> None:
    spec = LaunchSpec({"task": "t", "version": "v", "project": "p", "domain": "d"})
    requests, ref = step(Flyte(org="o").launch(spec), created("rserver", project="p", domain="d"))
    assert requests[0].json["projectId"] == {"organization": "o", "name": "p", "domain": "d"}
    assert "runId" not in requests[0].json
    assert ref.id == "rserver" and ref.scope["org"] == "o"


def test_launch_uploading_inputs_first_as_the_sdk_does() -> None:
    spec = LaunchSpec({"task": "t", "version": "v", "inputs": {"x": "a"}}, key="k")
    upload = Canned(body={"offloadedInputData": {"uri": "s3://b/inputs", "inputsHash": "h"}})
    flyte = Flyte(project="p", domain="d", upload_inputs=True)
    requests, _ = step(flyte.launch(spec), upload, created(project="p", domain="d"))
    first, second = requests
    assert first.path == f"{DATA_PROXY}/UploadInputs"
    assert first.retryable
    assert first.json["inputs"] == {
        "literals": [{"name": "x", "value": {"scalar": {"primitive": {"stringValue": "a"}}}}]
    }
    assert first.json["taskId"]["name"] == "t" and first.json["runId"]["name"] == run_name_for_key(
        "k"
    )
    assert second.json["offloadedInputData"] == {"uri": "s3://b/inputs", "inputsHash": "h"}
    assert "inputs" not in second.json
    with pytest.raises(ProtocolError, match="offloadedInputData"):
        step(flyte.launch(spec), Canned(body={}))


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"version": "v"}, r"params\['task'\]"),
        ({"task": "t"}, r"params\['version'\]"),
        ({"task": "t", "version": "v", "domain": "d"}, r"params\['project'\]"),
        ({"task": "t", "version": "v", "project": "p"}, r"params\['domain'\]"),
        (
            {"task": "t", "version": "v", "project": "p", "domain": "d", "inptus": {}},
            "unknown launch params",
        ),
        ({"task": "t", "version": "v", "project": "p", "domain": "d", "name": "x" * 31}, "1 to 30"),
        (
            {"task": "t", "version": "v", "project": "p", "domain": "d", "inputs": {"f": object()}},
            "input 'f'",
        ),
        (
            {
                "task": "t",
                "version": "v",
                "project": "p",
                "domain": "d",
                "inputs": {"a": 1},
                "literals": {"a": {}},
            },
            "both",
        ),
        (
            {"task": "t", "version": "v", "project": "p", "domain": "d", "inputs": {"big": 2**63}},
            "int64",
        ),
        (
            {"task": "t", "version": "v", "project": "p", "domain": "d", "run_spec": "fast"},
            "RunSpec",
        ),
    ],
)
def test_launch_params_are_checked_before_any_request(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        next(Flyte().launch(LaunchSpec(params, key="k")))


def test_run_names_from_keys() -> None:
    name = run_name_for_key("dag.task.2026-11-25.0")
    assert name == run_name_for_key("dag.task.2026-11-25.0")
    assert name != run_name_for_key("dag.task.2026-11-25.1")
    assert len(name) == 20 and name.isalnum() and name == name.lower() and name[0].isalpha()


# -- find (idempotent launch) ---------------------------------------------------------------
def test_find_looks_the_run_up_by_its_name() -> None:
    spec = LaunchSpec({"task": "t", "version": "v"}, key="k")
    flyte = Flyte(project="flytesnacks", domain="development")
    requests, found = step(flyte.find(spec), details("ACTION_PHASE_RUNNING"))
    assert requests[0].json == {"runId": {**RUN_ID, "name": run_name_for_key("k")}}
    assert found == RunRef("flyte", run_name_for_key("k"), REF.scope)
    _, missing = step(flyte.find(spec), connect_error("not_found", "run not found"))
    assert missing is None
    with pytest.raises(AuthError):
        step(flyte.find(spec), connect_error("unauthenticated"))
    with pytest.raises(PlatformError):  # a 404 without a Connect body is not "no such run"
        step(flyte.find(spec), Canned(404, raw=b"404 page not found\n"))


def test_a_launch_whose_answer_is_lost_reattaches_instead_of_running_twice() -> None:
    clock = FakeClock()
    flyte = Flyte(project="flytesnacks", domain="development")
    ctx = FlowContext(
        flyte, RetryPolicy(jitter=0.0), clock=clock, wall=clock.wall, rand=lambda: 0.5
    )
    exists = {"code": "already_exists", "message": "run exists"}
    found = {"details": {"action": action("ACTION_PHASE_RUNNING")}}
    driver = FlowDriver(
        clock, [reply(404, {"code": "not_found"}), reply(409, exists), reply(200, found)]
    )
    ref = driver.run(ctx.launch(LaunchSpec({"task": "t", "version": "v"}, key="k")))
    assert ref.id == run_name_for_key("k")
    assert [r.path.rsplit("/", 1)[1] for r in driver.requests] == [
        "GetRunDetails",
        "CreateRun",
        "GetRunDetails",
    ]


def test_a_launch_without_a_key_gets_one_so_it_can_be_found() -> None:
    clock = FakeClock()
    ctx = FlowContext(Flyte(project="p", domain="d"), RetryPolicy(), clock=clock, wall=clock.wall)
    driver = FlowDriver(
        clock,
        [
            reply(
                200,
                {
                    "run": {
                        "action": {"id": {"run": {"project": "p", "domain": "d", "name": "rbx"}}}
                    }
                },
            )
        ],
    )
    driver.run(ctx.launch(LaunchSpec({"task": "t", "version": "v"})))
    (create,) = driver.requests
    assert create.json["runId"]["name"].startswith("rb")  # auto_key: a name of ours


# -- cancel --------------------------------------------------------------------------------------
def test_cancel_aborts_the_run_with_a_reason() -> None:
    requests, result = step(Flyte(abort_reason="stopped by Airflow").cancel(REF), Canned(body={}))
    (abort,) = requests
    assert abort.path == f"{RUN_SERVICE}/AbortRun"
    assert abort.json == {"runId": RUN_ID, "reason": "stopped by Airflow"}
    assert abort.retryable and result is None
    with pytest.raises(RunNotFound, match="not_found: run not found"):
        step(Flyte().cancel(REF), connect_error("not_found", "run not found"))


# -- join (the watch stream) --------------------------------------------------------------------
def test_join_watches_the_root_action_until_it_ends() -> None:
    body = stream(
        {"details": action("ACTION_PHASE_QUEUED")},
        {"details": action("ACTION_PHASE_RUNNING")},
        {"details": action("ACTION_PHASE_SUCCEEDED")},
        end={},
    )
    join = Flyte().join(REF, 60.0)
    assert join is not None
    requests, status = step(join, body, OUTPUTS)
    watch = requests[0]
    assert watch.path == f"{RUN_SERVICE}/WatchActionDetails"
    assert watch.long_poll and watch.timeout == 60.0 and not watch.retryable
    assert watch.headers == {
        "content-type": "application/connect+json",
        "connect-protocol-version": "1",
        "connect-timeout-ms": "59000",
    }
    assert watch.content is not None
    assert decode_stream(watch.content + envelope(b"{}", 0x02)).messages == [
        {"actionId": {"run": RUN_ID, "name": "a0"}}
    ]
    assert status.state is RunState.SUCCEEDED and status.outputs["values"]["o0"] == 42


def test_join_deadline_short_timeouts() -> None:
    join = Flyte().join(REF, 1.0)
    assert join is not None
    request = next(join)
    assert request.headers is not None and request.headers["connect-timeout-ms"] == "800"


@pytest.mark.parametrize("code", ["deadline_exceeded", "canceled", "unavailable"])
def test_a_watch_cut_short_returns_the_latest_status(code: str) -> None:
    body = stream({"details": action("ACTION_PHASE_RUNNING")}, end={"error": {"code": code}})
    requests, status = step(Flyte().join(REF, 5.0), body)  # type: ignore[arg-type]
    assert len(requests) == 1 and status.state is RunState.RUNNING


def test_a_watch_closed_cleanly_before_the_end_returns_the_latest_status() -> None:
    _, status = step(
        Flyte().join(REF, 5.0), stream({"details": action("ACTION_PHASE_RUNNING")}, end={})
    )  # type: ignore[arg-type]
    assert status.state is RunState.RUNNING


def test_a_watch_with_no_message_falls_back_to_one_read() -> None:
    body = stream(
        end={"error": {"code": "deadline_exceeded", "message": "context deadline exceeded"}}
    )
    requests, status = step(Flyte().join(REF, 5.0), body, details("ACTION_PHASE_RUNNING"))  # type: ignore[arg-type]
    assert [r.path.rsplit("/", 1)[1] for r in requests] == ["WatchActionDetails", "GetRunDetails"]
    assert status.state is RunState.RUNNING


def test_a_truncated_last_frame_is_dropped() -> None:
    raw = frames(
        {"details": action("ACTION_PHASE_RUNNING")}, cut=struct.pack(">BI", 0, 100) + b'{"det'
    )
    _, status = step(Flyte().join(REF, 5.0), Canned(raw=raw, headers=STREAM))  # type: ignore[arg-type]
    assert status.raw_state == "ACTION_PHASE_RUNNING"


def test_a_terminal_message_wins_over_a_later_error() -> None:
    body = stream(
        {"details": action("ACTION_PHASE_FAILED", errorInfo={"message": "bad"})},
        end={"error": {"code": "internal"}},
    )
    _, status = step(Flyte().join(REF, 5.0), body)  # type: ignore[arg-type]
    assert status.state is RunState.FAILED and status.message == "bad"


def test_a_stream_error_before_the_end_is_raised() -> None:
    body = stream(
        {"details": action("ACTION_PHASE_RUNNING")},
        end={"error": {"code": "internal", "message": "db"}},
    )
    with pytest.raises(PlatformUnavailable, match="internal: db"):
        step(Flyte().join(REF, 5.0), body)  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        step(Flyte().join(REF, 5.0), stream(end={"error": {"code": "unauthenticated"}}))  # type: ignore[arg-type]
    with pytest.raises(AuthError):  # an ingress may refuse with a plain 401 before Connect
        step(Flyte().join(REF, 5.0), connect_error("unauthenticated"))  # type: ignore[arg-type]


def test_an_unknown_run_is_not_found() -> None:
    body = stream(end={"error": {"code": "not_found", "message": "action not found"}})
    with pytest.raises(RunNotFound, match="run not found"):
        step(Flyte().join(REF, 5.0), body, connect_error("not_found", "run not found"))  # type: ignore[arg-type]


def test_a_root_action_with_another_name_is_watched_by_that_name() -> None:
    other = action("ACTION_PHASE_RUNNING")
    other["id"] = {"run": RUN_ID, "name": "root"}
    requests, status = step(
        Flyte().join(REF, 5.0),  # type: ignore[arg-type]
        stream(end={"error": {"code": "not_found"}}),
        Canned(body={"details": {"action": other}}),
        stream({"details": {**other, "status": {"phase": "ACTION_PHASE_FAILED"}}}, end={}),
    )
    assert [r.path.rsplit("/", 1)[1] for r in requests] == [
        "WatchActionDetails",
        "GetRunDetails",
        "WatchActionDetails",
    ]
    assert decode_stream(requests[2].content or b"").messages[0]["actionId"]["name"] == "root"
    assert status.state is RunState.FAILED


def test_compressed_stream_messages() -> None:
    payload = gzip.compress(json.dumps({"details": action("ACTION_PHASE_RUNNING")}).encode())
    raw = envelope(payload, flags=0x01) + envelope(b"{}", flags=0x02)
    _, status = step(
        Flyte().join(REF, 5.0),
        Canned(raw=raw, headers={**STREAM, "connect-content-encoding": "gzip"}),
    )  # type: ignore[arg-type]
    assert status.state is RunState.RUNNING
    with pytest.raises(ProtocolError, match="compressed"):
        decode_stream(raw)


def test_decode_stream_refuses_non_json() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_stream(envelope(b"\x08\x01"))
    body = decode_stream(
        envelope(b'{"a": 1}') + envelope(b'{"metadata": {}}', 0x02) + envelope(b"{}")
    )
    assert body.messages == [{"a": 1}] and body.end == {"metadata": {}} and body.error is None


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("not_found", RunNotFound),
        ("unauthenticated", AuthError),
        ("permission_denied", AuthError),
        ("invalid_argument", BadRequest),
        ("already_exists", Conflict),
        ("failed_precondition", Conflict),
        ("unavailable", PlatformUnavailable),
        ("internal", PlatformUnavailable),
        ("unimplemented", PlatformError),
    ],
)
def test_connect_errors(code: str, cls: type[PlatformError]) -> None:
    with pytest.raises(cls) as info:
        step(Flyte().status(REF), connect_error(code, "why"))
    assert type(info.value) is cls
    assert info.value.status_code == CONNECT_CODES[code][0]
    assert info.value.message == f"{code}: why"
    assert not (cls is PlatformError and info.value.retryable)


def test_resource_exhausted_is_rate_limited_with_retry_after() -> None:
    answer = Canned(
        429, {"code": "resource_exhausted", "message": "slow down"}, headers={"retry-after": "7"}
    )
    with pytest.raises(RateLimited) as info:
        step(Flyte().status(REF), answer)
    assert info.value.retry_after == 7.0


def test_non_connect_errors_fall_back_to_the_http_status() -> None:
    with pytest.raises(PlatformUnavailable):
        step(Flyte().status(REF), Canned(503, {"detail": "upstream connect error"}))
    with pytest.raises(PlatformError, match="no Connect procedure"):
        step(Flyte().status(REF), Canned(404, raw=b"404 page not found\n"))
    with pytest.raises(ProtocolError, match="RunDetails"):
        step(Flyte().status(REF), Canned(body={"details": {}}))


# -- literals ----------------------------------------------------------------------------------------
def test_literals_round_trip() -> None:
    values = {"i": -5, "f": 0.25, "s": "x", "b": False, "n": None, "l": [1, [2]], "m": {"k": "v"}}
    assert {k: from_literal(to_literal(v)) for k, v in values.items()} == values
    assert to_literal(float("nan"))["scalar"]["primitive"]["floatValue"] == "NaN"
    assert to_literal(float("-inf"))["scalar"]["primitive"]["floatValue"] == "-Infinity"
    assert (
        to_literal(datetime(2026, 1, 2, 3, 4, 5))["scalar"]["primitive"]["datetime"]
        == "2026-01-02T03:04:05Z"
    )
    assert to_literal(timedelta(seconds=-1.5))["scalar"]["primitive"]["duration"] == "-1.500000s"
    assert to_literal(timedelta(minutes=2))["scalar"]["primitive"]["duration"] == "120s"
    blob = {"scalar": {"blob": {"uri": "s3://b/f"}}}
    assert from_literal(blob) == blob
    union = {"scalar": {"union": {"value": {"scalar": {"primitive": {"integer": "7"}}}}}}
    assert from_literal(union) == 7
    assert from_literal({"scalar": {"generic": {"a": [1]}}}) == {"a": [1]}
    with pytest.raises(ConfigError, match="map keys"):
        to_literal({1: "x"})


# -- options and refs --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"project": ""}, "project"),
        ({"version": 3}, "version"),
        ({"console_url": "acme.unionai.cloud"}, "console_url"),
        ({"auth_header": "bad header"}, "auth_header"),
        ({"root_action": ""}, "root_action"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Flyte(**options)


def test_refs_and_auth() -> None:
    flyte = Flyte(project="p", domain="d", org="o")
    assert flyte.make_ref("r1") == RunRef(
        "flyte", "r1", {"project": "p", "domain": "d", "org": "o"}
    )
    assert flyte.make_ref("r1", project="q").scope["project"] == "q"
    with pytest.raises(ConfigError, match="project, domain"):
        Flyte().make_ref("r1")
    assert Flyte().auth_headers("t0k") == {"authorization": "Bearer t0k"}
    assert Flyte(auth_header="Flyte-Authorization").auth_headers("t") == {
        "flyte-authorization": "Bearer t"
    }
    requests, _ = step(flyte.status(flyte.make_ref("r1")), details("ACTION_PHASE_RUNNING"))
    assert requests[0].json == {"runId": {"org": "o", "project": "p", "domain": "d", "name": "r1"}}
