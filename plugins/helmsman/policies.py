"""Cluster policies for Airflow's local settings: GPU pool slots that follow the run's Params,
and a separate GPU pool for backfills.

Pool and pool slots are fixed when a DAG is parsed, but the GPU count is a Param chosen per
run. Airflow calls ``task_instance_mutation_hook`` as it creates a run's task instances, with
the run at hand, so this is where a GPU task's slots become the GPUs its run asked for, and
where backfill runs move to their own pool (they must not starve scheduled training).

Installed by ``airflow_local_settings.py`` (the chart's ``airflowLocalSettings`` value in
helm-values/airflow.yaml, and the demo stack's config folder)::

    from helmsman.policies import task_instance_mutation_hook
"""

from __future__ import annotations

from typing import Any

from helmsman.pods import GPU_POOL

BACKFILL_GPU_POOL = "gpu_backfill"
GPU_PARAM = "gpus"


def task_instance_mutation_hook(task_instance: Any, dag_run: Any) -> None:
    if task_instance.pool not in (GPU_POOL, BACKFILL_GPU_POOL) or dag_run is None:
        return
    run_type = getattr(dag_run, "run_type", "")
    if getattr(run_type, "value", run_type) == "backfill":
        task_instance.pool = BACKFILL_GPU_POOL
    gpus = (getattr(dag_run, "conf", None) or {}).get(GPU_PARAM)
    if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus > 0:
        task_instance.pool_slots = gpus
