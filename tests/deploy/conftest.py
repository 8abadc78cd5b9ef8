"""The matrix's emulators: one ``runbridge emulate`` process per platform for the session.

* ``emulator_server`` (session, parametrized over :func:`matrix.platforms`): an
  :class:`EmulatorServer` with ``url``, ``token``, ``platform``, ``options`` (provider options
  for a client or a connection), ``params`` (a launch for a cell) and ``control`` (an
  :class:`~runbridge.testing.EmulatorControl`). The process is started on first use, with
  ``python -m runbridge emulate --platform P --port 0 --token T --quiet`` (it prints its URL),
  and killed at the end of the session.
* ``control`` (function): the server's control, reset before the test.
* one terminal summary of the deployment folders' sessions (tests/deploy/runner.py).
* a report hook: a test marked ``@pytest.mark.matrix_cell(column)`` (the row taken from its
  ``row`` parameter) or ``matrix_cell(column, row_id)`` records its outcome with
  :func:`matrix.record` (``pass``/``fail``/``skip``).

Imports no orchestrator: each column folder's own conftest sets its orchestrator's home.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from runbridge.testing import EmulatorControl
from tests.deploy import matrix, runner
from tests.deploy.processes import spawn

URL_LINE = re.compile(r"emulator listening on (http://\S+)")
START_TIMEOUT = 30.0


@dataclasses.dataclass
class EmulatorServer:
    """A ``runbridge emulate`` process of one platform."""

    platform: str
    url: str
    token: str = dataclasses.field(repr=False)
    options: dict[str, Any]
    params: dict[str, Any]
    control: EmulatorControl
    process: subprocess.Popen[bytes] = dataclasses.field(repr=False)
    log: Path = dataclasses.field(repr=False)

    def output(self) -> str:
        """What the process printed (its URL line, errors)."""
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.control.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_emulator(platform: str, directory: Path, *extra: str) -> EmulatorServer:
    """Start ``runbridge emulate`` for ``platform`` and wait for its URL line (killed on any
    failure to start, and when the pytest process dies: tests/deploy/processes.py)."""
    token = "matrix-" + secrets.token_hex(12)
    # a name of its own: emulators started at once in one directory must not read each
    # other's URL line (and token)
    log = directory / f"emulate-{platform}-{secrets.token_hex(4)}.log"
    command = [sys.executable, "-m", "runbridge", "emulate", "--platform", platform]
    command += ["--port", "0", "--token", token, "--quiet", *extra]
    process = spawn(command, log, append=False)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            match = URL_LINE.search(log.read_text(errors="replace"))
            if match:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"runbridge emulate --platform {platform} did not start "
                    f"(exit {process.poll()}): {log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.05)
        settings = matrix.platform_settings(platform)
        return EmulatorServer(
            platform,
            match.group(1),
            token,
            settings["options"],
            settings["params"],
            EmulatorControl(match.group(1)),
            process,
            log,
        )
    except BaseException:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        raise


class _Emulators:
    """The session's emulator processes, started on first use, all stopped at the end."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="runbridge-matrix-emulators-"))
        self.servers: dict[str, EmulatorServer] = {}

    def get(self, platform: str) -> EmulatorServer:
        server = self.servers.get(platform)
        if server is None or server.process.poll() is not None:
            server = self.servers[platform] = start_emulator(platform, self.directory)
        return server

    def stop(self) -> None:
        for server in self.servers.values():
            try:
                server.stop()
            except OSError:
                pass


@pytest.fixture(scope="session")
def _matrix_emulators() -> Iterator[_Emulators]:
    emulators = _Emulators()
    try:
        yield emulators
    finally:
        emulators.stop()


@pytest.fixture(scope="session", params=matrix.platforms())
def emulator_server(
    request: pytest.FixtureRequest, _matrix_emulators: _Emulators
) -> EmulatorServer:
    """The ``runbridge emulate`` process of this parameter's platform (one per session)."""
    return _matrix_emulators.get(str(request.param))


@pytest.fixture
def control(emulator_server: EmulatorServer) -> EmulatorControl:
    """The emulator's control API, reset for this test (runs, scripts, faults, requests)."""
    emulator_server.control.reset()
    return emulator_server.control


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in runner.summary_lines(runner.SESSIONS):
        terminalreporter.write_line(line)


# -- recording cells --------------------------------------------------------------------------
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "matrix_cell(column, row=None): a cell of the reliability matrix (tests/deploy/matrix.py)",
    )


def _cell(item: pytest.Item) -> tuple[str, str, str] | None:
    marker = item.get_closest_marker("matrix_cell")
    if marker is None or not marker.args:
        return None
    column = str(marker.args[0])
    params: dict[str, Any] = getattr(getattr(item, "callspec", None), "params", {})
    row: Any = marker.args[1] if len(marker.args) > 1 else marker.kwargs.get("row")
    if row is None:
        row = params.get("row")
    row_id = row.id if isinstance(row, matrix.Row) else str(row)
    platform = params.get("emulator_server") or params.get("platform") or "?"
    return column, row_id, str(platform)


def _detail(report: pytest.TestReport) -> str:
    """Why a cell failed or was skipped: pytest's one-line reason first, then the end of the
    report (a timeout's thread dump ends it: the reason is what matters)."""
    crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "")
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[-1])
    text = str(report.longrepr or "")
    return f"{crash}\n...\n{text[-1200:]}" if crash else text[-2000:]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    cell = _cell(item)
    if cell is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        state = "pass" if report.passed else "skip" if report.skipped else "fail"
        detail = "" if report.passed else _detail(report)
        matrix.record(cell[0], cell[1], cell[2], state, detail)  # type: ignore[arg-type]
    elif report.when == "teardown" and report.failed:
        matrix.record(cell[0], cell[1], cell[2], "fail", f"teardown: {report.longrepr}"[-2000:])
