"""A model's DAGs, built from its folder: ``train_<name>``, ``monitor_<name>``,
``rollback_<name>``, ``scale_<name>``.

``models/<name>/model.yaml`` (``helmsman_steps.spec``) declares the model; this module turns it
into the DAGs every model gets, the way astronomer-cosmos turns a dbt project into a DAG. A DAG
file per model holds two lines (``dags/model_<name>.py``), so a broken ``model.yaml`` is an
import error of that file alone, with the file, the field and what it allows in the message,
and every other model's DAGs still load.

Nothing heavy is imported here: the DAG processor pays this module's cost on every parse.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, AssetOrTimeSchedule, Param, task
from airflow.sdk.exceptions import AirflowFailException

from helmsman import alerts, deploy, runconf, tasks
from helmsman.pods import MAX_NODES, Platform, job_task, pod_task
from helmsman.schedules import SlotCron
from helmsman.serving.analysis import Thresholds
from helmsman_steps import contract, spec
from helmsman_steps.exitcodes import ExitCode
from helmsman_steps.spec import ModelSpec, ModelSpecError

MAX_GPUS = 4  # the most one training run may ask for (the GPU pools hold at least this)
# The trainers and the tasks each trains: the MLP is a binary classifier (one sigmoid).
TRAINER_TASKS = {
    "mlp": ("binary",),
    "sklearn": ("binary", "multiclass", "regression"),
    "lightgbm": ("binary", "multiclass", "regression"),
    "custom": ("binary", "multiclass", "regression"),
}

TRAINING_DOC = """
### Train, evaluate, roll out `{name}` — {description}

Built from `models/{name}/model.yaml` (task: {task}, trainer: {trainer}, metric: {metric}).

1. `plan` (worker): the days — the Param `data_end`, else the data interval, else yesterday.
2. `etl` (pod): validates the training window's raw records, quarantines bad rows, writes
   Parquet partitions.
3. `train` (pod): {training}, exports ONNX (checked against the native model) and registers
   a model version with lineage tags.
4. `evaluate` (pod): challenger vs `@champion` on the same held-out rows ({metric}, both
   scored from their ONNX graphs); the decision, plots and a golden set go to MLflow.
5. `decide` (worker): the fence — backfills, dry runs and data older than the champion's
   never deploy.
6. `rollout` (worker): the new version is verified behind a preview Service no user reaches
   (identity, golden-set parity, probe load), then gets traffic in steps, each judged on its
   live traffic in Prometheus (error rate, p99, prediction divergence from the stable
   version); any failed check sends all traffic back to the stable version at once.
   Once every check passed, the version becomes `@champion` (the old one keeps
   `@previous-champion`) and only then serves every user.
7. `promote` (worker): confirms `@champion` (idempotent).

**Triage.** A red `etl`: read its log for the bad-row share and the quarantine report path.
A red `train`/`evaluate`: the failed pod is kept (`kubectl -n ml get pods -l
app.kubernetes.io/component=train`), the MLflow run has the params and metrics so far.
`rollout` red means the new version failed a check and **was taken out of traffic** — the log
lists each step's figures and each failed check, the model version carries
`helmsman.rollout=rejected`, the reasons and the figures (and `rollout/*.json` in its run); the
champion is serving. `decide` and `rollout` skipped is normal for backfills and rejected
challengers: the reason is in the `decide` log and on the version (`helmsman.fence_reason`).
"""


def models_root(default: str | Path) -> Path:
    """Where model folders live: ``HELMSMAN_MODELS_DIR``, else ``default`` (the DAG files pass
    the ``models/`` folder beside theirs)."""
    return Path(os.environ.get("HELMSMAN_MODELS_DIR") or default)


def load(name: str, models_dir: str | Path) -> ModelSpec:
    """The validated spec of model ``name``, or a ModelSpecError a person can act on."""
    folder = models_root(models_dir) / name
    model = spec.load(folder)
    shown = f"models/{name}/{spec.SPEC_FILE}"
    if model.task not in TRAINER_TASKS[model.trainer.kind]:
        raise ModelSpecError(
            f"{shown}: trainer.kind: the {model.trainer.kind} trainer trains "
            f"{' and '.join(TRAINER_TASKS[model.trainer.kind])} models, not {model.task}; use "
            "sklearn or lightgbm"
        )
    # A file in the model's folder must be there: the images copy the folder for the pods.
    folder = models_root(models_dir) / name
    for field, entry in (("features", model.features),
                         ("trainer.entrypoint", model.trainer.entrypoint)):  # fmt: skip
        file_name = (entry or "").partition(":")[0]
        if file_name.endswith(".py") and not (folder / file_name).is_file():
            raise ModelSpecError(
                f"{shown}: {field}: {entry!r}: no {file_name} in models/{name}/ (a file "
                "entry point is a file in the model's folder)"
            )
    unknown = set(model.serving.thresholds) - {f.name for f in fields(Thresholds)}
    if unknown:
        allowed = sorted(f.name for f in fields(Thresholds))
        raise ModelSpecError(
            f"{shown}: serving.thresholds: unknown {sorted(unknown)}; one of {allowed}"
        )
    if model.gpus * model.nodes > MAX_GPUS:
        raise ModelSpecError(
            f"{shown}: gpus: {model.gpus} x nodes: {model.nodes} is above the {MAX_GPUS} GPUs "
            "a run may ask for"
        )
    # The form's defaults come from trainer.params: one outside the Params' bounds would make
    # every trigger with the defaults a 400 (or the DAG an import error).
    given = model.trainer.params
    seed = given.get("seed", given.get("random_state"))
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= contract.MAX_SEED):
        raise ModelSpecError(f"{shown}: trainer.params: seed {seed!r}: 0 to {contract.MAX_SEED}")
    hidden = given.get("hidden")
    if model.trainer.kind == "mlp" and hidden is not None \
            and not re.fullmatch(HIDDEN_PATTERN, str(hidden)):  # fmt: skip
        raise ModelSpecError(
            f"{shown}: trainer.params: hidden {hidden!r}: comma-separated widths, up to "
            f"{contract.MAX_LAYERS} layers of 1 to {contract.MAX_WIDTH} units"
        )
    return model


def model_dags(
    name: str, models_dir: str | Path, platform: Platform | None = None
) -> tuple[DAG, DAG, DAG, DAG]:
    """The four DAGs of model ``name`` (``models_dir/name/model.yaml``): training, rollback,
    scale and monitoring."""
    model = load(name, models_dir)
    platform = platform or Platform()
    return (training_dag(model, platform), rollback_dag(model, platform),
            scale_dag(model, platform), monitor_dag(model, platform))  # fmt: skip


def breach_assets(name: str) -> dict[str, Asset]:
    """What a monitoring breach updates, per kind (drift, performance), and a model's training
    is scheduled on (with its cron)."""
    return {
        kind: Asset(name=f"{name}_{kind}", uri=contract.breach_asset_uri(name, kind),
                    group="helmsman")
        for kind in contract.BREACH_KINDS
    }  # fmt: skip


def _training_schedule(model: ModelSpec) -> Any:
    """The cron of model.yaml, or a breach of the model's monitoring (either of its breach
    assets) when ``monitoring.retrain`` is on: Airflow's asset-or-time schedule."""
    if not model.monitoring.retrain:
        return None if model.schedule is None else SlotCron(model.schedule)
    drift, performance = breach_assets(model.name).values()
    if model.schedule is None:
        return drift | performance
    # The SDK types its timetable as an SDK one; a plugin-registered core timetable serializes
    # the same way (airflow.serialization.encoders.encode_timetable).
    cron: Any = SlotCron(model.schedule)
    return AssetOrTimeSchedule(timetable=cron, assets=drift | performance)


def _default_args() -> dict[str, Any]:
    return {
        "owner": "ml-platform",
        "retries": 2,
        # The first retry's delay is the platform's: Airflow's [core] default_task_retry_delay
        # (helm-values/airflow.yaml: 60 s; a test stack shortens it), doubled for each next one.
        "retry_exponential_backoff": True,
    }


# One width from 1 to contract.MAX_WIDTH (4096), and up to contract.MAX_LAYERS of them: the form
# and the REST API refuse a network that cannot fit a training pod before a run exists.
_WIDTH = r"(?:[1-9][0-9]{0,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-6])"
# (?!\n): Airflow's JSON Schema validator searches with Python's re, whose $ also matches
# before a final newline.
HIDDEN_PATTERN = rf"^{_WIDTH}(?:,{_WIDTH}){{0,{contract.MAX_LAYERS - 1}}}(?!\n)$"


def _trainer_params(model: ModelSpec) -> dict[str, Param]:
    """The MLP trainer's knobs, with the model's values as defaults; another trainer takes its
    settings from model.yaml (``trainer.params``), and the form has only its seed."""
    given = model.trainer.params
    seed = Param(
        given.get("seed", given.get("random_state", 42)), title="Seed", type="integer",
        minimum=0, maximum=contract.MAX_SEED,
        description=f"Seed for the trainer's randomness (0 to {contract.MAX_SEED}).",
    )  # fmt: skip
    if model.trainer.kind != "mlp":
        return {"seed": seed}
    return {
        "epochs": Param(
            given.get("epochs", 8), title="Epochs", type="integer", minimum=1, maximum=500,
            description="Passes over the training data (1 to 500).",
        ),
        "learning_rate": Param(
            given.get("learning_rate", 0.003), title="Learning rate", type="number",
            exclusiveMinimum=0, maximum=1, description="AdamW learning rate (above 0, at most 1).",
        ),
        "hidden": Param(
            str(given.get("hidden", "64,32")), title="Hidden layers", type="string",
            pattern=HIDDEN_PATTERN,
            description=f"Hidden layer widths, comma-separated (e.g. 64,32): up to "
            f"{contract.MAX_LAYERS} layers of 1 to {contract.MAX_WIDTH} units.",
        ),
        "batch_size": Param(
            given.get("batch_size", 1024), title="Batch size", type="integer", minimum=16,
            maximum=65536,
            description="Rows per optimizer step, all GPUs together (16 to 65536).",
        ),
        "seed": seed,
    }  # fmt: skip


def training_dag(model: ModelSpec, platform: Platform) -> DAG:
    name = model.name
    metric = model.evaluation.metric
    better = "higher" if model.higher_is_better else "lower"
    most_gpus = MAX_GPUS if model.trainer.kind in contract.GPU_TRAINERS else 0
    params = {
        "data_end": Param(
            None, type=["null", "string"], format="date", title="Data end (exclusive)",
            description="Train on days before this date (YYYY-MM-DD). Empty: the run's data "
            "interval, or yesterday for a manual run.",
        ),
        "window_days": Param(
            model.window_days, title="Training window (days)", type="integer", minimum=1,
            maximum=90,
            description="Days of data to train on, ending at the data end (1 to 90).",
        ),
        **_trainer_params(model),
        **({"nodes": Param(
            model.nodes, title="Nodes", type="integer", minimum=1, maximum=MAX_NODES,
            description=f"Training pods that train as one model, each with the GPUs above (1 "
            f"to {MAX_NODES}; torchrun across the pods of an Indexed Job).",
        )} if model.nodes > 1 else {}),
        "gpus": Param(
            model.gpus, title="GPUs", type="integer", minimum=0, maximum=most_gpus,
            description=f"GPUs for the training pod (0 to {most_gpus}; 0: train on CPU, holding no "
            "GPU; 2 or more: one DDP process per GPU under torchrun)."
            if most_gpus else f"The {model.trainer.kind} trainer runs on CPU: 0.",
        ),
        "min_improvement": Param(
            model.evaluation.min_improvement, title=f"Minimum {metric} gain", type="number",
            minimum=-1, maximum=1,
            description=f"{metric} gain over the champion a challenger needs to be promoted "
            f"(-1 to 1; a gain is {better} {metric}"
            + ("; a share of the champion's error, 0.02: 2% lower)." if not model.higher_is_better
               else ")."),
        ),
        **deploy.rollout_params(model.serving.strategy, model.serving.canary_steps),
        "deploy": Param(
            "auto", title="Deploy", enum=["auto", "never", "force"],
            description="auto: deploy if evaluation promotes. never: record only. force: deploy "
            "even if evaluation rejected (the health gate still applies).",
        ),
        "replicas": Param(
            model.serving.replicas, title="Serving replicas", type="integer", minimum=1,
            maximum=20, description="Serving pods after the rollout (1 to 20).",
        ),
        "serving_image": Param(
            None, type=["null", "string"], title="Serving image",
            pattern=platform.serving_image_pattern(),
            description="Serving image override (empty: the release's pinned image); from "
            f"{platform.serving_images_text()} only.",
        ),
        "dry_run": Param(
            False, title="Dry run", type="boolean", description="Train and evaluate; never deploy."
        ),
    }  # fmt: skip
    training = (
        "the PyTorch MLP, on GPUs when given them; checkpoints every epoch (a retry resumes)"
        if model.trainer.kind == "mlp"
        else "scikit-learn's gradient boosting with model.yaml's trainer.params"
    )
    doc = TRAINING_DOC.format(
        name=name, description=model.description or "one model per day of data", task=model.task,
        trainer=model.trainer.kind, metric=model.evaluation.metric, training=training,
    )  # fmt: skip
    declared = sorted(params)
    with DAG(
        dag_id=f"train_{name}",
        description=f"Daily training of the {name} model on Kubernetes, rolled out gated.",
        doc_md=doc,
        schedule=_training_schedule(model),
        catchup=False,
        max_active_runs=1,
        tags=["helmsman", "training", "kubernetes", f"model:{name}"],
        # A task that fails for good alerts (a failed rollout: the version was rejected).
        default_args={**_default_args(), "on_failure_callback": alerts.task_failed(name)},
        params=params,
    ) as dag:

        @task(retries=1)
        def plan(
            params: Any = None,
            data_interval_start: dt.datetime | None = None,
            data_interval_end: dt.datetime | None = None,
            dag_run: Any = None,
            triggering_asset_events: Any = None,
        ) -> dict[str, str]:
            # The API refused such conf already; a run started another way (the CLI,
            # dag.test) fails here, at once: no retry can fix its input.
            found = runconf.problems(dag_run.conf or {}, declared, runconf.today_utc())
            # A run asking for more GPUs than the pool holds would wait for them forever.
            asked = params.get("gpus", 0) * params.get("nodes", 1)
            if asked > MAX_GPUS:
                found.append(
                    f"gpus x nodes = {asked}: a run may ask for at most {MAX_GPUS} GPUs (the "
                    "GPU pools' size); lower gpus or nodes"
                )
            if found:
                raise AirflowFailException("; ".join(found))
            return tasks.plan_interval(
                data_interval_start=data_interval_start,
                data_interval_end=data_interval_end,
                run_after=dag_run.run_after,
                data_end=params["data_end"] or tasks.drift_data_end(triggering_asset_events),
                window_days=params["window_days"],
            )

        interval = ["--start", tasks.planned("start"), "--end", tasks.planned("end")]
        # Every pod gets the model's spec; training stores it with the version it registers.
        model_spec = spec.to_json(model)
        etl = pod_task(
            "etl", "etl",
            ["--start", tasks.planned("window_start"), "--end", tasks.planned("end")],
            platform=platform, model_spec=model_spec,
        )  # fmt: skip
        knobs = ["--seed", "{{ params.seed }}"]
        if model.trainer.kind == "mlp":
            knobs += [
                "--epochs",
                "{{ params.epochs }}",
                "--learning-rate",
                "{{ params.learning_rate }}",
                "--hidden",
                "{{ params.hidden }}",
                "--batch-size",
                "{{ params.batch_size }}",
            ]
        train_args = [*interval, "--model-name", name, "--window-days",
                      "{{ params.window_days }}", *knobs]  # fmt: skip
        # The cluster policy sets the slots from the run's conf; a CPU trainer holds none.
        slots = max(model.gpus, 1) * model.nodes if model.trainer.kind in contract.GPU_TRAINERS \
            else 0  # fmt: skip
        if model.nodes > 1:
            train: Any = job_task(
                "train", "train", train_args, nodes="{{ params.nodes }}", gpus="{{ params.gpus }}",
                gpu_slots=slots, platform=platform, model_spec=model_spec,
            )  # fmt: skip
        else:
            train = pod_task("train", "train", train_args, gpus="{{ params.gpus }}",
                             gpu_slots=slots, platform=platform, model_spec=model_spec)  # fmt: skip
        evaluate = pod_task(
            "evaluate", "evaluate",
            [*interval, "--model-name", name, "--run-key", contract.run_key_template("train"),
             "--min-primary", str(model.evaluation.floor),
             "--min-improvement", "{{ params.min_improvement }}",
             "--window-days", "{{ params.window_days }}"],
            platform=platform, model_spec=model_spec,
        )  # fmt: skip

        @task(retries=1)
        def decide(params: Any = None, dag_run: Any = None, ti: Any = None) -> dict[str, Any]:
            return tasks.decide(
                model_name=name,
                train_run_key=contract.run_key(dag_run.dag_id, dag_run.run_id, "train"),
                run_type=getattr(dag_run.run_type, "value", str(dag_run.run_type)),
                interval_end=ti.xcom_pull(task_ids="plan")["end"],
                deploy=params["deploy"],
                dry_run=params["dry_run"],
            )

        rollout = _rollout(
            model, platform,
            image="{{ params.serving_image or '' }}", replicas="{{ params.replicas }}",
            # A retry after a crash resumes the rollout from its record; a failed check fails
            # without retries.
            retries=2, retry_delay=dt.timedelta(seconds=10), retry_exponential_backoff=False,
        )  # fmt: skip

        @task(retries=2)
        def promote(dag_run: Any = None, ti: Any = None) -> Any:
            gated = ti.xcom_pull(task_ids="rollout")
            owner = f"{dag_run.dag_id}/{dag_run.run_id}"
            return deploy.promote(name, gated["version"], owner)

        plan() >> etl >> train >> evaluate >> decide() >> rollout >> promote()
    return dag


def _rollout(model: ModelSpec, platform: Platform, **extra: Any) -> deploy.RolloutOperator:
    """The gated rollout of a model version, steered by the DAG's rollout Params."""
    return deploy.RolloutOperator(
        task_id="rollout",
        model_name=model.name,
        instance=model.instance,
        strategy="{{ params.strategy }}",
        steps="{{ params.canary_steps }}",
        interval="{{ params.analysis_interval }}",
        shadow="{{ params.shadow }}",
        thresholds=dict(model.serving.thresholds),
        serving_resources=model.serving.resources.model_dump(),
        platform=platform,
        max_active_tis_per_dag=1,
        **extra,
    )


def _ops_args() -> dict[str, Any]:
    return {
        "catchup": False,
        "max_active_runs": 1,
        "default_args": {"owner": "ml-platform", "retries": 1},
    }


def rollback_dag(model: ModelSpec, platform: Platform) -> DAG:
    name = model.name
    with DAG(
        dag_id=f"rollback_{name}",
        schedule=None,
        description=f"Roll {model.instance} back to a chosen {name} version, health-gated.",
        doc_md=f"""
Rolls `{model.instance}` out to the `{name}` version you name (one that a training run
evaluated), through the same preview checks and live steps as a training run's rollout, then
moves `@champion` to it. If a check fails, the current version stays. Find candidates in
MLflow: `@previous-champion`, or versions tagged `helmsman.rollout=passed`.
""",
        tags=["helmsman", "serving", "operations", f"model:{name}"],
        params={
            "model_version": Param(
                type="string",
                pattern=r"^[1-9][0-9]*$",
                description="The model version to serve (a number, e.g. 3).",
            ),
            **deploy.rollout_params(model.serving.strategy, model.serving.canary_steps),
        },
        **_ops_args(),
    ) as dag:

        @task
        def decide(params: Any = None) -> dict[str, Any]:
            return deploy.choose_version(name, params["model_version"], model.instance, platform)

        rollout = _rollout(model, platform)

        @task
        def promote(dag_run: Any = None, ti: Any = None) -> Any:
            gated = ti.xcom_pull(task_ids="rollout")
            return deploy.promote(name, gated["version"], f"{dag_run.dag_id}/{dag_run.run_id}")

        decide() >> rollout >> promote()
    return dag


def scale_dag(model: ModelSpec, platform: Platform) -> DAG:
    with DAG(
        dag_id=f"scale_{model.name}",
        schedule=None,
        description=f"Scale {model.instance} to a number of replicas.",
        doc_md=f"""
Sets the replica count of the slot that serves behind `{model.instance}` and waits until every
replica is available; the autoscaler's floor moves with it (it follows the serving slot after
every rollout), so the count holds until load asks for more.
""",
        tags=["helmsman", "serving", "operations", f"model:{model.name}"],
        params={
            "replicas": Param(
                model.serving.replicas,
                type="integer",
                minimum=1,
                maximum=20,
                description="Replicas (1 to 20).",
            ),
        },
        **_ops_args(),
    ) as dag:

        @task(pool=deploy.POOL)
        def scale(params: Any = None) -> Any:
            return deploy.scale(model.instance, params["replicas"], platform)

        scale()
    return dag


MONITOR_DOC = """
### Watch the served `{name}` model; a breach starts its training

Every {schedule}: `monitor` (pod) judges the last {hours} hour(s) of the inference log that
`{instance}` writes (a {sample} sample of its requests) against the reference profile
`@champion` was trained with: per-feature drift (PSI over the training deciles or categories,
with a Kolmogorov-Smirnov test for numbers), prediction drift and the live missing and unseen
shares; where labels of served requests arrive, the live {metric} of the last
{performance_hours} h against its evaluation figure. Its MLflow run (experiment `{experiment}`)
holds the figures, `monitor/report.json` and `monitor/drift.png`; the task log's last line
says what changed.

`alarm` (worker) reads the verdict; a breach sends an alert (the `helmsman_alerts`
connection) naming each breach and its figure. `retrain_on_drift` turns it into an event of the
`{drift}` asset (`retrain_on_performance`: of `{performance}`, when only the live
{metric} fell), on either of which `train_{name}` is scheduled (and its cron), unless a breach
within {cooldown} h already started training (the cool-down) or `monitoring.retrain` is off.

**Triage.** `monitor` skipped: nothing to judge (no traffic logged in the window, fewer than
{min_rows} rows, no reference profile, an unreadable file): the reason is its log's last line.
`alarm` skipped: no breach. `retrain_on_*` skipped: the cool-down, retraining is off, or the
other kind's event carries the breach.
"""


# The judged window's end: the run's data interval end (a manual run's: when it runs).
END = "{{ (dag_run.data_interval_end or dag_run.run_after).strftime('%Y-%m-%dT%H:%M:%S') }}"


def monitor_dag(model: ModelSpec, platform: Platform) -> DAG:
    name, settings = model.name, model.monitoring
    assets = breach_assets(name)
    with DAG(
        dag_id=f"monitor_{name}",
        schedule=SlotCron(settings.schedule),
        description=f"Drift and data quality of what {model.instance} serves; a breach retrains.",
        doc_md=MONITOR_DOC.format(
            name=name,
            schedule=settings.schedule,
            hours=settings.window_hours,
            instance=model.instance,
            sample="10%",
            experiment=contract.MONITORING_EXPERIMENT,
            drift=assets["drift"].uri,
            performance=assets["performance"].uri,
            metric=model.evaluation.metric,
            performance_hours=settings.performance_hours,
            cooldown=settings.cooldown_hours,
            min_rows=settings.min_rows,
        ),
        tags=["helmsman", "monitoring", f"model:{name}"],
        **_ops_args(),
    ) as dag:
        judge = pod_task(
            "monitor", "monitor",
            ["--model-name", name, "--window-hours", str(settings.window_hours), "--end", END],
            platform=platform, model_spec=spec.to_json(model),
            # Nothing to judge is a skipped task, not a failed one (and no alarm).
            skip_on_exit_code=[ExitCode.SKIPPED],
        )  # fmt: skip

        @task(on_success_callback=alerts.breach(name))
        def alarm(dag_run: Any = None) -> dict[str, Any]:
            return tasks.alarm(
                model_name=name,
                monitor_run_key=contract.run_key(dag_run.dag_id, dag_run.run_id, "monitor"),
                retrain=settings.retrain,
                cooldown=dt.timedelta(hours=settings.cooldown_hours),
            )

        found = alarm()
        judge >> found
        for kind, asset in assets.items():
            _retrain_task(kind, asset)(found)
    return dag


def _retrain_task(kind: str, asset: Asset) -> Any:
    """``retrain_on_<kind>``: the ``kind`` asset's event, when a breach of that kind starts
    training (``tasks.request_training``); skipped otherwise, so one breach is one event."""

    @task(task_id=f"retrain_on_{kind}", outlets=[asset])
    def retrain(found: Any, outlet_events: Any = None) -> dict[str, Any]:
        extra = tasks.request_training(found, kind)
        outlet_events[asset].extra = extra
        return extra

    return retrain
