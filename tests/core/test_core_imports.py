"""``runbridge.core`` is lazy (PEP 562): importing it, or a light module of it, loads no HTTP
stack; every public name resolves, to the object its module defines, shown as ``runbridge.X``."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

import runbridge.core


def test_the_name_lists_agree() -> None:
    import runbridge

    assert set(runbridge.core.__all__) == set(runbridge.core._WHERE)
    assert set(runbridge.__all__) - {"__version__"} == set(runbridge.core.__all__)
    assert sorted(dir(runbridge.core)) == sorted({*dir(runbridge.core), *runbridge.core.__all__})


@pytest.mark.parametrize("name", sorted(runbridge.core._WHERE))
def test_each_name_is_its_modules_object(name: str) -> None:
    import importlib

    module = importlib.import_module(f"runbridge.core.{runbridge.core._WHERE[name]}")
    value = getattr(runbridge.core, name)
    assert value is getattr(module, name)
    # a generic alias (Exchange) passes isinstance(..., type) on Python 3.10: not a class
    if isinstance(value, type) and not isinstance(value, types.GenericAlias):
        assert value.__module__ == "runbridge", name


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        runbridge.core.Nope  # noqa: B018


@pytest.mark.parametrize(
    "code",
    [
        "import runbridge.core",
        "from runbridge.core.config import ClientConfig",
        "from runbridge.core.models import RunRef, RunStatus",
        "from runbridge.core import RunRef, RunState, ConfigError, PollSchedule",
    ],
)
def test_light_imports_load_no_http_stack(code: str) -> None:
    """What an Airflow trigger module imports on the triggerer's event loop stays light: the
    HTTP stack and the client come later (off the loop) or when a name needs them."""
    probe = (
        f"import sys; {code}; "
        "print(sorted(m for m in ('httpx', 'aiohttp', 'httpcore', 'runbridge.core.client', "
        "'runbridge.core.hub', 'runbridge.core.providers.rest') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_heavy_name_loads_its_module_when_used() -> None:
    probe = (
        "import sys, runbridge.core as c; assert 'runbridge.core.client' not in sys.modules; "
        "c.AsyncRunClient; print('runbridge.core.client' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
