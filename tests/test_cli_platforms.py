"""The ``runbridge`` command line against every platform's emulator on loopback.

For each platform: ``launch --json``, ``status --json``, ``wait`` (exit 0 for a run that
succeeds, 1 for one that fails, with the platform's message), ``cancel`` of a long run (or a
clean exit-2 "not supported" for Lume, which has no cancel), and ``runbridge emulate`` as a
real subprocess that answers HTTP and stops cleanly on SIGTERM. Scripts are sub-second and
polls fast (``--poll-first 0.05 --poll-cap 0.1``); nothing asserts on time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from runbridge.cli import cli
from runbridge.testing import Emulator, Script, serve
from runbridge.testing.rest import REST_CONFIG
from runbridge.testing.vi import DEFAULT_FLOW

FAST = ["--poll-first", "0.05", "--poll-cap", "0.1"]
ENV_VARS = ("RUNBRIDGE_PLATFORM", "RUNBRIDGE_URL", "RUNBRIDGE_TOKEN", "RUNBRIDGE_CONFIG")
FAIL_MESSAGE = "disk full on worker 7"


@dataclasses.dataclass(frozen=True)
class Case:
    """What one platform needs: launch params, provider options, scripts in its raw states."""

    platform: str
    params: Mapping[str, Any]
    options: tuple[str, ...]
    quick: Script
    failing: Script
    fail_raw: str
    fail_message: str
    """What the failed run's status says (the platform's own error text where it has one)."""
    long: Script
    cancelled_raw: str | None
    """The raw state a cancelled run ends in; None: the platform cannot cancel."""
    probe: tuple[str, str, Any]
    """An HTTP request (method, path, JSON body) the emulator answers with JSON."""
    probe_status: int

    @property
    def success_raw(self) -> str:
        return self.quick.final


CASES = [
    Case(
        "rest",
        {"job": "nightly"},
        (),
        Script([("queued", 0.05), ("running", 0.1)], final="succeeded"),
        Script([("running", 0.1)], final="failed", message=FAIL_MESSAGE),
        "failed",
        FAIL_MESSAGE,
        Script([("queued", 0.05), ("running", 30.0)]),
        "cancelled",
        ("GET", "/api/v1/runs/no-such-run", None),
        404,
    ),
    Case(
        "langgraph",
        {"assistant_id": "agent", "input": {"question": "?"}},
        (),
        Script([("pending", 0.05), ("running", 0.1)], final="success"),
        Script([("running", 0.1)], final="error", message=FAIL_MESSAGE),
        "error",
        f"ValueError: {FAIL_MESSAGE}",
        Script([("pending", 0.05), ("running", 30.0)]),
        "interrupted",
        ("GET", "/threads/00000000-0000-0000-0000-000000000000", None),
        404,
    ),
    Case(
        "flyte",
        {"task": "wf.main", "version": "v1", "inputs": {"n": 3}},
        ("project=flytesnacks", "domain=development"),
        Script([("queued", 0.05), ("running", 0.1)], final="succeeded"),
        Script([("running", 0.1)], final="failed", message=FAIL_MESSAGE),
        "ACTION_PHASE_FAILED",
        FAIL_MESSAGE,
        Script([("queued", 0.05), ("running", 30.0)]),
        "ACTION_PHASE_ABORTED",
        (
            "POST",
            "/flyteidl2.workflow.RunService/GetRunDetails",
            {"runId": {"project": "flytesnacks", "domain": "development", "name": "nope"}},
        ),
        404,
    ),
    Case(
        "wandb",
        {"docker_image": "trainer:latest"},
        ("entity=runbridge", "project=demo", "queue=default"),
        Script([("running", 0.1)], final="finished"),
        Script([("running", 0.1)], final="failed"),
        "failed",
        "the run ended with a non-zero exit status",  # W&B runs carry no error text
        Script([("running", 30.0)]),
        "killed",
        ("POST", "/graphql", {"query": "{ viewer { name } }"}),
        200,
    ),
    Case(
        "vi",
        {"flow": DEFAULT_FLOW},
        ("organization_id=org-emu",),
        Script([("Pending", 0.05), ("Running", 0.1)], final="Succeeded"),
        Script([("Running", 0.1)], final="Failed", message=FAIL_MESSAGE),
        "Failed",
        FAIL_MESSAGE,
        Script([("Pending", 0.05), ("Running", 30.0)]),
        "Cancelled",
        ("GET", "/workspaces/org-emu/runs/nope", None),
        404,
    ),
    Case(
        "lume",
        {
            "flow_version": "invoice_processor:v3",
            "source_path": "s3://invoices/batch-001.csv",
            "force_rerun": True,  # the same source again is otherwise refused (409)
        },
        (),
        Script([("CREATED", 0.05), ("TRANSFORMING", 0.1)], final="SUCCEEDED"),
        Script([("TRANSFORMING", 0.1)], final="FAILED", message=FAIL_MESSAGE),
        "FAILED",
        FAIL_MESSAGE,
        Script([("CREATED", 0.05), ("TRANSFORMING", 30.0)]),
        None,
        ("GET", "/runs/run_nope", None),
        404,
    ),
]


@pytest.fixture(scope="module")
def rest_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-platforms") / "rest.json"
    path.write_text(json.dumps(REST_CONFIG))
    return path


@pytest.fixture(params=CASES, ids=[case.platform for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


@pytest.fixture
def emu(case: Case) -> Iterator[Emulator]:
    """A fresh emulator per test: its queue of scripts is the test's own."""
    with serve(case.platform) as emulator:
        yield emulator


class Cli:
    """Runs the CLI in-process against one emulator; RUNBRIDGE_* from the caller do not leak in."""

    def __init__(self, case: Case, emu: Emulator, rest_config: Path) -> None:
        self.case = case
        self.emu = emu
        self.env: dict[str, str | None] = dict.fromkeys(ENV_VARS)
        self.env.update({"RUNBRIDGE_PLATFORM": case.platform, "RUNBRIDGE_URL": emu.base_url})
        if case.platform == "rest":
            self.env["RUNBRIDGE_CONFIG"] = str(rest_config)
        self.options = [arg for pair in case.options for arg in ("-o", pair)]

    def __call__(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=False)

    def launch(self, script: Script) -> str:
        """Launch a run following ``script``; returns its reference string."""
        self.emu.script(script)
        result = self("launch", json.dumps(self.case.params), "--json", *self.options)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ref"]["platform"] == self.case.platform
        assert data["ref_string"].startswith(f"{self.case.platform}:")
        return str(data["ref_string"])

    def status(self, ref: str) -> dict[str, Any]:
        result = self("status", ref, "--json", *self.options)
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def wait(self, ref: str, *extra: str) -> Result:
        return self("wait", ref, *FAST, "--timeout", "15", *self.options, *extra)

    def wait_until_running(self, ref: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            status = self.status(ref)
            if status["state"] == "RUNNING" or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


@pytest.fixture
def run_cli(case: Case, emu: Emulator, rest_config: Path) -> Cli:
    return Cli(case, emu, rest_config)


# -- launch, status, wait -------------------------------------------------------------------------
def test_launch_status_and_wait_for_success(case: Case, run_cli: Cli) -> None:
    ref = run_cli.launch(case.quick)
    first = run_cli.status(ref)
    assert first["state"] in ("PENDING", "RUNNING", "SUCCEEDED"), first
    assert isinstance(first["raw_state"], str) and first["raw_state"], first
    assert first["ref"]["platform"] == case.platform

    waited = run_cli.wait(ref)
    assert waited.exit_code == 0, waited.output
    assert "SUCCEEDED" in waited.output
    assert f"{case.platform} run " in waited.output

    final = run_cli.status(ref)
    assert (final["state"], final["is_terminal"]) == ("SUCCEEDED", True), final
    assert final["raw_state"].lower().endswith(case.success_raw.lower()), final


def test_wait_for_a_failing_run_exits_1_with_its_message(case: Case, run_cli: Cli) -> None:
    ref = run_cli.launch(case.failing)
    waited = run_cli.wait(ref)
    assert waited.exit_code == 1, waited.output
    assert f"FAILED ({case.fail_raw})" in waited.output
    assert case.fail_message in waited.output

    as_json = run_cli.wait(ref, "--json")
    assert as_json.exit_code == 1, as_json.output
    final = json.loads(as_json.stdout)
    assert (final["state"], final["raw_state"]) == ("FAILED", case.fail_raw)
    assert case.fail_message in final["message"]


def test_cancel_a_long_run(case: Case, run_cli: Cli) -> None:
    ref = run_cli.launch(case.long)
    assert run_cli.wait_until_running(ref)["state"] == "RUNNING"
    cancelled = run_cli("cancel", ref, *run_cli.options)
    if case.cancelled_raw is None:
        assert cancelled.exit_code == 2, cancelled.output
        lines = [line for line in cancelled.stderr.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("runbridge: error: "), cancelled.stderr
        assert case.platform in lines[-1] and "cannot be cancelled" in lines[-1]
        assert "Traceback" not in cancelled.output
        assert run_cli.status(ref)["state"] == "RUNNING"  # nothing happened to the run
        return
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancel requested for" in cancelled.stdout
    waited = run_cli.wait(ref)
    assert waited.exit_code == 1, waited.output
    assert f"CANCELLED ({case.cancelled_raw})" in waited.output


# -- runbridge emulate, as a real process ---------------------------------------------------------
def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_emulate_serves_http_and_stops_on_sigterm(case: Case) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbridge", "emulate", case.platform, "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    try:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        seen = ""
        deadline = time.monotonic() + 20
        while "RUNBRIDGE_URL=" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no base URL printed; got {seen!r}"
            try:
                seen += lines.get(timeout=remaining)
            except queue.Empty:
                pytest.fail(f"no base URL printed; got {seen!r}")
        assert f"{case.platform} emulator listening on http://127.0.0.1:" in seen
        url = seen.split("RUNBRIDGE_URL=", 1)[1].split()[0]
        method, path, body = case.probe
        answer = httpx.request(method, url + path, json=body, timeout=5)
        assert answer.status_code == case.probe_status, answer.text
        assert answer.headers["content-type"].startswith("application/json")
        assert isinstance(answer.json(), dict)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
