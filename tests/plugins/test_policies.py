"""The cluster policy, given the attributes of a task instance and a run that it reads and
writes (tests/e2e checks the real scheduler applies it: backfill tasks land in their pool)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from airflow.utils.types import DagRunType

from helmsman import policies


def task_instance(pool: str, slots: int = 1) -> Any:
    return SimpleNamespace(pool=pool, pool_slots=slots)


def dag_run(run_type: DagRunType, conf: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(run_type=run_type, conf=conf or {})


@pytest.mark.parametrize(
    ("run_type", "conf", "expected"),
    [
        (DagRunType.MANUAL, {"gpus": 3}, ("gpu", 3)),
        (DagRunType.SCHEDULED, {}, ("gpu", 1)),
        (DagRunType.BACKFILL_JOB, {}, ("gpu_backfill", 1)),
        (DagRunType.BACKFILL_JOB, {"gpus": 2}, ("gpu_backfill", 2)),
        (DagRunType.MANUAL, {"gpus": 0}, ("gpu", 1)),  # a CPU run holds the slot it parsed with
    ],
)
def test_gpu_tasks_follow_the_run(
    run_type: DagRunType, conf: dict[str, Any], expected: tuple[str, int]
) -> None:
    ti = task_instance("gpu")
    policies.task_instance_mutation_hook(ti, dag_run(run_type, conf))
    assert (ti.pool, ti.pool_slots) == expected


def test_other_tasks_are_left_alone() -> None:
    ti = task_instance("default_pool")
    policies.task_instance_mutation_hook(ti, dag_run(DagRunType.BACKFILL_JOB, {"gpus": 4}))
    assert (ti.pool, ti.pool_slots) == ("default_pool", 1)
