"""The pure parts: the step's records and lineage as core's planner reads them, typed
metadata, the sensor cursor. No Dagster run."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from runbridge.core import ConfigError, LaunchRecord, RunRef, RunState, RunStatus
from runbridge.core.planner import CANCELLED, REATTACHED, STARTING, plan_launch
from runbridge.dagster_resources import (
    SensorCursor,
    external_run_asset,
    external_run_op,
    metadata_value,
    status_metadata,
)
from runbridge.dagster_resources._step import read_record, record_metadata, step_execution

BASE = "dagster:root:step"
A = RunRef("rest", "a")
B = RunRef("rest", "b")


def lineage(*runs: tuple[str, list[LaunchRecord], bool]) -> list:
    """A Dagster lineage (current run first), as _step reads it from the event log."""
    return [
        step_execution(run_id, records, step_succeeded=succeeded)
        for run_id, records, succeeded in runs
    ]


def rec(ref: RunRef | None, key: str = BASE, action: str = "launched") -> LaunchRecord:
    return LaunchRecord(key, ref, action)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("runs", "reattach", "key"),
    [
        # a first launch
        ([("r1", [], False)], None, BASE),
        # a retry in the same run finds the earlier attempt's run
        ([("r1", [rec(A)], False)], A, BASE),
        # the latest record of the run wins (a relaunch after a failed run)
        ([("r1", [rec(A), rec(B, f"{BASE}#1")], False)], B, f"{BASE}#1"),
        # a re-execution of a failed step re-attaches to the parent's run
        ([("r2", [], False), ("r1", [rec(A)], False)], A, BASE),
        # ... through a chain of re-executions
        ([("r3", [], False), ("r2", [], False), ("r1", [rec(A)], False)], A, BASE),
        # a re-execution of a step that succeeded launches anew, with a new key
        ([("r2", [], False), ("r1", [rec(A)], True)], None, f"{BASE}#1"),
        (
            [("r3", [], False), ("r2", [rec(B, f"{BASE}#1")], True), ("r1", [rec(A)], True)],
            None,
            f"{BASE}#2",
        ),
        # a run cancelled because its Dagster run was terminated is not re-attached
        ([("r2", [], False), ("r1", [rec(A), rec(A, action=CANCELLED)], False)], None, f"{BASE}#1"),
        # a re-attach recorded in a later run is followed like a launch
        (
            [
                ("r3", [], False),
                ("r2", [rec(A, action=REATTACHED)], False),
                ("r1", [rec(A)], False),
            ],
            A,
            BASE,
        ),
        # a parent whose step succeeded without a record (another version of the step)
        ([("r2", [], False), ("r1", [], True)], None, BASE),
        # a crash between "starting" and the launch's answer: launch again with the same key
        ([("r2", [], False), ("r1", [rec(None, action=STARTING)], False)], None, BASE),
        (
            [("r1", [rec(A), rec(A, action=CANCELLED), rec(None, f"{BASE}#1", STARTING)], False)],
            None,
            f"{BASE}#1",
        ),
    ],
)
def test_core_plans_from_a_dagster_lineage(runs, reattach, key) -> None:
    plan = plan_launch(lineage(*runs), BASE)
    assert (plan.reattach, plan.key) == (reattach, key)
    assert plan.why


def test_an_ancestor_run_is_named_in_the_reason() -> None:
    plan = plan_launch(lineage(("r2", [], False), ("r1", [rec(A)], False)), BASE)
    assert plan.why == "launched by Dagster run r1"


@pytest.mark.parametrize(
    "record",
    [rec(A), rec(B, f"{BASE}#2", REATTACHED), rec(A, action=CANCELLED), rec(None, action=STARTING)],
)
def test_records_round_trip_through_engine_event_metadata(record: LaunchRecord) -> None:
    metadata = record_metadata(record)
    assert all(isinstance(v, dg.TextMetadataValue) for v in metadata.values())
    assert read_record(metadata) == record


def test_other_engine_events_hold_no_record_and_broken_records_are_errors() -> None:
    assert read_record({}) is None
    assert read_record({"some/other": dg.MetadataValue.text("x")}) is None
    for broken in (
        {"runbridge/key": dg.MetadataValue.text("k")},  # a launched record without a ref
        {"runbridge/key": dg.MetadataValue.text("k"), "runbridge/ref": dg.MetadataValue.text("")},
        {
            "runbridge/key": dg.MetadataValue.text("k"),
            "runbridge/ref": dg.MetadataValue.text("rest:a"),
            "runbridge/action": dg.MetadataValue.text("exploded"),
        },
    ):
        with pytest.raises(ConfigError):
            read_record(broken)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, dg.MetadataValue.null()),
        (True, dg.MetadataValue.bool(True)),
        (3, dg.MetadataValue.int(3)),
        (2**70, dg.MetadataValue.text(str(2**70))),
        (0.5, dg.MetadataValue.float(0.5)),
        (math.nan, dg.MetadataValue.text("nan")),
        ("hello", dg.MetadataValue.text("hello")),
        ("https://example.com/r/1", dg.MetadataValue.url("https://example.com/r/1")),
        ("https://not a url", dg.MetadataValue.text("https://not a url")),
        ([1, {"a": None}], dg.MetadataValue.json([1, {"a": None}])),
        ({"a": [1.5]}, dg.MetadataValue.json({"a": [1.5]})),
        ({"a": math.inf}, dg.MetadataValue.text("{'a': inf}")),
    ],
)
def test_metadata_value(value, expected) -> None:
    assert metadata_value(value) == expected


def test_status_metadata_flattens_outputs_and_bounds_them() -> None:
    t0 = datetime(2026, 11, 25, tzinfo=timezone.utc)
    status = RunStatus(
        RunRef("lume", "run_1"),
        RunState.PARTIAL,
        "PARTIAL_FAILED",
        url="https://lume.example/runs/run_1",
        message="5 of 100 rows rejected",
        outputs={"metadata": {"results": {"input_rows": 100, "files": ["a"]}}, "empty": {}},
        created_at=t0,
        ended_at=t0 + timedelta(seconds=90),
    )
    metadata = status_metadata(status)
    assert metadata["run_url"] == dg.MetadataValue.url("https://lume.example/runs/run_1")
    assert metadata["duration_seconds"] == dg.MetadataValue.float(90.0)
    assert metadata["output/metadata.results.input_rows"] == dg.MetadataValue.int(100)
    assert metadata["output/metadata.results.files"] == dg.MetadataValue.json(["a"])
    assert metadata["output/empty"] == dg.MetadataValue.json({})
    many = RunStatus(
        RunRef("rest", "x"), "SUCCEEDED", "ok", outputs={str(i): i for i in range(250)}
    )
    metadata = status_metadata(many, observed_seconds=2.5)
    assert sum(k.startswith("output/") for k in metadata) == 200
    assert metadata["outputs_omitted"] == dg.MetadataValue.int(50)
    assert metadata["duration_seconds"] == dg.MetadataValue.float(2.5)


def test_sensor_cursor_round_trips_and_rejects_foreign_cursors() -> None:
    cursor = SensorCursor(done=["rest:a"], active=["rest:b"], started=True)
    assert SensorCursor.load(cursor.dumps()) == cursor
    assert SensorCursor.load(None) == SensorCursor()
    for bad in ("not json", '{"v": 99}', "[1]"):
        with pytest.raises(ConfigError, match="cursor"):
            SensorCursor.load(bad)


def test_factories_name_things_and_show_their_defaults_in_the_launchpad() -> None:
    asset = external_run_asset(key=["ml", "model"], params={"a": 1})
    assert asset.key == dg.AssetKey(["ml", "model"])
    for bad in ({}, {"name": "a", "key": "b"}):
        with pytest.raises(ConfigError, match="name or key"):
            external_run_asset(**bad)
    op = external_run_op("train", wait_timeout=600, success=["succeeded", "partial"], after=["x"])
    fields = op.config_field.config_type.fields
    assert fields["wait_timeout"].default_value == 600
    assert fields["success"].default_value == ["PARTIAL", "SUCCEEDED"]
    assert fields["cancel_on_kill"].default_value is True
    assert "cancel_on_termination" not in fields
    assert not any(field.is_required for field in fields.values())
    assert set(op.ins) == {"x"}
