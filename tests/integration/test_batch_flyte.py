"""The hub against the Flyte emulator: running runs are polled with one ``ListRuns`` per
project (filtered to their names, at most MAX_LIST a request); a run the list shows ended is
read alone (GetRunDetails, with its outputs or error); watch streams are bounded by
``max_long_polls`` and the waits beyond the bound poll (in batches) without noticing their
run's end later than their poll schedule allows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from runbridge.core import AsyncRunClient, PollSchedule, RunNotFound, RunState
from runbridge.core.providers.flyte import MAX_LIST
from runbridge.testing import Script
from runbridge.testing.flyte import FlyteEmulator

pytestmark = pytest.mark.anyio

TOKEN = "flyte-access-token-42"
PROJECT, DOMAIN = "flytesnacks", "development"
LIST = "/flyteidl2.workflow.RunService/ListRuns"
DETAILS = "/flyteidl2.workflow.RunService/GetRunDetails"
WATCH = "/flyteidl2.workflow.RunService/WatchActionDetails"


@pytest.fixture
def emulator() -> FlyteEmulator:
    return FlyteEmulator(token=TOKEN)


def runs(emu: FlyteEmulator, n: int, running: float = 0.5) -> list[str]:
    script = Script([("running", running)], final="succeeded")
    return [emu.add_run(script).name for _ in range(n)]


def client(emu: FlyteEmulator, **options: Any) -> AsyncRunClient:
    return AsyncRunClient(
        "flyte",
        emu.base_url,
        TOKEN,
        project=PROJECT,
        domain=DOMAIN,
        read_outputs=False,
        **{"poll": PollSchedule.fixed(0.2), **options},
    )


async def test_running_runs_are_polled_with_one_list_per_project(emu: FlyteEmulator) -> None:
    ids = runs(emu, 150)
    async with client(emu) as c:
        results = await asyncio.gather(
            *(c.wait(c.ref(i), wait_timeout=20, use_join=False) for i in ids)
        )
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 150
    assert emu.lists and max(len(names) for names in emu.lists) == MAX_LIST
    details = emu.requests_to("POST", DETAILS)
    # each run read alone once: when the list showed it ended (for what a list leaves out)
    assert len(details) == 150
    assert len(emu.requests_to("POST", LIST)) * 20 <= 150 * 3  # vs >= 3 checks a wait


async def test_a_run_not_listed_is_that_waits_error_alone(emu: FlyteEmulator) -> None:
    ids = runs(emu, 4)
    async with client(emu) as c:
        results = await asyncio.gather(
            *(c.wait(c.ref(i), wait_timeout=20, use_join=False) for i in [*ids, "no-such-run"]),
            return_exceptions=True,
        )
    assert [getattr(r, "state", r) for r in results[:4]] == [RunState.SUCCEEDED] * 4
    assert isinstance(results[4], RunNotFound)


async def test_watch_streams_are_bounded_and_the_rest_poll_on_schedule(
    emu: FlyteEmulator,
) -> None:
    bound, n, running, interval = 4, 24, 1.5, 0.2
    ids = runs(emu, n, running=running)
    peak = 0
    ended: list[float] = []
    async with client(emu, max_long_polls=bound, poll=PollSchedule.fixed(interval)) as c:
        done = False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, c._long_polls)
                await asyncio.sleep(0.005)

        async def one(run_id: str) -> RunState:
            status = await c.wait(c.ref(run_id), wait_timeout=20)
            ended.append(time.monotonic())
            return status.state

        sampling = asyncio.create_task(sample())
        states = await asyncio.gather(*(one(i) for i in ids))
        done = True
        await sampling
    assert states == [RunState.SUCCEEDED] * n
    assert peak == bound  # the bound was used, never passed
    assert emu.requests_to("POST", WATCH) and emu.lists  # some watched, the rest polled
    last_end = emu.run(ids[-1]).started + running  # the emulator's clock is time.monotonic
    late = max(ended) - last_end
    assert late < interval + 0.5, f"a run's end was noticed {late:.2f}s after it"
