"""``ExternalRunResource``: where the platform is and how to talk to it. Configuration only.

The resource holds fields (each described, so the Dagster UI documents them) and builds a core
:class:`~runbridge.core.RunClient` from them. It knows nothing about any platform: the provider
named by ``platform`` does, through ``options``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from ..core import PollSchedule, RetryPolicy, RunClient, RunRef, RunState, RunStatus
from ..core.flows import Event

if TYPE_CHECKING:
    from ._step import ExternalRunResult

__all__ = ["ExternalRunResource"]

RefLike = RunRef | Mapping[str, Any] | str


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
        default=1.0,
        description="Seconds before the second status check; later checks back off from it.",
    )
    poll_max_interval: float = Field(
        default=30.0, description="Longest pause between two status checks, in seconds."
    )
    poll_backoff: float = Field(
        default=1.5, description="Factor by which the pause between status checks grows (>= 1)."
    )
    request_timeout: float = Field(
        default=30.0, description="Timeout of one HTTP request to the platform, in seconds."
    )
    request_attempts: int = Field(
        default=5,
        description=(
            "Attempts per request on a retryable failure (connection error, 408, 429, 5xx), "
            "with backoff and Retry-After. A launch is resent only where that cannot "
            "duplicate the run."
        ),
    )
    error_window: float = Field(
        default=600.0,
        description=(
            "While waiting, how long transient errors are tolerated (seconds) before the wait "
            "fails with the last one. A poll error never causes a relaunch."
        ),
    )

    # -- clients ---------------------------------------------------------------------------------
    def poll_schedule(self) -> PollSchedule:
        return PollSchedule(
            first=self.poll_interval, factor=self.poll_backoff, cap=self.poll_max_interval
        )

    def get_client(self, *, hooks: Iterable[Callable[[Event], None]] = ()) -> RunClient:
        """A new core :class:`~runbridge.core.RunClient` for this platform; close it after use
        (``with resource.get_client() as client: ...``). ``hooks`` receive the client's events."""
        token = self.token
        if isinstance(token, dg.EnvVar):  # used outside Dagster, where nothing resolved it
            token = token.get_value()
        return RunClient(
            self.platform,
            self.base_url,
            token,
            timeout=self.request_timeout,
            retry=RetryPolicy(attempts=self.request_attempts),
            poll=self.poll_schedule(),
            hooks=hooks,
            **self.options,
        )

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
        timeout: float | None = None,
        run_timeout: float | None = None,
        success: Sequence[RunState | str] | None = None,
        check: bool = False,
    ) -> RunStatus:
        """Wait for the run to end. ``timeout`` raises ``WaitTimeout`` and leaves the run
        going; ``run_timeout`` cancels it once it is that old. ``check=True`` raises
        ``RunFailed`` unless it ended in a ``success`` state (default: SUCCEEDED)."""
        with self.get_client() as client:
            return client.wait(ref, timeout, run_timeout=run_timeout, check=check, success=success)

    def launch_and_wait(
        self,
        params: Mapping[str, Any],
        *,
        key: str | None = None,
        timeout: float | None = None,
        run_timeout: float | None = None,
        success: Sequence[RunState | str] | None = None,
        check: bool = False,
    ) -> RunStatus:
        """:meth:`launch`, then :meth:`wait`."""
        ref = self.launch(params, key=key)
        return self.wait(
            ref, timeout=timeout, run_timeout=run_timeout, success=success, check=check
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
        cancel_on_termination: bool = True,
    ) -> ExternalRunResult:
        """Launch (or re-attach to) this step's run and wait for it, from inside an op or asset.

        What the factories do, for your own op and asset bodies: the launch is keyed on the
        Dagster run lineage and step, so a retried or re-executed step re-attaches; the run
        is logged through ``context.log``; terminating the Dagster run cancels it. Returns an
        :class:`ExternalRunResult` (status and Dagster metadata); raises ``dg.Failure`` with
        that metadata when the run does not succeed or the wait times out.
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
            cancel_on_termination=cancel_on_termination,
        )
