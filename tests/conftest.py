"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.dev_env import PLUGINS_FOLDER, airflow_env

# Airflow in this process (DAGs built and serialized in tests) loads the project's plugins
# too: the scheduler deserializes only timetables a plugin registers.
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(PLUGINS_FOLDER))

# Shared fixtures: a real MLflow server with a trained champion, and real localcluster
# processes, for any test module that asks for them.
pytest_plugins = ["tests.mlflow_fixtures", "tests.cluster_fixtures"]


@pytest.fixture(scope="session")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """os.environ plus the development Airflow settings, for subprocesses."""
    airflow_home: Path = tmp_path_factory.mktemp("airflow_home")
    return {**os.environ, **airflow_env(airflow_home)}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's table (tests/faults.py), when this session ran any of its scenarios."""
    from tests.faults import TABLE, render

    if TABLE:
        terminalreporter.section("fault suite")
        terminalreporter.write_line(render(TABLE))
