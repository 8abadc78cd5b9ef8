"""Child processes of the deployment tests that die with the test session.

A pytest process that is SIGKILLed (a CI job's timeout, an impatient user) runs no teardown: the
emulators and the deployments' processes it started would live on, holding ports and CPU.
:func:`popen` starts a child with a parent-death signal (Linux ``prctl(PR_SET_PDEATHSIG)``) and
SIGINT back at its default (the pytest process may ignore it, and an ignored signal is inherited).

The kernel sends the parent-death signal when the *thread* that forked the child ends, not the
process: the cells' pools start emulators from short-lived threads, whose children would die
with them. So every child is forked by one long-lived thread of this module, which ends only
with the process.

The signal survives ``exec`` but not a change of user (``runuser``, set-user-ID programs): such a
child must forward it itself (``runuser`` passes SIGTERM on to its command). Elsewhere than Linux
the children get no parent-death signal (SIGINT is still restored).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = ["PR_SET_PDEATHSIG", "death_signal_supported", "popen", "spawn"]

PR_SET_PDEATHSIG = 1
"""linux/prctl.h."""


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
"""Resolved once, here: the ``preexec_fn`` runs between fork and exec, where it must not import
or take locks another thread may hold."""

_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="deploy-spawner")
"""The one thread that forks every child (see the module's docstring)."""


def death_signal_supported() -> bool:
    return _PRCTL is not None


def _preexec(death_signal: int) -> Any:
    parent = os.getpid()

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before the prctl
                os.kill(os.getpid(), death_signal)

    return preexec


def popen(
    argv: Sequence[str],
    *,
    death_signal: int = signal.SIGKILL,
    **kwargs: Any,
) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **kwargs)`` from the spawner thread, the child getting
    ``death_signal`` when this process ends (SIGKILL by default; SIGTERM for a process that
    must stop its own children, such as an orchestrator's scheduler) and SIGINT at its default.
    ``kwargs`` must not hold a ``preexec_fn``."""
    if "preexec_fn" in kwargs:
        raise TypeError("popen() sets preexec_fn itself")
    preexec = _preexec(int(death_signal))

    def start() -> subprocess.Popen[Any]:
        return subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)

    return _SPAWNER.submit(start).result()


def spawn(
    argv: Sequence[str],
    log: Path,
    *,
    death_signal: int = signal.SIGKILL,
    append: bool = True,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """:func:`popen` of a process in its own session (process group, to be stopped with its
    children by group id), stdin from /dev/null, stdout and stderr to ``log``."""
    with log.open("ab" if append else "wb") as out:
        return popen(
            argv,
            death_signal=death_signal,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kwargs,
        )
