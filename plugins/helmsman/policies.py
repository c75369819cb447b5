"""Cluster policies for Airflow's local settings: GPU pool slots that follow the run's Params,
and a separate pool for backfills.

Pool and pool slots are fixed when a DAG is parsed, but the GPU count is a Param chosen per
run. Airflow calls ``task_instance_mutation_hook`` as it creates a run's task instances, with
the run at hand, so this is where a GPU task's slots become the GPUs its run asked for (the
run's conf, else the Param's default), and where backfill runs move to their own pool:

- a scheduled or manual run with ``gpus: N > 0`` holds N slots of the ``gpu`` pool (N times
  its ``nodes`` for a multi-node model);
- one with ``gpus: 0`` trains on the CPU and holds no GPU slot (``default_pool``, 1 slot);
- a backfill run holds ``max(N, 1)`` slots of ``gpu_backfill``: backfills never deploy, so they
  run side by side, as many at once as that pool has slots, and never starve scheduled
  training of GPUs. A CPU backfill holds one slot too: the pool is what bounds how many
  backfill runs train at once.

Installed by ``airflow_local_settings.py`` (the chart's ``airflowLocalSettings`` value in
helm-values/airflow.yaml, and the demo stack's config folder)::

    from helmsman.policies import task_instance_mutation_hook
"""

from __future__ import annotations

from typing import Any

from helmsman.pods import GPU_POOL

BACKFILL_GPU_POOL = "gpu_backfill"
CPU_POOL = "default_pool"
GPU_PARAM = "gpus"
NODES_PARAM = "nodes"


def task_instance_mutation_hook(task_instance: Any, dag_run: Any) -> None:
    if task_instance.pool not in (GPU_POOL, BACKFILL_GPU_POOL) or dag_run is None:
        return
    run_type = getattr(dag_run, "run_type", "")
    gpus = _requested(task_instance, dag_run)
    if getattr(run_type, "value", run_type) == "backfill":
        task_instance.pool = BACKFILL_GPU_POOL
        if gpus is not None:
            task_instance.pool_slots = max(gpus, 1)
    elif gpus == 0:
        task_instance.pool, task_instance.pool_slots = CPU_POOL, 1
    elif gpus is not None:
        task_instance.pool_slots = gpus


def _requested(task_instance: Any, dag_run: Any) -> int | None:
    """The run's GPU count: its conf's, else the task's Param default, times its nodes (a
    multi-node model's Param; 1 without); None if nothing says."""
    gpus = _setting(task_instance, dag_run, GPU_PARAM)
    if gpus is None:
        return None
    params = getattr(getattr(task_instance, "task", None), "params", None) or {}
    nodes = _setting(task_instance, dag_run, NODES_PARAM) if NODES_PARAM in params else 1
    return gpus * (nodes or 1)


def _setting(task_instance: Any, dag_run: Any, name: str) -> int | None:
    conf = getattr(dag_run, "conf", None) or {}
    if name in conf:
        value = conf[name]
    else:
        try:
            value = task_instance.task.params[name]
        except (AttributeError, KeyError, TypeError):  # no task at hand, or no such Param
            return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
