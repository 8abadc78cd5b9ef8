"""How the synchronous entry points run the one (asynchronous) implementation.

Every operation is written once, as a coroutine on :class:`~runbridge.AsyncRunClient`. The
synchronous names (``ExternalRunJob.trigger``, the ``launch_and_wait`` task, ...) hand that
coroutine to :func:`run_sync`, which runs it on one long-lived event loop in a daemon thread:

* **one loop, so one connection pool**: every synchronous caller in the process (the flow's
  main thread, each worker thread of ``.map()`` / ``.submit()``) shares the loop, and so the
  one ``AsyncRunClient`` per credentials that lives on it;
* **the caller's context goes along**: the coroutine runs in a copy of the calling thread's
  ``contextvars``, so Prefect's run context (run logger, artifacts, result store) is there;
* **an interruption reaches the coroutine**: Prefect delivers a task timeout as an exception
  raised *into* the waiting thread (an alarm signal on the main thread, an asynchronous
  exception on a worker thread) and a flow-run cancellation as ``TerminationSignal``. The
  caller waits in short slices so that such an exception is delivered, then cancels the
  coroutine, lets its cleanup (cancelling the external run) finish, and re-raises.

Prefect's own ``run_coro_as_sync`` does not do the last point: it blocks in one uninterruptible
wait and, when interrupted, leaves the coroutine running (only ``KeyboardInterrupt`` cancels it),
which would leave the external run going after the task was killed.

Which name dispatches where follows Prefect 3's convention (PrefectHQ/prefect#15008): an
explicit ``a``-prefixed coroutine method is the implementation, and the plain name is
decorated with ``@async_dispatch`` (runbridge's own, on Prefect's public run context; Prefect's
is private), so ``await job.trigger()`` works in async flows and ``job.trigger()`` in sync ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["async_dispatch", "bridge_loop", "in_async_context", "run_sync"]

T = TypeVar("T")


def async_dispatch(
    async_impl: Callable[..., Coroutine[Any, Any, Any]],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Prefect 3's dispatch convention, built on its public run context: the decorated sync
    method runs in sync code (a sync flow or task, or outside any run with no running event
    loop); in async code (an async flow or task, or a running event loop outside any run) the
    call returns ``async_impl``'s coroutine instead. ``_sync=True``/``False`` forces either.

    Prefect's own ``async_dispatch`` does the same but lives in
    ``prefect._internal.compatibility``, a private module; runbridge does not import it.
    ``tests/prefect/test_dispatch.py`` checks that both decide alike where Prefect has one.
    """

    def decorator(sync_fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(sync_fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            force = kwargs.pop("_sync", None)
            run_sync_now = bool(force) if force is not None else not in_async_context()
            return (sync_fn if run_sync_now else async_impl)(*args, **kwargs)

        wrapper.aio = async_impl  # type: ignore[attr-defined]
        return wrapper

    return decorator


def in_async_context() -> bool:
    """Is the caller async code: an async flow or task run, or (outside any run) a thread
    with a running event loop?"""
    from prefect.context import get_run_context
    from prefect.exceptions import MissingContextError

    try:
        ctx = get_run_context()
    except MissingContextError:
        try:
            asyncio.get_running_loop()
            return True
        except RuntimeError:
            return False
    parent = getattr(ctx, "task", None) or getattr(ctx, "flow", None)
    return bool(getattr(parent, "isasync", True))


POLL_SLICE = 0.1
"""How often a waiting thread wakes to let an injected exception (timeout, signal) in."""
CLEANUP_TIMEOUT = 120.0
"""How long an interrupted caller waits for the coroutine's cleanup (cancelling the run)."""


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="runbridge-prefect-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def alive(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive() and not self.loop.is_closed()


_lock = threading.Lock()
_loop_thread: _LoopThread | None = None


def bridge_loop() -> asyncio.AbstractEventLoop:
    """The event loop the synchronous entry points run on (started on first use, and again
    in a forked child)."""
    global _loop_thread
    with _lock:
        if _loop_thread is None or not _loop_thread.alive:
            _loop_thread = _LoopThread()
        return _loop_thread.loop


def is_bridge_loop(loop: asyncio.AbstractEventLoop) -> bool:
    current = _loop_thread
    return current is not None and current.loop is loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on the bridge loop and return its result, from synchronous code.

    Raises what the coroutine raises. If the calling thread is interrupted while waiting
    (a Prefect timeout, a cancellation signal, Ctrl-C), the coroutine is cancelled and its
    cleanup awaited (up to ``CLEANUP_TIMEOUT``) before the interruption propagates.
    """
    loop = bridge_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        coro.close()
        raise RuntimeError(
            "a synchronous runbridge call was made on runbridge's own event loop; "
            "await the a-prefixed method instead"
        )
    context = contextvars.copy_context()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    holder: dict[str, asyncio.Task[T]] = {}
    abandoned = threading.Event()

    def start() -> None:  # on the loop, in the caller's context
        if abandoned.is_set():
            coro.close()
            _cancel(done)
            return
        task = loop.create_task(coro)  # copies the current (the caller's) context
        holder["task"] = task
        task.add_done_callback(lambda t: _transfer(t, done))

    loop.call_soon_threadsafe(start, context=context)
    try:
        _wait(done, None)
        return done.result()
    except BaseException:
        if not done.done():
            abandoned.set()

            def cancel() -> None:
                task = holder.get("task")
                if task is not None:
                    task.cancel()

            loop.call_soon_threadsafe(cancel)
            _wait(done, CLEANUP_TIMEOUT)
        raise


def _wait(future: concurrent.futures.Future[Any], timeout: float | None) -> None:
    """Wait for ``future`` in short slices, so that an exception injected into this thread
    (Prefect's timeouts in worker threads) is delivered between them."""
    end = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        if end is not None and time.monotonic() >= end:
            return
        concurrent.futures.wait([future], timeout=POLL_SLICE)


def _cancel(future: concurrent.futures.Future[Any]) -> None:
    future.cancel()
    future.set_running_or_notify_cancel()  # wakes concurrent.futures.wait() waiters


def _transfer(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    if future.done():
        return
    if task.cancelled():
        _cancel(future)
        return
    exc = task.exception()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(task.result())
