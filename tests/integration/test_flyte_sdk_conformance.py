"""Conformance of the Flyte emulator and provider with the vendor SDK (``flyte`` 2.12, ``flyteidl2``).

The SDK is the reference client. Pointed at the emulator (``flyte.init(endpoint=...,
insecure=True)``), it speaks Connect with **binary protobuf** and gzip, which the emulator serves
through the real ``flyteidl2`` message types; runbridge speaks Connect **JSON** to the same
emulator. Both must read the same run: name, phase, URL, outputs, error and abort reason.
Then every JSON body runbridge sends, and every JSON body the emulator answers, must parse
strictly (no unknown field) into the real ``flyteidl2`` message, and runbridge's tables must
cover the SDK's enums and Connect's codes.

Skipped when ``flyte`` is not installed (see docs/platforms/flyte.md for the dependency line).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("flyte")
pytest.importorskip("flyteidl2")

import flyte
import flyte.remote
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cluster import payload_pb2 as cluster_pb2
from flyteidl2.common import phase_pb2
from flyteidl2.core import literals_pb2
from flyteidl2.dataproxy import dataproxy_service_pb2 as dataproxy_pb2
from flyteidl2.workflow import run_service_pb2
from google.protobuf import json_format

from runbridge import LaunchSpec, RunClient, RunNotFound, RunRef, RunState
from runbridge.core.providers.flyte import (
    CONNECT_CODES,
    PHASES,
    STATES,
    Flyte,
    decode_stream,
    envelope,
    from_literal,
    to_literal,
)
from runbridge.core.schedule import PollSchedule
from runbridge.testing import Script, serve
from runbridge.testing.flyte import FlyteEmulator
from tests.core.providers.stepper import Canned, step

PROJECT, DOMAIN = "flytesnacks", "development"
QUICK = Script(
    [("queued", 0.1), ("running", 0.3)], final="succeeded", outputs={"o0": 42, "o1": "hi"}
)
# long enough in its first phase that both clients read it there on a loaded CI machine
SLOW_START = Script(
    [("queued", 1.5), ("running", 0.3)], final="succeeded", outputs={"o0": 42, "o1": "hi"}
)
LONG = Script([("queued", 0.05), ("running", 30.0)])


@pytest.fixture(scope="module")
def emu() -> Iterator[FlyteEmulator]:
    with serve("flyte") as emulator:
        assert isinstance(emulator, FlyteEmulator)
        port = emulator.base_url.rsplit(":", 1)[1]
        # "localhost" rather than 127.0.0.1: the SDK takes the first label of a dotted host
        # with more than two dots as the org ("127"); the emulator would ignore it anyway.
        flyte.init(
            endpoint=f"dns:///localhost:{port}", insecure=True, project=PROJECT, domain=DOMAIN
        )
        yield emulator


@pytest.fixture
def client(emu: FlyteEmulator) -> Iterator[RunClient]:
    port = emu.base_url.rsplit(":", 1)[1]
    with RunClient(
        "flyte",
        emu.base_url,
        project=PROJECT,
        domain=DOMAIN,
        version="v1",
        poll=PollSchedule.fixed(0.05),
    ) as rb:
        assert isinstance(rb.provider, Flyte)
        rb.provider.base_url = f"http://localhost:{port}"  # as the SDK's endpoint, for the URL
        yield rb


def phase(sdk_run: Any) -> str:
    name: str = phase_pb2.ActionPhase.Name(sdk_run.raw_phase)
    return name


# -- the SDK and runbridge read the same run --------------------------------------------------
def test_both_read_the_same_run_from_queued_to_outputs(
    emu: FlyteEmulator, client: RunClient
) -> None:
    emu.script(SLOW_START)
    run = emu.add_run(project=PROJECT, domain=DOMAIN, task={"name": "wf.main", "version": "v1"})
    sdk_run = flyte.remote.Run.get(run.id)
    status = client.get(client.ref(run.id))
    assert sdk_run.name == status.ref.id == run.id
    assert phase(sdk_run) == status.raw_state == "ACTION_PHASE_QUEUED"
    assert status.state is RunState.PENDING
    assert status.url == sdk_run.url
    sdk_run.wait(quiet=True)  # the SDK's watch: WatchActionDetails as a connect+proto stream
    final = client.wait(status.ref, wait_timeout=10)
    assert phase(sdk_run) == final.raw_state == "ACTION_PHASE_SUCCEEDED"
    assert sdk_run.done() and final.state is RunState.SUCCEEDED
    outputs = sdk_run.outputs()  # SelectCluster, then DataProxyService/GetActionData
    sdk_values = {
        literal.name: from_literal(json_format.MessageToDict(literal.value))
        for literal in outputs.pb2.literals
    }
    assert sdk_values == final.outputs["values"] == {"o0": 42, "o1": "hi"}


def test_a_failed_run_has_the_same_error(emu: FlyteEmulator, client: RunClient) -> None:
    emu.script(Script([("running", 0.05)], final="failed", message="ValueError: bad row"))
    run = emu.add_run(project=PROJECT, domain=DOMAIN)
    status = client.wait(client.ref(run.id), wait_timeout=10)
    details = flyte.remote.Run.get(run.id).details()
    assert details.done()
    assert status.state is RunState.FAILED
    assert status.message == f"{details.action_details.error_info.message} (user error)"


def test_runbridge_launch_and_cancel_as_the_sdk_sees_them(
    emu: FlyteEmulator, client: RunClient
) -> None:
    emu.script(LONG, LONG)
    ref = client.launch({"task": "wf.main", "inputs": {"n": 1}}, key="conformance-abort")
    sdk_run = flyte.remote.Run.get(ref.id)
    assert sdk_run.name == ref.id and not sdk_run.done()
    client.cancel(ref)
    after = flyte.remote.Run.get(ref.id)
    assert phase(after) == "ACTION_PHASE_ABORTED"
    assert after.details().action_details.pb2.abort_info.reason == "aborted by runbridge"
    # and the other way round: the SDK aborts, runbridge reads the reason
    other = client.launch({"task": "wf.main"}, key="conformance-sdk-abort")
    flyte.remote.Run.get(other.id).abort("stopped from the SDK")
    status = client.get(other)
    assert (status.state, status.message) == (RunState.CANCELLED, "aborted: stopped from the SDK")


def test_an_unknown_run_is_not_found_for_both(client: RunClient) -> None:
    with pytest.raises(ConnectError) as info:
        flyte.remote.Run.get("no-such-run")
    assert info.value.code == Code.NOT_FOUND
    with pytest.raises(RunNotFound, match=info.value.message):
        client.get(client.ref("no-such-run"))


# -- what runbridge sends parses into the real request messages ----------------------------------
def strict(body: Any, message: Any) -> Any:
    return json_format.ParseDict(body, message, ignore_unknown_fields=False)


def test_runbridge_requests_are_valid_messages() -> None:
    literal_inputs = {
        "i": 2**40,
        "f": 1.5,
        "nan": float("nan"),
        "s": "x",
        "b": True,
        "none": None,
        "xs": [1, 2],
        "m": {"a": [True]},
    }
    for upload in (False, True):
        provider = Flyte(project=PROJECT, domain=DOMAIN, org="acme", upload_inputs=upload)
        spec = LaunchSpec({"task": "t", "version": "v", "inputs": literal_inputs}, key="k")
        answers = [Canned(body={"offloadedInputData": {"uri": "s3://b/i"}})] if upload else []
        answers.append(
            Canned(
                body={
                    "run": {"action": {"id": {"run": {"project": "p", "domain": "d", "name": "n"}}}}
                }
            )
        )
        requests, _ = step(provider.launch(spec), *answers)
        create = strict(requests[-1].json, run_service_pb2.CreateRunRequest())
        assert create.run_id.name and create.task_id.version == "v"
        assert create.WhichOneof("input_wrapper") == (
            "offloaded_input_data" if upload else "inputs"
        )
        if upload:
            uploaded = strict(requests[0].json, dataproxy_pb2.UploadInputsRequest())
            assert {lit.name for lit in uploaded.inputs.literals} == set(literal_inputs)
        else:
            assert create.inputs.literals[0].value.scalar.primitive.integer == 2**40
    ref = RunRef("flyte", "r1", {"project": PROJECT, "domain": DOMAIN, "org": "acme"})
    provider = Flyte()
    requests, _ = step(provider.status(ref), Canned(body={"details": {"action": {"status": {}}}}))
    assert strict(requests[0].json, run_service_pb2.GetRunDetailsRequest()).run_id.org == "acme"
    requests, _ = step(provider.cancel(ref), Canned(body={}))
    assert (
        strict(requests[0].json, run_service_pb2.AbortRunRequest()).reason == "aborted by runbridge"
    )
    join = provider.join(ref, 10.0)
    assert join is not None
    watch = next(join)
    join.close()
    (message,) = decode_stream((watch.content or b"") + envelope(b"{}", 0x02)).messages
    assert strict(message, run_service_pb2.WatchActionDetailsRequest()).action_id.name == "a0"
    data = {"actionId": {"run": provider._run_id(ref), "name": "a0"}}
    strict(data, dataproxy_pb2.GetActionDataRequest())


def test_literals_are_valid_and_read_back_like_the_sdk_writes_them() -> None:
    for value in (
        0,
        -(2**63),
        2**63 - 1,
        0.1,
        float("inf"),
        "",
        "ü",
        False,
        None,
        [],
        {},
        [[1], {"k": None}],
    ):
        literal = strict(to_literal(value), literals_pb2.Literal())
        assert from_literal(json_format.MessageToDict(literal)) == value or value != value


# -- what the emulator answers parses into the real response messages ------------------------------
def test_emulator_answers_are_valid_messages(emu: FlyteEmulator) -> None:
    headers = {"content-type": "application/json", "connect-protocol-version": "1"}
    for final in ("succeeded", "failed", "timed_out", "aborted", "recovered"):
        emu.script(Script([("running", 0.05)], final=final, message="m", outputs={"o0": [1.5]}))
        run = emu.add_run(
            project=PROJECT, domain=DOMAIN, task={"name": "t", "version": "v"}, inputs={"x": 1}
        )
        run_id = {"project": PROJECT, "domain": DOMAIN, "name": run.id}
        action_id = {"run": run_id, "name": "a0"}
        with httpx.Client(base_url=emu.base_url, timeout=10) as http:
            stream_headers = {"content-type": "application/connect+json"}
            watched = http.post(
                "/flyteidl2.workflow.RunService/WatchActionDetails",
                content=envelope(json.dumps({"actionId": action_id}).encode()),
                headers=stream_headers,
            )
            for message in decode_stream(watched.content).messages:
                strict(message, run_service_pb2.WatchActionDetailsResponse())
            watched_run = http.post(
                "/flyteidl2.workflow.RunService/WatchRunDetails",
                content=envelope(json.dumps({"runId": run_id}).encode()),
                headers=stream_headers,
            )
            for message in decode_stream(watched_run.content).messages:
                strict(message, run_service_pb2.WatchRunDetailsResponse())
            got = http.post(
                "/flyteidl2.workflow.RunService/GetRunDetails",
                json={"runId": run_id},
                headers=headers,
            )
            details = strict(got.json(), run_service_pb2.GetRunDetailsResponse()).details
            assert phase_pb2.ActionPhase.Name(details.action.status.phase) == emu.phase(run.id)
            got = http.post(
                "/flyteidl2.workflow.RunService/GetActionDetails",
                json={"actionId": action_id},
                headers=headers,
            )
            strict(got.json(), run_service_pb2.GetActionDetailsResponse())
            got = http.post(
                "/flyteidl2.dataproxy.DataProxyService/GetActionData",
                json={"actionId": action_id},
                headers=headers,
            )
            data = strict(got.json(), dataproxy_pb2.GetActionDataResponse())
            assert bool(data.outputs.literals) == (final == "succeeded")
    with httpx.Client(base_url=emu.base_url, timeout=10) as http:
        task_id = {"project": PROJECT, "domain": DOMAIN, "name": "t", "version": "v"}
        uploaded = http.post(
            "/flyteidl2.dataproxy.DataProxyService/UploadInputs",
            json={
                "projectId": {"name": PROJECT, "domain": DOMAIN},
                "taskId": task_id,
                "inputs": {},
            },
            headers=headers,
        )
        offloaded = strict(
            uploaded.json(), dataproxy_pb2.UploadInputsResponse()
        ).offloaded_input_data
        created = http.post(
            "/flyteidl2.workflow.RunService/CreateRun",
            json={
                "projectId": {"name": PROJECT, "domain": DOMAIN},
                "taskId": task_id,
                "offloadedInputData": json_format.MessageToDict(offloaded),
            },
            headers=headers,
        )
        assert (
            strict(created.json(), run_service_pb2.CreateRunResponse()).run.action.id.name == "a0"
        )
        assert (
            strict(
                http.post(
                    "/flyteidl2.workflow.RunService/AbortRun",
                    json={"runId": {"project": PROJECT, "domain": DOMAIN, "name": run.id}},
                    headers=headers,
                ).json(),
                run_service_pb2.AbortRunResponse(),
            )
            == run_service_pb2.AbortRunResponse()
        )
        selected = http.post(
            "/flyteidl2.cluster.ClusterService/SelectCluster", json={}, headers=headers
        )
        assert (
            strict(selected.json(), cluster_pb2.SelectClusterResponse()).cluster_endpoint
            == emu.base_url
        )


# -- runbridge's tables cover the SDK's enums and Connect's codes ---------------------------------------
def test_every_phase_the_sdk_defines_is_mapped_with_its_terminality() -> None:
    from flyte.remote._action import _action_done_check  # the SDK's own "is it done?"

    enum = {value.name: value.number for value in phase_pb2.ActionPhase.DESCRIPTOR.values}
    assert set(STATES) == set(enum)
    assert {number: name for name, number in enum.items()} == PHASES
    for name, number in enum.items():
        assert STATES[name].is_terminal == _action_done_check(number), name
    assert STATES["ACTION_PHASE_RECOVERED"] is RunState.SUCCEEDED  # "success-equivalent"


def test_every_connect_code_is_mapped_with_its_http_status() -> None:
    from connectrpc._protocol import ConnectWireError

    assert set(CONNECT_CODES) == {code.value for code in Code}
    for code in Code:
        status = ConnectWireError(code, "", ()).to_http_status().code
        assert CONNECT_CODES[code.value][0] == status, code


# -- runbridge against a real Connect server built from flyteidl2 (not our emulator) -------------
def test_runbridge_speaks_connect_json_to_the_generated_flyteidl2_server() -> None:
    """The generated ``RunServiceASGIApplication`` (connect-python's server runtime) accepts what
    runbridge sends, Connect JSON unary and server-streaming calls, and its answers read back."""
    import asyncio
    import socket
    import threading
    import time

    import uvicorn
    from flyteidl2.common import identifier_pb2
    from flyteidl2.workflow import run_definition_pb2, run_service_connect

    runs: dict[str, int] = {}
    aborted: list[str] = []

    def action(run_id: Any) -> Any:
        phase_number = runs[run_id.name]
        return run_definition_pb2.ActionDetails(
            id=identifier_pb2.ActionIdentifier(run=run_id, name="a0"),
            status=run_definition_pb2.ActionStatus(phase=phase_number),  # type: ignore[arg-type]
        )

    class Service(run_service_connect.RunService):
        async def create_run(self, request: Any, ctx: Any) -> Any:
            runs[request.run_id.name] = phase_pb2.ACTION_PHASE_QUEUED
            action_id = identifier_pb2.ActionIdentifier(run=request.run_id, name="a0")
            return run_service_pb2.CreateRunResponse(
                run=run_definition_pb2.Run(action=run_definition_pb2.Action(id=action_id))
            )

        async def get_run_details(self, request: Any, ctx: Any) -> Any:
            if request.run_id.name not in runs:
                raise ConnectError(Code.NOT_FOUND, "run not found")
            return run_service_pb2.GetRunDetailsResponse(
                details=run_definition_pb2.RunDetails(action=action(request.run_id))
            )

        async def abort_run(self, request: Any, ctx: Any) -> Any:
            runs[request.run_id.name] = phase_pb2.ACTION_PHASE_ABORTED
            aborted.append(request.reason)
            return run_service_pb2.AbortRunResponse()

        async def watch_action_details(self, request: Any, ctx: Any) -> Any:
            for phase_number in (phase_pb2.ACTION_PHASE_RUNNING, phase_pb2.ACTION_PHASE_FAILED):
                await asyncio.sleep(0.05)
                runs[request.action_id.run.name] = phase_number
                yield run_service_pb2.WatchActionDetailsResponse(
                    details=action(request.action_id.run)
                )

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            run_service_connect.RunServiceASGIApplication(Service()),
            log_level="warning",
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with RunClient("flyte", url, project=PROJECT, domain=DOMAIN, version="v1") as rb:
            ref = rb.launch({"task": "wf.main", "inputs": {"n": 1}}, key="real-connect")
            assert rb.get(ref).raw_state == "ACTION_PHASE_QUEUED"
            final = rb.wait(ref, wait_timeout=10)  # one WatchActionDetails stream, JSON envelopes
            assert (final.state, final.raw_state) == (RunState.FAILED, "ACTION_PHASE_FAILED")
            rb.cancel(ref)
            assert aborted == ["aborted by runbridge"] and rb.get(ref).state is RunState.CANCELLED
            with pytest.raises(RunNotFound, match="not_found: run not found"):
                rb.get(rb.ref("missing"))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
