"""The three Airflow columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/matrix.py: ``quick`` rows by
default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``). The cells run concurrently in the session's
:class:`~tests.deploy.airflow.cells.CellRunner`; each test waits for its own and asserts that
it matched the row (``matrix.check``), that the token showed in no task log or XCom, and the
row's own checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy import matrix
from tests.deploy.airflow.cells import Cell, CellRunner

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""

SENSOR_NOT_APPLICABLE = {
    "run_timeout": "RunSensor has no run_timeout: it never cancels the run it watches",
    "no_cancel_on_kill": "RunSensor has no cancel_on_kill: it never cancels the run it watches",
    "crash_before_record": "RunSensor launches nothing, so nothing can crash between launch "
    "and record",
}
"""Rows tests/deploy/matrix.py applies to ``airflow-sensor`` that the sensor cannot express
(reported to the matrix's owner); their cells are skipped, and recorded as such."""


def _cells() -> Iterator[Any]:
    for column in matrix.AIRFLOW:
        for row in matrix.rows_for(column):
            for platform in matrix.platforms():
                if not matrix.applies(row, column, platform):
                    continue
                # the first test waits for the deployment too; the triggerer rows for every
                # other cell
                marks = [pytest.mark.matrix_cell(column, row.id), pytest.mark.timeout(1200)]
                if column == "airflow-sensor" and row.id in SENSOR_NOT_APPLICABLE:
                    marks.append(pytest.mark.skip(reason=SENSOR_NOT_APPLICABLE[row.id]))
                reason = KNOWN_DEFECTS.get((column, row.id))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                yield pytest.param(
                    column, row, platform, id=f"{column}-{row.id}-{platform}", marks=marks
                )


@pytest.mark.parametrize(("column", "row", "platform"), list(_cells()))
def test_cell(column: str, row: matrix.Row, platform: str, airflow_cells: CellRunner) -> None:
    result = airflow_cells.result(Cell(column, row, platform))
    assert result.crashed is None, f"{result.describe()}\ncould not run: {result.crashed}"
    assert not result.problems, f"{result.describe()}\n" + "\n".join(
        f"- {p}" for p in result.problems
    )
