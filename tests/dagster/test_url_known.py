"""The run's page reaches Dagster as soon as core announces it (``url_known``), not only at the
end: a W&B Launch queue item has no run (and no page) until an agent claims it.

Real Dagster (``materialize``, ``execute_in_process``) against the W&B emulator on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
import pytest

from runbridge.dagster_resources import external_run_asset, external_run_op
from runbridge.testing import Emulator, Relay, Script, create_emulator
from tests.dagster.conftest import resource_for

OPTIONS = {"entity": "runbridge", "project": "demo", "queue": "default"}
PICKUP = 0.6
"""Seconds the queue item waits for the emulated agent: no run page before that."""
RUNNING = 1.5
"""Seconds the run then goes: the page is known this long before the step ends."""


@pytest.fixture
def emu(relay: Relay) -> Iterator[Emulator]:
    emu = create_emulator("wandb")
    emu.pickup = PICKUP  # type: ignore[attr-defined]
    emu.script(Script([("running", RUNNING)], final="finished", outputs={"loss": 0.5}))
    yield relay.swap(emu)
    relay.target = None


def _log(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id))


def test_asset_observes_the_run_page_when_it_appears(emu: Emulator) -> None:
    model = external_run_asset(name="model", params={"docker_image": "trainer:latest"})
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [model],
            resources={"external_run": resource_for(emu, options=OPTIONS)},
            instance=instance,
        )
        assert result.success
        entries = _log(instance, result.run_id)
    (materialization,) = result.asset_materializations_for_node("model")
    url = materialization.metadata["run_url"]
    assert isinstance(url, dg.UrlMetadataValue) and "/runs/" in url.value
    # the launch knew no page (a queue item), so the launch line carries none
    launched = [e.message for e in entries if e.message.startswith("Launched wandb:")]
    assert launched and all("http" not in m for m in launched)
    # an observation of the asset carries the page, long before the materialization
    observations = [
        e
        for e in entries
        if e.dagster_event is not None
        and e.dagster_event.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    (observed,) = observations
    observation = observed.dagster_event.asset_observation_data.asset_observation  # type: ignore[union-attr]
    assert observation.asset_key == dg.AssetKey("model")
    assert observation.metadata["run_url"] == url
    assert observation.metadata["run_ref"].value.startswith("wandb:")
    (done,) = [
        e
        for e in entries
        if e.dagster_event is not None
        and e.dagster_event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    ]
    assert done.timestamp - observed.timestamp > RUNNING / 2


def test_op_records_the_run_page_as_an_engine_event(emu: Emulator) -> None:
    train = external_run_op("train", {"docker_image": "trainer:latest"})

    @dg.job(resource_defs={"external_run": resource_for(emu, options=OPTIONS)})
    def training() -> None:
        train()

    with dg.instance_for_test() as instance:
        result = training.execute_in_process(instance=instance)
        assert result.success
        entries = _log(instance, result.run_id)
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    url = output.step_output_data.metadata["run_url"]
    pages = [
        e
        for e in entries
        if e.dagster_event is not None
        and e.dagster_event.event_type == dg.DagsterEventType.ENGINE_EVENT
        and "run_url" in e.dagster_event.engine_event_data.metadata
    ]
    (page,) = pages  # published once, though each wait announces it again
    assert page.step_key == "train"
    assert page.dagster_event.engine_event_data.metadata["run_url"] == url  # type: ignore[union-attr]
    assert page.message.startswith("Run page of wandb:")
    ended = max(e.timestamp for e in entries if e.step_key == "train")
    assert ended - page.timestamp > RUNNING / 2
