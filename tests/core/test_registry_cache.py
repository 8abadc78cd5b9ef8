"""The entry-point scan behind ``available()`` is made once per ``sys.path``, not per lookup
(it took ~38 ms a call here, and every reference string read asks for it)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runbridge.core import registry
from runbridge.core.errors import ConfigError


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Counts real scans of installed distributions (the real ``entry_points``, counted)."""
    from importlib.metadata import entry_points as real

    calls: list[Any] = []

    def counted(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(registry, "entry_points", counted)
    registry.refresh()
    yield calls
    registry.refresh()


def test_available_scans_once_then_answers_from_the_scan(scans: list[Any]) -> None:
    first = registry.available()
    started = time.perf_counter()
    for _ in range(200):
        assert registry.available() == first
    per_call = (time.perf_counter() - started) / 200
    assert len(scans) == 1
    assert per_call < 0.002  # a scan costs tens of milliseconds


def test_a_changed_sys_path_or_refresh_scans_again(
    scans: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    registry.available()
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    registry.available()
    assert len(scans) == 2
    registry.refresh()
    registry.available()
    assert len(scans) == 3


def test_an_unknown_platform_still_lists_what_is_available(scans: list[Any]) -> None:
    with pytest.raises(ConfigError, match=r"unknown platform 'nope'; available: .*rest"):
        registry.get_provider_class("nope")
    with pytest.raises(ConfigError):
        registry.get_provider_class("nope")
    assert len(scans) == 1
