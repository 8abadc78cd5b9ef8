"""The example DAG of examples/airflow runs as its README says (against the emulator)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runbridge.testing import Emulator, Relay

from .conftest import DAGS, load_dag

EXAMPLE = Path(__file__).parents[2] / "examples" / "airflow" / "dags" / "runbridge_example.py"


def test_the_example_dag_runs(
    langgraph: Emulator, relays: dict[str, Relay], monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = {
        "conn_type": "runbridge",
        "host": relays["langgraph"].base_url,
        "password": langgraph.token,
        "extra": {"platform": "langgraph"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_RUNBRIDGE_DEFAULT", json.dumps(connection))
    path = Path(shutil.copy(EXAMPLE, DAGS / EXAMPLE.name))
    dag_run = load_dag(path, "runbridge_example").test()
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert states == dict.fromkeys(["ask", "kick_off", "watch", "report"], "success")
    assert len(langgraph.launches) == 2
    (asked,) = [body for body in langgraph.launches if "question" in body["input"]]
    assert asked["input"]["question"] == "What is runbridge?"
