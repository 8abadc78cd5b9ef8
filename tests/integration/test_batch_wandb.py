"""The hub against the W&B emulator: runs due together are read with one GraphQL query (one
alias per run), within the emulator's alias limit, with faults."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from runbridge.core import AsyncRunClient, PollSchedule, RunNotFound, RunState
from runbridge.core.providers.wandb import MAX_BATCH
from runbridge.testing import Fault, Script
from runbridge.testing.wandb import DEFAULT_ENTITY, MAX_ROOT_FIELDS, WandBEmulator

pytestmark = pytest.mark.anyio

TOKEN = "wandb-emulator-key-0123456789abcdef0123456789"
PROJECT = "vision"


@pytest.fixture
def emulator() -> WandBEmulator:
    return WandBEmulator(token=TOKEN)


def runs(emu: WandBEmulator, n: int, running: float = 0.4) -> list[str]:
    script = Script([("running", running)], final="finished", outputs={"acc": 0.9})
    return [emu.add_run(script, project=PROJECT).id for _ in range(n)]


async def wait_all(emu: WandBEmulator, ids: list[str], **options: Any) -> list[Any]:
    async with AsyncRunClient(
        "wandb", emu.base_url, TOKEN, poll=PollSchedule.fixed(0.2), **options
    ) as client:
        return await asyncio.gather(
            *(client.wait(run_id, wait_timeout=20) for run_id in ids), return_exceptions=True
        )


def batch_sizes(emu: WandBEmulator) -> list[int]:
    return [len(fields) for kind, fields in emu.graphql if kind == "query" and len(fields) > 1]


def singles(emu: WandBEmulator) -> int:
    return sum(1 for kind, fields in emu.graphql if kind == "query" and fields == ["project"])


async def test_runs_due_together_are_read_with_one_aliased_query(emu: WandBEmulator) -> None:
    assert MAX_BATCH <= MAX_ROOT_FIELDS
    ids = runs(emu, 70)
    results = await wait_all(emu, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 70
    assert results[0].outputs["summary"] == {"acc": 0.9}  # read from the batch's answer
    assert results[0].ref.id == ids[0].rsplit("/", 1)[1]
    sizes = batch_sizes(emu)
    assert max(sizes) == MAX_BATCH and all(s <= MAX_BATCH for s in sizes)
    assert singles(emu) == 0


async def test_an_unknown_run_in_a_batch_is_that_waits_error_alone(emu: WandBEmulator) -> None:
    ids = runs(emu, 5)
    missing = f"{DEFAULT_ENTITY}/{PROJECT}/no-such-run"
    results = await wait_all(emu, [*ids, missing])
    assert [r.state for r in results[:5]] == [RunState.SUCCEEDED] * 5
    assert isinstance(results[5], RunNotFound)
    assert singles(emu) == 1  # null in the batch's answer, then checked alone: a 404 there


async def test_a_batch_over_the_alias_limit_falls_back_to_single_queries(
    emu: WandBEmulator,
) -> None:
    emu.max_root_fields = 10  # a stricter server than the provider assumes
    ids = runs(emu, 30, running=0.3)
    results = await wait_all(emu, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 30
    refused = [fields for kind, fields in emu.graphql if kind == "too_large"]
    assert len(refused) == 2  # the 30-alias query, sent once more as a batch, then...
    assert singles(emu) >= 30  # ...each run alone


async def test_a_batch_answered_500_is_sent_again(emu: WandBEmulator) -> None:
    ids = runs(emu, 8, running=0.3)
    emu.inject(Fault("status", status=500, path="/graphql", times=1))
    results = await wait_all(emu, ids)
    assert [r.state for r in results] == [RunState.SUCCEEDED] * 8
    assert len(emu.injected) == 1
    assert singles(emu) == 0
