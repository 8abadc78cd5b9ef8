"""Every code sample in README.md and docs/ runs as written, so the docs cannot rot.

The samples are the fenced blocks of the Markdown files:

- ``python``: the blocks of one file run in order, in one namespace, in a fresh interpreter
  (a reader pastes them one after the other); a ``test_*`` function a block defines is then
  called. Tracebacks name the Markdown file and line. What a file's samples take for granted
  (an emulator on the port they name, a Prefect API for ``.save()``/``.load()``) is set
  up first: see :data:`SCENES`. Airflow, Prefect and Dagster homes are temporary. The samples
  that need a Prefect API (a file's Python samples, a shell sample running ``prefect`` or a
  Prefect example) share one Prefect server, started once for this module: each starting its
  own cost a minute of migrations on a loaded machine. Prefect's own temporary server, which a
  sample starts when no API is set, is what tools/smoke.py's Prefect scenario runs into;
- ``sh``: each block runs with ``bash -euo pipefail`` from the repository root, with the
  project's environment first on PATH. A ``pip install`` line is not run: the extras it names
  must exist. After a line that backgrounds a server on ``--port N`` the harness waits for
  that port, as a reader would, and background jobs are stopped at the end;
- other fences (``json``, ``graphql``, plain) are protocol illustrations and output, with
  ``...`` elisions and request lines: not run.

Loopback ports the samples name (``127.0.0.1:2024``, ``--port 2024``) are replaced with free
ports, the same one for the same port throughout a file (another process may hold 2024 on a
shared machine); a shell sample that serves an emulator also gets ``RUNBRIDGE_URL`` for it,
the variable the examples it runs read. A sample that cannot run here (it needs a live platform or orchestrator server, the network,
or minutes) is marked in its Markdown with ``<!-- no-test: the reason -->`` on the line before
its fence; a marker without a reason is an error. :data:`SKIPS` holds the same for files whose
owners have not marked them yet, keyed by the sample's first line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<lang>[\w+-]*)[^\n]*$")
MARKER = re.compile(r"^\s*<!--\s*no-test\b(?P<rest>.*?)-->\s*$")
EXTRAS = re.compile(r"runbridge\[(?P<extras>[^\]]*)\]")
# A loopback port a sample names (`http://127.0.0.1:2024`, `--port 2024`): the tests use a free
# port in its place, so a port taken on a shared machine cannot fail them.
PORT = re.compile(r"(?P<lead>(?:127\.0\.0\.1|localhost):|--port[ =])(?P<port>\d{4,5})\b")
SAMPLE_TIMEOUT = 240
PREFECT_STARTUP_TIMEOUT = 240
# A shell sample that talks to a Prefect API: a `prefect` command or a Prefect example.
USES_PREFECT = re.compile(r"^\s*prefect\s|examples/prefect/", re.M)
# A shell sample that runs runbridge's own suites (the deployments take minutes, the reliability
# matrix hours): its Markdown must mark it no-test, not leave it to this module to run.
RUNS_SUITES = re.compile(
    r"dev\.py\b|tools/(?:reliability|matrix)\.py|-m pytest\b|\bpytest\s|\bbench/\w+\.py"
)


@dataclasses.dataclass(frozen=True)
class Sample:
    path: str  # relative to the repository root
    line: int  # 1-based line of the first line of code
    lang: str
    code: str
    skip: str | None  # the reason, from a marker or SKIPS
    xfail: str | None = None  # known to fail (XFAIL): why, and whose it is to fix

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


# Samples known to fail, until their owners update them: (path, first line) -> why. The file's
# other samples still run; such a sample must fail (one that runs again must leave this table).
XFAIL: dict[tuple[str, str], str] = {}

# Samples in files this suite does not own the text of, not runnable here: (path, first line)
# -> reason. Prefer a `<!-- no-test: reason -->` marker in the Markdown itself.
SKIPS: dict[tuple[str, str], str] = {
    (
        "docs/benchmarks.md",
        ".venv/bin/python bench/concurrent_waits.py                # N=5000, 5 s interval: about 4 min",
    ): "the benchmarks take minutes of both cores; run by hand",
    (
        "docs/platforms/langgraph.md",
        "from runbridge.testing import Script, serve",
    ): "a fragment: uses the vendor SDK's get_sync_client and names (thread_id, run_id) it does not define",
    (
        "docs/platforms/lume.md",
        "from runbridge.core.webhooks import parse_delivery",
    ): "a fragment of a web handler: client, raw_body, headers and the secret come from it",
    (
        "docs/platforms/lume.md",
        "from runbridge import Inbox, PollSchedule, RunClient",
    ): "a fragment of a web handler: url, token, raw_body, headers and the secret come from it",
    (
        "docs/platforms/wandb.md",
        'client = RunClient("wandb", "https://api.wandb.ai", token=API_KEY)',
    ): "talks to api.wandb.ai (no network here)",
    (
        "docs/platforms/wandb.md",
        'client = RunClient("wandb", url, token=key, require=["val_loss < 0.2", "eval.accuracy >= 0.9"])',
    ): "a fragment: url and key are the reader's",
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one file's Python samples take for granted."""

    serve: dict[str, int] = dataclasses.field(default_factory=dict)  # platform -> port
    prefect_server: bool = False


SCENES: dict[str, Scene] = {
    # the tour talks to a LangGraph deployment on 127.0.0.1:2024
    "README.md": Scene(serve={"langgraph": 2024}),
    # the credentials and job blocks are saved and loaded
    "docs/prefect.md": Scene(prefect_server=True),
}


def parse(path: Path) -> list[Sample]:
    rel = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    samples: list[Sample] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        end = i + 1
        while end < len(lines) and not re.match(rf"^ *{re.escape(fence)}\s*$", lines[end]):
            end += 1
        body = textwrap.dedent("\n".join(line[indent:] for line in lines[i + 1 : end]))
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = None
        if marker := MARKER.match(prev):
            skip = marker["rest"].lstrip(" :").strip() or "<no reason given>"
        first = next((line for line in body.splitlines() if line.strip()), "")
        key = (rel, first.rstrip())
        skip = skip or SKIPS.get(key)
        lang = (match["lang"] or "").lower()
        samples.append(Sample(rel, i + 2, lang, body + "\n", skip, XFAIL.get(key)))
        i = end + 1
    return samples


ALL = [sample for path in DOCS for sample in parse(path)]
BY_LANG = {
    lang: [s for s in ALL if s.lang in aliases]
    for lang, aliases in {
        "python": ("python", "py", "pycon"),
        "sh": ("sh", "bash", "shell", "console"),
    }.items()
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_free_ports(code: str, ports: dict[str, str]) -> str:
    """``code`` with each loopback port it names replaced (``ports`` maps old to new)."""

    def swap(match: re.Match[str]) -> str:
        new = ports.setdefault(match["port"], str(free_port()))
        return match["lead"] + new

    return PORT.sub(swap, code)


def _params(samples: list[Sample]) -> list[object]:
    return [
        pytest.param(s, id=s.id, marks=[pytest.mark.skip(reason=s.skip)] if s.skip else [])
        for s in samples
    ]


# -- the markers --------------------------------------------------------------------------------
def test_the_docs_have_samples() -> None:
    assert len(BY_LANG["python"]) >= 20 and len(BY_LANG["sh"]) >= 8


def test_every_no_test_marker_gives_a_reason_and_precedes_a_fence() -> None:
    problems = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        for n, line in enumerate(lines):
            marker = MARKER.match(line)
            if not marker:
                continue
            where = f"{path.relative_to(ROOT)}:{n + 1}"
            if not marker["rest"].lstrip(" :").strip():
                problems.append(f"{where}: a no-test marker without a reason")
            following = next((x for x in lines[n + 1 :] if x.strip()), "")
            if not FENCE.match(following):
                problems.append(f"{where}: a no-test marker not followed by a code fence")
    assert not problems, "\n".join(problems)


def test_every_skip_entry_still_names_a_sample() -> None:
    firsts = {
        (s.path, next((x for x in s.code.splitlines() if x.strip()), "").rstrip()) for s in ALL
    }
    assert not [key for key in [*SKIPS, *XFAIL] if key not in firsts], "stale entries"


# -- python -------------------------------------------------------------------------------------
RUNNER = r"""
import contextlib, json, sys, traceback

spec = json.load(open(sys.argv[1], encoding="utf-8"))
failed = {}
with contextlib.ExitStack() as stack:
    for platform, port in spec["serve"].items():
        from runbridge.testing import serve
        stack.enter_context(serve(platform, port=port))
    namespace = {"__name__": "__doc_samples__"}
    called = set()
    for block in spec["blocks"]:
        where = f"{block['path']}:{block['line']}"
        print(f"--- {where}", flush=True)
        try:
            # blank lines first, so a traceback shows the Markdown file's own line numbers
            code = compile("\n" * (block["line"] - 1) + block["code"], block["path"], "exec")
            exec(code, namespace)
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value) and name not in called:
                    called.add(name)
                    print(f"--- calling {name}()", flush=True)
                    value()
        except BaseException:  # the next samples still run, as far as they can
            failed[where] = traceback.format_exc()
            print(failed[where], file=sys.stderr, flush=True)
print("--- results " + json.dumps(failed), flush=True)
"""


def _sandbox(tmp: Path) -> dict[str, str]:
    """The environment the samples run in: temporary orchestrator homes, no RUNBRIDGE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNBRIDGE_", "PREFECT_"))}
    for name in ("airflow", "prefect", "dagster"):
        (tmp / name).mkdir(exist_ok=True)
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp / 'airflow' / 'airflow.db'}",
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp / "prefect" / "storage"),
        PREFECT_SERVER_MEMO_STORE_PATH=str(tmp / "prefect" / "memo_store.toml"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        # `prefect` commands start a temporary server when no API is set; allow a busy machine
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        DAGSTER_HOME=str(tmp / "dagster"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect server (``prefect server start``, API only) for the samples that need one;
    yields its API URL. Its home and database are temporary."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-services", "--no-ui", "--analytics-off"]
    with open(home / "server.log", "wb") as log:
        proc = subprocess.Popen(
            command, cwd=home, env=_sandbox(home), stdout=log, stderr=subprocess.STDOUT
        )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + PREFECT_STARTUP_TIMEOUT
        while True:
            assert proc.poll() is None, "the Prefect server exited:\n" + _tail(home / "server.log")
            try:
                if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no Prefect server:\n" + _tail(home / "server.log")
            time.sleep(0.25)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-4000:]


PY_FILES = sorted({s.path for s in BY_LANG["python"]})


@pytest.mark.parametrize("path", PY_FILES)
def test_python_samples_run(path: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    blocks = [s for s in BY_LANG["python"] if s.path == path]
    runnable = [s for s in blocks if not s.skip]
    if not runnable:
        pytest.skip("every Python sample of this file is marked no-test")
    scene = SCENES.get(path, Scene())
    ports: dict[str, str] = {}
    spec = {
        "serve": {
            name: int(ports.setdefault(str(port), str(free_port())))
            for name, port in scene.serve.items()
        },
        "blocks": [
            dict(dataclasses.asdict(s), code=with_free_ports(s.code, ports)) for s in runnable
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = _sandbox(tmp_path)
    if scene.prefect_server:
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_api")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path / "spec.json")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=SAMPLE_TIMEOUT,
        check=False,
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("--- results ")]
    assert proc.returncode == 0 and results, (
        f"the samples of {path} did not run to the end\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr\n{proc.stderr[-6000:]}"
    )
    failed: dict[str, str] = json.loads(results[-1].removeprefix("--- results "))
    expected = {s.id: s.xfail for s in runnable if s.xfail}
    unexpected = {where: tb for where, tb in failed.items() if where not in expected}
    assert not unexpected, "\n".join(f"{where} failed:\n{tb}" for where, tb in unexpected.items())
    fixed = [where for where in expected if where not in failed]
    assert not fixed, f"known broken samples now run; remove them from XFAIL: {fixed}"
    if expected:
        pytest.xfail("; ".join(f"{where}: {why}" for where, why in expected.items()))


# -- sh -----------------------------------------------------------------------------------------
PORT_WAIT = """
for _ in $(seq 1 300); do
  (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && break
  sleep 0.1
done
"""


def shell_script(sample: Sample) -> str:
    """The sample, made runnable in a test: `pip install` checked instead of run, a wait for
    each backgrounded server's port, background jobs stopped at exit."""
    out = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    ports: dict[str, str] = {}
    code = with_free_ports(sample.code, ports)
    served = re.search(r"runbridge emulate \S+ --port[ =](\d+)", sample.code)
    if served:  # the examples a sample runs default to the port it names: tell them the new one
        out.append(f"export RUNBRIDGE_URL=http://127.0.0.1:{ports[served[1]]}")
    for line in code.splitlines():
        stripped = line.split(" #", 1)[0].strip()
        if stripped.startswith("pip install"):
            out.append(f": {shlex.quote(stripped)}  # checked, not run")
            continue
        out.append(line)
        if stripped.endswith("&") and (port := re.search(r"--port[ =](\d+)", stripped)):
            out.append(PORT_WAIT.format(port=port[1]))
    return "\n".join(out) + "\n"


def _declared_extras() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


@pytest.mark.parametrize("sample", _params(BY_LANG["sh"]))
def test_sh_sample_runs(sample: Sample, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    declared = _declared_extras()
    for match in EXTRAS.finditer(sample.code):
        named = {e.strip() for e in match["extras"].split(",")}
        assert named <= declared, f"{sample.id}: unknown extras {named - declared}"
    assert not RUNS_SUITES.search(sample.code), (
        f"{sample.id} runs runbridge's own suites or benchmarks (minutes to hours): mark it "
        "`<!-- no-test: the reason -->` in its Markdown"
    )
    env = _sandbox(tmp_path)
    if USES_PREFECT.search(sample.code):
        env["PREFECT_API_URL"] = request.getfixturevalue("prefect_api")
    proc = subprocess.run(
        ["bash", "-c", shell_script(sample)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SAMPLE_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{sample.id} exited {proc.returncode}\n{sample.code}\n--- stdout\n"
        f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
