"""The Dagster matrix's emulator pool (tests/deploy/dagster/cells.py): an emulator whose cell
did not pass is never handed to another cell, since a Dagster run of that cell may still
launch on it (the daemon's late retry of a crashed run took the next cell's script and showed
in its record). Real ``runbridge emulate`` processes; no Dagster deployment is started: the
cell below fails before it reaches one, which is the case under test."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tests.deploy import matrix
from tests.deploy.dagster.cells import CellRunner, EmulatorPool
from tests.deploy.dagster.deployment import DagsterDeployment


@pytest.fixture
def pool() -> Iterator[EmulatorPool]:
    emulators = EmulatorPool({"rest": 1}, "pool-test-" + secrets.token_hex(8))
    try:
        yield emulators
    finally:
        emulators.stop()


def test_a_retired_emulator_is_stopped_and_replaced(pool: EmulatorPool) -> None:
    first = pool.take("rest")
    pool.retire(first)
    assert first.process.poll() is not None, "the retired emulator still runs"
    second = pool.take("rest")
    assert second.url != first.url
    assert second.control.record()["launches"] == 0  # a live emulator of its own
    assert pool.retired == 1
    pool.give(second)
    assert pool.take("rest") is second  # a cell that passed gives its emulator back as it is


class _Unreachable:
    """Stands for a deployment that refuses every submit (the web server is gone)."""

    def submit(self, *args: Any, **kwargs: Any) -> str:
        raise ConnectionError("the Dagster web server is gone")


def test_a_cell_that_could_not_run_does_not_give_its_emulator_back(pool: EmulatorPool) -> None:
    runner = CellRunner(cast(DagsterDeployment, _Unreachable()), pool, concurrency=1)
    try:
        held = pool.take("rest")
        url = held.url
        pool.give(held)
        result = runner.result(matrix.Cell("dagster-op", matrix.row("success"), "rest"))
    finally:
        runner.close()
    assert result.crashed is not None
    first_line = result.crashed.splitlines()[0]
    assert first_line.startswith("ConnectionError: the Dagster web server is gone (at ")
    assert "run_cell" in first_line  # which call of the cell failed, not only httpx's frames
    after = pool.take("rest")
    assert after.url != url, "the crashed cell's emulator went to the next cell"
    assert pool.retired == 1
