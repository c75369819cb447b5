"""The cluster policy, given the attributes of a task instance and a run that it reads and
writes (tests/e2e checks the real scheduler applies it: backfill tasks land in their pool)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.utils.types import DagRunType

from helmsman import policies


def task_instance(pool: str, slots: int = 1, default_gpus: int | None = None) -> Any:
    params = {} if default_gpus is None else {"gpus": default_gpus}
    return SimpleNamespace(pool=pool, pool_slots=slots, task=SimpleNamespace(params=params))


def dag_run(run_type: DagRunType, conf: dict[str, Any] | None = None) -> Any:
    return SimpleNamespace(run_type=run_type, conf=conf or {})


@pytest.mark.parametrize(
    ("run_type", "conf", "expected"),
    [
        (DagRunType.MANUAL, {"gpus": 3}, ("gpu", 3)),
        (DagRunType.SCHEDULED, {}, ("gpu", 1)),
        (DagRunType.BACKFILL_JOB, {}, ("gpu_backfill", 1)),
        (DagRunType.BACKFILL_JOB, {"gpus": 2}, ("gpu_backfill", 2)),
        (DagRunType.MANUAL, {"gpus": 0}, ("default_pool", 1)),  # on the CPU: no GPU slot
        (DagRunType.BACKFILL_JOB, {"gpus": 0}, ("gpu_backfill", 1)),  # bounds backfills at once
    ],
)
def test_gpu_tasks_follow_the_run(
    run_type: DagRunType, conf: dict[str, Any], expected: tuple[str, int]
) -> None:
    ti = task_instance("gpu")
    policies.task_instance_mutation_hook(ti, dag_run(run_type, conf))
    assert (ti.pool, ti.pool_slots) == expected


@pytest.mark.parametrize(("default", "expected"), [(0, ("default_pool", 1)), (2, ("gpu", 2))])
def test_a_run_without_gpus_in_its_conf_gets_the_params_default(
    default: int, expected: tuple[str, int]
) -> None:
    """A scheduled run's conf is empty: the model's default (the Param's) decides."""
    ti = task_instance("gpu", default_gpus=default)
    policies.task_instance_mutation_hook(ti, dag_run(DagRunType.SCHEDULED))
    assert (ti.pool, ti.pool_slots) == expected
    policies.task_instance_mutation_hook(ti, dag_run(DagRunType.SCHEDULED))  # called again
    assert (ti.pool, ti.pool_slots) == expected


def test_other_tasks_are_left_alone() -> None:
    ti = task_instance("default_pool")
    policies.task_instance_mutation_hook(ti, dag_run(DagRunType.BACKFILL_JOB, {"gpus": 4}))
    assert (ti.pool, ti.pool_slots) == ("default_pool", 1)


@pytest.mark.parametrize(
    ("model", "conf", "expected"),
    [
        ({"gpus": 0}, {}, ("default_pool", 1)),  # parsed into the GPU pool; the Param says 0
        ({"gpus": 2}, {}, ("gpu", 2)),
        ({"gpus": 2}, {"gpus": 0}, ("default_pool", 1)),
        ({"gpus": 1, "nodes": 2}, {}, ("gpu", 2)),  # one GPU on each of two nodes
        ({"gpus": 2, "nodes": 2}, {"nodes": 1}, ("gpu", 2)),
        ({"gpus": 1}, {"nodes": 3}, ("gpu", 1)),  # a single-pod model has no nodes to count
    ],
)
def test_the_policy_reads_the_run_off_a_real_serialized_train_task(
    model: dict[str, int], conf: dict[str, Any], expected: tuple[str, int], tmp_path: Path
) -> None:
    """What the scheduler hands the hook: the DAG as the DAG processor serialized it."""
    import shutil

    import yaml
    from airflow.serialization.serialized_objects import DagSerialization

    from helmsman import factory
    from tests.dev_env import REPO

    shutil.copytree(REPO / "models" / "churn", tmp_path / "churn")
    spec = yaml.safe_load((tmp_path / "churn" / "model.yaml").read_text())
    (tmp_path / "churn" / "model.yaml").write_text(yaml.safe_dump({**spec, **model}))
    train, _, _, _ = factory.model_dags("churn", tmp_path)
    task = DagSerialization.from_dict(DagSerialization.to_dict(train)).get_task("train")
    ti = SimpleNamespace(pool=task.pool, pool_slots=task.pool_slots, task=task)
    policies.task_instance_mutation_hook(ti, dag_run(DagRunType.SCHEDULED, conf))
    assert (ti.pool, ti.pool_slots) == expected


def test_the_local_stack_and_the_pools_file_name_the_backfill_pool_the_policy_uses() -> None:
    from tools import stack

    assert stack.BACKFILL_POOL == policies.BACKFILL_GPU_POOL
    assert stack.pool_slots(policies.BACKFILL_GPU_POOL) >= stack.PARALLELISM
