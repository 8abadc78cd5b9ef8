"""Flows that a test serves with a Prefect ``Runner``, which runs each flow run in its own
process and cancels it the way Prefect cancels served and worker-run flows (a control-channel
intent, then SIGTERM). Each flow waits on external runs in every way a flow can: a task
called in the flow's thread, a task submitted to the thread pool, async tasks on the flow's
event loop."""

from __future__ import annotations

import asyncio

from prefect import flow

from runbridge.prefect_blocks import RunbridgeCredentials, alaunch_and_wait, launch_and_wait


@flow
def waits_sync(credentials_block: str) -> None:
    credentials = RunbridgeCredentials.load(credentials_block)
    in_thread_pool = launch_and_wait.submit(credentials, {"job": "sync-submitted"}, poll=0.1)
    launch_and_wait(credentials, {"job": "sync-called"}, poll=0.1)
    in_thread_pool.result()


@flow
async def waits_async(credentials_block: str) -> None:
    credentials = await RunbridgeCredentials.aload(credentials_block)
    await asyncio.gather(
        alaunch_and_wait(credentials, {"job": "async-1"}, poll=0.1),
        alaunch_and_wait(credentials, {"job": "async-2"}, poll=0.1),
    )
