"""``RunbridgeCredentials``: one platform connection, as a Prefect block."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from ..core.client import AsyncRunClient, RunClient
from ..core.registry import available

__all__ = ["DOCS_URL", "RunbridgeCredentials"]

DOCS_URL = "https://github.com/runbridge/runbridge/blob/main/docs/prefect.md"
"""Where the Prefect UI's "documentation" link of each runbridge block points."""


class RunbridgeCredentials(CredentialsBlock):
    """Connection to a platform that runbridge launches runs on: which platform, its base
    URL, the API token (kept secret) and the provider's options.

    Examples:
        Save the connection once (or create it in the Prefect UI):
        ```python
        from runbridge.prefect_blocks import RunbridgeCredentials

        RunbridgeCredentials(
            platform="langgraph",
            base_url="https://my-deployment.langgraph.app",
            token="lsv2_...",
        ).save("agents")
        ```

        Load it in a flow and launch a run:
        ```python
        from prefect import flow
        from runbridge.prefect_blocks import RunbridgeCredentials, launch_and_wait

        @flow
        def nightly():
            credentials = RunbridgeCredentials.load("agents")
            status = launch_and_wait(credentials, {"assistant_id": "agent", "input": {}})
            return status.outputs
        ```
    """

    _block_type_name: ClassVar[str | None] = "Runbridge Credentials"
    _block_type_slug: ClassVar[str | None] = "runbridge-credentials"
    _documentation_url: ClassVar[Any] = DOCS_URL
    _description: ClassVar[str | None] = (
        "A connection to a platform that runbridge launches runs on (LangGraph Platform, Flyte, "
        "W&B Launch, any JSON run API...): platform, base URL, API token and provider options."
    )

    platform: str = Field(
        default=...,
        description=(
            "The platform's runbridge provider: langgraph, rest, flyte, wandb, vi, lume, or one "
            "registered through the `runbridge.providers` entry point."
        ),
        examples=["langgraph"],
    )
    base_url: str = Field(
        default=...,
        title="Base URL",
        description="The platform API's base URL, e.g. https://my-deployment.langgraph.app.",
    )
    token: SecretStr | None = Field(
        default=None,
        title="API token",
        description="The API token or key. Kept secret: never shown, logged or put in errors.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "The provider's options, e.g. Flyte's project and domain, or the `rest` provider's "
            "endpoint configuration (launch, status, cancel, states)."
        ),
    )
    request_timeout: float = Field(
        default=30.0,
        gt=0,
        title="Request timeout (seconds)",
        description="The longest one HTTP request may take (not the wait for a run).",
    )

    @field_validator("platform")
    @classmethod
    def _known_platform(cls, value: str) -> str:
        if value not in available():
            raise ValueError(f"unknown platform {value!r}; available: {', '.join(available())}")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    def _client_args(self) -> dict[str, Any]:
        token = self.token.get_secret_value() if self.token is not None else None
        return {
            "platform": self.platform,
            "base_url": self.base_url,
            "token": token or None,
            "timeout": self.request_timeout,
            **self.options,
        }

    def get_client(self, **kwargs: Any) -> RunClient:
        """A new synchronous :class:`~runbridge.RunClient`; close it (``with``) when done.

        ``kwargs`` go to the client (``retry=``, ``poll=``, ``client=`` an ``httpx.Client``...).
        """
        return RunClient(**{**self._client_args(), **kwargs})

    def get_async_client(self, **kwargs: Any) -> AsyncRunClient:
        """A new :class:`~runbridge.AsyncRunClient`; close it (``async with``) when done.

        Inside flows, runbridge's tasks and ``ExternalRunJob`` do not call this per task: they
        share one client (one connection pool) per credentials and event loop.
        """
        return AsyncRunClient(**{**self._client_args(), **kwargs})

    def _fingerprint(self) -> str:
        """Identifies equal credentials (the token included, hashed) for client sharing."""
        text = json.dumps(self._client_args(), sort_keys=True, default=repr)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
