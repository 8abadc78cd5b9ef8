"""runbridge for Prefect 3: launch runs on external platforms from flows, and wait for them.

* :class:`RunbridgeCredentials` (block): platform, base URL, token (secret), provider options
  and client settings; it builds runbridge's one client configuration (``ClientConfig``).
* :class:`ExternalRunJob` (block, a ``JobBlock``): what to launch and how to wait;
  ``trigger()`` returns an :class:`ExternalRun` (a ``JobRun``) with ``wait_for_completion()``
  and ``fetch_result()``.
* Tasks: :func:`launch_run`, :func:`wait_for_run`, :func:`launch_and_wait` for sync flows, and
  :func:`alaunch_run`, :func:`await_for_run`, :func:`alaunch_and_wait` for async flows.

A task retry re-attaches to the run it launched (core's planner decides, from launch records
kept in Prefect's result store); a run runbridge cancelled is replaced by a new one.

Register the blocks with ``prefect block register -m runbridge.prefect_blocks``.
See docs/prefect.md.
"""

from __future__ import annotations

from .credentials import RunbridgeCredentials
from .jobs import ExternalRun, ExternalRunJob
from .tasks import (
    alaunch_and_wait,
    alaunch_run,
    await_for_run,
    launch_and_wait,
    launch_run,
    wait_for_run,
)

__all__ = [
    "ExternalRun",
    "ExternalRunJob",
    "RunbridgeCredentials",
    "alaunch_and_wait",
    "alaunch_run",
    "await_for_run",
    "launch_and_wait",
    "launch_run",
    "wait_for_run",
]
