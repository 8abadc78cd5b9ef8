"""Fixtures for the Dagster suite: a private DAGSTER_HOME, one emulator server per module, and
resources pointed at the emulator behind it.

Every test here runs the real Dagster (``materialize``, ``execute_in_process``, ``execute_job``,
``build_sensor_context``, a run launched through a code server and terminated) against the
emulators of :mod:`runbridge.testing` on loopback. Nothing is mocked.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runbridge.dagster_resources import ExternalRunResource
from runbridge.testing import Emulator, Relay, serve_relay
from runbridge.testing.rest import REST_CONFIG

FAST = {
    "poll_interval": 0.05,
    "poll_max_interval": 0.1,
    "poll_backoff": 1.0,
    "request_timeout": 5.0,
    "request_attempts": 3,
}
"""Resource fields that keep the suite quick: poll every 50-100 ms."""


@pytest.fixture(scope="session", autouse=True)
def dagster_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Dagster writes nothing under the real $HOME: DAGSTER_HOME is a temporary directory."""
    home = tmp_path_factory.mktemp("dagster_home")
    write_instance_config(home)
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("DAGSTER_HOME", None)
    else:
        os.environ["DAGSTER_HOME"] = previous


def write_instance_config(home: Path) -> None:
    """A dagster.yaml with telemetry off: Dagster's telemetry writes ~/.dagster/.telemetry
    whatever DAGSTER_HOME says, unless the instance disables it."""
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")


@pytest.fixture(scope="module")
def relay() -> Iterator[Relay]:
    with serve_relay() as relay:
        yield relay


def resource_for(emu: Emulator, **fields: Any) -> ExternalRunResource:
    """An ExternalRunResource for ``emu`` with fast polls; ``fields`` override."""
    options = dict(REST_CONFIG) if emu.platform == "rest" else {}
    values: dict[str, Any] = {
        "platform": emu.platform,
        "base_url": emu.base_url,
        "options": options,
        **FAST,
    }
    values.update(fields)
    return ExternalRunResource(**values)
