"""Serve an emulator on a free loopback port in a background thread (uvicorn)."""

from __future__ import annotations

import contextlib
import importlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ..core.errors import ConfigError
from ._emulator import DroppedByFault, Emulator

__all__ = ["EMULATORS", "create_emulator", "serve"]

EMULATORS: dict[str, str] = {
    "langgraph": "runbridge.testing.langgraph:LangGraphEmulator",
    "rest": "runbridge.testing.rest:RestEmulator",
    "flyte": "runbridge.testing.flyte:FlyteEmulator",
    "wandb": "runbridge.testing.wandb:WandBEmulator",
    "vi": "runbridge.testing.vi:ViEmulator",
    "lume": "runbridge.testing.lume:LumeEmulator",
}


def create_emulator(platform: str, **kwargs: Any) -> Emulator:
    target = EMULATORS.get(platform)
    if target is None:
        raise ConfigError(
            f"no emulator for {platform!r}; available: {', '.join(sorted(EMULATORS))}"
        )
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    emulator: Emulator = cls(**kwargs)
    return emulator


class _QuietDrops(logging.Filter):
    """uvicorn logs an app exception with its traceback; an injected drop is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedByFault)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # runs in a thread: leave signals alone
        pass


@contextlib.contextmanager
def serve(
    emulator: Emulator | str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    **kwargs: Any,
) -> Iterator[Emulator]:
    """Run an emulator until the block ends; yields it with ``base_url`` set.

    >>> with serve("langgraph") as emu:  # doctest: +SKIP
    ...     RunClient("langgraph", emu.base_url).launch({...})
    ...     assert len(emu.launches) == 1
    """
    emu = create_emulator(emulator, **kwargs) if isinstance(emulator, str) else emulator
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        emu.app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        interface="asgi3",
        backlog=4096,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=2,  # an emulator need not wait long for open requests
    )
    server = _Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"emulator-{emu.platform}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the {emu.platform} emulator did not start")
        time.sleep(0.01)
    emu.base_url = f"http://{host}:{bound_port}"
    logging.getLogger("runbridge.testing").debug("%s emulator on %s", emu.platform, emu.base_url)
    try:
        yield emu
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
