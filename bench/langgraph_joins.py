"""N concurrent LangGraph waits on one client with the blocking-call bound at its default: the
joins held stay at the bound, and every run is still noticed within its poll interval.

    .venv/bin/python bench/langgraph_joins.py                 # N=2000, 5 s poll: ~3 min
    .venv/bin/python bench/langgraph_joins.py --runs 20 --interval 0.5 --ends 1,2   # smoke

Issue 15's "2,000 concurrent LangGraph joins with the bound at its default". The LangGraph
emulator (``runbridge.testing``; joins block until the run ends, with ``\\n`` heartbeats every
5 s, as the Agent Server does) runs in its own process (uvicorn, pinned to the last CPU where
there are two); N runs on their own threads, created once the client is ready, end at random
times, uniform over ``--ends`` (seed 15). This process (the client, pinned to CPU 0) runs N ``AsyncRunClient.wait()`` on one
client, ``max_long_polls`` at its default (50), a fixed ``--interval`` poll, waits started
staggered over the first interval. A wait that finds every join place taken checks its run
now (LangGraph has no batch form: one request per run), sleeps its poll interval and tries to
join again; so at most ``max_long_polls`` joins are open, and a run is never noticed later than
its poll schedule allows.

Measured (sampled every 0.1 s in the client): the most joins open at once (the client's own
count) and TCP connections open to the emulator (``psutil``; the bound is ``max_long_polls``
+ ``max_in_flight``); per run, the detection delay (when its wait returned - when the run
ended, from the emulator's clock, which is the system's monotonic clock); requests of each
kind the emulator served; client CPU per run. The verdicts: joins held <= the bound, every
detection delay <= one poll interval (+ 0.5 s of slack for a loaded loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SLACK = 0.5
"""Seconds a detection may exceed the poll interval (a loaded event loop, the request)."""


def serve(cfg: dict[str, Any]) -> None:
    """The emulator process: N runs, then serve until stdin closes."""
    from runbridge.testing import Script
    from runbridge.testing import serve as serve_emulator
    from runbridge.testing.langgraph import LangGraphEmulator

    rng = random.Random(cfg["seed"])
    lo, hi = cfg["ends"]
    emu = LangGraphEmulator()
    with serve_emulator(emu) as served:
        print(json.dumps({"base_url": served.base_url}), flush=True)
        sys.stdin.readline()  # the client is ready: the runs start now
        runs = []
        for _ in range(cfg["n"]):
            end = rng.uniform(lo, hi)
            run = served.add_run(Script([("running", end)], final="success"))
            runs.append({"id": run.id, "thread_id": run.thread_id, "end": run.started + end})
        print(json.dumps({"runs": runs}), flush=True)
        sys.stdin.read()  # until the parent closes it
        counts: dict[str, int] = {}
        for request in served.requests:
            kind = "join" if request.path.endswith("/join") else f"{request.method} other"
            if request.method == "GET" and "/runs/" in request.path and kind != "join":
                kind = "status"
            counts[kind] = counts.get(kind, 0) + 1
        sys.stderr.write(json.dumps({"requests": counts}) + "\n")


async def client(cfg: dict[str, Any]) -> dict[str, Any]:
    import psutil

    from runbridge.core import AsyncRunClient, PollSchedule

    interval, runs = cfg["interval"], cfg["runs"]
    rb = AsyncRunClient("langgraph", cfg["base_url"], poll=PollSchedule.fixed(interval))
    port = int(cfg["base_url"].rsplit(":", 1)[1])
    proc = psutil.Process()
    peak = {"joins": 0, "connections": 0}
    delays: list[float] = []
    failures: list[str] = []

    lags: list[float] = []

    async def sample() -> None:
        while True:
            before = time.monotonic()
            peak["joins"] = max(peak["joins"], rb._long_polls)
            open_ = sum(
                1
                for c in proc.net_connections("tcp")
                if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED"
            )
            peak["connections"] = max(peak["connections"], open_)
            await asyncio.sleep(0.1)
            lags.append(time.monotonic() - before - 0.1)  # the loop's lag (and the sampling)

    async def one(i: int, run: dict[str, Any]) -> None:
        await asyncio.sleep(interval * i / len(runs))
        try:
            status = await rb.wait(rb.ref(run["id"], thread_id=run["thread_id"]))
        except Exception as exc:
            failures.append(f"{run['id']}: {exc!r}")
            return
        delays.append(time.monotonic() - run["end"])
        if status.raw_state != "success":
            failures.append(f"{run['id']}: {status.raw_state}")

    sampler = asyncio.create_task(sample())
    load0 = os.getloadavg()[0]
    cpu0 = time.process_time()
    await asyncio.gather(*(one(i, r) for i, r in enumerate(runs)))
    cpu = time.process_time() - cpu0
    sampler.cancel()
    await rb.aclose()
    delays.sort()
    lags.sort()
    return {
        "loop_lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))] if lags else None,
        "load_average": [load0, os.getloadavg()[0]],
        "n": len(runs),
        "done": len(delays),
        "failures": failures[:10],
        "max_long_polls": rb._max_long_polls,
        "pool_bound": rb._max_long_polls + rb._in_flight._value,
        "peak_joins": peak["joins"],
        "peak_connections": peak["connections"],
        "delay_p50_s": delays[len(delays) // 2] if delays else None,
        "delay_p99_s": delays[min(len(delays) - 1, int(0.99 * len(delays)))] if delays else None,
        "delay_max_s": delays[-1] if delays else None,
        "cpu_s": cpu,
        "cpu_per_run_ms": 1000 * cpu / len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--ends", default="60,120", help="runs end uniformly in LO,HI s")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return

    lo, hi = (float(x) for x in args.ends.split(","))
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    server = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            json.dumps({"n": args.runs, "ends": [lo, hi], "seed": args.seed}),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if pin:
            os.sched_setaffinity(server.pid, {cpus[-1]})
        assert server.stdout is not None and server.stdin is not None
        base_url = json.loads(server.stdout.readline())["base_url"]
        if pin:
            os.sched_setaffinity(0, {cpus[0]})
        import psutil  # noqa: F401  (imported before the runs start)

        import runbridge.core.client  # noqa: F401

        server.stdin.write("go\n")
        server.stdin.flush()
        seeded = json.loads(server.stdout.readline())
        print(
            f"langgraph joins: N={args.runs}, poll {args.interval:g} s, runs end at "
            f"{lo:g}-{hi:g} s; emulator {base_url}; {len(cpus)} CPUs",
            flush=True,
        )
        cfg = {"base_url": base_url, "runs": seeded["runs"], "interval": args.interval}
        result = asyncio.run(client(cfg))
    finally:
        if server.stdin is not None:
            server.stdin.close()  # the emulator reports what it served, then stops
        err = server.stderr.read() if server.stderr is not None else ""
        server.wait(timeout=60)
    served = json.loads(err.strip().splitlines()[-1]) if err.strip() else {}
    result["requests"] = served.get("requests", {})
    bound = result["max_long_polls"]
    limit = args.interval + SLACK
    ok_joins = result["peak_joins"] <= bound
    ok_conns = result["peak_connections"] <= result["pool_bound"]
    ok_delay = result["delay_max_s"] is not None and result["delay_max_s"] <= limit
    print(
        f"waits done {result['done']}/{result['n']}; failures {len(result['failures'])} "
        f"{result['failures'][:3]}\n"
        f"joins open at most {result['peak_joins']} (bound max_long_polls={bound}) -> "
        f"{'MET' if ok_joins else 'NOT MET'}\n"
        f"TCP connections open at most {result['peak_connections']} (pool bound "
        f"{result['pool_bound']}) -> {'MET' if ok_conns else 'NOT MET'}\n"
        f"detection delay p50 {result['delay_p50_s']:.2f} s, p99 {result['delay_p99_s']:.2f} s, "
        f"max {result['delay_max_s']:.2f} s (<= poll {args.interval:g} s + {SLACK:g}) -> "
        f"{'MET' if ok_delay else 'NOT MET'}\n"
        f"requests served: {result['requests']}; client CPU {result['cpu_s']:.1f} s "
        f"({result['cpu_per_run_ms']:.1f} ms per run); loop lag p99 "
        f"{result['loop_lag_p99_ms']:.0f} ms (with the sampling); load average "
        f"{result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f}"
    )
    result["verdicts"] = {"joins": ok_joins, "connections": ok_conns, "delay": ok_delay}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "result": result}))


if __name__ == "__main__":
    main()
