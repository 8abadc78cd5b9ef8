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
    runs directly (``Emulator.add_run``) and answers ``{"ids": [...]}``;
  - ``GET /__bench/stats``: connections opened / open now / peak open, when each connection
    since the last reset was opened and closed (``time.monotonic()``, a system-wide clock on
    Linux), status GETs served and all requests since the last reset, and this process's
    CPU seconds;
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

_STATS = {"opened": 0, "open": 0, "peak_open": 0}
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

    async def app(scope: Any, receive: Any, send: Any) -> None:
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
            await reply(
                send,
                200,
                {
                    "connections_opened": _STATS["opened"],
                    "connections_open": _STATS["open"],
                    "connections_peak_open": _STATS["peak_open"],
                    "status_gets": gets,
                    "requests": len(requests),
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
            _OPENED_AT.clear()
            _CLOSED_AT.clear()
            await reply(send, 200, {"ok": True})
        elif path == "/__bench/seed" and method == "POST":
            spec = json.loads(body or b"{}")
            n = int(spec["n"])
            if not 0 < n <= 100_000:
                await reply(send, 422, {"detail": "n must be in 1..100000"})
                return
            script = Script(
                [(str(raw), float(sec)) for raw, sec in spec.get("steps", [["running", 20.0]])],
                final=str(spec.get("final", "succeeded")),
                outputs={"rows": 42},
            )
            ids = [emu.add_run(script, job="bench").id for _ in range(n)]
            await reply(send, 201, {"ids": ids})
        else:
            await reply(send, 404, {"detail": f"no bench route {method} {path}"})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument(
        "--watch-stdin", action="store_true", help="exit when stdin closes (run from a parent)"
    )
    args = parser.parse_args()

    emu = create_emulator("rest")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    emu.base_url = f"http://{args.host}:{port}"

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
