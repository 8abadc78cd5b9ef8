#!/usr/bin/env python3
"""Developer entry point for runbridge (standard library only, Python >= 3.10).

    python3 dev.py sync              install the locked dev environment (.venv)
    python3 dev.py test [ARGS...]    sync, then ruff check, ruff format --check, mypy, pytest ARGS;
                                     without ARGS: pytest, the reduced reliability matrix (each
                                     real deployment in tests/deploy/<orchestrator> in a pytest
                                     of its own), then the CI rows of the version matrix. A
                                     pytest that collects nothing (exit 5) or passes no test
                                     (all skipped) fails the step
    python3 dev.py demo [ARGS...]    sync, then `runbridge demo ARGS`
    python3 dev.py matrix [ARGS...]  sync, then the full version matrix (tools/matrix.py ARGS),
                                     which writes docs/compatibility.md
    python3 dev.py reliability [ARGS...]
                                     sync, then the full reliability matrix (every row, column
                                     and platform, in real deployments: tools/reliability.py
                                     ARGS), which writes docs/reliability.md

The version matrix installs each extra from the built wheel into fresh virtual environments on
the oldest and newest Python the package claims (found on the machine, never downloaded):
`python3 tools/matrix.py --help`. Set RUNBRIDGE_SKIP_MATRIX=1 to leave it out of `test`.

uv is taken from PATH; if it is not there, a pinned uv is installed with pip into
.dev/bootstrap. uv never downloads a Python here: the environment is built with a
Python >= 3.11 found on the machine (this interpreter if it is one, else python3.11,
python3.12 or python3.13 on PATH; RUNBRIDGE_PYTHON overrides). Child processes get
RUNBRIDGE_UV, the path of the uv in use.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

UV_VERSION = "0.13.9"
ROOT = Path(__file__).resolve().parent
BOOTSTRAP = ROOT / ".dev" / "bootstrap"
BIN = "Scripts" if os.name == "nt" else "bin"
EXE = ".exe" if os.name == "nt" else ""
LINT_PATHS = ("runbridge", "tests", "bench", "examples", "tools")
DEPLOYMENTS = ("airflow", "prefect", "dagster")
"""The reliability matrix's real deployments, tests/deploy/<name>: one pytest process each."""


class DevError(Exception):
    """A set-up problem with a message for the user."""


def say(msg: str) -> None:
    print(f"dev.py: {msg}", flush=True)


def run(cmd: list[str], env: dict[str, str], *, check: bool = True) -> int:
    shown = ["uv", *cmd[1:]] if Path(cmd[0]).stem == "uv" else cmd
    say("$ " + " ".join(shown))
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if check and rc != 0:
        raise SystemExit(rc)
    return rc


def python_version(exe: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # e.g. a pyenv shim for a version that is not enabled
        return None
    try:
        major, minor = (int(x) for x in out.stdout.split())
    except ValueError:
        return None
    return major, minor


def find_python() -> str:
    """A Python >= 3.11 for the project environment; never a download."""
    candidates: list[str] = []
    if override := os.environ.get("RUNBRIDGE_PYTHON"):
        candidates.append(override)
    if sys.version_info >= (3, 11):
        candidates.append(getattr(sys, "_base_executable", "") or sys.executable)
    for name in ("python3.11", "python3.12", "python3.13"):
        if found := shutil.which(name):
            candidates.append(found)
    for exe in candidates:
        version = python_version(exe)
        if version is not None and version >= (3, 11):
            return exe
    raise DevError(
        "no Python >= 3.11 found (tried: "
        + (", ".join(candidates) or "this interpreter, python3.11/3.12/3.13 on PATH")
        + "). Install one, or set RUNBRIDGE_PYTHON to its path. "
        "uv is not allowed to download one."
    )


def uv_version(uv: str) -> str | None:
    try:
        out = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    parts = out.stdout.split()
    return parts[1] if len(parts) > 1 else None


def find_uv() -> str:
    """uv from PATH, else the pinned one in .dev/bootstrap (installed on first use)."""
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    uv = BOOTSTRAP / BIN / f"uv{EXE}"
    if uv.exists() and uv_version(str(uv)) == UV_VERSION:
        return str(uv)
    say(f"uv not on PATH: installing uv=={UV_VERSION} into {BOOTSTRAP.relative_to(ROOT)}")
    t0 = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "venv", "--clear", str(BOOTSTRAP)])
    if rc != 0:
        raise DevError(
            f"`{sys.executable} -m venv` failed (exit {rc}); on Debian/Ubuntu install "
            "python3-venv, or put uv on PATH"
        )
    pip = [str(BOOTSTRAP / BIN / f"python{EXE}"), "-m", "pip"]
    rc = subprocess.call(
        [*pip, "install", "--quiet", "--disable-pip-version-check", f"uv=={UV_VERSION}"]
    )
    if rc != 0 or uv_version(str(uv)) != UV_VERSION:
        raise DevError(f"could not install uv=={UV_VERSION} with pip (exit {rc})")
    say(f"uv {UV_VERSION} installed in {time.monotonic() - t0:.1f} s")
    return str(uv)


def child_env(uv: str) -> dict[str, str]:
    env = dict(os.environ)
    env["RUNBRIDGE_UV"] = uv
    env["UV_PYTHON_DOWNLOADS"] = "never"
    # Another activated venv would only make uv warn; the project uses .venv.
    if env.get("VIRTUAL_ENV") and Path(env["VIRTUAL_ENV"]).resolve() != ROOT / ".venv":
        del env["VIRTUAL_ENV"]
    return env


def sync() -> tuple[str, dict[str, str]]:
    uv = find_uv()
    env = child_env(uv)
    python = find_python()
    version = ".".join(map(str, python_version(python) or ()))
    say(f"uv {uv_version(uv)} at {uv}; Python {version} at {python}")
    t0 = time.monotonic()
    run([uv, "sync", "--locked", "--all-extras", "--group", "dev", "--python", python], env)
    say(f"environment ready in {time.monotonic() - t0:.1f} s")
    return uv, env


def cmd_test(args: list[str]) -> int:
    uv, env = sync()
    paths = [p for p in LINT_PATHS if (ROOT / p).exists()]
    steps: list[tuple[str, list[str]]] = [
        ("ruff check", ["ruff", "check", *paths]),
        ("ruff format --check", ["ruff", "format", "--check", *paths]),
        ("mypy", ["mypy"]),
    ]
    for name, cmd in steps:
        t0 = time.monotonic()
        rc = run([uv, "run", "--no-sync", *cmd], env, check=False)
        if rc != 0:
            say(f"FAILED: {name} (exit {rc})")
            return rc
        say(f"ok: {name} ({time.monotonic() - t0:.1f} s)")
    # Each real deployment of the reliability matrix (tests/deploy/<orchestrator>) sets its
    # orchestrator's home and environment for the whole process: it runs in a pytest of its own.
    runs = (
        [("pytest", list(args))]
        if args
        else [
            # two workers (pytest-xdist), a test file each at a time: most of the suite waits
            # on subprocesses and loopback servers (12.5 min against 20.8 min in one process,
            # side by side on this 2-core machine under the same other load)
            (
                "pytest",
                [
                    *("-n", "2", "--dist", "loadfile"),
                    *(f"--ignore=tests/deploy/{folder}" for folder in DEPLOYMENTS),
                ],
            ),
            *((f"pytest tests/deploy/{f}", [f"tests/deploy/{f}"]) for f in DEPLOYMENTS),
        ]
    )
    for name, pytest_args in runs:
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="runbridge-dev-") as tmp:
            report = Path(tmp) / "junit.xml"
            extra = (
                []
                if any(a.startswith("--junit") for a in pytest_args)
                else [f"--junitxml={report}"]
            )
            rc = run([uv, "run", "--no-sync", "pytest", *pytest_args, *extra], env, check=False)
            counts = junit_counts(report) if extra and rc == 0 else None
        if rc == 5:
            say(f"FAILED: {name} collected no tests (exit 5); that is not a pass")
            return 1
        if rc != 0:
            say(f"FAILED: {name} (exit {rc})")
            return rc
        if counts is not None and counts["passed"] == 0:
            say(f"FAILED: {name} passed no test ({counts['skipped']} skipped); that is not a pass")
            return 1
        say(f"ok: {name} ({time.monotonic() - t0:.1f} s)")
    if args or os.environ.get("RUNBRIDGE_SKIP_MATRIX"):
        say("skipped: the version matrix's CI rows (pytest arguments or RUNBRIDGE_SKIP_MATRIX)")
        return 0
    t0 = time.monotonic()
    rc = run([sys.executable, str(ROOT / "tools" / "matrix.py"), "--ci"], env, check=False)
    if rc != 0:
        say(f"FAILED: the version matrix's CI rows (exit {rc})")
        return rc
    say(f"ok: version matrix, CI rows ({time.monotonic() - t0:.1f} s)")
    return 0


def junit_counts(report: Path) -> dict[str, int] | None:
    """Tests run, skipped and passed according to pytest's JUnit XML report (None: unreadable)."""
    try:
        root = ET.parse(report).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "skipped")}
    bad = sum(int(s.get(key, 0)) for s in suites for key in ("failures", "errors"))
    return {**total, "passed": total["tests"] - total["skipped"] - bad}


def cmd_demo(args: list[str]) -> int:
    uv, env = sync()
    return run([uv, "run", "--no-sync", "runbridge", "demo", *args], env, check=False)


def cmd_matrix(args: list[str]) -> int:
    _uv, env = sync()
    return run([sys.executable, str(ROOT / "tools" / "matrix.py"), *args], env, check=False)


def cmd_reliability(args: list[str]) -> int:
    _uv, env = sync()
    return run([sys.executable, str(ROOT / "tools" / "reliability.py"), *args], env, check=False)


def cmd_sync(args: list[str]) -> int:
    if args:
        raise DevError(f"`sync` takes no arguments, got {args}")
    sync()
    return 0


COMMANDS = {
    "sync": cmd_sync,
    "test": cmd_test,
    "demo": cmd_demo,
    "matrix": cmd_matrix,
    "reliability": cmd_reliability,
}


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 10):
        print("dev.py needs Python >= 3.10", file=sys.stderr)
        return 2
    if not argv or argv[0] in ("-h", "--help", "help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help", "help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except DevError as exc:
        print(f"dev.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
