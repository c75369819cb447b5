"""Fixtures the step tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mlflow_fixtures import Trained, model_server
from tools.procs import Server


@pytest.fixture(scope="module")
def champion_server(
    champion: Trained, step_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The session's churn champion served by ``helmsman-step serve`` (``.url``)."""
    server = model_server(f"models:/{champion.model_name}@champion", step_env,
                          tmp_path_factory.mktemp("serve"))  # fmt: skip
    yield server
    server.stop()
