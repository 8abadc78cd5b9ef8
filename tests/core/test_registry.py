"""Platforms by name, including a third-party provider found through its entry point."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runbridge import ConfigError, RunClient, available, get_provider_class
from runbridge.core import registry
from runbridge.core.providers.langgraph import LangGraph


@pytest.fixture
def third_party(tmp_path: Path) -> Iterator[str]:
    """An installed distribution (a dist-info on sys.path) declaring a provider entry point."""
    (tmp_path / "acme_runs.py").write_text(
        textwrap.dedent(
            """
            from runbridge import Provider, Request, RunState, RunStatus

            class Acme(Provider):
                name = "acme"
                states = {"ok": RunState.SUCCEEDED}

                def __init__(self, *, region: str = "eu") -> None:
                    self.region = region

                def status(self, ref):
                    response = yield Request("GET", f"/{self.region}/runs/{ref.id}")
                    raw = self.decipher(response)["state"]
                    return RunStatus(ref, self.map_state(raw), raw)
            """
        )
    )
    info = tmp_path / "acme_runs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-runs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[runbridge.providers]\nacme = acme_runs:Acme\nbroken = acme_runs:Missing\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield "acme"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("acme_runs", None)
        registry._registered.pop("acme", None)


def test_builtins_are_available() -> None:
    names = available()
    assert {"langgraph", "rest"} <= set(names)
    assert get_provider_class("langgraph") is LangGraph


def test_a_third_party_provider_is_found_by_its_entry_point(third_party: str) -> None:
    assert third_party in available()
    cls = get_provider_class(third_party)
    assert cls.__name__ == "Acme"
    with RunClient(third_party, "http://127.0.0.1:9", region="us") as client:
        assert client.provider.region == "us"  # type: ignore[attr-defined]
        assert client.ref("r1").platform == "acme"


def test_a_broken_entry_point_is_a_config_error(third_party: str) -> None:
    with pytest.raises(ConfigError, match="cannot load provider 'acme_runs:Missing'"):
        get_provider_class("broken")


def test_unknown_platform_lists_what_exists() -> None:
    with pytest.raises(ConfigError, match=r"unknown platform 'nope'; available: .*langgraph"):
        get_provider_class("nope")


def test_the_package_exports_exactly_the_core_public_names() -> None:
    import runbridge
    import runbridge.core

    assert set(runbridge.__all__) - {"__version__"} == set(runbridge.core.__all__)
    for name in runbridge.core.__all__:
        assert getattr(runbridge, name) is getattr(runbridge.core, name)


def test_importing_the_package_alone_loads_no_http_stack() -> None:
    import subprocess

    code = (
        "import sys, runbridge; "
        "print(sorted(m for m in ('httpx', 'runbridge.core', 'airflow', 'prefect', 'dagster') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
