"""Triggerer scale: N concurrent waits in ONE event loop, over TLS, against the real triggers.

    .venv/bin/python bench/triggerer_scale.py --runs 1000 --json out.json   # ~20 min
    .venv/bin/python bench/triggerer_scale.py --runs 5000 --json out.json
    .venv/bin/python bench/triggerer_scale.py --quick                       # N=100, ~1 min
    .venv/bin/python bench/triggerer_scale.py --report out.json             # the tables again

The ``rest`` emulator (plus the one dbt Cloud endpoint its Airflow trigger polls) runs in its
own process (``bench/emulator_server.py``), serving HTTPS with a throwaway self-signed
certificate made at run time (``bench/tls.py``) that every contender trusts through
``SSL_CERT_FILE``. Each contender runs in a fresh process of its own against a fresh set of N
runs that end at random times (uniform over ``--ends``, 60-120 s by default, the same times
for every contender), polls every ``--interval`` seconds (5 s, fixed, no jitter), and starts
its waits staggered uniformly over the first interval. The contenders:

* ``aiohttp``        (e) the floor: one shared ``aiohttp.ClientSession`` (its defaults),
  N tasks doing GET -> raise_for_status -> JSON -> terminal? -> sleep;
* ``httpx-aiohttp``  (d) the same loop with the httpx API over ``httpx-aiohttp``'s transport
  (``HttpxAiohttpClient()``, its defaults);
* ``bare``           (a) the same loop over one ``httpx.AsyncClient()`` (httpx's defaults);
* ``capped``         (b) (a) with ``Semaphore(50)`` and a pool of 50;
* ``runbridge-httpx``          (c) ``AsyncRunClient.wait`` over httpx's own transport
  (``RUNBRIDGE_ASYNC_TRANSPORT=httpx``: what runbridge used before);
* ``runbridge-httpx-aiohttp``  (c) over ``httpx.AsyncClient`` with httpx-aiohttp's transport
  (``client=HttpxAiohttpClient(...)``, pool 100, keep-alive 60 s);
* ``runbridge-pool10``         (c) over httpx's own transport with a pool of 10 connections
  and ``max_in_flight=10`` (a pool small enough that its bookkeeping stays cheap);
* ``runbridge``                (c) with its default transport (``core/transport.py``: the
  aiohttp driver when aiohttp is installed);
* ``trigger`` / ``trigger-httpx``  (f) the real ``RunTrigger.run()`` of
  ``runbridge.airflow_provider.triggers`` (Airflow imported with ``AIRFLOW_HOME`` in a temp
  dir, the connection from an ``AIRFLOW_CONN_`` variable), its shared client on the default /
  httpx transport;
* ``dbt``            (g) ``DbtCloudRunJobTrigger.run()`` from apache-airflow-providers-dbt-cloud
  (installed without dependencies into a cache dir by ``bench/airflow_import.py``'s helper,
  outside the project environment) against the emulator's dbt Cloud job-run endpoint.

Measured per contender: waits done, checks made / due (an ideal poller's checks), CPU per check
(``time.process_time()`` of the client process / checks), TCP connections the emulator accepted
(and per 1,000 checks), RSS growth and (a separate untimed pass) tracemalloc heap per waiting
run, event-loop lag (a task sleeping 0.1 s: how late it wakes), detection delay (when the wait
saw the terminal state - when the run ended, p50/p99), check lateness, and the CPU every other
process used meanwhile ("other CPU"; a phase where it is above 25 % of a CPU is noisy and is
run again, ``--retry-noisy``). Ratios are taken within one invocation. ``--burn`` adds a busy
process on the client's CPU during every phase (the "under load" figure).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from concurrent_waits import (  # noqa: E402
    NOISY,
    TERMINAL,
    Emulator,
    _bench_call,
    _busy,
    _emit,
    _fmt,
    _percentile,
    core_fingerprint,
    run_worker,
)

VARIANTS = (
    "aiohttp",
    "httpx-aiohttp",
    "bare",
    "capped",
    "runbridge-httpx",
    "runbridge-httpx-aiohttp",
    "runbridge-pool10",
    "runbridge",
    "trigger-httpx",
    "trigger",
    "runbridge-batched",
    "trigger-batched",
    "dbt",
)
DEFAULT_VARIANTS = (
    "aiohttp",
    "httpx-aiohttp",
    "runbridge-httpx",
    "runbridge-httpx-aiohttp",
    "runbridge-pool10",
    "runbridge",
    "trigger",
    "dbt",
)
LABELS = {
    "aiohttp": "(e) bare loop, one aiohttp.ClientSession (the floor)",
    "httpx-aiohttp": "(d) bare loop, httpx API over httpx-aiohttp",
    "bare": "(a) bare loop, httpx.AsyncClient()",
    "capped": "(b) bare loop + Semaphore(50), httpx pool 50",
    "runbridge-httpx": "(c) AsyncRunClient.wait, httpx transport",
    "runbridge-httpx-aiohttp": "(c) AsyncRunClient.wait, httpx + httpx-aiohttp",
    "runbridge-pool10": "(c) AsyncRunClient.wait, httpx pool 10",
    "runbridge": "(c) AsyncRunClient.wait, default transport",
    "trigger-httpx": "(f) RunTrigger.run(), httpx transport",
    "trigger": "(f) RunTrigger.run(), default transport",
    "runbridge-batched": "(c) AsyncRunClient.wait, batched (the hub)",
    "trigger-batched": "(f) RunTrigger.run(), batched (the hub)",
    "dbt": "(g) DbtCloudRunJobTrigger.run()",
}
FLOOR, DBT = "aiohttp", "dbt"
RUNBRIDGE = ("runbridge", "trigger", "runbridge-batched", "trigger-batched")  # the targets
DBT_DEPS = Path(tempfile.gettempdir()) / "runbridge-bench-dbt-cloud"
ACCOUNT = 70403103916  # any number: the dbt Cloud account id in the URL
TOKEN = "bench-t0ken-never-logged"  # sent by every contender that authenticates
CONN_ID, DBT_CONN_ID = "rb_bench", "dbt_bench"


# ------------------------------------------------------------------------------------------
# worker: one contender, in its own process
# ------------------------------------------------------------------------------------------
def _rest_options(variant: str) -> dict[str, Any]:
    """The ``rest`` provider's options: with the batch endpoint for the ``-batched`` ones.

    Batching is the hub's (``runbridge.core.hub``, ``runbridge.testing.rest.REST_BATCH``), built
    on another branch: until it is merged, the batched contenders fail with this message."""
    from runbridge.testing import rest

    options = dict(rest.REST_CONFIG)
    if variant.endswith("-batched"):
        batch = getattr(rest, "REST_BATCH", None)
        if batch is None:
            raise SystemExit(f"{variant}: needs the hub (runbridge.testing.rest.REST_BATCH)")
        options["batch"] = batch
    return options


def _client_options(pairs: list[str]) -> dict[str, Any]:
    """``--client-option NAME=VALUE`` pairs, each value read as JSON where it is JSON."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--client-option wants NAME=VALUE, got {pair!r}")
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return options


def _airflow_env(cfg: dict[str, Any]) -> None:
    """Airflow in a throwaway home (as tests/airflow/conftest.py), the two connections."""
    home = Path(tempfile.mkdtemp(prefix="runbridge-bench-airflow-"))
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
                {
                    "conn_type": "runbridge",
                    "host": cfg["base_url"],
                    "password": TOKEN,
                    "extra": {"platform": "rest", "options": _rest_options(cfg["variant"])},
                }
            ),
            f"AIRFLOW_CONN_{DBT_CONN_ID.upper()}": json.dumps(
                {
                    "conn_type": "dbt_cloud",
                    "host": cfg["base_url"].split("://", 1)[1],
                    "login": str(ACCOUNT),
                    "password": TOKEN,
                }
            ),
        }
    )
    if cfg["variant"] == DBT:
        sys.path.append(str(cfg.get("dbt_deps") or DBT_DEPS))  # after the project's packages


async def _run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    import psutil

    variant: str = cfg["variant"]
    base_url: str = cfg["base_url"]
    interval: float = cfg["interval"]
    n: int = cfg["n"]
    ends: list[float] = cfg["ends"]
    mem_pass: bool = cfg.get("mem_pass", False)
    budget: float = cfg["budget"]
    mono = time.monotonic
    lateness: list[float] = []
    due: dict[str, float] = {}  # run id -> when its next check is due (time.monotonic())
    detected: dict[str, float] = {}  # run id -> when its wait saw the run's end
    outcomes: dict[str, int] = {}
    errors = [0]
    seen: set[str] = set()
    offsets = [interval * i / n for i in range(n)]
    transport = "-"

    def checked(key: str) -> float:
        """A check's answer is in hand: its lateness, and the first checks (memory pass)."""
        now = mono()
        lateness.append(now - due[key])
        if key not in seen:
            seen.add(key)
        return now

    def ended(key: str, outcome: str) -> None:
        detected[key] = mono()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def hook(event: Any) -> None:  # runbridge's events: a check done, a sleep begun
        kind = event.kind
        if kind == "status":
            checked(event.ref.id)
        elif kind == "sleep":
            due[event.ref.id] = mono() + event.delay
        elif kind in ("transient_error", "retry"):
            errors[0] += 1

    check: Any = None
    closers: list[Any] = []
    rb_client: Any = None
    hub_client: Any = None  # the AsyncRunClient whose hub runs the waits (runbridge, trigger)
    if variant in ("bare", "capped", "httpx-aiohttp"):
        import httpx

        timeout = httpx.Timeout(30.0, connect=10.0)
        if variant == "bare":
            http = httpx.AsyncClient(timeout=timeout)
        elif variant == "capped":
            http = httpx.AsyncClient(
                timeout=timeout,
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=50),
            )
        else:
            from httpx_aiohttp import HttpxAiohttpClient

            http = HttpxAiohttpClient(timeout=timeout)
        closers.append(http.aclose)
        sem = asyncio.Semaphore(50) if variant == "capped" else None
        headers = {"authorization": f"Bearer {TOKEN}"}

        async def check(url: str) -> str:
            if sem is not None:
                async with sem:
                    response = await http.get(url, headers=headers)
            else:
                response = await http.get(url, headers=headers)
            response.raise_for_status()
            state: str = response.json()["run"]["status"]
            return state

        check_errors: tuple[type[BaseException], ...] = (httpx.HTTPError,)
    elif variant == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30.0, sock_connect=10.0),
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        closers.append(session.close)

        async def check(url: str) -> str:
            async with session.get(url) as response:
                response.raise_for_status()
                state: str = (await response.json())["run"]["status"]
            return state

        check_errors = (aiohttp.ClientError, asyncio.TimeoutError)
    elif variant.startswith("runbridge"):
        import httpx

        from runbridge.core.client import AsyncRunClient
        from runbridge.core.schedule import PollSchedule

        kwargs: dict[str, Any] = {}
        if variant == "runbridge-httpx-aiohttp":
            from httpx_aiohttp import HttpxAiohttpClient

            limits = httpx.Limits(
                max_connections=100, max_keepalive_connections=100, keepalive_expiry=60.0
            )
            kwargs["client"] = HttpxAiohttpClient(limits=limits)
            closers.append(kwargs["client"].aclose)
        elif variant == "runbridge-pool10":
            limits = httpx.Limits(
                max_connections=10, max_keepalive_connections=10, keepalive_expiry=60.0
            )
            kwargs["client"] = httpx.AsyncClient(limits=limits)
            kwargs["max_in_flight"] = 10
            closers.append(kwargs["client"].aclose)
        kwargs.update(cfg.get("client_options") or {})
        rb_client = AsyncRunClient(
            "rest",
            base_url,
            TOKEN,
            **_rest_options(variant),
            poll=PollSchedule.fixed(interval),
            hooks=[hook],
            **kwargs,
        )
        closers.append(rb_client.aclose)
        hub_client = rb_client
        transport = type(rb_client._http).__name__
    elif variant.startswith("trigger"):
        _airflow_env(cfg)
        from runbridge.airflow_provider.triggers import RunTrigger, connection_config
        from runbridge.core.shared import shared_async_client

        # the client every trigger of this connection shares on this loop: made here (the
        # same configuration, the same loop) so that the bench's hook sees its events
        config = await connection_config(CONN_ID)
        holder = shared_async_client(config, linger=None)
        shared = await holder.__aenter__()
        shared.hooks.append(hook)
        hub_client = shared
        transport = type(shared._http).__name__
        poll = {"first": interval, "factor": 1.0, "cap": interval, "jitter": 0.0}
    elif variant == DBT:
        _airflow_env(cfg)
        from airflow.providers.dbt.cloud.hooks.dbt import DbtCloudHook
        from airflow.providers.dbt.cloud.triggers.dbt import DbtCloudRunJobTrigger

        original = DbtCloudHook.get_job_status

        async def timed(self: Any, run_id: Any, *args: Any, **kw: Any) -> int:
            try:
                status: int = await original(self, run_id, *args, **kw)
                return status
            finally:
                due[run_id] = checked(run_id) + interval  # it sleeps next, if not done

        setattr(DbtCloudHook, "get_job_status", timed)  # noqa: B010 (timing every poll)
        transport = "aiohttp (a session per poll)"
    else:
        raise SystemExit(f"unknown variant {variant!r}")

    async def bare_wait(run_id: str, start: float) -> None:
        url = f"{base_url}/api/v1/runs/{run_id}"
        await asyncio.sleep(max(0.0, start - mono()))
        while True:
            state = None
            try:
                state = await check(url)
            except check_errors:
                errors[0] += 1
            now = checked(run_id)
            if state in TERMINAL:
                ended(run_id, state)
                return
            due[run_id] = now + interval
            await asyncio.sleep(interval)

    async def rb_wait(run_id: str, start: float) -> None:
        ref = rb_client.ref(run_id)
        await asyncio.sleep(max(0.0, start - mono()))
        status = await rb_client.wait(ref)
        ended(run_id, status.raw_state)

    async def trigger_wait(run_id: str, start: float) -> None:
        trigger = RunTrigger(CONN_ID, {"platform": "rest", "id": run_id}, poll=poll)
        await asyncio.sleep(max(0.0, start - mono()))
        async for event in trigger.run():
            payload = event.payload
            kind = payload.get("kind")
            ended(run_id, payload["status"]["raw_state"] if kind == "done" else str(kind))

    async def dbt_wait(run_id: str, start: float) -> None:
        trigger = DbtCloudRunJobTrigger(
            conn_id=DBT_CONN_ID,
            run_id=run_id,  # the emulator's ids are strings (dbt's are numbers)
            end_time=time.time() + 3600,
            poll_interval=interval,
            account_id=ACCOUNT,
        )
        await asyncio.sleep(max(0.0, start - mono()))
        async for event in trigger.run():
            ended(run_id, str(event.payload.get("status")))

    one_wait = {
        "aiohttp": bare_wait,
        "httpx-aiohttp": bare_wait,
        "bare": bare_wait,
        "capped": bare_wait,
        "dbt": dbt_wait,
    }.get(variant) or (rb_wait if variant.startswith("runbridge") else trigger_wait)

    proc = psutil.Process()
    rss_peak = [0]
    lags: list[float] = []

    async def sample_rss() -> None:
        last_report = mono()
        while True:
            rss = proc.memory_info().rss
            if rss > rss_peak[0]:
                rss_peak[0] = rss
            if mono() - last_report >= 10.0:  # progress, on stderr (shown if the worker fails)
                last_report = mono()
                sys.stderr.write(
                    f"[{variant}] t={last_report - t0:.1f}s checks={len(lateness)} "
                    f"done={len(detected)} cpu={time.process_time() - cpu0:.1f}s "
                    f"rss={rss >> 20}MiB\n"
                )
                sys.stderr.flush()
            await asyncio.sleep(0.25)

    async def sample_lag() -> None:  # how late a task sleeping 0.1 s wakes up
        while True:
            before = mono()
            await asyncio.sleep(0.1)
            lags.append(mono() - before - 0.1)

    ctx = None
    if base_url.startswith("https"):
        import ssl

        ctx = ssl.create_default_context()  # SSL_CERT_FILE: the throwaway certificate
    seeded = _bench_call(base_url, "POST", "/__bench/seed", {"n": n, "ends": ends}, ctx)
    ids: list[str] = seeded["ids"]
    run_end = {i: s + e for i, s, e in zip(ids, seeded["started"], ends, strict=True)}  # monotonic
    _bench_call(base_url, "POST", "/__bench/reset", None, ctx)
    if mem_pass:
        import tracemalloc

        tracemalloc.start()
    gc.collect()
    rss0 = proc.memory_info().rss
    rss_peak[0] = rss0
    heap0 = 0
    if mem_pass:
        heap0 = tracemalloc.get_traced_memory()[0]
    before = _bench_call(base_url, "GET", "/__bench/stats", None, ctx)
    samplers = [asyncio.create_task(sample_rss()), asyncio.create_task(sample_lag())]

    cpu0 = time.process_time()
    times0 = proc.cpu_times()
    machine0 = psutil.cpu_times()
    t0 = mono() + 0.05
    for i, run_id in enumerate(ids):
        due[run_id] = t0 + offsets[i]
    tasks = [asyncio.ensure_future(one_wait(ids[i], t0 + offsets[i])) for i in range(n)]
    finished = threading.Lock()

    def finish(cut: bool, heap_per_run: float | None = None) -> dict[str, Any]:
        """The result; called by the loop, or by the watchdog thread if the loop is stuck."""
        now = mono()
        wall = now - t0
        cpu = time.process_time() - cpu0
        times1 = proc.cpu_times()
        machine1 = psutil.cpu_times()
        samples = list(lateness)
        checks = len(samples)
        if cut and not mem_pass:  # checks due but never made count, as late as they are now
            samples += [now - d for key, d in list(due.items()) if key not in detected and d < now]
        after = _bench_call(base_url, "GET", "/__bench/stats", None, ctx)
        # an ideal poller: wait i checks at offsets[i] + k*interval until (and including) its
        # first check after its run ended; when cut off, only those due by then
        due_checks = 0
        for i, run_id in enumerate(ids):
            off, end = offsets[i], run_end[run_id] - t0
            ideal = math.floor(max(0.0, end - off) / interval) + 2
            if cut:
                ideal = min(ideal, math.floor((wall - off) / interval) + 1 if wall >= off else 0)
            due_checks += ideal
        delays = [detected[k] - run_end[k] for k in detected]
        if cut and not mem_pass:
            delays += [now - e for k, e in run_end.items() if k not in detected and e < now]
        opened = after["connections_opened"] - before["connections_opened"] - 1
        result: dict[str, Any] = {
            "variant": variant,
            "transport": transport,
            "mem_pass": mem_pass,
            "n": n,
            "interval": interval,
            "waits_done": len(detected),
            "outcomes": dict(outcomes),
            "timed_out": cut and not mem_pass,
            "checks": checks,
            "due_checks": None if mem_pass else due_checks,
            "server_status_gets": after["status_gets"],
            "server_requests": after["requests"] - before["requests"],
            "server_batch_requests": after.get("batch_requests", 0),
            # requests the platform served per poll interval, on average
            "requests_per_cycle": after["requests"] * interval / wall if wall > 0 else None,
            "errors": errors[0],
            "cpu_s": cpu,
            "cpu_user_s": times1.user - times0.user,
            "cpu_system_s": times1.system - times0.system,
            "machine_busy_cpu_s": _busy(machine1) - _busy(machine0),
            "machine_steal_s": getattr(machine1, "steal", 0.0) - getattr(machine0, "steal", 0.0),
            "cpu_per_check_ms": 1000 * cpu / checks if checks else None,
            "connections_opened": opened,
            "connections_peak_open": after["connections_peak_open"],
            "connections_per_1000_checks": 1000 * opened / checks if checks else None,
            "rss_delta_per_run_kib": (rss_peak[0] - rss0) / n / 1024,
            "heap_per_run_kib": heap_per_run / 1024 if heap_per_run is not None else None,
            "lateness_p50_s": _percentile(samples, 0.5),
            "lateness_p99_s": _percentile(samples, 0.99),
            "detection_p50_s": _percentile(delays, 0.5),
            "detection_p99_s": _percentile(delays, 0.99),
            "detection_max_s": max(delays) if delays else None,
            "loop_lag_p50_ms": 1000 * (_percentile(lags, 0.5) or 0.0),
            "loop_lag_p99_ms": 1000 * (_percentile(lags, 0.99) or 0.0),
            "loop_lag_max_ms": 1000 * max(lags) if lags else None,
            "wall_s": wall,
            "server_cpu_s": after["cpu_seconds"] - before["cpu_seconds"],
        }
        if hub_client is not None:  # why checks went alone (core/hub.py's counters)
            hubs = list(getattr(hub_client, "_hubs", {}).values())
            singles: dict[str, int] = {}
            for hub in hubs:
                for why, count in getattr(hub, "singles", {}).items():
                    singles[why] = singles.get(why, 0) + count
            batched = sum(getattr(hub, "batched_checks", 0) for hub in hubs)
            alone = sum(singles.values())
            result["hub"] = {
                "batches": sum(getattr(hub, "batches_sent", 0) for hub in hubs),
                "batched_checks": batched,
                "singles": singles,
                "batched_share": batched / (batched + alone) if batched + alone else None,
            }
        result["other_cpu_s"] = max(
            0.0, result["machine_busy_cpu_s"] - result["cpu_s"] - result["server_cpu_s"]
        )
        return result

    def watchdog() -> None:
        if finished.acquire(blocking=False):
            _emit(finish(cut=True))
            os._exit(0)

    timer = threading.Timer(budget + 10, watchdog)
    timer.daemon = True
    timer.start()

    heap_per_run = None
    if mem_pass:
        deadline = mono() + budget
        while len(seen) < n and mono() < deadline:
            await asyncio.sleep(0.1)
        gc.collect()
        heap_per_run = (tracemalloc.get_traced_memory()[0] - heap0) / n
        cut = len(seen) < n
    else:
        _, pending = await asyncio.wait(tasks, timeout=budget)
        cut = bool(pending)
    if not finished.acquire(blocking=False):
        await asyncio.sleep(3600)  # the watchdog is reporting; it exits the process
    timer.cancel()
    for sampler in samplers:
        sampler.cancel()
    result = finish(cut, heap_per_run)
    if not cut and not mem_pass:
        for close in closers:
            await close()
    return result


def worker(cfg: dict[str, Any]) -> None:
    import faulthandler

    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {cfg["cpu"]})
    os.environ.update(cfg.get("env") or {})
    faulthandler.dump_traceback_later(cfg["budget"] + 60, exit=True)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _emit(loop.run_until_complete(_run_variant(cfg)))
    os._exit(0)  # no graceful shutdown of thousands of tasks: report and leave


# ------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------
def _env_for(variant: str) -> dict[str, str]:
    return {"RUNBRIDGE_ASYNC_TRANSPORT": "httpx"} if variant.endswith("-httpx") else {}


class Burner:
    """``--burn``: one busy process on the client's CPU during a phase (a core's worth of load)."""

    def __init__(self, cpu: int | None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import time\nend = time.time() + 3600\nwhile time.time() < end: pass",
            ],
            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        )

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def noisy(r: dict[str, Any], burn: bool = False) -> bool:
    if not r.get("wall_s") or r.get("failed"):
        return False
    other = r["other_cpu_s"] - (r["wall_s"] if burn else 0.0)  # the burner is ours
    return other / r["wall_s"] > NOISY


def _label(variant: str) -> str:
    return LABELS.get(variant, variant)


def _table(rows: list[tuple[str, dict[str, Any], dict[str, float | None]]], burn: bool) -> str:
    head = (
        "| contender | waits done | checks made / due (share) | CPU/check ms | vs floor (e) "
        "| vs dbt (g) | TCP conns opened (peak open) | conns per 1k checks | RSS Δ/run KiB "
        "| heap/run KiB | loop lag p99 / max ms | detection delay p50 / p99 s | wall s "
        "| emulator CPU s | other CPU s |"
    )
    lines = [head, "|" + "|".join(["---"] * 15) + "|"]
    for label, r, ratio in rows:
        if noisy(r, burn):
            label += " (noisy)"
        stalled = f" (cut off at {r['wall_s']:.0f} s)" if r["timed_out"] else ""
        at_least = "≥ " if r["timed_out"] else ""
        errors = f", {r['errors']:.0f} errors" if r["errors"] else ""
        share = r["checks"] / r["due_checks"] if r["due_checks"] else None
        lines.append(
            f"| {label} | {r['waits_done']:.0f}/{r['n']}{stalled} "
            f"| {r['checks']:.0f} / {r['due_checks']:.0f} ({_fmt(share, '.0%')}){errors} "
            f"| {_fmt(r['cpu_per_check_ms'], '.3f')} "
            f"| {_fmt(ratio.get(FLOOR), '.2f')} | {_fmt(ratio.get(DBT), '.2f')} "
            f"| {r['connections_opened']:.0f} ({r['connections_peak_open']:.0f}) "
            f"| {_fmt(r['connections_per_1000_checks'], '.1f')} "
            f"| {r['rss_delta_per_run_kib']:.2f} | {_fmt(r.get('heap_per_run_kib'), '.2f')} "
            f"| {_fmt(r['loop_lag_p99_ms'], '.0f')} / {_fmt(r['loop_lag_max_ms'], '.0f')} "
            f"| {at_least}{_fmt(r['detection_p50_s'], '.2f')} / "
            f"{at_least}{_fmt(r['detection_p99_s'], '.2f')} "
            f"| {r['wall_s']:.1f} | {r['server_cpu_s']:.2f} | {r['other_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    burn = bool(meta.get("burn"))
    failed = [r for r in results if r.get("failed")]
    ok = [r for r in results if not r.get("failed")]
    timed = [r for r in ok if not r["mem_pass"]]
    heap = {r["variant"]: r["heap_per_run_kib"] for r in ok if r["mem_pass"]}
    # the phase of each contender to quote: its quietest (a noisy phase was run again)
    best: dict[str, dict[str, Any]] = {}
    for r in timed:
        b = best.get(r["variant"])
        if b is None or r["other_cpu_s"] / r["wall_s"] < b["other_cpu_s"] / b["wall_s"]:
            best[r["variant"]] = r

    def ratios(r: dict[str, Any], row: dict[str, dict[str, Any]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for base in (FLOOR, DBT):
            b = row.get(base)
            good = b and b["cpu_per_check_ms"] and r["cpu_per_check_ms"]
            out[base] = r["cpu_per_check_ms"] / b["cpu_per_check_ms"] if good else None  # type: ignore[index]
        return out

    out: list[str] = []
    if len(timed) > len(best):
        out += ["Every phase, in the order run:", ""]
        out += [_table([(_label(r["variant"]), r, ratios(r, best)) for r in timed], burn), ""]
        out += ["The quietest phase of each contender:", ""]
    rows = []
    for variant in VARIANTS:
        if variant in best:
            r = {**best[variant], "heap_per_run_kib": heap.get(variant)}
            label = _label(variant)
            if r.get("transport") not in (None, "-") and variant.startswith(
                ("runbridge", "trigger")
            ):
                label += f" [{r['transport']}]"
            rows.append((label, r, ratios(r, best)))
    out += [_table(rows, burn), ""]
    if any(noisy(r, burn) for r in timed):
        out += [
            f"(noisy): other processes used more than {NOISY:.0%} of a CPU during that phase "
            "(the 'other CPU s' column"
            + ("; the --burn process's own CPU is not counted as other" if burn else "")
            + "); its numbers are less reliable.",
            "",
        ]
    for r in failed:
        kind = "tracemalloc pass" if r["mem_pass"] else "phase"
        out.append(
            f"FAILED {kind} of {r['variant']}: {r['failed']}: {r.get('stderr_tail', '')[-800:]}"
        )
    out += targets(best, heap, meta)
    return "\n".join(out)


def targets(
    best: dict[str, dict[str, Any]], heap: dict[str, float | None], meta: dict[str, Any]
) -> list[str]:
    """Issue 15's targets, for runbridge's contenders (unbatched: the hub is not here)."""
    out = ["", "Targets (issue 15; the batched ones need the hub's contenders):"]
    dbt = best.get(DBT)
    interval = meta["interval"]

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    for variant in RUNBRIDGE:
        r = best.get(variant)
        if r is None:
            continue
        name = _label(variant)
        batched = variant.endswith("-batched")
        cpu = r["cpu_per_check_ms"]
        if dbt and dbt["cpu_per_check_ms"] and cpu:
            ratio = cpu / dbt["cpu_per_check_ms"]
            bound = 0.05 if batched else 0.2
            out.append(
                f"- {name}: CPU/check {cpu:.3f} ms = 1/{1 / ratio:.1f} of dbt's -> "
                f"{verdict(ratio <= bound)} (<= 1/{1 / bound:.0f}); <= 0.4 ms -> "
                f"{verdict(cpu <= 0.4)}"
            )
        plain = best.get(variant.removesuffix("-batched")) if batched else None
        if plain and plain.get("requests_per_cycle") and r.get("requests_per_cycle"):
            fewer = plain["requests_per_cycle"] / r["requests_per_cycle"]
            out.append(
                f"- {name}: {r['requests_per_cycle']:.1f} requests per poll cycle, {fewer:.1f}x "
                f"fewer than unbatched -> {verdict(fewer >= 20)} (>= 20x)"
            )
        hub = r.get("hub")
        if batched and hub and hub.get("batched_share") is not None:
            why = ", ".join(f"{k} {v}" for k, v in sorted(hub["singles"].items())) or "none"
            out.append(
                f"- {name}: {hub['batched_share']:.1%} of checks went in batches "
                f"({hub['batches']} batches, {hub['batched_checks']} checks; alone: {why})"
            )
        share = r["checks"] / r["due_checks"] if r["due_checks"] else 0.0
        p99 = r["detection_p99_s"]
        out.append(
            f"- {name}: due checks made {share:.1%} -> {verdict(share >= 0.99)} (every one, "
            f">= 99 %); detection p99 {_fmt(p99, '.2f')} s -> "
            f"{verdict(p99 is not None and p99 <= interval)} (<= {interval:g} s)"
        )
        per_k = r["connections_per_1000_checks"]
        out.append(
            f"- {name}: {_fmt(per_k, '.1f')} TCP connections per 1,000 checks -> "
            f"{verdict(per_k is not None and per_k <= 10)} (<= 10)"
        )
        h = heap.get(variant)
        mem = h if h is not None else r["rss_delta_per_run_kib"]
        what = "heap" if h is not None else "RSS"
        limit = 10 if batched else 20
        out.append(
            f"- {name}: {mem:.1f} KiB {what} per waiting run -> {verdict(mem <= limit)} "
            f"(<= {limit})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="N=100, 1 s poll, runs end at 3-6 s")
    parser.add_argument("--runs", type=int, default=None, help="N concurrent waits (default 1000)")
    parser.add_argument("--interval", type=float, default=None, help="poll interval s (5)")
    parser.add_argument("--ends", default=None, help="runs end uniformly in LO,HI s (60,120)")
    parser.add_argument("--seed", type=int, default=15, help="random seed of the end times")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--tracemalloc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an untimed pass per contender for heap per waiting run (default: off with --quick)",
    )
    parser.add_argument("--retry-noisy", type=int, default=1, help="re-run a noisy phase K times")
    parser.add_argument("--burn", action="store_true", help="a busy process on the client's CPU")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--dbt-deps", type=Path, default=DBT_DEPS)
    parser.add_argument(
        "--client-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an AsyncRunClient argument for the runbridge contenders (max_in_flight=10, "
        "request_timeout=2, ...: an overload made on purpose); repeatable",
    )
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--report", metavar="PATH")
    args = parser.parse_args()

    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        print(_header(saved["meta"]))
        print(render(saved["results"], saved["meta"]))
        return

    quick = args.quick
    n = args.runs or (100 if quick else 1000)
    interval = args.interval or (1.0 if quick else 5.0)
    lo, hi = (float(x) for x in (args.ends or ("3,6" if quick else "60,120")).split(","))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown contender {v!r}; choose from {', '.join(VARIANTS)}")
    if not (1 <= n <= 50_000) or interval <= 0 or not 0 < lo <= hi:
        parser.error("need 1 <= --runs <= 50000, a positive --interval, 0 < LO <= HI")
    tracemalloc_pass = (not quick) if args.tracemalloc is None else args.tracemalloc
    rng = random.Random(args.seed)
    ends = [round(rng.uniform(lo, hi), 3) for _ in range(n)]
    budget = hi + 3 * interval + 30
    if DBT in variants:
        sys.path.insert(0, str(ROOT / "bench"))
        from airflow_import import install_dbt

        install_dbt(args.dbt_deps)

    cpus = sorted(os.sched_getaffinity(0))
    pin = (len(cpus) >= 2) if args.pin is None else args.pin
    client_cpu, emulator_cpu = (cpus[0], cpus[-1]) if pin and len(cpus) >= 2 else (None, None)
    tmp = Path(tempfile.mkdtemp(prefix="runbridge-bench-tls-"))
    emu_args: list[str] = []
    if args.tls:
        from tls import make_certificate

        cert, key = make_certificate(tmp)
        os.environ["SSL_CERT_FILE"] = str(cert)  # every contender trusts it (workers inherit)
        emu_args = ["--certfile", str(cert), "--keyfile", str(key)]
    phases = len(variants) * (2 + args.retry_noisy) + 2
    emu = Emulator(max_seconds=phases * (budget + 120) + 300, cpu=emulator_cpu, args=emu_args)
    import httpx

    meta: dict[str, Any] = {
        "n": n,
        "interval": interval,
        "ends": [lo, hi],
        "seed": args.seed,
        "tls": args.tls,
        "burn": args.burn,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "aiohttp": _version("aiohttp"),
        "httpx_aiohttp": _version("httpx-aiohttp"),
        "dbt_provider": _dbt_version(args.dbt_deps),
        "emulator_http": emu.http_impl,
        "runbridge": core_fingerprint(),
        "pinned": {"client_cpu": client_cpu, "emulator_cpu": emulator_cpu},
        "argv": sys.argv[1:],
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    print(_header(meta), flush=True)
    print(f"emulator: {emu.base_url} ({emu.http_impl}, pid {emu.proc.pid})", flush=True)
    results: list[dict[str, Any]] = []

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    common = {
        "base_url": emu.base_url,
        "n": n,
        "interval": interval,
        "ends": ends,
        "budget": budget,
        "cpu": client_cpu,
        "dbt_deps": str(args.dbt_deps),
        "client_options": _client_options(args.client_option),
    }

    def phase(cfg: dict[str, Any], what: str) -> dict[str, Any]:
        print(f"  [{what}] {cfg['variant']} ...", end=" ", flush=True)
        burner = Burner(client_cpu) if args.burn and not cfg.get("mem_pass") else None
        try:
            r = run_worker(cfg, Path(__file__).resolve())
        finally:
            if burner is not None:
                burner.stop()
        results.append(r)
        save()
        if r.get("failed"):
            print(f"FAILED: {r['failed']}\n{r.get('stderr_tail', '')[-1500:]}", flush=True)
        elif r["mem_pass"]:
            print(f"{_fmt(r['heap_per_run_kib'], '.2f')} KiB per waiting run", flush=True)
        else:
            print(
                f"{r['checks']}/{r['due_checks']} checks, {_fmt(r['cpu_per_check_ms'], '.3f')} "
                f"ms/check, {r['connections_opened']} conns, detection p99 "
                f"{_fmt(r['detection_p99_s'], '.2f')} s, other CPU {r['other_cpu_s']:.1f} s"
                f"{' (noisy)' if noisy(r, args.burn) else ''}",
                flush=True,
            )
        time.sleep(0.5)
        return r

    try:
        for variant in variants:
            cfg = {**common, "variant": variant, "env": _env_for(variant)}
            r = phase(cfg, "timed")
            for attempt in range(args.retry_noisy):
                if not noisy(r, args.burn):
                    break
                r = phase(cfg, f"again, noisy #{attempt + 1}")
        if tracemalloc_pass:
            for variant in variants:
                cfg = {
                    **common,
                    "variant": variant,
                    "env": _env_for(variant),
                    "ends": [3600.0] * n,
                    "mem_pass": True,
                    "budget": 3 * interval + 20,
                }
                phase(cfg, "tracemalloc")
    finally:
        emu.stop()
    print()
    print(render(results, meta))


def _header(meta: dict[str, Any]) -> str:
    lo, hi = meta["ends"]
    return (
        f"triggerer scale: N={meta['n']}, poll {meta['interval']:g} s, runs end at "
        f"{lo:g}-{hi:g} s, {'TLS' if meta['tls'] else 'plain HTTP'}"
        f"{', --burn' if meta.get('burn') else ''}; {meta['cpus']} CPUs, Python "
        f"{meta['python']}, httpx {meta['httpx']}, aiohttp {meta['aiohttp']}, httpx-aiohttp "
        f"{meta['httpx_aiohttp']}, dbt provider {meta['dbt_provider']}; {meta['runbridge']}; "
        f"started {meta.get('started', '?')}; arguments: {' '.join(meta['argv']) or '(none)'}"
    )


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _dbt_version(deps: Path) -> str:
    found = sorted(deps.glob("apache_airflow_providers_dbt_cloud-*.dist-info"))
    return found[-1].name.removesuffix(".dist-info").split("-")[1] if found else "not installed"


if __name__ == "__main__":
    main()
