"""The two Prefect columns of the reliability matrix (issue 14), in a real deployment.

One test per (column, row, platform) that applies (tests/deploy/matrix.py: ``quick`` rows by
default, every row with ``RUNBRIDGE_MATRIX=full``; platforms from
``RUNBRIDGE_MATRIX_PLATFORMS``). The cells run concurrently in the session's
:class:`~tests.deploy.prefect.cells.CellRunner`; each test waits for its own and asserts that it
matched the row (``matrix.check``), that the token showed in no log or parameter of its flow
run, and the row's own checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.deploy import matrix
from tests.deploy.prefect.cells import Cell, CellRunner

KNOWN_DEFECTS: dict[tuple[str, str], str] = {}
"""(column, row) -> reason: cells that fail for a known, reported defect (strict xfail)."""


def _cells() -> Iterator[Any]:
    for column in matrix.PREFECT:
        for row in matrix.rows_for(column):
            for platform in matrix.platforms():
                if not matrix.applies(row, column, platform):
                    continue
                # the first cell's test also waits for the deployment and every cell to start
                marks = [pytest.mark.matrix_cell(column, row.id), pytest.mark.timeout(1800)]
                reason = KNOWN_DEFECTS.get((column, row.id))
                if reason:
                    marks.append(pytest.mark.xfail(strict=True, reason=reason))
                yield pytest.param(
                    column, row, platform, id=f"{column}-{row.id}-{platform}", marks=marks
                )


@pytest.mark.parametrize(("column", "row", "platform"), list(_cells()))
def test_cell(column: str, row: matrix.Row, platform: str, prefect_cells: CellRunner) -> None:
    result = prefect_cells.result(Cell(column, row, platform))
    assert result.crashed is None, f"{result.describe()}\ncould not run: {result.crashed}"
    assert not result.problems, f"{result.describe()}\n" + "\n".join(
        f"- {p}" for p in result.problems
    )
