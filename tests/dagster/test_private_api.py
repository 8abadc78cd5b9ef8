"""The Dagster names runbridge uses outside Dagster's public API (runbridge/dagster_resources/
_compat.py), pinned against the installed Dagster: each exists with the signature runbridge
calls, and a record written by a real step (plain op, op in a graph, mapped op, asset) is read
back from the run's event log under that step's key. Run it on every Dagster release the
``dagster`` extra accepts before claiming it (docs/dagster.md says which passed)."""

import inspect

import dagster as dg

from runbridge.core import LaunchRecord, RunRef
from runbridge.core.planner import LAUNCHED
from runbridge.dagster_resources import _compat
from runbridge.dagster_resources._step import read_record, record_metadata


def test_the_private_names_exist_with_the_signatures_used() -> None:
    from dagster._core.events import EngineEventData

    assert list(inspect.signature(EngineEventData).parameters)[:1] == ["metadata"]
    assert list(inspect.signature(dg.DagsterEvent.engine_event).parameters)[:3] == [
        "plan_context",
        "message",
        "event_specific_data",
    ]
    assert callable(dg.OpExecutionContext.get_step_execution_context)
    assert "of_type" in inspect.signature(dg.DagsterInstance.all_logs).parameters
    assert isinstance(dg.DagsterEvent.engine_event_data, property)


def _record(step: str) -> LaunchRecord:
    return LaunchRecord(f"dagster:run:{step}", RunRef("rest", f"id-{step}"), LAUNCHED)


def _write(context: dg.OpExecutionContext) -> str:
    key = _compat.step_key(context)
    _compat.write_engine_event(context, f"record {key}", record_metadata(_record(key)))
    return key


def _read(instance: dg.DagsterInstance, run_id: str) -> dict[str, LaunchRecord]:
    found: dict[str, LaunchRecord] = {}
    for entry in _compat.step_log(instance, run_id, {dg.DagsterEventType.ENGINE_EVENT}):
        assert entry.dagster_event is not None
        record = read_record(_compat.engine_event_metadata(entry.dagster_event))
        if record is not None:
            assert entry.step_key is not None
            found[entry.step_key] = record
    return found


@dg.op
def plain(context: dg.OpExecutionContext) -> str:
    return _write(context)


@dg.op
def inner(context: dg.OpExecutionContext) -> str:
    return _write(context)


@dg.graph
def nested() -> str:
    return inner()


@dg.op(out=dg.DynamicOut(str))
def fan_out() -> object:
    for name in ("a", "b"):
        yield dg.DynamicOutput(name, mapping_key=name)


@dg.op
def mapped(context: dg.OpExecutionContext, name: str) -> str:
    return _write(context)


@dg.job
def records_job() -> None:
    plain()
    nested()
    fan_out().map(mapped)


@dg.asset
def recorded(context: dg.AssetExecutionContext) -> None:
    _write(context.op_execution_context)


def test_records_of_real_steps_are_read_back_under_their_step_keys() -> None:
    with dg.instance_for_test() as instance:
        result = records_job.execute_in_process(instance=instance)
        assert result.success
        assert _read(instance, result.run_id) == {
            key: _record(key) for key in ("plain", "nested.inner", "mapped[a]", "mapped[b]")
        }
        materialized = dg.materialize([recorded], instance=instance)
        assert materialized.success
        assert _read(instance, materialized.run_id) == {"recorded": _record("recorded")}


def test_step_log_filters_by_type() -> None:
    kind = dg.DagsterEventType.STEP_SUCCESS
    with dg.instance_for_test() as instance:
        result = records_job.execute_in_process(instance=instance)
        entries = _compat.step_log(instance, result.run_id, {kind})
        assert entries and all(
            e.dagster_event is not None and e.dagster_event.event_type == kind for e in entries
        )
