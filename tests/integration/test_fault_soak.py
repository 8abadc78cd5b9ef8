"""The fault soak (issue 12): a few hundred keyed runs across the six emulators, all at once,
while each emulator meets a fraction of all requests with a random fault. See
tests/integration/soak.py for the design and what is asserted.

``RUNBRIDGE_SOAK_SEED`` picks another seed (the plan and the fault draws follow it);
``RUNBRIDGE_SOAK_RUNS`` multiplies the number of runs (``RUNBRIDGE_SOAK_RUNS=10`` for a long
local soak); ``RUNBRIDGE_SOAK_RATE`` sets the fraction of requests that meet a fault (0.15).
Run with ``-s`` to see each soak's summary; a failure prints it with every problem found.
"""

from __future__ import annotations

import os

import pytest

from runbridge.testing import Relay
from tests.integration.soak import FAULT_RATE, SOAKS, soak_async, soak_sync

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("RUNBRIDGE_SOAK_SEED", "20261125"))
SCALE = float(os.environ.get("RUNBRIDGE_SOAK_RUNS", "1"))
RATE = float(os.environ.get("RUNBRIDGE_SOAK_RATE", str(FAULT_RATE)))


def runs(base: int) -> int:
    return max(1, round(base * SCALE))


@pytest.mark.anyio
@pytest.mark.parametrize("platform", list(SOAKS))
async def test_fault_soak_async(relay: Relay, platform: str) -> None:
    report = await soak_async(
        relay, platform, runs=runs(SOAKS[platform].runs), seed=SEED, rate=RATE
    )
    relay.target = None
    print("\n" + report.summary())
    assert sum(report.faults.values()) > 0, "the soak met no fault"
    assert not report.problems, report.summary()


@pytest.mark.parametrize("platform", list(SOAKS))
def test_fault_soak_sync(relay: Relay, platform: str) -> None:
    report = soak_sync(relay, platform, runs=runs(SOAKS[platform].sync_runs), seed=SEED, rate=RATE)
    relay.target = None
    print("\n" + report.summary())
    assert not report.problems, report.summary()
