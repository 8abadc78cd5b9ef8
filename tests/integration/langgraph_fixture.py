"""A real local LangGraph Agent Server (``langgraph dev``, in-memory) for integration tests.

Use it from a conftest.py::

    from tests.integration.langgraph_fixture import langgraph_server  # noqa: F401

and in a test::

    @pytest.mark.langgraph_server
    def test_something(langgraph_server: str) -> None:
        base_url = langgraph_server  # e.g. "http://127.0.0.1:40123"

The server runs from its own locked project, ``tests/langgraph_server`` (its own
uv.lock: langgraph-api 0.16 cannot be installed beside Airflow 3.3, and needs
Python >= 3.11). It serves one graph, ``"agent"`` (see tests/langgraph_server/graph.py):
input ``{"input": {"sleep": 2.0}}`` sleeps, ``{"input": {"fail": "msg"}}`` fails with
that message, anything else returns ``{"result": <input>}``.

The fixture skips only when no Python >= 3.11 can be found. Any other failure to
set up or start the server is a test error that carries the server's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_PROJECT = REPO_ROOT / "tests" / "langgraph_server"
GRAPH_ID = "agent"

STARTUP_TIMEOUT_S = float(os.environ.get("RUNBRIDGE_LANGGRAPH_STARTUP_TIMEOUT", "120"))
SYNC_TIMEOUT_S = 900.0

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The welcome banner prints "- 🚀 API: http://127.0.0.1:PORT"; if the requested port
# is taken, langgraph-api picks another one and the banner shows the one it uses.
_API_URL = re.compile(r"API:\s*(https?://[^\s/]+)")

# Settings for a server that never reaches the internet: no CLI analytics, no
# version check against PyPI, no LangSmith tracing, no license/metadata beacon
# (that loop runs only when a license or control-plane key is set, so those are
# removed), no OpenTelemetry exporter.
_OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "true",
    "LANGSMITH_TRACING": "false",
    "LANGSMITH_TRACING_V2": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGCHAIN_TRACING": "false",
    "OTEL_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    # On shutdown, do not wait up to 180 s for runs still going (e.g. a sleep).
    "BG_JOB_SHUTDOWN_GRACE_PERIOD_SECS": "2",
    "PYTHONUNBUFFERED": "1",
}
_REMOVED_ENV = (
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "LANGGRAPH_CLOUD_LICENSE_KEY",
    "LANGSMITH_CONTROL_PLANE_API_KEY",
    "LANGSMITH_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "REDIS_URI",
    "DATABASE_URI",
    "POSTGRES_URI",
    # The main project's venv must not leak into the server's own environment.
    "VIRTUAL_ENV",
    "UV_PROJECT_ENVIRONMENT",
    "PYTHONPATH",
    "PYTHONHOME",
)


def _python_version(exe: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None  # e.g. a pyenv shim for a version that is not enabled
    major, minor = out.stdout.split()
    return int(major), int(minor)


def find_python311() -> str | None:
    """A Python >= 3.11 interpreter for the server's environment, or None."""
    candidates: list[str] = []
    if override := os.environ.get("RUNBRIDGE_LANGGRAPH_PYTHON"):
        candidates.append(override)
    if sys.version_info >= (3, 11):
        # The base interpreter, not the project's venv wrapper.
        candidates.append(getattr(sys, "_base_executable", "") or sys.executable)
    for name in ("python3.11", "python3.12", "python3.13", "python3"):
        if found := shutil.which(name):
            candidates.append(found)
    for exe in candidates:
        if exe and (version := _python_version(exe)) and version >= (3, 11):
            return exe
    return None


def find_uv() -> str | None:
    for candidate in (
        os.environ.get("RUNBRIDGE_UV"),
        shutil.which("uv"),
        str(REPO_ROOT / ".dev" / "bootstrap" / "bin" / "uv"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REMOVED_ENV}
    env.update(_OFFLINE_ENV)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    return env


def _ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/ok", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, limit: int = 20_000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "<no log>"
    return _ANSI.sub("", text[-limit:])


def sync_server_env(uv: str, python: str) -> Path:
    """Install the server's locked environment; returns its ``bin`` directory."""
    cmd = [uv, "sync", "--locked", "--project", str(SERVER_PROJECT), "--python", python]
    proc = subprocess.run(
        cmd,
        env=_server_env(),
        capture_output=True,
        text=True,
        timeout=SYNC_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` failed with exit code {proc.returncode}:\n"
            f"{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return SERVER_PROJECT / ".venv" / "bin"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="session")
def langgraph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of a real ``langgraph dev`` server."""
    python = find_python311()
    if python is None:
        pytest.skip(
            "the LangGraph server (langgraph-api 0.16) needs Python >= 3.11 and none was "
            "found (looked at this interpreter, python3.11, python3.12, python3.13, python3; "
            "set RUNBRIDGE_LANGGRAPH_PYTHON to point at one)"
        )
    uv = find_uv()
    if uv is None:
        pytest.fail(
            "uv not found: run the tests through `python3 dev.py test` (it bootstraps uv "
            "and exports RUNBRIDGE_UV), or put uv on PATH",
            pytrace=False,
        )

    t0 = time.monotonic()
    bin_dir = sync_server_env(uv, python)
    t_synced = time.monotonic()

    # Run in a fresh directory: the in-memory runtime keeps its state in
    # ./.langgraph_api of its working directory, so every session starts empty.
    workdir = tmp_path_factory.mktemp("langgraph_server")
    config = workdir / "langgraph.json"
    config.write_text(
        json.dumps(
            {
                "dependencies": [str(SERVER_PROJECT)],
                "graphs": {GRAPH_ID: f"{SERVER_PROJECT / 'graph.py'}:graph"},
            }
        )
    )
    log_path = workdir / "server.log"
    cmd = [
        str(bin_dir / "langgraph"),
        "dev",
        "--no-browser",
        "--no-reload",
        "--host",
        "127.0.0.1",
        "--port",
        str(_free_port()),
        # `langgraph dev` runs one job at a time unless told otherwise.
        "--n-jobs-per-worker",
        "32",
        "--config",
        str(config),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=_server_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
        )
    try:
        base_url: str | None = None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"langgraph dev exited with code {proc.returncode} before serving.\n"
                    f"command: {' '.join(cmd)}\n--- server log ---\n{_tail(log_path)}",
                    pytrace=False,
                )
            if base_url is None:
                match = _API_URL.search(_ANSI.sub("", _tail(log_path, 200_000)))
                if match:
                    base_url = match.group(1)
            if base_url is not None and _ok(base_url):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"langgraph dev did not answer GET /ok within {STARTUP_TIMEOUT_S:.0f} s "
                    f"(url seen: {base_url}).\n--- server log ---\n{_tail(log_path)}",
                    pytrace=False,
                )
            time.sleep(0.1)
        t_ready = time.monotonic()
        sys.stderr.write(
            f"\n[langgraph_server] {base_url}: uv sync {t_synced - t0:.1f} s, "
            f"server start {t_ready - t_synced:.1f} s; log: {log_path}\n"
        )
        yield base_url
    finally:
        _stop(proc)
