#!/usr/bin/env python3
"""The version matrix: does the built package work as users install it?

    python3 dev.py matrix [ARGS]          the full matrix; writes docs/compatibility.md
    python3 tools/matrix.py --ci          the reduced set that `python3 dev.py test` runs

Each row makes a fresh virtual environment with a Python found on this machine (uv never
downloads one), installs ``runbridge[EXTRA]`` from the wheel built from this checkout
(``uv build``: the sdist, then the wheel from it) with plain resolution (no lock), records
what was installed, and runs tools/smoke.py for that extra against a LangGraph emulator
(``runbridge emulate langgraph`` from the project's .venv), then the extra's pin tests
(PIN_TESTS: what runbridge uses outside the dependency's public API) from this checkout with
pytest added to that environment. Resolutions:

- ``newest``: the newest release of everything the extra allows, installed with pip as users
  do (``--installer uv``: ``uv pip install``, the same resolution in seconds; the CI rows);
- ``floor``: the floors the extra declares: its requirements, read from the wheel's metadata,
  are given as direct requirements to ``uv pip install --resolution lowest-direct``, so each
  declared lower bound is installed exactly, and everything else at the newest. A floor known
  not to run when resolved today (KNOWN_BROKEN_FLOORS, documented) is expected to fail;
- ``as-released``: such a floor resolved with ``--exclude-newer`` the day after its release
  (the local wheel is not affected): runbridge itself works with it.

The ``core-tests`` rows run the core unit tests (tests/core and the CLI tests) of this
checkout with the locked ``test`` group and the ``testing`` extra only (no orchestrator).

The full matrix: every extra (core, testing, airflow, prefect, dagster) at each resolution,
plus ``all`` at its newest and core-tests, on the oldest and newest Python the package claims
(its ``Programming Language :: Python :: 3.X`` classifiers). ``--ci``: core-tests on both,
core and dagster at their floors on the oldest Python, each extra at its newest on the newest
Python.
Rows run ``--jobs`` at a time (default: the number of CPUs); each row's log goes to
``--logs``. ``--rev COMMIT`` tests a commit instead of the work tree. Exit status 1 if a row
failed (an expected failure does not count).
Standard library only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dev  # noqa: E402  (dev.py: uv, the child environment, Python versions)

EXTRAS = ("core", "testing", "airflow", "prefect", "dagster")
RESOLUTIONS = ("floor", "newest")
# Floors that do not run when resolved today, as docs/prefect.md says: (floor, reason). Their
# floor rows are expected to fail (the matrix says so if one passes), and an "as-released" row
# resolves the floor with the index as it was the day after that release (--exclude-newer;
# the local wheel is not affected), which shows that runbridge itself works with it.
KNOWN_BROKEN_FLOORS = {
    "prefect": (
        "Prefect < 3.9 does not cap its dependencies, and resolved today they break it: "
        "FastAPI >= 0.155 has no Body(min_items=...), and with FastAPI capped (Python 3.10) "
        "Prefect 3.4.0 misses importlib_metadata; see docs/prefect.md"
    ),
}
AS_RELEASED = {"prefect": ("3.4", "2025-05-04")}  # prefect 3.4.0 was uploaded on 2025-05-02
CORE_TESTS = ["tests/core", "tests/test_cli.py", "tests/test_cli_platforms.py"]
# The tests that pin what runbridge uses outside each dependency's public API (private names,
# signatures), run by the wheel rows of that extra after the smoke scenario, so every pin is
# checked against the floor and the newest release the extra accepts (not only the lock).
PIN_TESTS = {
    "core": ["tests/core/test_deadlines.py::test_sync_deadline_backend_is_installed"],
    "airflow": ["tests/airflow/test_masking.py::test_the_private_flag_the_hook_relies_on_exists"],
    "prefect": ["tests/prefect/test_private_apis.py"],
    "dagster": ["tests/dagster/test_private_api.py"],
}
DOC = ROOT / "docs" / "compatibility.md"
# What a row reports: the distributions that the extra is about.
SHOWN = {
    "core": ["httpx", "click", "rich"],
    "testing": ["starlette", "uvicorn", "httpx"],
    "airflow": ["apache-airflow", "apache-airflow-core", "apache-airflow-task-sdk"],
    "prefect": ["prefect", "fastapi", "pydantic"],
    "dagster": ["dagster", "pydantic"],
    "all": ["apache-airflow-core", "prefect", "dagster", "fastapi"],
    "core-tests": ["httpx", "starlette", "pytest", "hypothesis"],
}
ROW_TIMEOUT = 1200.0


@dataclasses.dataclass
class Row:
    extra: str  # one of EXTRAS, or "core-tests"
    resolution: str  # "floor", "newest", or "lock" (core-tests)
    python: str  # "3.10"
    ok: bool | None = None
    seconds: float = 0.0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str = ""
    expected_failure: str = ""  # why this row is known not to work (KNOWN_BROKEN_FLOORS)

    @property
    def outcome(self) -> str:
        if self.ok is None:
            return "not run"
        if self.expected_failure:
            return "fails, as documented" if not self.ok else "passes (was known to fail)"
        return "pass" if self.ok else "FAIL"

    @property
    def passed(self) -> bool:
        """Counts as a pass: it worked, or it failed as documented."""
        return bool(self.ok) or (self.ok is False and bool(self.expected_failure))

    @property
    def name(self) -> str:
        return f"{self.extra}-{self.resolution}-py{self.python}"


def say(msg: str) -> None:
    print(f"matrix: {msg}", flush=True)


# -- Pythons ------------------------------------------------------------------------------------
def claimed_pythons() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = sorted(
        set(re.findall(r'"Programming Language :: Python :: (3\.\d+)"', text)),
        key=lambda v: tuple(int(x) for x in v.split(".")),
    )
    if not found:
        raise dev.DevError("pyproject.toml claims no Python 3.X classifier")
    return found


def sys_version(exe: str) -> tuple[int, ...]:
    out = subprocess.run(
        [exe, "-c", "import sys; print(*sys.version_info[:3])"], capture_output=True, text=True
    )
    return tuple(int(x) for x in out.stdout.split()) if out.returncode == 0 else ()


def find_python(version: str) -> str:
    """An interpreter of exactly this minor version on the machine (never a download)."""
    env_name = "RUNBRIDGE_PYTHON_" + version.replace(".", "_")
    candidates = [os.environ.get(env_name, "")]
    candidates.append(shutil.which(f"python{version}") or "")
    for pattern in (
        f"~/.pyenv/versions/{version}*/bin/python{version}",
        f"/usr/local/bin/python{version}",
        f"/usr/bin/python{version}",
        f"/opt/python/{version}*/bin/python{version}",
    ):
        candidates.extend(sorted(glob.glob(os.path.expanduser(pattern)), reverse=True))
    want = tuple(int(x) for x in version.split("."))
    for exe in filter(None, candidates):
        if dev.python_version(exe) == want:
            return exe
    raise dev.DevError(
        f"no Python {version} found (set {env_name} to its path); uv may not download one"
    )


# -- build --------------------------------------------------------------------------------------
def export(rev: str, out: Path) -> Path:
    """The tree of commit ``rev`` (what a fresh clone would hold), without the work tree's edits."""
    out.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=False
    )
    if archive.returncode != 0:
        raise dev.DevError(f"git archive {rev} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def build(uv: str, env: dict[str, str], source: Path, out: Path) -> tuple[Path, str]:
    """sdist, then the wheel from the sdist; returns (wheel, version)."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [uv, "build", "--out-dir", str(out), "--quiet", str(source)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise dev.DevError(f"uv build failed:\n{proc.stderr}")
    (wheel,) = out.glob("runbridge-*.whl")
    version = wheel.name.split("-")[1]
    say(f"built {wheel.name} and its sdist in {time.monotonic() - t0:.1f} s")
    return wheel, version


def declared_requirements(wheel: Path, extra: str) -> list[str]:
    """The wheel's own requirements for ``extra`` (core: the unconditional ones)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zf.read(name).decode()
    reqs = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req, _, marker = line.split(":", 1)[1].strip().partition(";")
        marker = marker.strip()
        if not marker or marker == f"extra == '{extra}'" or marker == f'extra == "{extra}"':
            reqs.append(req.strip())
    return reqs


# -- rows ---------------------------------------------------------------------------------------
class RowFailed(Exception):
    pass


class Runner:
    def __init__(
        self,
        uv: str,
        env: dict[str, str],
        wheel: Path,
        version: str,
        url: str,
        logs: Path,
        installer: str,
        pythons: dict[str, str],
        source: Path,
        pins: list[str],
    ) -> None:
        self.source, self.pins = source, pins
        self.uv, self.env, self.wheel, self.version, self.url = uv, env, wheel, version, url
        self.logs, self.installer, self.pythons = logs, installer, pythons

    def sh(self, log, cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
        shown = ["uv", *cmd[1:]] if cmd[0] == self.uv else cmd
        log.write(f"$ {' '.join(shown)}\n")
        log.flush()
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            env=env or self.env,
            cwd=cwd or self.source,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=ROW_TIMEOUT,
            check=False,
        )
        log.write(proc.stdout)
        log.write(f"-> exit {proc.returncode} in {time.monotonic() - t0:.1f} s\n")
        log.flush()
        if proc.returncode != 0:
            raise RowFailed(
                f"`{' '.join(Path(c).name for c in shown[:3])} ...` exited {proc.returncode}"
            )
        return proc.stdout

    def versions(self, log, venv: Path, extra: str) -> dict[str, str]:
        out = self.sh(log, [self.uv, "pip", "list", "--python", str(venv), "--format", "json"])
        have = {p["name"].lower(): p["version"] for p in json.loads(out[out.index("[") :])}
        return {name: have[name] for name in SHOWN[extra] if name in have}

    def run(self, row: Row) -> Row:
        t0 = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"runbridge-matrix-{row.name}-"))
        with open(self.logs / f"{row.name}.log", "w", encoding="utf-8") as log:
            try:
                if row.extra == "core-tests":
                    self.core_tests(row, work, log)
                else:
                    self.wheel_row(row, work, log)
                row.ok = True
            except (RowFailed, subprocess.TimeoutExpired) as exc:
                row.ok = False
                row.note = str(exc).splitlines()[0][:200]
                log.write(f"FAILED: {exc}\n")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        row.seconds = time.monotonic() - t0
        return row

    def wheel_row(self, row: Row, work: Path, log) -> None:
        venv = work / "venv"
        python = self.pythons[row.python]
        pip = self.installer == "pip" and row.resolution == "newest"
        seed = ["--seed"] if pip else []
        self.sh(log, [self.uv, "venv", "--quiet", *seed, "--python", python, str(venv)])
        target = f"runbridge[{row.extra}] @ {self.wheel.as_uri()}"
        if row.extra == "core":
            target = f"runbridge @ {self.wheel.as_uri()}"
        vpy = str(venv / "bin" / "python")
        if pip:
            pip_install = [vpy, "-m", "pip", "install", "--disable-pip-version-check"]
            self.sh(log, [*pip_install, target, *self.pins])
        else:
            cmd = [self.uv, "pip", "install", "--python", vpy, target, *self.pins]
            if row.resolution == "as-released":
                floor, released = AS_RELEASED[row.extra]
                declared = declared_requirements(self.wheel, row.extra)
                if f"{row.extra}>={floor}" not in declared:
                    raise RowFailed(f"AS_RELEASED[{row.extra!r}] is for {floor}: {declared}")
                cmd += [*declared, "--resolution", "lowest-direct", "--exclude-newer", released]
            if row.resolution == "floor":
                extra = "" if row.extra == "core" else row.extra
                cmd += [*declared_requirements(self.wheel, extra), "--resolution", "lowest-direct"]
            self.sh(log, cmd)
        row.versions = self.versions(log, venv, row.extra)
        env = {k: v for k, v in self.env.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        smoke = [vpy, str(ROOT / "tools" / "smoke.py"), row.extra]
        self.sh(log, [*smoke, "--url", self.url, "--version", self.version], env=env, cwd=work)
        if row.extra in PIN_TESTS:
            self.pin_tests(row, work, venv, env, log)

    def pin_tests(self, row: Row, work: Path, venv: Path, env: dict[str, str], log) -> None:
        """The extra's PIN_TESTS, from this checkout's tests, against the row's installation.

        pytest and the ``testing`` extra (the tests' emulators) are added, constrained to what
        the row installed, which must not change. The tests run from a copy of their folders
        (no ``runbridge`` beside them), so ``runbridge`` is the installed wheel's, without
        their folders' conftest fixtures (none needs one; test_masking.py imports its
        conftest as a module, which points Airflow at a temporary home)."""
        vpy = str(venv / "bin" / "python")
        frozen = self.sh(log, [self.uv, "pip", "freeze", "--python", vpy])
        constraints = work / "constraints.txt"
        kept = [
            line
            for line in frozen.splitlines()
            if re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*==", line) and not line.startswith("runbridge")
        ]
        constraints.write_text("\n".join(kept) + "\n", encoding="utf-8")
        target = f"runbridge[testing] @ {self.wheel.as_uri()}"
        self.sh(
            log,
            [self.uv, "pip", "install", "--python", vpy, "-c", str(constraints), target, "pytest"],
        )
        after = self.versions(log, venv, row.extra)
        if after != row.versions:
            raise RowFailed(f"installing pytest changed the row's versions: {after}")
        pins = work / "pins"
        (pins / "tests").mkdir(parents=True)
        shutil.copy(self.source / "tests" / "__init__.py", pins / "tests")
        for folder in sorted({test.split("/")[1] for test in PIN_TESTS[row.extra]}):
            shutil.copytree(
                self.source / "tests" / folder,
                pins / "tests" / folder,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        (pins / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
        home = work / "home"
        env = dict(
            env,
            AIRFLOW_HOME=str(home / "airflow"),  # a temporary home, as tests/airflow wants
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            DAGSTER_HOME=str(home / "dagster"),
            PREFECT_HOME=str(home / "prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
            # the flows start Prefect's temporary server: allow a busy machine
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        )
        (home / "dagster").mkdir(parents=True)
        env.pop("PREFECT_API_URL", None)
        pytest = [vpy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-rs"]
        out = self.sh(log, [*pytest, *PIN_TESTS[row.extra]], env=env, cwd=pins)
        # pytest's last line, "7 passed in 9.1s" (an atexit log of the orchestrator may follow)
        ends = re.findall(r"^=*\s*(\d+ \w+.* in [\d.]+s\b.*?)=*$", out, re.M)
        summary = ends[-1].strip() if ends else ""
        if " passed" not in summary or "skipped" in summary:
            raise RowFailed(f"pin tests did not all pass: {summary}")
        row.note = "pins: " + summary.strip("= ")

    def core_tests(self, row: Row, work: Path, log) -> None:
        venv = work / "venv"
        env = dict(self.env, UV_PROJECT_ENVIRONMENT=str(venv))
        sync = [self.uv, "sync", "--locked", "--no-default-groups", "--group", "test"]
        sync += ["--extra", "testing", "--python", self.pythons[row.python]]
        self.sh(log, sync, env=env)
        row.versions = self.versions(log, venv, "core-tests")
        pytest = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        out = self.sh(log, [*pytest, *CORE_TESTS], env=env)
        tail = [line for line in out.splitlines() if " passed" in line or " failed" in line]
        row.note = tail[-1].strip("= ") if tail else ""


# -- the emulator the rows talk to --------------------------------------------------------------
class Emulator:
    """`runbridge emulate langgraph` from the project's environment, for the whole matrix."""

    def __init__(self, uv: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [uv, "run", "--no-sync", "runbridge", "emulate", "langgraph", "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = ""
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline and not self.url:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "listening on" in line:
                self.url = line.split("listening on", 1)[1].split()[0]
        if not self.url:
            self.close()
            raise dev.DevError("the LangGraph emulator did not start:\n" + "".join(lines))
        # drain its output so it never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the report ---------------------------------------------------------------------------------
def describe_source(rev: str | None) -> str:
    """Which code was tested: a commit, or the work tree (with its base commit)."""

    def git(*cmd: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    if rev:
        return f"commit {git('rev-parse', '--short', rev) or rev}"
    base = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"the work tree at {base}" + (" with uncommitted changes" if dirty else "")


def render(rows: list[Row], args: argparse.Namespace, context: dict[str, str], wall: float) -> str:
    def fmt(row: Row) -> str:
        return ", ".join(f"{k} {v}" for k, v in row.versions.items())

    installer = "pip" if args.installer == "pip" else "`uv pip install`"
    lines = [
        "# Compatibility",
        "",
        "Generated by `python3 dev.py matrix` (tools/matrix.py); do not edit by hand. Each row",
        "installs `runbridge[EXTRA]` from the wheel built from this checkout into a fresh virtual",
        "environment with plain resolution (no lock), then runs the extra's smoke scenario",
        "(tools/smoke.py) against the LangGraph emulator: launch and wait to success and to",
        "failure, through the CLI and the client, and through the orchestrator (Airflow:",
        "`airflow providers list` shows the provider, `dag.test()` of a DAG with",
        "`LaunchRunOperator`; Prefect: `prefect block register -m runbridge.prefect_blocks` and a",
        "flow with `launch_and_wait`; Dagster: `dagster definitions validate` and",
        "materializations). `core` also checks that no orchestrator is importable; `all` runs the",
        "emulator and the three orchestrators' scenarios in one environment. Then the rows of",
        "`core`, `airflow`, `prefect` and `dagster` run the tests that pin what runbridge uses",
        "outside that dependency's public API, from this checkout, with pytest added (constrained",
        "to what the row installed): "
        + "; ".join(f"`{extra}`: {', '.join(tests)}" for extra, tests in PIN_TESTS.items())
        + " (the result's note says how many passed).",
        "",
        "- **floor**: the extra's declared requirements given as direct requirements with",
        "  `uv pip install --resolution lowest-direct`, so every declared lower bound is installed",
        "  exactly (the rest at the newest);",
        f"- **newest**: the newest releases on the index for that Python, installed with {installer};",
        "- **as-released**: a floor that does not run when resolved today, resolved as of the day",
        "  after its release (`--exclude-newer`), to show that runbridge itself works with it;",
        "- **core-tests**: the core unit tests and the CLI tests of this checkout, with the",
        "  locked `test` dependency group and the `testing` extra.",
        "",
        f"Tested: {context['source']}, runbridge {context['version']}, on "
        f"{datetime.date.today().isoformat()}; Linux {platform.machine()}, uv {context['uv']}, "
        f"{context['pythons']}; {args.jobs} rows at a time on {os.cpu_count()} CPUs, "
        f"{wall / 60:.1f} min in all (times include installing, and other work on the machine).",
        "",
        "| extra | resolution | Python | installed | result | time |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        result = row.outcome if row.outcome != "FAIL" else "**FAIL**"
        if row.expected_failure:
            result += f": {row.expected_failure}"
        elif row.note:
            result += f" ({row.note})"
        lines.append(
            f"| {row.extra} | {row.resolution} | {row.python} | {fmt(row)} | {result} "
            f"| {row.seconds:.0f} s |"
        )
    lines += [
        "",
        "## Notes on the declared ranges",
        "",
        "- The floors (`runbridge`: httpx 0.27, click 8.1, rich 13; `testing`: starlette 0.37,",
        "  uvicorn 0.29; `airflow`: Airflow 3.3.0 with task SDK 1.3.0; `prefect`: Prefect 3.4;",
        "  `dagster`: Dagster 1.11.0) are what the floor rows install. Prefect's is known not to",
        "  run when resolved today (an expected failure above, not counted): Prefect releases",
        "  before 3.9 do not cap FastAPI, and FastAPI 0.155 and later break them. Prefect 3.4.0",
        "  works as it was released (the as-released rows). The floor is kept at 3.4 so that",
        "  `pip install 'runbridge[prefect]'` leaves an existing working Prefect alone; raising it to",
        "  3.9 would also make `runbridge[all]` uninstallable beside Airflow 3.3 (FastAPI < 0.137).",
        "  See docs/prefect.md.",
        "- On Python 3.10 the newest Prefect is 3.8.x (3.9 needs Python 3.11), so the `prefect`",
        "  extra adds `fastapi<0.155` there; without it the newest rows on 3.10 fail.",
        "- `all` resolves Prefect 3.7.x beside Airflow 3.3 (FastAPI < 0.137), as the lock does.",
        "",
        "The CI subset (`python3 tools/matrix.py --ci`, the last step of `python3 dev.py test`):",
        "core-tests on the oldest and newest Python, core and dagster at their floors on the",
        "oldest Python, and each extra at its newest on the newest Python, installed with",
        "`uv pip install`.",
        "",
    ]
    return "\n".join(lines)


def select_rows(args: argparse.Namespace, pythons: list[str]) -> list[Row]:
    oldest, newest = pythons[0], pythons[-1]
    if args.ci:
        rows = [Row("core-tests", "lock", oldest), Row("core-tests", "lock", newest)]
        rows += [Row("core", "floor", oldest), Row("dagster", "floor", oldest)]
        rows += [Row(extra, "newest", newest) for extra in EXTRAS[1:]]
    else:
        rows = [Row("core-tests", "lock", py) for py in (oldest, newest)]
        rows += [
            Row(extra, resolution, py)
            for extra in EXTRAS
            for resolution in (*RESOLUTIONS, *(["as-released"] if extra in AS_RELEASED else []))
            for py in (oldest, newest)
        ]
        rows += [Row("all", "newest", py) for py in (oldest, newest)]
    for row in rows:
        if row.resolution == "floor" and row.extra in KNOWN_BROKEN_FLOORS:
            row.expected_failure = KNOWN_BROKEN_FLOORS[row.extra]
    if args.only:
        wanted = re.compile(args.only)
        rows = [row for row in rows if wanted.search(row.name)]
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/matrix.py", description=__doc__.split("\n\n")[0].strip()
    )
    parser.add_argument("--ci", action="store_true", help="only the rows CI runs")
    parser.add_argument("--only", metavar="REGEX", help="only rows whose name matches")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--installer",
        choices=["uv", "pip"],
        help="installer of the newest rows: pip as users run it (the default of the full "
        "matrix) or `uv pip` (the default with --ci/--only: the same resolution, in seconds); "
        "floor rows always use uv (--resolution lowest-direct)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write {DOC.relative_to(ROOT)} (the default without --ci/--only)",
    )
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--logs", type=Path, help="row logs here (default: a temp dir)")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument(
        "--rev",
        metavar="COMMIT",
        help="build and test this commit (git archive) instead of the work tree",
    )
    parser.add_argument(
        "--with",
        dest="pins",
        action="append",
        default=[],
        metavar="REQ",
        help="an extra requirement for every wheel row, e.g. prefect==3.6.0 (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.installer is None:
        args.installer = "uv" if (args.ci or args.only) else "pip"
    try:
        pythons = claimed_pythons()
        pythons = [pythons[0], pythons[-1]]
        rows = select_rows(args, pythons)
        if args.list:
            print("\n".join(row.name for row in rows))
            return 0
        if not rows:
            raise dev.DevError("no rows selected")
        uv = os.environ.get("RUNBRIDGE_UV") or dev.find_uv()
        env = dev.child_env(uv)
        found = {py: find_python(py) for py in pythons}
        for py, exe in found.items():
            say(f"Python {py}: {exe}")
        logs = args.logs or Path(tempfile.mkdtemp(prefix="runbridge-matrix-logs-"))
        logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="runbridge-matrix-dist-") as dist:
            source = export(args.rev, Path(dist) / "src") if args.rev else ROOT
            wheel, version = build(uv, env, source, Path(dist))
            emulator = Emulator(uv, env)
            try:
                runner = Runner(
                    uv,
                    env,
                    wheel,
                    version,
                    emulator.url,
                    logs,
                    args.installer,
                    found,
                    source,
                    args.pins,
                )
                say(f"{len(rows)} rows, {args.jobs} at a time; logs in {logs}")
                with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
                    for row in pool.map(runner.run, rows):
                        status = {"pass": "ok  ", "FAIL": "FAIL"}.get(row.outcome, "note")
                        detail = ", ".join(f"{k} {v}" for k, v in row.versions.items())
                        say(
                            f"{status} {row.name:<28} {row.seconds:6.1f} s  {detail}"
                            + (f"  [{row.note}]" if row.note else "")
                        )
            finally:
                emulator.close()
        wall = time.monotonic() - t0
    except dev.DevError as exc:
        print(f"matrix: error: {exc}", file=sys.stderr)
        return 2
    failed = [row for row in rows if not row.passed]
    for row in failed:
        log = (logs / f"{row.name}.log").read_text(encoding="utf-8")
        print(f"\n----- {row.name}: last lines of {logs / (row.name + '.log')}")
        print("\n".join(log.splitlines()[-60:]))
    say(f"{len(rows) - len(failed)} passed, {len(failed)} failed in {wall:.1f} s")
    if (args.write or not (args.ci or args.only)) and not args.no_write:
        context = {
            "source": describe_source(args.rev),
            "version": version,
            "uv": dev.uv_version(uv) or "?",
            "pythons": ", ".join(
                "Python " + ".".join(map(str, sys_version(exe))) for exe in found.values()
            ),
        }
        DOC.write_text(render(rows, args, context, wall), encoding="utf-8")
        say(f"wrote {DOC.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
