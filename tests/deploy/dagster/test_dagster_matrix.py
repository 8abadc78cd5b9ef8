"""The two Dagster columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/runner.py's ``cell_params``:
``quick`` rows by default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``): ``dagster-op`` (a job with the runbridge op and resource) and
``dagster-asset`` (an asset job). The cells run concurrently in the session's
:class:`~tests.deploy.dagster.cells.CellRunner`; each test waits for its own and asserts that it
matched the row (``matrix.check``) and that the token showed in no Dagster event.
"""

from __future__ import annotations

import pytest

from tests.deploy import matrix, runner
from tests.deploy.dagster.cells import REEXECUTED, Cell

TIMEOUT = 1200
"""pytest-timeout per test: the first one waits for the deployment to start and for its cell,
which runs beside all the others (a busy machine made that more than the default 300 s)."""

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""


@pytest.mark.parametrize(
    ("column", "row", "platform"),
    runner.cell_params(
        matrix.DAGSTER, timeout=TIMEOUT, known_defects=KNOWN_DEFECTS, rows_first=True
    ),
)
def test_cell(column: str, row: matrix.Row, platform: str, dagster_cells: runner.Session) -> None:
    dagster_cells.check(Cell(column, row, platform))


REEXECUTION = matrix.Row(
    REEXECUTED,
    "the run worker is SIGKILLed after the launch, no retry is configured; the user re-executes "
    "the failed Dagster run from failure: the new run re-attaches (one launch)",
    "success",
    1,
    0,
    False,
    matrix.DAGSTER,
    scripts=({"steps": [["queued", 0.2], ["running", 8.0]], "final": "success"},),
    expect_run="finished",
)
"""Not a row of the shared matrix (its ``flow_restart`` is Prefect's): Dagster's own
re-execution, through GraphQL's ``launchRunReexecution`` as the UI's button does."""


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.skipif(not matrix.full(), reason="RUNBRIDGE_MATRIX=full only (a crash, then a run)")
@pytest.mark.parametrize("platform", matrix.platforms())
@pytest.mark.parametrize("column", matrix.DAGSTER)
@pytest.mark.parametrize("row", [REEXECUTION], ids=[REEXECUTED])
def test_reexecution_from_failure_reattaches(
    column: str, row: matrix.Row, platform: str, dagster_cells: runner.Session
) -> None:
    dagster_cells.check(Cell(column, row, platform))
