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

from airflow.providers.cncf.kubernetes.operators.job import KubernetesJobOperator
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

from helmsman.serving.objects import GatewayRef
from helmsman_steps import contract
from helmsman_steps.exitcodes import ExitCode

# Images, pinned in this one place. A release bumps TAG (and the Airflow image it ships in).
REGISTRY = "ghcr.io/helmsman-ml"
TAG = "0.1.0"
STAGE_IMAGES = {
    "etl": "helmsman-pipeline",
    "evaluate": "helmsman-pipeline",
    "monitor": "helmsman-pipeline",
    "train": "helmsman-train",
    "serve": "helmsman-serve",
}

# Resources per stage: requests sized for the demo data, limits to stop a runaway pod from
# starving its node (memory limit == request: the pod is never the first OOM victim by surprise).
STAGE_RESOURCES = {
    "etl": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    "evaluate": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    "monitor": {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
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
    # The serving pods' MLflow account, which only reads models: a Secret of its own, so a
    # serving pod cannot move @champion or change a model (the pipeline's account can).
    serving_mlflow_secret: str = "helmsman-mlflow-serving"  # noqa: S105 - a name
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
    # Where a run's serving_image override may come from: a serving pod gets the MLflow
    # credentials, so an image from anywhere else is refused at the trigger (the Param's
    # pattern) and again by the rollout. Each entry is a registry or path prefix ending in "/"
    # ("ghcr.io/acme/") or one repository ("ghcr.io/acme/serve", any tag or digest of it).
    # None: the release's own registry (``registry``).
    serving_images: tuple[str, ...] | None = None
    # Overrides must name a digest (repo@sha256:...), so what passed the gate is what serves
    # and a re-pushed tag cannot change it.
    pin_digests: bool = False

    def gateway_ref(self) -> GatewayRef | None:
        return GatewayRef(self.gateway) if self.gateway else None

    def serving_image_pattern(self) -> str:
        """A regular expression (Python's and ECMAScript's alike, for the trigger form) that
        a permitted serving image override matches in full; the empty string passes (no
        override)."""
        allowed = self.allowed_serving_images()
        if not allowed:
            return "^$"
        # ASCII classes, not \w (Unicode in Python, ASCII in ECMAScript): one answer in both.
        repository, tag = r"[A-Za-z0-9._/-]+", r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]*)?"
        choices = [
            _regex_literal(entry) + (repository + tag if entry.endswith("/") else tag)
            for entry in allowed
        ]
        digest = "@sha256:[0-9a-f]{64}" if self.pin_digests else "(?:@sha256:[0-9a-f]{64})?"
        # (?!\n): JSON Schema validators search with Python's re, whose $ also matches before
        # a final newline.
        return rf"^(?:(?:{'|'.join(choices)}){digest})?(?!\n)$"

    def allowed_serving_images(self) -> tuple[str, ...]:
        return (f"{self.registry}/",) if self.serving_images is None else self.serving_images

    def serving_images_text(self) -> str:
        allowed = ", ".join(self.allowed_serving_images()) or "nowhere (no serving_images set)"
        return allowed + (", pinned by digest (@sha256:...)" if self.pin_digests else "")

    def check_serving_image(self, image: str) -> None:
        """Raise ValueError, saying what to fix, for an override the settings do not permit."""
        if image and not re.fullmatch(self.serving_image_pattern(), image):
            raise ValueError(
                f"serving_image {image!r} is not permitted: it must come from "
                f"{self.serving_images_text()} (Platform.serving_images and pin_digests in the "
                "DAG files' platform settings)"
            )

    def image(self, stage: str) -> str:
        if stage not in STAGE_IMAGES:
            raise ValueError(f"unknown stage {stage!r}; one of {sorted(STAGE_IMAGES)}")
        return f"{self.registry}/{STAGE_IMAGES[stage]}:{self.tag}"


def exit_code(pod: Any, container: str) -> int | None:
    """The exit code of ``container`` of a pod (a V1Pod) that has ended; None otherwise."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((c for c in statuses if c.name == container), None)
    terminated = status.state.terminated if status is not None and status.state else None
    return None if terminated is None else terminated.exit_code


def pod_name_of(pod: Any) -> str:
    return getattr(getattr(pod, "metadata", None), "name", None) or "?"


def _bad_input(where: str) -> Exception:
    from airflow.sdk.exceptions import AirflowFailException

    return AirflowFailException(
        f"{where} exited {int(ExitCode.BAD_INPUT)}: bad input (its log above says what to fix). "
        "Not retried: the same input fails the same way."
    )


def _regex_literal(text: str) -> str:
    """``text`` as a literal in a regular expression both Python and ECMAScript (with the
    ``u`` flag, as JSON Schema validators in browsers use) read alike: ``re.escape`` also
    escapes ``-``, which ECMAScript's unicode mode rejects outside a class."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", text)


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


STEP_MODULE = ["-m", "helmsman_steps", "--"]  # what torchrun runs, and the end of its options
# torchrun itself, ending with the step's exit code (a rank's bad input is not retried).
TORCHRUN = ["python", "-m", "helmsman_steps.torchrun"]


def launcher(processes: int) -> list[str]:
    """The command of a pod with more than one GPU: torchrun, one process per GPU (DDP), on a
    rendezvous inside the pod (``--standalone``). The step's arguments follow the ``--``, which
    ends torchrun's own options: its parser would take the step's ``--start`` for an
    abbreviation of its ``--start-method``."""
    return [*TORCHRUN, "--standalone", f"--nproc-per-node={processes}", *STEP_MODULE]


class HelmsmanPodOperator(KubernetesPodOperator):
    """KPO whose GPU count is rendered at run time (``gpus`` may be ``"{{ params.gpus }}"``); a
    pod with N > 1 GPUs runs its step under torchrun in N processes (``launcher``).

    A pod belongs to one try at a time. A try that re-attaches to an earlier try's running pod
    (its worker died, or the scheduler lost track of it) relabels the pod with its own try
    number; a try never deletes a pod whose label names a later try. So a worker that
    outlived its try (a zombie after a scheduler restart) cannot delete the pod that a later
    try is following, whether it is killed or sees the pod end."""

    template_fields = (*KubernetesPodOperator.template_fields, "gpus")
    TRY_LABEL = "try_number"  # KPO's own label of the try that created the pod

    def __init__(self, *, gpus: int | str = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gpus = gpus
        self._try: int | None = None  # the try this instance runs (set once it has a context)

    def get_or_create_pod(self, pod_request_obj: Any, context: Any) -> Any:
        self._try = int(context["ti"].try_number)
        pod = super().get_or_create_pod(pod_request_obj, context)
        theirs = (pod.metadata.labels or {}).get(self.TRY_LABEL)
        if pod is not pod_request_obj and theirs != str(self._try):
            try:
                self.client.patch_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace,
                    {"metadata": {"labels": {self.TRY_LABEL: str(self._try)}}},
                )  # fmt: skip
            except Exception:  # following the pod matters more than the claim: go on unclaimed
                self.log.warning("could not claim pod %s for try %s", pod.metadata.name,
                                 self._try, exc_info=True)  # fmt: skip
                return pod
            self.log.info(
                "re-attached to pod %s of try %s: it is try %s's now (an earlier try's worker, "
                "if still alive, leaves it alone)", pod.metadata.name, theirs, self._try,
            )  # fmt: skip
        return pod

    def trigger_reentry(self, context: Any, event: dict[str, Any]) -> Any:
        self._try = int(context["ti"].try_number)
        return super().trigger_reentry(context, event)

    def owned_by_later_try(self, pod: Any) -> bool:
        """Whether a later try has claimed ``pod`` (read afresh): then this try must not touch
        it. False when this try's number is unknown or the pod is gone."""
        if self._try is None or pod is None:
            return False
        try:
            now = self.client.read_namespaced_pod(pod.metadata.name, pod.metadata.namespace)
        except Exception:  # gone, or unreadable: KPO's deletion that follows says which
            return False
        theirs = (now.metadata.labels or {}).get(self.TRY_LABEL, "")
        if theirs.isdigit() and int(theirs) > self._try:
            self.log.warning(
                "not deleting pod %s: try %s re-attached to it (this is try %s)",
                pod.metadata.name, theirs, self._try,
            )  # fmt: skip
            return True
        return False

    def process_pod_deletion(self, pod: Any, *, reraise: bool = True) -> bool:
        if self.owned_by_later_try(pod):
            return False
        return bool(super().process_pod_deletion(pod, reraise=reraise))

    def on_kill(self) -> None:
        if self.owned_by_later_try(self.pod):
            self._killed = True  # as KPO's own on_kill: cleanup leaves the pod alone too
            return
        super().on_kill()

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

    def cleanup(
        self, pod: Any, remote_pod: Any, xcom_result: Any = None, context: Any = None
    ) -> None:
        """KPO's cleanup, whose failure is final when the step said its input is bad (exit 2):
        the same input fails the same way on every retry, so the task fails now and its log
        ends with why."""
        try:
            super().cleanup(pod, remote_pod, xcom_result, context)
        except Exception as exc:
            if exit_code(remote_pod, self.base_container_name) != ExitCode.BAD_INPUT:
                raise
            raise _bad_input(f"pod {pod_name_of(remote_pod)}") from exc


RENDEZVOUS_PORT = 29500  # torchrun's default master port
# KPO's labels of a task instance's pods (sanitized values); a Job carries them too.
TRY_LABELS = ("dag_id", "task_id", "run_id", "try_number")
MAX_NODES = 8


def node_launcher(nodes: int, processes: int, master: str) -> list[str]:
    """The command of each pod of a multi-node Job: torchrun's static rendezvous at rank 0's
    stable name, this pod's node rank from the Job's completion index (Kubernetes expands
    ``$(JOB_COMPLETION_INDEX)`` from the environment the Job controller gives the pod)."""
    return [*TORCHRUN, f"--nnodes={nodes}", f"--nproc-per-node={processes}",
            "--node-rank=$(JOB_COMPLETION_INDEX)", f"--master-addr={master}",
            f"--master-port={RENDEZVOUS_PORT}", *STEP_MODULE]  # fmt: skip


class HelmsmanJobOperator(KubernetesJobOperator, HelmsmanPodOperator):
    """The provider's KubernetesJobOperator, running a step on ``nodes`` pods that train as one.

    The Job is Indexed (``completions = parallelism = nodes``, no pod retries: a lost node fails
    the Job, and the task's retry resumes from the last checkpoint). Its pods get hostnames
    ``<job>-<index>`` under a headless Service named after the Job (``subdomain``), created
    before the Job and deleted after it (owned by the Job too, so the garbage collector removes
    it if this task cannot), so every node finds rank 0 at ``<job>-0.<job>`` for torchrun's
    rendezvous. Each pod is the pod factory's, with ``gpus`` GPUs and one process per GPU (one
    on CPU).
    """

    template_fields = (*KubernetesJobOperator.template_fields, "gpus", "nodes")

    def __init__(self, *, nodes: int | str, **kwargs: Any) -> None:
        kwargs.setdefault("wait_until_job_complete", True)
        kwargs.setdefault("backoff_limit", 0)
        kwargs.setdefault("completion_mode", "Indexed")
        kwargs.setdefault("ttl_seconds_after_finished", 3600)
        super().__init__(**kwargs)
        self.nodes = nodes
        self._rendezvous: tuple[str, str] | None = None

    def node_count(self) -> int:
        try:
            count = int(self.nodes)
        except (TypeError, ValueError):
            raise ValueError(f"nodes must be a whole number, got {self.nodes!r}") from None
        if not 1 <= count <= MAX_NODES:
            raise ValueError(f"nodes must be 1 to {MAX_NODES}, got {count}")
        return count

    def execute(self, context: Any) -> Any:
        from airflow.sdk.exceptions import TaskDeferred

        # Counts first: a bad value fails before anything is created.
        self.parallelism = self.completions = self.node_count()
        self.job = None
        try:
            return super().execute(context)
        except TaskDeferred:  # not this operator's mode (deferrable=False); never clean up then
            raise
        except BaseException as exc:
            failed = self._bad_input_pod(exc)
            self._delete_job(self.job)  # no node of a failed try is left waiting for its peers
            if failed:
                raise _bad_input(f"pod {failed} of the training Job") from exc
            raise
        finally:
            self._delete_rendezvous()

    def _bad_input_pod(self, exc: BaseException) -> str | None:
        """The name of a pod of this try's Job that exited with bad input, if the task failed
        (not interrupted) and one did."""
        from airflow.sdk.exceptions import AirflowFailException

        if (
            self.job is None
            or not isinstance(exc, Exception)
            or isinstance(exc, AirflowFailException)
        ):
            return None
        try:
            pods = self.client.list_namespaced_pod(
                self.job.metadata.namespace,
                label_selector=f"batch.kubernetes.io/job-name={self.job.metadata.name}",
            ).items
        except Exception:  # the API is failing too: fall back to the retryable failure
            self.log.exception("could not read the Job's pods' exit codes")
            return None
        return next(
            (
                pod_name_of(p)
                for p in pods
                if exit_code(p, self.base_container_name) == ExitCode.BAD_INPUT
            ),
            None,
        )

    def build_job_request_obj(self, context: Any = None) -> Any:
        job = super().build_job_request_obj(context)
        name, nodes = job.metadata.name, self.node_count()
        job.spec.completions = job.spec.parallelism = nodes
        # The pods' task-instance labels (KPO's) on the Job too: a later try finds this one.
        template_labels = job.spec.template.metadata.labels or {}
        job.metadata.labels = {
            **(job.metadata.labels or {}),
            **{k: v for k, v in template_labels.items() if k in TRY_LABELS},
        }
        spec = job.spec.template.spec
        spec.subdomain = name
        processes = max(self.gpu_count(), 1)
        spec.containers[0].command = node_launcher(nodes, processes, f"{name}-0.{name}")
        return job

    def create_job(self, job_request_obj: Any) -> Any:
        from kubernetes.client import models as k8s

        name, namespace = job_request_obj.metadata.name, job_request_obj.metadata.namespace
        self._delete_earlier_tries(job_request_obj)
        core = self.hook.core_v1_client
        service = k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name=name, labels=dict(self.labels or {})),
            spec=k8s.V1ServiceSpec(
                cluster_ip="None",
                selector={"batch.kubernetes.io/job-name": name},
                # The nodes look each other up before any is Ready.
                publish_not_ready_addresses=True,
                ports=[k8s.V1ServicePort(name="rendezvous", port=RENDEZVOUS_PORT)],
            ),
        )
        core.create_namespaced_service(namespace, service)
        self._rendezvous = (namespace, name)
        self.job = job = self.hook.create_job(job=job_request_obj)  # the created Job: its uid
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name,
                 "uid": job.metadata.uid, "blockOwnerDeletion": False}  # fmt: skip
        core.patch_namespaced_service(name, namespace,
                                      {"metadata": {"ownerReferences": [owner]}})  # fmt: skip
        return job

    def _delete_earlier_tries(self, job_request_obj: Any) -> None:
        """An earlier try of this task instance whose worker died left its Job running: its
        nodes would train beside this try's and write the same MLflow run. Delete it (never a
        later try's: the try number must be lower)."""
        labels = job_request_obj.metadata.labels or {}
        if not all(k in labels for k in TRY_LABELS):
            return
        selector = ",".join(f"{k}={labels[k]}" for k in TRY_LABELS if k != "try_number")
        mine = int(labels["try_number"])
        listed = self.hook.batch_v1_client.list_namespaced_job(
            job_request_obj.metadata.namespace, label_selector=selector
        )
        for job in listed.items:
            theirs = (job.metadata.labels or {}).get("try_number", "")
            if theirs.isdigit() and int(theirs) < mine:
                self.log.warning("deleting Job %s of try %s", job.metadata.name, theirs)
                self._delete_job(job)

    def get_pods(self, pod_request_obj: Any, context: Any, *, exclude_checked: bool = True) -> Any:
        """The Job's pods, once the Job controller has made them all (it makes them after the
        Job, in its own time; the provider's lookup does not wait)."""
        import time

        deadline = time.monotonic() + self.startup_timeout_seconds
        selector = self._build_find_pod_label_selector(context, exclude_checked=exclude_checked)
        if self.job is not None:  # this try's Job's pods, not an earlier try's
            selector += f",batch.kubernetes.io/job-name={self.job.metadata.name}"
        while True:
            pods = self.client.list_namespaced_pod(
                pod_request_obj.metadata.namespace, label_selector=selector
            ).items
            if len(pods) >= self.parallelism or time.monotonic() > deadline:
                break
            time.sleep(1)
        if len(pods) < self.parallelism:
            raise RuntimeError(
                f"the Job made {len(pods)} of its {self.parallelism} pods in "
                f"{self.startup_timeout_seconds} s (labels {selector})"
            )
        for pod in pods:
            self.log_matching_pod(pod=pod, context=context)
        return pods

    def _delete_job(self, job: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        if job is None:
            return
        try:
            self.hook.batch_v1_client.delete_namespaced_job(
                job.metadata.name, job.metadata.namespace, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status != 404:
                self.log.warning("could not delete Job %s: %s", job.metadata.name, exc)

    def on_kill(self) -> None:
        try:
            super().on_kill()
        finally:
            self._delete_rendezvous()

    def _delete_rendezvous(self) -> None:
        from kubernetes.client.exceptions import ApiException

        if self._rendezvous is None:
            return
        namespace, name = self._rendezvous
        try:
            self.hook.core_v1_client.delete_namespaced_service(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                self.log.warning("could not delete the rendezvous Service %s: %s", name, exc)
        self._rendezvous = None


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
    kwargs = _pod_kwargs(
        task_id, stage, arguments, gpus=gpus, gpu_slots=gpu_slots, platform=platform,
        deferrable=deferrable, model_spec=model_spec,
    )  # fmt: skip
    kwargs.update(operator_kwargs)
    return HelmsmanPodOperator(**kwargs)


def job_task(
    task_id: str,
    stage: str,
    arguments: list[str],
    *,
    nodes: int | str,
    gpus: int | str = 0,
    gpu_slots: int | None = None,
    platform: Platform | None = None,
    model_spec: str | None = None,
    **operator_kwargs: Any,
) -> HelmsmanJobOperator:
    """The step on ``nodes`` pods at once: an Indexed Job through the provider's
    KubernetesJobOperator, each pod the pod factory's (``pod_task``'s) with ``gpus`` GPUs, its
    step under torchrun across the nodes (``HelmsmanJobOperator``). ``nodes`` and ``gpus`` may
    be templates (DAG Params)."""
    kwargs = _pod_kwargs(task_id, stage, arguments, gpus=gpus, gpu_slots=gpu_slots,
                         platform=platform, deferrable=False, model_spec=model_spec)  # fmt: skip
    # A Job is not re-attached (a later try deletes an earlier try's Job instead); it is
    # followed by the worker (the provider defers only while waiting for the whole Job).
    kwargs.pop("durable")
    kwargs.update(operator_kwargs)
    return HelmsmanJobOperator(nodes=nodes, **kwargs)


def _pod_kwargs(
    task_id: str,
    stage: str,
    arguments: list[str],
    *,
    gpus: int | str,
    gpu_slots: int | None,
    platform: Platform | None,
    deferrable: bool | None,
    model_spec: str | None,
) -> dict[str, Any]:
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
    return kwargs


def run_key(stage: str) -> str:
    """The MLflow run key of one stage of one DAG run (a retry finds its earlier run by it)."""
    return contract.run_key_template(stage)


def _snake(mapping: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in mapping.items()}
