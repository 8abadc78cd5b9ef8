"""``RunSensor`` logs a run's state once, then only its changes, plus a periodic progress line,
also in reschedule mode, where every poke is a new task execution (a new operator instance).

Pokes are driven as Airflow's task runner would drive a rescheduled sensor: a new ``RunSensor``
per poke, one ``task_state_store`` for the try (a dict standing in for Airflow 3.3's store, as
in ``test_operator_unit.py``), against the REST emulator. One ``dag.test()`` run checks the
same with Airflow itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import structlog.testing

from runbridge.airflow_provider import RunSensor
from runbridge.airflow_provider.sensors import SEEN_KEY, _duration
from runbridge.testing import Emulator, Script

from .test_operator_unit import Store, TaskInstance


def context(store: Store, try_number: int = 1) -> dict[str, Any]:
    ti = TaskInstance(
        dag_id="d", task_id="sense", run_id="r1", try_number=try_number, xcoms={}, pushes=[]
    )
    return {"ti": ti, "task_state_store": store}


def poke_rescheduled(run_id: str, store: Store, try_number: int = 1, **kwargs: Any) -> list[str]:
    """One rescheduled poke: a fresh sensor instance, as Airflow makes for each reschedule.
    Returns the lines it logged."""
    sensor = RunSensor(
        task_id="sense", runbridge_conn_id="rb_rest", run=run_id, mode="reschedule", **kwargs
    )
    with structlog.testing.capture_logs() as logs:
        sensor.poke(context(store, try_number))  # type: ignore[arg-type]
    if sensor._client is not None:
        sensor._client.close()
    return [str(entry["event"]) for entry in logs if entry.get("log_level") == "info"]


def test_reschedule_logs_a_state_once_then_only_changes(rest: Emulator) -> None:
    started = time.monotonic()
    run = rest.add_run(Script([("queued", 3.0), ("running", 60.0)]), job="elsewhere")
    store = Store()
    lines = [poke_rescheduled(run.id, store) for _ in range(3)]
    # the first poke logs the state; the next ones (same state) log nothing
    assert len(lines[0]) == 1 and "PENDING (queued)" in lines[0][0]
    assert lines[1] == [] and lines[2] == []
    assert store[SEEN_KEY]["raw_state"] == "queued" and store[SEEN_KEY]["try"] == 1
    time.sleep(max(0.0, started + 3.2 - time.monotonic()))  # the emulated run is running now
    changed = poke_rescheduled(run.id, store)
    assert len(changed) == 1 and "RUNNING (running)" in changed[0]
    assert poke_rescheduled(run.id, store) == []
    # a new try logs afresh
    again = poke_rescheduled(run.id, store, try_number=2)
    assert len(again) == 1 and "RUNNING (running)" in again[0]


def test_a_progress_line_while_the_state_does_not_change(
    rest: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = rest.add_run(Script([("running", 60.0)]), job="elsewhere")
    store = Store()
    monkeypatch.setattr(RunSensor, "progress_interval", 0.3)
    assert len(poke_rescheduled(run.id, store)) == 1
    assert poke_rescheduled(run.id, store) == []
    time.sleep(0.4)
    (line,) = poke_rescheduled(run.id, store)
    assert line.startswith("Still waiting: rest run") and "unchanged for 0s" in line
    assert poke_rescheduled(run.id, store) == []  # the progress line restarted the interval


def test_poke_mode_logs_once_per_state_too(rest: Emulator) -> None:
    """Poke mode: one instance pokes again and again (and needs no store)."""
    run = rest.add_run(Script([("running", 60.0)]), job="elsewhere")
    sensor = RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run=run.id)
    ctx = {"ti": TaskInstance(try_number=1, xcoms={}, pushes=[])}
    with structlog.testing.capture_logs() as logs:
        for _ in range(4):
            sensor.poke(ctx)  # type: ignore[arg-type]
    assert sensor._client is not None
    sensor._client.close()
    info = [e["event"] for e in logs if e.get("log_level") == "info"]
    assert len(info) == 1 and "RUNNING (running)" in str(info[0])


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.4, "0s"), (45, "45s"), (750, "12m 30s"), (3900, "1h 5m")]
)
def test_durations_read_well(seconds: float, text: str) -> None:
    assert _duration(seconds) == text


def test_a_rescheduled_sensor_under_airflow_logs_each_state_once(
    rest: Emulator, capfd: pytest.CaptureFixture[str]
) -> None:
    """The same with Airflow's own reschedule loop (``dag.test()``), its task_state_store and
    its task log (which ``dag.test()`` prints): many pokes, one line per state. The run is
    stopped from the side (a user's cancel) once the sensor has poked five times."""
    from .test_dags import run_dag, ti_of

    run = rest.add_run(Script([("running", 600.0)], final="succeeded"), job="x")
    path = f"/runs/{run.id}"
    done = threading.Event()

    def stop_after_five_pokes() -> None:
        while not done.wait(0.1):
            if len(rest.requests_to("GET", path)) >= 5:
                rest.cancel_as_user(run.id)
                return

    stopper = threading.Thread(target=stop_after_five_pokes, daemon=True)
    stopper.start()
    try:
        dr = run_dag(
            "sensor_reschedule_log",
            f"""
            RunSensor(task_id="sense", runbridge_conn_id="rb_rest", run={run.id!r},
                      poke_interval=0.2, timeout=120, mode="reschedule",
                      success=["SUCCEEDED", "CANCELLED"])
            """,
        )
    finally:
        done.set()
        stopper.join(timeout=5)
    assert ti_of(dr, "sense").state == "success"
    pokes = len(rest.requests_to("GET", path))
    out = capfd.readouterr().out
    states = [line for line in out.splitlines() if f"] rest run {run.id}: " in line]
    assert pokes >= 5, (pokes, states)
    assert ["RUNNING (running)" in line for line in states] == [True, False], states
    assert "CANCELLED" in states[1]
