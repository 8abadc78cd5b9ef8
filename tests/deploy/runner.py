"""What the three deployment folders (tests/deploy/airflow, prefect, dagster) share.

Each folder starts its deployment once per session and runs its cells concurrently in a
:class:`CellRunner` of its own (its cells.py); this module holds the rest:

* :func:`cell_params`: the one parametrization of a folder's ``test_cell`` over
  (column, row, platform), from tests/deploy/matrix.py (``rows_for``, ``applies``,
  ``platforms``), with the cell's ``matrix_cell`` mark, its timeout, and the folder's skips and
  known defects;
* :class:`Session`: what a folder's session fixture yields; :meth:`Session.check` waits for a
  cell's result and asserts it passed; the session's stages and cells are timed and printed in
  one terminal summary (tests/deploy/conftest.py);
* :func:`emulators_per_platform`: how many emulator processes each platform needs.

A folder's conftest::

    @pytest.fixture(scope="session")
    def airflow_cells(request):
        with runner.session("airflow", "RUNBRIDGE_AIRFLOW_KEEP") as session:
            ...                                      # start emulators and the deployment
            session.stage("deployment started")      # timed from the session's start
            session.runner = CellRunner(...)         # anything with result(cell) and close()
            yield session

and its test module::

    @pytest.mark.parametrize(("column", "row", "platform"), runner.cell_params(matrix.AIRFLOW))
    def test_cell(column, row, platform, airflow_cells):
        airflow_cells.check(Cell(column, row, platform))
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.deploy import matrix
from tests.deploy.matrix import Cell

__all__ = [
    "SESSIONS",
    "CellOutcome",
    "CellRunner",
    "Session",
    "cell_params",
    "emulators_per_platform",
    "session",
    "summary_lines",
]


class CellOutcome(Protocol):
    """What a folder's runner observed of one cell (``problems`` empty: it passed)."""

    @property
    def cell(self) -> Cell: ...

    @property
    def problems(self) -> list[str]: ...

    @property
    def crashed(self) -> str | None: ...

    @property
    def seconds(self) -> float: ...

    def describe(self) -> str: ...


class CellRunner(Protocol):
    """A folder's runner: it has started its cells; ``result`` waits for one."""

    def result(self, cell: Cell) -> CellOutcome: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class Session:
    """A deployment folder's session: its runner, and what it measured."""

    name: str
    began: float = dataclasses.field(default_factory=time.monotonic)
    runner: CellRunner | None = None
    stages: dict[str, float] = dataclasses.field(default_factory=dict)
    """Label -> seconds since the session began (or the seconds given)."""
    cells: list[tuple[str, float, bool]] = dataclasses.field(default_factory=list)
    total: float | None = None
    kept: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    """What the session started (emulators, the deployment, a database), stopped in reverse
    order at its end, after the runner is closed."""

    def stage(self, label: str, seconds: float | None = None) -> None:
        self.stages[label] = time.monotonic() - self.began if seconds is None else seconds

    def check(self, cell: Cell) -> CellOutcome:
        """Wait for ``cell``'s result and assert that it ran and matched its row."""
        if self.runner is None:
            raise RuntimeError(f"the {self.name} session has no runner (it did not start)")
        result = self.runner.result(cell)
        passed = result.crashed is None and not result.problems
        self.cells.append((cell.id, result.seconds, passed))
        assert result.crashed is None, f"{result.describe()}\ncould not run: {result.crashed}"
        assert not result.problems, f"{result.describe()}\n" + "\n".join(
            f"- {p}" for p in result.problems
        )
        return result


SESSIONS: list[Session] = []
"""Every session of this pytest process, for the terminal summary."""


@contextlib.contextmanager
def session(name: str, keep_env: str | None = None, root: Path | None = None) -> Iterator[Session]:
    """A :class:`Session`, timed. At the end its runner is closed, then what was pushed on its
    ``cleanup`` stack is stopped, then ``root`` (the deployment's directory) is deleted unless
    the ``keep_env`` variable is set."""
    current = Session(name)
    SESSIONS.append(current)
    try:
        yield current
    finally:
        try:
            if current.runner is not None:
                current.runner.close()
        finally:
            try:
                current.cleanup.close()
            finally:
                if root is not None:
                    if keep_env and os.environ.get(keep_env):
                        current.kept = root
                    else:
                        shutil.rmtree(root, ignore_errors=True)
                current.total = time.monotonic() - current.began


def summary_lines(sessions: Iterable[Session] = ()) -> list[str]:
    """The terminal summary: each session's stages, total and cells."""
    lines = []
    for s in sessions:
        stages = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in s.stages.items())
        total = f"session {s.total:.1f} s" if s.total is not None else "session not ended"
        lines.append(f"{s.name} matrix: {stages + '; ' if stages else ''}{total}")
        for cell_id, seconds, passed in s.cells:
            lines.append(f"  {cell_id}: {seconds:.1f} s {'pass' if passed else 'FAIL'}")
        lines += [f"  {note}" for note in s.notes]
        if s.kept is not None:
            lines.append(f"  kept: {s.kept}")
    return lines


def cell_params(
    columns: Iterable[str],
    *,
    timeout: float = 1200,
    skip: Mapping[tuple[str, str], str] | None = None,
    known_defects: Mapping[tuple[str, str], str] | None = None,
    rows_first: bool = False,
) -> list[Any]:
    """``pytest.param(column, row, platform)`` for every cell of ``columns`` that runs (the
    matrix's rows for the column, the session's platforms, where the row applies), each marked
    ``matrix_cell`` and ``timeout`` (the first test waits for the deployment too). ``skip``
    and ``known_defects`` map (column, row id) to a reason: a skip, a strict xfail.
    ``rows_first``: the rows' order outermost (else the columns'): the order the runner
    submits them in."""
    columns = list(columns)
    skip = skip or {}
    known_defects = known_defects or {}
    if rows_first:
        rows = {r.id: r for c in columns for r in matrix.rows_for(c)}
        order = [(c, r) for r in matrix.ROWS if r.id in rows for c in columns]
    else:
        order = [(c, r) for c in columns for r in matrix.rows_for(c)]
    params = []
    for column, row in order:
        if row not in matrix.rows_for(column):
            continue
        for platform in matrix.platforms():
            if not matrix.applies(row, column, platform):
                continue
            marks: list[Any] = [
                pytest.mark.matrix_cell(column, row.id),
                pytest.mark.timeout(timeout),
            ]
            if (column, row.id) in skip:
                marks.append(pytest.mark.skip(reason=skip[(column, row.id)]))
            if (column, row.id) in known_defects:
                marks.append(pytest.mark.xfail(strict=True, reason=known_defects[(column, row.id)]))
            params.append(
                pytest.param(column, row, platform, id=f"{column}-{row.id}-{platform}", marks=marks)
            )
    return params


def emulators_per_platform(
    cells: Iterable[Cell], *, at_most: int | None = None, leave_out: Iterable[str] = ()
) -> dict[str, int]:
    """Emulator processes per platform: one per cell of the platform (cells whose row is in
    ``leave_out`` run alone later and reuse one), at most ``at_most``; ``rest`` with one when
    no cell is selected."""
    left_out = set(leave_out)
    counts: dict[str, int] = {}
    for cell in cells:
        if cell.row.id not in left_out:
            counts[cell.platform] = counts.get(cell.platform, 0) + 1
        else:
            counts.setdefault(cell.platform, 1)
    if at_most is not None:
        counts = {p: max(1, min(at_most, n)) for p, n in counts.items()}
    return counts or {"rest": 1}
