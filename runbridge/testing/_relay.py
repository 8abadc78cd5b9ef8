"""One server, many emulators: a relay that forwards every request to the emulator behind it.

Starting and stopping a uvicorn server for each test can cost more than the test itself. Serve
one :class:`Relay` for a test module (or session) instead and put a fresh emulator behind it
for each test::

    with serve_relay() as relay:
        emu = relay.swap(create_emulator("rest", token="t"))  # emu.base_url == relay.base_url
        ...  # one test, against emu.base_url as if emu itself were served
        emu = relay.swap(create_emulator("rest", token="t"))  # a fresh one for the next
        ...

The emulator behind the relay records the requests and injects the faults; the relay only
passes them through.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar, TypeVar

from ._emulator import ASGIApp, Emulator, Receive, Scope, Send, json_error
from ._server import serve

__all__ = ["Relay", "serve_relay"]

E = TypeVar("E", bound=Emulator)


class Relay(Emulator):
    """An emulator that forwards every request to its ``target`` emulator, whichever that is.

    Serve it once (``serve(Relay())`` or :func:`serve_relay`), then :meth:`swap` emulators in
    behind it. Without a target it answers 503 ``no emulator behind the relay``.
    """

    platform: ClassVar[str] = "relay"

    def __init__(self, target: Emulator | None = None) -> None:
        super().__init__()
        self.target = target
        """The emulator that answers the relay's requests, or ``None``."""

    def swap(self, emulator: E) -> E:
        """Put ``emulator`` behind the relay (in place of the one there) and return it.

        Sets ``emulator.base_url`` to the relay's, so the emulator reads as if served itself.
        """
        emulator.base_url = self.base_url
        self.target = emulator
        return emulator

    @property
    def app(self) -> ASGIApp:
        return self._forward

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self.target  # read once: a swap may happen while the request is in flight
        if target is None:
            if scope["type"] == "http":
                await json_error(503, "no emulator behind the relay")(scope, receive, send)
            return
        await target.app(scope, receive, send)


@contextlib.contextmanager
def serve_relay(
    *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
) -> Iterator[Relay]:
    """Serve an empty :class:`Relay` until the block ends; yields it with ``base_url`` set."""
    relay = Relay()
    with serve(relay, host=host, port=port, log_level=log_level):
        yield relay
