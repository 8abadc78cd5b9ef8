"""What runbridge's own code costs per status check, without the network.

    .venv/bin/python bench/check_overhead.py [--checks 20000] [--rounds 3]

Drives the real wait flow (``FlowContext.wait`` -> ``RestProvider.status`` -> parsing ->
``RunStatus`` -> events -> the next ``Sleep``) with a canned answer of the ``rest``
emulator's shape, plus the driver's per-request pieces (``_httpx_args`` building the
httpx arguments, ``_response`` copying an ``httpx.Response``), and compares it with what
the bare loop does with the same answer (``json.loads`` -> dig out the state -> terminal?).
Everything else a check costs (httpx, httpcore, the event loop, the socket) is the same
for both and is measured by ``concurrent_waits.py``. One process, no I/O, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from runbridge.core.client import AsyncRunClient  # noqa: E402
from runbridge.core.flows import WaitOptions  # noqa: E402
from runbridge.core.http import Request, Sleep  # noqa: E402
from runbridge.core.schedule import PollSchedule  # noqa: E402
from runbridge.testing.rest import REST_CONFIG  # noqa: E402

RUN_ID = "0cc541a0-41cf-4f25-a98d-acd908fedad8"
BODY = json.dumps(
    {
        "run": {
            "id": RUN_ID,
            "job": "bench",
            "status": "running",
            "created_at": "2026-11-25T09:31:57.597863+00:00",
            "updated_at": "2026-11-25T09:31:57.645656+00:00",
            "finished_at": None,
            "url": f"http://127.0.0.1:45109/ui/runs/{RUN_ID}",
            "error": None,
            "result": None,
            "params": None,
        }
    },
    separators=(",", ":"),
).encode()
HEADERS = {"content-type": "application/json", "content-length": str(len(BODY))}
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


def runbridge_checks(n: int, hooks: bool) -> float:
    """Seconds for ``n`` checks through the flow and the driver's per-request pieces."""
    events: list[object] = []
    client = AsyncRunClient(
        "rest",
        "http://127.0.0.1:1",
        **REST_CONFIG,
        poll=PollSchedule.fixed(5.0),
        hooks=[events.append] if hooks else [],
    )
    ref = client.ref(RUN_ID)
    options = WaitOptions(poll=PollSchedule.fixed(5.0))
    raw = httpx.Response(200, headers=HEADERS, content=BODY)
    flow = client._flows().wait(ref, options)
    step = next(flow)
    start = time.perf_counter()
    for _ in range(n):
        assert isinstance(step, Request)
        client._httpx_args(step)  # what _send builds for httpx
        response = client._response(step, raw, BODY)  # what _send hands back to the flow
        step = flow.send(response)  # -> parse, events, the next Sleep
        assert isinstance(step, Sleep)
        step = flow.send(None)  # the sleep is over: -> the next Request
        events.clear()
    elapsed = time.perf_counter() - start
    flow.close()
    return elapsed


def bare_checks(n: int) -> float:
    """Seconds for ``n`` times what the bare loop does with an answer."""
    raw = httpx.Response(200, headers=HEADERS, content=BODY)
    start = time.perf_counter()
    for _ in range(n):
        state = raw.json()["run"]["status"]
        if state in TERMINAL:
            raise AssertionError
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()
    n = max(1, min(args.checks, 2_000_000))
    rounds = max(1, min(args.rounds, 50))
    bare = min(bare_checks(n) for _ in range(rounds)) / n * 1e6
    plain = min(runbridge_checks(n, hooks=False) for _ in range(rounds)) / n * 1e6
    hooked = min(runbridge_checks(n, hooks=True) for _ in range(rounds)) / n * 1e6
    print(f"{n} checks, best of {rounds} rounds (µs per check, no network):")
    print(f"  bare loop's work on the answer (json + state + terminal?): {bare:7.1f}")
    print(f"  runbridge: flow + provider + RunStatus + driver pieces:    {plain:7.1f}")
    print(f"  runbridge, with one event hook (as concurrent_waits.py):   {hooked:7.1f}")
    print(f"  runbridge adds {plain - bare:.1f} µs per check over the bare loop")


if __name__ == "__main__":
    main()
