"""The built distributions: what `uv build` makes is what users install.

Builds the sdist and the wheel (the wheel from the sdist, as `uv build` does) once per module
and checks their metadata and contents. Whether each extra then installs and works on the
oldest and newest Python is the version matrix's job (tools/matrix.py, `python3 dev.py test`).
"""

from __future__ import annotations

import email
import email.message
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import runbridge

ROOT = Path(__file__).resolve().parents[1]
PROVIDERS = {"langgraph", "rest", "flyte", "wandb", "vi", "lume"}
SDIST_TOP = {
    "runbridge",
    "tests",
    "examples",
    "docs",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "pyproject.toml",
    "PKG-INFO",
    ".gitignore",  # hatchling force-includes it; building the wheel from the sdist reads it
}


def _uv() -> str:
    for candidate in (
        os.environ.get("RUNBRIDGE_UV"),
        shutil.which("uv"),
        str(ROOT / ".dev" / "bootstrap" / "bin" / "uv"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("no uv: run the tests through `python3 dev.py test`, or set RUNBRIDGE_UV")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, UV_PYTHON_DOWNLOADS="never")
    proc = subprocess.run(
        [_uv(), "build", "--out-dir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    yield out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (path,) = dist.glob("runbridge-*-py3-none-any.whl")
    return path


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    (path,) = dist.glob("runbridge-*.tar.gz")
    return path


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(zf.read(name))


def test_twine_check_strict_passes(dist: Path) -> None:
    files = sorted(str(p) for p in dist.iterdir() if p.name.endswith((".whl", ".tar.gz")))
    assert len(files) == 2, files
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_version_has_one_source(wheel: Path) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert not re.search(r"^version = ", pyproject, re.M)
    assert 'path = "runbridge/__init__.py"' in pyproject
    assert wheel.name.startswith(f"runbridge-{runbridge.__version__}-")
    assert _metadata(wheel)["Version"] == runbridge.__version__
    from click.testing import CliRunner

    from runbridge.cli import cli

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert runbridge.__version__ in result.output
    assert f"## [{runbridge.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_wheel_metadata(wheel: Path) -> None:
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    assert meta["Description-Content-Type"] == "text/markdown"
    assert meta.get_payload().startswith("# runbridge")
    classifiers = meta.get_all("Classifier") or []
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression
    pythons = [c.rsplit(" ", 1)[1] for c in classifiers if re.search(r"Python :: 3\.\d+$", c)]
    assert pythons and pythons[0] == "3.10"  # the oldest claimed is the requires-python floor
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"testing", "airflow", "prefect", "dagster", "all"} <= extras


def test_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        license_text = zf.read(f"{info}/licenses/LICENSE").decode()
    assert "runbridge/py.typed" in names
    assert "Apache License" in license_text and "Version 2.0" in license_text
    assert {n.split("/")[0] for n in names} == {"runbridge", info}, "only the package"
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    sections = dict(re.findall(r"^\[([^\]]+)\]\n((?:.+\n?)*)", entry_points, re.M))
    assert "runbridge = runbridge.cli:main" in sections["console_scripts"]
    assert (
        "provider_info = runbridge.airflow_provider.get_provider_info:get_provider_info"
        in sections["apache_airflow_provider"]
    )
    providers = {line.split(" = ")[0] for line in sections["runbridge.providers"].splitlines()}
    assert providers >= PROVIDERS


def test_sdist_holds_only_what_building_and_testing_need(sdist: Path) -> None:
    with tarfile.open(sdist) as tf:
        names = [m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name]
    top = {n.split("/")[0] for n in names}
    assert top == SDIST_TOP
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    hidden = [n for n in names if any(part.startswith(".") for part in n.split("/"))]
    assert hidden == [".gitignore"]
    assert "tests/langgraph_server/.venv" not in {"/".join(n.split("/")[:3]) for n in names}
    # Nothing git ignores (caches, environments, build output) and nothing outside the tree:
    # every file is tracked or a new file git would track.
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    known = set(listed.stdout.splitlines()) | {"PKG-INFO"}
    assert not [n for n in names if n not in known and not n.endswith("/")]


def test_the_matrix_ci_rows_cover_the_oldest_and_newest_python() -> None:
    if not (ROOT / "tools" / "matrix.py").exists():
        pytest.skip("tools/ is not in the sdist: the matrix runs from a checkout")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "matrix.py"), "--ci", "--list"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = proc.stdout.split()
    pythons = re.findall(r"Python :: (3\.\d+)\"", (ROOT / "pyproject.toml").read_text())
    oldest, newest = pythons[0], pythons[-1]
    assert {f"core-tests-lock-py{oldest}", f"core-tests-lock-py{newest}"} <= set(rows)
    assert f"core-floor-py{oldest}" in rows
    for extra in ("testing", "airflow", "prefect", "dagster"):
        assert f"{extra}-newest-py{newest}" in rows
