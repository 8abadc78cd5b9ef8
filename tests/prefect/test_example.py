"""examples/prefect/nightly_agents.py runs as documented, against the LangGraph emulator."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runbridge import RunState

from .conftest import TOKEN

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prefect" / "nightly_agents.py"


def test_the_example_flow_runs(langgraph_emu, monkeypatch):
    monkeypatch.setenv("RUNBRIDGE_URL", langgraph_emu.base_url)
    monkeypatch.setenv("LANGGRAPH_API_KEY", TOKEN)
    spec = importlib.util.spec_from_file_location("nightly_agents_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    statuses = example.nightly_agents(["pricing", "churn"])
    assert set(statuses) == {"pricing", "churn", "summary"}
    assert {s.state for s in statuses.values()} == {RunState.SUCCEEDED}
    assert len(langgraph_emu.launches) == 3
