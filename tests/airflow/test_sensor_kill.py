"""``RunSensor.on_kill``: Airflow's SIGTERM handler only calls ``on_kill`` and returns, so a
poking sensor kept poking until its timeout (found by the real deployment's ``user_kill`` cell).
Now the next poke ends the try, and the run, which the sensor did not launch, keeps going."""

from __future__ import annotations

import threading

import pytest
from airflow.sdk.exceptions import AirflowException

from runbridge.airflow_provider import RunSensor
from runbridge.testing import Emulator, Script

from .test_operator_unit import Store
from .test_sensor_logging import context


def test_the_poke_after_a_kill_ends_the_try_and_leaves_the_run(rest: Emulator) -> None:
    run = rest.add_run(Script([("running", 60.0)]), job="elsewhere")
    sensor = RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run=run.id)
    ctx = context(Store())
    try:
        assert sensor.poke(ctx) is False  # type: ignore[arg-type]
        sensor.on_kill()
        with pytest.raises(
            AirflowException, match=rf"Stopped waiting for rest:{run.id}.*keeps going"
        ):
            sensor.poke(ctx)  # type: ignore[arg-type]
    finally:
        if sensor._client is not None:
            sensor._client.close()
    assert not rest.requests_to("POST", "cancel")
    assert run.cancelled is None


def test_a_sensor_killed_before_its_first_poke_names_its_target() -> None:
    sensor = RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run="run-42")
    sensor.on_kill()
    with pytest.raises(AirflowException, match="Stopped waiting for run-42"):
        sensor.poke(context(Store()))  # type: ignore[arg-type]
    assert sensor._client is None  # nothing was asked of the platform


def test_on_kill_logs_nothing_in_the_signal_handler() -> None:
    """Airflow calls on_kill from the SIGTERM handler, in the thread it interrupted (maybe in a
    log write, holding its lock): a line logged there could wait forever."""
    from .test_operator_unit import _HeldLock, _Watched

    sensor = RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run="run-42")
    handler = _HeldLock()
    sensor._cached_logger = _Watched(sensor.log, handler)  # type: ignore[assignment]
    handler.held_by = threading.get_ident()
    sensor.on_kill()
    handler.held_by = None
    assert handler.would_deadlock == []
