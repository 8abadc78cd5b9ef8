"""An inbox of pushed run updates (webhook deliveries) that ends waits early.

Platforms such as Lume recommend webhooks over polling. Where the deployment can receive
them, give a client an :class:`Inbox` and feed it what arrives; each wait sleeps *on the
inbox* instead of the clock, so a delivered terminal status ends it at once. Polling stays
the fallback: a lost delivery costs at most one poll interval, never a stuck wait.

::

    inbox = Inbox()
    client = RunClient("lume", url, token, inbox=inbox)
    # in the web handler that receives the platform's webhook:
    inbox.deliver(parse_delivery(...))        # a RunStatus

``deliver`` is thread-safe: it may be called from a web server's thread while sync waits
block in another, or async waits run in an event loop.

A delivery is a hint, never a verdict: the wait it wakes *consumes* it and confirms with a
status check, so a stale or forged delivery costs one request, not a busy loop; a delivery the
check proves wrong makes the wait's next sleep a full one, so a flood of forged deliveries
costs at most one check per poll interval; the inbox keeps at most ``max_pending`` undelivered
statuses (the oldest are dropped first).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Hashable

from .models import RunRef, RunStatus

__all__ = ["Inbox"]


def _key(ref: RunRef) -> Hashable:
    return (ref.platform, ref.id)


class Inbox:
    """Delivered statuses by run, and the waits sleeping on them."""

    def __init__(self, *, max_pending: int = 10_000) -> None:
        if not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive integer, got {max_pending!r}")
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._statuses: OrderedDict[Hashable, RunStatus] = OrderedDict()
        self._cond = threading.Condition(self._lock)
        self._futures: dict[
            Hashable, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
        ] = {}

    def deliver(self, status: RunStatus) -> None:
        """Record a pushed status and wake every wait on its run."""
        key = _key(status.ref)
        with self._lock:
            self._statuses[key] = status
            self._statuses.move_to_end(key)
            while len(self._statuses) > self.max_pending:
                self._statuses.popitem(last=False)
            self._cond.notify_all()
            waiters = self._futures.pop(key, [])
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def take(self, ref: RunRef) -> RunStatus | None:
        """The status delivered for ``ref``, if any, removed from the inbox (consumed)."""
        with self._lock:
            return self._statuses.pop(_key(ref), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._statuses)

    def forget(self, ref: RunRef) -> None:
        with self._lock:
            self._statuses.pop(_key(ref), None)

    def sleep(self, ref: RunRef, seconds: float) -> RunStatus | None:
        """Block up to ``seconds``; return early with a delivered terminal status, consumed."""
        key = _key(ref)
        with self._cond:
            self._cond.wait_for(
                lambda: _terminal(self._statuses.get(key)), timeout=max(0.0, seconds)
            )
            status = self._statuses.get(key)
            if _terminal(status):
                del self._statuses[key]
        return status if _terminal(status) else None

    async def sleep_async(self, ref: RunRef, seconds: float) -> RunStatus | None:
        """The async twin of :meth:`sleep`."""
        key = _key(ref)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            status = self._statuses.get(key)
            if not _terminal(status):
                self._futures.setdefault(key, []).append((loop, future))
        if not _terminal(status):
            try:
                await asyncio.wait_for(asyncio.shield(future), max(0.0, seconds))
            except asyncio.TimeoutError:
                pass
            finally:
                with self._lock:
                    entries = self._futures.get(key, [])
                    if (loop, future) in entries:
                        entries.remove((loop, future))
                    if not entries:
                        self._futures.pop(key, None)
        with self._lock:
            status = self._statuses.get(key)
            if _terminal(status):
                del self._statuses[key]
        return status if _terminal(status) else None


def _terminal(status: RunStatus | None) -> bool:
    return status is not None and status.is_terminal


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
