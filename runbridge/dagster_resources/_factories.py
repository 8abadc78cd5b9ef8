"""Op and asset factories: a step that launches an external run and waits for it."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dagster as dg
import pydantic
from pydantic import Field

from ..core import ConfigError, RunState, RunStatus, parse_states
from ._step import Context, ExternalRunResult

__all__ = ["ExternalRunConfig", "external_run_asset", "external_run_op"]

Params = Mapping[str, Any] | Callable[[Context], Mapping[str, Any]] | None


class ExternalRunConfig(dg.Config):
    """Per-run options of an external run step, set in the launchpad or in run config. Each
    factory's defaults are this class's defaults for its step."""

    params: dict[str, Any] = Field(
        default={},
        description=(
            "Launch parameters, merged over the step's own (a top-level key given here "
            "replaces the step's)."
        ),
    )
    key: str | None = Field(
        default=None,
        description=(
            "The step's launch key (its identity on the platform; a new launch after a "
            "cancelled or replaced run adds #1, #2...). Default: derived from the Dagster run "
            "lineage's root run id and the step key, so retries and re-executions re-attach."
        ),
    )
    wait_timeout: float | None = Field(
        default=None,
        description=(
            "Stop waiting after this many seconds and fail the step; the external run keeps "
            "going and a retry re-attaches to it. None: wait as long as the run takes."
        ),
    )
    run_timeout: float | None = Field(
        default=None,
        description=(
            "Cancel the external run once it is this many seconds old (fails the step; a "
            "retry launches a new run)."
        ),
    )
    success: list[str] = Field(
        default=["SUCCEEDED"],
        description="Terminal states that count as success, e.g. ['SUCCEEDED', 'PARTIAL'].",
    )
    relaunch_failed: bool = Field(
        default=False,
        description=(
            "On a retry or re-execution, launch a new run if the one launched before ended "
            "without success. Default: the run is taken as it ended."
        ),
    )
    cancel_on_kill: bool = Field(
        default=True,
        description=(
            "Cancel the external run when the Dagster run is terminated while the step waits "
            "(a re-execution then launches a new run). False leaves it going."
        ),
    )


def _config_class(
    name: str,
    *,
    success: Sequence[RunState | str],
    wait_timeout: float | None,
    run_timeout: float | None,
    relaunch_failed: bool,
    cancel_on_kill: bool,
) -> type[ExternalRunConfig]:
    """``ExternalRunConfig`` with this step's defaults, so the launchpad shows them."""
    states = sorted(s.value for s in parse_states(success))
    fields: dict[str, Any] = {}
    for field, value in (
        ("wait_timeout", wait_timeout),
        ("run_timeout", run_timeout),
        ("relaunch_failed", relaunch_failed),
        ("cancel_on_kill", cancel_on_kill),
    ):
        info = ExternalRunConfig.model_fields[field]
        fields[field] = (info.annotation, Field(default=value, description=info.description))
    info = ExternalRunConfig.model_fields["success"]
    fields["success"] = (
        list[str],
        Field(default=states, description=info.description),
    )
    cls: type[ExternalRunConfig] = pydantic.create_model(
        f"{_camel(name)}Config", __base__=ExternalRunConfig, __module__=__name__, **fields
    )
    return cls


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_"))


def _resolve_params(params: Params, config: ExternalRunConfig, context: Context) -> dict[str, Any]:
    base = params(context) if callable(params) else params
    if base is not None and not isinstance(base, Mapping):
        raise ConfigError(f"launch params must be a mapping, got {type(base).__name__}")
    return {**(base or {}), **config.params}


def _run(
    context: Context, resource_key: str, params: Params, config: ExternalRunConfig
) -> ExternalRunResult:
    resource = getattr(context.resources, resource_key)
    result: ExternalRunResult = resource.run(
        context,
        _resolve_params(params, config, context),
        key=config.key,
        wait_timeout=config.wait_timeout,
        run_timeout=config.run_timeout,
        success=config.success,
        relaunch_failed=config.relaunch_failed,
        cancel_on_kill=config.cancel_on_kill,
    )
    return result


def external_run_op(
    name: str,
    params: Params = None,
    *,
    resource_key: str = "external_run",
    success: Sequence[RunState | str] = (RunState.SUCCEEDED,),
    wait_timeout: float | None = None,
    run_timeout: float | None = None,
    relaunch_failed: bool = False,
    cancel_on_kill: bool = True,
    after: Sequence[str] = (),
    **op_kwargs: Any,
) -> dg.OpDefinition:
    """An op that launches a run on the platform of ``resource_key``'s
    :class:`ExternalRunResource` and waits for it.

    ``params`` are the launch parameters: a mapping, or a function of the context (for a
    partition key, say); run config's ``params`` are merged over them. The op's output is the
    terminal :class:`~runbridge.core.RunStatus`, with the run's URL, states, duration and
    outputs as metadata. A run that does not succeed raises ``dg.Failure`` with the platform's
    message and that metadata. ``after`` names ``Nothing`` inputs, to order the op after
    others. Other keyword arguments go to ``dg.op`` (``retry_policy``, ``tags``, ...).
    """
    config_cls = _config_class(
        name,
        success=success,
        wait_timeout=wait_timeout,
        run_timeout=run_timeout,
        relaunch_failed=relaunch_failed,
        cancel_on_kill=cancel_on_kill,
    )

    def compute(context: dg.OpExecutionContext, config: ExternalRunConfig) -> dg.Output[RunStatus]:
        return _run(context, resource_key, params, config).output()

    compute.__annotations__ = {
        "context": dg.OpExecutionContext,
        "config": config_cls,
        "return": dg.Output[RunStatus],
    }
    op_kwargs.setdefault(
        "description", f"Launch a run through the `{resource_key}` resource and wait for it."
    )
    return dg.op(
        name=name,
        required_resource_keys={resource_key},
        ins={input_name: dg.In(dg.Nothing) for input_name in after},
        out=dg.Out(RunStatus),
        **op_kwargs,
    )(compute)


def external_run_asset(
    *,
    name: str | None = None,
    key: dg.AssetKey | str | Sequence[str] | None = None,
    params: Params = None,
    resource_key: str = "external_run",
    success: Sequence[RunState | str] = (RunState.SUCCEEDED,),
    wait_timeout: float | None = None,
    run_timeout: float | None = None,
    relaunch_failed: bool = False,
    cancel_on_kill: bool = True,
    **asset_kwargs: Any,
) -> dg.AssetsDefinition:
    """An asset materialized by a run on the platform of ``resource_key``'s
    :class:`ExternalRunResource`: launch, wait, and record the run's URL, states, duration and
    outputs (typed: numbers are plotted across materializations) as materialization metadata.

    Give ``name`` or ``key``. ``params`` as for :func:`external_run_op`. Other keyword
    arguments go to ``dg.asset`` (``deps``, ``partitions_def``, ``group_name``,
    ``retry_policy``, ``kinds``, ...).
    """
    if (name is None) == (key is None):
        raise ConfigError("external_run_asset needs name or key (one of them)")
    asset_key = dg.AssetKey.from_coercible(key) if key is not None else dg.AssetKey(str(name))
    config_cls = _config_class(
        "_".join(asset_key.path),
        success=success,
        wait_timeout=wait_timeout,
        run_timeout=run_timeout,
        relaunch_failed=relaunch_failed,
        cancel_on_kill=cancel_on_kill,
    )

    def compute(
        context: dg.AssetExecutionContext, config: ExternalRunConfig
    ) -> dg.MaterializeResult:
        return _run(context, resource_key, params, config).materialize_result()

    compute.__annotations__ = {
        "context": dg.AssetExecutionContext,
        "config": config_cls,
        "return": dg.MaterializeResult,
    }
    asset_kwargs.setdefault(
        "description", f"Materialized by a run launched through the `{resource_key}` resource."
    )
    decorator = dg.asset(
        key=asset_key,
        required_resource_keys={resource_key},
        **asset_kwargs,
    )
    assets_def: dg.AssetsDefinition = decorator(compute)
    return assets_def
