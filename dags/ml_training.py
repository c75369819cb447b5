"""Train the churn model on Kubernetes, evaluate it against the champion, ship it if it wins."""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, Param, task

from helmsman import deploy, tasks
from helmsman.pods import Platform, pod_task

PLATFORM = Platform()
MAX_GPUS = 4  # the most one training run may ask for (the GPU pools hold at least this)
DEFAULT_GPUS = 1
MODEL = "churn"

DOC = """
### Train, evaluate, roll out — one model per day of data

1. `plan` (worker): the days — the Param `data_end`, else the data interval, else yesterday.
2. `etl` (pod): validates the training window's raw records, quarantines bad rows, writes
   Parquet partitions.
3. `train` (GPU pod): trains, checkpoints every epoch (a retry resumes), registers a model
   version with lineage tags.
4. `evaluate` (pod): challenger vs `@champion` on the same held-out day; the decision, plots
   and a golden set go to MLflow.
5. `decide` (worker): the fence — backfills, dry runs and data older than the champion's
   never deploy.
6. `rollout` (worker): the new version is verified behind a preview Service no user reaches
   (identity, golden-set parity, probe load), then gets traffic in steps (canary 5% → 25% →
   50% → 100% by default, after a shadow step), each judged on its live traffic in
   Prometheus (error rate, p99, prediction divergence from the stable version); any failed
   check sends all traffic back to the stable version at once.
7. `promote` (worker): moves `@champion`; the old one keeps `@previous-champion`.

**Triage.** A red `etl`: read its log for the bad-row share and the quarantine report path.
A red `train`/`evaluate`: the failed pod is kept (`kubectl -n ml get pods -l
app.kubernetes.io/component=train`), the MLflow run has the params and metrics so far.
`rollout` red means the new version failed a check and **was taken out of traffic** — the log
lists each step's figures and each failed check, the model version carries
`helmsman.rollout=rejected`, the reasons and the figures (and `rollout/*.json` in its run); the
champion is serving. `decide` and `rollout` skipped is normal for backfills and rejected
challengers: the reason is in the `decide` log and on the version (`helmsman.fence_reason`).
"""

with DAG(
    dag_id="ml_training",
    description="Daily churn model training on Kubernetes with a health-gated rollout.",
    doc_md=DOC,
    schedule="0 3 * * *",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    tags=["helmsman", "training", "kubernetes"],
    default_args={
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": True,
    },
    params={
        "data_end": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Data end (exclusive)",
            description="Train on days before this date (YYYY-MM-DD). Empty: the run's data "
            "interval, or yesterday for a manual run.",
        ),
        "window_days": Param(
            7,
            title="Training window (days)",
            type="integer",
            minimum=1,
            maximum=90,
            description="Days of data to train on, ending at the data end (1 to 90).",
        ),
        "epochs": Param(
            8,
            title="Epochs",
            type="integer",
            minimum=1,
            maximum=500,
            description="Passes over the training data (1 to 500).",
        ),
        "learning_rate": Param(
            0.003,
            title="Learning rate",
            type="number",
            exclusiveMinimum=0,
            maximum=1,
            description="AdamW learning rate (above 0, at most 1).",
        ),
        "hidden": Param(
            "64,32",
            title="Hidden layers",
            type="string",
            pattern=r"^[1-9][0-9]*(,[1-9][0-9]*)*$",
            description="Hidden layer widths, comma-separated (e.g. 64,32).",
        ),
        "batch_size": Param(
            1024,
            title="Batch size",
            type="integer",
            minimum=16,
            maximum=65536,
            description="Rows per optimizer step (16 to 65536).",
        ),
        "seed": Param(
            42,
            title="Seed",
            type="integer",
            minimum=0,
            description="Seed for weights and batch order (0 or more).",
        ),
        "gpus": Param(
            DEFAULT_GPUS,
            title="GPUs",
            type="integer",
            minimum=0,
            maximum=MAX_GPUS,
            description=f"GPUs for the training pod (0 to {MAX_GPUS}; 0: train on CPU).",
        ),
        "min_improvement": Param(
            0.0,
            title="Minimum AUC gain",
            type="number",
            minimum=-1,
            maximum=1,
            description="ROC AUC gain over the champion a challenger needs to be promoted "
            "(-1 to 1).",
        ),
        **deploy.rollout_params(),
        "deploy": Param(
            "auto",
            title="Deploy",
            enum=["auto", "never", "force"],
            description="auto: deploy if evaluation promotes. never: record only. force: deploy "
            "even if evaluation rejected (the health gate still applies).",
        ),
        "replicas": Param(
            2,
            title="Serving replicas",
            type="integer",
            minimum=1,
            maximum=20,
            description="Serving pods after the rollout (1 to 20).",
        ),
        "serving_image": Param(
            None,
            type=["null", "string"],
            title="Serving image",
            description="Serving image override (empty: the release's pinned image).",
        ),
        "dry_run": Param(
            False, title="Dry run", type="boolean", description="Train and evaluate; never deploy."
        ),
    },
) as dag:

    @task(retries=1)
    def plan(params: dict, data_interval_start=None, data_interval_end=None, dag_run=None):
        return tasks.plan_interval(
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            run_after=dag_run.run_after,
            data_end=params["data_end"],
            window_days=params["window_days"],
        )

    interval = ["--start", tasks.planned("start"), "--end", tasks.planned("end")]
    etl = pod_task(
        "etl",
        "etl",
        ["--start", tasks.planned("window_start"), "--end", tasks.planned("end")],
        platform=PLATFORM,
    )
    train = pod_task(
        "train",
        "train",
        [
            *interval,
            "--model-name",
            MODEL,
            "--window-days",
            "{{ params.window_days }}",
            "--epochs",
            "{{ params.epochs }}",
            "--learning-rate",
            "{{ params.learning_rate }}",
            "--hidden",
            "{{ params.hidden }}",
            "--batch-size",
            "{{ params.batch_size }}",
            "--seed",
            "{{ params.seed }}",
        ],
        gpus="{{ params.gpus }}",
        gpu_slots=DEFAULT_GPUS,  # the cluster policy sets them from the run's conf
        platform=PLATFORM,
    )
    evaluate = pod_task(
        "evaluate",
        "evaluate",
        [
            *interval,
            "--model-name",
            MODEL,
            "--run-key",
            "{{ dag.dag_id }}/{{ run_id }}/train",
            "--min-improvement",
            "{{ params.min_improvement }}",
        ],
        platform=PLATFORM,
    )

    @task(retries=1)
    def decide(params: dict, dag_run=None, ti=None):
        return tasks.decide(
            model_name=MODEL,
            train_run_key=f"{dag_run.dag_id}/{dag_run.run_id}/train",
            run_type=getattr(dag_run.run_type, "value", str(dag_run.run_type)),
            interval_end=ti.xcom_pull(task_ids="plan")["end"],
            deploy=params["deploy"],
            dry_run=params["dry_run"],
        )

    rollout = deploy.RolloutOperator(
        task_id="rollout",
        model_name=MODEL,
        strategy="{{ params.strategy }}",
        steps="{{ params.canary_steps }}",
        interval="{{ params.analysis_interval }}",
        shadow="{{ params.shadow }}",
        image="{{ params.serving_image or '' }}",
        replicas="{{ params.replicas }}",
        platform=PLATFORM,
        # A retry after a crash resumes the rollout from its record (soon: until it does, all
        # traffic is on the stable version); a failed check fails without retries.
        retries=2,
        retry_delay=dt.timedelta(seconds=10),
        retry_exponential_backoff=False,
        max_active_tis_per_dag=1,
    )

    @task(retries=2)
    def promote(dag_run=None, ti=None):
        gated = ti.xcom_pull(task_ids="rollout")
        return deploy.promote(MODEL, gated["version"], f"{dag_run.dag_id}/{dag_run.run_id}")

    plan() >> etl >> train >> evaluate >> decide() >> rollout >> promote()
