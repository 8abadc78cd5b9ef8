"""Terminating a Dagster run cancels the external run its step waits for.

The run goes the way a deployment's does: a code server (gRPC, its own process) loads
tests/dagster/jobs.py, the DefaultRunLauncher starts a run worker process through it, and the
default multiprocess executor runs the step in a child process. ``run_launcher.terminate``
(what the UI's Terminate button calls) asks the code server to cancel the run; the run worker
receives SIGINT and forwards it to the step process, where Dagster raises
``DagsterExecutionInterruptedError`` inside the step; the step cancels the external run.

One instance and one code server serve the module (starting a code server loads Dagster and
the jobs in a process of its own: seconds); each test launches its own run in it, against its
own emulator behind the module's relay (the code server and its run workers read the relay's
URL, which stays the same).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.test_utils import poll_for_finished_run
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import PythonFileTarget

from runbridge.testing import Emulator, Relay, Script, create_emulator
from tests.dagster import jobs

JOBS_FILE = Path(jobs.__file__)


@pytest.fixture(scope="module")
def code_server(relay: Relay) -> Iterator[tuple[dg.DagsterInstance, WorkspaceProcessContext]]:
    """An instance and a code server loading tests/dagster/jobs.py, for the module."""
    target = PythonFileTarget(
        python_file=str(JOBS_FILE), attribute="defs", working_directory=None, location_name="jobs"
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv(jobs.URL_ENV, relay.base_url)  # inherited by the code server and run workers
        with dg.instance_for_test() as instance, WorkspaceProcessContext(instance, target) as ctx:
            yield instance, ctx


@pytest.fixture
def emu(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emu = relay.swap(create_emulator("rest"))
    monkeypatch.setenv(jobs.URL_ENV, emu.base_url)  # the relay's: what the code server has
    yield emu
    relay.target = None


def wait_until(condition, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextlib.contextmanager
def terminated_run(
    code_server: tuple[dg.DagsterInstance, WorkspaceProcessContext],
    emu: Emulator,
    run_config: dict[str, Any] | None = None,
) -> Iterator[tuple[dg.DagsterInstance, dg.DagsterRun, str]]:
    """long_job launched through the code server, its step waiting for the external run, then
    terminated; yields the instance, the Dagster run (finished) and the external run's id."""
    instance, process = code_server
    workspace = process.create_request_context()
    remote_job = (
        workspace.get_code_location("jobs")
        .get_repository("__repository__")
        .get_full_job("long_job")
    )
    run = instance.create_run_for_job(
        job_def=jobs.long_job,
        run_config=run_config,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
    )
    instance.launch_run(run.run_id, workspace)
    # the step launched the external run and is waiting for it
    wait_until(lambda: len(emu.launches) == 1)
    (external_id,) = emu.runs
    wait_until(
        lambda: any(
            e.message.startswith(f"rest:{external_id}: RUNNING")
            for e in instance.all_logs(run.run_id)
        )
    )
    assert emu.cancels == []

    assert instance.run_launcher.terminate(run.run_id)

    finished = poll_for_finished_run(instance, run.run_id, timeout=60)
    assert finished.status == dg.DagsterRunStatus.CANCELED
    yield instance, finished, external_id


def test_terminating_the_dagster_run_cancels_the_external_run(
    code_server: tuple[dg.DagsterInstance, WorkspaceProcessContext], emu: Emulator
) -> None:
    """...records the cancel in the event log, and a re-execution launches a new run (the
    next key), never re-attaching to the cancelled one."""
    emu.script(
        Script([("queued", 0.05), ("running", 600.0)], final="succeeded"),
        Script([("queued", 0.05), ("running", 0.2)], final="succeeded"),
    )
    with terminated_run(code_server, emu) as (instance, run, external_id):
        assert emu.cancels == [external_id]
        messages = [e.message for e in instance.all_logs(run.run_id)]
        assert f"The Dagster run was terminated; cancelling rest:{external_id}" in messages
        assert f"Cancelled rest:{external_id} (Dagster run terminated)" in messages

        # the re-execution reads the cancelled record and launches anew, with the next key
        with dg.execute_job(
            dg.reconstructable(jobs.long_job),
            instance,
            reexecution_options=dg.ReexecutionOptions(parent_run_id=run.run_id),
        ) as again:
            assert again.success
        assert len(emu.launches) == 2 and emu.cancels == [external_id]
        keys = [r.headers["idempotency-key"] for r in emu.requests_to("POST", "/jobs/")]
        base = f"dagster:{run.run_id}:long_running"
        assert keys == [base, f"{base}#1"]
        assert any(
            e.message.startswith("Launched rest:") and external_id not in e.message
            for e in instance.all_logs(again.run_id)
        )


def test_cancel_on_kill_false_leaves_the_external_run_going(
    code_server: tuple[dg.DagsterInstance, WorkspaceProcessContext], emu: Emulator
) -> None:
    emu.script(Script([("queued", 0.05), ("running", 600.0)], final="succeeded"))
    config = {"ops": {"long_running": {"config": {"cancel_on_kill": False}}}}
    with terminated_run(code_server, emu, config) as (instance, run, external_id):
        assert emu.cancels == []
        messages = [e.message for e in instance.all_logs(run.run_id)]
        assert f"Interrupted; leaving rest:{external_id} going (cancel_on_kill=False)" in messages
        assert not any(m.startswith("Cancelled") for m in messages)
