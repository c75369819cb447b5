"""The pod factory: every pod Helmsman runs is built here, with the team's defaults.

One place decides namespace, service account, image per stage, the Pod Security Standards
"restricted" security context, resources, GPU scheduling, configuration from Secrets and
ConfigMaps, labels and the operator's lifecycle settings; each default has its reason beside
it. DAG files call :func:`pod_task` and say only what differs: the stage, its arguments, its
GPUs. The GPU count may be a template (a DAG Param): the pod's GPU limit, toleration and node
selector then follow the value rendered at run time, and the pool slots follow the run's conf
through the cluster policy in :mod:`helmsman.policies`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from helmsman.serving.objects import GatewayRef
from helmsman_steps import contract

# Images, pinned in this one place. A release bumps TAG (and the Airflow image it ships in).
REGISTRY = "ghcr.io/helmsman-ml"
TAG = "0.1.0"
STAGE_IMAGES = {
    "etl": "helmsman-pipeline",
    "evaluate": "helmsman-pipeline",
    "train": "helmsman-train",
    "serve": "helmsman-serve",
}

# Resources per stage: requests sized for the demo data, limits to stop a runaway pod from
# starving its node (memory limit == request: the pod is never the first OOM victim by surprise).
STAGE_RESOURCES = {
    "etl": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    "evaluate": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    "train": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}},
}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_POOL = "gpu"
NON_ROOT_UID = 10001  # the images' numeric user (images/*/Dockerfile)


@dataclass(frozen=True)
class Platform:
    """Where pods run and what they read; the defaults match helm-values/ and deploy/."""

    namespace: str = "ml"
    service_account: str = "helmsman-pipeline"
    # MLflow endpoint and credentials: a Secret, never inline values or Airflow Variables.
    mlflow_secret: str = "helmsman-mlflow"  # noqa: S105 - the Secret's name, not a secret
    # Non-secret settings (dataset URI, model name, source URI): a ConfigMap.
    settings_configmap: str = "helmsman-settings"
    kubernetes_conn_id: str = "kubernetes_default"
    # The one switch for deferrable mode: pods are followed and rollouts waited for by the
    # triggerer, so a long training or a slow rollout holds no worker slot. Off by default
    # while Airflow 3.3 can fail a deferred task whose trigger fires within seconds (a stale
    # executor event; apache/airflow#67287, #72716): see docs/adr/0005-deploy-task.md.
    deferrable: bool = False
    # Where the rollout splits traffic: the Gateway (Gateway API) the serving HTTPRoutes
    # attach to, in the serving namespace (deploy/serving-gateway.yaml). None: the cluster has no
    # Gateway, and traffic moves by the replica ratio (no shadow step).
    gateway: str | None = "helmsman-gateway"
    # The Prometheus that scrapes the serving pods (an http connection: host, port).
    prometheus_conn_id: str = "prometheus_default"
    registry: str = REGISTRY
    tag: str = TAG

    def gateway_ref(self) -> GatewayRef | None:
        return GatewayRef(self.gateway) if self.gateway else None

    def image(self, stage: str) -> str:
        if stage not in STAGE_IMAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGE_IMAGES)}")
        return f"{self.registry}/{STAGE_IMAGES[stage]}:{self.tag}"


def pod_name(task_id: str) -> str:
    """A DNS-1123 pod name derived from the task id (KPO adds a random suffix)."""
    name = re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")
    return f"helmsman-{name}"[:50].rstrip("-")


def container_security_context() -> dict[str, Any]:
    """Pod Security Standards "restricted", container level."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "readOnlyRootFilesystem": True,  # steps write to /tmp (an emptyDir) and object stores only
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict[str, Any]:
    """Pod Security Standards "restricted", pod level."""
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(stage: str) -> dict[str, Any]:
    """CPU and memory; GPUs are added at run time (extended resources go in limits only)."""
    spec = STAGE_RESOURCES.get(stage, STAGE_RESOURCES["etl"])
    return {"requests": dict(spec["requests"]), "limits": dict(spec["limits"])}


def launcher(processes: int) -> list[str]:
    """The command of a pod with more than one GPU: torchrun, one process per GPU (DDP), on a
    rendezvous inside the pod (``--standalone``). The step's arguments follow the ``--``, which
    ends torchrun's own options: its parser would take the step's ``--start`` for an
    abbreviation of its ``--start-method``."""
    return ["torchrun", "--standalone", f"--nproc-per-node={processes}", "-m", "helmsman_steps",
            "--"]  # fmt: skip


class HelmsmanPodOperator(KubernetesPodOperator):
    """KPO whose GPU count is rendered at run time (``gpus`` may be ``"{{ params.gpus }}"``); a
    pod with N > 1 GPUs runs its step under torchrun in N processes (``launcher``)."""

    template_fields = (*KubernetesPodOperator.template_fields, "gpus")

    def __init__(self, *, gpus: int | str = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gpus = gpus

    def gpu_count(self) -> int:
        try:
            count = int(self.gpus)
        except (TypeError, ValueError):
            raise ValueError(f"gpus must be a whole number, got {self.gpus!r}") from None
        if count < 0:
            raise ValueError(f"gpus must be 0 or more, got {count}")
        return count

    def build_pod_request_obj(self, context: Any = None, *, dry_run: bool = False) -> Any:
        from kubernetes.client import models as k8s

        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        count = self.gpu_count()
        if count:
            container = pod.spec.containers[0]
            container.resources.limits = {
                **(container.resources.limits or {}),
                GPU_RESOURCE: str(count),
            }
            pod.spec.tolerations = [
                *(pod.spec.tolerations or []),
                k8s.V1Toleration(**_snake(GPU_TOLERATION)),
            ]
            pod.spec.node_selector = {**(pod.spec.node_selector or {}), **GPU_NODE_SELECTOR}
        if count > 1:
            pod.spec.containers[0].command = launcher(count)
        return pod


def pod_task(
    task_id: str,
    stage: str,
    arguments: list[str],
    *,
    gpus: int | str = 0,
    gpu_slots: int | None = None,
    platform: Platform | None = None,
    deferrable: bool | None = None,
    model_spec: str | None = None,
    **operator_kwargs: Any,
) -> HelmsmanPodOperator:
    """A KubernetesPodOperator running ``helmsman-step STAGE ARGUMENTS`` with our defaults.

    ``model_spec`` (the model's validated spec as JSON, ``helmsman_steps.spec.to_json``) reaches
    the pod as ``HELMSMAN_MODEL_SPEC``.

    ``gpus`` is a count or a template of one; ``gpu_slots`` (default: ``gpus`` when it is a
    number, else 1) is what the task holds of the GPU pool unless the cluster policy sets it
    from the run's conf.
    """
    from kubernetes.client import models as k8s

    platform = platform or Platform()
    if isinstance(gpus, int) and gpus < 0:
        raise ValueError(f"gpus must be 0 or more, got {gpus}")
    slots = gpu_slots if gpu_slots is not None else (gpus if isinstance(gpus, int) else 1)
    image = platform.image(stage)
    tmp = k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="2Gi"))
    gpu_kwargs: dict[str, Any] = {}
    if slots:
        # The GPU pool caps concurrent GPU pods cluster-wide: one slot per GPU asked for.
        gpu_kwargs = {"pool": GPU_POOL, "pool_slots": slots}
    kwargs: dict[str, Any] = {
        "task_id": task_id,
        "gpus": gpus,
        "name": pod_name(task_id),
        "namespace": platform.namespace,
        "image": image,
        "cmds": ["helmsman-step"],
        "arguments": [stage, *arguments],
        "kubernetes_conn_id": platform.kubernetes_conn_id,
        "service_account_name": platform.service_account,
        # The pod talks to MLflow and object stores, never to the Kubernetes API.
        "automount_service_account_token": False,
        "env_from": [
            k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=platform.mlflow_secret)),
            k8s.V1EnvFromSource(
                config_map_ref=k8s.V1ConfigMapEnvSource(name=platform.settings_configmap)
            ),
        ],
        # Lineage for the MLflow tags (helmsman_steps.registry.Lineage.from_env).
        "env_vars": [
            k8s.V1EnvVar(name="HELMSMAN_DAG_ID", value="{{ dag.dag_id }}"),
            k8s.V1EnvVar(name="HELMSMAN_RUN_ID", value="{{ run_id }}"),
            k8s.V1EnvVar(name="HELMSMAN_RUN_KEY", value=run_key(stage)),
            k8s.V1EnvVar(name="HELMSMAN_IMAGE", value=image),
            k8s.V1EnvVar(name="HELMSMAN_CODE_VERSION", value=platform.tag),
            k8s.V1EnvVar(name="TMPDIR", value="/tmp"),  # noqa: S108 - the emptyDir below
            *([k8s.V1EnvVar(name=contract.MODEL_SPEC_ENV, value=model_spec)] if model_spec else []),
        ],
        "labels": {
            "app.kubernetes.io/name": "helmsman",
            "app.kubernetes.io/component": stage,
            "app.kubernetes.io/part-of": "helmsman",
            "app.kubernetes.io/managed-by": "airflow",
        },
        "container_resources": k8s.V1ResourceRequirements(**resources(stage)),
        "security_context": pod_security_context(),
        "container_security_context": container_security_context(),
        "volumes": [tmp],
        "volume_mounts": [k8s.V1VolumeMount(name="tmp", mount_path="/tmp")],  # noqa: S108
        # A worker that dies mid-task re-attaches to the running pod on the next try instead of
        # starting a second one (Airflow 3.3's successor of reattach_on_restart).
        "durable": True,
        # Failed pods stay for triage; succeeded ones go.
        "on_finish_action": "delete_succeeded_pod",
        # A GPU node may need minutes to scale up; CPU pods start in seconds.
        "startup_timeout_seconds": 900 if slots else 300,
        "get_logs": True,
        "log_events_on_failure": True,
        # Results go through MLflow and the dataset store, not an XCom sidecar.
        "do_xcom_push": False,
        "deferrable": platform.deferrable if deferrable is None else deferrable,
        "image_pull_policy": "IfNotPresent",
        "termination_grace_period": 30,
        **gpu_kwargs,
    }
    kwargs.update(operator_kwargs)
    return HelmsmanPodOperator(**kwargs)


def run_key(stage: str) -> str:
    """The MLflow run key of one stage of one DAG run (a retry finds its earlier run by it)."""
    return contract.run_key_template(stage)


def _snake(mapping: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in mapping.items()}
