"""The benchmarks in bench/ run, at a tiny size, and report what they measure.

Not measurements (far too small, and the suite shares the machine): a benchmark that no longer
runs, or reports nothing, fails here instead of on the day someone needs its numbers. Each runs
as a subprocess, as documented in docs/benchmarks.md, in a session of its own that is killed
should it overrun.

``bench/airflow_import.py`` is left out: each of its measurements is a fresh interpreter
importing Airflow (seconds each), and it installs the dbt Cloud provider on first use.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DBT_DEPS = Path(os.environ.get("TMPDIR", "/tmp")) / "runbridge-bench-dbt-cloud"

pytestmark = pytest.mark.slow


def run(args: list[str], timeout: float = 120.0) -> str:
    """Run ``python bench/...`` in its own session; kill the whole session if it overruns."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{args[0]} overran {timeout} s:\n{out[-3000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    return out


def test_triggerer_scale_runs_every_kind_of_contender(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    variants = ["aiohttp", "runbridge", "trigger"]
    if (DBT_DEPS / "airflow" / "providers" / "dbt").exists():  # never downloaded by the suite
        variants.append("dbt")
    out_json = tmp_path / "scale.json"
    out = run(
        [
            "bench/triggerer_scale.py",
            "--runs=8",
            "--interval=0.3",
            "--ends=0.3,0.8",
            f"--variants={','.join(variants)}",
            "--no-tracemalloc",
            "--retry-noisy=0",
            f"--dbt-deps={DBT_DEPS}",
            f"--json={out_json}",
        ]
    )
    assert "TLS" in out.splitlines()[0]
    saved = json.loads(out_json.read_text())
    results = {r["variant"]: r for r in saved["results"]}
    assert set(results) == set(variants), out[-3000:]
    for variant, r in results.items():
        assert not r.get("failed"), (variant, r)
        assert r["waits_done"] == 8, (variant, r)
        assert r["checks"] >= 8 and r["cpu_per_check_ms"] > 0
        assert r["connections_opened"] >= 1  # over TLS to the emulator
        assert r["detection_p99_s"] is not None
    assert results["runbridge"]["transport"] == "AiohttpClient"  # the default, measured
    assert results["trigger"]["transport"] == "AiohttpClient"
    assert "Targets" in out


def test_concurrent_waits_runs(tmp_path: Path) -> None:
    out_json = tmp_path / "waits.json"
    run(
        [
            "bench/concurrent_waits.py",
            "--runs=10",
            "--interval=0.3",
            "--duration=0.6",
            "--variants=runbridge",
            "--no-tracemalloc",
            f"--json={out_json}",
        ]
    )
    results = json.loads(out_json.read_text())["results"]
    assert {r["variant"] for r in results} == {"runbridge"}
    for r in results:
        assert not r.get("failed"), r
        assert r["waits_done"] == 10 and r["checks"] >= 10


def test_check_overhead_runs() -> None:
    out = run(["bench/check_overhead.py", "--checks=300", "--rounds=1"], timeout=60)
    assert "runbridge adds" in out


def test_langgraph_joins_runs_and_keeps_the_joins_within_the_bound(tmp_path: Path) -> None:
    out_json = tmp_path / "joins.json"
    out = run(
        [
            "bench/langgraph_joins.py",
            "--runs=8",
            "--interval=0.3",
            "--ends=0.5,1",
            f"--json={out_json}",
        ],
        timeout=90,
    )
    result = json.loads(out_json.read_text())["result"]
    assert result["done"] == 8 and result["failures"] == [], out[-3000:]
    assert 1 <= result["peak_joins"] <= result["max_long_polls"]  # joins were used, bounded
    assert result["requests"].get("join", 0) >= 1
    assert result["delay_max_s"] is not None


def test_http2_bench_runs_where_hypercorn_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("hypercorn")  # not a runbridge dependency (docs/benchmarks.md)
    out_json = tmp_path / "http2.json"
    run(
        [
            "bench/http2.py",
            "--waits=10",
            "--interval=0.5",
            "--seconds=1",
            "--contenders=aiohttp-h1,httpx-h2",
            f"--json={out_json}",
        ],
        timeout=90,
    )
    results = {r["kind"]: r for r in json.loads(out_json.read_text())["results"]}
    assert results["httpx-h2"]["protocol"] == "HTTP/2"
    assert all(r["checks"] >= 10 and r["errors"] == 0 for r in results.values())
