"""The reliability matrix (issue 14): scenarios (tests/deploy/matrix.py) run against real
Airflow, Prefect and Dagster deployments (one folder each) and an emulator in its own process
(``runbridge emulate``), scripted through its control API. See docs/testing.md."""
