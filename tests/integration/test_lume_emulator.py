"""Both clients against the ``lume`` emulator on loopback (real uvicorn, real sockets), and the
emulator's webhook deliveries read back with ``runbridge.core.webhooks.parse_delivery``.

Short scripts and ``PollSchedule.fixed(0.05)`` keep the file fast; nothing here asserts on time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from runbridge.core import (
    AuthError,
    BadRequest,
    Conflict,
    Inbox,
    LaunchUncertain,
    NotSupported,
    PollSchedule,
    RetryPolicy,
    RunFailed,
    RunNotFound,
    RunState,
)
from runbridge.core.providers.lume import Lume
from runbridge.core.webhooks import WebhookError, parse_delivery
from runbridge.testing import Emulator, Relay, Script, serve_relay
from runbridge.testing.lume import SIGNATURE_HEADER, LumeEmulator
from tests.core.helpers import ClientUnderTest

pytestmark = pytest.mark.anyio

TOKEN = "lume-key-42"
SECRET = "whsec-test"
STEPS = [
    ("CREATED", 0.03),
    ("SYNCING_SOURCE", 0.03),
    ("TRANSFORMING", 0.05),
    ("SYNCING_TARGET", 0.03),
]
QUICK = Script(STEPS, final="SUCCEEDED")
LONG = Script([("CREATED", 0.05), ("TRANSFORMING", 30.0)])
LAUNCH = {"flow_version": "invoice_processor:v3", "source_path": "s3://invoices/batch-001.csv"}


class Receiver(Emulator):
    """A webhook endpoint: records each delivery's raw body and headers, answers 200 (or the
    queued statuses first)."""

    platform = "receiver"

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.answers: list[int] = []
        self.on_delivery: Callable[[str, bytes, dict[str, str]], None] | None = None

    def routes(self) -> list[BaseRoute]:
        return [Route("/hooks/{name}", self.hook, methods=["POST"])]

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((request.path_params["name"], body, dict(request.headers)))
            status = self.answers.pop(0) if self.answers else 200
        if self.on_delivery is not None:
            self.on_delivery(request.path_params["name"], body, dict(request.headers))
        return Response(status_code=status)


@pytest.fixture(scope="module")
def receiver_relay() -> Iterator[Relay]:
    with serve_relay() as relay:
        yield relay


@pytest.fixture
def receiver(receiver_relay: Relay) -> Iterator[Receiver]:
    yield receiver_relay.swap(Receiver())
    receiver_relay.target = None


@pytest.fixture
def emulator(receiver: Receiver) -> Iterator[LumeEmulator]:
    """A fresh Lume emulator whose webhooks go to ``receiver``, signed with SECRET."""
    emulator = LumeEmulator(
        token=TOKEN,
        script=QUICK,
        webhook_url=f"{receiver.base_url}/hooks/global",
        webhook_secret=SECRET,
        webhook_retry_delay=0.02,
    )
    yield emulator
    emulator.close()


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"retry": RetryPolicy(attempts=3, first=0.02, cap=0.1, jitter=0.0)}


# -- launch, get, wait ---------------------------------------------------------------------------
async def test_launch_and_wait_succeeded_with_typed_metadata(
    emu: LumeEmulator, client: ClientUnderTest
) -> None:
    ref = await client.launch({**LAUNCH, "run_metadata": {"team": "ap"}}, key="dag.task.1")
    assert ref.id.startswith("run_") and len(ref.id) == 30
    status = await client.wait(ref, wait_timeout=10, check=True)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "SUCCEEDED")
    assert status.outputs["source_path"] == LAUNCH["source_path"]
    assert status.outputs["run_metadata"] == {"team": "ap", "runbridge_key": "dag.task.1"}
    meta = Lume.metadata(status)
    assert meta.run.run_id == ref.id and meta.run.status == "SUCCEEDED"
    assert (meta.results.input_rows, meta.results.rejected_rows) == (100, 0)
    assert meta.results.target_locations.mapped is not None
    assert meta.pipeline.stages.transform_seconds == pytest.approx(0.05)
    assert status.created_at is not None and status.ended_at is not None
    assert status.ended_at >= status.created_at
    assert emu.requests_to("POST", "/runs")[0].headers["lume-api-key"] == TOKEN


@pytest.mark.parametrize(
    ("policy", "state"),
    [("fail", RunState.PARTIAL), ("accept", RunState.SUCCEEDED), (0.05, RunState.SUCCEEDED),
     (0.04, RunState.PARTIAL)],
)  # fmt: skip
async def test_partial_failed_follows_the_policy(
    emu: LumeEmulator, connect, policy: Any, state: RunState
) -> None:
    emu.script(Script(STEPS, final="PARTIAL_FAILED"))  # 5 of 100 rows rejected
    client = connect(partial=policy)
    status = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert (status.state, status.raw_state) == (state, "PARTIAL_FAILED")
    assert "5 of 100 rows rejected" in status.message
    if state is RunState.PARTIAL:
        with pytest.raises(RunFailed, match="PARTIAL"):
            await client.wait(status.ref, wait_timeout=10, check=True)
        accepted = await client.wait(
            status.ref, wait_timeout=10, check=True, success="succeeded,partial"
        )
        assert accepted.state is RunState.PARTIAL


@pytest.mark.parametrize("final", ["FAILED", "CRASHED"])
async def test_failed_and_crashed_are_failures_with_the_stage_error(
    emu: LumeEmulator, client: ClientUnderTest, final: str
) -> None:
    emu.script(Script(STEPS, final=final, message="column amount is missing"))
    ref = await client.launch(LAUNCH)
    with pytest.raises(RunFailed, match="column amount is missing") as info:
        await client.wait(ref, wait_timeout=10, check=True)
    status = info.value.status
    assert (status.state, status.raw_state) == (RunState.FAILED, final)
    assert Lume.metadata(status).errors[0].stage == "SYNCING_TARGET"


async def test_sensor_case_an_existing_run_by_id(
    emu: LumeEmulator, client: ClientUnderTest
) -> None:
    run = emu.add_run(QUICK, flow_version="f:v2", source_path="batch-7")
    first = await client.get(client.ref(run.id))
    assert first.state in (RunState.PENDING, RunState.RUNNING)
    done = await client.wait(client.ref(run.id), wait_timeout=10)
    assert done.state is RunState.SUCCEEDED and done.outputs["flow_version"] == "f:v2"


# -- refusals and errors -----------------------------------------------------------------------
async def test_lume_refuses_a_source_path_already_processed(
    emu: LumeEmulator, client: ClientUnderTest
) -> None:
    done = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    with pytest.raises(Conflict, match=f"already been processed.*{done.ref.id}"):
        await client.launch(LAUNCH)
    again = await client.launch({**LAUNCH, "force_rerun": True})
    assert again != done.ref and len(emu.runs) == 2


async def test_errors_name_the_problem(emu: LumeEmulator, connect) -> None:
    client = connect()
    with pytest.raises(RunNotFound, match="run_nope"):
        await client.get(client.ref("run_nope"))
    emu.flow_versions = {"known:v1"}
    with pytest.raises(BadRequest, match=r"Flow version 'f:v9' not found.*flow_version"):
        await client.launch({"flow_version": "f:v9", "source_path": "p"})
    with pytest.raises(BadRequest, match="webhook_url: Input should be a valid URL"):
        await client.launch({"flow_version": "known:v1", "source_path": "p", "webhook_url": "x"})
    with pytest.raises(NotSupported, match="cancelled"):
        await client.cancel(client.ref("run_x"))
    with pytest.raises(AuthError, match="API key") as info:
        await connect(token="wrong-key").get(client.ref("run_x"))
    assert "wrong-key" not in str(info.value) and info.value.status_code == 401


async def test_a_launch_whose_answer_is_lost_is_not_resent(
    emu: LumeEmulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="drop", method="POST", path="/runs", when="after")
    with pytest.raises(LaunchUncertain, match="not retried"):
        await client.launch(LAUNCH)
    assert len(emu.runs) == 1  # the run exists; runbridge did not start a second one


# -- webhooks ------------------------------------------------------------------------------------
async def test_a_delivery_reads_as_the_terminal_status(
    emu: LumeEmulator, receiver: Receiver, connect
) -> None:
    emu.script(Script(STEPS, final="PARTIAL_FAILED"))
    client = connect(partial=0.1)
    ref = await client.launch(LAUNCH)
    (delivery,) = emu.wait_for_deliveries(1)
    assert delivery.ok and delivery.attempt == 1
    ((name, body, headers),) = receiver.received
    assert name == "global" and headers["content-type"] == "application/json"
    status = parse_delivery(client.client.provider, body, headers, secret=SECRET)
    polled = await client.get(ref)
    assert status.ref == ref
    assert (status.state, status.raw_state) == (polled.state, polled.raw_state)
    assert status.state is RunState.SUCCEEDED  # 5 % rejected, policy 10 %
    assert status.message == polled.message
    assert Lume.metadata(status).results == Lume.metadata(polled).results
    assert json.loads(body)["event"] == "run.completed"
    with pytest.raises(WebhookError, match="does not match"):
        parse_delivery("lume", body, headers, secret="another-secret")
    with pytest.raises(WebhookError, match="missing"):
        parse_delivery("lume", body, {}, secret=SECRET)


async def test_a_run_can_name_its_own_webhook_url(
    emu: LumeEmulator, receiver: Receiver, client: ClientUnderTest
) -> None:
    emu.script(Script(STEPS, final="CRASHED"))
    ref = await client.launch({**LAUNCH, "webhook_url": f"{receiver.base_url}/hooks/mine"})
    emu.wait_for_deliveries(1)
    ((name, body, headers),) = receiver.received
    assert name == "mine"
    assert headers[SIGNATURE_HEADER.lower()].startswith("sha256=")
    status = parse_delivery("lume", body, headers, secret=SECRET)
    assert (status.ref, status.state, status.raw_state) == (ref, RunState.FAILED, "CRASHED")


@pytest.mark.parametrize("retries", [0, 2])
async def test_retries_are_off_unless_asked_for(
    emu: LumeEmulator, receiver: Receiver, client: ClientUnderTest, retries: int
) -> None:
    emu.webhook_retries = retries
    receiver.answers = [500, 503]
    await client.launch(LAUNCH)
    attempts = emu.wait_for_deliveries(retries + 1)
    assert [a.status_code for a in attempts] == [500, 503, 200][: retries + 1]
    assert len(receiver.received) == retries + 1


async def test_a_delivery_ends_the_wait_through_the_inbox(
    emu: LumeEmulator, receiver: Receiver, connect
) -> None:
    """The whole webhook path: the emulator delivers, the receiver feeds the client's inbox,
    and a wait whose next poll is an hour away ends at once, confirmed by one check."""
    inbox = Inbox()
    client = connect(poll=PollSchedule.fixed(3600.0), inbox=inbox)

    def deliver(name: str, body: bytes, headers: dict[str, str]) -> None:
        inbox.deliver(parse_delivery(client.client.provider, body, headers, secret=SECRET))

    receiver.on_delivery = deliver
    emu.script(Script([("CREATED", 0.1), ("TRANSFORMING", 0.4)], final="SUCCEEDED"))
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=600)
    assert status.state is RunState.SUCCEEDED
    assert len(emu.requests_to("GET", f"/runs/{ref.id}")) == 2  # before and after the delivery
