"""The tasks against the emulators, in real Prefect flow runs (sync and async)."""

from __future__ import annotations

import asyncio

from prefect import flow, unmapped

from runbridge import RunFailed, RunRef, RunState, RunStatus
from runbridge.core.planner import LaunchRecord
from runbridge.core.shared import clients_created
from runbridge.prefect_blocks import (
    RunbridgeCredentials,
    _runtime,
    alaunch_and_wait,
    launch_and_wait,
    launch_run,
    wait_for_run,
)
from runbridge.testing import Script
from runbridge.testing.rest import REST_CONFIG

from .conftest import TOKEN
from .helpers import flow_run_artifacts, flow_run_logs, task_key, task_runs

FAILING = Script([("queued", 0.05), ("running", 0.2)], final="failed", message="out of memory")


def test_launch_and_wait_succeeds_with_logs_and_artifacts(rest_emu, rest_credentials):
    # queued long enough that the launch's first status is not RUNNING yet, even on a loaded
    # machine: the wait then sees (and logs) the change
    rest_emu.script(
        Script([("queued", 1.5), ("running", 0.5)], final="succeeded", outputs={"rows": 42})
    )

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "nightly"}, poll=0.05)

    state = nightly(return_state=True)
    status = state.result()
    assert isinstance(status, RunStatus)
    assert status.state is RunState.SUCCEEDED
    assert status.outputs == {"rows": 42}
    assert len(rest_emu.launches) == 1
    run_url = status.url
    assert run_url and status.ref.id in run_url

    flow_run_id = state.state_details.flow_run_id
    logs = flow_run_logs(flow_run_id)
    assert any(line.startswith("Launched rest run") and run_url in line for line in logs), logs
    assert any("RUNNING (running)" in line for line in logs), logs
    assert any(line.startswith("Finished: rest run") and "SUCCEEDED" in line for line in logs)

    artifacts = flow_run_artifacts(flow_run_id)
    # Prefect stores a link artifact as markdown: "[text](url)"
    links = [a for a in artifacts if str(a.data).startswith("[rest run")]
    statuses = [a for a in artifacts if str(a.data).startswith("### rest run")]
    assert len(links) == 1 and f"]({run_url})" in str(links[0].data)
    assert len(statuses) == 1 and "**SUCCEEDED**" in str(statuses[0].data)
    assert '"rows": 42' in str(statuses[0].data)
    assert all(a.task_run_id is not None for a in artifacts)  # attached to the task run
    # the token is in no log line and no artifact
    assert not any(TOKEN in line for line in logs)
    assert not any(TOKEN in str(a.data) + str(a.description) for a in artifacts)


def test_launch_and_wait_fails_the_task_with_the_platform_message(rest_emu, rest_credentials):
    rest_emu.script(FAILING)

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "nightly"}, poll=0.05)

    state = nightly(return_state=True)
    assert state.is_failed()
    (task_run,) = task_runs(state.state_details.flow_run_id)
    assert task_run.state.is_failed()
    assert "out of memory" in task_run.state.message
    try:
        state.result()
    except RunFailed as exc:
        assert exc.status.state is RunState.FAILED
        assert "out of memory" in str(exc)
    else:
        raise AssertionError("the flow should have failed with RunFailed")
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    (final,) = [a for a in artifacts if str(a.data).startswith("### rest run")]
    assert "**FAILED**" in str(final.data) and "out of memory" in str(final.data)


def test_langgraph_success_and_failure(langgraph_emu, langgraph_credentials):
    @flow
    def agents():
        ok = launch_and_wait(
            langgraph_credentials,
            {"assistant_id": "agent", "input": {"input": {"sleep": 0.2}}},
            poll=0.05,
        )
        failed = launch_and_wait(
            langgraph_credentials,
            {"assistant_id": "agent", "input": {"input": {"fail": "tool crashed"}}},
            poll=0.05,
            return_state=True,
        )
        return ok, failed

    ok, failed = agents()
    assert ok.state is RunState.SUCCEEDED and "thread_id" in ok.ref.scope
    assert failed.is_failed() and "tool crashed" in failed.message
    assert len(langgraph_emu.launches) == 2


def test_twenty_concurrent_runs_in_an_async_flow_share_one_client(
    relay, rest_emu, rest_credentials
):
    before = clients_created()

    @flow
    async def fan_out():
        return await asyncio.gather(
            *(alaunch_and_wait(rest_credentials, {"job": f"part-{i}"}, poll=0.1) for i in range(20))
        )

    statuses = asyncio.run(fan_out())
    assert [s.state for s in statuses] == [RunState.SUCCEEDED] * 20
    assert len(rest_emu.launches) == 20
    assert clients_created() - before == 1  # one AsyncRunClient: one connection pool
    requests = len(rest_emu.requests)
    assert requests >= 60  # a launch, a first check and checks while waiting, each
    assert len(relay.peers) <= 20 < requests  # connections are reused across polls


def test_twenty_mapped_runs_in_a_sync_flow_share_one_client(relay, rest_emu, rest_credentials):
    before = clients_created()

    @flow
    def fan_out():
        params = [{"job": f"part-{i}"} for i in range(20)]
        return launch_and_wait.map(unmapped(rest_credentials), params, poll=unmapped(0.1)).result()

    statuses = fan_out()
    assert [s.state for s in statuses] == [RunState.SUCCEEDED] * 20
    assert len(rest_emu.launches) == 20
    # the sync tasks all run on runbridge's loop: at most one client, kept for the process
    assert clients_created() - before <= 1
    assert len(relay.peers) <= 20 < len(rest_emu.requests)


def _rest_without_idempotency(base_url: str) -> RunbridgeCredentials:
    """A REST platform with no idempotency key and no way to look a launch up: only the
    record runbridge keeps can bring a retry back to its run."""
    config = {
        **REST_CONFIG,
        "launch": {k: v for k, v in REST_CONFIG["launch"].items() if k != "idempotency_header"},
    }
    return RunbridgeCredentials(platform="rest", base_url=base_url, token=TOKEN, options=config)


def test_a_retry_after_a_failed_wait_reattaches(rest_emu):
    rest_emu.script(Script([("queued", 0.1), ("running", 2.0)], final="succeeded"))
    credentials = _rest_without_idempotency(rest_emu.base_url)

    @flow
    def nightly():
        # each attempt gives up waiting after 0.4 s; the run takes ~2.1 s (how many attempts
        # that is depends on Prefect's overhead per attempt, hence >= 2 below)
        retrying = launch_and_wait.with_options(retries=8, retry_delay_seconds=0)
        return retrying(
            credentials, {"job": "nightly"}, wait_timeout=0.4, poll=0.05, return_state=True
        )

    state = nightly()
    status = state.result()
    assert status.state is RunState.SUCCEEDED
    assert len(rest_emu.launches) == 1  # every retry re-attached
    (task_run,) = task_runs(state.state_details.flow_run_id)
    assert task_run.run_count >= 2
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert sum("Re-attached to rest run" in line for line in logs) == task_run.run_count - 1

    # the records also went to Prefect's result storage: found without this process's memory
    key = task_key(task_run, credentials, {"job": "nightly"})
    in_memory = _runtime._memory.pop(key)
    records = asyncio.run(_runtime.read_records(key))
    assert [r.to_dict() for r in records] == in_memory
    # the first attempt launched (no "starting" record: this platform cannot find by key),
    # every retry re-attached, all with the task's key
    assert records == [LaunchRecord(key, status.ref, "launched")] + [
        LaunchRecord(key, status.ref, "reattached")
    ] * (task_run.run_count - 1)


def test_a_retry_reattaches_on_langgraph(langgraph_emu, langgraph_credentials):
    @flow
    def agent():
        retrying = launch_and_wait.with_options(retries=5, retry_delay_seconds=0)
        params = {"assistant_id": "agent", "input": {"input": {"sleep": 1.0}}}
        return retrying(langgraph_credentials, params, wait_timeout=0.4, poll=0.05)

    assert agent().state is RunState.SUCCEEDED
    assert len(langgraph_emu.launches) == 1


def test_relaunch_failed_launches_again_after_a_failed_run(rest_emu, rest_credentials):
    rest_emu.script(FAILING)  # the first run fails; the next ones succeed

    @flow
    def nightly():
        retrying = launch_and_wait.with_options(retries=1, retry_delay_seconds=0)
        return retrying(rest_credentials, {"job": "nightly"}, poll=0.05, relaunch_failed=True)

    assert nightly().state is RunState.SUCCEEDED
    assert len(rest_emu.launches) == 2


def test_without_relaunch_a_retry_takes_the_failed_run_as_it_ended(rest_emu, rest_credentials):
    rest_emu.script(FAILING)

    @flow
    def nightly():
        retrying = launch_and_wait.with_options(retries=1, retry_delay_seconds=0)
        return retrying(rest_credentials, {"job": "nightly"}, poll=0.05)

    assert nightly(return_state=True).is_failed()
    assert len(rest_emu.launches) == 1


def test_launch_run_then_wait_for_run(rest_emu, rest_credentials):
    rest_emu.script(FAILING)

    @flow
    def split():
        ref = launch_run(rest_credentials, {"job": "nightly"})
        status = wait_for_run(rest_credentials, ref, poll=0.05, check=False)
        return ref, status

    ref, status = split()
    assert isinstance(ref, RunRef) and status.ref == ref
    assert status.state is RunState.FAILED and status.message == "out of memory"
