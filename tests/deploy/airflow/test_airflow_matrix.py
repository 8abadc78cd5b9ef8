"""The three Airflow columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/runner.py's ``cell_params``:
``quick`` rows by default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``). The cells run concurrently in the session's
:class:`~tests.deploy.airflow.cells.CellRunner`; each test waits for its own and asserts that
it matched the row (``matrix.check``), that the token showed in no task log or XCom, and the
row's own checks.
"""

from __future__ import annotations

import pytest

from tests.deploy import matrix, runner
from tests.deploy.matrix import Cell

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""

SENSOR_NOT_APPLICABLE = {
    "run_timeout": "RunSensor has no run_timeout: it never cancels the run it watches",
    "no_cancel_on_kill": "RunSensor has no cancel_on_kill: it never cancels the run it watches",
    "crash_before_record": "RunSensor launches nothing, so nothing can crash between launch "
    "and record",
    "clear": "RunSensor launches nothing: its new try after a clear waits for the same run "
    "again, so neither the row's second launch nor its cancel can happen",
}
"""Rows tests/deploy/matrix.py applies to ``airflow-sensor`` that the sensor cannot express
(reported to the matrix's owner); their cells are skipped, and recorded as such."""


@pytest.mark.parametrize(
    ("column", "row", "platform"),
    runner.cell_params(
        matrix.AIRFLOW,
        timeout=1200,  # the first test waits for the deployment too; the triggerer rows for all
        skip={("airflow-sensor", r): why for r, why in SENSOR_NOT_APPLICABLE.items()},
        known_defects=KNOWN_DEFECTS,
    ),
)
def test_cell(column: str, row: matrix.Row, platform: str, airflow_cells: runner.Session) -> None:
    airflow_cells.check(Cell(column, row, platform))
