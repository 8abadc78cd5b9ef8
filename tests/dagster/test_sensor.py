"""external_run_sensor, evaluated with build_sensor_context as the daemon would, tick after tick
with the cursor each tick returns: every completion delivered exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest

from runbridge.core import RunStatus
from runbridge.dagster_resources import ExternalRunResource, external_run_sensor
from runbridge.testing import EmulatedRun, Emulator, Relay, Script, create_emulator
from tests.dagster.conftest import resource_for

LONG = Script([("running", 600.0)], final="succeeded")
ORG = "org-sensor"


@dg.op
def react() -> None:
    pass


@dg.job
def react_job() -> None:
    react()


def finish(run: EmulatedRun, raw: str) -> None:
    """End an emulated run now, in the raw state ``raw``."""
    run.script = Script([], final=raw)


class Ticks:
    """Evaluates a sensor tick after tick, carrying the cursor, and counts deliveries."""

    def __init__(self, sensor: dg.SensorDefinition, resource: ExternalRunResource) -> None:
        self.sensor = sensor
        self.resource = resource
        self.cursor: str | None = None
        self.delivered: Counter[str] = Counter()
        self.requests: list[dg.RunRequest] = []
        self.instance = dg.DagsterInstance.ephemeral()

    def tick(self, cursor: str | None = None) -> list[str]:
        """One evaluation (from ``cursor`` if given, else the last one); the run keys requested."""
        with dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor if cursor is None else cursor,
            resources={"external_run": self.resource},
        ) as context:
            data = self.sensor.evaluate_tick(context)
        self.cursor = data.cursor
        keys = [r.run_key for r in data.run_requests or []]
        self.delivered.update(keys)
        self.requests += data.run_requests or []
        return keys


# -- given references --------------------------------------------------------------------------
@pytest.fixture
def rest(relay: Relay) -> Iterator[Emulator]:
    yield relay.swap(create_emulator("rest"))
    relay.target = None


def test_given_refs_each_completion_exactly_once(rest: Emulator) -> None:
    runs = [rest.add_run(LONG) for _ in range(3)]
    refs = [f"rest:{run.id}" for run in runs]
    ticks = Ticks(external_run_sensor(name="watch", refs=refs, job=react_job), resource_for(rest))
    assert ticks.tick() == []
    finish(runs[0], "succeeded")
    assert ticks.tick() == [refs[0]]
    assert ticks.tick() == []
    replay = ticks.cursor
    finish(runs[1], "failed")
    finish(runs[2], "cancelled")
    assert sorted(ticks.tick()) == sorted(refs[1:])
    assert ticks.tick() == [] and ticks.tick() == []
    assert ticks.delivered == Counter(refs)
    # a tick that failed before its cursor was committed is re-run from the previous cursor:
    # it delivers what that tick would have, nothing already committed
    assert sorted(ticks.tick(cursor=replay)) == sorted(refs[1:])
    # the requests name the run: run key and tags
    request = ticks.requests[0]
    assert request.run_key == refs[0]
    assert request.tags["runbridge/ref"] == refs[0]
    assert request.tags["runbridge/state"] == "SUCCEEDED"
    assert request.tags["runbridge/raw_state"] == "succeeded"
    assert request.tags["runbridge/url"] == f"{rest.base_url}/ui/runs/{runs[0].id}"
    # only the references still given are remembered
    smaller = Ticks(external_run_sensor(name="watch", refs=refs[:1], job=react_job), ticks.resource)
    smaller.tick(cursor=ticks.cursor)
    assert json.loads(smaller.cursor or "{}")["done"] == refs[:1]


def test_states_filter_and_run_request_builder(rest: Emulator) -> None:
    ok, bad, skipped = (rest.add_run(LONG) for _ in range(3))
    refs = lambda context: [f"rest:{run.id}" for run in (ok, bad, skipped)]  # noqa: E731

    def build(status: RunStatus) -> dg.RunRequest | None:
        if status.ref.id == skipped.id:
            return None
        return dg.RunRequest(run_config={"ops": {"react": {}}}, tags={"team": "ml"})

    sensor = external_run_sensor(
        name="failures",
        refs=refs,
        states=["FAILED", "SUCCEEDED"],
        run_request=build,
        job=react_job,
    )
    ticks = Ticks(sensor, resource_for(rest))
    for run, raw in ((ok, "succeeded"), (bad, "failed"), (skipped, "failed")):
        finish(run, raw)
    keys = ticks.tick()
    assert sorted(keys) == sorted([f"rest:{ok.id}", f"rest:{bad.id}"])
    assert all(r.tags["team"] == "ml" and "runbridge/ref" in r.tags for r in ticks.requests)
    assert ticks.tick() == []
    only_failed = Ticks(
        external_run_sensor(name="f", refs=refs, states=["FAILED"], job=react_job),
        ticks.resource,
    )
    assert sorted(only_failed.tick()) == sorted([f"rest:{bad.id}", f"rest:{skipped.id}"])


def test_a_run_that_cannot_be_read_is_retried_next_tick(rest: Emulator) -> None:
    run = rest.add_run(LONG)
    finish(run, "succeeded")
    ticks = Ticks(
        external_run_sensor(name="w", refs=[f"rest:{run.id}"], job=react_job),
        resource_for(rest, request_attempts=1),
    )
    rest.inject(kind="status", status=503, times=1)
    assert ticks.tick() == []
    assert ticks.tick() == [f"rest:{run.id}"]


# -- the platform's listing --------------------------------------------------------------------
@pytest.fixture
def vi(relay: Relay) -> Iterator[Emulator]:
    yield relay.swap(create_emulator("vi", organization_id=ORG))
    relay.target = None


def vi_resource(emu: Emulator) -> ExternalRunResource:
    return resource_for(emu, options={"organization_id": ORG})


def test_listed_runs_each_completion_exactly_once(vi: Emulator) -> None:
    old = vi.add_run(Script([], final="Succeeded"))  # ended before the sensor started
    a = vi.add_run(LONG)
    ticks = Ticks(external_run_sensor(name="vi_runs", list_limit=3, job=react_job), vi_resource(vi))
    assert ticks.tick() == []  # the baseline: `old` is not delivered
    finish(a, "Succeeded")
    assert ticks.tick() == [f"vi:{a.id}?organization_id={ORG}"]
    b = vi.add_run(LONG)
    assert ticks.tick() == []
    # four newer runs push `b` out of the listing window (3) while it runs: it is watched
    newer = [vi.add_run(LONG) for _ in range(4)]
    assert ticks.tick() == []
    finish(b, "Failed")
    assert ticks.tick() == [f"vi:{b.id}?organization_id={ORG}"]
    for run in newer:
        finish(run, "Succeeded")
    assert sorted(ticks.tick()) == sorted(f"vi:{run.id}?organization_id={ORG}" for run in newer)
    assert ticks.tick() == []
    assert all(n == 1 for n in ticks.delivered.values()) and len(ticks.delivered) == 6
    assert f"vi:{old.id}?organization_id={ORG}" not in ticks.delivered
    # the cursor stays bounded by the listing window
    cursor: dict[str, Any] = json.loads(ticks.cursor or "{}")
    assert len(cursor["done"]) <= 3 and cursor["active"] == []


def test_include_existing_delivers_runs_already_ended(vi: Emulator) -> None:
    old = vi.add_run(Script([], final="Succeeded"))
    sensor = external_run_sensor(name="all", include_existing=True, job=react_job)
    ticks = Ticks(sensor, vi_resource(vi))
    assert ticks.tick() == [f"vi:{old.id}?organization_id={ORG}"]
    assert ticks.tick() == []


def test_sensor_in_definitions(rest: Emulator) -> None:
    sensor = external_run_sensor(name="watch", refs=[], job=react_job)
    defs = dg.Definitions(
        jobs=[react_job], sensors=[sensor], resources={"external_run": resource_for(rest)}
    )
    dg.Definitions.validate_loadable(defs)
    assert sensor.job_name == "react_job"
