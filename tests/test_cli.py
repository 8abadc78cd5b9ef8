"""The ``runbridge`` command line, against real emulators on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from runbridge.cli import _parse_options, cli
from runbridge.core.errors import ConfigError
from runbridge.testing import Emulator, Script, serve
from runbridge.testing.rest import REST_CONFIG

FAST = ["--poll-first", "0.05", "--poll-cap", "0.1"]
QUICK = Script([("queued", 0.1), ("running", 0.2)], final="succeeded", outputs={"rows": 7})
SLOW = Script([("queued", 0.1), ("running", 30.0)], final="succeeded")
WRONG_TOKEN = "wr0ng-t0ken-Zq9xJ7-never-print-me"
ENV_VARS = ("RUNBRIDGE_PLATFORM", "RUNBRIDGE_URL", "RUNBRIDGE_TOKEN", "RUNBRIDGE_CONFIG")


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "rest.json"
    path.write_text(json.dumps(REST_CONFIG))
    return path


@pytest.fixture
def emu() -> Iterator[Emulator]:
    """A fresh emulator per test: its queue of scripts is the test's own."""
    with serve("rest") as emulator:
        yield emulator


def invoke(
    args: list[str], env: Mapping[str, str] | None = None, input: str | None = None
) -> Result:
    """Run the CLI in-process; the caller's RUNBRIDGE_* variables do not leak in."""
    full_env: dict[str, str | None] = dict.fromkeys(ENV_VARS)
    full_env.update(env or {})
    return CliRunner().invoke(cli, args, env=full_env, input=input, catch_exceptions=False)


def rest_env(emu: Emulator, config_file: Path) -> dict[str, str]:
    return {
        "RUNBRIDGE_PLATFORM": "rest",
        "RUNBRIDGE_URL": emu.base_url,
        "RUNBRIDGE_CONFIG": str(config_file),
    }


def launch(emu: Emulator, config_file: Path, script: Script, *extra: str) -> Result:
    emu.script(script)
    return invoke(["launch", '{"job": "nightly"}', *extra], rest_env(emu, config_file))


def assert_clean_error(result: Result, code: int, *needles: str, debug: bool = False) -> None:
    """Exit ``code``, the message in one last stderr line, a traceback only with --debug."""
    assert result.exit_code == code, result.output
    assert ("Traceback" in result.output) is debug
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "expected a message on stderr"
    assert lines[-1].startswith("runbridge: ")
    for needle in needles:
        assert needle in result.stderr


# -- launch, status, wait ------------------------------------------------------------------------
def test_launch_status_wait_success(emu: Emulator, config_file: Path) -> None:
    launched = launch(emu, config_file, QUICK)
    assert launched.exit_code == 0, launched.output
    ref = launched.stdout.strip()
    assert ref.startswith("rest:") and "\n" not in ref
    assert "url: " in launched.stderr  # the run's page, off stdout so `$(runbridge launch)` works

    status = invoke(["status", ref], rest_env(emu, config_file))
    assert status.exit_code == 0, status.output
    assert ref in status.output
    assert "/ui/runs/" in status.output

    waited = invoke(["wait", ref, *FAST], rest_env(emu, config_file))
    assert waited.exit_code == 0, waited.output
    assert "SUCCEEDED (succeeded)" in waited.output
    assert '{"rows": 7}' in waited.output
    assert "duration" in waited.output and "url" in waited.output


def test_status_takes_the_platform_from_the_ref(emu: Emulator, config_file: Path) -> None:
    ref = launch(emu, config_file, QUICK).stdout.strip()
    env = {**rest_env(emu, config_file), "RUNBRIDGE_PLATFORM": "langgraph"}  # the env loses to REF
    result = invoke(["status", ref], env)
    assert result.exit_code == 0, result.output
    mismatch = invoke(["status", ref, "--platform", "langgraph"], rest_env(emu, config_file))
    assert_clean_error(mismatch, 2, "does not match the run reference")


def test_failed_run_exits_1_with_the_platform_message(emu: Emulator, config_file: Path) -> None:
    script = Script([("running", 0.1)], final="failed", message="disk full on worker 7")
    result = launch(emu, config_file, script, "--wait", *FAST)
    assert result.exit_code == 1, result.output
    assert "FAILED (failed)" in result.output
    assert "disk full on worker 7" in result.output
    assert "[  " in result.output  # not a terminal: one line per state change


def test_success_policy(emu: Emulator, config_file: Path) -> None:
    script = Script([("running", 0.1)], final="failed", message="partly")
    result = launch(emu, config_file, script, "--wait", "--success", "succeeded,failed", *FAST)
    assert result.exit_code == 0, result.output
    bad = launch(emu, config_file, QUICK, "--wait", "--success", "running")
    assert_clean_error(bad, 2, "not a terminal state")


def test_json_output(emu: Emulator, config_file: Path) -> None:
    env = rest_env(emu, config_file)
    launched = launch(emu, config_file, QUICK, "--json")
    assert launched.exit_code == 0, launched.output
    data = json.loads(launched.stdout)
    assert data["ref"]["platform"] == "rest"
    ref = data["ref_string"]
    assert ref == f"rest:{data['ref']['id']}"

    status = json.loads(invoke(["status", ref, "--json"], env).stdout)
    assert status["ref"] == data["ref"]
    assert status["state"] in ("PENDING", "RUNNING", "SUCCEEDED")

    # the JSON that `launch --json` printed is itself a REF, read here from stdin
    waited = invoke(["wait", "-", "--json", *FAST], env, input=launched.stdout)
    assert waited.exit_code == 0, waited.output
    final = json.loads(waited.stdout)
    assert final["state"] == "SUCCEEDED" and final["is_terminal"] is True
    assert final["outputs"] == {"rows": 7}

    both = launch(emu, config_file, QUICK, "--wait", "--json", *FAST)
    assert both.exit_code == 0, both.output
    combined = json.loads(both.stdout)
    assert combined["status"]["state"] == "SUCCEEDED"
    assert combined["ref_string"].startswith("rest:")


def test_params_from_a_file(emu: Emulator, config_file: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text('{"job": "from-file", "size": 3}')
    emu.script(QUICK)
    result = invoke(["launch", f"@{params}"], rest_env(emu, config_file))
    assert result.exit_code == 0, result.output
    assert emu.launches[-1] == {"size": 3}
    missing = invoke(["launch", f"@{tmp_path / 'nope.json'}"], rest_env(emu, config_file))
    assert_clean_error(missing, 2, "cannot read launch parameters")


def test_wait_timeout_exits_3(emu: Emulator, config_file: Path) -> None:
    ref = launch(emu, config_file, SLOW).stdout.strip()
    result = invoke(["wait", ref, "--timeout", "0.3", *FAST], rest_env(emu, config_file))
    assert_clean_error(result, 3, "timed out", "the run keeps going")
    assert not emu.cancels or ref.split(":")[1] not in emu.cancels  # a wait timeout never cancels


def test_run_timeout_cancels_the_run(emu: Emulator, config_file: Path) -> None:
    ref = launch(emu, config_file, SLOW).stdout.strip()
    result = invoke(["wait", ref, "--run-timeout", "0.4", *FAST], rest_env(emu, config_file))
    assert result.exit_code == 1, result.output
    assert "TIMED_OUT (cancelled)" in result.output
    assert "exceeded --run-timeout" in result.output
    assert ref.split(":", 1)[1] in emu.cancels


def test_cancel(emu: Emulator, config_file: Path) -> None:
    env = rest_env(emu, config_file)
    ref = launch(emu, config_file, SLOW).stdout.strip()
    result = invoke(["cancel", ref], env)
    assert result.exit_code == 0, result.output
    assert "cancel requested" in result.output
    status = json.loads(invoke(["status", ref, "--json"], env).stdout)
    assert status["state"] == "CANCELLED"


def test_cancel_a_run_that_already_ended(emu: Emulator, config_file: Path) -> None:
    env = rest_env(emu, config_file)
    ref = launch(emu, config_file, QUICK, "--wait").stdout.splitlines()[0].strip()
    result = invoke(["cancel", ref], env)
    assert result.exit_code == 0, result.output
    assert "had already ended: SUCCEEDED" in result.output
    assert "cancel requested" not in result.output
    assert ref.split(":", 1)[1] not in emu.cancels  # nothing was sent
    data = json.loads(invoke(["cancel", ref, "--json"], env).stdout)
    assert data["cancel_requested"] is False and data["already_ended"] is True
    assert data["status"]["state"] == "SUCCEEDED"
    assert not emu.cancels


def test_a_scoped_ref_round_trips() -> None:
    """A langgraph REF carries its thread in its scope (``?thread_id=``); the CLI reads it back."""
    pytest.importorskip("runbridge.testing.langgraph")
    with serve("langgraph") as lg:
        env = {"RUNBRIDGE_PLATFORM": "langgraph", "RUNBRIDGE_URL": lg.base_url}
        params = '{"assistant_id": "agent", "input": {"input": {"sleep": 0.2, "fail": "no tool"}}}'
        ref = invoke(["launch", params], env).stdout.strip()
        assert ref.startswith("langgraph:") and "?thread_id=" in ref
        result = invoke(["wait", ref, *FAST], {"RUNBRIDGE_URL": lg.base_url})
        assert result.exit_code == 1, result.output
        assert "FAILED (error)" in result.output and "no tool" in result.output
        assert len(lg.launches) == 1


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("bogus", "cannot read run reference 'bogus'"),
        ("{not json", "not valid JSON"),
        ('{"id": "x"}', "missing platform"),
    ],
)
def test_bad_ref_exits_2(emu: Emulator, config_file: Path, ref: str, needle: str) -> None:
    result = invoke(["status", ref], rest_env(emu, config_file))
    assert_clean_error(result, 2, needle)


def test_usage_errors_exit_2(emu: Emulator, config_file: Path) -> None:
    env = rest_env(emu, config_file)
    assert_clean_error(invoke(["launch", "[1, 2]"], env), 2, "must be a JSON object")
    assert_clean_error(invoke(["launch", "{}", "-p", "nope"], env), 2, "unknown platform 'nope'")
    no_url = {k: v for k, v in env.items() if k != "RUNBRIDGE_URL"}
    assert_clean_error(invoke(["status", "rest:abc"], no_url), 2, "no URL given")
    assert_clean_error(invoke(["status", "rest:abc", "-o", "nonsense"], env), 2, "KEY=VALUE")
    assert_clean_error(invoke(["status", "rest:abc", "-o", "bogus=1"], env), 2, "bad options")
    click_error = invoke(["wait", "rest:abc", "--timeout", "soon"], env)
    assert click_error.exit_code == 2


def test_not_found_and_unreachable_exit_4(emu: Emulator, config_file: Path) -> None:
    env = rest_env(emu, config_file)
    assert_clean_error(invoke(["status", "rest:no-such-run"], env), 4, "not found", "HTTP 404")
    down = {**env, "RUNBRIDGE_URL": "http://127.0.0.1:9"}
    assert_clean_error(invoke(["status", "rest:abc"], down), 4, "cannot reach the platform")


def test_debug_shows_the_traceback(emu: Emulator, config_file: Path) -> None:
    result = invoke(["status", "rest:no-such-run", "--debug"], rest_env(emu, config_file))
    assert_clean_error(result, 4, "not found", debug=True)
    root = invoke(["--debug", "status", "rest:no-such-run"], rest_env(emu, config_file))
    assert_clean_error(root, 4, "not found", debug=True)


def test_the_token_is_never_printed(config_file: Path) -> None:
    with serve("rest", token="right-token") as guarded:
        env = {**rest_env(guarded, config_file), "RUNBRIDGE_TOKEN": WRONG_TOKEN}
        outputs = []
        for args in (
            ["launch", '{"job": "x"}'],
            ["launch", '{"job": "x"}', "--wait", "--debug", *FAST],
            ["status", "rest:abc", "--debug"],
            ["wait", "rest:abc", "--json", *FAST],
            ["cancel", "rest:abc"],
        ):
            result = invoke(args, env)
            assert_clean_error(
                result, 4, "authentication failed", "HTTP 401", debug="--debug" in args
            )
            outputs.append(result.output)
        flag = invoke(
            ["status", "rest:abc", "--token", WRONG_TOKEN], rest_env(guarded, config_file)
        )
        assert_clean_error(flag, 4, "authentication failed")
        outputs.append(flag.output)
        outputs.append(invoke(["launch", "--help"], env).output)
        assert guarded.launches == []
    for output in outputs:
        assert WRONG_TOKEN not in output
        assert "Zq9xJ7" not in output


def test_the_right_token_works(config_file: Path) -> None:
    with serve("rest", token="right-token") as guarded:
        guarded.script(QUICK)
        env = {**rest_env(guarded, config_file), "RUNBRIDGE_TOKEN": "right-token"}
        result = invoke(["launch", '{"job": "x"}', "--wait", *FAST], env)
        assert result.exit_code == 0, result.output
        assert "right-token" not in result.output


# -- options ---------------------------------------------------------------------------------------
def test_provider_options(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"states": {"queued": "PENDING"}, "auth": {"header": "X"}}))
    options = _parse_options(
        config,
        ["states.paused=RUNNING", "retries=3", "flag=true", "name=plain text", 'obj={"a": 1}'],
    )
    assert options == {
        "states": {"queued": "PENDING", "paused": "RUNNING"},
        "auth": {"header": "X"},
        "retries": 3,
        "flag": True,
        "name": "plain text",
        "obj": {"a": 1},
    }
    config.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        _parse_options(config, [])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        _parse_options(None, ["=x"])


def test_options_reach_the_provider(emu: Emulator, config_file: Path) -> None:
    """A state the config does not know is UNKNOWN; an --option maps it."""
    env = rest_env(emu, config_file)
    ref = launch(emu, config_file, Script([("paused", 5.0)], final="succeeded")).stdout.strip()
    plain = json.loads(invoke(["status", ref, "--json"], env).stdout)
    assert plain["state"] == "UNKNOWN" and plain["raw_state"] == "paused"
    mapped = json.loads(
        invoke(["status", ref, "--json", "-o", "states.paused=PENDING"], env).stdout
    )
    assert mapped["state"] == "PENDING"


# -- other commands --------------------------------------------------------------------------------
def test_platforms() -> None:
    result = invoke(["platforms"])
    assert result.exit_code == 0, result.output
    assert "rest" in result.output
    rows = json.loads(invoke(["platforms", "--json"]).stdout)
    rest = next(row for row in rows if row["name"] == "rest")
    assert rest["loads"] is True
    for row in rows:  # a whole sentence each, never cut where the docstring's line ended
        assert row["description"].endswith((".", ")")), row
    described = {row["name"]: row["description"] for row in rows}
    assert described["rest"].endswith("(see the module docs).")
    assert described["langgraph"] == "LangGraph Agent Server."


def test_demo_runs_to_completion() -> None:
    result = invoke(["demo"])
    assert result.exit_code == 0, result.output
    assert "every run ended as scripted" in result.output
    assert "no duplicates" in result.output
    assert "CUDA out of memory" in result.output
    assert "Traceback" not in result.output


def test_emulate_needs_the_testing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = invoke(["emulate", "rest"])
    assert_clean_error(result, 2, "testing", "pip install 'runbridge[testing]'")
    demo = invoke(["demo"])
    assert_clean_error(demo, 2, "testing")


def test_emulate_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runbridge", "emulate", "rest", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        # as from a terminal: a child inherits an ignored SIGINT (some orchestrator tests
        # leave SIGINT ignored in this process), and Python then installs no Ctrl-C handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(5)]
        text = "".join(lines)
        assert "listening on http://127.0.0.1:" in text
        config_path = Path(text.split("configuration is in ", 1)[1].split()[0].rstrip("."))
        assert json.loads(config_path.read_text()) == REST_CONFIG
        url = text.split("RUNBRIDGE_URL=", 1)[1].split()[0]
        env = {
            "RUNBRIDGE_PLATFORM": "rest",
            "RUNBRIDGE_URL": url,
            "RUNBRIDGE_CONFIG": str(config_path),
        }
        result = invoke(["launch", '{"job": "nightly"}', "--wait", *FAST], env)
        assert result.exit_code == 0, result.output
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # a safety net on a loaded machine
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "POST /api/v1/jobs/nightly/runs" in out
    assert "Traceback" not in err
    assert not config_path.exists()


def test_import_is_cheap_and_python_m_works() -> None:
    code = (
        "import sys, runbridge.cli; "
        "heavy = [m for m in ('starlette', 'uvicorn', 'airflow', 'prefect', 'dagster') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-m", "runbridge", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "launch" in done.stdout and "demo" in done.stdout
