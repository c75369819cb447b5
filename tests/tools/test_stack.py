"""The local stack's start-up when a component cannot start: a clear error, nothing left over."""

from __future__ import annotations

import json
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
