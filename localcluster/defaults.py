"""Defaults the real API server fills in on create (its defaulting and admission)."""

from __future__ import annotations

import base64
from typing import Any

from localcluster.quantity import parse

Obj = dict[str, Any]


def _container(c: Obj) -> None:
    c.setdefault(
        "imagePullPolicy", "Always" if c.get("image", "").endswith(":latest") else "IfNotPresent"
    )
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    c.setdefault("resources", {})


def pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    for c in spec.get("containers", []) + spec.get("initContainers", []):
        _container(c)


def job_spec(spec: Obj) -> None:
    if spec.get("completions") is None and spec.get("parallelism") is None:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("manualSelector", None)
    spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
    template = spec.setdefault("template", {})
    restart = template.setdefault("spec", {}).get("restartPolicy")
    pod_spec(template["spec"])
    if restart is None:
        del template["spec"]["restartPolicy"]  # a Job's template must say it: validation checks
    if spec["manualSelector"] is None:
        del spec["manualSelector"]


def job_identity(obj: Obj) -> None:
    """What the Job strategy adds once the Job has its uid: the selector and the pod labels
    that tie its pods to it (unless ``manualSelector``)."""
    meta, spec = obj["metadata"], obj["spec"]
    if spec.get("manualSelector"):
        return
    uid, name = meta["uid"], meta["name"]
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
    )


def validate(kind: str, obj: Obj) -> list[tuple[str, str]]:
    """(field path, what is wrong) for the checks clients rely on getting a 422 from."""
    problems: list[tuple[str, str]] = []
    if kind in ("Job", "CronJob"):
        spec = obj.get("spec") or {}
        path = "spec.template.spec"
        if kind == "CronJob":
            spec, path = (
                (spec.get("jobTemplate") or {}).get("spec") or {},
                "spec.jobTemplate." + path,
            )
            if not obj.get("spec", {}).get("schedule"):
                problems.append(("spec.schedule", "Required value"))
        restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
        if restart is None:
            problems.append(
                (f"{path}.restartPolicy", 'Required value: valid values: "OnFailure", "Never"')
            )
        elif restart not in ("OnFailure", "Never"):
            problems.append(
                (
                    f"{path}.restartPolicy",
                    f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
                )
            )
        if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
            problems.append(("spec.completions", "Required value: when completion mode is Indexed"))
    return problems


def qos_class(spec: Obj) -> str:
    """The pod's QoS class, by the real rules over cpu and memory: Guaranteed when every
    container's requests equal its limits (a request left out takes its limit), BestEffort
    when none sets either, Burstable otherwise."""
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    guaranteed, any_set = True, False
    for c in containers:
        resources = c.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for name in ("cpu", "memory"):
            limit, request = limits.get(name), requests.get(name, limits.get(name))
            any_set = any_set or limit is not None or request is not None
            if limit is None or request is None or parse(str(limit)) != parse(str(request)):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def apply(kind: str, obj: Obj) -> None:
    if kind == "Pod":
        pod_spec(obj.setdefault("spec", {}))
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", qos_class(obj["spec"]))
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    elif kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
    elif kind == "ReplicaSet":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
    elif kind == "ReplicationController":
        # The selector and the object's labels default to the template's labels.
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        template = spec.setdefault("template", {})
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not spec.get("selector"):
            spec["selector"] = dict(labels)
        if not obj.setdefault("metadata", {}).get("labels"):
            obj["metadata"]["labels"] = dict(labels)
        pod_spec(template.setdefault("spec", {}))
    elif kind == "DaemonSet":
        spec = obj.setdefault("spec", {})
        spec.setdefault("revisionHistoryLimit", 10)
        strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", 1)
            rolling.setdefault("maxSurge", 0)
        pod_spec(spec.setdefault("template", {}).setdefault("spec", {}))
    elif kind == "Job":
        job_spec(obj.setdefault("spec", {}))
    elif kind == "CronJob":
        spec = obj.setdefault("spec", {})
        spec.setdefault("concurrencyPolicy", "Allow")
        spec.setdefault("suspend", False)
        spec.setdefault("successfulJobsHistoryLimit", 3)
        spec.setdefault("failedJobsHistoryLimit", 1)
        job_spec(spec.setdefault("jobTemplate", {}).setdefault("spec", {}))
    elif kind == "Secret":
        # stringData is write-only: the server merges it into data (its keys win) and stores
        # data alone, so every reader -- env, volumes, kubectl -- sees one map.
        strings = obj.pop("stringData", None) or {}
        if strings:
            obj["data"] = {
                **(obj.get("data") or {}),
                **{k: base64.b64encode(str(v).encode()).decode() for k, v in strings.items()},
            }
        obj.setdefault("type", "Opaque")
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
