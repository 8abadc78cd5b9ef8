"""``RunbridgeCredentials``: one platform connection, as a Prefect block.

The block's fields map onto one :class:`~runbridge.core.config.ClientConfig` (the client
configuration the Airflow connection and the Dagster resource build too); every client the
Prefect integration uses is made from it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.abstract import CredentialsBlock
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from ..core.client import AsyncRunClient, RunClient
from ..core.config import (
    DEFAULT_COALESCE,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_MAX_LONG_POLLS,
    DEFAULT_REQUEST_TIMEOUT,
    ClientConfig,
    check_base_url,
)
from ..core.errors import ConfigError
from ..core.schedule import PollSchedule, RetryPolicy

__all__ = ["DOCS_URL", "RunbridgeCredentials"]

DOCS_URL = "https://github.com/runbridge/runbridge/blob/main/docs/prefect.md"
"""Where the Prefect UI's "documentation" link of each runbridge block points."""

_POLL = PollSchedule()
_RETRY = RetryPolicy()


class RunbridgeCredentials(CredentialsBlock):
    """Connection to a platform that runbridge launches runs on: which platform, its base
    URL, the API token (kept secret), the provider's options, and how requests and waits
    behave (request timeout, retries, poll schedule, tolerated error window).

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

    # a validation error must not echo the input: it holds the token
    model_config = ConfigDict(hide_input_in_errors=True)

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
        default=DEFAULT_REQUEST_TIMEOUT,
        gt=0,
        title="Request timeout (seconds)",
        description="The longest one HTTP request may take in all, connecting and reading "
        "included (not the wait for a run).",
    )
    retry_attempts: int = Field(
        default=_RETRY.attempts,
        ge=1,
        title="Request attempts",
        description="How many times one request is tried (the first included) when it fails "
        "transiently: a network error, 408, 429 or 5xx. A launch is retried only where it "
        "cannot create a second run.",
    )
    error_window: float = Field(
        default=DEFAULT_ERROR_WINDOW,
        ge=0,
        title="Error window (seconds)",
        description="How long a wait tolerates transient errors in a row (5xx, 429, network "
        "errors) before it fails with the last one. The run is never relaunched for them.",
    )
    poll_interval: float = Field(
        default=_POLL.first,
        gt=0,
        title="First poll interval (seconds)",
        description="The first wait between status checks, where the platform has no blocking "
        "wait endpoint; later ones grow by poll_backoff up to poll_max_interval.",
    )
    poll_max_interval: float = Field(
        default=_POLL.cap,
        gt=0,
        title="Longest poll interval (seconds)",
        description="The longest wait between two status checks.",
    )
    poll_backoff: float = Field(
        default=_POLL.factor,
        ge=1,
        description="Each poll interval is this many times the previous one.",
    )
    max_rps: float | None = Field(
        default=None,
        gt=0,
        title="Requests per second",
        description="The most requests per second to the platform from one worker's waits, "
        "launches and cancels together (they share one client); empty: no cap. A 429 pauses "
        "every check of the client for its Retry-After whatever this is.",
    )
    coalesce: float = Field(
        default=DEFAULT_COALESCE,
        ge=0,
        title="Batch coalescing (seconds)",
        description="Where the platform answers many runs in one request, how many seconds "
        "early a wait may be checked to share a batch that goes anyway; 0: never.",
    )
    max_long_polls: int = Field(
        default=DEFAULT_MAX_LONG_POLLS,
        ge=0,
        title="Blocking calls open",
        description="The most blocking wait calls (joins, watch streams) one client keeps "
        "open; waits beyond it poll on their own schedule.",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)  # stored as runbridge uses it: no trailing slash

    @model_validator(mode="after")
    def _valid_configuration(self) -> RunbridgeCredentials:
        # the whole client configuration is checked when the block is built or loaded, not at
        # the first request; the ConfigError's message names the field
        self.client_config()
        return self

    def poll_schedule(self) -> PollSchedule:
        if self.poll_max_interval < self.poll_interval:
            raise ConfigError(
                f"poll_max_interval ({self.poll_max_interval}) must be >= poll_interval "
                f"({self.poll_interval})"
            )
        return PollSchedule(
            first=self.poll_interval, factor=self.poll_backoff, cap=self.poll_max_interval
        )

    def client_config(self) -> ClientConfig:
        """These credentials as runbridge's one client configuration (raises ``ConfigError``
        naming the field that is wrong)."""
        token = self.token.get_secret_value() if self.token is not None else None
        return ClientConfig(
            platform=self.platform,
            base_url=self.base_url,
            token=token or None,
            options=self.options,
            request_timeout=self.request_timeout,
            retry=RetryPolicy(attempts=self.retry_attempts),
            poll=self.poll_schedule(),
            error_window=self.error_window,
            max_rps=self.max_rps,
            coalesce=self.coalesce,
            max_long_polls=self.max_long_polls,
        )

    def get_client(self, **overrides: Any) -> RunClient:
        """A new synchronous :class:`~runbridge.RunClient`; close it (``with``) when done.

        ``overrides`` replace client arguments (``retry=``, ``poll=``, ``client=`` an
        ``httpx.Client``...).
        """
        return self.client_config().client(**overrides)

    def get_async_client(self, **overrides: Any) -> AsyncRunClient:
        """A new :class:`~runbridge.AsyncRunClient`; close it (``async with``) when done.

        Inside flows, runbridge's tasks and ``ExternalRunJob`` do not call this per task: they
        share one client (one connection pool) per configuration and event loop
        (``runbridge.core.shared.shared_async_client``).
        """
        return self.client_config().async_client(**overrides)
