"""The serving objects of one instance, rendered from ``manifests/serving.yaml``.

An instance (``churn-serving``) has two slots, ``blue`` and ``green``: one Deployment each.
The *stable* Service, named like the instance, selects the slot that serves; the *preview*
Service (``<instance>-preview``) selects the slot being rolled out and gets no user traffic
but what the HTTPRoute's weights and mirror give it. Releases before the slots served from a
Deployment named like the instance; that one is the ``main`` slot, taken over as stable.
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helmsman_steps import contract

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests" / "serving.yaml"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGER = "helmsman"
SLOT_LABEL = "helmsman.io/slot"
MODEL_ANNOTATION = "helmsman.io/model-version"
SERVING_NAME = "helmsman-serving"
SLOTS = ("blue", "green")
LEGACY_SLOT = "main"  # the Deployment named like the instance, from releases before slots
COMPARE_HEADER = "x-helmsman-compare"  # ask both versions to log predictions by request id

Obj = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Which serving instance, serving which model version, from which image."""

    name: str
    namespace: str
    model_name: str
    model_version: str
    image: str = ""
    replicas: int = 2
    # A serving pod's requests (the model's serving.resources); the server runs a worker per
    # CPU requested, rounded up, and the memory limit is twice the request.
    cpu: str = "250m"
    memory: str = "256Mi"
    annotations: dict[str, str] = field(default_factory=dict)
    # The Secret with the serving pods' (read-only) MLflow account (Platform.serving_mlflow_secret).
    mlflow_secret: str = "helmsman-mlflow-serving"  # noqa: S105 - the Secret's name

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.model_version}"


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway the instance's HTTPRoute attaches to (a platform team's object)."""

    name: str
    namespace: str | None = None  # None: the serving namespace


def deployment_name(instance: str, slot: str) -> str:
    return instance if slot == LEGACY_SLOT else f"{instance}-{slot}"


def preview_name(instance: str) -> str:
    return f"{instance}-preview"


def other_slot(slot: str | None) -> str:
    """The slot a new version goes to when ``slot`` serves (blue first)."""
    return "green" if slot == "blue" else "blue"


def instance_labels(target: Target) -> dict[str, str]:
    return {NAME_LABEL: SERVING_NAME, INSTANCE_LABEL: target.name}


def slot_labels(target: Target, slot: str) -> dict[str, str]:
    return {**instance_labels(target), SLOT_LABEL: slot}


@functools.cache
def _templates() -> dict[str, Obj]:
    import yaml

    return {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d}


def _base(kind: str, target: Target, name: str) -> Obj:
    obj = copy.deepcopy(_templates()[kind])
    meta = obj["metadata"]
    meta["name"], meta["namespace"] = name, target.namespace
    meta.setdefault("labels", {})[INSTANCE_LABEL] = target.name
    return obj


def deployment(target: Target, slot: str, replicas: int) -> Obj:
    obj = _base("Deployment", target, deployment_name(target.name, slot))
    labels = slot_labels(target, slot)
    obj["metadata"]["labels"].update(labels)
    obj["metadata"].setdefault("annotations", {}).update(target.annotations)
    spec = obj["spec"]
    spec["replicas"] = replicas
    spec["selector"]["matchLabels"] = dict(labels)
    template = spec["template"]
    template["metadata"]["labels"].update(labels)
    template["metadata"].setdefault("annotations", {})[MODEL_ANNOTATION] = target.model_version
    container = template["spec"]["containers"][0]
    args = container["args"]
    args[args.index("--model-uri") + 1] = target.model_uri
    if target.image:
        container["image"] = target.image
    number, unit = re.fullmatch(r"([0-9]+)(\D*)", target.memory).groups()  # type: ignore[union-attr]
    container["resources"] = {"requests": {"cpu": target.cpu, "memory": target.memory},
                              "limits": {"memory": f"{int(number) * 2}{unit}"}}  # fmt: skip
    for source in container["envFrom"]:
        if "secretRef" in source:
            source["secretRef"]["name"] = target.mlflow_secret
    return obj


def service(target: Target, name: str, slot: str | None) -> Obj:
    """A Service of the instance selecting ``slot`` (None: every slot, replica-ratio traffic)."""
    obj = _base("Service", target, name)
    obj["spec"]["selector"] = slot_labels(target, slot) if slot else instance_labels(target)
    return obj


def route(target: Target, gateway: GatewayRef, preview_weight: int, mirror: bool = False) -> Obj:
    """The HTTPRoute: stable and preview Services weighted ``100 - w`` and ``w``; with
    ``mirror``, every request is also copied to the preview (its answers discarded) and both
    versions are asked to log their predictions under the request's id."""
    obj = _base("HTTPRoute", target, target.name)
    parent: Obj = {"name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    obj["spec"]["parentRefs"] = [parent]
    rule = obj["spec"]["rules"][0]
    # Each model under a path of its own, the prefix rewritten away for the servers.
    prefix = contract.route_path(target.model_name)
    rule["matches"] = [{"path": {"type": "PathPrefix", "value": prefix}}]
    stable, preview = rule["backendRefs"]
    stable.update(name=target.name, weight=100 - preview_weight)
    preview.update(name=preview_name(target.name), weight=preview_weight)
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}},
    }
    rule["filters"] = [rewrite]
    if mirror:
        rule["filters"] += [
            {"type": "RequestHeaderModifier",
             "requestHeaderModifier": {"set": [{"name": COMPARE_HEADER, "value": "1"}]}},
            {"type": "RequestMirror",
             "requestMirror": {"backendRef": {"name": preview_name(target.name), "port": 80}}},
        ]  # fmt: skip
    return obj


def autoscaler(target: Target, slot: str, min_replicas: int) -> Obj:
    obj = _base("HorizontalPodAutoscaler", target, target.name)
    obj["spec"]["scaleTargetRef"]["name"] = deployment_name(target.name, slot)
    obj["spec"]["minReplicas"] = min_replicas
    obj["spec"]["maxReplicas"] = max(obj["spec"]["maxReplicas"], min_replicas)
    return obj


def budget(target: Target) -> Obj:
    obj = _base("PodDisruptionBudget", target, target.name)
    obj["spec"]["selector"]["matchLabels"] = instance_labels(target)
    return obj
