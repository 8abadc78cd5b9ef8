"""One :class:`~runbridge.AsyncRunClient` per configuration and event loop, shared.

An Airflow triggerer holds thousands of deferred waits in one event loop; a Prefect flow
gathers dozens of runs. Each must not open its own client (its own connection pool, its own
TLS handshakes): they share one per :class:`~runbridge.core.config.ClientConfig` and loop::

    async with shared_async_client(config) as client:
        status = await client.wait(ref, on_event=my_hook)

Events go to the hook passed with each call (``on_event=``), so waits sharing a client never
see each other's events. A client is never used on another loop. When its last user leaves it
stays open ``linger`` seconds for the next one (None: until the loop closes), then closes; a
configuration that changed (a rotated token) gets a new client, and the old one closes when
its last user leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import weakref
from collections.abc import AsyncIterator

from .client import AsyncRunClient
from .config import ClientConfig

__all__ = ["clients_created", "shared_async_client"]

DEFAULT_LINGER = 30.0


@dataclasses.dataclass
class _Entry:
    client: AsyncRunClient
    users: int = 0
    closer: asyncio.Task[None] | None = None
    closing: bool = False


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Entry]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()
_created = 0


def clients_created() -> int:
    """How many shared clients this process has made (tests and benchmarks count them)."""
    return _created


@contextlib.asynccontextmanager
async def shared_async_client(
    config: ClientConfig, *, linger: float | None = DEFAULT_LINGER
) -> AsyncIterator[AsyncRunClient]:
    """The shared client of ``config`` on the running event loop (see the module docstring)."""
    global _created
    loop = asyncio.get_running_loop()
    key = config.fingerprint()
    with _lock:
        entries = _per_loop.setdefault(loop, {})
        entry = entries.get(key)
        if entry is None or entry.closing:
            entry = entries[key] = _Entry(config.async_client())
            _created += 1
        if entry.closer is not None:
            entry.closer.cancel()
            entry.closer = None
        entry.users += 1
    try:
        yield entry.client
    finally:
        with _lock:
            entry.users -= 1
            idle = entry.users == 0 and entries.get(key) is entry
        if idle and linger is not None:
            entry.closer = loop.create_task(_close_when_idle(entries, key, entry, linger))


async def _close_when_idle(
    entries: dict[str, _Entry], key: str, entry: _Entry, linger: float
) -> None:
    """Close ``entry``'s client after ``linger`` idle seconds, or at once when the loop shuts
    down (``asyncio.run`` cancels this task, and the client still closes)."""
    me = asyncio.current_task()
    try:
        await asyncio.sleep(linger)
    except asyncio.CancelledError:
        # cancelled because a new user came (who may have left again in the same loop turn,
        # leaving a newer closer in charge): keep the client; else the loop is shutting down
        if entry.users or entry.closer is not me:
            raise
    with _lock:
        if entry.users or entries.get(key) is not entry or entry.closer is not me:
            return
        del entries[key]
        entry.closing = True
    await asyncio.shield(entry.client.aclose())
