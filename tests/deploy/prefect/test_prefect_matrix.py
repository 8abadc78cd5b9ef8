"""The two Prefect columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/runner.py's ``cell_params``:
``quick`` rows by default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``). The cells run concurrently in the session's
:class:`~tests.deploy.prefect.cells.CellRunner`; each test waits for its own and asserts that it
matched the row (``matrix.check``), that the token showed in no log or parameter of its flow
run, and the row's own checks.
"""

from __future__ import annotations

import pytest

from tests.deploy import matrix, runner
from tests.deploy.matrix import Cell

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""


@pytest.mark.parametrize(
    ("column", "row", "platform"),
    # the first cell's test also waits for the deployment and every cell to start
    runner.cell_params(matrix.PREFECT, timeout=1800, known_defects=KNOWN_DEFECTS),
)
def test_cell(column: str, row: matrix.Row, platform: str, prefect_cells: runner.Session) -> None:
    prefect_cells.check(Cell(column, row, platform))
