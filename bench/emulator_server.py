"""Serve the ``rest`` emulator in its own process, for benchmarks.

    python bench/emulator_server.py [--port 0] [--max-seconds 1800]

Prints one JSON line on stdout, ``{"base_url": ..., "pid": ...}``, once it accepts
connections, then serves until SIGTERM/SIGINT, until its stdin closes (with ``--watch-stdin``: the parent died),
or for at most ``--max-seconds``.

The app and server settings are those of :func:`runbridge.testing.serve` (uvicorn, one
worker, ``backlog=4096``, ``timeout_keep_alive=60``, default loop and HTTP implementation),
with two bench-only additions that leave ``runbridge.testing`` untouched:

* the HTTP protocol is uvicorn's own, subclassed to count TCP connections accepted
  (``connection_made``) and closed (``connection_lost``);
* routes under ``/__bench/`` (answered before the emulator's app, so never recorded by it):

  - ``POST /__bench/seed`` ``{"n", "steps": [[raw, seconds], ...], "final"}`` creates ``n``
    runs directly (``Emulator.add_run``) and answers ``{"ids": [...], "started": [...]}``
    (``time.monotonic()`` of each run's creation); with ``"ends": [seconds, ...]`` (one per
    run) each run is ``queued`` for 1 s, ``running`` until its own end, then ``final``;
  - ``GET /api/v2/accounts/{account}/runs/{id}/``: the one dbt Cloud endpoint its Airflow
    trigger polls, over the same runs: ``{"data": {"id", "status": 1|3|10|20|30, ...}}``
    (queued 1, running 3, succeeded 10, failed 20, cancelled 30), 401 without
    ``Authorization: Token ...``, 404 for an unknown run;
  - ``GET /__bench/stats``: connections opened / open now / peak open, when each connection
    since the last reset was opened and closed (``time.monotonic()``, a system-wide clock on
    Linux), status GETs served (the ``rest`` API's and the dbt endpoint's) and all requests
    since the last reset, and this process's CPU seconds;

With ``--certfile``/``--keyfile`` it serves HTTPS (uvicorn's TLS) and announces an
``https://`` base URL.
  - ``POST /__bench/reset`` forgets the recorded requests and connection times, resets the peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from runbridge.testing import Script, create_emulator

_STATS = {"opened": 0, "open": 0, "peak_open": 0, "dbt_gets": 0}
DBT_CODES = {"queued": 1, "running": 3, "succeeded": 10, "failed": 20, "cancelled": 30}
_OPENED_AT: list[float] = []  # time.monotonic() of each accepted connection (system-wide clock)
_CLOSED_AT: list[float] = []


def _counting_protocol(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    class Counting(base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            _STATS["opened"] += 1
            _OPENED_AT.append(time.monotonic())
            _STATS["open"] += 1
            if _STATS["open"] > _STATS["peak_open"]:
                _STATS["peak_open"] = _STATS["open"]
            super().connection_made(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            _STATS["open"] -= 1
            _CLOSED_AT.append(time.monotonic())
            super().connection_lost(exc)

    Counting.__name__ = f"Counting{base.__name__}"
    return Counting


def make_app(emu: Any) -> Any:
    inner = emu.app

    async def reply(send: Any, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def dbt_run(scope: Any, send: Any) -> None:
        parts = scope["path"].strip("/").split("/")  # api v2 accounts {a} runs {id}
        _STATS["dbt_gets"] += 1
        headers = dict(scope["headers"])
        if not headers.get(b"authorization", b"").startswith(b"Token "):
            await reply(send, 401, {"status": {"code": 401, "is_success": False}})
            return
        run = emu.runs.get(parts[5]) if len(parts) == 6 else None
        if run is None:
            await reply(send, 404, {"status": {"code": 404, "is_success": False}})
            return
        raw, _ = run.state(emu.now())
        code = DBT_CODES.get(raw, 20)
        await reply(
            send,
            200,
            {
                "status": {"code": 200, "is_success": True},
                "data": {
                    "id": run.id,
                    "account_id": int(parts[3]) if parts[3].isdigit() else parts[3],
                    "status": code,
                    "status_humanized": raw.capitalize(),
                    "in_progress": code in (1, 3),
                    "is_complete": code >= 10,
                    "is_success": code == 10,
                    "is_error": code == 20,
                    "is_cancelled": code == 30,
                    "href": f"{emu.base_url}/runs/{run.id}",
                },
            },
        )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/v2/accounts/"):
            await dbt_run(scope, send)
            return
        if scope["type"] != "http" or not scope["path"].startswith("/__bench/"):
            await inner(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        path, method = scope["path"], scope["method"]
        if path == "/__bench/stats" and method == "GET":
            with emu.lock:
                requests = list(emu.requests)
            gets = sum(
                1 for r in requests if r.method == "GET" and r.path.startswith("/api/v1/runs/")
            )
            # the hub's batch endpoint (runbridge.testing.rest's batchGet, where it exists)
            batches = sum(1 for r in requests if r.path.endswith(":batchGet"))
            await reply(
                send,
                200,
                {
                    "connections_opened": _STATS["opened"],
                    "connections_open": _STATS["open"],
                    "connections_peak_open": _STATS["peak_open"],
                    "status_gets": gets + _STATS["dbt_gets"],
                    "requests": len(requests) + _STATS["dbt_gets"],
                    "batch_requests": batches,
                    "cpu_seconds": time.process_time(),
                    "runs": len(emu.runs),
                    "opened_at": _OPENED_AT[-20000:],
                    "closed_at": _CLOSED_AT[-20000:],
                },
            )
        elif path == "/__bench/reset" and method == "POST":
            with emu.lock:
                emu.requests.clear()
            _STATS["peak_open"] = _STATS["open"]
            _STATS["dbt_gets"] = 0
            _OPENED_AT.clear()
            _CLOSED_AT.clear()
            await reply(send, 200, {"ok": True})
        elif path == "/__bench/seed" and method == "POST":
            spec = json.loads(body or b"{}")
            n = int(spec["n"])
            if not 0 < n <= 100_000:
                await reply(send, 422, {"detail": "n must be in 1..100000"})
                return
            final = str(spec.get("final", "succeeded"))
            ends = spec.get("ends")
            if ends is not None:
                if len(ends) != n:
                    await reply(send, 422, {"detail": "ends must have n entries"})
                    return
                scripts = [
                    Script(
                        [
                            ("queued", min(1.0, float(e) / 4)),
                            ("running", float(e) - min(1.0, float(e) / 4)),
                        ],
                        final=final,
                        outputs={"rows": 42},
                    )
                    for e in ends
                ]
            else:
                one = Script(
                    [(str(raw), float(sec)) for raw, sec in spec.get("steps", [["running", 20.0]])],
                    final=final,
                    outputs={"rows": 42},
                )
                scripts = [one] * n
            runs = [emu.add_run(script, job="bench") for script in scripts]
            await reply(
                send, 201, {"ids": [r.id for r in runs], "started": [r.started for r in runs]}
            )
        else:
            await reply(send, 404, {"detail": f"no bench route {method} {path}"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="... and this private key (PEM)")
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin closes (run from a parent)"
    )
    args = parser.parse_args()

    emu = create_emulator("rest")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    scheme = "https" if args.certfile else "http"
    emu.base_url = f"{scheme}://{args.host}:{port}"

    protocol = _counting_protocol(import_from_string(HTTP_PROTOCOLS["auto"]))
    config = uvicorn.Config(
        make_app(emu),
        log_level="warning",
        access_log=False,
        lifespan="off",
        interface="asgi3",
        backlog=4096,
        timeout_keep_alive=60,
        http=protocol,
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )
    server = uvicorn.Server(config)

    def stop(*_: Any) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Timer(args.max_seconds, stop).start()

    def watch_stdin() -> None:  # the parent went away: stop
        try:
            sys.stdin.read()
        finally:
            stop()

    if args.watch_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()

    def announce() -> None:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        print(
            json.dumps({"base_url": emu.base_url, "pid": os.getpid(), "http": protocol.__name__}),
            flush=True,
        )

    threading.Thread(target=announce, daemon=True).start()
    server.run(sockets=[sock])
    os._exit(0)  # the max-seconds timer thread must not keep us alive


if __name__ == "__main__":
    main()
