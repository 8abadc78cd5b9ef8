"""One ``AsyncRunClient`` per (credentials, event loop), shared by concurrent operations.

Twenty ``launch_and_wait`` tasks gathered in an async flow, or mapped in a sync one, use one
client and so one connection pool; no operation opens a client per poll. The client's event
hook is shared too, so each operation registers a *listener* in a ContextVar and the hook
hands every event to the listener of the operation that caused it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar

import anyio

from ..core.client import AsyncRunClient
from ..core.flows import Event
from ._bridge import is_bridge_loop
from .credentials import RunbridgeCredentials

__all__ = ["current_listener", "shared_client"]

current_listener: ContextVar[Callable[[Event], None] | None] = ContextVar(
    "runbridge_prefect_listener", default=None
)


def _dispatch_event(event: Event) -> None:
    listener = current_listener.get()
    if listener is not None:
        listener(event)


class _Shared:
    def __init__(self, client: AsyncRunClient) -> None:
        self.client = client
        self.users = 0
        self.janitor: asyncio.Task[None] | None = None


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Shared]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
clients_created = 0
"""How many shared clients this process has created (tests count them)."""

LINGER = 30.0
"""How long an unused client stays open on a loop other than runbridge's, for the next task."""


@contextlib.asynccontextmanager
async def shared_client(credentials: RunbridgeCredentials) -> AsyncIterator[AsyncRunClient]:
    """The ``AsyncRunClient`` of these credentials on the running event loop.

    On runbridge's own loop (where the synchronous entry points run) it lives as long as the
    process. On any other loop (an async flow's) it is closed ``LINGER`` seconds after its last
    user is done, or when the loop shuts down (``asyncio.run`` cancels the closing task, which
    then closes the client at once), so no connection outlives its loop.
    """
    global clients_created
    loop = asyncio.get_running_loop()
    key = credentials._fingerprint()
    with _lock:
        per_loop = _clients.setdefault(loop, {})
        shared = per_loop.get(key)
        if shared is None:
            shared = per_loop[key] = _Shared(credentials.get_async_client(hooks=[_dispatch_event]))
            clients_created += 1
        shared.users += 1
    try:
        yield shared.client
    finally:
        with _lock:
            shared.users -= 1
            idle = shared.users == 0
        if idle and not is_bridge_loop(loop) and (shared.janitor is None or shared.janitor.done()):
            shared.janitor = loop.create_task(_close_when_idle(per_loop, key, shared))


async def _close_when_idle(per_loop: dict[str, _Shared], key: str, shared: _Shared) -> None:
    try:
        await asyncio.sleep(LINGER)
    finally:
        with _lock:
            idle = shared.users == 0 and per_loop.get(key) is shared
            if idle:
                del per_loop[key]
        if idle:
            with anyio.CancelScope(shield=True):
                await shared.client.aclose()
