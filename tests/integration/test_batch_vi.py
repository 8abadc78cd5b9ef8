"""The hub against the Vi emulator: runs due together are read from one page of the run list
(newest first, at most 1000 runs a page, the SDK's and the emulator's limit); a run not on
the page is checked alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runbridge.core import AsyncRunClient, PollSchedule, RunNotFound, RunState
from runbridge.testing import Script
from runbridge.testing.vi import ViEmulator

pytestmark = pytest.mark.anyio

ORG = "org-emu"
TOKEN = "dtvi_" + "k" * 98
RUNS = f"/workspaces/{ORG}/runs"


@pytest.fixture
def emulator() -> ViEmulator:
    return ViEmulator(token=TOKEN, organization_id=ORG)


def runs(emu: ViEmulator, n: int, running: float = 0.4) -> list[str]:
    script = Script([("Pending", 0.05), ("Running", running)], final="Succeeded")
    return [emu.add_run(script).id for _ in range(n)]


async def wait_all(emu: ViEmulator, ids: list[str]) -> list[Any]:
    async with AsyncRunClient(
        "vi", emu.base_url, TOKEN, organization_id=ORG, poll=PollSchedule.fixed(0.2)
    ) as client:
        return await asyncio.gather(
            *(client.wait(client.ref(i), wait_timeout=20) for i in ids), return_exceptions=True
        )


def lists(emu: ViEmulator) -> list[str]:
    return [r.query for r in emu.requests_to("GET", RUNS) if r.path == RUNS]


def singles(emu: ViEmulator) -> list[str]:
    return [r.path for r in emu.requests_to("GET", RUNS + "/")]


async def test_runs_due_together_are_read_from_one_page_of_the_run_list(emu: ViEmulator) -> None:
    ids = runs(emu, 150)
    results = await wait_all(emu, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 150
    assert lists(emu) and all(q == "s=600" for q in lists(emu))  # 4 x 150, within 1..1000
    assert singles(emu) == []


async def test_a_run_older_than_the_page_is_checked_alone(emu: ViEmulator) -> None:
    old = runs(emu, 2, running=0.3)
    newer = Script([("Running", 60.0)])
    for _ in range(120):  # newer runs push the two off a 100-run page
        emu.add_run(newer)
    results = await wait_all(emu, old)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 2
    assert lists(emu)
    assert sorted({p.rsplit("/", 1)[1] for p in singles(emu)}) == sorted(old)


async def test_an_unknown_run_is_that_waits_error_alone(emu: ViEmulator) -> None:
    ids = runs(emu, 3)
    results = await wait_all(emu, [*ids, "no-such-run"])
    assert [r.state for r in results[:3]] == [RunState.SUCCEEDED] * 3
    assert isinstance(results[3], RunNotFound)
    assert singles(emu) == [f"{RUNS}/no-such-run"]
