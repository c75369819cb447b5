"""Rolling a model version out to the serving Deployment, and waiting for it properly.

The serving stack (Deployment, Service, PodDisruptionBudget) comes from
``manifests/serving.yaml``; :func:`render` fills in the names, the model version and the
lineage annotations, :func:`apply` creates what is absent and patches what exists, and
:func:`wait_for_rollout` waits the way ``kubectl rollout status`` does (observedGeneration,
updated / available replicas, the progress deadline). The health gate and the automatic
rollback build on these.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFESTS = Path(__file__).parent / "manifests" / "serving.yaml"
MODEL_ANNOTATION = "helmsman.io/model-version"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
REVISION = "deployment.kubernetes.io/revision"


class RolloutFailed(Exception):
    """The Deployment did not become fully available with the new version."""


@dataclass(frozen=True)
class Target:
    """Which serving Deployment, serving which model version, from which image."""

    name: str
    namespace: str
    model_name: str
    model_version: str
    image: str = ""
    replicas: int = 2
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"


def render(target: Target) -> list[dict[str, Any]]:
    """The serving objects for ``target``, from the manifests kept in the repo."""
    import yaml

    docs = [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]
    labels = {INSTANCE_LABEL: target.name}
    objects = []
    for doc in docs:
        obj = copy.deepcopy(doc)
        meta = obj["metadata"]
        meta["name"], meta["namespace"] = target.name, target.namespace
        meta.setdefault("labels", {}).update(labels)
        kind = obj["kind"]
        if kind == "Deployment":
            spec = obj["spec"]
            spec["replicas"] = target.replicas
            spec["selector"]["matchLabels"].update(labels)
            template = spec["template"]
            template["metadata"]["labels"].update(labels)
            template["metadata"].setdefault("annotations", {})[MODEL_ANNOTATION] = (
                target.model_version
            )
            container = template["spec"]["containers"][0]
            args = container["args"]
            args[args.index("--model-uri") + 1] = target.model_uri
            if target.image:
                container["image"] = target.image
            meta.setdefault("annotations", {}).update(target.annotations)
        elif kind == "Service":
            obj["spec"]["selector"].update(labels)
        elif kind == "PodDisruptionBudget":
            obj["spec"]["selector"]["matchLabels"].update(labels)
        objects.append(obj)
    return objects


def apply(api_client: Any, objects: list[dict[str, Any]]) -> None:
    """Create each object that is absent; patch (strategic merge) each that exists."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    apps, core, policy = (
        client.AppsV1Api(api_client),
        client.CoreV1Api(api_client),
        client.PolicyV1Api(api_client),
    )
    verbs = {
        "Deployment": (
            apps.read_namespaced_deployment,
            apps.create_namespaced_deployment,
            apps.patch_namespaced_deployment,
        ),
        "Service": (
            core.read_namespaced_service,
            core.create_namespaced_service,
            core.patch_namespaced_service,
        ),
        "PodDisruptionBudget": (
            policy.read_namespaced_pod_disruption_budget,
            policy.create_namespaced_pod_disruption_budget,
            policy.patch_namespaced_pod_disruption_budget,
        ),
    }
    for obj in objects:
        read, create, patch = verbs[obj["kind"]]
        name, namespace = obj["metadata"]["name"], obj["metadata"]["namespace"]
        try:
            read(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            create(namespace, obj)
            continue
        patch(name, namespace, obj)


def wait_for_rollout(api_client: Any, name: str, namespace: str, timeout: float = 600) -> None:
    """Return once every replica runs the current template and is available.

    Raises RolloutFailed when the Deployment reports ProgressDeadlineExceeded or ``timeout``
    passes, saying how far it got.
    """
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    deadline = time.monotonic() + timeout
    while True:
        d = apps.read_namespaced_deployment(name, namespace)
        status, wanted = d.status, d.spec.replicas
        updated, available = status.updated_replicas or 0, status.available_replicas or 0
        progress = f"updated {updated}/{wanted}, available {available}/{wanted}"
        for condition in status.conditions or []:
            if condition.type == "Progressing" and condition.reason == "ProgressDeadlineExceeded":
                raise RolloutFailed(
                    f"deployment {namespace}/{name}: {condition.message} ({progress})"
                )
        if (
            (status.observed_generation or 0) >= d.metadata.generation
            and (status.updated_replicas or 0) == wanted
            and (status.replicas or 0) == wanted
            and (status.available_replicas or 0) == wanted
        ):
            return
        if time.monotonic() > deadline:
            raise RolloutFailed(
                f"deployment {namespace}/{name} timed out after {timeout:.0f}s ({progress})"
            )
        time.sleep(1)


def served_version(api_client: Any, name: str, namespace: str) -> str | None:
    """The model version the Deployment's current template serves (None if absent)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    try:
        d = client.AppsV1Api(api_client).read_namespaced_deployment(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    annotations = d.spec.template.metadata.annotations or {}
    version: str | None = annotations.get(MODEL_ANNOTATION)
    return version


def rollback(api_client: Any, name: str, namespace: str, timeout: float = 600) -> str | None:
    """Return the Deployment to its previous revision (what ``kubectl rollout undo`` does).

    Returns the model version now served, or None when there was no earlier revision.
    """
    from kubernetes import client

    apps = client.AppsV1Api(api_client)
    deployment = apps.read_namespaced_deployment(name, namespace)
    owned = [
        rs
        for rs in apps.list_namespaced_replica_set(namespace).items
        if any(ref.uid == deployment.metadata.uid for ref in rs.metadata.owner_references or [])
    ]
    owned.sort(key=lambda rs: int((rs.metadata.annotations or {}).get(REVISION, "0")), reverse=True)
    if len(owned) < 2:
        return None
    previous = api_client.sanitize_for_serialization(owned[1].spec.template)
    previous["metadata"]["labels"].pop("pod-template-hash", None)
    apps.patch_namespaced_deployment(
        name, namespace, [{"op": "replace", "path": "/spec/template", "value": previous}]
    )
    wait_for_rollout(api_client, name, namespace, timeout)
    return served_version(api_client, name, namespace)


@dataclass
class GateResult:
    passed: bool
    reasons: list[str]
    p99_ms: float = 0.0
    error_rate: float = 0.0


def health_gate(
    api_client: Any,
    target: Target,
    service_url: str,
    golden: dict[str, Any],
    *,
    tolerance: float = 1e-4,
    probe_requests: int = 200,
    max_error_rate: float = 0.0,
    max_p99_ms: float = 250.0,
) -> GateResult:
    """Every check the new version must pass before it may serve: all reasons, not the first.

    1. Every pod of the Deployment is Ready and has not restarted.
    2. ``/metadata`` through the Service reports exactly the expected version.
    3. The golden set's predictions match the offline evaluation within ``tolerance``.
    4. A probe load through the Service stays within the error rate and p99 thresholds.
    """
    import json
    import urllib.error
    import urllib.request

    from kubernetes import client

    reasons: list[str] = []
    core = client.CoreV1Api(api_client)
    selector = ",".join(
        f"{k}={v}" for k, v in {NAME_LABEL: "helmsman-serving", INSTANCE_LABEL: target.name}.items()
    )
    pods = [
        p
        for p in core.list_namespaced_pod(target.namespace, label_selector=selector).items
        if p.metadata.deletion_timestamp is None
    ]
    for pod in pods:
        statuses = pod.status.container_statuses or []
        if not all(s.ready for s in statuses):
            reasons.append(f"pod {pod.metadata.name} is not ready")
        restarts = sum(s.restart_count for s in statuses)
        if restarts:
            reasons.append(f"pod {pod.metadata.name} restarted {restarts} time(s)")

    def call(path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the Service's own http address
            service_url.rstrip("/") + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.load(response)

    try:
        seen = {call("/metadata")["model_version"] for _ in range(max(2 * target.replicas, 4))}
        if seen != {target.model_version}:
            reasons.append(
                f"/metadata reports versions {sorted(seen)}, expected {target.model_version}"
            )
        served = call("/predict", {"instances": golden["inputs"]})["predictions"]
        worst = max(abs(a - b) for a, b in zip(served, golden["predictions"], strict=True))
        if worst > tolerance:
            reasons.append(
                f"golden-set predictions differ from evaluation by up to {worst:.6f} "
                f"(tolerance {tolerance})"
            )
    except (OSError, KeyError, ValueError) as exc:
        reasons.append(f"the served model did not answer correctly: {exc}")

    latencies, errors = [], 0
    row = {"instances": golden["inputs"][:1]}
    for _ in range(probe_requests):
        started = time.perf_counter()
        try:
            call("/predict", row)
        except (OSError, ValueError):
            errors += 1
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    p99 = (
        1000 * latencies[min(int(len(latencies) * 0.99), len(latencies) - 1)] if latencies else 0.0
    )
    error_rate = errors / max(probe_requests, 1)
    if error_rate > max_error_rate:
        reasons.append(f"probe load error rate {error_rate:.2%} over {max_error_rate:.2%}")
    if p99 > max_p99_ms:
        reasons.append(f"probe load p99 {p99:.1f} ms over {max_p99_ms:.1f} ms")
    return GateResult(not reasons, reasons, p99, error_rate)
