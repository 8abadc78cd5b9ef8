"""``ExternalRunResource``: where the platform is and how to talk to it. Configuration only.

The resource holds fields (each described, so the Dagster UI documents them) and builds a core
:class:`~runbridge.core.config.ClientConfig` from them (:meth:`ExternalRunResource.client_config`),
which makes the clients. It knows nothing about any platform: the provider named by
``platform`` does, through ``options``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from ..core import (
    ClientConfig,
    ConfigError,
    PollSchedule,
    RetryPolicy,
    RunClient,
    RunRef,
    RunState,
    RunStatus,
)
from ..core.config import (
    DEFAULT_COALESCE,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_MAX_LONG_POLLS,
    DEFAULT_REQUEST_TIMEOUT,
    seconds,
)

if TYPE_CHECKING:
    from ._step import ExternalRunResult

__all__ = ["ExternalRunResource"]

RefLike = RunRef | Mapping[str, Any] | str
_POLL = PollSchedule()
_RETRY = RetryPolicy()


class ExternalRunResource(dg.ConfigurableResource):
    """A platform that runs things: launch, inspect, cancel and wait for its runs.

    .. code-block:: python

        import dagster as dg
        from runbridge.dagster_resources import ExternalRunResource

        external_run = ExternalRunResource(
            platform="langgraph",
            base_url="https://my-deployment.langgraph.app",
            token=dg.EnvVar("LANGGRAPH_API_KEY"),
        )

    Give the token as ``dg.EnvVar``: Dagster then shows the variable's name, never its value,
    and runbridge keeps the token out of every log line, error and repr.
    """

    platform: str = Field(
        description=(
            "The platform's runbridge name: langgraph, rest, flyte, wandb, vi, lume, or a "
            "third-party provider registered under the `runbridge.providers` entry point."
        )
    )
    base_url: str = Field(description="The platform's API base URL (http:// or https://).")
    token: str | None = Field(
        default=None,
        repr=False,
        description=(
            "API token or key. Pass dg.EnvVar('NAME'): a literal value would be shown in the "
            "Dagster UI. runbridge never writes it to logs or error messages."
        ),
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Provider options, as runbridge's RunClient takes them (e.g. W&B entity, project "
            "and queue; the rest provider's endpoint configuration). See docs/platforms/."
        ),
    )
    poll_interval: float = Field(
        default=_POLL.first,
        description="Seconds before the second status check; later checks back off from it.",
    )
    poll_max_interval: float = Field(
        default=_POLL.cap, description="Longest pause between two status checks, in seconds."
    )
    poll_backoff: float = Field(
        default=_POLL.factor,
        description="Factor by which the pause between status checks grows (>= 1).",
    )
    request_timeout: float = Field(
        default=DEFAULT_REQUEST_TIMEOUT,
        description=(
            "Seconds one HTTP request to the platform may take in all (connect, send, every "
            "byte of the answer); never more than what is left of a wait."
        ),
    )
    request_attempts: int = Field(
        default=_RETRY.attempts,
        description=(
            "Attempts per request on a retryable failure (connection error, 408, 429, 5xx), "
            "with backoff and Retry-After. A launch is resent only where that cannot "
            "duplicate the run."
        ),
    )
    error_window: float = Field(
        default=DEFAULT_ERROR_WINDOW,
        description=(
            "While waiting, how long transient errors are tolerated (seconds) before the wait "
            "fails with the last one. A poll error never causes a relaunch."
        ),
    )
    max_rps: float | None = Field(
        default=None,
        description=(
            "Most requests per second to the platform from one process's waits, launches and "
            "cancels together (a sensor's waits share one client); None: no cap. A 429 pauses "
            "every check of the client for its Retry-After whatever this is."
        ),
    )
    coalesce: float = Field(
        default=DEFAULT_COALESCE,
        description=(
            "Where the platform answers many runs in one request: seconds early a wait may be "
            "checked to share a batch that goes anyway (0: never)."
        ),
    )
    max_long_polls: int = Field(
        default=DEFAULT_MAX_LONG_POLLS,
        description=(
            "Most blocking wait calls (joins, watch streams) one client keeps open; waits "
            "beyond it poll on their own schedule."
        ),
    )

    # -- the client configuration ---------------------------------------------------------------
    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Dagster reads the resource: a field that can never work fails now (``ConfigError``
        naming it), not at the first request of a step."""
        self.client_config()

    def poll_schedule(self) -> PollSchedule:
        """The poll schedule of ``poll_interval``, ``poll_backoff`` and ``poll_max_interval``."""
        first = seconds(self.poll_interval, _field("poll_interval"), positive=True)
        cap = seconds(self.poll_max_interval, _field("poll_max_interval"), positive=True)
        factor = self.poll_backoff
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
            raise ConfigError(f"{_field('poll_backoff')} must be a number >= 1, got {factor!r}")
        if cap is not None and first is not None and cap < first:
            raise ConfigError(
                f"{_field('poll_max_interval')} ({cap:g}) must be >= poll_interval ({first:g})"
            )
        return PollSchedule(first=first or 0.0, factor=float(factor), cap=cap or 0.0)

    def retry_policy(self) -> RetryPolicy:
        """How one request is retried: ``request_attempts`` attempts, core's backoff."""
        attempts = self.request_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(
                f"{_field('request_attempts')} must be an integer >= 1, got {attempts!r}"
            )
        return RetryPolicy(attempts=attempts)

    def client_config(self) -> ClientConfig:
        """The core :class:`~runbridge.core.config.ClientConfig` these fields describe: the
        one configuration every runbridge client is made from. Raises ``ConfigError`` naming
        the field that is wrong."""
        retry, poll = self.retry_policy(), self.poll_schedule()
        try:
            return ClientConfig(
                platform=_resolved(self.platform),
                base_url=_resolved(self.base_url),
                token=_resolved(self.token),
                options=self.options,
                request_timeout=self.request_timeout,
                retry=retry,
                poll=poll,
                error_window=self.error_window,
                max_rps=self.max_rps,
                coalesce=self.coalesce,
                max_long_polls=self.max_long_polls,
            )
        except ConfigError as exc:  # its messages name the field (the same names as here)
            raise ConfigError(f"ExternalRunResource: {exc}") from None

    def get_client(self, **overrides: Any) -> RunClient:
        """A new core :class:`~runbridge.core.RunClient` for this platform; close it after use
        (``with resource.get_client() as client: ...``). ``overrides`` replace client
        arguments (``hooks=[...]``, ``error_window=...``); pass ``on_event=`` to each call to
        see its events."""
        return self.client_config().client(**overrides)

    # -- the operations, for use in your own ops, assets and sensors ---------------------------
    # Each call uses one client for all its requests (a wait's polls share its connections)
    # and closes it: the resource holds no open connection, so it needs no teardown and works
    # in build_op_context / build_sensor_context without a `with` block.
    def launch(self, params: Mapping[str, Any], *, key: str | None = None) -> RunRef:
        """Start a run; with ``key``, a second launch with the same key re-attaches to it."""
        with self.get_client() as client:
            return client.launch(params, key=key)

    def get(self, ref: RefLike) -> RunStatus:
        """One snapshot of the run."""
        with self.get_client() as client:
            return client.get(ref)

    def cancel(self, ref: RefLike) -> None:
        """Ask the platform to cancel the run."""
        with self.get_client() as client:
            client.cancel(ref)

    def list(self, *, limit: int | None = 100, **filters: Any) -> list[RunStatus]:
        """The platform's runs, where its API lists them (else ``NotSupported``)."""
        with self.get_client() as client:
            return client.list(limit=limit, **filters)

    def wait(
        self,
        ref: RefLike,
        *,
        wait_timeout: float | None = None,
        run_timeout: float | None = None,
        success: Sequence[RunState | str] | None = None,
        check: bool = False,
    ) -> RunStatus:
        """Wait for the run to end. ``wait_timeout`` raises ``WaitTimeout`` and leaves the run
        going; ``run_timeout`` cancels it once it is that old; transient errors are tolerated
        for ``error_window`` seconds. ``check=True`` raises ``RunFailed`` unless it ended in a
        ``success`` state (default: SUCCEEDED)."""
        with self.get_client() as client:
            return client.wait(
                ref, wait_timeout, run_timeout=run_timeout, check=check, success=success
            )

    def launch_and_wait(
        self,
        params: Mapping[str, Any],
        *,
        key: str | None = None,
        wait_timeout: float | None = None,
        run_timeout: float | None = None,
        success: Sequence[RunState | str] | None = None,
        check: bool = False,
    ) -> RunStatus:
        """:meth:`launch`, then :meth:`wait`, with one client."""
        with self.get_client() as client:
            ref = client.launch(params, key=key)
            return client.wait(
                ref, wait_timeout, run_timeout=run_timeout, check=check, success=success
            )

    def run(
        self,
        context: dg.OpExecutionContext | dg.AssetExecutionContext,
        params: Mapping[str, Any],
        *,
        key: str | None = None,
        wait_timeout: float | None = None,
        run_timeout: float | None = None,
        success: Sequence[RunState | str] | None = None,
        relaunch_failed: bool = False,
        cancel_on_kill: bool = True,
    ) -> ExternalRunResult:
        """Launch (or re-attach to) this step's run and wait for it, from inside an op or asset.

        What the factories do, for your own op and asset bodies: the launch is keyed on the
        Dagster run lineage and step, so a retried or re-executed step re-attaches (core's
        ``RunClient.start`` decides, from the records the step keeps in Dagster's event log);
        the run is logged through ``context.log``; terminating the Dagster run cancels it
        unless ``cancel_on_kill=False``. Returns an :class:`ExternalRunResult` (status and
        Dagster metadata); raises ``dg.Failure`` with that metadata when the run does not
        succeed or the wait times out.
        """
        from ._step import run_step

        return run_step(
            context,
            self,
            params,
            key=key,
            wait_timeout=wait_timeout,
            run_timeout=run_timeout,
            success=success,
            relaunch_failed=relaunch_failed,
            cancel_on_kill=cancel_on_kill,
        )


def _field(name: str) -> str:
    return f"ExternalRunResource: {name}"


def _resolved(value: Any) -> Any:
    """A field's value; an ``EnvVar`` is read here when the resource is used outside Dagster
    (inside, Dagster has already resolved it)."""
    if isinstance(value, dg.EnvVar):
        return value.get_value()
    return value
