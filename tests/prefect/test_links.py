"""The run's link artifact is made when core announces its page (``url_known``), not only at
launch (issue 14, defect 4): a W&B Launch queue item has no run, and no page, until an agent
claims it. Real flow runs against the W&B emulator on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from runbridge import RunState
from runbridge.prefect_blocks import ExternalRunJob, RunbridgeCredentials, launch_and_wait
from runbridge.testing import Emulator, Script

from .conftest import TOKEN, swap_emulator
from .helpers import flow_run_artifacts, flow_run_logs

OPTIONS = {"entity": "runbridge", "project": "demo", "queue": "default"}
PICKUP = 0.6
"""Seconds the queue item waits for the emulated agent: no run page before that."""
RUNNING = 2.0
"""Seconds the run then goes."""


@pytest.fixture
def wandb_emu(relay: Any) -> Emulator:
    emu = swap_emulator(relay, "wandb")
    emu.pickup = PICKUP  # type: ignore[attr-defined]
    emu.script(Script([("running", RUNNING)], final="finished", outputs={"loss": 0.5}))
    return emu


def _links(flow_run_id: Any) -> list[Any]:
    return [a for a in flow_run_artifacts(flow_run_id) if str(a.data).startswith("[wandb run")]


@pytest.mark.parametrize("how", ["task", "job"])
def test_the_link_is_made_when_the_queue_item_gets_its_run(wandb_emu, how):
    credentials = RunbridgeCredentials(
        platform="wandb", base_url=wandb_emu.base_url, token=TOKEN, options=OPTIONS
    )
    params = {"docker_image": "trainer:latest"}

    @flow
    def train():
        if how == "task":
            return launch_and_wait(credentials, params, poll=0.1)
        job = ExternalRunJob(credentials=credentials, params=params, poll_interval=0.1)
        return job.trigger().wait_for_completion()

    state = train(return_state=True)
    status = state.result()
    assert status.state is RunState.SUCCEEDED
    flow_run_id = state.state_details.flow_run_id
    logs = flow_run_logs(flow_run_id)
    # the launch knew no page (a queue item), so the launch line carries none
    launched = [line for line in logs if line.startswith("Launched wandb run")]
    assert launched and all("http" not in line for line in launched), logs
    links = _links(flow_run_id)
    assert len(links) == 1, [a.data for a in flow_run_artifacts(flow_run_id)]
    (link,) = links
    assert status.url and status.url in str(link.data) and "/runs/" in status.url
    # made when the URL appeared, while the run went on: before the final status artifact,
    # which the end of the wait makes (the emulator's ended_at has whole seconds only)
    (final,) = [a for a in flow_run_artifacts(flow_run_id) if str(a.data).startswith("###")]
    assert link.created is not None and final.created is not None
    assert (final.created - link.created).total_seconds() > RUNNING / 2
    assert TOKEN not in str(link.data) and TOKEN not in str(link.description)


def test_a_known_url_at_launch_is_linked_once(rest_emu, rest_credentials):
    """The launch's status carries the URL and every wait announces it again: one link."""

    @flow
    def nightly():
        return launch_and_wait(rest_credentials, {"job": "nightly"}, poll=0.05)

    state = nightly(return_state=True)
    status = state.result()
    links = [
        a
        for a in flow_run_artifacts(state.state_details.flow_run_id)
        if str(a.data).startswith("[rest run")
    ]
    assert len(links) == 1 and status.url in str(links[0].data)


def test_no_link_without_artifacts(wandb_emu):
    credentials = RunbridgeCredentials(
        platform="wandb", base_url=wandb_emu.base_url, token=TOKEN, options=OPTIONS
    )

    @flow
    def train():
        return launch_and_wait(
            credentials, {"docker_image": "trainer:latest"}, poll=0.1, create_artifacts=False
        )

    state = train(return_state=True)
    assert state.result().state is RunState.SUCCEEDED
    assert flow_run_artifacts(state.state_details.flow_run_id) == []
