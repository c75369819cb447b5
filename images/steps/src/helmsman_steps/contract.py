"""The names the pods and the Airflow side agree on: MLflow experiments, tags, aliases, artifact
paths and the run-key format.

One home for each, imported by the step package (in the pods) and by ``plugins/helmsman`` (in
Airflow's workers and DAG processor). Standard library only, and nothing heavy imported: a DAG
file may import it at parse time.
"""

from __future__ import annotations

from typing import Final

# MLflow experiments, one per stage that logs runs.
ETL_EXPERIMENT: Final = "helmsman-etl"
TRAINING_EXPERIMENT: Final = "helmsman-training"
MONITORING_EXPERIMENT: Final = "helmsman-monitoring"

# Trainers that may use GPUs and run in several processes (torchrun); the others are CPU-only,
# one process.
GPU_TRAINERS: Final = ("mlp", "custom")

# Bounds of the MLP trainer's knobs, the same in the trigger form and in the step: a seed numpy
# and scikit-learn accept (below 2**32), and networks that fit a training pod (a 40-digit width
# would fail to allocate after a pod was scheduled).
MAX_SEED: Final = 2**32 - 1
MAX_LAYERS: Final = 8
MAX_WIDTH: Final = 4096

# Registered model aliases: what serves, and what served before the last promotion.
CHAMPION: Final = "champion"
PREVIOUS_CHAMPION: Final = "previous-champion"

# Tags on runs and model versions. Every tag Helmsman writes starts with the prefix.
TAG_PREFIX: Final = "helmsman."
RUN_KEY_TAG: Final = "helmsman.run_key"  # a run's key (a retry finds its earlier run by it)
MODEL_NAME_TAG: Final = "helmsman.model_name"
MODEL_VERSION_TAG: Final = "helmsman.model_version"  # on the training run: what it registered
DATASET_HASH_TAG: Final = "helmsman.dataset_hash"
SOURCE_URI_TAG: Final = "helmsman.source_uri"
INTERVAL_END_TAG: Final = "helmsman.interval_end"  # lineage: the data a version saw
DECISION_TAG: Final = "helmsman.decision"  # evaluation's verdict: promote / reject
DECISION_REASONS_TAG: Final = "helmsman.decision_reasons"
FENCE_TAG: Final = "helmsman.fence"  # may this run deploy (the orchestrator's decision)
FENCE_REASON_TAG: Final = "helmsman.fence_reason"
ROLLOUT_TAG: Final = "helmsman.rollout"  # passed / rejected
ROLLOUT_REASON_TAG: Final = "helmsman.rollout_reason"
ROLLOUT_FIGURES_TAG: Final = "helmsman.rollout_figures"
DEPLOYMENT_TAG: Final = "helmsman.deployment"
DEPLOYED_BY_TAG: Final = "helmsman.deployed_by"
PROMOTED_BY_TAG: Final = "helmsman.promoted_by"
# On a monitor run: its verdict (ok / breach), the breaches as JSON, the version it judged.
MONITOR_VERDICT_TAG: Final = "helmsman.monitor_verdict"
MONITOR_BREACHES_TAG: Final = "helmsman.monitor_breaches"
MONITOR_WINDOW_TAG: Final = "helmsman.monitor_window"  # START..END, ISO, UTC
# On a monitor run whose breach started a training run (the alarm's cool-down reads it).
MONITOR_RETRAIN_TAG: Final = "helmsman.monitor_retrain"

# The model's validated spec (models/<name>/model.yaml as JSON): the DAG hands it to the pods in
# this variable, and training stores it with the model version, so that a version carries the
# schema it was trained on wherever it is served or rolled back to.
MODEL_SPEC_ENV: Final = "HELMSMAN_MODEL_SPEC"
MODEL_SPEC_FILE: Final = "model_spec.json"

# Requests the platform itself sends to a server (the rollout's golden-set and probe-load
# checks) carry this header: the server answers them but keeps them out of its inference log,
# so the model's monitor judges users' traffic only.
VERIFY_HEADER: Final = "x-helmsman-verify"
# The inference log (the servers' sampled requests) and what the monitor compares it with: the
# training data's profile, stored with the model version's run.
REFERENCE_PROFILE_ARTIFACT: Final = "monitoring/reference_profile.json"
MONITOR_REPORT_ARTIFACT: Final = "monitor/report.json"  # a monitor run's judgement, whole

# The ONNX graph's metadata property naming its input columns, in order.
ONNX_INPUTS_PROP: Final = "helmsman.inputs"

# Artifacts one side writes and the other reads.
GOLDEN_ARTIFACT: Final = "evaluation/golden.json"  # inputs and the offline predictions


def serving_instance(model_name: str) -> str:
    """The serving instance of a model: its Deployments' prefix, Services and HTTPRoute."""
    return f"{model_name}-serving"


def route_path(model_name: str) -> str:
    """Where a model answers behind the Gateway: ``/models/<name>`` (its HTTPRoute rewrites
    the prefix away, so ``/models/churn/predict`` reaches a churn server's ``/predict``)."""
    return f"/models/{model_name}"


def run_key(dag_id: str, run_id: str, stage: str) -> str:
    """The key of one stage of one DAG run: ``DAG_ID/RUN_ID/STAGE``."""
    return f"{dag_id}/{run_id}/{stage}"


def run_key_template(stage: str) -> str:
    """``run_key`` as a Jinja template, for a pod's arguments or environment."""
    return run_key("{{ dag.dag_id }}", "{{ run_id }}", stage)


def local_run_key(start: str, end: str, stage: str) -> str:
    """The key of a stage run by hand, outside Airflow: ``local/START_END/STAGE``."""
    return run_key("local", f"{start}_{end}", stage)


# What a monitoring breach is about, each an Airflow asset of the model: its inputs drifted, or
# (labels of served requests say so) its live performance fell.
BREACH_KINDS = ("drift", "performance")


def breach_asset_uri(model_name: str, kind: str) -> str:
    """The Airflow asset a monitoring breach of ``model_name`` of ``kind`` updates."""
    if kind not in BREACH_KINDS:
        raise ValueError(f"unknown breach kind {kind!r}; one of {BREACH_KINDS}")
    return f"helmsman://{model_name}/{kind}"
