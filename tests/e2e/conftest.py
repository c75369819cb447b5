"""One real stack for the end-to-end scenarios: localcluster, MLflow and Airflow 3, started by
the same code as `make demo` (tools/stack.py), on free ports, with small data. Package scope:
it stops after the last scenario, so the rest of the suite does not share the machine with it."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster_fixtures import faulty_images
from tools.airflow_api import AirflowApi
from tools.stack import REPO, Ports, Settings, Stack


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    # Under the repository, not /tmp: pods see the dataset folder by its host path, and every
    # pod mounts its own emptyDir over /tmp.
    root = REPO / ".state" / f"e2e-{uuid.uuid4().hex[:8]}"
    # No cron slot fires in the scenarios (a run at 03:00 would deploy in the middle of one).
    # Retries after 5 s, not the platform's minute: the fault scenarios wait for them.
    settings = Settings(rows_per_day=4000, extra_images=faulty_images(), crons=False,
                        retry_delay_s=5)  # fmt: skip
    s = Stack(root, Ports.free(), settings)
    try:
        s.up(say=lambda message: None)
        yield s
    finally:
        s.down()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def airflow(stack: Stack) -> AirflowApi:
    api = AirflowApi(stack.airflow_url, "admin", stack.password)
    api.wait_for_dag("train_churn")
    api.unpause("train_churn")
    return api
