"""Server-side printing: the ``meta.k8s.io/v1`` Table that ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;g=meta.k8s.io;v=v1`` and prints the
columns the server returns, so the columns here are the real API server's for each kind
(``NAME READY STATUS RESTARTS AGE`` for pods, ...), with ``-o wide`` columns at priority 1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell


def age(stamp: str | None) -> str:
    """kubectl's short duration: 45s, 3m12s, 5h, 2d3h, ..."""
    if not stamp:
        return "<unknown>"
    then = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return _span((dt.datetime.now(dt.UTC) - then).total_seconds())


def _span(elapsed: float) -> str:
    seconds = max(int(elapsed), 0)
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d{hours % 24}h" if hours // 24 < 8 else f"{hours // 24}d"


def _created(o: Obj) -> str:
    return age(o["metadata"].get("creationTimestamp"))


def pod_status(pod: Obj) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = pod.get("status", {})
    reason = status.get("reason") or status.get("phase", "Pending")
    for c in status.get("initContainerStatuses") or []:
        state = c.get("state", {})
        if "terminated" in state and state["terminated"].get("exitCode") != 0:
            return f"Init:{state['terminated'].get('reason', 'Error')}"
        if "waiting" in state and state["waiting"].get("reason") != "PodInitializing":
            return f"Init:{state['waiting'].get('reason')}"
    for c in reversed(status.get("containerStatuses") or []):
        state = c.get("state", {})
        if "waiting" in state and state["waiting"].get("reason"):
            reason = state["waiting"]["reason"]
        elif "terminated" in state:
            reason = (
                state["terminated"].get("reason")
                or f"ExitCode:{state['terminated'].get('exitCode')}"
            )
    return str(reason)


def _ready(pod: Obj) -> str:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    total = len(pod["spec"].get("containers", []))
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _restarts(pod: Obj) -> str:
    return str(
        sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses") or [])
    )


def _job_status(job: Obj) -> str:
    """What kubectl 1.32 prints: the final condition, Suspended, Running, or Failing."""
    status = job.get("status", {})
    for type_ in ("Complete", "Failed", "SuccessCriteriaMet", "FailureTarget", "Suspended"):
        for c in status.get("conditions") or []:
            if c["type"] == type_ and c["status"] == "True":
                return {"SuccessCriteriaMet": "Complete", "FailureTarget": "Failed"}.get(
                    type_, type_
                )
    return "Running"


def _completions(job: Obj) -> str:
    spec, status = job["spec"], job.get("status", {})
    succeeded = status.get("succeeded", 0)
    if spec.get("completions") is not None:
        return f"{succeeded}/{spec['completions']}"
    parallelism = spec.get("parallelism", 1)
    return f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"


def _duration(job: Obj) -> str:
    status = job.get("status", {})
    if not status.get("startTime"):
        return ""
    start = dt.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
    end = status.get("completionTime")
    until = dt.datetime.fromisoformat(end.replace("Z", "+00:00")) if end else None
    seconds = ((until or dt.datetime.now(dt.UTC)) - start).total_seconds()
    return _span(seconds)


def _ports(svc: Obj) -> str:
    ports = svc["spec"].get("ports") or []
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _node_status(node: Obj) -> str:
    ready = next(
        (c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None
    )
    status = "Ready" if ready and ready["status"] == "True" else "NotReady"
    return status + (",SchedulingDisabled" if node["spec"].get("unschedulable") else "")


NAME: Column = ("Name", "string", 0, lambda o: o["metadata"]["name"])
AGE: Column = ("Age", "string", 0, _created)
COLUMNS: dict[str, list[Column]] = {
    "Pod": [
        NAME,
        ("Ready", "string", 0, _ready),
        ("Status", "string", 0, pod_status),
        ("Restarts", "string", 0, _restarts),
        AGE,
        ("IP", "string", 1, lambda o: o.get("status", {}).get("podIP") or "<none>"),
        ("Node", "string", 1, lambda o: o["spec"].get("nodeName") or "<none>"),
    ],
    "Deployment": [
        NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: (
                f"{o.get('status', {}).get('readyReplicas', 0)}/{o['spec'].get('replicas', 1)}"
            ),
        ),
        ("Up-to-date", "integer", 0, lambda o: o.get("status", {}).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: o.get("status", {}).get("availableReplicas", 0)),
        AGE,
    ],
    "Job": [
        NAME,
        ("Status", "string", 0, lambda o: _job_status(o)),
        ("Completions", "string", 0, lambda o: _completions(o)),
        ("Duration", "string", 0, lambda o: _duration(o)),
        AGE,
    ],
    "CronJob": [
        NAME,
        ("Schedule", "string", 0, lambda o: o["spec"].get("schedule", "")),
        ("Timezone", "string", 0, lambda o: o["spec"].get("timeZone") or "<none>"),
        # printBoolPtr: the cell is the string, though the column says boolean.
        ("Suspend", "boolean", 0, lambda o: str(bool(o["spec"].get("suspend")))),
        ("Active", "integer", 0, lambda o: len(o.get("status", {}).get("active") or [])),
        (
            "Last Schedule",
            "date",
            0,
            lambda o: (
                age(o["status"]["lastScheduleTime"])
                if o.get("status", {}).get("lastScheduleTime")
                else "<none>"
            ),
        ),
        AGE,
    ],
    "ReplicaSet": [
        NAME,
        ("Desired", "integer", 0, lambda o: o["spec"].get("replicas", 0)),
        ("Current", "integer", 0, lambda o: o.get("status", {}).get("replicas", 0)),
        ("Ready", "integer", 0, lambda o: o.get("status", {}).get("readyReplicas", 0)),
        AGE,
    ],
    "Service": [
        NAME,
        ("Type", "string", 0, lambda o: o["spec"].get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: o["spec"].get("clusterIP") or "<none>"),
        ("External-IP", "string", 0, lambda o: "<none>"),
        ("Port(s)", "string", 0, _ports),
        AGE,
    ],
    "Node": [
        NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, lambda o: "<none>"),
        AGE,
        (
            "Version",
            "string",
            0,
            lambda o: o.get("status", {}).get("nodeInfo", {}).get("kubeletVersion", ""),
        ),
    ],
    "Namespace": [
        NAME,
        ("Status", "string", 0, lambda o: o.get("status", {}).get("phase", "Active")),
        AGE,
    ],
    "Event": [
        ("Last Seen", "string", 0, lambda o: age(o.get("lastTimestamp") or o.get("eventTime"))),
        ("Type", "string", 0, lambda o: o.get("type", "")),
        ("Reason", "string", 0, lambda o: o.get("reason", "")),
        (
            "Object",
            "string",
            0,
            lambda o: (
                f"{o['involvedObject'].get('kind', '').lower()}/{o['involvedObject']['name']}"
            ),
        ),
        ("Message", "string", 0, lambda o: o.get("message", "")),
    ],
}


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def table(kind: str, items: list[Obj], resource_version: str, include_object: str) -> Obj:
    columns = COLUMNS.get(kind, [NAME, AGE])
    rows = []
    for obj in items:
        if include_object == "None":
            embedded: Obj | None = None
        elif include_object == "Object":
            embedded = obj
        else:
            embedded = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj["metadata"],
            }
        rows.append({"cells": [cell(obj) for _, _, _, cell in columns], "object": embedded})
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": name,
                "type": type_,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": priority,
            }
            for name, type_, priority, _ in columns
        ],
        "rows": rows,
    }
