"""Operating the serving Deployment by hand: roll back to a chosen version, scale it."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from helmsman import deploy
from helmsman.pods import Platform

PLATFORM = Platform()
MODEL = "churn"
COMMON = {
    "start_date": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    "catchup": False,
    "max_active_runs": 1,
    "tags": ["helmsman", "serving", "operations"],
    "default_args": {"owner": "ml-platform", "retries": 1},
}

with DAG(
    dag_id="serving_rollback",
    schedule=None,
    description="Roll the serving Deployment back to a chosen model version, health-gated.",
    doc_md="""
Rolls `churn-serving` out to the model version you name (one that a training run evaluated),
through the same preview checks and live steps as a training run's rollout, then moves
`@champion` to it. If a check fails, the current version stays. Find candidates in MLflow:
`@previous-champion`, or versions tagged `helmsman.rollout=passed`.
""",
    params={
        "model_version": Param(
            type="string",
            pattern=r"^[1-9][0-9]*$",
            description="The model version to serve (a number, e.g. 3).",
        ),
        **deploy.rollout_params(),
    },
    **COMMON,
) as rollback_dag:

    @task
    def decide(params: dict):
        return deploy.choose_version(MODEL, params["model_version"])

    rollout = deploy.RolloutOperator(
        task_id="rollout",
        model_name=MODEL,
        strategy="{{ params.strategy }}",
        steps="{{ params.canary_steps }}",
        interval="{{ params.analysis_interval }}",
        shadow="{{ params.shadow }}",
        platform=PLATFORM,
        max_active_tis_per_dag=1,
    )

    @task
    def promote(dag_run=None, ti=None):
        gated = ti.xcom_pull(task_ids="rollout")
        owner = f"{dag_run.dag_id}/{dag_run.run_id}"
        return deploy.promote(MODEL, gated["version"], owner)

    decide() >> rollout >> promote()

with DAG(
    dag_id="serving_scale",
    schedule=None,
    description="Scale the serving Deployment to a number of replicas.",
    doc_md="""
Sets the replica count of the slot that serves behind `churn-serving` and waits until every
replica is available; the autoscaler's floor moves with it (it follows the serving slot after
every rollout), so the count holds until load asks for more.
""",
    params={
        "replicas": Param(2, type="integer", minimum=1, maximum=20, description="Replicas."),
    },
    **COMMON,
) as scale_dag:

    @task(pool=deploy.POOL)
    def scale(params: dict):
        return deploy.scale(deploy.DEFAULT_INSTANCE, params["replicas"], PLATFORM)

    scale()
