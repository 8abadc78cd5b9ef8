"""Emulators of the platforms' HTTP APIs, for runbridge's tests and yours.

>>> from runbridge.testing import serve, Script
>>> with serve("langgraph") as emu:  # doctest: +SKIP
...     emu.script(Script([("pending", 0.1), ("running", 0.5)], final="error", message="boom"))
...     ...  # point a RunClient at emu.base_url; emu.launches records what it received

One server for many emulators (a fresh one per test, say): ``with serve_relay() as relay:``,
then ``emu = relay.swap(create_emulator("rest"))`` for each test (see :class:`Relay`).

From another process (``runbridge emulate``), script it through its control API under
``/_runbridge/`` with :class:`EmulatorControl` (see docs/testing.md).

Needs the ``testing`` extra (starlette, uvicorn). Imports no orchestrator.
"""

from __future__ import annotations

from ._emulator import EmulatedRun, Emulator, Fault, RecordedRequest, Script
from ._relay import Relay, serve_relay
from ._server import EMULATORS, create_emulator, serve
from .control import ControlRefused, EmulatorControl

__all__ = [
    "EMULATORS",
    "ControlRefused",
    "EmulatedRun",
    "Emulator",
    "EmulatorControl",
    "Fault",
    "RecordedRequest",
    "Relay",
    "Script",
    "create_emulator",
    "serve",
    "serve_relay",
]
