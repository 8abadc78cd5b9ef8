"""Both clients against the ``flyte`` emulator on loopback (real uvicorn, real sockets).

The wait rides one ``WatchActionDetails`` stream (Connect JSON, enveloped) where it can; the
raw-protocol tests at the end check the emulator's Connect framing with plain httpx. Scripts are
sub-second and polls use ``PollSchedule.fixed(0.05)``; nothing asserts on time.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import pytest

from runbridge.core import (
    AuthError,
    RunFailed,
    RunNotFound,
    RunState,
    WaitTimeout,
)
from runbridge.core.providers.flyte import decode_stream, envelope, run_name_for_key
from runbridge.testing import Emulator, Fault, Relay, Script, create_emulator
from runbridge.testing.flyte import FlyteEmulator, proto_codec
from tests.core.helpers import ClientUnderTest

pytestmark = pytest.mark.anyio

TOKEN = "flyte-access-token-42"
PROJECT, DOMAIN = "flytesnacks", "development"
QUICK = Script(
    [("queued", 0.05), ("waiting_for_resources", 0.05), ("running", 0.1)],
    final="succeeded",
    outputs={"o0": 42, "o1": ["a", "b"]},
)
LONG = Script([("queued", 0.05), ("running", 30.0)])
LAUNCH = {"task": "wf.main", "version": "v1", "inputs": {"n": 3, "label": "x"}}
RUN_SERVICE = "/flyteidl2.workflow.RunService"


@pytest.fixture
def emulator() -> FlyteEmulator:
    """A fresh ``flyte`` emulator: what ``serve("flyte", token=TOKEN)`` serves."""
    emulator = create_emulator("flyte", token=TOKEN)
    assert isinstance(emulator, FlyteEmulator)
    return emulator


@pytest.fixture
def client_options(emu: FlyteEmulator) -> dict[str, Any]:
    return {"project": PROJECT, "domain": DOMAIN, "console_url": emu.base_url}


def calls(emu: Emulator, method: str) -> int:
    return len(emu.requests_to("POST", f"/{method}"))


# -- a run's life ---------------------------------------------------------------------------------
async def test_launch_and_wait_on_one_watch_stream(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    emu.script(QUICK)
    ref = await client.launch(LAUNCH, key="dag.task.2026-11-25.0")
    assert ref.id == run_name_for_key("dag.task.2026-11-25.0")
    assert ref.scope == {"project": PROJECT, "domain": DOMAIN}
    status = await client.wait(ref, wait_timeout=10, check=True)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "ACTION_PHASE_SUCCEEDED")
    assert status.outputs["values"] == {"o0": 42, "o1": ["a", "b"]}
    assert status.outputs["uri"].endswith(f"/{ref.id}/a0/1/outputs.pb")
    assert status.url == f"{emu.base_url}/v2/domain/{DOMAIN}/project/{PROJECT}/runs/{ref.id}"
    assert status.created_at is not None and status.ended_at is not None
    assert status.ended_at > status.created_at
    (launch,) = emu.launches
    assert launch["taskId"] == {
        "project": PROJECT,
        "domain": DOMAIN,
        "name": "wf.main",
        "version": "v1",
    }
    assert [i["name"] for i in launch["inputs"]["literals"]] == ["n", "label"]
    assert calls(emu, "WatchActionDetails") == 1, "the whole wait rode one stream"
    assert calls(emu, "GetActionData") == 1


@pytest.mark.parametrize(
    ("final", "state", "message"),
    [
        ("failed", RunState.FAILED, "executor lost (user error)"),
        ("timed_out", RunState.TIMED_OUT, "executor lost (user error)"),
    ],
)
async def test_ends_unsuccessfully_with_the_platform_message(
    emu: FlyteEmulator, client: ClientUnderTest, final: str, state: RunState, message: str
) -> None:
    emu.script(Script([("running", 0.1)], final=final, message="executor lost"))
    status = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert (status.state, status.message) == (state, message)
    assert "values" not in status.outputs
    with pytest.raises(RunFailed, match="executor lost"):
        await client.wait(status.ref, wait_timeout=10, check=True)


async def test_cancel_aborts_the_run(emu: FlyteEmulator, client: ClientUnderTest) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    await client.cancel(ref)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "ACTION_PHASE_ABORTED")
    assert status.message == "aborted: aborted by runbridge"
    assert emu.cancels == [ref.id]
    await client.cancel(ref)  # aborting a run that ended changes nothing
    assert emu.phase(ref.id) == "ACTION_PHASE_ABORTED" and emu.cancels == [ref.id]


async def test_run_timeout_aborts_and_reports_timed_out(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, run_timeout=0.3)
    assert status.state is RunState.TIMED_OUT
    assert status.raw_state == "ACTION_PHASE_ABORTED"
    assert "run_timeout=0.3s" in (status.message or "")
    assert emu.cancels == [ref.id]


async def test_wait_timeout_leaves_the_run_going(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    with pytest.raises(WaitTimeout) as info:
        await client.wait(ref, wait_timeout=1.0)
    assert info.value.last_status is not None
    assert info.value.last_status.state in (RunState.PENDING, RunState.RUNNING)
    assert emu.cancels == []
    assert emu.phase(ref.id) == "ACTION_PHASE_RUNNING"


async def test_an_existing_run_is_waited_for_by_name(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    run = emu.add_run(QUICK, project=PROJECT, domain=DOMAIN)  # launched elsewhere: the sensor case
    ref = client.ref(run.id)
    assert ref.scope == {"project": PROJECT, "domain": DOMAIN}
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED and status.ref == ref


async def test_polling_without_the_watch(emu: FlyteEmulator, client: ClientUnderTest) -> None:
    emu.script(QUICK)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, use_join=False)
    assert status.state is RunState.SUCCEEDED
    assert calls(emu, "WatchActionDetails") == 0
    assert calls(emu, "GetRunDetails") >= 2


async def test_streams_closed_early_by_a_proxy_are_reopened(
    relay: Relay, client: ClientUnderTest
) -> None:
    emu = relay.swap(FlyteEmulator(token=TOKEN, stream_limit=0.05))
    emu.script(Script([("queued", 0.1), ("running", 0.3)]))
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert calls(emu, "WatchActionDetails") >= 2


# -- launching once --------------------------------------------------------------------------------
async def test_relaunch_with_the_same_key_reattaches(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    first = await client.launch(LAUNCH, key="same")
    second = await client.launch(LAUNCH, key="same")
    assert first == second
    assert len(emu.launches) == 1


@pytest.mark.parametrize("fault_kind", ["drop", "status"])
async def test_lost_launch_answer_launches_once(
    emu: FlyteEmulator, client: ClientUnderTest, fault_kind: str
) -> None:
    emu.script(QUICK)
    emu.inject(Fault(kind=fault_kind, status=503, when="after", path="/CreateRun"))
    ref = await client.launch(LAUNCH, key="dag.task.lost.0")
    assert len(emu.launches) == 1 and calls(emu, "CreateRun") == 1
    assert ref.id == run_name_for_key("dag.task.lost.0")
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.SUCCEEDED


async def test_a_name_taken_on_retry_is_found_not_duplicated(
    emu: FlyteEmulator, client: ClientUnderTest
) -> None:
    first = await client.launch(LAUNCH, key="k")
    again = await client.launch(LAUNCH, key="k", reuse=False)  # CreateRun -> already_exists
    assert again == first
    assert len(emu.launches) == 1 and calls(emu, "CreateRun") == 2


async def test_open_source_server_returns_the_existing_run(
    relay: Relay, client: ClientUnderTest
) -> None:
    emu = relay.swap(FlyteEmulator(token=TOKEN, duplicate="existing"))
    first = await client.launch(LAUNCH, key="k")
    again = await client.launch(LAUNCH, key="k", reuse=False)  # CreateRun answers the run
    assert again == first
    assert len(emu.launches) == 1 and calls(emu, "CreateRun") == 2


async def test_inputs_uploaded_first_as_the_sdk_does(connect, emu: FlyteEmulator) -> None:
    client = connect(upload_inputs=True)
    ref = await client.launch(LAUNCH, key="upload")
    (uri,) = emu.uploads
    assert emu.run(ref.id).inputs == emu.uploads[uri]
    assert emu.launches[0]["offloadedInputData"]["uri"] == uri
    assert "inputs" not in emu.launches[0]


# -- errors and faults ----------------------------------------------------------------------------------
async def test_wrong_token_is_an_auth_error(emu: FlyteEmulator, connect) -> None:
    client = connect(token="wrong-token")
    with pytest.raises(AuthError, match="unauthenticated: invalid token") as info:
        await client.get(client.ref("any"))
    assert info.value.status_code == 401
    assert "wrong-token" not in str(info.value)
    with pytest.raises(AuthError):
        await client.launch(LAUNCH)
    assert emu.launches == []


async def test_unknown_run_is_run_not_found(emu: FlyteEmulator, client: ClientUnderTest) -> None:
    with pytest.raises(RunNotFound, match="run not found: flytesnacks/development/no-such-run"):
        await client.get(client.ref("no-such-run"))
    with pytest.raises(RunNotFound):
        await client.wait(client.ref("no-such-run"), wait_timeout=5)


async def test_status_rides_out_503s(emu: FlyteEmulator, client: ClientUnderTest) -> None:
    emu.script(QUICK)
    ref = await client.launch(LAUNCH)
    emu.inject(Fault(kind="status", status=503, times=2, path="/GetRunDetails"))
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert emu.faults == []


# -- the Connect wire protocol, with plain httpx -----------------------------------------------------
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "content-type": "application/json", "connect-protocol-version": "1"}


def _stream_request(body: dict[str, Any], **headers: str) -> dict[str, Any]:
    return {
        "content": envelope(json.dumps(body).encode()),
        "headers": {**AUTH, "content-type": "application/connect+json", **headers},
    }


def test_unary_errors_are_connect_errors(emu: FlyteEmulator) -> None:
    with httpx.Client(base_url=emu.base_url) as http:
        missing = http.post(
            f"{RUN_SERVICE}/GetRunDetails",
            json={"runId": {"project": PROJECT, "domain": DOMAIN, "name": "nope"}},
            headers=JSON,
        )
        assert missing.status_code == 404
        assert missing.json() == {
            "code": "not_found",
            "message": f"run not found: {PROJECT}/{DOMAIN}/nope",
        }
        bad = http.post(f"{RUN_SERVICE}/GetRunDetails", json={}, headers=JSON)
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_argument")
        other = http.post(f"{RUN_SERVICE}/WatchRuns", json={}, headers=JSON)
        assert (other.status_code, other.json()["code"]) == (501, "unimplemented")
        assert http.post("/no.such.Service/Method", json={}, headers=JSON).status_code == 404
        noauth = http.post(
            f"{RUN_SERVICE}/GetRunDetails", json={}, headers={"content-type": "application/json"}
        )
        assert (noauth.status_code, noauth.json()["code"]) == (401, "unauthenticated")
        proto = http.post(
            f"{RUN_SERVICE}/GetRunDetails",
            content=b"",
            headers={**AUTH, "content-type": "application/proto"},
        )
        if proto_codec() is None:  # no flyteidl2 here: the binary codec is not served
            assert proto.status_code == 415
            assert proto.headers["accept-post"] == "application/json"
        else:  # an empty GetRunDetailsRequest: errors are JSON whatever the codec
            assert (proto.status_code, proto.json()["code"]) == (400, "invalid_argument")


def test_a_watch_is_a_stream_of_envelopes(emu: FlyteEmulator) -> None:
    run = emu.add_run(QUICK, project=PROJECT, domain=DOMAIN)
    action_id = {"run": {"project": PROJECT, "domain": DOMAIN, "name": run.id}, "name": "a0"}
    with httpx.Client(base_url=emu.base_url, timeout=10) as http:
        answer = http.post(
            f"{RUN_SERVICE}/WatchActionDetails", **_stream_request({"actionId": action_id})
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/connect+json"
    body = decode_stream(answer.content)
    phases = [m["details"]["status"]["phase"] for m in body.messages]
    assert phases[-1] == "ACTION_PHASE_SUCCEEDED"
    assert len(phases) == len(set(phases)) >= 2  # one message per phase change
    assert body.end == {}
    flags, length = struct.unpack_from(">BI", answer.content)
    assert flags == 0 and json.loads(answer.content[5 : 5 + length])["details"]["id"] == action_id


def test_stream_deadline_and_errors_end_the_stream(emu: FlyteEmulator) -> None:
    run = emu.add_run(LONG, project=PROJECT, domain=DOMAIN)
    run_id = {"project": PROJECT, "domain": DOMAIN, "name": run.id}
    with httpx.Client(base_url=emu.base_url, timeout=10) as http:
        timed = http.post(
            f"{RUN_SERVICE}/WatchRunDetails",
            **_stream_request({"runId": run_id}, **{"connect-timeout-ms": "150"}),
        )
        missing = http.post(
            f"{RUN_SERVICE}/WatchActionDetails",
            **_stream_request({"actionId": {"run": run_id, "name": "a1"}}),
        )
    body = decode_stream(timed.content)
    assert body.messages and body.messages[0]["details"]["action"]["status"]["phase"] in (
        "ACTION_PHASE_QUEUED",
        "ACTION_PHASE_RUNNING",
    )
    assert body.error is not None and body.error["code"] == "deadline_exceeded"
    assert missing.status_code == 200  # a stream reports errors in its end message
    gone = decode_stream(missing.content)
    assert gone.messages == [] and gone.error is not None and gone.error["code"] == "not_found"
