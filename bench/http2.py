"""Is HTTP/2 worth a transport? runbridge's checks over HTTP/2 (httpx, ``http2=True``) against
its default driver (aiohttp, HTTP/1.1), over TLS on loopback, against one HTTP/2 server.

    PYTHONPATH=/path/to/hypercorn .venv/bin/python bench/http2.py               # ~1 min
    PYTHONPATH=... .venv/bin/python bench/http2.py --waits 200 --seconds 3      # smoke size

The server is hypercorn (HTTP/1.1 and HTTP/2 by ALPN; not a runbridge dependency: install it
into a directory of its own, ``pip download --no-deps hypercorn priority wsproto`` then ``pip
install --no-deps --target DIR *.whl``) serving the ``rest`` emulator in its own process, with
a throwaway certificate (``bench/tls.py``) every contender trusts through ``SSL_CERT_FILE``.
Each contender runs in a fresh process of its own (pinned to CPU 0 where there are two CPUs):
``--waits`` tasks each calling ``AsyncRunClient.get()`` every ``--interval`` seconds for
``--seconds`` seconds (an open loop at waits/interval checks a second, the triggerer's shape),
all through one client:

* ``aiohttp-h1``: the client's default transport (``core/transport.py``), HTTP/1.1, its pool;
* ``httpx-h2``: ``client=httpx.AsyncClient(http2=True)``: one multiplexed TLS connection;
* ``httpx-h1``: ``client=httpx.AsyncClient()``: httpx's own HTTP/1.1 pool, for reference.

Reported per contender: checks made / due, CPU per check (``time.process_time()``), TCP
connections (``psutil``, the client's own), p50/p99 latency of a check, and the other CPU the
machine used meanwhile (a noisy phase is marked).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

TOKEN = "http2-bench-token"
CONTENDERS = ("aiohttp-h1", "httpx-h2", "httpx-h1")
NOISY = 0.25


def serve(port_file: str, cert: str, key: str, n: int) -> None:
    """The server process: hypercorn serving the rest emulator (HTTP/2 and HTTP/1.1)."""
    from hypercorn.asyncio import serve as hyper_serve
    from hypercorn.config import Config

    from runbridge.testing import Script
    from runbridge.testing.rest import RestEmulator

    emu = RestEmulator(token=TOKEN)
    ids = [emu.add_run(Script([("running", 3600.0)]), job="etl").id for _ in range(n)]
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.certfile, config.keyfile = cert, key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.h2_max_concurrent_streams = 1000

    async def main() -> None:
        shutdown = asyncio.Event()
        binds: list[str] = []

        async def run() -> None:
            await hyper_serve(emu.app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]

        task = asyncio.create_task(run())
        while not binds:
            if task.done():
                task.result()  # hypercorn failed: its error  # hypercorn binds port 0; read it from its sockets
            await asyncio.sleep(0.05)
            binds = [
                f"{c.laddr.port}"
                for c in __import__("psutil").Process().net_connections("tcp")
                if c.status == "LISTEN"
            ]
        Path(port_file).write_text(json.dumps({"port": int(binds[0]), "ids": ids}))
        await task

    asyncio.run(main())


async def contend(cfg: dict[str, Any]) -> dict[str, Any]:
    import httpx
    import psutil

    from runbridge.core import AsyncRunClient
    from runbridge.testing.rest import REST_CONFIG

    kind, ids = cfg["kind"], cfg["ids"]
    kwargs: dict[str, Any] = {}
    own: httpx.AsyncClient | None = None
    if kind.startswith("httpx"):
        own = httpx.AsyncClient(
            http2=kind.endswith("h2"),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )
        kwargs["client"] = own
    client = AsyncRunClient("rest", cfg["url"], TOKEN, **REST_CONFIG, **kwargs)
    latencies: list[float] = []
    errors = [0]
    interval, seconds = cfg["interval"], cfg["seconds"]
    start = time.monotonic() + 0.2
    end = start + seconds

    async def one(i: int) -> None:
        ref = client.ref(ids[i % len(ids)])
        at = start + interval * i / len(ids)
        while at < end:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            t = time.monotonic()
            try:
                await client.get(ref)
                latencies.append(time.monotonic() - t)
            except Exception:
                errors[0] += 1
            at += interval

    # a first round unmeasured: connections opened, TLS handshakes made, imports warm
    await asyncio.gather(*(client.get(client.ref(ids[i])) for i in range(min(50, len(ids)))))
    proc = psutil.Process()
    machine0, cpu0 = psutil.cpu_times(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(cfg["waits"])))
    cpu = time.process_time() - cpu0
    machine1 = psutil.cpu_times()
    conns = len([c for c in proc.net_connections("tcp") if c.raddr and c.status == "ESTABLISHED"])
    protocol = "HTTP/1.1"
    if own is not None:  # what httpx negotiated (ALPN)
        protocol = (await own.get(f"{cfg['url']}/api/v1/runs/x")).http_version
    await client.aclose()
    if own is not None:
        await own.aclose()
    busy = sum(
        getattr(machine1, f) - getattr(machine0, f) for f in ("user", "system", "nice", "irq")
    )
    latencies.sort()
    due = int(cfg["waits"] * seconds / interval)

    def pct(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else None

    return {
        "kind": kind,
        "protocol": protocol,
        "checks": len(latencies),
        "due": due,
        "errors": errors[0],
        "cpu_s": cpu,
        "cpu_per_check_ms": 1000 * cpu / len(latencies) if latencies else None,
        "connections": conns,
        "latency_p50_ms": 1000 * (pct(0.5) or 0),
        "latency_p99_ms": 1000 * (pct(0.99) or 0),
        "other_cpu_s": max(0.0, busy - cpu - cfg.get("server_cpu", 0.0)),
        "wall_s": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--contend", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        port_file, cert, key, n = args.serve
        serve(port_file, cert, key, int(n))
        return
    if args.contend:
        cfg = json.loads(args.contend)
        if cfg.get("cpu") is not None:
            os.sched_setaffinity(0, {cfg["cpu"]})
        print(json.dumps(asyncio.run(contend(cfg))))
        return

    import psutil
    from tls import make_certificate

    tmp = Path(tempfile.mkdtemp(prefix="runbridge-http2-"))
    cert, key = make_certificate(tmp)
    env = {**os.environ, "SSL_CERT_FILE": str(cert)}
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    port_file = tmp / "port.json"
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port_file), str(cert), str(key), "1000"],
        env=env,
    )
    try:
        if pin:
            os.sched_setaffinity(server.pid, {cpus[-1]})
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the hypercorn server did not start (is hypercorn importable?)")
            time.sleep(0.1)
        info = json.loads(port_file.read_text())
        url = f"https://127.0.0.1:{info['port']}"
        server_proc = psutil.Process(server.pid)
        print(
            f"http2: {args.waits} waits, a check every {args.interval:g} s each, "
            f"{args.seconds:g} s, TLS, hypercorn (h2 + http/1.1) at {url}; {len(cpus)} CPUs"
        )
        results = []
        for round_ in range(args.rounds):
            for kind in args.contenders.split(","):
                s0 = sum(server_proc.cpu_times()[:2])
                cfg = {
                    "kind": kind,
                    "url": url,
                    "ids": info["ids"],
                    "waits": args.waits,
                    "interval": args.interval,
                    "seconds": args.seconds,
                    "cpu": cpus[0] if pin else None,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--contend", json.dumps(cfg)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.seconds + 120,
                )
                if done.returncode != 0:
                    print(f"  {kind}: FAILED\n{done.stderr[-2000:]}")
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                r["server_cpu_s"] = sum(server_proc.cpu_times()[:2]) - s0
                r["other_cpu_s"] = max(0.0, r["other_cpu_s"] - r["server_cpu_s"])
                r["round"] = round_ + 1
                results.append(r)
        print()
        print(
            "| contender | checks made / due | errors | CPU/check ms | vs aiohttp-h1 | "
            "client TCP conns | latency p50 / p99 ms | server CPU s | other CPU s |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        base: dict[int, float] = {
            r["round"]: r["cpu_per_check_ms"] for r in results if r["kind"] == "aiohttp-h1"
        }
        for r in results:
            ratio = (
                f"{r['cpu_per_check_ms'] / base[r['round']]:.2f}"
                if base.get(r["round"]) and r["cpu_per_check_ms"]
                else "-"
            )
            noisy = " (noisy)" if r["other_cpu_s"] > NOISY * r["wall_s"] else ""
            print(
                f"| {r['kind']} ({r['protocol']}){noisy} | {r['checks']} / {r['due']} | {r['errors']} | "
                f"{r['cpu_per_check_ms']:.3f} | {ratio} | {r['connections']} | "
                f"{r['latency_p50_ms']:.1f} / {r['latency_p99_ms']:.1f} | "
                f"{r['server_cpu_s']:.1f} | {r['other_cpu_s']:.1f} |"
            )
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
