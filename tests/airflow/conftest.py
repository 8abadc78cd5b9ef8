"""Airflow in a throwaway home: set up before Airflow is imported, migrated once per session.

Importing this conftest (pytest does so before it imports the test modules of this folder)
points ``AIRFLOW_HOME``, the dags folder and a SQLite database at a temporary directory, so
nothing is written to the real ``$HOME``; the ``airflow_db`` fixture migrates the database once.
Tests write DAG files into :data:`DAGS` and run them with ``dag.test()`` (which needs the DAG in
the configured dags folder) against emulators served behind two session-wide relays; the
connections ``rb_rest`` and ``rb_langgraph`` are ``AIRFLOW_CONN_...`` environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if "airflow" in sys.modules and not os.environ.get("AIRFLOW_HOME", "").startswith(
    tempfile.gettempdir()
):
    raise RuntimeError(
        "airflow was imported before tests/airflow/conftest.py could point it at a temporary "
        "home; run these tests in their own pytest process or import airflow later"
    )

ROOT = Path(tempfile.mkdtemp(prefix="runbridge-airflow-tests-"))
HOME = ROOT / "home"
DAGS = ROOT / "dags"
HOME.mkdir()
DAGS.mkdir()
os.environ.update(
    {
        "AIRFLOW_HOME": str(HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # retries in tests happen at once
        "AIRFLOW__CORE__DEFAULT_TASK_RETRY_DELAY": "0",
    }
)

from runbridge.testing import Emulator, Relay, create_emulator, serve_relay  # noqa: E402
from runbridge.testing.rest import REST_CONFIG  # noqa: E402

TOKEN = "rb-s3cret-token-42"
"""The emulators' token: it must never show in logs, XComs or trigger kwargs."""


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Iterator[Path]:
    """The temporary home with its database migrated (once per session)."""
    from airflow.utils.db import initdb

    initdb()
    yield HOME
    shutil.rmtree(ROOT, ignore_errors=True)


def _connection(relay: Relay, platform: str, options: dict[str, Any]) -> str:
    return json.dumps(
        {
            "conn_type": "runbridge",
            "host": relay.base_url,
            "password": TOKEN,
            "extra": {
                "platform": platform,
                "options": options,
                "request_timeout": 5,
                "retry": {"attempts": 3, "first": 0.05, "cap": 0.2, "total": 5},
            },
        }
    )


@pytest.fixture(scope="session")
def relays() -> Iterator[dict[str, Relay]]:
    """One relay per platform for the session, each behind its ``AIRFLOW_CONN_`` connection."""
    with serve_relay() as rest, serve_relay() as langgraph:
        os.environ["AIRFLOW_CONN_RB_REST"] = _connection(rest, "rest", REST_CONFIG)
        os.environ["AIRFLOW_CONN_RB_LANGGRAPH"] = _connection(langgraph, "langgraph", {})
        yield {"rest": rest, "langgraph": langgraph}


@pytest.fixture
def rest(relays: dict[str, Relay]) -> Iterator[Emulator]:
    """A fresh REST emulator behind the ``rb_rest`` connection."""
    yield relays["rest"].swap(create_emulator("rest", token=TOKEN))
    relays["rest"].target = None


@pytest.fixture
def langgraph(relays: dict[str, Relay]) -> Iterator[Emulator]:
    """A fresh LangGraph emulator behind the ``rb_langgraph`` connection."""
    yield relays["langgraph"].swap(create_emulator("langgraph", token=TOKEN))
    relays["langgraph"].target = None


def write_dag(name: str, body: str) -> Path:
    """Write a DAG file into the dags folder (the body is dedented)."""
    path = DAGS / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return path


def load_dag(path: Path, dag_id: str) -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)
