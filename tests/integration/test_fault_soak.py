"""The fault soak (issue 12): a few hundred keyed runs across the six emulators, all at once,
while each emulator meets a fraction of all requests with a random fault. See
tests/integration/soak.py for the design and what is asserted.

``RUNBRIDGE_SOAK_SEED`` picks another seed (the plan and the fault draws follow it);
``RUNBRIDGE_SOAK_RUNS`` multiplies the number of runs (``RUNBRIDGE_SOAK_RUNS=10`` for a long
local soak); ``RUNBRIDGE_SOAK_RATE`` sets the fraction of requests that meet a fault (0.15).
Run with ``-s`` to see each soak's summary; a failure prints it with every problem found.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from runbridge.testing import Fault, RecordedRequest, Relay, Script, create_emulator
from runbridge.testing._emulator import RandomFaults
from tests.integration.soak import FAULT_RATE, SOAKS, Keys, fault_menu, soak_async, soak_sync

SEED = int(os.environ.get("RUNBRIDGE_SOAK_SEED", "20261125"))
SCALE = float(os.environ.get("RUNBRIDGE_SOAK_RUNS", "1"))
RATE = float(os.environ.get("RUNBRIDGE_SOAK_RATE", str(FAULT_RATE)))


def runs(base: int) -> int:
    return max(1, round(base * SCALE))


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("platform", list(SOAKS))
def test_fault_soak_sync(relay: Relay, platform: str) -> None:
    report = soak_sync(relay, platform, runs=runs(SOAKS[platform].sync_runs), seed=SEED, rate=RATE)
    relay.target = None
    print("\n" + report.summary())
    assert not report.problems, report.summary()


# -- the pieces the soak's oracle rests on ------------------------------------------------------------
def _request(path: str = "/api/v1/runs/r1", body: object = None) -> RecordedRequest:
    return RecordedRequest("GET", path, "", {}, body)


def test_random_faults_are_a_function_of_the_seed_and_the_request() -> None:
    def draws(seed: int) -> list[str | None]:
        chaos = RandomFaults(fault_menu(), rate=0.5, seed=seed)
        out = []
        for i in range(40):
            for _ in range(2):  # the same request twice: its second draw is its own
                fault = chaos.draw(_request(f"/api/v1/runs/r{i}"))
                out.append(fault.label if fault else None)
        return out

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    assert 20 < sum(label is not None for label in first) < 60
    assert len({label for label in first if label}) > 4


def test_random_faults_rate_may_depend_on_the_request() -> None:
    chaos = RandomFaults([(1.0, Fault("drop"))], rate=lambda r: 1.0 if "launch" in r.path else 0.0)
    assert chaos.draw(_request("/launch")) is not None
    assert chaos.draw(_request("/status")) is None


def test_truncate_and_garble_need_the_real_answer() -> None:
    with pytest.raises(ValueError, match="when='after'"):
        Fault("truncate")
    with pytest.raises(ValueError, match="when='after'"):
        Fault("garble", when="before")


def test_spoiled_answers(relay: Relay) -> None:
    """truncate: the real status, the body cut before its last byte, a matching length; garble:
    the real status and length, bytes that are not UTF-8; ok_only spares an error answer."""
    emu = relay.swap(create_emulator("rest"))
    run = emu.add_run(Script([("running", 30.0)]))
    with httpx.Client(base_url=relay.base_url, timeout=5.0) as http:
        whole = http.get(f"/api/v1/runs/{run.id}").content
        emu.inject(Fault("truncate", when="after", cut=1.0))
        cut = http.get(f"/api/v1/runs/{run.id}")
        emu.inject(Fault("garble", when="after", cut=0.5))
        garbled = http.get(f"/api/v1/runs/{run.id}")
        emu.inject(Fault("truncate", when="after", ok_only=True))
        spared = http.get("/api/v1/runs/no-such-run")
    relay.target = None
    assert whole.endswith(b'"params":null}}')
    assert cut.status_code == 200 and cut.content.endswith(b'"params":null}')  # one byte short
    assert cut.headers["content-length"] == str(len(cut.content))
    with pytest.raises(ValueError):
        json.loads(cut.content)
    assert garbled.status_code == 200 and len(garbled.content) == len(whole)
    with pytest.raises(UnicodeDecodeError):
        garbled.content.decode()
    assert spared.status_code == 404 and spared.json()["detail"].endswith("not found")
    assert [(m.fault.kind, m.answered) for m in emu.injected] == [
        ("truncate", 200),
        ("garble", 200),
    ], "the spared fault is not counted as met"


def test_script_for_picks_each_launch_its_script(relay: Relay) -> None:
    emu = relay.swap(create_emulator("rest"))
    scripts = {"a": Script(final="failed"), "b": Script(final="timed_out")}
    emu.script_for = lambda r: scripts.get(r.headers.get("idempotency-key", ""))
    with httpx.Client(base_url=relay.base_url, timeout=5.0) as http:
        finals = [
            http.post("/api/v1/jobs/j/runs", json={}, headers={"Idempotency-Key": key}).json()
            for key in ("b", "a", "c")
        ]
    relay.target = None
    # "c" has no script of its own: the default, which starts queued
    assert [f["run"]["status"] for f in finals] == ["timed_out", "failed", "queued"]


def test_keys_are_read_from_ids_derived_from_them() -> None:
    keys = Keys(SOAKS["vi"], ["soak.1.vi.async.00001", "soak.1.vi.async.00002"])
    (run_id,) = [t for t, k in keys.by_token.items() if k.endswith("2") and "-" in t]
    assert keys.of(_request(f"/workspaces/o/runs/{run_id}")) == "soak.1.vi.async.00002"
    assert keys.of(_request("/x", {"attributes": {"k": "soak.1.vi.async.00001"}})) == (
        "soak.1.vi.async.00001"
    )
    assert keys.of(_request("/workspaces/o/runs/other")) is None
