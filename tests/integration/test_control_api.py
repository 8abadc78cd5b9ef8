"""The emulators' control API (``/_runbridge/``), over real loopback servers of all six platforms,
driven by :class:`EmulatorControl` and watched by runbridge's own client; and ``runbridge emulate``
as a real process with ``--script``/``--fault``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runbridge.cli import cli
from runbridge.core import PollSchedule, RetryPolicy, RunClient, RunState
from runbridge.core.errors import RunbridgeError
from runbridge.testing import ControlRefused, Emulator, EmulatorControl, serve
from runbridge.testing._control import FAULT_FIELDS, SCRIPT_FIELDS
from tests.deploy.matrix import platform_settings

PLATFORMS = ["rest", "langgraph", "flyte", "wandb", "vi", "lume"]
TOKEN = "control-api-token-93ab"
MESSAGE = "scripted failure: the disk is full (e5)"


@pytest.fixture(scope="module", params=PLATFORMS)
def served(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    with serve(str(request.param), token=TOKEN) as emu:
        yield emu


@pytest.fixture
def emu(served: Emulator) -> Iterator[Emulator]:
    yield served
    EmulatorControl(served.base_url).reset()


@pytest.fixture
def control(emu: Emulator) -> Iterator[EmulatorControl]:
    with EmulatorControl(emu.base_url) as control:
        control.reset()
        yield control


@pytest.fixture
def client(emu: Emulator) -> Iterator[RunClient]:
    options = platform_settings(emu.platform)["options"] or {}
    with RunClient(
        emu.platform,
        emu.base_url,
        TOKEN,
        poll=PollSchedule.fixed(0.05),
        retry=RetryPolicy(attempts=4, first=0.02, cap=0.1, jitter=0.0),
        request_timeout=5.0,
        **options,
    ) as client:
        yield client


def params(emu: Emulator) -> dict[str, Any]:
    return dict(platform_settings(emu.platform)["params"])


def running(emu: Emulator) -> str:
    return str(emu.script_words["running"])


LONG = {"steps": [["queued", 0.05], ["running", 60.0]], "final": "success"}


# -- scripts ------------------------------------------------------------------------------------
def test_a_scripted_failure_reaches_wait_with_its_message(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script(
        {"steps": [["queued", 0.05], ["running", 0.2]], "final": "failed", "message": MESSAGE}
    )
    status = client.wait(client.launch(params(emu)), 20)
    assert status.state is RunState.FAILED
    if emu.platform == "wandb":  # a W&B run has no error text: the summary carries it
        assert status.message == "the run ended with a non-zero exit status"
        assert status.outputs["summary"]["error"] == MESSAGE
    else:
        assert MESSAGE in (status.message or "")
    (run,) = control.record()["runs"]
    assert run["finished"] and not run["cancelled"]


def test_a_scripted_long_run_is_seen_running(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script(LONG)
    ref = client.launch(params(emu))
    run = control.wait_for_state(None, 10, states=("running",))  # the generic word
    assert run["finished"] is False
    assert (run["state"], run["word"]) == (running(emu), "running")
    time.sleep(0.3)
    status = client.get(ref)
    assert status.state is RunState.RUNNING
    assert status.raw_state == running(emu)
    with pytest.raises(RunbridgeError):  # still going after its wait's deadline
        client.wait(ref, 1.0)
    assert control.record()["runs"][0]["finished"] is False


def test_the_default_script_and_the_queue(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    quick = {"steps": [["running", 0.1]], "final": "success"}
    control.script(
        quick, default={"steps": [["running", 0.1]], "final": "failed", "message": MESSAGE}
    )
    first = client.wait(client.launch(params(emu)), 20)
    second = client.wait(client.launch(params(emu)), 20)
    assert (first.state, second.state) == (RunState.SUCCEEDED, RunState.FAILED)
    assert control.record()["scripts_queued"] == 0


# -- faults -------------------------------------------------------------------------------------
def test_a_launch_fault_after_the_effect_leaves_one_run(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script({"steps": [["running", 0.2]], "final": "success"})
    control.inject(kind="drop", when="after", on="launch")
    key = None if emu.platform == "lume" else f"control-api-{uuid.uuid4()}"
    try:  # with a key the launch is resent safely (looked up, or deduplicated by the platform)
        status = client.wait(client.launch(params(emu), key=key), 20)
    except RunbridgeError as exc:  # Lume: no key to look the launch up by
        assert emu.platform == "lume", exc
    else:
        assert status.state is RunState.SUCCEEDED
    record = control.record()
    assert record["launches"] == 1 and len(record["runs"]) == 1
    if emu.platform == "rest":  # resent with its Idempotency-Key: two requests, one run
        assert record["runs"][0]["key"] == key and record["runs"][0]["launch_requests"] == 2
    (met,) = record["faults_met"]
    assert met["label"] == "drop after on launch" and met["answered"] is not None
    assert record["faults_pending"] == []


def test_a_fault_on_status_meets_only_status_reads(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script({"steps": [["running", 0.3]], "final": "success"})
    control.inject(kind="status", status=503, times=2, on="status")
    status = client.wait(client.launch(params(emu)), 20)
    assert status.state is RunState.SUCCEEDED
    record = control.record()
    assert [m["label"] for m in record["faults_met"]] == ["status 503 before on status"] * 2
    assert record["launches"] == 1


def test_clear_faults(emu: Emulator, control: EmulatorControl) -> None:
    control.inject(kind="status", status=500, times=5, on="status")
    assert len(control.record()["faults_pending"]) == 1
    control.clear_faults()
    assert control.record()["faults_pending"] == []


# -- cancels and the record ------------------------------------------------------------------------
def test_cancel_run_as_a_user_is_seen_cancelled(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script(LONG)
    ref = client.launch(params(emu))
    run = control.wait_for_state(None, 10, states=(running(emu),))
    if emu.platform == "lume":
        with pytest.raises(ControlRefused, match="lume runs cannot be cancelled") as refused:
            control.cancel_run(run["id"])
        assert refused.value.status == 409
        return
    control.cancel_run(run["id"])
    status = client.wait(ref, 20)
    assert status.state is RunState.CANCELLED
    assert not status.cancelled_by_runbridge
    record = control.record()
    assert record["cancels"] == 0 and record["user_cancels"] == [run["id"]]
    assert record["runs"][0]["cancelled"] and record["runs"][0]["finished"]
    with pytest.raises(ControlRefused, match="already finished") as again:
        control.cancel_run(run["id"])
    assert again.value.status == 409
    with pytest.raises(ControlRefused, match="no run") as missing:
        control.cancel_run("no-such-run")
    assert missing.value.status == 404


def test_the_record_counts_the_clients_launches_and_cancels(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script(LONG, LONG)
    first = client.launch(params(emu))
    client.launch(params(emu))
    control.wait_for_launches(2, 10)
    if emu.platform != "lume":
        control.inject(kind="status", status=503, times=1, on="cancel")
        control.wait_for(
            lambda r: all(x["state"] == running(emu) for x in r["runs"]), 10, what="both running"
        )
        client.cancel(first)
        record = control.wait_for_cancels(1, 10)
        assert [m["label"] for m in record["faults_met"]] == ["status 503 before on cancel"]
    record = control.record()
    assert record["launches"] == 2 and len(record["runs"]) == 2
    assert record["cancels"] == (0 if emu.platform == "lume" else 1)
    assert sum(r["cancelled"] for r in record["runs"]) == record["cancels"]
    assert all(r["launch_requests"] == 1 for r in record["runs"])
    assert record["requests"] >= 2


def test_reset_forgets_runs_scripts_faults_and_requests(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    control.script({"steps": [["running", 0.1]], "final": "failed"}, default=LONG)
    control.inject(kind="status", status=500, times=3, on="status")
    client.launch(params(emu))
    control.reset()
    assert control.record() == {
        "platform": emu.platform,
        "runs": [],
        "launches": 0,
        "cancels": 0,
        "user_cancels": [],
        "faults_met": [],
        "faults_pending": [],
        "scripts_queued": 0,
        "requests": 0,
    }
    status = client.wait(client.launch(params(emu)), 20)  # the emulator's own default again
    assert status.state is RunState.SUCCEEDED


# -- bad input --------------------------------------------------------------------------------------
BAD: list[tuple[str, Any, str]] = [
    ("scripts", {"scripts": [{"final": "success", "colour": "red"}]}, "scripts[0].colour"),
    ("scripts", {"scripts": [{"final": "exploded"}]}, "scripts[0].final"),
    ("scripts", {"scripts": [{"steps": [["running"]]}]}, "scripts[0].steps[0]"),
    ("scripts", {"scripts": [{"steps": [["running", -1]]}]}, "scripts[0].steps[0]"),
    ("scripts", {"scripts": [{"steps": [["running", "1e999"]]}]}, "scripts[0].steps[0]"),
    ("scripts", {"scripts": [{"outputs": [1]}]}, "scripts[0].outputs"),
    ("scripts", {"scripts": {}}, "scripts"),
    ("scripts", {"default": {"message": 3}}, "default.message"),
    ("scripts", {"queue": []}, "queue"),
    ("scripts", {}, "scripts"),
    ("scripts", [], ""),
    ("faults", {"faults": [{"kind": "status", "colour": 1}]}, "faults[0].colour"),
    ("faults", {"faults": [{"kind": "explode"}]}, "faults[0].kind"),
    ("faults", {"faults": [{"status": 99}]}, "faults[0].status"),
    ("faults", {"faults": [{"status": True}]}, "faults[0].status"),
    ("faults", {"faults": [{"times": 0}]}, "faults[0].times"),
    ("faults", {"faults": [{"on": "everything"}]}, "faults[0].on"),
    ("faults", {"faults": [{"kind": "garble"}]}, "faults[0].when"),
    ("faults", {"faults": [{"cut": 2}]}, "faults[0].cut"),
    ("faults", {"faults": [{"seconds": 1e308 * 10}]}, ""),
    ("faults", {"clear": "yes"}, "clear"),
]


@pytest.mark.parametrize(
    ("route", "body", "field"), BAD, ids=[f"{r}-{f or 'body'}" for r, _, f in BAD]
)
def test_bad_input_is_a_400_naming_the_field(
    emu: Emulator, route: str, body: Any, field: str
) -> None:
    text = json.dumps(body)  # Infinity: not JSON, refused as such
    answer = httpx.post(f"{emu.base_url}/_runbridge/{route}", content=text, timeout=5)
    assert answer.status_code == 400, answer.text
    detail = answer.json()
    assert detail["field"] == field
    assert field in detail["detail"]
    assert TOKEN not in answer.text


def test_platform_words_and_targets(emu: Emulator, control: EmulatorControl) -> None:
    """The generic words a platform cannot carry, and a raw state of another platform, are
    refused by name; a raw state of this platform is taken as it is."""
    with pytest.raises(ControlRefused) as refused:
        control.script(
            {"final": "ACTION_PHASE_SUCCEEDED" if emu.platform != "flyte" else "finished"}
        )
    assert refused.value.status == 400 and refused.value.field == "scripts[0].final"
    if emu.platform == "lume":
        with pytest.raises(ControlRefused, match="lume cannot carry the state 'cancelled'"):
            control.script({"final": "cancelled"})
        with pytest.raises(ControlRefused, match="lume has no cancel request"):
            control.inject(on="cancel")
    raw = sorted(emu.raw_states)[0]
    control.script({"steps": [[raw, 0.1]], "final": raw})
    assert control.record()["scripts_queued"] == 1


def test_unknown_control_routes_and_bodies(emu: Emulator) -> None:
    base = f"{emu.base_url}/_runbridge"
    assert httpx.get(f"{base}/nothing", timeout=5).status_code == 404
    assert httpx.get(f"{base}/scripts", timeout=5).status_code == 404
    bad = httpx.post(f"{base}/faults", content=b"{not json", timeout=5)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["detail"]
    deep = httpx.post(f"{base}/scripts", content=b"[" * 100_000, timeout=5)
    assert deep.status_code == 400
    # the control API needs no token, and is never recorded as a platform request
    assert httpx.get(f"{base}/record", timeout=5).json()["requests"] == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _shaped(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with known field names (and now and then an unknown one), any values."""
    return st.dictionaries(
        st.sampled_from((*fields, "extra")),
        JSON
        | st.sampled_from(
            ["running", "success", "failed", "queued", "launch", "status", "after", "drop", "0.5"]
        ),
        max_size=5,
    )


BODIES = st.one_of(
    JSON,
    st.fixed_dictionaries({"scripts": st.lists(_shaped(SCRIPT_FIELDS) | JSON, max_size=3)}),
    st.fixed_dictionaries({"default": _shaped(SCRIPT_FIELDS)}),
    st.fixed_dictionaries({"faults": st.lists(_shaped(FAULT_FIELDS) | JSON, max_size=3)}),
    st.fixed_dictionaries({"clear": JSON}),
)


@settings(
    max_examples=int(os.environ.get("RUNBRIDGE_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=st.sampled_from(["scripts", "faults"]), body=BODIES)
def test_control_json_is_never_a_500(http: httpx.Client, route: str, body: Any) -> None:
    """Any JSON (NaN and Infinity included), shaped like a script or a fault or not: a 200 or
    a 400 with a reason, never a 500 (the parsing is shared; the words and targets are the
    platform's: every platform's own emulator answers)."""
    text = json.dumps(body, allow_nan=True)
    answer = http.post(f"/_runbridge/{route}", content=text)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 400:
        assert isinstance(answer.json()["detail"], str)
    else:
        http.post("/_runbridge/reset")


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.base_url, timeout=5) as http:
        yield http


# -- runbridge emulate, as a process --------------------------------------------------------------
@pytest.fixture
def emulate_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    log = tmp_path / "emulate.log"
    script = {"steps": [["queued", 0.05], ["running", 0.2]], "final": "failed", "message": MESSAGE}
    fault = {"kind": "status", "status": 503, "on": "status", "times": 1}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runbridge",
                "emulate",
                "--platform",
                "rest",
                "--port",
                "0",
                "--token",
                TOKEN,
                "--quiet",
                "--script",
                json.dumps(script),
                "--fault",
                json.dumps(fault),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"listening on (http://\S+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        first = log.read_text().splitlines()[0]
        assert first.startswith("rest emulator listening on http://127.0.0.1:")
        assert f"control API: {match.group(1)}/_runbridge/" in first
        yield match.group(1), process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
    assert TOKEN not in log.read_text()


def test_emulate_prints_its_url_and_obeys_the_control_api(
    emulate_process: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, process = emulate_process
    options = platform_settings("rest")["options"]
    with (
        EmulatorControl(url) as control,
        RunClient("rest", url, TOKEN, poll=PollSchedule.fixed(0.05), **options) as client,
    ):
        status = client.wait(client.launch({"job": "x"}), 20)  # --script: the default
        assert (status.state, status.message) == (RunState.FAILED, MESSAGE)
        record = control.record()
        assert [m["label"] for m in record["faults_met"]] == ["status 503 before on status"]
        control.reset()  # the --script default outlives a reset; the --fault does not
        control.script({"steps": [["running", 0.1]], "final": "success"})
        assert client.wait(client.launch({"job": "x"}), 20).state is RunState.SUCCEEDED
        assert client.wait(client.launch({"job": "x"}), 20).state is RunState.FAILED
        assert control.record()["faults_met"] == []
        control.script(LONG)
        ref = client.launch({"job": "x"})
        control.cancel_run(control.wait_for_state(ref.id, 10, states=("running",))["id"])
        assert client.wait(ref, 20).state is RunState.CANCELLED
    assert process.poll() is None


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--script", '{"final": "nope"}', "--script: default.final: unknown state 'nope'"),
        ("--script", "{not json", "--script: the body is not valid JSON"),
        ("--fault", '{"on": "launch", "times": -1}', "--fault: faults[0].times"),
        ("--fault", '[{"kind": "garble"}]', "--fault: faults[0].when"),
    ],
)
def test_emulate_refuses_bad_options_at_once(option: str, value: str, says: str) -> None:
    result = CliRunner().invoke(cli, ["emulate", "--platform", "rest", option, value])
    assert result.exit_code == 2, result.output
    assert says in result.output and "Traceback" not in result.output


ERROR_TYPES = {
    "langgraph": "QuotaError",
    "flyte": "KIND_SYSTEM",
    "vi": "OOMKilled",
    "lume": "E_QUOTA",
}
SHOWN = {"langgraph": "QuotaError", "flyte": "system error", "vi": "OOMKilled", "lume": "E_QUOTA"}


def test_a_scripts_error_type_reaches_the_message_where_the_platform_has_one(
    emu: Emulator, control: EmulatorControl, client: RunClient
) -> None:
    """rest and W&B have no place for an error type (docs/testing.md); the others show it."""
    if emu.platform not in ERROR_TYPES:
        pytest.skip(f"{emu.platform} runs carry no error type")
    control.script(
        {
            "steps": [["running", 0.1]],
            "final": "failed",
            "message": MESSAGE,
            "error_type": ERROR_TYPES[emu.platform],
        }
    )
    status = client.wait(client.launch(params(emu)), 20)
    assert status.state is RunState.FAILED
    assert SHOWN[emu.platform] in (status.message or "") and MESSAGE in (status.message or "")
