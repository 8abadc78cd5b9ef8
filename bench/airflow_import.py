"""What a DAG file pays to import the runbridge Airflow provider, beside ``import airflow.sdk``
and the dbt Cloud provider's operators.

Each measurement is a fresh interpreter (``AIRFLOW_HOME`` in a temporary directory, nothing
written to ``$HOME``) that imports ``airflow.sdk`` and then the thing measured; the numbers are
medians over ``--rounds`` rounds, the variants interleaved so that machine noise spreads evenly:

* ``airflow.sdk``: the baseline, as installed (Airflow's configuration loads every provider's
  ``get_provider_info`` at import, runbridge's included);
* ``runbridge.airflow_provider.get_provider_info`` after ``airflow.sdk`` with runbridge's entry
  point hidden from the metadata scan: what runbridge's registration adds to every Airflow
  process (its configuration imports each provider's ``get_provider_info`` at start-up, and
  that module's parent packages with it);
* ``from runbridge.airflow_provider import LaunchRunOperator, RunSensor`` after ``airflow.sdk``:
  what a DAG file adds, as installed, and with the entry point hidden (the full cost, runbridge
  core included, in a process where Airflow had not imported it);
* ``from airflow.providers.dbt.cloud.operators.dbt import DbtCloudRunJobOperator`` after
  ``airflow.sdk`` (apache-airflow-providers-dbt-cloud and its missing dependencies are installed
  with ``--no-deps`` into a cache directory outside the project environment, once).

    .venv/bin/python bench/airflow_import.py [--rounds 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DBT_PACKAGES = [
    "apache-airflow-providers-dbt-cloud==4.11.1",
    "apache-airflow-providers-http",
    "aiohttp",
    "aiohappyeyeballs",
    "aiosignal",
    "frozenlist",
    "multidict",
    "propcache",
    "yarl",
]
"""The dbt Cloud provider and what it needs that the project environment does not have."""

HIDE_ENTRY_POINT = """
import importlib.metadata as _md, importlib_metadata as _imd
def _hide(orig):
    def distributions(**kw):
        for d in orig(**kw):
            if (d.metadata["Name"] or "").lower() != "runbridge":
                yield d
    return distributions
_md.distributions = _hide(_md.distributions)
_imd.distributions = _hide(_imd.distributions)
"""

PROBE = """
import json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
preloaded = "runbridge.core" in sys.modules
{imports}
t2 = time.perf_counter()
print(json.dumps({{
    "sdk": t1 - t0, "extra": t2 - t1, "runbridge_preloaded": preloaded,
    "orchestrators": sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "dagster")),
}}))
"""

RUNBRIDGE = (
    "import runbridge.airflow_provider\n"
    "from runbridge.airflow_provider import LaunchRunOperator, RunSensor"
)
DBT = "from airflow.providers.dbt.cloud.operators.dbt import DbtCloudRunJobOperator"

VARIANTS: dict[str, tuple[str, str]] = {
    # name: (prelude, imports after airflow.sdk)
    "sdk": ("", "pass"),
    "provider_info": (HIDE_ENTRY_POINT, "import runbridge.airflow_provider.get_provider_info"),
    "runbridge": ("", RUNBRIDGE),
    "runbridge_without_entry_point": (HIDE_ENTRY_POINT, RUNBRIDGE),
    "dbt_cloud": ("", DBT),
}


def install_dbt(target: Path) -> None:
    """pip (or uv) install the dbt Cloud provider into ``target``, without dependencies."""
    if (target / "airflow" / "providers" / "dbt").exists():
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    common = ["--no-deps", "--target", str(target), *DBT_PACKAGES]
    pip = shutil.which("pip3") or shutil.which("pip")
    uv = os.environ.get("RUNBRIDGE_UV") or shutil.which("uv")
    if pip:
        cmd = [pip, "install", "--quiet", "--only-binary=:all:", "--python-version", version]
    elif uv:
        cmd = [uv, "pip", "install", "--quiet", "--python", sys.executable]
    else:
        raise SystemExit("need pip or uv on PATH to install the dbt Cloud provider for comparison")
    print(f"installing the dbt Cloud provider into {target} ...", file=sys.stderr)
    subprocess.run([*cmd, *common], check=True)


def measure(variant: str, env: dict[str, str]) -> dict[str, object]:
    prelude, imports = VARIANTS[variant]
    code = prelude + PROBE.format(imports=imports)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the raw medians as JSON")
    parser.add_argument(
        "--deps",
        type=Path,
        default=Path(tempfile.gettempdir()) / "runbridge-bench-dbt-cloud",
        help="where to install the dbt Cloud provider (default: %(default)s)",
    )
    args = parser.parse_args()
    install_dbt(args.deps)
    with tempfile.TemporaryDirectory(prefix="runbridge-bench-airflow-") as home:
        env = dict(os.environ)
        env.update(
            {
                "AIRFLOW_HOME": home,
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PYTHONPATH": os.pathsep.join(
                    [str(args.deps), *filter(None, [env.get("PYTHONPATH")])]
                ),
            }
        )
        measure("sdk", env)  # warm the file cache before timing anything
        runs: dict[str, list[dict[str, object]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                runs[variant].append(measure(variant, env))

    def median_ms(variant: str, key: str) -> float:
        return 1000 * statistics.median(float(r[key]) for r in runs[variant])  # type: ignore[arg-type]

    medians = {
        variant: {"sdk_ms": median_ms(variant, "sdk"), "extra_ms": median_ms(variant, "extra")}
        for variant in VARIANTS
    }
    leaked = sorted({m for rs in runs.values() for r in rs for m in r["orchestrators"]})  # type: ignore[attr-defined]
    preloaded = all(r["runbridge_preloaded"] for r in runs["runbridge"])
    if args.json:
        print(json.dumps({"medians": medians, "orchestrators_imported": leaked}, indent=2))
        return
    m = medians
    print(f"Medians of {args.rounds} fresh interpreters; Python {sys.version.split()[0]}.\n")
    print("| what is imported | ms |")
    print("|---|---|")
    print(f"| `import airflow.sdk` (runbridge installed) | {m['sdk']['sdk_ms']:.0f} |")
    print(
        f"| + `get_provider_info` (Airflow's provider discovery, in every Airflow process) "
        f"| +{m['provider_info']['extra_ms']:.1f} |"
    )
    print(
        f"| + runbridge provider (`LaunchRunOperator`, `RunSensor`), as installed "
        f"| +{m['runbridge']['extra_ms']:.1f} |"
    )
    print(
        f"| + runbridge provider, entry point hidden (core included) "
        f"| +{m['runbridge_without_entry_point']['extra_ms']:.1f} |"
    )
    print(f"| + dbt Cloud `DbtCloudRunJobOperator` | +{m['dbt_cloud']['extra_ms']:.1f} |")
    print()
    print(f"runbridge core already imported by `import airflow.sdk`: {preloaded}")
    print(f"prefect/dagster modules imported: {leaked or 'none'}")


if __name__ == "__main__":
    main()
