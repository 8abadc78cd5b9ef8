"""Conformance of the Vi emulator and the ``vi`` provider with the vendor SDK (``vi-sdk``).

The official client is pointed at the emulator (``vi.Client(endpoint=...)``) and must read the
same run and state as runbridge: runs launched by either, killed by the other, listed page by
page, and the errors. The SDK's msgspec structs reject a document whose shape is wrong (a
missing required field, a condition status outside Waiting/Reached/FailedReach, a ``kind`` other
than "Run"), so every successful SDK call below also checks the emulator's JSON.

Skipped where ``vi-sdk`` is not installed; see docs/platforms/vi.md §9.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

vi = pytest.importorskip("vi")

import msgspec  # noqa: E402
from vi.api.responses import Condition, ConditionStatus  # noqa: E402

from runbridge.core import (  # noqa: E402
    AsyncRunClient,
    PollSchedule,
    RunClient,
    RunNotFound,
    RunState,
    RunStatus,
)
from runbridge.core.providers.vi import METADATA_KEY, Vi  # noqa: E402
from runbridge.testing import Script, serve  # noqa: E402
from runbridge.testing.vi import DEFAULT_FLOW, ViEmulator  # noqa: E402

ORG = "org-conformance"
TOKEN = "dtvi_" + "c" * 98  # the SDK checks the format: "dtvi_" and 103 characters
QUICK = Script([("Pending", 0.05), ("Running", 0.15)], final="Succeeded")
LONG = Script([("Pending", 0.05), ("Running", 30.0)])
FLOW = {**DEFAULT_FLOW, "name": "conformance-flow"}


@pytest.fixture
def emu() -> Iterator[ViEmulator]:
    with serve("vi", token=TOKEN, organization_id=ORG) as emulator:
        assert isinstance(emulator, ViEmulator)
        yield emulator


@pytest.fixture
def sdk(emu: ViEmulator, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("HOME", str(tmp_path))  # the SDK's config and log folders
    for name in (
        "DATATURE_VI_SECRET_KEY",
        "DATATURE_VI_ORGANIZATION_ID",
        "DATATURE_VI_API_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return vi.Client(
        secret_key=TOKEN,
        organization_id=ORG,
        endpoint=emu.base_url,
        logging_config=vi.LoggingConfig(enable_file=False, enable_console=False),
        max_retries=1,
    )


@pytest.fixture
def rb(emu: ViEmulator) -> Iterator[RunClient]:
    with RunClient(
        "vi", emu.base_url, TOKEN, organization_id=ORG, poll=PollSchedule.fixed(0.05)
    ) as client:
        yield client


def list_runs(client: RunClient, **kwargs: Any) -> list[RunStatus]:
    assert isinstance(client.provider, Vi)
    return client.list(**kwargs)


def assert_same_run(sdk_run: Any, status: RunStatus) -> None:
    """The SDK's Run and runbridge's RunStatus describe the same run in the same state."""
    assert sdk_run.run_id == status.ref.id
    assert sdk_run.organization_id == status.ref.scope["organization_id"]
    latest = sdk_run.status.conditions[-1]  # the docs' reading of the state
    assert latest.condition.value == status.raw_state
    assert msgspec.to_builtins(sdk_run.spec.flow) == status.outputs["flow"]
    assert sdk_run.spec.training_project == status.outputs["training_project"]
    assert sdk_run.spec.killed_at == status.outputs["killed_at"]
    assert (sdk_run.status.log or None) == status.outputs["log_url"]
    assert sdk_run.metadata.attributes == status.outputs["attributes"]
    assert status.created_at is not None
    assert sdk_run.metadata.time_created == int(status.created_at.timestamp() * 1000)


def test_sdk_reads_a_run_runbridge_launched(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    emu.script(Script([("Running", 30.0)]), QUICK)
    going = rb.launch({"flow": FLOW}, key="dag.t.0")
    running = rb.get(going)
    assert running.state is RunState.RUNNING
    assert_same_run(sdk.runs.get(going.id), running)
    ref = rb.launch(
        {"flow": FLOW, "training_project": "tp-1", "metadata": {"team": "cv"}}, key="dag.t.1"
    )
    final = rb.wait(ref, wait_timeout=10)
    sdk_run = sdk.runs.get(ref.id)
    assert_same_run(sdk_run, final)
    assert final.state is RunState.SUCCEEDED
    assert [c.condition.value for c in sdk_run.status.conditions] == [
        "Pending",
        "Running",
        "Succeeded",
    ]
    assert all(c.status is ConditionStatus.REACHED for c in sdk_run.status.conditions)
    assert sdk_run.metadata.attributes == {"team": "cv", METADATA_KEY: "dag.t.1"}
    # runbridge takes the selfLink for the id; the SDK's link parser would too, but its id
    # check (^[a-zA-Z0-9_-]+$) runs first and refuses it
    assert rb.get(f"vi:{sdk_run.self_link}").ref == ref
    with pytest.raises(vi.ViInvalidParameterError):
        sdk.runs.get(sdk_run.self_link)


def test_runbridge_reads_a_run_the_sdk_created(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    emu.script(QUICK)
    created = sdk.runs.create(flow=FLOW, training_project="tp-2", metadata={"a": "b"})
    assert uuid.UUID(created.run_id).version == 4  # the SDK chooses the id
    status = rb.wait(rb.ref(created.run_id), wait_timeout=10)
    assert_same_run(sdk.runs.get(created.run_id), status)
    assert status.outputs["flow"] == FLOW
    # the SDK's PUT and runbridge's have the same shape
    (put,) = emu.requests_to("PUT")
    assert put.path == f"/workspaces/{ORG}/runs/{created.run_id}"
    assert put.body == {
        "spec": {"flow": FLOW, "trainingProject": "tp-2"},
        "metadata": {"attributes": {"a": "b"}},
    }
    assert put.headers["authorization"] == f"Bearer {TOKEN}"
    assert put.headers["organization-id"] == ORG
    assert put.headers["user-agent"].startswith("vi/0.1.0b7 ")
    rb.launch({"flow": FLOW, "training_project": "tp-2", "metadata": {"a": "b"}}, key="k")
    ours = emu.requests_to("PUT")[-1]
    assert ours.body["spec"] == put.body["spec"]
    assert set(ours.headers) >= {"authorization", "organization-id"}


def test_sdk_kill_is_seen_by_runbridge(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    emu.script(LONG)
    created = sdk.runs.start(flow=FLOW)
    killed = sdk.runs.kill(created.run_id)
    assert isinstance(killed.spec.killed_at, int)
    status = rb.wait(rb.ref(created.run_id), wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "Cancelled")
    assert status.outputs["killed_at"] == killed.spec.killed_at
    assert_same_run(sdk.runs.get(created.run_id), status)
    # runbridge's kill request is the SDK's
    rb_ref = rb.launch({"flow": FLOW}, key="k")
    emu.script(LONG)
    rb.cancel(rb_ref)
    sdk_patch, rb_patch = emu.requests_to("PATCH")
    assert set(sdk_patch.body["spec"]) == set(rb_patch.body["spec"]) == {"killedAt"}
    assert set(sdk_patch.body) == set(rb_patch.body) == {"spec"}


def test_runbridge_kill_is_seen_by_the_sdk(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    emu.script(LONG)
    ref = rb.launch({"flow": FLOW})
    rb.cancel(ref)
    status = rb.wait(ref, wait_timeout=10)
    sdk_run = sdk.runs.get(ref.id)
    assert sdk_run.status.conditions[-1].condition.value == "Cancelled"
    assert sdk_run.spec.killed_at == status.outputs["killed_at"] is not None
    assert_same_run(sdk_run, status)


@pytest.mark.parametrize("final", ["Failed", "Error"])
def test_failures_read_alike(emu: ViEmulator, sdk: Any, rb: RunClient, final: str) -> None:
    emu.script(Script([("Running", 0.05)], final=final, message="dataset is empty"))
    ref = rb.launch({"flow": FLOW})
    status = rb.wait(ref, wait_timeout=10)
    latest = sdk.runs.get(ref.id).status.conditions[-1]
    assert (latest.condition.value, latest.message) == (final, status.message)
    assert status.state is RunState.FAILED


def test_generic_conditions_decode_in_the_sdk(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    run = emu.add_run(Script([("Started/Reached", 0.05)], final="Finished/FailedReach"))
    status = rb.wait(rb.ref(run.id), wait_timeout=10)
    latest = sdk.runs.get(run.id).status.conditions[-1]
    assert (latest.condition, latest.status) == (Condition.FINISHED, ConditionStatus.FAILED_REACH)
    assert (status.raw_state, status.state) == ("Finished/FailedReach", RunState.FAILED)


def test_listing_agrees_page_by_page(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    ids = [emu.add_run(LONG, f"run-{i}").id for i in range(5)]
    sdk_ids = [run.run_id for run in sdk.runs.list(pagination={"page_size": 2}).all_items()]
    sdk_pages = [r.query for r in emu.requests_to("GET", f"/workspaces/{ORG}/runs")]
    emu.requests.clear()
    ours = list_runs(rb, limit=None, page_size=2)
    our_pages = [r.query for r in emu.requests_to("GET", f"/workspaces/{ORG}/runs")]
    assert sdk_ids == [s.ref.id for s in ours] == ids[::-1]
    assert len(sdk_pages) == len(our_pages) == 3
    assert sdk_pages[0] == "s=2" and "p=" in sdk_pages[1]
    assert {tuple(sorted(q.split("&"))) for q in sdk_pages} == {
        tuple(sorted(q.split("&"))) for q in our_pages
    }


def test_errors_read_alike(emu: ViEmulator, sdk: Any, rb: RunClient, tmp_path: Any) -> None:
    with pytest.raises(vi.ViNotFoundError) as sdk_missing:
        sdk.runs.get("no-such-run")
    with pytest.raises(RunNotFound) as rb_missing:
        rb.get(rb.ref("no-such-run"))
    assert sdk_missing.value.message == rb_missing.value.message == "Run no-such-run not found"
    assert sdk_missing.value.status_code == rb_missing.value.status_code == 404
    wrong = vi.Client(
        secret_key="dtvi_" + "w" * 98,
        organization_id=ORG,
        endpoint=emu.base_url,
        logging_config=vi.LoggingConfig(enable_file=False, enable_console=False),
    )
    with pytest.raises(vi.ViAuthenticationError) as denied:
        wrong.runs.get("no-such-run")
    assert denied.value.status_code == 401


def test_update_and_delete(emu: ViEmulator, sdk: Any, rb: RunClient) -> None:
    ref = rb.launch({"flow": FLOW, "metadata": {"a": "1"}})
    updated = sdk.runs.update(ref.id, metadata={"b": "2"})
    # a launch without a key still gets one (a random one), so that it can be found again
    key = updated.metadata.attributes.pop(METADATA_KEY)
    assert updated.metadata.attributes == {"a": "1", "b": "2"}
    assert rb.get(ref).outputs["attributes"] == {"a": "1", "b": "2", METADATA_KEY: key}
    assert sdk.runs.delete(ref.id).deleted is True
    with pytest.raises(RunNotFound):
        rb.get(ref)


def test_flow_ids_and_the_sdks_inconsistent_flow_decoding(
    emu: ViEmulator, sdk: Any, rb: RunClient
) -> None:
    emu.add_flow("flow-1", FLOW, organization_id=ORG)
    flow = sdk.flows.get("flow-1")
    assert msgspec.to_builtins(flow.spec) == FLOW
    # runs.create(flow=<id>) decodes the same path as a bare FlowSpec: it cannot read the Flow
    # document that flows.get reads (docs/platforms/vi.md §5). runbridge accepts either.
    with pytest.raises(vi.ViOperationError):
        sdk.runs.create(flow="flow-1")
    ref = rb.launch({"flow_id": "flow-1"})
    assert_same_run(sdk.runs.get(ref.id), rb.get(ref))
    # the SDK's documented way round it works
    created = sdk.runs.create(flow=flow.spec)
    assert rb.get(rb.ref(created.run_id)).outputs["flow"] == FLOW


@pytest.mark.anyio
async def test_the_async_client_reads_the_same(emu: ViEmulator, sdk: Any) -> None:
    emu.script(QUICK)
    created = sdk.runs.create(flow=FLOW)
    async with AsyncRunClient(
        "vi", emu.base_url, TOKEN, organization_id=ORG, poll=PollSchedule.fixed(0.05)
    ) as client:
        status = await client.wait(client.ref(created.run_id), wait_timeout=10)
    assert_same_run(sdk.runs.get(created.run_id), status)
    assert status.state is RunState.SUCCEEDED
