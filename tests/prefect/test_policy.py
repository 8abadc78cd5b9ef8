"""Core's one re-attach/relaunch policy (``client.start`` and its planner), through Prefect:
real flow runs, task retries and timeouts against the emulators; the only thing the Prefect
integration adds is the store of launch records in Prefect's result store.

* a first status read that hits a transient error neither fails the launch nor the re-attach;
* ``relaunch_failed`` launches the replacement with the key ``<key>#1``;
* a run runbridge cancelled (task timeout, ``run_timeout``) is recorded ``cancelled``, and the
  retry launches a new run instead of taking the cancelled one;
* ``error_window`` (credentials, task argument, job block) reaches the wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prefect import flow

from runbridge import PlatformUnavailable, RunState
from runbridge.core.planner import LaunchRecord
from runbridge.prefect_blocks import (
    ExternalRunJob,
    RunbridgeCredentials,
    _runtime,
    alaunch_and_wait,
    launch_and_wait,
)
from runbridge.testing import Script
from runbridge.testing.rest import REST_CONFIG

from .conftest import FAST, TOKEN, swap_emulator
from .helpers import flow_run_artifacts, flow_run_logs, task_key, task_runs

FAILING = Script([("queued", 0.05), ("running", 0.2)], final="failed", message="out of memory")
LONG = Script([("running", 120.0)], final="succeeded")
STATUS_PATH = "/api/v1/runs/"


def credentials(emu: Any, **fields: Any) -> RunbridgeCredentials:
    return RunbridgeCredentials(
        platform="rest", base_url=emu.base_url, token=TOKEN, options=REST_CONFIG, **fields
    )


def launch_keys(emu: Any) -> list[str]:
    """The launch key (Idempotency-Key header) of every launch request, in order."""
    return [r.headers.get("idempotency-key", "") for r in emu.requests_to("POST", "/jobs/")]


def records_of(
    state: Any, conn: RunbridgeCredentials, params: dict[str, Any] | None = None
) -> tuple[str, list[LaunchRecord]]:
    """The task's key (its only task run launching ``params``) and the launch records it
    keeps."""
    (task_run,) = task_runs(state.state_details.flow_run_id)
    key = task_key(task_run, conn, params or {"job": "nightly"})
    # read back from Prefect's result store, not from this process's memory
    _runtime._memory.pop(key, None)
    return key, asyncio.run(_runtime.read_records(key))


def test_a_transient_first_status_error_does_not_fail_the_launch(relay):
    emu = swap_emulator(relay, "rest", script=FAST)
    # every attempt of the first status read (two, with retry_attempts=2) answers 503
    emu.inject(kind="status", status=503, method="GET", path=STATUS_PATH, times=2)
    conn = credentials(emu, retry_attempts=2)

    @flow
    def nightly():
        return launch_and_wait(conn, {"job": "nightly"}, poll=0.05)

    state = nightly(return_state=True)
    status = state.result()
    assert status.state is RunState.SUCCEEDED
    assert len(emu.launches) == 1
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any("checking run" in line and "503" in line for line in logs), logs
    assert any(line == f"Launched rest run {status.ref.id}" for line in logs), logs
    # the link the launch could not make (no URL yet) is made when the wait ends
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    links = [a for a in artifacts if str(a.data).startswith("[rest run")]
    assert len(links) == 1 and f"]({status.url})" in str(links[0].data)


def test_a_retry_reattaches_although_its_first_status_read_fails(relay):
    emu = swap_emulator(relay, "rest", script=Script([("running", 1.5)], final="succeeded"))
    conn = credentials(emu, retry_attempts=2)

    def break_the_next_status_read(task: Any, task_run: Any, state: Any) -> bool:
        if task_run.run_count == 1:  # before the first retry only
            emu.inject(kind="status", status=503, method="GET", path=STATUS_PATH, times=2)
        return True

    @flow
    def nightly():
        retrying = launch_and_wait.with_options(
            retries=5, retry_delay_seconds=0, retry_condition_fn=break_the_next_status_read
        )
        return retrying(conn, {"job": "nightly"}, wait_timeout=0.5, poll=0.05)

    state = nightly(return_state=True)
    status = state.result()
    assert status.state is RunState.SUCCEEDED
    assert len(emu.launches) == 1  # re-attached, not relaunched, and the retry did not fail
    key, records = records_of(state, conn)
    assert records[0] == LaunchRecord(key, status.ref, "launched")
    assert records[1:] and all(
        r == LaunchRecord(key, status.ref, "reattached") for r in records[1:]
    )
    logs = flow_run_logs(state.state_details.flow_run_id)
    # the second attempt re-attached without a status (so without the run's URL)
    assert f"Re-attached to rest run {status.ref.id} (launched by an earlier attempt)" in logs


def test_relaunch_failed_launches_the_replacement_with_key_1(relay):
    emu = swap_emulator(relay, "rest", script=FAST)
    emu.script(FAILING)  # the first run fails, the next succeeds
    conn = credentials(emu)

    @flow
    def nightly():
        retrying = launch_and_wait.with_options(retries=1, retry_delay_seconds=0)
        return retrying(conn, {"job": "nightly"}, poll=0.05, relaunch_failed=True)

    state = nightly(return_state=True)
    status = state.result()
    assert status.state is RunState.SUCCEEDED
    key, records = records_of(state, conn)
    assert launch_keys(emu) == [key, f"{key}#1"]
    first = records[0].ref
    assert records == [
        LaunchRecord(key, first, "launched"),
        LaunchRecord(f"{key}#1", status.ref, "launched"),
    ]
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any(
        line.startswith(f"Launched rest run {status.ref.id}")
        and "ended FAILED" in line
        and "relaunch_failed" in line
        for line in logs
    ), logs


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_run_cancelled_by_a_task_timeout_is_replaced_on_retry(relay, mode):
    emu = swap_emulator(relay, "rest", script=FAST)
    emu.script(LONG)  # the first run outlives the task's timeout; the next is quick
    conn = credentials(emu)
    options = {"timeout_seconds": 1.5, "retries": 1, "retry_delay_seconds": 0}

    if mode == "sync":

        @flow
        def nightly():
            return launch_and_wait.with_options(**options)(conn, {"job": "nightly"}, poll=0.05)

        state = nightly(return_state=True)
    else:

        @flow
        async def anightly():
            timed = alaunch_and_wait.with_options(**options)
            return await timed(conn, {"job": "nightly"}, poll=0.05)

        state = asyncio.run(anightly(return_state=True))

    status = state.result()
    assert status.state is RunState.SUCCEEDED
    key, records = records_of(state, conn)
    first = records[0].ref
    assert emu.cancels == [first.id]  # the killed attempt cancelled its run...
    assert records == [
        LaunchRecord(key, first, "launched"),
        LaunchRecord(key, first, "cancelled"),  # ...and recorded it,
        LaunchRecord(f"{key}#1", status.ref, "launched"),  # so the retry launched anew
    ]
    assert launch_keys(emu) == [key, f"{key}#1"]


def test_a_run_cancelled_for_run_timeout_is_replaced_on_retry(relay):
    emu = swap_emulator(relay, "rest", script=FAST)
    emu.script(LONG)
    conn = credentials(emu)

    @flow
    def nightly():
        retrying = launch_and_wait.with_options(retries=1, retry_delay_seconds=0)
        return retrying(conn, {"job": "nightly"}, run_timeout=0.5, poll=0.05)

    state = nightly(return_state=True)
    status = state.result()
    assert status.state is RunState.SUCCEEDED and not status.cancelled_by_runbridge
    key, records = records_of(state, conn)
    first = records[0].ref
    assert emu.cancels == [first.id]
    assert [r.action for r in records] == ["launched", "cancelled", "launched"]
    assert launch_keys(emu) == [key, f"{key}#1"]


def test_without_a_cancelled_record_a_retry_reattaches_to_a_run_that_was_not_cancelled(relay):
    """cancel_on_kill=False: the killed attempt leaves its run going and records nothing,
    so the retry follows that run instead of launching a second one."""
    emu = swap_emulator(relay, "rest", script=Script([("running", 2.5)], final="succeeded"))
    conn = credentials(emu)

    @flow
    def nightly():
        # attempts of 1 s until the 2.5 s run ends: on a loaded machine each attempt's start
        # eats into its second, so there are retries to spare (the run's end stops them)
        timed = launch_and_wait.with_options(timeout_seconds=1, retries=6, retry_delay_seconds=0)
        return timed(conn, {"job": "nightly"}, poll=0.05, cancel_on_kill=False)

    state = nightly(return_state=True)
    assert state.result().state is RunState.SUCCEEDED
    assert emu.cancels == [] and len(emu.launches) == 1
    _, records = records_of(state, conn)
    assert [r.action for r in records][:2] == ["launched", "reattached"]


def _error_window_case(emu: Any, run: Any) -> tuple[Any, float]:
    """Every status read fails (503) after the launch: the wait gives up once the error window
    has passed, with the last error, long before its wait_timeout."""
    emu.inject(kind="status", status=503, method="GET", path=STATUS_PATH, times=10_000)
    started = time.monotonic()
    state = run()
    return state, time.monotonic() - started


@pytest.mark.parametrize("where", ["credentials", "task", "job"])
def test_error_window_reaches_the_wait(relay, where):
    emu = swap_emulator(relay, "rest", script=FAST)
    # one attempt per request, so each check fails at once; the default window is 600 s
    if where == "credentials":
        conn = credentials(emu, retry_attempts=1, error_window=1.0)
        window: dict[str, Any] = {}
    else:
        conn = credentials(emu, retry_attempts=1)
        window = {"error_window": 1.0}

    @flow
    def nightly():
        if where == "job":
            job = ExternalRunJob(
                credentials=conn, params={"job": "x"}, wait_timeout=30, poll_interval=0.05, **window
            )
            return job.trigger().wait_for_completion()
        return launch_and_wait(conn, {"job": "x"}, wait_timeout=30, poll=0.05, **window)

    state, took = _error_window_case(emu, lambda: nightly(return_state=True))
    with pytest.raises(PlatformUnavailable, match="503"):
        state.result()
    assert 1.0 <= took < 15, took
    assert len(emu.launches) == 1 and emu.cancels == []  # a poll error never relaunches


def test_a_launch_record_that_cannot_be_stored_stops_the_launch(relay, tmp_path):
    """Where the platform can find a launch by key (LangGraph), a ``starting`` record is
    stored before the launch; if Prefect's result store cannot take it, nothing is launched
    (a run whose record is lost could be launched twice)."""
    from prefect.filesystems import LocalFileSystem

    emu = swap_emulator(relay, "langgraph")
    conn = RunbridgeCredentials(platform="langgraph", base_url=emu.base_url, token=TOKEN)
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    LocalFileSystem(basepath=str(not_a_directory / "storage")).save("broken", overwrite=True)

    @flow
    def agent():
        storing = launch_and_wait.with_options(result_storage="local-file-system/broken")
        return storing(conn, {"assistant_id": "agent", "input": {}}, poll=0.05)

    state = agent(return_state=True)
    with pytest.raises(_runtime.RecordStoreError, match="not launching"):
        state.result()
    assert emu.launches == []
