"""N concurrent waits in ONE event loop: the shape of an Airflow triggerer.

    .venv/bin/python bench/concurrent_waits.py                 # N=5000, 5 s interval (about 4 min)
    .venv/bin/python bench/concurrent_waits.py --quick         # N=200, smoke test (< 20 s)
    .venv/bin/python bench/concurrent_waits.py --runs 1000 --repeat 3 --json out.json

The ``rest`` emulator runs in its own process (``bench/emulator_server.py``: uvicorn, one
worker, counting the TCP connections it accepts). Each client variant runs in a fresh
process of its own, so its CPU time and memory are the client's alone, against a fresh
set of N runs seeded just before it starts (each ``running`` for ``--duration`` seconds,
then ``succeeded``). All variants check every ``--interval`` seconds (a fixed schedule,
no jitter) and start their N waits staggered identically, uniformly over the first
interval, so they make the same checks at the same times:

* ``bare``      one shared ``httpx.AsyncClient()`` (httpx defaults: 100 connections, 20
  kept alive), N tasks doing GET -> ``raise_for_status`` -> JSON -> terminal? -> sleep;
* ``capped``    the same loop with ``asyncio.Semaphore(in_flight)`` around each request and a
  pool of exactly ``in_flight`` connections (the fair baseline; ``--capped-pool`` to change);
* ``runbridge`` ``AsyncRunClient("rest", url, **REST_CONFIG, poll=PollSchedule.fixed(interval))``
  and ``asyncio.gather`` of N ``wait(ref)`` (its own client: ``max_in_flight=50``, pool 100).

Measured per variant: status checks made (client and server side), client CPU seconds
(``time.process_time()`` of the client process over the timed section: user + system, all
threads), CPU per check, TCP connections the emulator accepted, RSS growth per waiting run
(and, in a separate untimed pass, tracemalloc heap per waiting run), check lateness (when a
check's answer was in hand minus when the check was due), wall time. What every column
means, results and caveats: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = ("bare", "capped", "runbridge")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
CPU_TARGET = 1.3
NOISY = 0.25  # other processes used more than this share of a CPU during a run


# ------------------------------------------------------------------------------------------
# the emulator's bench routes (plain urllib: one short connection each, outside the timing)
# ------------------------------------------------------------------------------------------
def _bench_call(
    base_url: str, method: str, path: str, body: Any = None, context: Any = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req, timeout=60, context=context) as resp:
        return json.loads(resp.read())


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# ------------------------------------------------------------------------------------------
# worker: one variant, in its own process
# ------------------------------------------------------------------------------------------
async def _run_variant(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx
    import psutil

    variant: str = cfg["variant"]
    base_url: str = cfg["base_url"]
    interval: float = cfg["interval"]
    n: int = cfg["n"]
    in_flight: int = cfg["in_flight"]
    pool: int = cfg.get("capped_pool") or in_flight
    mem_pass: bool = cfg.get("mem_pass", False)
    budget: float = cfg["budget"]
    mono = time.monotonic
    lateness: list[float] = []
    due: dict[str, float] = {}  # run id -> when its next check is due (time.monotonic())
    ended: set[str] = set()  # run ids whose wait has ended
    errors = [0]
    first_done = [0]
    # the same stagger for every variant: wait i starts at t0 + offsets[i]
    offsets = [interval * i / n for i in range(n)]
    timeout = httpx.Timeout(30.0, connect=10.0)  # runbridge's defaults

    client: Any = None
    http: httpx.AsyncClient | None = None
    if variant == "bare":
        http = httpx.AsyncClient(timeout=timeout)
    elif variant == "capped":
        http = httpx.AsyncClient(
            timeout=timeout,
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        )
    elif variant == "runbridge":
        from runbridge.core.client import AsyncRunClient
        from runbridge.core.schedule import PollSchedule
        from runbridge.testing.rest import REST_CONFIG

        def hook(event: Any) -> None:
            kind = event.kind
            if kind == "status":
                key = event.ref.id
                lateness.append(mono() - due[key])
                if mem_pass and key not in seen:
                    seen.add(key)
                    first_done[0] += 1
            elif kind == "sleep":
                due[event.ref.id] = mono() + event.delay
            elif kind in ("transient_error", "retry"):
                errors[0] += 1

        seen: set[str] = set()
        client = AsyncRunClient(
            "rest",
            base_url,
            **REST_CONFIG,
            poll=PollSchedule.fixed(interval),
            hooks=[hook],
            max_in_flight=in_flight,
        )
    else:
        raise SystemExit(f"unknown variant {variant!r}")

    sem = asyncio.Semaphore(in_flight) if variant == "capped" else None
    terminal_states: dict[str, int] = {}

    async def check(url: str) -> str:
        # in a function of its own, so the response is not kept alive while the wait sleeps
        assert http is not None
        if sem is not None:
            async with sem:
                response = await http.get(url)
        else:
            response = await http.get(url)
        response.raise_for_status()
        state: str = response.json()["run"]["status"]
        return state

    async def bare_wait(run_id: str, start: float) -> None:
        url = f"{base_url}/api/v1/runs/{run_id}"
        await asyncio.sleep(max(0.0, start - mono()))
        first = True
        while True:
            state = None
            try:
                state = await check(url)
            except httpx.HTTPError:
                errors[0] += 1
            now = mono()
            lateness.append(now - due[run_id])
            if first:
                first = False
                first_done[0] += 1
            if state in TERMINAL:
                terminal_states[state] = terminal_states.get(state, 0) + 1
                ended.add(run_id)
                return
            due[run_id] = now + interval
            await asyncio.sleep(interval)

    async def rb_wait(ref: Any, start: float) -> None:
        await asyncio.sleep(max(0.0, start - mono()))
        status = await client.wait(ref)
        ended.add(ref.id)
        terminal_states[status.raw_state] = terminal_states.get(status.raw_state, 0) + 1

    proc = psutil.Process()
    rss_peak = [0]

    async def sample_rss() -> None:
        last_report = mono()
        while True:
            rss = proc.memory_info().rss
            if rss > rss_peak[0]:
                rss_peak[0] = rss
            if mono() - last_report >= 5.0:  # progress, on stderr (shown if the worker fails)
                last_report = mono()
                sys.stderr.write(
                    f"[{variant}] t={last_report - t0:.1f}s checks={len(lateness)} "
                    f"cpu={time.process_time() - cpu0:.1f}s rss={rss >> 20}MiB\n"
                )
                sys.stderr.flush()
            await asyncio.sleep(0.25)

    # a fresh set of N runs, created now so that every variant sees runs of the same age
    ids = _bench_call(
        base_url, "POST", "/__bench/seed", {"n": n, "steps": cfg["steps"], "final": "succeeded"}
    )["ids"]
    seeded_at = mono()  # CLOCK_MONOTONIC is system-wide: the emulator's clock too
    if client is not None:
        refs = [client.ref(i) for i in ids]
    _bench_call(base_url, "POST", "/__bench/reset")
    if mem_pass:
        import tracemalloc

        tracemalloc.start()
    gc.collect()
    rss0 = proc.memory_info().rss
    rss_peak[0] = rss0
    heap0 = 0
    if mem_pass:
        import tracemalloc

        heap0 = tracemalloc.get_traced_memory()[0]
    before = _bench_call(base_url, "GET", "/__bench/stats")
    sampler = asyncio.create_task(sample_rss())

    profiler = None
    if cfg.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu0 = time.process_time()
    times0 = proc.cpu_times()
    machine0 = psutil.cpu_times()
    t0 = mono() + 0.05
    for i, run_id in enumerate(ids):
        due[run_id] = t0 + offsets[i]
    if variant == "runbridge":
        tasks = [asyncio.ensure_future(rb_wait(refs[i], t0 + offsets[i])) for i in range(n)]
    else:
        tasks = [asyncio.ensure_future(bare_wait(ids[i], t0 + offsets[i])) for i in range(n)]

    finished = threading.Lock()

    def finish(cut: bool, heap_per_run: float | None = None) -> dict[str, Any]:
        """The result; called by the loop, or by the watchdog thread if the loop is stuck."""
        wall = mono() - t0
        cpu = time.process_time() - cpu0
        times1 = proc.cpu_times()
        machine1 = psutil.cpu_times()
        if profiler is not None:
            profiler.disable()
            _dump_profile(profiler, cfg["profile"])
        if mem_pass and heap_per_run is None:
            import tracemalloc

            heap_per_run = (tracemalloc.get_traced_memory()[0] - heap0) / n
        samples = list(lateness)
        checks = len(samples)
        overdue = 0
        if cut and not mem_pass:
            # checks that were due but never made count too, as late as they are by now
            now = mono()
            late = [now - d for key, d in list(due.items()) if key not in ended and d < now]
            overdue = len(late)
            samples += late
        after = _bench_call(base_url, "GET", "/__bench/stats")
        # Checks an ideal poller would have made: wait i checks at offsets[i] + k*interval
        # until (and including) its first check after its run ended; when cut off, only
        # those due by then.
        run_end = seeded_at + sum(sec for _, sec in cfg["steps"]) - t0
        due_checks = 0
        for off in offsets:
            ideal = math.floor(max(0.0, run_end - off) / interval) + 2
            if cut:
                ideal = min(ideal, math.floor((wall - off) / interval) + 1 if wall >= off else 0)
            due_checks += ideal
        result = {
            "variant": variant,
            "mem_pass": mem_pass,
            "n": n,
            "interval": interval,
            "in_flight": in_flight,
            "waits_done": sum(terminal_states.values()),
            "terminal_states": dict(terminal_states),
            "timed_out": cut and not mem_pass,
            "checks": checks,
            "due_checks": None if mem_pass else due_checks,
            "server_status_gets": after["status_gets"],
            "errors": errors[0],
            "cpu_s": cpu,
            "cpu_user_s": times1.user - times0.user,
            "cpu_system_s": times1.system - times0.system,
            # CPU the whole machine spent meanwhile (all processes), and the VM's steal time
            "machine_busy_cpu_s": _busy(machine1) - _busy(machine0),
            "machine_steal_s": getattr(machine1, "steal", 0.0) - getattr(machine0, "steal", 0.0),
            "cpu_per_check_ms": 1000 * cpu / checks if checks else None,
            # `after` was fetched over one new connection of its own
            "connections_opened": after["connections_opened"] - before["connections_opened"] - 1,
            "connections_peak_open": after["connections_peak_open"],
            # when connections were opened / closed, in seconds since t0
            "connections_opened_at": [round(x - t0, 3) for x in after["opened_at"]],
            "connections_closed_at": [round(x - t0, 3) for x in after["closed_at"]],
            "rss_delta_per_run_kib": (rss_peak[0] - rss0) / n / 1024,
            "heap_per_run_kib": heap_per_run / 1024 if heap_per_run is not None else None,
            "overdue_at_cut": overdue,
            "lateness_p50_s": _percentile(samples, 0.5),
            "lateness_p99_s": _percentile(samples, 0.99),
            "lateness_max_s": max(samples) if samples else None,
            "wall_s": wall,
            "server_cpu_s": after["cpu_seconds"] - before["cpu_seconds"],
        }
        result["other_cpu_s"] = max(
            0.0, result["machine_busy_cpu_s"] - result["cpu_s"] - result["server_cpu_s"]
        )
        return result

    def watchdog() -> None:
        # An httpx pool with thousands of queued requests can keep the loop from ever
        # reaching its own timeout: report from this thread and leave.
        if finished.acquire(blocking=False):
            _emit(finish(cut=True))
            os._exit(0)

    timer = threading.Timer(budget + 10, watchdog)
    timer.daemon = True
    timer.start()

    heap_per_run = None
    if mem_pass:
        import tracemalloc

        # every wait has made its first check and is waiting (or checking) again
        deadline = mono() + budget
        while first_done[0] < n and mono() < deadline:
            await asyncio.sleep(0.1)
        gc.collect()
        heap_per_run = (tracemalloc.get_traced_memory()[0] - heap0) / n
        cut = first_done[0] < n
    else:
        _, pending = await asyncio.wait(tasks, timeout=budget)
        cut = bool(pending)
    if not finished.acquire(blocking=False):
        await asyncio.sleep(3600)  # the watchdog is reporting; it exits the process
    timer.cancel()
    sampler.cancel()
    result = finish(cut, heap_per_run)
    if not cut and not mem_pass:  # a stalled variant is left as it is: the worker exits next
        if client is not None:
            await client.aclose()
        if http is not None:
            await http.aclose()
    return result


def _busy(times: Any) -> float:
    return float(sum(getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq")))


def _emit(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _dump_profile(profiler: Any, path: str) -> None:
    import pstats

    profiler.dump_stats(path)
    with open(path + ".txt", "w") as out:
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(70)


def worker(cfg: dict[str, Any]) -> None:
    import faulthandler

    if cfg.get("cpu") is not None:
        os.sched_setaffinity(0, {cfg["cpu"]})
    # the last resort, should even the watchdog thread not get to run: stacks to stderr, exit
    faulthandler.dump_traceback_later(cfg["budget"] + 60, exit=True)
    # No graceful shutdown: cancelling thousands of requests queued in a stalled httpx pool
    # takes minutes (the pool rescans its queue on every cancellation). Report and leave.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _emit(loop.run_until_complete(_run_variant(cfg)))
    os._exit(0)


# ------------------------------------------------------------------------------------------
# orchestrator
# ------------------------------------------------------------------------------------------
class Emulator:
    """The emulator process (bench/emulator_server.py), stopped on exit."""

    def __init__(self, max_seconds: float, cpu: int | None, args: Sequence[str] = ()) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "emulator_server.py"),
                "--watch-stdin",
                "--max-seconds",
                str(int(max_seconds)),
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        if not line or not line[0].strip():
            self.stop()
            raise SystemExit("the emulator did not start")
        info = json.loads(line[0])
        self.base_url: str = info["base_url"]
        self.http_impl: str = info["http"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_worker(cfg: dict[str, Any], script: Path | None = None) -> dict[str, Any]:
    """Run one variant in a fresh process; a worker that fails is reported, not fatal."""
    script = script or Path(__file__).resolve()
    command = [sys.executable, str(script), "--worker", json.dumps(cfg)]
    if cfg.get("py_spy"):
        spy, out = cfg["py_spy"]
        command = [spy, "record", "--rate", "200", "--format", "raw", "-o", out, "--", *command]
    failed = None
    try:
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=cfg["budget"] + 120,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        stdout, stderr = proc.stdout, proc.stderr
        if proc.returncode != 0:
            failed = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        failed = f"no answer after {cfg['budget'] + 120:.0f} s"
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if failed is None and lines:
        result: dict[str, Any] = json.loads(lines[-1])
        return result
    return {
        "variant": cfg["variant"],
        "mem_pass": cfg.get("mem_pass", False),
        "failed": failed or "printed no result",
        "stderr_tail": stderr[-3000:],
    }


def summarize_py_spy(path: Path) -> str:
    """Where the event loop's CPU went, from py-spy's raw (collapsed) stacks.

    Only samples of the main thread inside the event loop count (imports, seeding, reporting
    and the watchdog thread are left out). Self time is grouped by file; inclusive time is listed
    for every runbridge function and for the top frames.
    """
    import collections
    import re

    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    by_file: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if (
            not stack
            or "BaseEventLoop._run_once" not in stack
            or "Thread._bootstrap" in stack
            or "importlib" in stack
            or "_run_variant (" in stack  # set-up and reporting, outside the waits
        ):
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += n
        where = re.search(r"\((.*)\)$", frames[-1])
        file = where.group(1) if where else frames[-1]
        for marker in ("runbridge/", "site-packages/", "python3.11/", "python3.12/", "python3.13/"):
            if marker in file:
                file = (
                    file.split(marker, 1)[1]
                    if marker != "runbridge/"
                    else "runbridge/" + file.split(marker, 1)[1]
                )
                break
        by_file[file] += n
    if not total:
        return "no samples in the event loop\n"
    out = [f"{total} samples of the main thread in the event loop", "", "self time by file:"]
    out += [f"{100 * v / total:6.1f}%  {k}" for k, v in by_file.most_common(30)]
    rb_self = sum(v for k, v in by_file.items() if k.startswith("runbridge/"))
    out += ["", f"self time in runbridge/ (all files): {100 * rb_self / total:.1f}%"]
    out += ["", "inclusive time, runbridge functions:"]
    out += [
        f"{100 * v / total:6.1f}%  {k}"
        for k, v in inclusive.most_common()
        if "runbridge/" in k and v / total >= 0.001
    ]
    out += ["", "inclusive time, top frames:"]
    out += [f"{100 * v / total:6.1f}%  {k}" for k, v in inclusive.most_common(45)]
    return "\n".join(out) + "\n"


def core_fingerprint() -> str:
    """The commit, and a hash of runbridge/core as it is on disk (it may differ from the commit)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((ROOT / "runbridge" / "core").rglob("*.py")):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"commit {commit or '?'}, runbridge/core sha256 {digest.hexdigest()[:12]}"


def _fmt(value: Any, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _label(variant: str, in_flight: int, pool: int | None = None) -> str:
    return {
        "bare": "(a) bare loop, shared httpx client",
        "capped": f"(b) bare loop + Semaphore({in_flight}), pool {pool or in_flight}",
        "runbridge": "(c) runbridge AsyncRunClient.wait",
    }[variant]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _table(rows: list[tuple[str, dict[str, Any], dict[str, float | None], float | None]]) -> str:
    head = (
        "| variant | waits done | checks made / due (server GETs) | client CPU s | CPU/check ms "
        "| vs (a) | vs (b) | TCP conns opened (peak open) | RSS Δ/run KiB | heap/run KiB "
        "| lateness p50 / p99 s | wall s | emulator CPU s | other CPU s |"
    )
    lines = [head, "|" + "|".join(["---"] * 14) + "|"]
    for label, r, ratio, heap in rows:
        if r["wall_s"] and r["other_cpu_s"] / r["wall_s"] > NOISY:
            label += " (noisy)"
        if "stalled_runs" in r:  # a median over runs
            stalled = (
                f" (stalled in {r['stalled_runs']} of {r['runs']} runs)"
                if r["stalled_runs"]
                else ""
            )
            at_least = "≥ " if r["stalled_runs"] > r["runs"] // 2 else ""
        else:
            stalled = f" (stalled: cut off at {r['wall_s']:.0f} s)" if r["timed_out"] else ""
            at_least = "≥ " if r["timed_out"] else ""
        errors = f", {r['errors']:.0f} errors" if r["errors"] else ""
        lines.append(
            f"| {label} | {r['waits_done']:.0f}/{r['n']}{stalled} "
            f"| {r['checks']:.0f} / {r['due_checks']:.0f} ({r['server_status_gets']:.0f}){errors} "
            f"| {r['cpu_s']:.2f} | {_fmt(r['cpu_per_check_ms'], '.3f')} "
            f"| {_fmt(ratio.get('bare'), '.2f')} | {_fmt(ratio.get('capped'), '.2f')} "
            f"| {r['connections_opened']:.0f} ({r['connections_peak_open']:.0f}) "
            f"| {r['rss_delta_per_run_kib']:.2f} | {_fmt(heap, '.2f')} "
            f"| {at_least}{_fmt(r['lateness_p50_s'], '.3f')} / "
            f"{at_least}{_fmt(r['lateness_p99_s'], '.3f')} "
            f"| {r['wall_s']:.1f} | {r['server_cpu_s']:.2f} | {r['other_cpu_s']:.2f} |"
        )
    return "\n".join(lines)


def render(results: list[dict[str, Any]], in_flight: int, capped_pool: int | None = None) -> str:
    failed = [r for r in results if r.get("failed")]
    results = [r for r in results if not r.get("failed")]
    timed = [r for r in results if not r["mem_pass"] and not r.get("profiled")]
    heap = {r["variant"]: r["heap_per_run_kib"] for r in results if r["mem_pass"]}
    by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
    for r in timed:
        by_repeat.setdefault(r["repeat"], {})[r["variant"]] = r

    def ratios(row: dict[str, dict[str, Any]], r: dict[str, Any]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for base in ("bare", "capped"):
            b = row.get(base)
            ok = b and b["cpu_per_check_ms"] and r["cpu_per_check_ms"] and not b["timed_out"]
            out[base] = r["cpu_per_check_ms"] / b["cpu_per_check_ms"] if ok else None  # type: ignore[index]
        return out

    out: list[str] = []
    repeats = sorted(by_repeat)
    if len(repeats) > 1:
        rows: list[tuple[str, dict[str, Any], dict[str, float | None], float | None]] = []
        for rep in repeats:
            row = by_repeat[rep]
            for variant in VARIANTS:
                if variant in row:
                    r = row[variant]
                    rows.append(
                        (
                            f"{_label(variant, in_flight, capped_pool)} #{rep + 1}",
                            r,
                            ratios(row, r),
                            None,
                        )
                    )
        out += [
            "Every run:",
            "",
            _table(rows),
            "",
            f"Median of {len(repeats)} runs (ratios: median of the paired ratios):",
            "",
        ]
    rows = []
    summary: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        runs = [by_repeat[rep][variant] for rep in repeats if variant in by_repeat[rep]]
        if not runs:
            continue
        med: dict[str, Any] = {
            "n": runs[0]["n"],
            "runs": len(runs),
            "stalled_runs": sum(1 for r in runs if r["timed_out"]),
        }
        for key in (
            "waits_done",
            "checks",
            "due_checks",
            "server_status_gets",
            "errors",
            "cpu_s",
            "cpu_per_check_ms",
            "connections_opened",
            "connections_peak_open",
            "rss_delta_per_run_kib",
            "lateness_p50_s",
            "lateness_p99_s",
            "wall_s",
            "server_cpu_s",
            "other_cpu_s",
        ):
            med[key] = _median([r[key] for r in runs])
        ratio = {
            base: _median(
                [
                    ratios(by_repeat[rep], by_repeat[rep][variant])[base]
                    for rep in repeats
                    if variant in by_repeat[rep]
                ]
            )
            for base in ("bare", "capped")
        }
        med["ratio"] = ratio
        summary[variant] = med
        rows.append((_label(variant, in_flight, capped_pool), med, ratio, heap.get(variant)))
    out += [_table(rows), ""]
    if any(r["wall_s"] and r["other_cpu_s"] / r["wall_s"] > NOISY for r in timed):
        out += [
            f"(noisy): other processes used more than {NOISY:.0%} of a CPU during that run "
            "(the 'other CPU s' column); its numbers are less reliable.",
            "",
        ]
    for r in failed:
        kind = "tracemalloc pass" if r["mem_pass"] else "run"
        out.append(f"FAILED {kind} of {r['variant']}: {r['failed']} (stderr in the --json file)")
    if failed:
        out.append("")
    pool = in_flight + 50  # AsyncRunClient: max_in_flight + max_long_polls (default 50)
    rb = summary.get("runbridge")
    if rb is not None:
        for base, name in (("capped", "the fair baseline (b)"), ("bare", "the bare loop (a)")):
            value = rb["ratio"][base]
            if value is None:
                if base in summary:
                    out.append(f"CPU/check vs {name}: n/a ({name} stalled or made no checks)")
                continue
            verdict = "MET" if value <= CPU_TARGET else "NOT MET"
            out.append(
                f"target CPU/check <= {CPU_TARGET}x {name}: runbridge = {value:.2f}x -> {verdict}"
            )
        worst = max(
            by_repeat[rep]["runbridge"]["connections_opened"]
            for rep in repeats
            if "runbridge" in by_repeat[rep]
        )
        verdict = "MET" if worst <= pool else "NOT MET"
        out.append(
            f"target TCP connections opened <= pool size ({pool}): runbridge opened {worst} "
            f"(most in one run) -> {verdict}"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="N concurrent waits in one event loop (the Airflow triggerer's shape)."
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="N=200, 1 s interval: a smoke test")
    parser.add_argument("--runs", type=int, default=None, help="N concurrent waits (default 5000)")
    parser.add_argument("--interval", type=float, default=None, help="poll interval, s (default 5)")
    parser.add_argument(
        "--duration", type=float, default=None, help="how long each run runs, s (default 20)"
    )
    parser.add_argument("--in-flight", type=int, default=50, help="cap for (b) and runbridge")
    parser.add_argument(
        "--capped-pool",
        type=int,
        default=None,
        help="connection pool of (b) (default: the in-flight cap; runbridge's is cap + 50)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeat", type=int, default=1, help="repeat the whole set R times")
    parser.add_argument(
        "--tracemalloc",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="an extra, untimed pass per variant measuring heap per waiting run "
        "(default: on, off with --quick)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pin the client workers to CPU 0 and the emulator to the last CPU (default: on "
        "with 2+ CPUs)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="after the timed passes, one more pass of (b) and (c) under a profiler, written to "
        "DIR (not in the results table: a profiler changes what it measures)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="BIN",
        help="with --profile: sample with this py-spy executable instead of cProfile",
    )
    parser.add_argument("--json", metavar="PATH", help="write every result as JSON")
    parser.add_argument(
        "--report", metavar="PATH", help="print the tables of a --json file again, and exit"
    )
    args = parser.parse_args()

    if args.worker:
        worker(json.loads(args.worker))
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        meta = saved["meta"]
        print(
            f"N={meta['n']}, interval {meta['interval']:g} s, runs last {meta['duration']:g} s, "
            f"in-flight cap {meta['in_flight']}; {meta['cpus']} CPUs, Python {meta['python']}, "
            f"httpx {meta['httpx']}; {meta.get('runbridge', '')}; "
            f"arguments: {' '.join(meta['argv']) or '(none)'}\n"
        )
        print(render(saved["results"], meta["in_flight"], meta.get("capped_pool")))
        return

    quick = args.quick
    n = args.runs or (200 if quick else 5000)
    interval = args.interval or (1.0 if quick else 5.0)
    duration = args.duration or (3.0 if quick else 20.0)
    tracemalloc_pass = (not quick) if args.tracemalloc is None else args.tracemalloc
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    if not (1 <= n <= 50_000) or interval <= 0 or duration <= 0 or args.repeat < 1:
        parser.error("need 1 <= --runs <= 50000, positive --interval/--duration, --repeat >= 1")
    # every run: queued 1 s, then running, succeeded at `duration`
    steps = [["queued", min(1.0, duration / 4)], ["running", duration - min(1.0, duration / 4)]]
    # a variant whose waits are not all done by then has stalled; it is cut off there
    budget = 2 * (duration + interval) + 20

    import httpx

    fingerprint = core_fingerprint()
    print(
        f"concurrent waits: N={n}, interval {interval:g} s, runs last {duration:g} s, "
        f"in-flight cap {args.in_flight}; {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"httpx {httpx.__version__}; {fingerprint}",
        flush=True,
    )
    cpus = sorted(os.sched_getaffinity(0))
    pin = (len(cpus) >= 2) if args.pin is None else args.pin
    client_cpu, emulator_cpu = (cpus[0], cpus[-1]) if pin and len(cpus) >= 2 else (None, None)
    total_runs = args.repeat * len(variants) + 2 * len(variants) + 2
    emu = Emulator(max_seconds=total_runs * (budget + 120) + 300, cpu=emulator_cpu)
    print(f"emulator: {emu.base_url} ({emu.http_impl}, pid {emu.proc.pid})", flush=True)
    results: list[dict[str, Any]] = []
    meta = {
        "n": n,
        "interval": interval,
        "duration": duration,
        "in_flight": args.in_flight,
        "capped_pool": args.capped_pool,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "httpx": httpx.__version__,
        "emulator_http": emu.http_impl,
        "runbridge": fingerprint,
        "pinned": {"client_cpu": client_cpu, "emulator_cpu": emulator_cpu},
        "argv": sys.argv[1:],
    }

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))

    try:
        common = {
            "base_url": emu.base_url,
            "n": n,
            "interval": interval,
            "in_flight": args.in_flight,
            "capped_pool": args.capped_pool,
            "budget": budget,
            "cpu": client_cpu,
        }
        for rep in range(args.repeat):
            for variant in variants:
                cfg = {**common, "variant": variant, "steps": steps}
                print(f"  [{rep + 1}/{args.repeat}] {variant} ...", end=" ", flush=True)
                r = run_worker(cfg)
                r["repeat"] = rep
                results.append(r)
                save()
                if r.get("failed"):
                    print(f"FAILED: {r['failed']}", flush=True)
                else:
                    print(
                        f"{r['checks']} checks, {r['cpu_s']:.2f} s CPU, "
                        f"{_fmt(r['cpu_per_check_ms'], '.3f')} ms/check, "
                        f"{r['connections_opened']} conns, wall {r['wall_s']:.1f} s",
                        flush=True,
                    )
                time.sleep(0.5)
        if tracemalloc_pass:
            for variant in variants:
                cfg = {
                    **common,
                    "variant": variant,
                    "steps": [["running", 3600.0]],
                    "mem_pass": True,
                    "budget": 2 * interval + 10,
                }
                print(f"  [tracemalloc] {variant} ...", end=" ", flush=True)
                r = run_worker(cfg)
                r["repeat"] = -1
                results.append(r)
                save()
                if r.get("failed"):
                    print(f"FAILED: {r['failed']}", flush=True)
                else:
                    print(f"{_fmt(r['heap_per_run_kib'], '.2f')} KiB per waiting run", flush=True)
                time.sleep(0.5)
        if args.profile:
            outdir = Path(args.profile).resolve()
            outdir.mkdir(parents=True, exist_ok=True)
            for variant in [v for v in variants if v != "bare"]:
                cfg = {**common, "variant": variant, "steps": steps}
                if args.py_spy:
                    cfg["py_spy"] = [args.py_spy, str(outdir / f"{variant}.pyspy.txt")]
                else:
                    cfg["profile"] = str(outdir / f"{variant}.prof")
                print(f"  [profile] {variant} ...", end=" ", flush=True)
                r = run_worker(cfg)
                r["repeat"] = -1
                r["profiled"] = True
                results.append(r)
                save()
                if args.py_spy:
                    summary = summarize_py_spy(Path(cfg["py_spy"][1]))
                    (outdir / f"{variant}.pyspy-summary.txt").write_text(summary)
                print(f"written to {outdir}", flush=True)
    finally:
        emu.stop()
    print()
    print(render(results, args.in_flight, args.capped_pool))


if __name__ == "__main__":
    main()
