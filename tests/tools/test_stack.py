"""The local stack's start-up when a component cannot start: a clear error, nothing left over."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.procs import group_alive, port_taken
from tools.stack import REPO, Ports, Settings, Stack, StackError, airflow_db_template


@pytest.fixture
def root() -> Iterator[Path]:
    path = REPO / ".state" / f"stack-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_component_that_cannot_start_is_named_and_the_others_are_stopped_again(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow exits at once (a broken install, say) while localcluster and Airflow start.
    broken = [sys.executable, "-c", "import sys; sys.exit('mlflow: cannot open the database')"]
    monkeypatch.setattr(Stack, "_mlflow_cmd", lambda self: broken)
    stack = Stack(root, Ports.free(), Settings())
    with pytest.raises(StackError) as failure:
        stack.up(say=lambda message: None)
    message = str(failure.value)
    assert message.startswith("mlflow did not start")
    assert str(stack.log("mlflow")) in message  # says which log to read
    assert "cannot open the database" in stack.log("mlflow").read_text()
    started = Stack.load(root)
    assert started is not None
    assert len(started.groups) >= 4  # localcluster, MLflow and Airflow's components had started
    assert [g for g in started.groups if group_alive(g)] == []
    assert [p for p in (stack.ports.cluster, stack.ports.airflow) if port_taken(p)] == []
    assert stack.pids == {}


def test_a_fresh_stack_database_is_the_migrated_template_with_the_pools(root: Path) -> None:
    import sqlite3

    template = airflow_db_template()
    assert airflow_db_template() == template  # built once, then reused
    with sqlite3.connect(template) as db:
        pools = dict(db.execute("select pool, slots from slot_pool").fetchall())
        heads = db.execute("select version_num from alembic_version").fetchall()
    wanted = json.loads((REPO / "helm-values" / "airflow-pools.json").read_text())
    assert {name: pools.get(name) for name in wanted} == {n: p["slots"] for n, p in wanted.items()}
    assert len(heads) == 1


def test_an_mlflow_from_before_its_auth_stays_the_pipelines_to_write(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack folder whose MLflow held experiments and models before the server signed calls
    in: the pipeline's new account may still write them (MANAGE), as it did unsigned."""
    import requests
    from mlflow import MlflowClient

    root.mkdir(parents=True)
    old = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")  # the store, no server
    experiment = old.create_experiment("from-before")
    old.create_registered_model("from-before")
    stack = Stack(root, Ports.free(), Settings(crons=False))
    try:
        stack.up(say=lambda message: None)
        env = stack.mlflow_env("helmsman")
        pipeline = requests.Session()
        pipeline.auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
        api = f"{stack.mlflow_url}/api/2.0/mlflow"
        tagged = pipeline.post(f"{api}/registered-models/set-tag", timeout=10,
                               json={"name": "from-before", "key": "k", "value": "v"})  # fmt: skip
        assert tagged.status_code == 200, tagged.text
        tag = {"experiment_id": experiment, "key": "k", "value": "v"}
        tagged = pipeline.post(f"{api}/experiments/set-experiment-tag", json=tag, timeout=10)
        assert tagged.status_code == 200, tagged.text
        # ... and what it was not given stays the admin's: it still makes no accounts.
        denied = pipeline.post(f"{api}/users/create", json={"username": "x", "password": "y"},
                               timeout=10)  # fmt: skip
        assert denied.status_code == 403
        # The admin's client signs this process in, but sends no other client to this stack
        # (a process-wide address would outlive the stack: every later client would call it).
        for name, value in {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9/elsewhere",
            "MLFLOW_TRACKING_USERNAME": "",
            "MLFLOW_TRACKING_PASSWORD": "",
        }.items():
            monkeypatch.setenv(name, value)
        admin = stack.mlflow_client()
        assert [m.name for m in admin.search_registered_models()] == ["from-before"]
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9/elsewhere"
    finally:
        stack.down()
