"""examples/dagster: it loads in `dagster definitions validate`, and its asset materializes
against the W&B emulator as the README shows."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import dagster as dg
import pytest

from runbridge.testing import Relay, Script, create_emulator
from tests.dagster.conftest import write_instance_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dagster" / "definitions.py"


def load_example(monkeypatch: pytest.MonkeyPatch, url: str) -> ModuleType:
    monkeypatch.setenv("RUNBRIDGE_URL", url)
    monkeypatch.setenv("WANDB_API_KEY", "local-dev")
    spec = importlib.util.spec_from_file_location("runbridge_dagster_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_materializes_against_the_emulator(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = relay.swap(create_emulator("wandb"))
    emu.script(
        Script(
            [("pending", 0.05), ("running", 0.1)],
            final="finished",
            outputs={"val_loss": 0.2, "accuracy": 0.9},
        )
    )
    example = load_example(monkeypatch, emu.base_url)
    defs: dg.Definitions = example.defs
    # the resource's fields are the client's configuration, error_window included
    config = example.wandb.client_config()
    assert config.error_window == 1800 and config.token == "local-dev"
    resource = defs.resources["external_run"].model_copy(
        update={"poll_interval": 0.05, "poll_max_interval": 0.1}
    )
    result = dg.materialize([example.model], resources={"external_run": resource})
    metadata = result.asset_materializations_for_node("model")[0].metadata
    assert metadata["output/summary.val_loss"] == dg.MetadataValue.float(0.2)
    assert emu.launches and len(emu.launches) == 1
    relay.target = None


def test_example_definitions_validate_with_the_dagster_cli(tmp_path: Path) -> None:
    dagster = Path(sys.executable).with_name("dagster")
    write_instance_config(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-f", str(EXAMPLE.relative_to(ROOT))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful" in done.stdout + done.stderr
