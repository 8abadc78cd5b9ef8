"""Connection probes: one short exchange per platform that proves a base URL and a token reach
the platform's API, by an answer only that API gives (not merely "some server answered").

A probe returns a sentence saying what proved it, or raises the ``errors.py`` class of what went
wrong: :class:`~runbridge.core.errors.AuthError` (the token), :class:`WrongAPI` (something
answered, but not the platform's API: a wrong base URL or path), anything else as the request
made it. :meth:`runbridge.core.config.ClientConfig.check_connection` runs them for every wrapper
(the Airflow hook's ``test_connection``...).

A provider may declare its own: a ``probe(self) -> Exchange[str]`` method wins over the table
here. Platforms whose API gives no such answer (``rest``, ``lume``) have none; the check then
looks up a run that does not exist and says that a wrong base path would answer the same.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import AuthError, PlatformError, PlatformUnavailable, ProtocolError, RunNotFound
from ..http import Exchange, Request, Response
from ..models import RunRef
from .base import Provider

__all__ = ["PROBE_ID", "WrongAPI", "probe"]

PROBE_ID = "runbridge-connection-test"
"""The id of the run that does not exist, looked up by probes (and the fallback check)."""


class WrongAPI(ProtocolError):
    """Something answered, but not as the platform's API would: a wrong base URL or path."""

    retryable = False


def probe(provider: Provider) -> Exchange[str] | None:
    """The provider's probe (its own ``probe`` method, else the built-in one), or None."""
    own = getattr(provider, "probe", None)
    if callable(own):
        exchange: Exchange[str] = own()
        return exchange
    for cls, make in _builtin().items():
        if isinstance(provider, cls):
            return make(provider)
    return None


def _builtin() -> dict[type[Provider], Callable[[Any], Exchange[str]]]:
    from .flyte import Flyte
    from .langgraph import LangGraph
    from .vi import Vi
    from .wandb import WandB

    return {LangGraph: _langgraph, WandB: _wandb, Flyte: _flyte, Vi: _vi}


def _langgraph(provider: Any) -> Exchange[str]:
    """``GET /info`` answers an Agent Server's ``flags`` (it needs no token), then a lookup of a
    run in a thread that does not exist must be refused as "not found" (it needs the token)."""
    response = yield Request("GET", "/info", retry=True)
    try:
        info = provider.decipher(response)
    except RunNotFound as exc:
        raise WrongAPI(f"GET /info: {exc}") from None
    if not isinstance(info, Mapping) or not isinstance(info.get("flags"), Mapping):
        raise WrongAPI("GET /info did not answer an Agent Server's information (no 'flags')")
    ref = RunRef(provider.name, str(uuid.uuid4()), {"thread_id": str(uuid.uuid4())})
    try:
        yield from provider.status(ref)
    except RunNotFound:
        pass
    version = info.get("version")
    server = f"Agent Server {version}" if isinstance(version, str) else "an Agent Server"
    return f"{server} answered /info, and a lookup with the token was answered"


def _wandb(provider: Any) -> Exchange[str]:
    """The GraphQL ``viewer``: who the API key belongs to (null when it is refused)."""
    query = "query RunbridgeProbe { viewer { id username } }"
    request = provider._graphql(query, {}, "RunbridgeProbe")
    response = yield request
    try:
        data = provider._data(response)
    except RunNotFound as exc:
        raise WrongAPI(f"POST /graphql: {exc}") from None
    viewer = data.get("viewer")
    if not isinstance(viewer, Mapping):
        raise AuthError(
            "W&B answered no viewer for this API key",
            platform=provider.name,
            status_code=response.status_code,
        )
    name = viewer.get("username")
    return f"the W&B GraphQL API knows the API key (user {name!r})"


def _flyte(provider: Any) -> Exchange[str]:
    """``GetRunDetails`` of a run that does not exist (in the provider's project and domain when
    set): a Connect error body (``not_found``, or ``invalid_argument`` for a project that does
    not exist) is an answer only a Connect RunService gives; a bare 404 is no such service."""
    scope = {"project": provider.project or PROBE_ID, "domain": provider.domain or "development"}
    ref = RunRef(provider.name, PROBE_ID, scope)
    response = yield provider._unary("GetRunDetails", {"runId": provider._run_id(ref)}, retry=True)
    if provider._is_not_found(response):
        return "the RunService answered a lookup of a run that does not exist with not_found"
    try:
        provider.decipher(response)
    except (AuthError, PlatformUnavailable):
        raise
    except PlatformError as exc:
        code = _connect_code(response)
        if code is not None and code != "unimplemented":
            return f"the RunService answered a lookup of a run that does not exist ({code})"
        if exc.status_code in (404, 405) or code == "unimplemented":
            raise WrongAPI(f"RunService/GetRunDetails: {exc}") from None
        raise
    return "the RunService answered a lookup"


def _connect_code(response: Response) -> str | None:
    try:
        body = response.json()
    except ProtocolError:
        return None
    code = body.get("code") if isinstance(body, Mapping) else None
    return code if isinstance(code, str) else None


def _vi(provider: Any) -> Exchange[str]:
    """Listing one run of the organization: an answer of Vi's page shape."""
    try:
        runs = yield from provider.list_runs(limit=1)
    except RunNotFound as exc:
        raise WrongAPI(f"listing runs: {exc}") from None
    return f"listing the organization's runs works ({len(runs)} listed)"
