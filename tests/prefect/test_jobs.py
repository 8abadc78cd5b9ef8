"""``ExternalRunJob`` / ``ExternalRun`` (Prefect's JobBlock / JobRun) from sync flows, async
flows and plain code, one implementation behind all of them."""

from __future__ import annotations

import asyncio

import pytest
from prefect import flow

from runbridge import RunFailed, RunState
from runbridge.prefect_blocks import ExternalRun, ExternalRunJob
from runbridge.testing import Script

FAILING = Script([("running", 0.2)], final="failed", message="bad input")


@pytest.fixture
def job(rest_credentials) -> ExternalRunJob:
    return ExternalRunJob(
        credentials=rest_credentials, params={"job": "nightly"}, poll_interval=0.05
    )


def test_trigger_wait_fetch_in_a_sync_flow(rest_emu, job):
    @flow
    def nightly():
        run = job.trigger()
        assert isinstance(run, ExternalRun) and run.url
        final = run.wait_for_completion()
        return run, final, run.fetch_result()

    _, final, result = nightly()
    assert final.state is RunState.SUCCEEDED and result is final
    assert result.outputs == {"rows": 42}
    assert len(rest_emu.launches) == 1


def test_the_same_names_are_awaited_in_an_async_flow(rest_emu, job):
    rest_emu.script(Script([("running", 0.2)], final="succeeded"), FAILING)

    @flow
    async def nightly():
        ok = await job.trigger()  # Prefect's dispatch: the coroutine form in async code
        assert (await ok.wait_for_completion()).state is RunState.SUCCEEDED
        bad = await job.atrigger({"job": "other"})  # or name the async form
        with pytest.raises(RunFailed, match="bad input"):
            await bad.afetch_result()
        return bad.status

    failed = asyncio.run(nightly())
    assert failed.state is RunState.FAILED
    assert [r.data["job"] for r in rest_emu.runs.values()] == ["nightly", "other"]


def test_outside_a_flow(rest_emu, job):
    run = job.trigger()
    assert run.fetch_result().state is RunState.SUCCEEDED
    run2 = asyncio.run(job.atrigger())
    assert asyncio.run(run2.aget_status()).ref == run2.ref
    assert len(rest_emu.launches) == 2


def test_cancel_and_attach(rest_emu, job):
    rest_emu.script(Script([("running", 60.0)]))
    run = job.trigger()
    same = job.attach(run.ref.to_string())
    same.cancel()
    assert same.wait_for_completion().state is RunState.CANCELLED
    assert rest_emu.cancels == [run.ref.id]
