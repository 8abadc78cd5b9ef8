"""Stopping a flow run from outside cancels the external runs it is waiting on: a flow-run
cancellation (through a Prefect ``Runner``, as for served and worker-run flows), a task
timeout, a flow timeout. A wait that merely times out leaves the run going."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.runner import Runner
from prefect.states import Cancelling

from runbridge import WaitTimeout
from runbridge.prefect_blocks import alaunch_and_wait, launch_and_wait
from runbridge.testing import Script

from . import flows
from .conftest import swap_emulator
from .helpers import flow_run_logs, task_runs

LONG = Script([("running", 120.0)], final="succeeded")


@pytest.fixture
def rest_emu(relay):
    """Runs that take two minutes: here only a cancellation ends them."""
    return swap_emulator(relay, "rest", script=LONG)


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _cancelled_jobs(emu) -> set[str]:
    return {emu.runs[run_id].data["job"] for run_id in emu.cancels}


def test_cancelling_the_flow_run_cancels_the_external_runs(rest_emu, rest_credentials):
    """Serve two flows with a Runner (each flow run in its own process), cancel both flow
    runs through the API, and see every external run they waited on cancelled."""
    rest_credentials.save("cancel-test", overwrite=True)
    runner = Runner(name="runbridge-cancel-test", query_seconds=1, limit=2)
    deployments = [
        runner.add_flow(flows.waits_sync, name="waits-sync"),
        runner.add_flow(flows.waits_async, name="waits-async"),
    ]
    with get_client(sync_client=True) as client:
        flow_runs = [
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"credentials_block": "cancel-test"}
            )
            for deployment_id in deployments
        ]
        serving = threading.Thread(target=lambda: asyncio.run(runner.start(run_once=True)))
        serving.start()
        try:
            _wait_for(lambda: len(rest_emu.launches) == 4, 90, "four launches")
            assert rest_emu.cancels == []
            for flow_run in flow_runs:
                client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
            _wait_for(lambda: len(rest_emu.cancels) == 4, 60, "four cancels")
        finally:
            serving.join(90)
        assert _cancelled_jobs(rest_emu) == {
            "sync-called",
            "sync-submitted",
            "async-1",
            "async-2",
        }
        for flow_run in flow_runs:
            _wait_for(
                lambda fr=flow_run: client.read_flow_run(fr.id).state.is_cancelled(),
                30,
                "the flow run to be Cancelled",
            )
        # the task submitted to the thread pool reads as cancelled, not failed or crashed
        # with a CancelledError traceback (issue 14, defect 8)
        states = sorted(run.state.name for run in task_runs(flow_runs[0].id))
        # the one in the flow's main thread gets Prefect's TerminationSignal: Crashed
        assert states == ["Cancelled", "Crashed"], states
        logs = flow_run_logs(flow_runs[0].id)
        assert not any("Traceback" in line for line in logs), logs
        assert any(
            line.startswith("The flow run was cancelled: cancelled rest run") for line in logs
        )


def test_a_task_timeout_cancels_the_run_async(rest_emu, rest_credentials):

    @flow
    async def nightly():
        timed = alaunch_and_wait.with_options(timeout_seconds=1)
        return await timed(rest_credentials, {"job": "nightly"}, poll=0.05)

    state = asyncio.run(nightly(return_state=True))
    assert state.is_failed() and state.name == "TimedOut"
    assert len(rest_emu.launches) == len(rest_emu.cancels) == 1


def test_a_task_timeout_cancels_the_run_sync(rest_emu, rest_credentials):

    @flow
    def nightly():
        timed = launch_and_wait.with_options(timeout_seconds=1)
        return timed(rest_credentials, {"job": "nightly"}, poll=0.05)

    state = nightly(return_state=True)
    assert state.is_failed() and state.name == "TimedOut"
    assert len(rest_emu.cancels) == 1


def test_a_flow_timeout_cancels_the_runs(rest_emu, rest_credentials):

    @flow(timeout_seconds=1.5)
    async def nightly():
        await asyncio.gather(
            alaunch_and_wait(rest_credentials, {"job": "a"}, poll=0.05),
            alaunch_and_wait(rest_credentials, {"job": "b"}, poll=0.05),
        )

    state = asyncio.run(nightly(return_state=True))
    assert state.is_failed() and state.name == "TimedOut"
    assert _cancelled_jobs(rest_emu) == {"a", "b"}


def test_a_wait_timeout_leaves_the_run_going(rest_emu, rest_credentials):

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "nightly"}, wait_timeout=0.3, poll=0.05)

    state = nightly(return_state=True)
    with pytest.raises(WaitTimeout, match="keeps going"):
        state.result()
    assert rest_emu.cancels == []


def test_run_timeout_cancels_the_run(rest_emu, rest_credentials):

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "nightly"}, run_timeout=0.5, poll=0.05)

    state = nightly(return_state=True)
    assert state.is_failed() and "TIMED_OUT" in state.message
    assert len(rest_emu.cancels) == 1


def test_cancel_on_kill_false_leaves_the_run_going(rest_emu, rest_credentials):

    @flow
    def nightly():
        timed = launch_and_wait.with_options(timeout_seconds=1)
        return timed(rest_credentials, {"job": "x"}, poll=0.05, cancel_on_kill=False)

    assert nightly(return_state=True).is_failed()
    assert rest_emu.cancels == []
