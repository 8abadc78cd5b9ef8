"""Smoke scenarios for an installed runbridge, one per extra (run by tools/matrix.py).

    python tools/smoke.py EXTRA --url URL --version VERSION

runs with the Python of a fresh virtual environment that holds ``runbridge[EXTRA]`` (installed
from the built wheel, never this checkout) and checks what a user of that extra would do:

- ``core``: the console script (``--version``, ``platforms``, ``launch --wait`` to success and
  to failure against the emulator at URL), the client in Python, and that no orchestrator (nor
  the emulators' starlette/uvicorn) is importable;
- ``testing``: the emulators in-process (``runbridge.testing.serve`` with scripted runs) and
  ``runbridge emulate`` as a server for the CLI;
- ``airflow``: ``airflow providers list`` shows the provider; two DAGs with
  ``LaunchRunOperator`` run with ``dag.test()``, one to success, one to failure;
- ``prefect``: ``prefect block register -m runbridge.prefect_blocks``; a flow with
  ``launch_and_wait`` to success, and one to failure;
- ``dagster``: ``dagster definitions validate`` and materializations to success and failure;
- ``all``: the testing scenario and the three orchestrators' in one environment.

URL is a LangGraph emulator (``runbridge emulate langgraph``): ``{"input": {"sleep": S}}`` runs
S seconds and succeeds, ``{"input": {"fail": "msg"}}`` fails with "msg". Orchestrator homes go
to a temporary directory. Standard library only (besides what it checks); exits non-zero, with
the reason, on the first failed check.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

OK_INPUT = {"assistant_id": "agent", "input": {"sleep": 0.2}}
FAIL_INPUT = {"assistant_id": "agent", "input": {"fail": "smoke-boom"}}
ORCHESTRATORS = ("airflow", "prefect", "dagster")
BIN = Path(sys.executable).parent


class SmokeError(Exception):
    pass


def step(msg: str) -> None:
    print(f"smoke: {msg}", flush=True)


def check(condition: object, msg: str) -> None:
    if not condition:
        raise SmokeError(msg)


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300, expect: int = 0
) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    step(
        f"$ {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}"
        f"  -> {proc.returncode} ({time.monotonic() - t0:.1f} s)"
    )
    if proc.returncode != expect:
        raise SmokeError(
            f"{cmd[0]} exited {proc.returncode}, expected {expect}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def tool(name: str) -> str:
    path = BIN / name
    check(path.exists(), f"no {name} console script in {BIN}")
    return str(path)


def installed_from_wheel() -> None:
    import runbridge

    where = Path(runbridge.__file__).resolve()
    check(
        Path(sys.prefix).resolve() in where.parents,
        f"runbridge imported from {where}, not from this environment ({sys.prefix})",
    )


def common(url: str, version: str) -> None:
    """What every installation must do: the version, the CLI, the client, both outcomes."""
    import runbridge

    installed_from_wheel()
    check(runbridge.__version__ == version, f"runbridge.__version__ {runbridge.__version__!r}")
    out = run([tool("runbridge"), "--version"]).stdout
    check(version in out, f"`runbridge --version` printed {out!r}, expected {version}")
    out = run([tool("runbridge"), "platforms", "--json"]).stdout
    names = {row["name"] for row in json.loads(out) if row["loads"]}
    check({"langgraph", "rest", "flyte", "wandb", "vi", "lume"} <= names, f"platforms: {names}")
    launch = [tool("runbridge"), "launch", "-p", "langgraph", "--url", url, "--wait", "--json"]
    out = run([*launch, json.dumps(OK_INPUT)]).stdout
    check(json.loads(out)["status"]["state"] == "SUCCEEDED", f"launch --wait: {out}")
    out = run([*launch, json.dumps(FAIL_INPUT)], expect=1).stdout
    status = json.loads(out)["status"]
    check(status["state"] == "FAILED" and "smoke-boom" in (status["message"] or ""), out)

    from runbridge import RunClient, RunFailed, RunState

    with RunClient("langgraph", url) as client:
        ref = client.launch(OK_INPUT)
        final = client.wait(ref)
        check(final.state is RunState.SUCCEEDED, f"client.wait: {final}")
        final = client.wait(client.launch(FAIL_INPUT))
        check(final.state is RunState.FAILED, f"client.wait of a failing run: {final}")
        try:
            final.raise_for_state()
        except RunFailed as exc:
            check("smoke-boom" in str(exc), f"RunFailed: {exc}")
        else:
            raise SmokeError("raise_for_state() did not raise for a failed run")
    step("core: CLI and client, success and failure")


def smoke_core(url: str, version: str) -> None:
    common(url, version)
    for module in (*ORCHESTRATORS, "starlette", "uvicorn"):
        check(importlib.util.find_spec(module) is None, f"{module} is importable in core alone")
    out = run([tool("runbridge"), "emulate", "langgraph"], expect=2).stderr
    check("runbridge[testing]" in out, f"emulate without the testing extra said: {out}")
    step("core: no orchestrator importable; emulate asks for the testing extra")


def smoke_testing(url: str, version: str) -> None:
    common(url, version)
    from runbridge import RunClient, RunState
    from runbridge.testing import EMULATORS, Script, serve

    for platform in sorted(EMULATORS):  # every emulator serves with this extra alone
        with serve(platform) as emu:
            check(emu.base_url.startswith("http://127.0.0.1:"), f"{platform}: {emu.base_url}")
    with serve("langgraph") as emu:
        emu.script(Script([("pending", 0.05), ("running", 0.1)], final="success"))
        emu.script(Script([("running", 0.1)], final="error", message="scripted-boom"))
        with RunClient("langgraph", emu.base_url) as client:
            ok = client.wait(client.launch({"assistant_id": "agent", "input": {}}))
            bad = client.wait(client.launch({"assistant_id": "agent", "input": {}}))
        check(ok.state is RunState.SUCCEEDED, f"scripted success: {ok}")
        check(bad.state is RunState.FAILED and "scripted-boom" in (bad.message or ""), f"{bad}")
        check(len(emu.launches) == 2, f"launches: {emu.launches}")
    # the console script serves an emulator the CLI can use
    proc = subprocess.Popen(
        [tool("runbridge"), "emulate", "langgraph", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        served = _read_url(proc)
        launch = [tool("runbridge"), "launch", "-p", "langgraph", "--url", served, "--wait"]
        run([*launch, json.dumps(OK_INPUT)])
        run([*launch, json.dumps(FAIL_INPUT)], expect=1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    step("testing: emulators in-process and `runbridge emulate`")


def _read_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if "listening on" in line:
            return line.split("listening on", 1)[1].split()[0]
    raise SmokeError("`runbridge emulate` printed no URL")


def smoke_airflow(url: str, version: str, home: Path) -> None:
    common(url, version)
    dags = home / "dags"
    dags.mkdir()
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(home / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW_CONN_RUNBRIDGE_DEFAULT=json.dumps(
            {"conn_type": "runbridge", "host": url, "extra": {"platform": "langgraph"}}
        ),
    )
    out = run([tool("airflow"), "providers", "list", "-o", "json"], env=env).stdout
    providers = {row.get("package_name"): row for row in json.loads(out[out.index("[") :])}
    check("runbridge" in providers, f"`airflow providers list` does not show runbridge: {out}")
    for dag_id, params in (("smoke_ok", OK_INPUT), ("smoke_fail", FAIL_INPUT)):
        (dags / f"{dag_id}.py").write_text(
            textwrap.dedent(
                f"""
                import pendulum
                from airflow.sdk import DAG
                from runbridge.airflow_provider import LaunchRunOperator

                with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
                    LaunchRunOperator(task_id="run", run_params={params!r})
                """
            )
        )
    script = textwrap.dedent(
        f"""
        import sys
        from airflow.dag_processing.dagbag import DagBag
        from airflow.utils.db import initdb

        initdb()
        bag = DagBag(dag_folder={str(dags)!r})
        assert not bag.import_errors, bag.import_errors
        for dag_id, expected in (("smoke_ok", "success"), ("smoke_fail", "failed")):
            run = bag.get_dag(dag_id).test()
            states = {{ti.task_id: ti.state for ti in run.get_task_instances()}}
            print(dag_id, run.state, states)
            assert str(run.state).endswith(expected), (dag_id, run.state, states)
            assert str(states["run"]).endswith(expected), states
        """
    )
    run([sys.executable, "-c", script], env=env, timeout=600)
    step("airflow: provider listed; dag.test() to success and to failure")


def smoke_prefect(url: str, version: str, home: Path) -> None:
    common(url, version)
    env = dict(
        os.environ,
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "prefect" / "storage"),
        PREFECT_SERVER_MEMO_STORE_PATH=str(home / "prefect" / "memo_store.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
    )
    env.pop("PREFECT_API_URL", None)
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from prefect import flow
        from prefect.testing.utilities import prefect_test_harness
        from prefect.settings import PREFECT_API_URL
        from runbridge.prefect_blocks import RunbridgeCredentials, launch_and_wait

        @flow
        def smoke(params: dict):
            credentials = RunbridgeCredentials(platform="langgraph", base_url={url!r})
            return launch_and_wait(credentials, params).state.value

        with prefect_test_harness(server_startup_timeout=120):
            api = PREFECT_API_URL.value()
            out = subprocess.run(
                [{str(BIN / "prefect")!r}, "block", "register", "-m", "runbridge.prefect_blocks"],
                capture_output=True, text=True, env={{**__import__("os").environ, "PREFECT_API_URL": api}},
            )
            print(out.stdout, out.stderr)
            assert out.returncode == 0, out.returncode
            assert "runbridge" in (out.stdout + out.stderr).lower() or "registered" in out.stdout.lower()
            from prefect.blocks.core import Block
            import anyio
            from prefect.client.orchestration import get_client

            async def block_types():
                async with get_client() as client:
                    return [t.slug for t in await client.read_block_types()]

            slugs = anyio.run(block_types)
            assert "runbridge-credentials" in slugs, slugs
            print("ok:", smoke(dict({OK_INPUT!r})))
            state = smoke(dict({FAIL_INPUT!r}), return_state=True)
            print("fail:", state.type, state.message)
            assert state.is_failed(), state
            assert "smoke-boom" in str(state.message) or "smoke-boom" in repr(state.result(raise_on_failure=False)), state
        """
    )
    run([sys.executable, "-c", script], env=env, timeout=600)
    step("prefect: blocks registered; a flow to success and to failure")


def smoke_dagster(url: str, version: str, home: Path) -> None:
    common(url, version)
    defs = home / "defs.py"
    defs.write_text(
        textwrap.dedent(
            f"""
            import dagster as dg
            from runbridge.dagster_resources import ExternalRunResource, external_run_asset

            ok = external_run_asset(name="ok", params={OK_INPUT!r})
            bad = external_run_asset(name="bad", params={FAIL_INPUT!r})
            resource = ExternalRunResource(platform="langgraph", base_url={url!r},
                                           poll_interval=0.1, poll_max_interval=0.5)
            defs = dg.Definitions(assets=[ok, bad], resources={{"external_run": resource}})
            """
        )
    )
    env = dict(os.environ, DAGSTER_HOME=str(home / "dagster"))
    (home / "dagster").mkdir()
    run([tool("dagster"), "definitions", "validate", "-f", str(defs)], env=env)
    script = textwrap.dedent(
        f"""
        import runpy
        import dagster as dg

        mod = runpy.run_path({str(defs)!r})
        resources = {{"external_run": mod["resource"]}}
        result = dg.materialize([mod["ok"]], resources=resources)
        assert result.success
        meta = result.asset_materializations_for_node("ok")[0].metadata
        assert meta["state"].value == "SUCCEEDED", meta
        result = dg.materialize([mod["bad"]], resources=resources, raise_on_error=False)
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        assert failures and "smoke-boom" in str(failures[0].step_failure_data.error), failures
        print("dagster: ok and failed materializations")
        """
    )
    run([sys.executable, "-c", script], env=env, timeout=600)
    step("dagster: definitions validate; materializations to success and to failure")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", choices=["core", "testing", *ORCHESTRATORS, "all"])
    parser.add_argument("--url", required=True, help="a LangGraph emulator's base URL")
    parser.add_argument("--version", required=True, help="the version the wheel must report")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix=f"runbridge-smoke-{args.extra}-"))
    try:
        if args.extra == "core":
            smoke_core(args.url, args.version)
        elif args.extra == "testing":
            smoke_testing(args.url, args.version)
        elif args.extra == "all":  # every scenario in one environment
            smoke_testing(args.url, args.version)
            for name in ORCHESTRATORS:
                (home / name).mkdir()
                globals()[f"smoke_{name}"](args.url, args.version, home / name)
        else:
            scenario: Any = globals()[f"smoke_{args.extra}"]
            scenario(args.url, args.version, home)
    except SmokeError as exc:
        print(f"smoke: FAILED ({args.extra}): {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        shutil.rmtree(home, ignore_errors=True)
    step(f"{args.extra}: passed in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
