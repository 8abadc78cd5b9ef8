"""Both clients against the W&B emulator on loopback (real uvicorn, real sockets), with faults.

Short scripts, a 0.05 s Launch pickup and ``PollSchedule.fixed(0.05)`` keep the file fast;
nothing here asserts on time. The GraphQL engine of the emulator is checked directly at the end.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from runbridge.core import (
    AuthError,
    RunFailed,
    RunNotFound,
    RunRef,
    RunState,
    WaitTimeout,
)
from runbridge.core.providers.wandb import run_id_for_key
from runbridge.testing import Script, create_emulator
from runbridge.testing.wandb import DEFAULT_ENTITY, SCHEMA, WandBEmulator, execute
from tests.core.helpers import ClientUnderTest

pytestmark = pytest.mark.anyio

TOKEN = "wandb-emulator-key-0123456789abcdef0123456789"
PROJECT = "vision"
QUICK = Script([("running", 0.15)], final="finished", outputs={"val_loss": 0.12, "acc": 0.93})
LONG = Script([("running", 30.0)], final="finished")
LAUNCH = {"queue": "default", "entity": DEFAULT_ENTITY, "project": PROJECT, "docker_image": "t:1"}


@pytest.fixture
def emulator() -> WandBEmulator:
    emulator = create_emulator("wandb", token=TOKEN, pickup=0.05)
    assert isinstance(emulator, WandBEmulator)
    return emulator


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"app_url": "https://wandb.example"}


# -- an existing run (the sensor case) -----------------------------------------------------------
async def test_wait_on_an_existing_run_by_path(emu: WandBEmulator, client: ClientUnderTest) -> None:
    run = emu.add_run(QUICK, "r1", project=PROJECT)
    assert run.id == f"{DEFAULT_ENTITY}/{PROJECT}/r1"
    status = await client.wait("wandb:" + run.id, wait_timeout=10, check=True)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "finished")
    assert status.ref == RunRef("wandb", "r1", {"entity": DEFAULT_ENTITY, "project": PROJECT})
    assert status.outputs["summary"] == {"val_loss": 0.12, "acc": 0.93}
    assert status.url == f"https://wandb.example/{DEFAULT_ENTITY}/{PROJECT}/runs/r1"
    assert status.created_at is not None and status.ended_at is not None
    assert emu.calls("project") >= 2 and emu.calls("pushToRunQueueByName") == 0


@pytest.mark.parametrize(
    ("final", "state"),
    [
        ("failed", RunState.FAILED),
        ("crashed", RunState.FAILED),
        ("killed", RunState.CANCELLED),
        ("preempted", RunState.FAILED),
    ],
)
async def test_unsuccessful_ends(
    emu: WandBEmulator, client: ClientUnderTest, final: str, state: RunState
) -> None:
    run = emu.add_run(Script([("running", 0.1)], final=final), project=PROJECT)
    status = await client.wait("wandb:" + run.id, wait_timeout=10)
    assert (status.state, status.raw_state) == (state, final)
    with pytest.raises(RunFailed, match=final):
        await client.wait("wandb:" + run.id, wait_timeout=10, check=True)


async def test_preempted_wait_follows_a_resumed_run(emu: WandBEmulator, connect) -> None:
    steps = [("running", 0.1), ("preempting", 0.1), ("preempted", 0.2), ("running", 0.1)]
    run = emu.add_run(Script(steps, final="finished"), project=PROJECT)
    seen: list[str] = []
    patient = connect(preempted="wait")
    patient.client.hooks.append(lambda e: e.status and seen.append(e.status.raw_state))
    status = await patient.wait("wandb:" + run.id, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert "preempted" in seen and seen[-1] == "finished"
    emu.add_run(Script(steps, final="finished"), "r2", project=PROJECT)
    ended = await connect().wait(f"wandb:{DEFAULT_ENTITY}/{PROJECT}/r2", wait_timeout=10)
    assert (ended.state, ended.raw_state) == (RunState.FAILED, "preempted")


async def test_require_gates_a_finished_run(emu: WandBEmulator, connect) -> None:
    run = emu.add_run(QUICK, project=PROJECT)
    good = await connect(require="val_loss < 0.2 and acc >= 0.9").wait(
        "wandb:" + run.id, wait_timeout=10
    )
    assert good.state is RunState.SUCCEEDED
    strict = connect(require=["val_loss < 0.1", "f1 > 0.5"])
    with pytest.raises(RunFailed) as info:
        await strict.wait("wandb:" + run.id, wait_timeout=10, check=True)
    status = info.value.status
    assert (status.state, status.raw_state) == (RunState.FAILED, "finished")
    assert "val_loss < 0.1 failed: val_loss is 0.12" in str(info.value)
    assert "f1 > 0.5 failed: f1 not found in the run summary" in str(info.value)


async def test_unknown_run_and_bad_keys(emu: WandBEmulator, connect) -> None:
    emu.add_run(QUICK, project=PROJECT)
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        await connect().get(f"wandb:{DEFAULT_ENTITY}/{PROJECT}/nope")
    with pytest.raises(RunNotFound, match="no project"):
        await connect().get(f"wandb:{DEFAULT_ENTITY}/elsewhere/nope")
    with pytest.raises(AuthError, match="permission denied") as info:
        await connect(token="x" * 40).get(f"wandb:{DEFAULT_ENTITY}/{PROJECT}/r")
    assert info.value.status_code == 401 and "x" * 40 not in str(info.value)
    with pytest.raises(AuthError, match="not logged in"):
        await connect(token=None).get(f"wandb:{DEFAULT_ENTITY}/{PROJECT}/r")


# -- launch through W&B Launch -------------------------------------------------------------------
async def test_launch_follows_the_queue_item_into_its_run(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    emu.script(Script([("pending", 0.05), ("running", 0.1)], final="finished", outputs={"a": 1}))
    ref = await client.launch(LAUNCH, key="dag.train.1")
    assert ref.scope["kind"] == "queued" and ref.scope["queue"] == "default"
    run_id = run_id_for_key("dag.train.1")
    status = await client.wait(ref, wait_timeout=10, check=True)
    assert status.ref == RunRef("wandb", run_id, {"entity": DEFAULT_ENTITY, "project": PROJECT})
    assert status.outputs["summary"] == {"a": 1}
    (spec,) = emu.launches
    assert spec["run_id"] == run_id and spec["docker"] == {"docker_image": "t:1"}
    # the same key later: the run is found, nothing is pushed again
    again = await client.launch(LAUNCH, key="dag.train.1")
    assert again == status.ref and len(emu.launches) == 1


async def test_launch_and_wait_gated_on_the_summary(emu: WandBEmulator, connect) -> None:
    emu.script(Script([("running", 0.1)], final="finished", outputs={"val_loss": 0.4}))
    client = connect(require="val_loss < 0.2")
    status = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.FAILED, "finished")
    assert status.message == ("summary condition not met: val_loss < 0.2 failed: val_loss is 0.4")


async def test_a_failed_queue_item(emu: WandBEmulator, client: ClientUnderTest) -> None:
    emu.script(Script(final="FAILED"))
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state, status.ref) == (RunState.FAILED, "FAILED", ref)
    assert emu.runs == {}


async def test_a_lost_push_answer_finds_the_run_by_its_key(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    emu.pickup = 0.0  # an agent takes the item at once: the run exists when runbridge looks
    emu.inject(kind="drop", when="after", method="POST", path="/graphql")
    ref = await client.launch(LAUNCH, key="dag.lost.1", reuse=False)
    assert len(emu.launches) == 1
    assert ref.id == run_id_for_key("dag.lost.1") and "kind" not in ref.scope


async def test_a_lost_push_answer_before_an_agent_took_it(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    # The push is enqueued but its answer is lost, and no agent took the item yet: no run
    # exists, but the item carrying the key's run id is in the queue. find lists the queue's
    # items, finds it, and the launch re-attaches to it instead of pushing a second time.
    emu.pickup = 0.3
    emu.inject(kind="drop", when="after", method="POST", path="/graphql")
    ref = await client.launch(LAUNCH, key="dag.lost.2", reuse=False)
    assert len(emu.launches) == 1 and emu.calls("pushToRunQueueByName") == 1
    (queue,) = emu.queues.values()
    (item,) = queue.items.values()
    assert ref.id == item.id and ref.scope["kind"] == "queued"
    assert ref.scope["run_id"] == run_id_for_key("dag.lost.2")
    status = await client.wait(ref, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert status.ref.id == run_id_for_key("dag.lost.2") and "kind" not in status.ref.scope
    assert list(emu.runs) == [f"{DEFAULT_ENTITY}/{PROJECT}/{run_id_for_key('dag.lost.2')}"]


async def test_a_server_whose_items_show_no_spec_keeps_the_documented_window(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    # A server that refuses runSpec on a queue item: find cannot see the item, so the push is
    # sent again; both items carry the key's run id, so they still name one W&B run.
    del emu.schema["RunQueueItem"]["runSpec"]
    emu.pickup = 0.3
    emu.inject(kind="drop", when="after", method="POST", path="/graphql")
    ref = await client.launch(LAUNCH, key="dag.lost.3", reuse=False)
    assert len(emu.launches) == 2
    assert {spec["run_id"] for spec in emu.launches} == {run_id_for_key("dag.lost.3")}
    status = await client.wait(ref, wait_timeout=10)
    assert status.ref.id == run_id_for_key("dag.lost.3")
    assert list(emu.runs) == [f"{DEFAULT_ENTITY}/{PROJECT}/{run_id_for_key('dag.lost.3')}"]


async def test_a_relaunch_with_the_key_re_attaches_to_the_queued_item(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    emu.pickup = 30.0  # no agent takes it during the test
    first = await client.launch(LAUNCH, key="dag.again.1")
    again = await client.launch(LAUNCH, key="dag.again.1")
    assert again == first and len(emu.launches) == 1
    await client.cancel(again)  # deleted from its queue
    status = await client.get(first)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "deleted")


async def test_transient_errors_are_ridden_out(emu: WandBEmulator, client: ClientUnderTest) -> None:
    run = emu.add_run(QUICK, project=PROJECT)
    emu.inject(kind="status", status=503, times=2, method="POST", path="/graphql")
    emu.inject(kind="malformed", times=1, method="POST", path="/graphql")
    status = await client.wait("wandb:" + run.id, wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    assert emu.faults == []


# -- stop ------------------------------------------------------------------------------------------
async def test_cancel_stops_a_run(emu: WandBEmulator, client: ClientUnderTest) -> None:
    run = emu.add_run(LONG, project=PROJECT)
    await client.cancel(client.ref(run.id))
    status = await client.wait("wandb:" + run.id, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "killed")
    assert emu.stops == [run.id] and run.data["stopped"] is True
    await client.cancel(client.ref(run.id))  # already over: nothing is sent
    assert emu.stops == [run.id]


async def test_cancel_a_launch_still_in_the_queue(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    emu.pickup = 60.0
    ref = await client.launch(LAUNCH)
    await client.cancel(ref)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "deleted")
    assert emu.cancels == [ref.id] and emu.runs == {}


async def test_run_timeout_stops_a_launched_run(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, run_timeout=0.3)
    assert (status.state, status.raw_state) == (RunState.TIMED_OUT, "killed")
    assert len(emu.stops) == 1


async def test_wait_timeout_leaves_the_run_going(
    emu: WandBEmulator, client: ClientUnderTest
) -> None:
    run = emu.add_run(LONG, project=PROJECT)
    with pytest.raises(WaitTimeout) as info:
        await client.wait("wandb:" + run.id, wait_timeout=0.2)
    assert info.value.last_status is not None
    assert info.value.last_status.state is RunState.RUNNING
    assert emu.stops == []


# -- the GraphQL engine --------------------------------------------------------------------------
def run_query(emu: WandBEmulator, document: str, **variables: Any) -> dict[str, Any]:
    answer, _, _ = execute(document, variables, None, emu._roots(), emu.schema)
    return answer


def test_answers_exactly_the_selection_with_aliases_and_fragments() -> None:
    emu = WandBEmulator()
    emu.add_run(QUICK, "r1", project=PROJECT, state="running")
    answer = run_query(
        emu,
        """query Q($p: String!) {
             mine: project(name: $p, entityName: "runbridge") {
               a: run(name: "r1") { ...F __typename }
               b: run(name: "nope") { state }
             }
           }
           fragment F on Run { state summaryMetrics }""",
        p=PROJECT,
    )
    assert answer == {
        "data": {
            "mine": {
                "a": {
                    "state": "running",
                    "summaryMetrics": json.dumps(QUICK.outputs),
                    "__typename": "Run",
                },
                "b": None,
            }
        }
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{ project(name: "x") { run(name: "r") { bogus } } }', 'Cannot query field "bogus"'),
        ('{ project(name: "x", bad: 1) { id } }', 'Unknown argument "bad" on field'),
        ('{ project(name: "x") }', "must have a selection of subfields"),
        ("{ viewer { id { x } } }", "must not have a selection"),
        ("query Q($a: String!) { viewer { id } }", 'Variable "$a" of required type'),
        ("{ project(name: $p) { id } }", 'Variable "$p" is not defined'),
        ("{ viewer { ...Nope } }", 'Unknown fragment "Nope"'),
        ("{ viewer { id }", "Syntax Error"),
    ],
)
def test_invalid_documents_are_refused_before_anything_runs(document: str, message: str) -> None:
    emu = WandBEmulator()
    answer = run_query(emu, document)
    assert "data" not in answer
    assert message in answer["errors"][0]["message"]


def test_the_schema_matches_the_sdk_documents() -> None:
    # the payload type name the SDK itself quotes (wandb/sdk/launch/api.py:118-122)
    assert "runSpec" in SCHEMA["PushToRunQueueByNamePayload"]
    legacy = WandBEmulator(legacy_push=True)
    answer = run_query(
        legacy,
        'mutation { pushToRunQueueByName(input: {queueName: "default", runSpec: "{}"}) '
        "{ runQueueItemId runSpec } }",
    )
    assert answer["errors"][0]["message"] == (
        'Cannot query field "runSpec" on type "PushToRunQueueByNamePayload".'
    )
    assert legacy.launches == []  # refused before it ran
