"""The three Airflow columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/runner.py's ``cell_params``:
``quick`` rows by default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``). The cells run concurrently in the session's
:class:`~tests.deploy.airflow.cells.CellRunner`; each test waits for its own and asserts that
it matched the row (``matrix.check``), that the token showed in no task log or XCom, and the
row's own checks. The rows the sensor cannot express are ``n/a`` in matrix.py
(``NOT_APPLICABLE``): no test.
"""

from __future__ import annotations

import pytest

from tests.deploy import matrix, runner
from tests.deploy.matrix import Cell

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""


@pytest.mark.parametrize(
    ("column", "row", "platform"),
    runner.cell_params(
        matrix.AIRFLOW,
        timeout=1200,  # the first test waits for the deployment too; the triggerer rows for all
        known_defects=KNOWN_DEFECTS,
    ),
)
def test_cell(column: str, row: matrix.Row, platform: str, airflow_cells: runner.Session) -> None:
    airflow_cells.check(Cell(column, row, platform))
