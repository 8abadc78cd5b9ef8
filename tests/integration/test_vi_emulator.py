"""Both clients against the ``vi`` emulator on loopback (real uvicorn, real sockets), with faults.

Short scripts and ``PollSchedule.fixed(0.05)`` keep the file fast; nothing here asserts on time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from runbridge.core import (
    AuthError,
    Event,
    PlatformUnavailable,
    RetryPolicy,
    RunNotFound,
    RunState,
    RunStatus,
    WaitTimeout,
)
from runbridge.core.providers.vi import METADATA_KEY, Vi, run_for_key
from runbridge.testing import Fault, Script
from runbridge.testing.vi import DEFAULT_FLOW, ViEmulator
from tests.core.helpers import ClientUnderTest

pytestmark = pytest.mark.anyio

ORG = "org-emu"
TOKEN = "dtvi_" + "k" * 98  # the SDK's format: "dtvi_" and 103 characters
QUICK = Script([("Pending", 0.05), ("Running", 0.15)], final="Succeeded")
LONG = Script([("Pending", 0.05), ("Running", 30.0)])
LAUNCH = {"flow": DEFAULT_FLOW, "training_project": "tp-1"}
RUNS = f"/workspaces/{ORG}/runs"


@pytest.fixture
def emulator() -> ViEmulator:
    return ViEmulator(token=TOKEN, organization_id=ORG)


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"organization_id": ORG}


async def list_runs(client: ClientUnderTest, **kwargs: Any) -> list[RunStatus]:
    """``RunClient.list`` / ``AsyncRunClient.list``."""
    assert isinstance(client.client.provider, Vi)
    result = client.client.list(**kwargs)
    return await result if client.is_async else result  # type: ignore[misc,no-any-return]


# -- a run's life -----------------------------------------------------------------------------------
async def test_launch_and_wait_succeeds(emu: ViEmulator, client: ClientUnderTest) -> None:
    emu.script(QUICK)
    events: list[Event] = []
    client.client.hooks.append(events.append)
    ref = await client.launch(LAUNCH, key="dag.task.2025-01-01.0")
    assert ref.id == run_for_key("dag.task.2025-01-01.0")
    assert ref.scope == {"organization_id": ORG}
    status = await client.wait(ref, wait_timeout=10, check=True)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "Succeeded")
    assert status.outputs["flow"] == DEFAULT_FLOW
    assert status.outputs["training_project"] == "tp-1"
    assert status.outputs["killed_at"] is None
    assert status.url == status.outputs["log_url"] == f"{emu.base_url}/_logs/{ORG}/{ref.id}"
    assert status.created_at is not None and status.ended_at is not None
    assert status.ended_at >= status.created_at
    assert [c["condition"] for c in status.outputs["conditions"]] == [
        "Pending",
        "Running",
        "Succeeded",
    ]
    assert emu.launches == [
        {
            "spec": {"flow": DEFAULT_FLOW, "trainingProject": "tp-1"},
            "metadata": {"attributes": {METADATA_KEY: "dag.task.2025-01-01.0"}},
        }
    ]
    put = emu.requests_to("PUT")[0]
    assert put.headers["authorization"] == f"Bearer {TOKEN}"
    assert put.headers["organization-id"] == ORG
    changes = [e.status.raw_state for e in events if e.kind == "state_changed" and e.status]
    assert changes[-1] == "Succeeded" and set(changes) <= {"Pending", "Running", "Succeeded"}


@pytest.mark.parametrize("final", ["Failed", "Error"])
async def test_failed_and_error_end_failed_with_the_message(
    emu: ViEmulator, client: ClientUnderTest, final: str
) -> None:
    emu.script(
        Script([("Running", 0.1)], final=final, message="CUDA out of memory"),
        Script([("Running", 0.1)], final=final, message="no GPU", error_type="Unschedulable"),
    )
    status = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.FAILED, final)
    assert status.message == "CUDA out of memory"
    typed = await client.launch_and_wait(LAUNCH, wait_timeout=10)
    assert typed.message == "Unschedulable: no GPU"


async def test_kill_ends_cancelled_with_killed_at(emu: ViEmulator, client: ClientUnderTest) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    await client.cancel(ref)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.CANCELLED, "Cancelled")
    assert emu.cancels == [ref.id]
    (patch,) = emu.requests_to("PATCH")
    assert set(patch.body) == {"spec"} and set(patch.body["spec"]) == {"killedAt"}
    assert status.outputs["killed_at"] == patch.body["spec"]["killedAt"]
    # killing a run that ended sends nothing
    await client.cancel(ref)
    assert len(emu.requests_to("PATCH")) == 1


async def test_a_kill_takes_effect_later(emu: ViEmulator, client: ClientUnderTest) -> None:
    emu.kill_delay = 0.3
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    await client.cancel(ref)
    still = await client.get(ref)
    assert still.state is RunState.RUNNING or still.raw_state == "Pending"
    assert still.outputs["killed_at"] is not None
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.CANCELLED


async def test_run_timeout_kills_and_reports_timed_out(
    emu: ViEmulator, client: ClientUnderTest
) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    status = await client.wait(ref, wait_timeout=10, run_timeout=0.3)
    assert (status.state, status.raw_state) == (RunState.TIMED_OUT, "Cancelled")
    assert emu.cancels == [ref.id]


async def test_wait_timeout_leaves_the_run_going(emu: ViEmulator, client: ClientUnderTest) -> None:
    emu.script(LONG)
    ref = await client.launch(LAUNCH)
    with pytest.raises(WaitTimeout) as info:
        await client.wait(ref, wait_timeout=0.2)
    assert info.value.last_status is not None and not info.value.last_status.is_terminal
    assert emu.cancels == []


async def test_an_existing_run_by_id_or_self_link(emu: ViEmulator, client: ClientUnderTest) -> None:
    run = emu.add_run(QUICK, "run-from-the-ui")
    status = await client.wait(client.ref(run.id), wait_timeout=10)
    assert status.state is RunState.SUCCEEDED
    by_link = await client.get(f"vi:{'/workspaces/' + ORG + '/runs/' + run.id}")
    assert by_link.ref == client.ref(run.id)


async def test_generic_and_unknown_conditions(emu: ViEmulator, client: ClientUnderTest) -> None:
    emu.script(
        Script(
            [("Started/Waiting", 0.05), ("Paused", 0.15), ("Finished/Waiting", 0.1)],
            final="Finished/Reached",
        )
    )
    ref = await client.launch(LAUNCH)
    events: list[Event] = []
    client.client.hooks.append(events.append)
    status = await client.wait(ref, wait_timeout=10)
    assert (status.state, status.raw_state) == (RunState.SUCCEEDED, "Finished/Reached")
    seen = {e.status.raw_state: e.status.state for e in events if e.status}
    assert seen.get("Paused", RunState.UNKNOWN) is RunState.UNKNOWN  # kept waiting through it


async def test_launch_from_a_flow_id(emu: ViEmulator, client: ClientUnderTest) -> None:
    flow = emu.add_flow("flow-1", {**DEFAULT_FLOW, "name": "from-flow"}, organization_id=ORG)
    ref = await client.launch({"flow_id": "flow-1"}, key="k")
    assert emu.launches[0]["spec"]["flow"] == flow
    assert (await client.get(ref)).outputs["flow"]["name"] == "from-flow"
    with pytest.raises(RunNotFound, match="Flow nope not found"):
        await client.launch({"flow_id": "nope"}, key="k2")


async def test_list_runs_pages_newest_first(emu: ViEmulator, client: ClientUnderTest) -> None:
    ids = [emu.add_run(LONG, f"run-{i}").id for i in range(5)]
    emu.add_run(LONG, "elsewhere", organization_id="org-other")
    runs = await list_runs(client, limit=None, page_size=2)
    assert [s.ref.id for s in runs] == ids[::-1]
    assert len(emu.requests_to("GET", RUNS)) == 3
    first_three = await list_runs(client, limit=3)
    assert [s.ref.id for s in first_three] == ids[:1:-1]
    assert first_three[0].state in (RunState.PENDING, RunState.RUNNING)


# -- errors -----------------------------------------------------------------------------------------
async def test_wrong_key_or_organization_header(emu: ViEmulator, connect) -> None:
    wrong = connect(token="dtvi_" + "w" * 98)
    with pytest.raises(AuthError, match="Invalid or missing secret key") as info:
        await wrong.launch(LAUNCH)
    assert info.value.status_code == 401 and "dtvi_www" not in str(info.value)
    # runbridge always sends the reference's organization; a mismatch is refused
    answer = httpx.get(
        f"{emu.base_url}{RUNS}/x",
        headers={"Authorization": f"Bearer {TOKEN}", "Organization-Id": "someone-else"},
    )
    assert answer.status_code == 403
    assert answer.json() == {
        "error": "Forbidden",
        "message": "Organization-Id does not match the workspace",
    }
    assert emu.launches == []


async def test_unknown_run_and_unknown_organization(client: ClientUnderTest) -> None:
    with pytest.raises(RunNotFound, match="Run no-such-run not found"):
        await client.get(client.ref("no-such-run"))
    with pytest.raises(RunNotFound, match="Workspace org-x not found"):
        await client.get("vi:r?organization_id=org-x")


# -- faults -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "status", "status": 503, "times": 2},
        {"kind": "drop", "times": 2},
        {"kind": "malformed", "times": 1},
    ],
    ids=["503x2", "drop", "malformed"],
)
async def test_wait_rides_out_faults(
    emu: ViEmulator, client: ClientUnderTest, fault: dict[str, Any]
) -> None:
    emu.script(QUICK)
    ref = await client.launch(LAUNCH)
    emu.inject(Fault(method="GET", **fault))
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.SUCCEEDED
    assert emu.faults == []


@pytest.mark.parametrize("fault_kind", ["drop", "status"])
async def test_lost_put_answer_is_found_not_put_again(
    emu: ViEmulator, client: ClientUnderTest, fault_kind: str
) -> None:
    emu.script(QUICK)
    emu.inject(kind=fault_kind, status=502, when="after", method="PUT")
    ref = await client.launch(LAUNCH, key="k-lost")
    assert len(emu.launches) == 1 and list(emu.runs) == [ref.id]
    assert len(emu.requests_to("PUT")) == 1  # found by its id, never PUT over
    assert (await client.wait(ref, wait_timeout=10)).state is RunState.SUCCEEDED


async def test_keyless_lost_put_answer_is_recovered_too(
    emu: ViEmulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="drop", when="after", method="PUT")
    ref = await client.launch(LAUNCH)  # auto_key: a random key, still findable
    assert list(emu.runs) == [ref.id] and len(emu.requests_to("PUT")) == 1


async def test_put_refused_before_acting_is_retried(
    emu: ViEmulator, client: ClientUnderTest
) -> None:
    emu.inject(kind="status", status=503, times=2, method="PUT")
    ref = await client.launch(LAUNCH, key="k-503")
    assert len(emu.launches) == 1 and list(emu.runs) == [ref.id]
    assert len(emu.requests_to("PUT")) == 3


async def test_same_key_twice_is_one_run(emu: ViEmulator, client: ClientUnderTest) -> None:
    first = await client.launch(LAUNCH, key="same")
    second = await client.launch(LAUNCH, key="same")
    third = await client.launch(LAUNCH, key="same", reuse=False)  # a key names one run
    assert first == second == third
    assert len(emu.launches) == 1 and len(emu.requests_to("PUT")) == 1


async def test_put_refused_past_the_retry_budget_fails_after_looking(
    emu: ViEmulator, connect
) -> None:
    client = connect(retry=RetryPolicy(attempts=1))
    emu.inject(kind="status", status=503, times=5, method="PUT")
    with pytest.raises(PlatformUnavailable, match="HTTP 503"):
        await client.launch(LAUNCH, key="k-budget")
    assert emu.launches == []
    # the launch looked for the run before giving up: find, probe, PUT, find again
    assert [r.method for r in emu.requests] == ["GET", "GET", "PUT", "GET"]
