"""Platforms by name: the built-ins, plus third-party providers registered through the
entry-point group ``runbridge.providers`` (``name = "package.module:ProviderClass"``)."""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError
from .providers.base import Provider

__all__ = ["available", "create_provider", "get_provider_class", "refresh", "register"]

ENTRY_POINT_GROUP = "runbridge.providers"

_BUILTIN: dict[str, str] = {
    "langgraph": "runbridge.core.providers.langgraph:LangGraph",
    "rest": "runbridge.core.providers.rest:RestProvider",
    "flyte": "runbridge.core.providers.flyte:Flyte",
    "wandb": "runbridge.core.providers.wandb:WandB",
    "vi": "runbridge.core.providers.vi:Vi",
    "lume": "runbridge.core.providers.lume:Lume",
}
_registered: dict[str, type[Provider]] = {}


def register(cls: type[Provider], name: str | None = None) -> type[Provider]:
    """Register a provider class (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise ConfigError(f"{cls!r} is not a runbridge Provider subclass")
    _registered[name or cls.name] = cls
    return cls


_scanned: tuple[tuple[str, ...], dict[str, str]] | None = None
"""The last entry-point scan and the ``sys.path`` it was made for."""


def _entry_points() -> dict[str, str]:
    """Third-party providers by name. Scanning installed distributions costs tens of ms, and
    ``available()`` is asked for every reference string read, so the scan is kept until
    ``sys.path`` changes (or :func:`refresh` is called, after installing a package into a
    directory already on it)."""
    global _scanned
    path = tuple(sys.path)
    scanned = _scanned
    if scanned is None or scanned[0] != path:
        found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
        scanned = _scanned = (path, found)
    return dict(scanned[1])


def refresh() -> None:
    """Forget the entry-point scan: the next lookup scans installed distributions again."""
    global _scanned
    _scanned = None


def available() -> list[str]:
    """Every platform name that can be used."""
    return sorted({*_BUILTIN, *_registered, *_entry_points()})


def get_provider_class(name: str) -> type[Provider]:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        raise ConfigError(f"unknown platform {name!r}; available: {', '.join(available())}")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"platform {name!r}: cannot load provider {target!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Provider)):
        raise ConfigError(f"platform {name!r}: {target!r} is not a runbridge Provider subclass")
    _registered[name] = obj
    return obj


def create_provider(name: str, **options: Any) -> Provider:
    """Build a provider, turning an unknown option into a ConfigError that names it."""
    cls = get_provider_class(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"platform {name!r}: bad options {sorted(options)}: {exc}") from None
